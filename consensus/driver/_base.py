"""The driver's settings, the state its parts share, and the helpers they share.

:class:`~consensus.driver.Driver` (:mod:`consensus.driver._driver`) is
:class:`DriverBase` with its parts mixed in, each in its own module:
proposing and checking values (:mod:`consensus.driver._proposing`), judging
split queries (:mod:`consensus.driver._judging`), scoring decided values
(:mod:`consensus.driver._scoring_jobs`) and catch-up
(:mod:`consensus.driver._catchup`). This base declares the state they share
(``Driver.__init__`` creates it, with each part's own tables, which its
mixin declares) and, as stubs, the calls one part makes into another, so
each module type-checks on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from consensus.chain import Chain
from consensus.driver._io import Effect
from consensus.driver._pool import PendingQuery, QueryPool
from consensus.driver._scoring import ScoreBook
from consensus.messages import Answer, Envelope, Join, Leave, Message, Outcome, Proposal, Signed, Value, \
    VerifiedCache, Vote, sign
from consensus.state_machine import Core, EnterHeight, Input, Timeouts
from consensus.validators import ValidatorSet
from multillmn.identity import KeyPair, PeerId

if TYPE_CHECKING:
    from consensus.driver.behaviours import Behaviour

__all__ = ["DriverBase", "DriverConfig"]


@dataclass(frozen=True)
class DriverConfig:
    """The driver's settings: consensus parameters from the genesis, timings from the peer's config."""

    model: str = "model"  # the name this peer's answers carry
    chain_id: str = ""  # the genesis' chain id: signed into every vote and value
    threshold: int = 800
    tolerance: int = 20
    timeouts: Timeouts = Timeouts()
    answer_wait_ms: int = 120_000
    answer_grace_ms: int = 1500
    max_new_tokens: int = 48
    judge: bool = False  # the host can run a judge model
    judge_band: int = 100
    tick_ms: int = 6000
    max_pending: int = 256  # pending queries
    queries_per_height: int = 16  # queries a value of this proposer decides at most (1: one per height)
    max_orphans: int = 1024  # query ids with answers that overtook their query


@dataclass
class _Building:
    height: int
    round: int
    request: int
    entries: list[PendingQuery]
    answers: list[list[Signed[Answer]]]  # per entry, sorted by signer


@dataclass
class _Height:
    """Runner state of the current height (reset when the core enters a new one)."""

    held: dict[int, Signed[Proposal]] = field(default_factory=dict)  # first proposal seen per round
    checked: set[tuple[int, bytes]] = field(default_factory=set)  # (round, value id) checked or in flight
    exposed: set[tuple[int, PeerId]] = field(default_factory=set)
    own: list[Signed[Any]] = field(default_factory=list)  # own votes and proposal, for re-sending
    votes: dict[tuple[int, PeerId, str], Signed[Vote]] = field(default_factory=dict)  # others', for relaying
    request: tuple[int, int] | None = None  # the core asked for a value (height, round)
    building: _Building | None = None
    grace_armed: int | None = None
    proposed_ms: int | None = None  # when the first proposal of the height reached this peer


class DriverBase:
    """The state every part of the driver reads, and the helpers they share (see the module docstring)."""

    key: KeyPair
    me: PeerId
    chain: Chain
    config: DriverConfig
    behaviour: Behaviour
    verified: VerifiedCache
    core: Core
    pool: QueryPool
    scores: ScoreBook
    now: int
    rejected: dict[str, int]  # inputs dropped, by reason
    _h: _Height
    _next_request: int
    _last_commit: tuple[Envelope, ...]  # precommits that decided ``chain.height``
    _last_commit_round: int | None  # their round
    _last_commit_votes: dict[PeerId, Envelope]  # by voter
    _joins: dict[PeerId, Signed[Join]]
    _leaves: dict[PeerId, Signed[Leave]]

    # --- views ------------------------------------------------------------------------
    @property
    def height(self) -> int:
        return self.core.height

    @property
    def validators(self) -> ValidatorSet:
        """The set in force at the core's height."""
        return self.core.validators

    # --- helpers ------------------------------------------------------------------------------
    def _sign(self, message: Any) -> Signed[Any]:
        signed: Signed[Message] = sign(message, self.key)
        self.verified.add(message.KIND, signed.envelope, message)
        return signed

    def _request_id(self) -> int:
        self._next_request += 1
        return self._next_request

    def _count(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    # --- calls from one part into another (implemented by the Driver and its mixins) ----------------
    def _step(self, inp: Input | EnterHeight, out: list[Effect]) -> None:
        """Step the core with ``inp`` and everything it causes (:class:`~consensus.driver.Driver`)."""
        raise NotImplementedError

    def _next_height(self) -> EnterHeight:
        """The core's input for the height after the chain's (:class:`~consensus.driver.Driver`)."""
        raise NotImplementedError

    def _decided(self, height: int, round_: int, value: Value, precommits: tuple[Signed[Vote], ...],
                 out: list[Effect]) -> None:
        """Fold a decided height (:class:`~consensus.driver.Driver`)."""
        raise NotImplementedError

    def _try_propose(self, out: list[Effect]) -> None:
        """As proposer, build a value if one is due (:mod:`consensus.driver._proposing`)."""
        raise NotImplementedError

    def _verdicts_ready(self, entry: PendingQuery, outcome: Outcome) -> bool:
        """Whether a contested outcome has the verdicts it needs (:mod:`consensus.driver._judging`)."""
        raise NotImplementedError

    def _wait_for_verdicts(self, entry: PendingQuery, out: list[Effect]) -> None:
        """Retry the oldest query later, its judges not all heard (:mod:`consensus.driver._judging`)."""
        raise NotImplementedError
