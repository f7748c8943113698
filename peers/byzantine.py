"""Fault injection: Byzantine behaviours a testnet peer can be told to play (``[byzantine] behaviour``).

The same names and meanings as the simulator's (``consensus/sim/_behaviours.py``),
acting on the real runner's seams:

* :meth:`Behaviour.answer`: what the peer's model answers, and when;
* :meth:`Behaviour.outputs`: the core's outputs before the runner acts on them;
* :meth:`Behaviour.sends`: every signed vote or proposal the peer sends (to
  whom, how late, and what else it signs alongside);
* :meth:`Behaviour.scores`: the score vector it signs after a decision;
* :meth:`Behaviour.crashes_at`: a height at which the process dies.

For benchmarks and fault-injection tests only: nothing here runs unless a
peer's config asks for it.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from consensus.messages import Proposal, Vote
from consensus.state_machine import BroadcastVote, Output
from multillmn.config import PeerConfig
from multillmn.identity import PeerId
from peers.engine import Reply

__all__ = ["Behaviour", "Send", "make_behaviour", "PeerCrashed", "WRONG_ANSWERS"]

WRONG_ANSWERS = (
    "Berlin", "Madrid", "Lyon", "Mars", "blue", "seven", "1850", "the elephant", "Shakespeare", "oxygen",
    "forty-two", "Jupiter", "Canberra", "green", "iron",
)
"""Confident wrong answers a faulty peer picks from (per question and peer)."""


class PeerCrashed(Exception):
    """Raised by the runner when a ``crash`` peer reaches its crash height."""


@dataclass(frozen=True)
class Send:
    """One signed message to send: ``to`` (None: every peer) after ``delay_s``."""

    message: Vote | Proposal
    to: tuple[PeerId, ...] | None = None
    delay_s: float = 0.0


def _pick(question: str, salt: str) -> str:
    digest = hashlib.sha256(f"{salt}\0{question}".encode()).digest()
    return f"The answer is {WRONG_ANSWERS[digest[0] % len(WRONG_ANSWERS)]}."


def normalise(text: str) -> str:
    return " ".join(text.lower().strip(" .!").split())


class Behaviour:
    """The honest peer; subclasses override one seam each."""

    name: ClassVar[str] = "none"

    def __init__(self, peer_id: PeerId, cfg: PeerConfig) -> None:
        self.peer_id = peer_id
        self.cfg = cfg
        self.rng = random.Random(peer_id)
        self.height = 1  # the runner keeps this at its core's height

    async def answer(self, question: str, honest: Callable[[], Awaitable[Reply]],
                     others: Callable[[], Awaitable[list[str]]]) -> Reply:
        """The reply to sign, given the honest model (``honest()``) and a way to wait for others' answers."""
        return await honest()

    def outputs(self, outputs: list[Output]) -> list[Output]:
        return outputs

    def sends(self, message: Vote | Proposal, peers: Sequence[PeerId],
              alternative: Callable[[Proposal], Proposal | None]) -> list[Send]:
        """What really goes out for one of our own votes or proposals (``alternative`` builds a rival proposal)."""
        return [Send(message)]

    def scores(self, scores: tuple[tuple[PeerId, int], ...], texts: dict[PeerId, str],
               own_text: str | None) -> tuple[tuple[PeerId, int], ...]:
        return scores

    def crashes_at(self) -> int | None:
        return None

    def judges(self) -> bool:
        """Whether this peer spends its model on judging close calls (faulty answerers do not bother)."""
        return True


class Wrong(Behaviour):
    """Consistently wrong answers (each such peer has its own)."""

    name = "wrong"

    async def answer(self, question: str, honest: Callable[[], Awaitable[Reply]],
                     others: Callable[[], Awaitable[list[str]]]) -> Reply:
        return Reply(_pick(question, self.peer_id), 0.0)

    def judges(self) -> bool:
        return False


class Junk(Behaviour):
    """Random junk answers."""

    name = "junk"

    async def answer(self, question: str, honest: Callable[[], Awaitable[Reply]],
                     others: Callable[[], Awaitable[list[str]]]) -> Reply:
        letters = "abcdefghijklmnopqrstuvwxyz      0123456789"
        return Reply("".join(self.rng.choice(letters) for _ in range(self.rng.randrange(1, 60))), 0.0)

    def judges(self) -> bool:
        return False


class CopyLate(Behaviour):
    """Does not run its model: waits for the others' answers and copies the most common one."""

    name = "copy-late"

    async def answer(self, question: str, honest: Callable[[], Awaitable[Reply]],
                     others: Callable[[], Awaitable[list[str]]]) -> Reply:
        texts = await others()
        if not texts:
            return await honest()
        counts = Counter(normalise(t) for t in texts)
        best = max(counts.values())
        return Reply(next(t for t in texts if counts[normalise(t)] == best), 0.0)

    def judges(self) -> bool:
        return False


class Collude(Behaviour):
    """A colluding group: the same wrong answer on every member; members score each other 1000, others 0."""

    name = "collude"

    async def answer(self, question: str, honest: Callable[[], Awaitable[Reply]],
                     others: Callable[[], Awaitable[list[str]]]) -> Reply:
        return Reply(_pick(question, "collude"), 0.0)

    def scores(self, scores: tuple[tuple[PeerId, int], ...], texts: dict[PeerId, str],
               own_text: str | None) -> tuple[tuple[PeerId, int], ...]:
        mine = normalise(own_text) if own_text is not None else None
        return tuple((p, 1000 if mine is not None and normalise(texts.get(p, "")) == mine else 0) for p, _ in scores)

    def judges(self) -> bool:
        return False


class DoubleVote(Behaviour):
    """Signs a second, conflicting vote for every vote it casts and sends both to everyone."""

    name = "double-vote"

    def sends(self, message: Vote | Proposal, peers: Sequence[PeerId],
              alternative: Callable[[Proposal], Proposal | None]) -> list[Send]:
        if not isinstance(message, Vote):
            return [Send(message)]
        other = None if message.value_id is not None else hashlib.sha256(b"conflict" + self.peer_id.encode()).digest()
        return [Send(message), Send(message.model_copy(update={"value_id": other}))]


class ConflictingProposals(Behaviour):
    """As proposer, sends one valid value to half of the peers and another valid value to the rest."""

    name = "conflicting-proposals"

    def sends(self, message: Vote | Proposal, peers: Sequence[PeerId],
              alternative: Callable[[Proposal], Proposal | None]) -> list[Send]:
        if not isinstance(message, Proposal):
            return [Send(message)]
        rival = alternative(message)
        if rival is None:
            return [Send(message)]
        half = len(peers) // 2
        return [Send(message, tuple(peers[:half])), Send(rival, tuple(peers[half:]))]


class Withhold(Behaviour):
    """Never votes (still answers and proposes)."""

    name = "withhold"

    def outputs(self, outputs: list[Output]) -> list[Output]:
        return [o for o in outputs if not isinstance(o, BroadcastVote)]


class Crash(Behaviour):
    """The process dies (exit code 3) when its core reaches ``crash_at_height``."""

    name = "crash"

    def crashes_at(self) -> int | None:
        return self.cfg.crash_at_height


class Slow(Behaviour):
    """Answers four times slower and sends every vote and proposal ``slow_ms`` late."""

    name = "slow"

    async def answer(self, question: str, honest: Callable[[], Awaitable[Reply]],
                     others: Callable[[], Awaitable[list[str]]]) -> Reply:
        import trio

        reply = await honest()
        await trio.sleep(3 * reply.seconds)
        return Reply(reply.text, 4 * reply.seconds)

    def sends(self, message: Vote | Proposal, peers: Sequence[PeerId],
              alternative: Callable[[Proposal], Proposal | None]) -> list[Send]:
        return [Send(message, None, self.cfg.slow_ms / 1000)]


BEHAVIOURS: dict[str, type[Behaviour]] = {
    b.name: b for b in (Behaviour, Wrong, Junk, CopyLate, Collude, DoubleVote, ConflictingProposals, Withhold,
                        Crash, Slow)
}


class Phased(Behaviour):
    """``Wrong`` before ``from_height``, then ``late``: an attack launched once weights have adapted."""

    def __init__(self, peer_id: PeerId, cfg: PeerConfig, late: Behaviour) -> None:
        super().__init__(peer_id, cfg)
        self.early, self.late = Wrong(peer_id, cfg), late

    def _now(self) -> Behaviour:
        return self.late if self.height >= self.cfg.behaviour_from_height else self.early

    async def answer(self, question: str, honest: Callable[[], Awaitable[Reply]],
                     others: Callable[[], Awaitable[list[str]]]) -> Reply:
        return await self._now().answer(question, honest, others)

    def outputs(self, outputs: list[Output]) -> list[Output]:
        return self._now().outputs(outputs)

    def sends(self, message: Vote | Proposal, peers: Sequence[PeerId],
              alternative: Callable[[Proposal], Proposal | None]) -> list[Send]:
        return self._now().sends(message, peers, alternative)

    def scores(self, scores: tuple[tuple[PeerId, int], ...], texts: dict[PeerId, str],
               own_text: str | None) -> tuple[tuple[PeerId, int], ...]:
        return self._now().scores(scores, texts, own_text)

    def crashes_at(self) -> int | None:
        return self.late.crashes_at()

    def judges(self) -> bool:
        return self._now().judges()


def make_behaviour(peer_id: PeerId, cfg: PeerConfig) -> Behaviour:
    """The behaviour ``cfg.behaviour`` names (the config validated it against the same names)."""
    late = BEHAVIOURS[cfg.behaviour](peer_id, cfg)
    if cfg.behaviour == "none" or cfg.behaviour_from_height <= 1:
        return late
    return Phased(peer_id, cfg, late)
