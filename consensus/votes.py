"""Vote tallies for one height: each voter counts once per (round, type).

A second, different vote from the same voter for the same (round, type) is an
equivocation, reported once as evidence. It still counts towards *its own*
value (never towards ``total``, and at most one extra vote per voter), as
CometBFT keeps conflicting votes: otherwise a peer that saw an equivocator's
nil vote first could never count it towards the quorum the others formed for
a value, and one double voter below 1/3 of the weight could stall honest peers
for ever (found by the simulator; tests/test_sim_core_bugs.py). Safety holds:
two quorums for different values intersect in more than 1/3 of the weight,
which must contain an honest validator that signed both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Literal

from consensus.messages import Signed, Vote
from multillmn.identity import PeerId

__all__ = ["VoteType", "AddResult", "RoundVotes", "HeightVotes"]

VoteType = Literal["prevote", "precommit"]
AddResult = Literal["added", "duplicate", "equivocation", "ignored"]


class RoundVotes:
    """The votes of one type in one round, with weight per value id (``None`` = nil)."""

    def __init__(self) -> None:
        self.votes: dict[PeerId, Signed[Vote]] = {}
        self.by_value: dict[bytes | None, int] = {}
        self.total = 0
        self.equivocators: set[PeerId] = set()
        self.second: dict[PeerId, Signed[Vote]] = {}

    def add(self, signed: Signed[Vote], weight: int) -> AddResult:
        """Count ``signed`` with ``weight``; report duplicates and (first) equivocations."""
        voter = signed.signer
        vid = signed.message.value_id
        first = self.votes.get(voter)
        if first is None:
            self.votes[voter] = signed
            self.by_value[vid] = self.by_value.get(vid, 0) + weight
            self.total += weight
            return "added"
        if first.message.value_id == vid:
            return "duplicate"
        second = self.second.get(voter)
        if second is not None:
            return "duplicate" if second.message.value_id == vid else "ignored"
        self.second[voter] = signed
        self.by_value[vid] = self.by_value.get(vid, 0) + weight
        self.equivocators.add(voter)
        return "equivocation"

    def weight_for(self, value_id: bytes | None) -> int:
        return self.by_value.get(value_id, 0)

    def values_where(self, predicate: Callable[[int], bool]) -> list[bytes | None]:
        """Value ids (``None`` = nil) whose weight satisfies ``predicate``, in first-seen order."""
        return [vid for vid, w in self.by_value.items() if predicate(w)]

    def for_value(self, value_id: bytes | None) -> tuple[Signed[Vote], ...]:
        """The votes for ``value_id`` (an equivocator's second vote included), sorted by voter id."""
        chosen = {p: v for p, v in self.votes.items() if v.message.value_id == value_id}
        chosen.update({p: v for p, v in self.second.items() if v.message.value_id == value_id})
        return tuple(chosen[p] for p in sorted(chosen))


class HeightVotes:
    """All vote tallies of one height, keyed by (round, type)."""

    def __init__(self) -> None:
        self._rounds: dict[tuple[int, VoteType], RoundVotes] = {}
        self._empty = RoundVotes()

    def get(self, round: int, type: VoteType) -> RoundVotes:
        """The tally for (round, type); an empty one if there is none (do not mutate it)."""
        return self._rounds.get((round, type), self._empty)

    def add(self, signed: Signed[Vote], weight: int) -> AddResult:
        v = signed.message
        tally = self._rounds.setdefault((v.round, v.type), RoundVotes())
        return tally.add(signed, weight)

    def rounds(self, type: VoteType) -> Iterator[int]:
        """Rounds holding votes of ``type``, ascending."""
        return iter(sorted(r for (r, t) in self._rounds if t == type))
