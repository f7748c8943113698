"""Fault injection: the Byzantine behaviours a peer can be told to play, for the daemon and the simulator alike.

A :class:`Behaviour` wraps one :class:`~consensus.driver.Driver`: it sees
every input before the driver (:meth:`Behaviour.on_input`) and every effect
after it (:meth:`Behaviour.on_effects`), and two seams inside it: the
scores it signs (:meth:`Behaviour.scores`) and whether it spends its model
on judging (:meth:`Behaviour.judges`). The same objects run in a testnet
peer (``[byzantine] behaviour`` in its config, ``byzantine = "..."`` in a
manifest) and in the simulator, so a behaviour tested in one is the one
played in the other.

``from_height`` (:class:`Phased`): before it a faulty peer only answers
wrong and otherwise follows the protocol, so weights can adapt first.

For benchmarks and tests only: nothing here runs unless a config asks.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar

from consensus import grouping
from consensus.driver._io import (
    Announce,
    BehaviourTimer,
    Crash,
    Decided,
    DriverInput,
    Effect,
    Generate,
    Generated,
    Received,
    Schedule,
    Send,
    SendRaw,
    InjectEvent,
    TimerFired,
)
from consensus.grouping import pair_index
from consensus.messages import Answer, Proposal, Query, Signed, Value, Verdict, Vote, open_envelope, query_id_of, sign
from consensus.scores import MAX_SCORE, Scores
from consensus.validators import Validator, ValidatorSet
from multillmn import canonical
from multillmn.identity import KeyPair, PeerId

if TYPE_CHECKING:
    from consensus.driver._driver import Driver

__all__ = ["BEHAVIOURS", "Behaviour", "BehaviourParams", "Phased", "WRONG_ANSWERS", "behaviour_names",
           "deep_msgpack", "forge_decision", "make_behaviour", "register", "rival_proposal"]

WRONG_ANSWERS = (
    "Berlin", "Madrid", "Lyon", "Mars", "blue", "seven", "1850", "the elephant", "Shakespeare", "oxygen",
    "forty-two", "Jupiter", "Canberra", "green", "iron",
)
"""Confident wrong answers a faulty peer picks from (per question and peer)."""


@dataclass(frozen=True)
class BehaviourParams:
    """Knobs of the behaviours (a peer's ``[byzantine]`` config, or the simulator's)."""

    slow_ms: int = 2000  # slow: extra delay of every own vote and proposal
    crash_at_height: int = 3  # crash: the height at which the process dies
    from_height: int = 1  # faulty peers only answer wrong before this height
    copy_wait_ms: int = 3000  # copy-late: how long to wait for the others' answers


BEHAVIOURS: dict[str, type[Behaviour]] = {}


def register(cls: type[Behaviour]) -> type[Behaviour]:
    """Class decorator: make ``cls`` selectable by ``cls.name`` (tests may register their own)."""
    BEHAVIOURS[cls.name] = cls
    return cls


def behaviour_names(*, include_hidden: bool = False) -> list[str]:
    """Selectable names (``none`` first); hidden test-only ones on request."""
    return [n for n, c in BEHAVIOURS.items() if include_hidden or not c.hidden]


def make_behaviour(name: str, peer_id: PeerId, params: BehaviourParams = BehaviourParams()) -> Behaviour:
    """The behaviour ``name`` of ``peer_id``; a faulty one is :class:`Phased` when ``params.from_height > 1``."""
    try:
        cls = BEHAVIOURS[name]
    except KeyError:
        raise ValueError(f"unknown behaviour {name!r}; choose from {', '.join(behaviour_names())}") from None
    behaviour = cls(peer_id, params)
    if cls.faulty and cls is not Wrong and params.from_height > 1:
        return Phased(peer_id, params, behaviour)
    return behaviour


def wrong_answer(question: str, salt: str) -> str:
    digest = hashlib.sha256(f"{salt}\0{question}".encode()).digest()
    return f"The answer is {WRONG_ANSWERS[digest[0] % len(WRONG_ANSWERS)]}."


def normalise(text: str) -> str:
    return " ".join(text.lower().strip(" .!?").split())


def _own_message(effect: Effect, me: PeerId, kind: type[Vote] | type[Proposal]) -> bool:
    return isinstance(effect, Send) and isinstance(effect.signed.message, kind) and effect.signed.signer == me


class Behaviour:
    """The honest peer; subclasses override a seam. ``faulty`` ones are excluded from the simulator's invariants."""

    name: ClassVar[str] = "none"
    faulty: ClassVar[bool] = False
    hidden: ClassVar[bool] = False  # test-only: not offered by the CLI or manifests

    def __init__(self, peer_id: PeerId, params: BehaviourParams = BehaviourParams()) -> None:
        self.peer_id = peer_id
        self.params = params
        self.rng = random.Random(peer_id)

    def on_input(self, driver: Driver, inp: DriverInput) -> DriverInput | None:
        """The input the driver gets (``None``: none at all)."""
        return inp

    def on_effects(self, driver: Driver, effects: list[Effect]) -> list[Effect]:
        """The effects the host really carries out."""
        return effects

    def answer_text(self, question: str) -> str | None:
        """A fabricated answer instead of the model's (``None``: the model answers)."""
        return None

    def scores(self, scores: Scores, texts: dict[PeerId, str], own_text: str | None) -> Scores:
        """The scores to sign for a decided value, given the honest ones."""
        return scores

    def judges(self) -> bool:
        """Whether this peer spends its model on judging close calls (faulty answerers do not bother)."""
        return True


register(Behaviour)


class _Fabricating(Behaviour):
    """Answers with :meth:`answer_text` instead of the model (and does not judge)."""

    faulty = True

    def on_effects(self, driver: Driver, effects: list[Effect]) -> list[Effect]:
        return [replace(e, fabricated=self.answer_text(e.question)) if isinstance(e, Generate) else e
                for e in effects]

    def judges(self) -> bool:
        return False


@register
class Wrong(_Fabricating):
    """Consistently wrong answers (each such peer has its own)."""

    name = "wrong"

    def answer_text(self, question: str) -> str | None:
        return wrong_answer(question, self.peer_id)


@register
class Junk(_Fabricating):
    """Random junk answers."""

    name = "junk"

    def answer_text(self, question: str) -> str | None:
        letters = "abcdefghijklmnopqrstuvwxyz      0123456789"
        return "".join(self.rng.choice(letters) for _ in range(self.rng.randrange(1, 60)))


@register
class Collude(_Fabricating):
    """A colluding group: the same wrong answer on every member; members score each other 1000, others 0."""

    name = "collude"

    def answer_text(self, question: str) -> str | None:
        return wrong_answer(question, "collude")

    def scores(self, scores: Scores, texts: dict[PeerId, str], own_text: str | None) -> Scores:
        mine = normalise(own_text) if own_text is not None else None
        return tuple((p, MAX_SCORE if mine is not None and normalise(texts.get(p, "")) == mine else 0)
                     for p, _ in scores)


@register
class CopyLate(Behaviour):
    """Does not run its model: waits ``copy_wait_ms``, then copies the most common of the others' answers."""

    name = "copy-late"
    faulty = True

    def __init__(self, peer_id: PeerId, params: BehaviourParams = BehaviourParams()) -> None:
        super().__init__(peer_id, params)
        self._fallback: list[Generate] = []

    def on_effects(self, driver: Driver, effects: list[Effect]) -> list[Effect]:
        out: list[Effect] = list(self._fallback)
        self._fallback = []
        for e in effects:
            if isinstance(e, Generate) and e.fabricated is None:
                out.append(Schedule(BehaviourTimer(("copy", e)), self.params.copy_wait_ms))
            else:
                out.append(e)
        return out

    def on_input(self, driver: Driver, inp: DriverInput) -> DriverInput | None:
        if not (isinstance(inp, TimerFired) and isinstance(inp.timer, BehaviourTimer)
                and inp.timer.key[0] == "copy"):
            return inp
        request = inp.timer.key[1]
        entry = driver.pool.get(request.query_id)
        if entry is None:
            return None
        texts = [a.message.text for p, a in entry.answers.items() if p != self.peer_id]
        if not texts:
            self._fallback.append(request)  # nobody to copy: ask the model after all
            return None
        counts = Counter(normalise(t) for t in texts)
        best = max(counts.values())
        return Generated(request.query_id, next(t for t in texts if counts[normalise(t)] == best), 0)

    def judges(self) -> bool:
        return False


@register
class OmitVerdicts(Behaviour):
    """A proposer that leaves out every judge's verdict that rejects an answer (ADR 0022): it ignores the
    verdicts it receives that put an answer below -500, so its values carry only the others (as few as the
    omission rule lets it; a contested query it cannot carry that way it never proposes)."""

    name = "omit-verdicts"
    faulty = True
    hidden = True  # the simulator's for now: [byzantine] and manifests do not offer it yet

    def on_input(self, driver: Driver, inp: DriverInput) -> DriverInput | None:
        if isinstance(inp, Received) and isinstance(inp.signed.message, Verdict) \
                and inp.signed.signer != self.peer_id and any(v < -500 for _, v in inp.signed.message.verdicts):
            return None
        return inp


@register
class DoubleVote(Behaviour):
    """Signs a second, conflicting vote for every vote it casts and sends both to everyone."""

    name = "double-vote"
    faulty = True

    def on_effects(self, driver: Driver, effects: list[Effect]) -> list[Effect]:
        out: list[Effect] = []
        for e in effects:
            out.append(e)
            if _own_message(e, self.peer_id, Vote) and isinstance(e, Send):
                vote = e.signed.message
                other = None if vote.value_id is not None else hashlib.sha256(b"conflict" + self.peer_id.encode()).digest()
                out.append(Send(sign(vote.model_copy(update={"value_id": other}), driver.key), e.to))
        return out


@register
class ConflictingProposals(Behaviour):
    """As proposer, sends one valid value to half of the peers and another valid value to the rest."""

    name = "conflicting-proposals"
    faulty = True

    def on_effects(self, driver: Driver, effects: list[Effect]) -> list[Effect]:
        out: list[Effect] = []
        for e in effects:
            if isinstance(e, Send) and e.to is None and _own_message(e, self.peer_id, Proposal):
                rival = rival_proposal(e.signed.message, driver.validators, driver.config.threshold)
                if rival is not None:
                    peers = [p for p in driver.validators.ids if p != self.peer_id]
                    half = len(peers) // 2
                    out += [Send(e.signed, tuple(peers[:half])), Send(sign(rival, driver.key), tuple(peers[half:]))]
                    continue
            out.append(e)
        return out


@register
class Withhold(Behaviour):
    """Never sends a vote (still answers and proposes)."""

    name = "withhold"
    faulty = True

    def on_effects(self, driver: Driver, effects: list[Effect]) -> list[Effect]:
        return [e for e in effects if not _own_message(e, self.peer_id, Vote)]


@register
class CrashAt(Behaviour):
    """The process dies when its core reaches ``crash_at_height``."""

    name = "crash"
    faulty = True

    def on_effects(self, driver: Driver, effects: list[Effect]) -> list[Effect]:
        if driver.height >= self.params.crash_at_height:
            return [Crash(f"fault injection: crashing at height {driver.height}")]
        return effects


@register
class Slow(Behaviour):
    """Answers four times slower and sends every own vote and proposal ``slow_ms`` late."""

    name = "slow"
    faulty = True

    def on_effects(self, driver: Driver, effects: list[Effect]) -> list[Effect]:
        out: list[Effect] = []
        for e in effects:
            if isinstance(e, Generate):
                e = replace(e, slowdown=4)
            elif isinstance(e, Send) and (_own_message(e, self.peer_id, Vote) or _own_message(e, self.peer_id, Proposal)):
                e = replace(e, delay_ms=e.delay_ms + self.params.slow_ms)
            out.append(e)
        return out


@register
class ForgeCertificate(Behaviour):
    """After each decision, announces forged decisions signed by itself alone, for the next height and for the
    decided one: the genesis members with weights of its choosing, its own question, answer and precommit."""

    name = "forge-certificate"
    faulty = True

    def on_effects(self, driver: Driver, effects: list[Effect]) -> list[Effect]:
        out = list(effects)
        for e in effects:
            if isinstance(e, Decided):
                for height in (e.height + 1, e.height):
                    value, precommit, forged = forge_decision(driver.key, driver.validators, height,
                                                              driver.config.threshold,
                                                              chain_id=driver.config.chain_id)
                    out.append(Announce(height, 0, value, (precommit,), forged))
        return out


@register
class DeepNesting(Behaviour):
    """Each height, sends every peer frames nested about 1,000 deep and a ledger event carrying such a transaction."""

    name = "deep-nesting"
    faulty = True

    def on_effects(self, driver: Driver, effects: list[Effect]) -> list[Effect]:
        out = list(effects)
        if any(isinstance(e, Decided) for e in effects):
            payload = canonical.pack({"k": "vote", "b": deep_msgpack(), "s": bytes(64)})
            out += [SendRaw(payload), SendRaw(deep_msgpack()), InjectEvent(deep_msgpack())]
        return out


class Phased(Behaviour):
    """:class:`Wrong` before ``from_height``, then ``late`` as well: an attack launched once weights adapted.

    A ``late`` behaviour without an answer rule of its own keeps answering wrong.
    """

    name = "phased"
    faulty = True

    def __init__(self, peer_id: PeerId, params: BehaviourParams, late: Behaviour) -> None:
        super().__init__(peer_id, params)
        self.early, self.late = Wrong(peer_id, params), late
        self._answers: Behaviour = late if isinstance(late, (_Fabricating, CopyLate)) else self.early
        self.height = 1  # the driver's, as last seen

    def _now(self) -> Behaviour:
        return self.late if self.height >= self.params.from_height else self.early

    def on_input(self, driver: Driver, inp: DriverInput) -> DriverInput | None:
        self.height = driver.height
        return self._now().on_input(driver, inp)

    def on_effects(self, driver: Driver, effects: list[Effect]) -> list[Effect]:
        self.height = driver.height
        if self._now() is self.early:
            return self.early.on_effects(driver, effects)
        if self._answers is self.early:  # an attack without an answer rule of its own keeps answering wrong
            effects = self.early.on_effects(driver, effects)
        return self.late.on_effects(driver, effects)

    def answer_text(self, question: str) -> str | None:
        return (self._answers if self._now() is self.late else self.early).answer_text(question)

    def scores(self, scores: Scores, texts: dict[PeerId, str], own_text: str | None) -> Scores:
        return self._now().scores(scores, texts, own_text)

    def judges(self) -> bool:
        return False


# --- hostile payloads ------------------------------------------------------------------


def deep_msgpack(depth: int = 1010) -> bytes:
    """msgpack nested ``depth`` arrays deep (``[[[...nil...]]]``): once crashed every decoder by recursion."""
    return b"\x91" * depth + b"\xc0"


def forge_decision(key: KeyPair, base: ValidatorSet, height: int, threshold: int, *, chain_id: str = "",
                   round_: int = 0,
                   question: str = "Is the earth flat?", answer: str = "Yes, flat.",
                   own_weight: int = 10**6) -> tuple[Value, Signed[Vote], ValidatorSet]:
    """A decision of ``height`` that only ``key`` signed: ``base``'s members and keys with ``own_weight`` for the
    forger and 1 for the others, its own query and answer, and its precommit. A quorum of the set it claims,
    so only a check against a trusted set refuses it."""
    forged = ValidatorSet(Validator(v.peer_id, v.public_key, own_weight if v.peer_id == key.peer_id else 1, v.moniker)
                          for v in base)
    query = sign(Query(entry=key.peer_id, question=question, nonce=hashlib.sha256(b"%d" % height).digest()[:16],
                       max_tokens=32, created_ms=0), key)
    reply = sign(Answer(query_id=query_id_of(query.envelope), peer=key.peer_id, model="forger", text=answer,
                        gen_ms=1), key)
    value = grouping.build_value(query.envelope, [reply], [], [own_weight], threshold,
                                 validators_hash=forged.set_hash(), next_validators_hash=forged.set_hash(),
                                 chain_id=chain_id)
    precommit = sign(Vote(chain_id=chain_id, type="precommit", height=height, round=round_,
                          value_id=value.value_id(), voter=key.peer_id), key)
    return value, precommit, forged


def rival_proposal(proposal: Proposal, validators: ValidatorSet, threshold: int) -> Proposal | None:
    """Another valid-looking value for the same (height, round), for the conflicting-proposals behaviour:
    one score vector fewer, else one answer fewer; ``None`` if neither can be dropped."""
    value = proposal.value
    if value.scores:
        rival = value.model_copy(update={"scores": value.scores[1:]})
    elif len(value.answers) > 1:
        answers = [open_envelope(Answer, e, validators.public_key_of) for e in value.answers[:-1]]
        n, m = len(value.answers), len(answers)
        sims = [value.sims[pair_index(n, i, j)] for i in range(m) for j in range(i + 1, m)]
        rival = grouping.build_value(
            value.query, answers, sims, [validators.weight_of(a.signer) for a in answers], threshold,
            validators_hash=value.validators_hash, next_validators_hash=value.next_validators_hash,
            chain_id=value.chain_id, evidence=value.evidence)
    else:
        return None
    return proposal.model_copy(update={"value": rival})

