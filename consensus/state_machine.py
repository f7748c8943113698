"""The Tendermint consensus algorithm (arXiv:1807.04938, Algorithm 1) with weights, as a pure core.

:meth:`Core.step` takes one input and returns the outputs it causes; it has
no clock, I/O or keys. The runner signs :class:`BroadcastVote` /
:class:`BroadcastProposal` outputs and feeds its own signed messages back as
inputs like everyone else's; it schedules timeouts and answers
:class:`RequestValue`. Inputs must come from ``open_envelope`` (signatures
checked); proposal validity (``valid(v)``) is computed by the runner.

The core never computes a validator set: its host (the driver, which
owns the weight rule) hands it the :class:`Committee` of each height, the
set in force there and its proposer per round, with :class:`EnterHeight`,
as Malachite's core asks its host for a height's validator set. After
:class:`Decide` the core stays at the decided height (recording nothing
more of it, buffering later heights) until the host enters the next one.

Thresholds: "2f+1" is ``validators.has_quorum`` and "f+1" is
``validators.has_one_third`` of weight. Deviations from the paper: every
process (the proposer too) schedules the propose timeout; before
:class:`Start` the core only records messages and can still decide (rule
L49).

Bounds, per height: proposals are kept for rounds up to ``round + 1``
plus ``catchup_rounds`` far rounds per signer, at most ``n + 1``
conflicting ones per round; votes likewise per round (one per voter and
type, see :class:`~consensus.votes.HeightVotes`); messages of the next
``future_heights`` heights are buffered, ``buffer_per_signer`` per signer
and height.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from collections.abc import Callable

from consensus.messages import Proposal, Signed, Value, Vote
from consensus.validators import ValidatorSet
from consensus.votes import HeightVotes, VoteType
from multillmn.identity import PeerId

__all__ = [
    "StepName",
    "Timeouts",
    "Start",
    "ProposalInput",
    "VoteInput",
    "TimeoutInput",
    "ProposeValue",
    "EnterHeight",
    "Committee",
    "Input",
    "BroadcastProposal",
    "BroadcastVote",
    "RequestValue",
    "ScheduleTimeout",
    "Decide",
    "Equivocation",
    "Output",
    "Core",
]

StepName = Literal["propose", "prevote", "precommit"]
_ORDER: dict[StepName, int] = {"propose": 0, "prevote": 1, "precommit": 2}


@dataclass(frozen=True)
class Timeouts:
    """Timeout durations: ``base + round * delta_ms`` milliseconds."""

    propose_ms: int = 3000
    prevote_ms: int = 1000
    precommit_ms: int = 1000
    delta_ms: int = 500

    def duration(self, step: StepName, round: int) -> int:
        base = {"propose": self.propose_ms, "prevote": self.prevote_ms, "precommit": self.precommit_ms}
        return base[step] + round * self.delta_ms


# --- inputs ---------------------------------------------------------------
@dataclass(frozen=True)
class Start:
    """Start round 0 of the current height (the runner has a query to decide)."""


@dataclass(frozen=True)
class ProposalInput:
    signed: Signed[Proposal]
    valid: bool


@dataclass(frozen=True)
class VoteInput:
    signed: Signed[Vote]


@dataclass(frozen=True)
class TimeoutInput:
    height: int
    round: int
    step: StepName


@dataclass(frozen=True)
class ProposeValue:
    """The runner's answer to :class:`RequestValue`."""

    height: int
    round: int
    value: Value


@dataclass(frozen=True)
class Committee:
    """What the core needs to know of a height: the validator set in force and the proposer of each round."""

    validators: ValidatorSet
    proposer: Callable[[int], PeerId]


@dataclass(frozen=True)
class EnterHeight:
    """Move to ``height`` (after a decision, or a height decided elsewhere), counted in ``committee``.

    Ignored unless ``height`` is above the current one; buffered messages of
    ``height`` are replayed.
    """

    height: int
    committee: Committee


Input = Start | ProposalInput | VoteInput | TimeoutInput | ProposeValue | EnterHeight


# --- outputs --------------------------------------------------------------
@dataclass(frozen=True)
class BroadcastProposal:
    proposal: Proposal


@dataclass(frozen=True)
class BroadcastVote:
    vote: Vote


@dataclass(frozen=True)
class RequestValue:
    height: int
    round: int


@dataclass(frozen=True)
class ScheduleTimeout:
    height: int
    round: int
    step: StepName
    duration_ms: int


@dataclass(frozen=True)
class Decide:
    """A decision with the precommits for it (sorted by voter) that form the quorum.

    ``validators`` is the set the quorum was counted in (in force at ``height``).
    """

    height: int
    round: int
    value: Value
    precommits: tuple[Signed[Vote], ...]
    validators: ValidatorSet | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Equivocation:
    """Two conflicting signed messages from one signer for the same (height, round, kind)."""

    first: Signed[Vote] | Signed[Proposal]
    second: Signed[Vote] | Signed[Proposal]


Output = BroadcastProposal | BroadcastVote | RequestValue | ScheduleTimeout | Decide | Equivocation

_Message = ProposalInput | VoteInput


@dataclass
class _Prop:
    signed: Signed[Proposal]
    valid: bool
    value_id: bytes

    @property
    def value(self) -> Value:
        return self.signed.message.value


@dataclass
class _HeightState:
    """Everything that is reset when a new height begins."""

    round: int = 0
    step: StepName = "propose"
    started: bool = False
    decided: bool = False
    locked_value: Value | None = None
    locked_round: int = -1
    locked_id: bytes | None = None
    valid_value: Value | None = None
    valid_round: int = -1
    awaiting_value: int | None = None
    proposals: dict[int, dict[bytes, _Prop]] = field(default_factory=dict)
    proposal_equivocators: set[int] = field(default_factory=set)
    votes: HeightVotes = field(default_factory=HeightVotes)
    signers: dict[int, set[PeerId]] = field(default_factory=dict)
    far_rounds: dict[PeerId, set[int]] = field(default_factory=dict)
    fired: set[tuple[str, int]] = field(default_factory=set)


def static_committee(validators: ValidatorSet, height: int) -> Committee:
    """A fixed set's committee at ``height``: CometBFT's weighted round robin from genesis priorities."""
    return Committee(validators, lambda r: validators.proposer(height, r))


class Core:
    """Consensus state for one height at a time; see the module docstring."""

    def __init__(
        self,
        committee: Committee | ValidatorSet,
        own_id: PeerId,
        height: int = 1,
        *,
        timeouts: Timeouts = Timeouts(),
        future_heights: int = 4,
        catchup_rounds: int = 2,
        buffer_per_signer: int = 16,
        chain_id: str = "",
    ) -> None:
        """``committee`` of ``height`` (a bare set: fixed weights, CometBFT's proposer rotation); votes are
        signed for ``chain_id`` and votes for another chain are ignored."""
        if height < 1:
            raise ValueError("height must be >= 1")
        self.committee = committee if isinstance(committee, Committee) else static_committee(committee, height)
        self.own_id = own_id
        self.chain_id = chain_id
        self.timeouts = timeouts
        self.future_heights = future_heights
        self.catchup_rounds = catchup_rounds
        self.buffer_per_signer = buffer_per_signer
        self.height = height
        self.decision: Decide | None = None
        self._s = _HeightState()
        self._buffer: dict[int, list[_Message]] = {}
        self._buffered: dict[tuple[int, PeerId], int] = {}

    # --- read-only views -------------------------------------------------
    @property
    def validators(self) -> ValidatorSet:
        """The validator set in force at the current height."""
        return self.committee.validators

    @property
    def decided(self) -> bool:
        """Whether the current height is decided (the host has yet to enter the next one)."""
        return self._s.decided

    @property
    def round(self) -> int:
        return self._s.round

    @property
    def step_name(self) -> StepName:
        return self._s.step

    @property
    def started(self) -> bool:
        return self._s.started

    @property
    def locked_value(self) -> Value | None:
        return self._s.locked_value

    @property
    def locked_round(self) -> int:
        return self._s.locked_round

    @property
    def valid_value(self) -> Value | None:
        return self._s.valid_value

    @property
    def valid_round(self) -> int:
        return self._s.valid_round

    # --- entry point -------------------------------------------------------
    def step(self, inp: Input) -> list[Output]:
        """Apply one input; return the outputs, in order."""
        out: list[Output] = []
        s = self._s
        if isinstance(inp, Start):
            if not s.started and not s.decided:
                s.started = True
                self._start_round(0, out)
        elif isinstance(inp, (ProposalInput, VoteInput)):
            self._receive(inp, out)
        elif isinstance(inp, TimeoutInput):
            self._on_timeout(inp, out)
        elif isinstance(inp, ProposeValue):
            if (
                inp.height == self.height
                and inp.round == s.round
                and s.started
                and s.step == "propose"
                and s.awaiting_value == inp.round
            ):
                s.awaiting_value = None
                self._propose(inp.value, -1, out)
        elif isinstance(inp, EnterHeight):
            if inp.height > self.height:
                self.committee = inp.committee
                self._advance(inp.height, out)
        while self._fire_one(out):
            pass
        return out

    # --- receiving messages ------------------------------------------------
    def _receive(self, inp: _Message, out: list[Output]) -> None:
        signed = inp.signed
        signer = signed.signer
        height = signed.message.height
        if signer not in self.validators or height < self.height:
            return
        if isinstance(inp, VoteInput) and inp.signed.message.chain_id != self.chain_id:
            return
        if height > self.height:
            key = (height, signer)
            if height <= self.height + self.future_heights and self._buffered.get(key, 0) < self.buffer_per_signer:
                self._buffered[key] = self._buffered.get(key, 0) + 1
                self._buffer.setdefault(height, []).append(inp)
            return
        if self._s.decided:
            return
        if isinstance(inp, ProposalInput):
            self._add_proposal(inp, out)
        else:
            self._add_vote(inp.signed, out)

    def _admit_round(self, signer: PeerId, round: int) -> bool:
        """Bound memory: rounds beyond ``round+1`` are kept for ``catchup_rounds`` rounds per signer."""
        if round <= self._s.round + 1:
            return True
        far = self._s.far_rounds.setdefault(signer, set())
        if round in far:
            return True
        if len(far) < self.catchup_rounds:
            far.add(round)
            return True
        return False

    def _add_proposal(self, inp: ProposalInput, out: list[Output]) -> None:
        p = inp.signed.message
        if p.proposer != self.committee.proposer(p.round) or p.valid_round >= p.round:
            return
        if not self._admit_round(p.proposer, p.round):
            return
        props = self._s.proposals.setdefault(p.round, {})
        vid = p.value.value_id()
        if vid in props:
            return
        if props:
            if p.round not in self._s.proposal_equivocators:
                self._s.proposal_equivocators.add(p.round)
                out.append(Equivocation(next(iter(props.values())).signed, inp.signed))
            if len(props) > len(self.validators):
                return  # keep a bounded number of conflicting proposals
        props[vid] = _Prop(inp.signed, inp.valid, vid)
        self._s.signers.setdefault(p.round, set()).add(p.proposer)

    def _add_vote(self, signed: Signed[Vote], out: list[Output]) -> None:
        v = signed.message
        if not self._admit_round(v.voter, v.round):
            return
        result = self._s.votes.add(signed, self.validators.weight_of(v.voter))
        if result == "added":
            self._s.signers.setdefault(v.round, set()).add(v.voter)
        elif result == "equivocation":
            first = self._s.votes.get(v.round, v.type).votes[v.voter]
            out.append(Equivocation(first, signed))

    # --- actions -------------------------------------------------------------
    def _start_round(self, round: int, out: list[Output]) -> None:
        s = self._s
        s.round = round
        s.step = "propose"
        s.awaiting_value = None
        if self.own_id in self.validators and self.committee.proposer(round) == self.own_id:
            if s.valid_value is not None:
                self._propose(s.valid_value, s.valid_round, out)
            else:
                s.awaiting_value = round
                out.append(RequestValue(self.height, round))
        self._schedule("propose", out)

    def _propose(self, value: Value, valid_round: int, out: list[Output]) -> None:
        out.append(
            BroadcastProposal(
                Proposal(
                    height=self.height,
                    round=self._s.round,
                    valid_round=valid_round,
                    proposer=self.own_id,
                    value=value,
                )
            )
        )

    def _vote(self, type: VoteType, value_id: bytes | None, out: list[Output]) -> None:
        s = self._s
        s.step = "prevote" if type == "prevote" else "precommit"
        if self.own_id in self.validators:
            vote = Vote(chain_id=self.chain_id, type=type, height=self.height, round=s.round, value_id=value_id,
                        voter=self.own_id)
            out.append(BroadcastVote(vote))

    def _schedule(self, step: StepName, out: list[Output]) -> None:
        r = self._s.round
        out.append(ScheduleTimeout(self.height, r, step, self.timeouts.duration(step, r)))

    def _on_timeout(self, t: TimeoutInput, out: list[Output]) -> None:
        s = self._s
        if t.height != self.height or t.round != s.round or not s.started or s.decided:
            return
        if t.step == "propose" and s.step == "propose":
            self._vote("prevote", None, out)
        elif t.step == "prevote" and s.step == "prevote":
            self._vote("precommit", None, out)
        elif t.step == "precommit":
            self._start_round(s.round + 1, out)

    def _decide(self, round: int, prop: _Prop, out: list[Output]) -> None:
        precommits = self._s.votes.get(round, "precommit").for_value(prop.value_id)
        decision = Decide(self.height, round, prop.value, precommits, self.validators)
        out.append(decision)
        self.decision = decision
        self._s = _HeightState(round=round, step=self._s.step, started=self._s.started, decided=True)

    def _advance(self, height: int, out: list[Output]) -> None:
        """Enter ``height`` (not started), dropping older state and replaying its buffered messages."""
        self.height = height
        self._s = _HeightState()
        for h in [h for h in self._buffer if h < self.height]:
            del self._buffer[h]
        self._buffered = {k: c for k, c in self._buffered.items() if k[0] > self.height}
        for inp in self._buffer.pop(self.height, []):
            self._receive(inp, out)

    # --- the rules ------------------------------------------------------------
    def _fire_one(self, out: list[Output]) -> bool:
        """Apply the first enabled rule; return whether one fired."""
        s = self._s
        if s.decided:
            return False
        vs = self.validators
        votes = s.votes
        # L49: 2f+1 precommits for v in any round, with its valid proposal -> decide.
        for r in votes.rounds("precommit"):
            for vid in votes.get(r, "precommit").values_where(vs.has_quorum):
                prop = s.proposals.get(r, {}).get(vid) if vid is not None else None
                if prop is not None and prop.valid:
                    self._decide(r, prop, out)
                    return True
        if not s.started:
            return False
        # L55: f+1 weight of messages in a higher round -> skip to the highest such round.
        higher = [r for r, who in s.signers.items() if r > s.round and vs.has_one_third(vs.weight_of_set(who))]
        if higher:
            self._start_round(max(higher), out)
            return True
        r = s.round
        if s.step == "propose":
            for prop in s.proposals.get(r, {}).values():
                vr = prop.signed.message.valid_round
                lock_ok = s.locked_round == -1 or self._is_locked_on(prop)
                if vr == -1:
                    ok = prop.valid and lock_ok  # L22
                elif vs.has_quorum(votes.get(vr, "prevote").weight_for(prop.value_id)):
                    ok = prop.valid and (s.locked_round <= vr or self._is_locked_on(prop))  # L28
                else:
                    continue
                self._vote("prevote", prop.value_id if ok else None, out)
                return True
        prevotes = votes.get(r, "prevote")
        # L36: proposal + 2f+1 prevotes for it, step >= prevote, first time -> lock/precommit, update valid.
        if _ORDER[s.step] >= 1 and ("L36", r) not in s.fired:
            for vid in prevotes.values_where(vs.has_quorum):
                prop = s.proposals.get(r, {}).get(vid) if vid is not None else None
                if prop is not None and prop.valid:
                    s.fired.add(("L36", r))
                    if s.step == "prevote":
                        s.locked_value, s.locked_round, s.locked_id = prop.value, r, prop.value_id
                        self._vote("precommit", prop.value_id, out)
                    s.valid_value, s.valid_round = prop.value, r
                    return True
        # L44: 2f+1 prevotes for nil -> precommit nil.
        if s.step == "prevote" and vs.has_quorum(prevotes.weight_for(None)):
            self._vote("precommit", None, out)
            return True
        # L34: 2f+1 prevotes for anything, first time -> schedule the prevote timeout.
        if s.step == "prevote" and vs.has_quorum(prevotes.total) and ("L34", r) not in s.fired:
            s.fired.add(("L34", r))
            self._schedule("prevote", out)
            return True
        # L47: 2f+1 precommits for anything, first time -> schedule the precommit timeout.
        if vs.has_quorum(votes.get(r, "precommit").total) and ("L47", r) not in s.fired:
            s.fired.add(("L47", r))
            self._schedule("precommit", out)
            return True
        return False

    def _is_locked_on(self, prop: _Prop) -> bool:
        return self._s.locked_id == prop.value_id
