"""What a host feeds the driver (inputs) and what the driver asks its host to do (effects).

Everything is plain frozen data: a host (the trio daemon, or the simulator
in virtual time) carries out effects *in order* and feeds the results back
as inputs. A :class:`Persist` must be durable before any later effect is
carried out: the driver emits its own votes' records before their sends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from consensus.evidence import Evidence
from consensus.messages import Signed, Value, Vote
from consensus.scores import JudgeResult
from consensus.state_machine import Input, StepName
from consensus.validators import ValidatorSet
from multillmn.identity import PeerId

__all__ = [
    "Announce", "AskCatchUp", "BehaviourTimer", "Certified", "Committed", "Crash", "CoreTimeout", "Decided",
    "DriverInput", "Effect", "Embed", "Embedded", "QueryTimes", "EvidenceFound", "Generate", "GenerationFailed", "Generated",
    "GraceTimer", "Judge", "JudgePair", "Judged", "Persist", "QueryExpired", "Rate", "Rated", "Received", "Schedule", "Send",
    "SendRaw", "InjectEvent", "Tick", "Timer", "TimerFired",
]


# --- timers ------------------------------------------------------------------------


@dataclass(frozen=True)
class CoreTimeout:
    """The core's propose / prevote / precommit timeout."""

    height: int
    round: int
    step: StepName


@dataclass(frozen=True)
class GraceTimer:
    """The proposer of (height, round) has waited long enough for the remaining answers."""

    height: int
    round: int


@dataclass(frozen=True)
class Tick:
    """Periodic: expire queries, notice a stuck height (re-send, relay, ask for catch-up)."""


@dataclass(frozen=True)
class BehaviourTimer:
    """A fault-injection behaviour's own timer (``key`` is the behaviour's)."""

    key: tuple[Any, ...]


Timer = CoreTimeout | GraceTimer | Tick | BehaviourTimer


# --- inputs --------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """A signed message from the network, already decoded and signature-checked at the host's edge."""

    signed: Signed[Any]
    sender: PeerId | None = None


@dataclass(frozen=True)
class Generated:
    """This peer's model answered a query (:class:`Generate`)."""

    query_id: bytes
    text: str
    gen_ms: int


@dataclass(frozen=True)
class GenerationFailed:
    """This peer's model could not answer (e.g. its shard workers are gone): the query is skipped."""

    query_id: bytes
    reason: str


@dataclass(frozen=True)
class Embedded:
    """Similarities for an :class:`Embed` request: per group, the upper triangle, per mille."""

    request: int
    sims: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Judged:
    """Verdicts for a :class:`Judge` request."""

    request: int
    results: tuple[JudgeResult, ...]


@dataclass(frozen=True)
class Rated:
    """This peer's judge's per-mille verdicts for a :class:`Rate` request: ``(answerer, verdict)`` pairs."""

    request: int
    verdicts: tuple[tuple[PeerId, int], ...]


@dataclass(frozen=True)
class TimerFired:
    timer: Timer


@dataclass(frozen=True)
class Certified:
    """Another peer says ``height`` decided ``value`` with these precommits (catch-up): checked by the driver
    against its own chain before it is folded."""

    height: int
    round: int
    value: Value
    precommits: tuple[Signed[Vote], ...]


@dataclass(frozen=True)
class Committed:
    """``height`` decided ``value``, from this peer's own durable ledger (which checked it against the same
    chain): folded without further checks."""

    height: int
    round: int
    value: Value
    precommits: tuple[Signed[Vote], ...] = ()


DriverInput = Received | Generated | GenerationFailed | Embedded | Judged | Rated | TimerFired | Certified | Committed


# --- effects ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Send a signed message to ``to`` (``None``: every other validator), after ``delay_ms``."""

    signed: Signed[Any]
    to: tuple[PeerId, ...] | None = None
    delay_ms: int = 0


@dataclass(frozen=True)
class SendRaw:
    """Send raw payload bytes (fault injection only: a hostile frame)."""

    payload: bytes
    to: tuple[PeerId, ...] | None = None


@dataclass(frozen=True)
class Persist:
    """Append a core input of ``height`` to the write-ahead log, durably, before anything that follows."""

    height: int
    record: Input


@dataclass(frozen=True)
class Schedule:
    """Feed ``TimerFired(timer)`` back after ``delay_ms``."""

    timer: Timer
    delay_ms: int


@dataclass(frozen=True)
class Generate:
    """Answer a query with this peer's model; feed back :class:`Generated` (or :class:`GenerationFailed`).

    ``fabricated``: a fault-injection reply to return instead of running the
    model; ``slowdown``: a factor on the time it takes.
    """

    query_id: bytes
    question: str
    max_tokens: int
    fabricated: str | None = None
    slowdown: int = 1


@dataclass(frozen=True)
class Embed:
    """Compute, for each ``(question, texts)`` group, the similarities of the answers ``texts``; feed back
    :class:`Embedded` (a value of several queries asks for all of them at once)."""

    request: int
    groups: tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True)
class JudgePair:
    a: PeerId
    a_text: str
    b: PeerId
    b_text: str


@dataclass(frozen=True)
class Judge:
    """Ask this peer's model to judge ``pairs`` in both orders; feed back :class:`Judged`."""

    request: int
    question: str
    pairs: tuple[JudgePair, ...]


@dataclass(frozen=True)
class Rate:
    """Rate ``answers`` (``(answerer, text)``) to ``question`` with this peer's judge against its own answer
    ``own``: per mille in ``[-1000, 1000]``, below zero when the judge's model finds the answer less likely
    than its own (ADR 0022); feed back :class:`Rated` (an empty tuple if the host has no judge)."""

    request: int
    question: str
    own: str
    answers: tuple[tuple[PeerId, str], ...]


@dataclass(frozen=True)
class Decided:
    """``height`` is decided (here, or by catch-up): certify it (the host builds and publishes the certificate).

    Times (ms, the driver's clock; ``None`` when unknown, e.g. after catch-up):
    per query, when it reached this peer and when its answers reached a
    quorum; when the height's first proposal arrived.
    """

    height: int
    round: int
    value: Value
    precommits: tuple[Signed[Vote], ...]
    validators: ValidatorSet
    times: tuple[QueryTimes, ...] = ()  # per outcome of the value, in its order (empty after catch-up)
    proposed_ms: int | None = None


@dataclass(frozen=True)
class QueryTimes:
    """When a decided query reached this peer and when its answers reached a quorum (ms, the driver's clock)."""

    arrived_ms: int | None = None
    quorum_ms: int | None = None


@dataclass(frozen=True)
class Announce:
    """Publish a decision for catch-up as if certified (fault injection only: a forgery)."""

    height: int
    round: int
    value: Value
    precommits: tuple[Signed[Vote], ...]
    validators: ValidatorSet


@dataclass(frozen=True)
class EvidenceFound:
    """Proof of equivocation, to record (it also rides in this peer's next values)."""

    evidence: Evidence


@dataclass(frozen=True)
class QueryExpired:
    """A pending query gathered no answer quorum in time and was dropped."""

    query_id: bytes
    reason: str


@dataclass(frozen=True)
class AskCatchUp:
    """The height seems stuck: ask ``peer`` for decided heights from ``height`` on (hosts without a ledger)."""

    height: int
    peer: PeerId


@dataclass(frozen=True)
class InjectEvent:
    """Gossip a ledger event carrying this raw transaction straight to every peer (fault injection only:
    hosts without a ledger ignore it)."""

    tx: bytes


@dataclass(frozen=True)
class Crash:
    """Fault injection: the process dies."""

    reason: str


Effect = (Send | SendRaw | Persist | Schedule | Generate | Embed | Judge | Rate | Decided | Announce | EvidenceFound
          | QueryExpired | AskCatchUp | InjectEvent | Crash)
