"""Byzantine behaviours: wrappers around a simulated peer's answers, core outputs and sends.

A :class:`Behaviour` sees four seams of an otherwise honest peer:

* ``answer_delay`` / ``answer_text``: what the peer's "model" answers and when;
* ``on_outputs``: the consensus core's outputs before the runner acts on them;
* ``on_send``: every packet the peer sends (to whom, and how late);
* ``score_vector``: the scores it signs for a decided value (adaptive weights).

With ``SimConfig.attack_from_height`` every faulty behaviour is wrapped in
:class:`Phased`: before that height the peer only answers wrong (and follows
the protocol), so the weights can adapt; from it on it also attacks.

The names below are the ones the testnet manifest will use. Under the
``majority`` baseline there are no votes or proposals, so ``double-vote`` and
``conflicting-proposals`` equivocate *answers* instead (one answer to half the
peers, another to the rest).
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from typing import TYPE_CHECKING, ClassVar

from consensus.messages import Proposal, Vote
from consensus.scores import MAX_SCORE, Scores
from consensus.sim._packets import Packet, Send
from consensus.sim._world import Question, normalise, wrong_text
from consensus.state_machine import BroadcastVote, Output

if TYPE_CHECKING:
    from consensus.sim._config import SimConfig
    from consensus.sim._peer import Peer

__all__ = [
    "Behaviour",
    "BEHAVIOURS",
    "register",
    "behaviour_names",
    "make_behaviour",
    "Phased",
]

BEHAVIOURS: dict[str, type[Behaviour]] = {}


def register(cls: type[Behaviour]) -> type[Behaviour]:
    """Class decorator: make ``cls`` selectable by ``cls.name`` (tests may register their own)."""
    BEHAVIOURS[cls.name] = cls
    return cls


def behaviour_names(*, include_hidden: bool = False) -> list[str]:
    """Selectable behaviour names (``honest`` first); hidden test-only ones on request."""
    return [n for n, c in BEHAVIOURS.items() if include_hidden or not c.hidden]


def make_behaviour(name: str, index: int, rng: random.Random, config: SimConfig) -> Behaviour:
    """The behaviour ``name`` of node ``index``; faulty ones are :class:`Phased` under ``attack_from_height``."""
    try:
        cls = BEHAVIOURS[name]
    except KeyError:
        raise ValueError(f"unknown behaviour {name!r}; choose from {', '.join(behaviour_names())}") from None
    behaviour = cls(index, rng, config)
    if config.attack_from_height is not None and cls.faulty and cls is not Wrong:
        return Phased(index, rng, config, behaviour, config.attack_from_height)
    return behaviour


class Behaviour:
    """The honest peer; subclasses override a seam. ``faulty`` peers are excluded from the invariants."""

    name: ClassVar[str] = "honest"
    faulty: ClassVar[bool] = False
    hidden: ClassVar[bool] = False  # test-only: not offered by the CLI

    def __init__(self, index: int, rng: random.Random, config: SimConfig) -> None:
        self.index = index
        self.rng = rng
        self.config = config

    def answer_delay(self, peer: Peer, base_us: int) -> int:
        """How long answering takes, given the honest model's time."""
        return base_us

    def answer_text(self, peer: Peer, question: Question, honest: str) -> str | None:
        """The text to answer (``None``: do not answer), given the honest model's answer."""
        return honest

    def on_outputs(self, peer: Peer, outputs: list[Output]) -> list[Output]:
        """Filter or extend the core's outputs before the runner executes them."""
        return outputs

    def on_send(self, peer: Peer, packet: Packet, dsts: tuple[int, ...]) -> list[Send]:
        """Turn one broadcast into the sends that really happen."""
        return [Send(packet, dsts)]

    def score_vector(self, peer: Peer, scores: Scores) -> Scores:
        """The scores to sign for a decided value, given the honest ones (sorted by peer id)."""
        return scores

    def crash_at_ms(self) -> int | None:
        """Virtual time at which the peer stops for good, if it does."""
        return None


register(Behaviour)


@register
class Wrong(Behaviour):
    """Consistently wrong answers (each such peer has its own)."""

    name = "wrong"
    faulty = True

    def answer_text(self, peer: Peer, question: Question, honest: str) -> str | None:
        return wrong_text(question, f"wrong-{self.index}")


@register
class Junk(Behaviour):
    """Random junk answers."""

    name = "junk"
    faulty = True

    def answer_text(self, peer: Peer, question: Question, honest: str) -> str | None:
        letters = "abcdefghijklmnopqrstuvwxyz      0123456789"
        return "".join(self.rng.choice(letters) for _ in range(self.rng.randrange(1, 60)))


@register
class CopyLate(Behaviour):
    """Answers late, copying the most common answer among the others' (its own if it has none)."""

    name = "copy-late"
    faulty = True

    def answer_delay(self, peer: Peer, base_us: int) -> int:
        return 3 * base_us + 1000 * self.config.answer_grace_ms // 2

    def answer_text(self, peer: Peer, question: Question, honest: str) -> str | None:
        texts = [t for t in peer.answer_texts(question.index) if t is not None]
        if not texts:
            return honest
        counts = Counter(normalise(t) for t in texts)
        best = max(counts.values())
        return next(t for t in texts if counts[normalise(t)] == best)


@register
class Collude(Behaviour):
    """A colluding group: the same wrong answer on every member; members score each other 1000, others 0."""

    name = "collude"
    faulty = True

    def answer_text(self, peer: Peer, question: Question, honest: str) -> str | None:
        return wrong_text(question, "collude")

    def score_vector(self, peer: Peer, scores: Scores) -> Scores:
        group = peer.sim.colluders
        return tuple((p, MAX_SCORE if peer.sim.index_of.get(p) in group else 0) for p, _ in scores)


class _Equivocator(Behaviour):
    """Under the majority baseline: one answer to the first half of the peers, a wrong one to the rest."""

    faulty = True

    def on_send(self, peer: Peer, packet: Packet, dsts: tuple[int, ...]) -> list[Send]:
        if packet.kind != "answer" or self.config.baseline != "majority" or packet.signed is None:
            return [Send(packet, dsts)]
        other = peer.resign_answer(packet.signed, "equivocated")
        half = len(dsts) // 2
        return [Send(packet, dsts[:half]), Send(other, dsts[half:])]


@register
class DoubleVote(_Equivocator):
    """Signs two conflicting votes (the real one and another) per vote and sends both to everyone."""

    name = "double-vote"

    def on_send(self, peer: Peer, packet: Packet, dsts: tuple[int, ...]) -> list[Send]:
        if packet.kind != "vote" or packet.signed is None:
            return super().on_send(peer, packet, dsts)
        vote = packet.signed.message
        assert isinstance(vote, Vote)
        if vote.voter != peer.peer_id:  # a relayed vote of someone else
            return [Send(packet, dsts)]
        other_id = None if vote.value_id is not None else hashlib.sha256(b"conflict" + vote.voter.encode()).digest()
        conflicting = vote.model_copy(update={"value_id": other_id})
        return [Send(packet, dsts), Send(peer.vote_packet(conflicting), dsts)]


@register
class ConflictingProposals(_Equivocator):
    """As proposer, sends one valid value to half the peers and another valid value to the rest."""

    name = "conflicting-proposals"

    def on_send(self, peer: Peer, packet: Packet, dsts: tuple[int, ...]) -> list[Send]:
        if packet.kind != "proposal" or packet.signed is None:
            return super().on_send(peer, packet, dsts)
        proposal = packet.signed.message
        assert isinstance(proposal, Proposal)
        if proposal.proposer != peer.peer_id:
            return [Send(packet, dsts)]
        other = peer.alternative_value(proposal.value)
        if other is None:
            return [Send(packet, dsts)]
        half = len(dsts) // 2
        return [Send(packet, dsts[:half]),
                Send(peer.proposal_packet(proposal.model_copy(update={"value": other})), dsts[half:])]


@register
class Withhold(Behaviour):
    """Never votes (still answers and proposes)."""

    name = "withhold"
    faulty = True

    def on_outputs(self, peer: Peer, outputs: list[Output]) -> list[Output]:
        return [o for o in outputs if not isinstance(o, BroadcastVote)]


@register
class Crash(Behaviour):
    """Stops for good at ``config.crash_at_ms`` (drawn from the seed when unset)."""

    name = "crash"
    faulty = True

    def crash_at_ms(self) -> int | None:
        if self.config.crash_at_ms is not None:
            return self.config.crash_at_ms
        horizon = self.config.heights * max(self.config.query_interval_ms, int(self.config.gen_ms)) + 2000
        return self.rng.randrange(0, horizon)


@register
class Slow(Behaviour):
    """Answers four times slower and sends every vote and proposal ``config.slow_ms`` late."""

    name = "slow"
    faulty = True

    def answer_delay(self, peer: Peer, base_us: int) -> int:
        return 4 * base_us

    def on_send(self, peer: Peer, packet: Packet, dsts: tuple[int, ...]) -> list[Send]:
        delay = 1000 * self.config.slow_ms if packet.kind in ("vote", "proposal") else 0
        return [Send(packet, dsts, delay)]


class Phased(Behaviour):
    """``wrong`` before ``from_height``, then ``late`` as well: an attack launched once weights have adapted.

    The peer keeps answering wrong after the switch unless ``late`` has an
    answer rule of its own (``collude``, ``junk``, ``copy-late``, ...): a
    malicious peer adds the attack to its wrong answers. The phase is the
    height the peer is working on (:attr:`Peer.height`).
    """

    name = "phased"
    faulty = True

    def __init__(self, index: int, rng: random.Random, config: SimConfig, late: Behaviour, from_height: int) -> None:
        super().__init__(index, rng, config)
        self.early = Wrong(index, rng, config)
        self.late = late
        self.from_height = from_height
        own_answers = type(late).answer_text is not Behaviour.answer_text or (
            type(late).answer_delay is not Behaviour.answer_delay)
        self.late_answers: Behaviour = late if own_answers else self.early

    def _now(self, peer: Peer) -> Behaviour:
        return self.late if peer.height >= self.from_height else self.early

    def _answers(self, peer: Peer) -> Behaviour:
        return self.late_answers if peer.height >= self.from_height else self.early

    def answer_delay(self, peer: Peer, base_us: int) -> int:
        return self._answers(peer).answer_delay(peer, base_us)

    def answer_text(self, peer: Peer, question: Question, honest: str) -> str | None:
        return self._answers(peer).answer_text(peer, question, honest)

    def on_outputs(self, peer: Peer, outputs: list[Output]) -> list[Output]:
        return self._now(peer).on_outputs(peer, outputs)

    def on_send(self, peer: Peer, packet: Packet, dsts: tuple[int, ...]) -> list[Send]:
        return self._now(peer).on_send(peer, packet, dsts)

    def score_vector(self, peer: Peer, scores: Scores) -> Scores:
        return self._now(peer).score_vector(peer, scores)

    def crash_at_ms(self) -> int | None:
        return self.late.crash_at_ms()  # a time, not a height: 'crash' is not phased
