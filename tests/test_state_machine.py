"""Step-table tests of the pure Tendermint core (consensus.state_machine)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from consensus.grouping import build_value, pair_count
from consensus.messages import Answer, Proposal, Query, Signed, Value, Vote, query_id_of, sign
from consensus.state_machine import (
    BroadcastProposal,
    BroadcastVote,
    EnterHeight,
    Core,
    Decide,
    Equivocation,
    Input,
    Output,
    ProposalInput,
    ProposeValue,
    RequestValue,
    ScheduleTimeout,
    Start,
    StepName,
    TimeoutInput,
    Timeouts,
    VoteInput,
    static_committee,
)
from consensus.validators import Validator, ValidatorSet
from multillmn.identity import KeyPair

T = Timeouts(propose_ms=300, prevote_ms=100, precommit_ms=100, delta_ms=50)
_ALL = [KeyPair.from_seed(bytes([i + 1]) * 32) for i in range(4)]
KEYS = sorted(_ALL, key=lambda k: k.peer_id)  # index = position in the validator set


def vset(weights: Sequence[int]) -> ValidatorSet:
    return ValidatorSet(
        Validator(k.peer_id, k.public_key, w, f"v{i}") for i, (k, w) in enumerate(zip(KEYS, weights))
    )


EQUAL = vset([1, 1, 1, 1])


def make_value(question: str, text: str = "forty-two") -> Value:
    q = sign(
        Query(entry=KEYS[0].peer_id, question=question, nonce=bytes(16), max_tokens=64, created_ms=0),
        KEYS[0],
    )
    qid = query_id_of(q.envelope)
    answers = [
        sign(Answer(query_id=qid, peer=k.peer_id, model="m", text=text, gen_ms=1), k) for k in KEYS
    ]
    return build_value(q.envelope, answers, [1000] * pair_count(4), [1] * 4, 750)


V = make_value("what is six times seven?")
W = make_value("what is six times seven, really?")
VID, WID = V.value_id(), W.value_id()


def proposal(i: int, r: int, value: Value, vr: int = -1, h: int = 1, valid: bool = True) -> ProposalInput:
    p = Proposal(height=h, round=r, valid_round=vr, proposer=KEYS[i].peer_id, value=value)
    return ProposalInput(sign(p, KEYS[i]), valid)


def vote_msg(t: str, i: int, r: int, vid: bytes | None, h: int = 1) -> Vote:
    assert t in ("prevote", "precommit")
    return Vote(type=t, height=h, round=r, value_id=vid, voter=KEYS[i].peer_id)  # type: ignore[arg-type]


def signed_vote(t: str, i: int, r: int, vid: bytes | None, h: int = 1) -> Signed[Vote]:
    return sign(vote_msg(t, i, r, vid, h), KEYS[i])


def pv(i: int, r: int, vid: bytes | None, h: int = 1) -> VoteInput:
    return VoteInput(signed_vote("prevote", i, r, vid, h))


def pc(i: int, r: int, vid: bytes | None, h: int = 1) -> VoteInput:
    return VoteInput(signed_vote("precommit", i, r, vid, h))


def out_pv(i: int, r: int, vid: bytes | None, h: int = 1) -> BroadcastVote:
    return BroadcastVote(vote_msg("prevote", i, r, vid, h))


def out_pc(i: int, r: int, vid: bytes | None, h: int = 1) -> BroadcastVote:
    return BroadcastVote(vote_msg("precommit", i, r, vid, h))


def sched(r: int, step: StepName, h: int = 1) -> ScheduleTimeout:
    return ScheduleTimeout(h, r, step, T.duration(step, r))


def timeout(r: int, step: StepName, h: int = 1) -> TimeoutInput:
    return TimeoutInput(h, r, step)


@dataclass
class Step:
    desc: str
    input: Input
    expected: list[Output]


def run(core: Core, steps: list[Step]) -> None:
    for st in steps:
        got = core.step(st.input)
        assert got == st.expected, f"{st.desc}: got {got!r}"


def core_for(i: int, validators: ValidatorSet = EQUAL) -> Core:
    return Core(validators, KEYS[i].peer_id, timeouts=T)


def enter(height: int, validators: ValidatorSet = EQUAL) -> EnterHeight:
    """The host moving the core on (it owns the weight rule: here a fixed set)."""
    return EnterHeight(height, static_committee(validators, height))


def test_proposer_order_of_equal_set() -> None:
    # The tables below rely on proposer(h, r) == KEYS[(h - 1 + r) % 4].
    assert [EQUAL.proposer(1, r) for r in range(4)] == [k.peer_id for k in KEYS]
    assert EQUAL.proposer(2, 0) == KEYS[1].peer_id


def test_happy_path_decides_in_round_zero() -> None:
    core = core_for(0)  # KEYS[0] proposes (1, 0)
    own = Proposal(height=1, round=0, valid_round=-1, proposer=KEYS[0].peer_id, value=V)
    run(core, [
        Step("start asks for a value", Start(), [RequestValue(1, 0), sched(0, "propose")]),
        Step("a stale ProposeValue is ignored", ProposeValue(1, 1, V), []),
        Step("runner supplies the value", ProposeValue(1, 0, V), [BroadcastProposal(own)]),
        Step("own proposal comes back", ProposalInput(sign(own, KEYS[0]), True), [out_pv(0, 0, VID)]),
        Step("prevote 1/4", pv(0, 0, VID), []),
        Step("prevote 2/4", pv(1, 0, VID), []),
        Step("prevote 3/4 locks and precommits", pv(2, 0, VID), [out_pc(0, 0, VID)]),
        Step("precommit 1/4", pc(0, 0, VID), []),
        Step("precommit 2/4", pc(1, 0, VID), []),
    ])
    assert core.locked_round == 0 and core.locked_value == V
    assert core.valid_round == 0 and core.valid_value == V
    out = core.step(pc(2, 0, VID))
    expected = (signed_vote("precommit", 0, 0, VID), signed_vote("precommit", 1, 0, VID),
                signed_vote("precommit", 2, 0, VID))
    assert out == [Decide(1, 0, V, expected)]
    decide = out[0]
    assert isinstance(decide, Decide)
    assert EQUAL.has_quorum(EQUAL.weight_of_set(v.signer for v in decide.precommits))
    assert all(v.message.value_id == VID and v.message.round == 0 for v in decide.precommits)
    # Decided: height 1 records nothing more until the host enters height 2, idle until Start.
    assert (core.height, core.decided, core.decision) == (1, True, decide)
    assert core.step(pc(3, 0, VID)) == [] and core.step(timeout(0, "precommit")) == []
    assert core.step(enter(2)) == []
    assert (core.height, core.round, core.started, core.locked_round, core.decided) == (2, 0, False, -1, False)
    assert core.step(timeout(0, "propose", h=2)) == []


def test_weighted_quorum_thresholds() -> None:
    vs = vset([3, 1, 1, 1])  # total 6: 3+1 = 4 is exactly 2/3 (12 == 12), not a quorum
    heavy = next(i for i, k in enumerate(KEYS) if vs.weight_of(k.peer_id) == 3)
    light = [i for i in range(4) if i != heavy]
    own = light[-1]
    prop_i = KEYS.index(next(k for k in KEYS if k.peer_id == vs.proposer(1, 0)))
    assert prop_i != own
    core = Core(vs, KEYS[own].peer_id, timeouts=T)
    run(core, [
        Step("start", Start(), [sched(0, "propose")]),
        Step("proposal", proposal(prop_i, 0, V), [out_pv(own, 0, VID)]),
        Step("heavy alone (3/6) is not a quorum", pv(heavy, 0, VID), []),
        Step("heavy + one light (4/6, 3w == 2T) is not a quorum", pv(light[0], 0, VID), []),
        Step("heavy + two light (5/6) is a quorum", pv(light[1], 0, VID), [out_pc(own, 0, VID)]),
        Step("precommit heavy", pc(heavy, 0, VID), []),
        Step("precommit boundary", pc(light[0], 0, VID), []),
    ])
    out = core.step(pc(own, 0, VID))
    assert len(out) == 1 and isinstance(out[0], Decide)
    assert [v.signer for v in out[0].precommits] == sorted(
        KEYS[i].peer_id for i in (heavy, light[0], own)
    )


def test_lock_then_nil_prevote_for_other_value() -> None:
    core = core_for(3)
    run(core, [
        Step("start", Start(), [sched(0, "propose")]),
        Step("proposal V", proposal(0, 0, V), [out_pv(3, 0, VID)]),
        Step("pv0", pv(0, 0, VID), []),
        Step("pv1", pv(1, 0, VID), []),
        Step("pv2 -> lock V", pv(2, 0, VID), [out_pc(3, 0, VID)]),
        Step("pc own", pc(3, 0, VID), []),
        Step("pc0 nil", pc(0, 0, None), []),
        Step("pc1 nil -> 2f+1 any", pc(1, 0, None), [sched(0, "precommit")]),
        Step("precommit timeout -> round 1", timeout(0, "precommit"), [sched(1, "propose")]),
        Step("W without valid_round -> nil (locked on V)", proposal(1, 1, W), [out_pv(3, 1, None)]),
    ])
    assert (core.round, core.locked_round, core.locked_value) == (1, 0, V)


def test_proposer_reproposes_valid_value() -> None:
    core = core_for(1)  # proposer of round 1
    run(core, [
        Step("start", Start(), [sched(0, "propose")]),
        Step("proposal V", proposal(0, 0, V), [out_pv(1, 0, VID)]),
        Step("pv0", pv(0, 0, VID), []),
        Step("pv2", pv(2, 0, VID), []),
        Step("pv3 -> lock", pv(3, 0, VID), [out_pc(1, 0, VID)]),
        Step("pc0 nil", pc(0, 0, None), []),
        Step("pc2 nil", pc(2, 0, None), []),
        Step("pc3 nil", pc(3, 0, None), [sched(0, "precommit")]),
        Step("round 1: re-propose V with valid_round 0", timeout(0, "precommit"), [
            BroadcastProposal(Proposal(height=1, round=1, valid_round=0, proposer=KEYS[1].peer_id, value=V)),
            sched(1, "propose"),
        ]),
    ])


def test_unlock_with_valid_round_proposal() -> None:
    core = core_for(3)
    run(core, [
        Step("start", Start(), [sched(0, "propose")]),
        Step("proposal V", proposal(0, 0, V), [out_pv(3, 0, VID)]),
        Step("pv0", pv(0, 0, VID), []),
        Step("pv1", pv(1, 0, VID), []),
        Step("pv own -> lock V", pv(3, 0, VID), [out_pc(3, 0, VID)]),
        Step("pc0 nil", pc(0, 0, None), []),
        Step("pc1 nil", pc(1, 0, None), []),
        Step("pc2 nil", pc(2, 0, None), [sched(0, "precommit")]),
        Step("-> round 1", timeout(0, "precommit"), [sched(1, "propose")]),
        # Round 1: we miss the proposal, but the others prevote W.
        Step("pv0 W r1", pv(0, 1, WID), []),
        Step("pv1 W r1", pv(1, 1, WID), []),
        Step("pv2 W r1 (no proposal: no lock)", pv(2, 1, WID), []),
        Step("propose timeout", timeout(1, "propose"), [out_pv(3, 1, None), sched(1, "prevote")]),
        Step("prevote timeout", timeout(1, "prevote"), [out_pc(3, 1, None)]),
        Step("pc0 nil r1", pc(0, 1, None), []),
        Step("pc1 nil r1", pc(1, 1, None), []),
        Step("pc2 nil r1", pc(2, 1, None), [sched(1, "precommit")]),
        Step("-> round 2", timeout(1, "precommit"), [sched(2, "propose")]),
        Step("W with valid_round 1 unlocks", proposal(2, 2, W, vr=1), [out_pv(3, 2, WID)]),
    ])
    assert core.locked_round == 0  # still locked until it precommits again


def test_valid_round_proposal_waits_for_its_quorum() -> None:
    core = core_for(3)
    run(core, [
        Step("start", Start(), [sched(0, "propose")]),
        Step("skip to round 1 on f+1 (2/4)", pv(0, 1, WID), []),
        Step("f+1", pv(1, 1, WID), [sched(1, "propose")]),
        Step("vr=0 without quorum in round 0: wait", proposal(1, 1, W, vr=0), []),
        Step("pv0 W r0", pv(0, 0, WID), []),
        Step("pv1 W r0", pv(1, 0, WID), []),
        Step("pv2 W r0 completes the quorum", pv(2, 0, WID), [out_pv(3, 1, WID)]),
    ])


def test_silent_proposer_moves_to_next_round() -> None:
    core = core_for(3)
    run(core, [
        Step("start", Start(), [sched(0, "propose")]),
        Step("propose timeout -> nil", timeout(0, "propose"), [out_pv(3, 0, None)]),
        Step("stale timeout ignored", timeout(0, "propose"), []),
        Step("pv own nil", pv(3, 0, None), []),
        Step("pv0 nil", pv(0, 0, None), []),
        Step("pv1 nil -> precommit nil", pv(1, 0, None), [out_pc(3, 0, None)]),
        Step("pc own nil", pc(3, 0, None), []),
        Step("pc0 nil", pc(0, 0, None), []),
        Step("pc1 nil", pc(1, 0, None), [sched(0, "precommit")]),
        Step("-> round 1", timeout(0, "precommit"), [sched(1, "propose")]),
        Step("proposal from the wrong proposer ignored", proposal(0, 1, V), []),
        Step("proposal from round-1 proposer", proposal(1, 1, V), [out_pv(3, 1, VID)]),
    ])
    assert core.round == 1


def test_prevote_timeout_after_split_prevotes() -> None:
    core = core_for(3)
    run(core, [
        Step("start", Start(), [sched(0, "propose")]),
        Step("proposal V", proposal(0, 0, V), [out_pv(3, 0, VID)]),
        Step("pv own V", pv(3, 0, VID), []),
        Step("pv0 nil", pv(0, 0, None), []),
        Step("pv1 W -> 2f+1 any", pv(1, 0, WID), [sched(0, "prevote")]),
        Step("pv2 V: still no quorum for anything", pv(2, 0, VID), []),
        Step("prevote timeout -> precommit nil", timeout(0, "prevote"), [out_pc(3, 0, None)]),
    ])
    assert core.locked_round == -1


def test_invalid_proposal_gets_nil_prevote() -> None:
    core = core_for(3)
    run(core, [
        Step("start", Start(), [sched(0, "propose")]),
        Step("invalid proposal -> nil", proposal(0, 0, V, valid=False), [out_pv(3, 0, None)]),
        Step("pv0 V", pv(0, 0, VID), []),
        Step("pv1 V", pv(1, 0, VID), []),
        Step("pv2 V: no lock on an invalid value", pv(2, 0, VID), [sched(0, "prevote")]),
        Step("pc0 V", pc(0, 0, VID), []),
        Step("pc1 V", pc(1, 0, VID), []),
        Step("pc2 V: never decides an invalid value", pc(2, 0, VID), [sched(0, "precommit")]),
    ])
    assert core.locked_round == -1 and core.decision is None


def test_round_skip_on_one_third() -> None:
    core = core_for(3)
    run(core, [
        Step("start", Start(), [sched(0, "propose")]),
        Step("1/4 in round 2 is not enough", pv(0, 2, None), []),
        Step("same voter again: still 1/4", pc(0, 2, None), []),
        Step("2/4 > 1/3 -> skip to round 2", pv(1, 2, None), [sched(2, "propose")]),
    ])
    assert core.round == 2


def test_duplicate_vote_counted_once() -> None:
    core = core_for(3)
    run(core, [
        Step("start", Start(), [sched(0, "propose")]),
        Step("proposal", proposal(0, 0, V), [out_pv(3, 0, VID)]),
        Step("pv0", pv(0, 0, VID), []),
        Step("pv0 duplicate", pv(0, 0, VID), []),
        Step("pv1: 2/4 counted, not 3", pv(1, 0, VID), []),
        Step("pv1 duplicate", pv(1, 0, VID), []),
        Step("pv2: now 3/4", pv(2, 0, VID), [out_pc(3, 0, VID)]),
    ])


def test_equivocation_detected_and_counted_once() -> None:
    core = core_for(3)
    first, second = signed_vote("prevote", 0, 0, VID), signed_vote("prevote", 0, 0, WID)
    run(core, [
        Step("start", Start(), [sched(0, "propose")]),
        Step("proposal", proposal(0, 0, V), [out_pv(3, 0, VID)]),
        Step("pv0 V", VoteInput(first), []),
        Step("pv0 W -> evidence", VoteInput(second), [Equivocation(first, second)]),
        Step("pv0 nil: reported once only", pv(0, 0, None), []),
        Step("pv1 V: 2/4 for V", pv(1, 0, VID), []),
        Step("pv own V: 3/4", pv(3, 0, VID), [out_pc(3, 0, VID)]),
    ])


def test_proposal_equivocation_detected() -> None:
    core = core_for(3)
    a, b = proposal(0, 0, V), proposal(0, 0, W)
    run(core, [
        Step("start", Start(), [sched(0, "propose")]),
        Step("first proposal", a, [out_pv(3, 0, VID)]),
        Step("conflicting proposal", b, [Equivocation(a.signed, b.signed)]),
    ])


def test_future_height_buffered_and_replayed() -> None:
    core = core_for(3)
    v2 = make_value("height two?")
    v2id = v2.value_id()
    run(core, [
        Step("start", Start(), [sched(0, "propose")]),
        Step("h2 proposal buffered", proposal(1, 0, v2, h=2), []),
        Step("h2 pv0 buffered", pv(0, 0, v2id, h=2), []),
        Step("h2 pv1 buffered", pv(1, 0, v2id, h=2), []),
        Step("h2 pv2 buffered", pv(2, 0, v2id, h=2), []),
        Step("far-future height ignored", pv(0, 0, VID, h=6), []),
        Step("proposal", proposal(0, 0, V), [out_pv(3, 0, VID)]),
        Step("pv0", pv(0, 0, VID), []),
        Step("pv1", pv(1, 0, VID), []),
        Step("pv2", pv(2, 0, VID), [out_pc(3, 0, VID)]),
        Step("pc0", pc(0, 0, VID), []),
        Step("pc1", pc(1, 0, VID), []),
    ])
    out = core.step(pc(2, 0, VID))
    assert len(out) == 1 and isinstance(out[0], Decide) and out[0].height == 1
    assert core.height == 1 and core.decided
    assert core.step(enter(2)) == []  # replays the buffered height-2 messages: nothing to do before Start
    assert core.height == 2 and not core.started
    run(core, [
        Step("start h2 replays proposal and prevotes", Start(), [
            sched(0, "propose", h=2), out_pv(3, 0, v2id, h=2), out_pc(3, 0, v2id, h=2),
        ]),
    ])
    assert core.locked_value == v2


def test_decides_before_start_and_in_later_round() -> None:
    idle = core_for(3)
    run(idle, [
        Step("proposal before start: no vote", proposal(0, 0, V), []),
        Step("pc0", pc(0, 0, VID), []),
        Step("pc1", pc(1, 0, VID), []),
    ])
    out = idle.step(pc(2, 0, VID))
    assert [type(o) for o in out] == [Decide] and idle.height == 1 and idle.decided

    core = core_for(3)
    run(core, [
        Step("start", Start(), [sched(0, "propose")]),
        Step("round 1 precommits before the proposal", pc(1, 1, WID), []),
        Step("f+1 -> round 1", pc(2, 1, WID), [sched(1, "propose")]),
        Step("pc0 r1", pc(0, 1, WID), [sched(1, "precommit")]),
    ])
    out = core.step(proposal(1, 1, W))
    assert len(out) == 1 and isinstance(out[0], Decide)
    assert (out[0].round, out[0].value) == (1, W)
    assert [v.signer for v in out[0].precommits] == [KEYS[i].peer_id for i in (0, 1, 2)]


def test_non_validator_signer_ignored() -> None:
    core = core_for(3)
    outsider = KeyPair.from_seed(b"\x99" * 32)
    vote = Vote(type="prevote", height=1, round=2, value_id=None, voter=outsider.peer_id)
    run(core, [
        Step("start", Start(), [sched(0, "propose")]),
        Step("outsider vote ignored", VoteInput(sign(vote, outsider)), []),
        Step("one validator in round 2 (1/4)", pv(0, 2, None), []),
    ])
    assert core.round == 0


def test_enter_height_moves_a_core_that_fell_behind() -> None:
    """EnterHeight(h) (a height decided elsewhere, folded by the host) moves the core to h."""
    core = core_for(1)
    run(core, [
        Step("start height 1", Start(), [sched(0, "propose")]),
        Step("a prevote at height 1 is recorded", pv(2, 0, VID), []),
        Step("a height-4 prevote is buffered", pv(2, 0, VID, h=4), []),
        Step("entering the current height again is ignored", enter(1), []),
        Step("enter height 4: replay its buffered prevote", enter(4), []),
    ])
    assert (core.height, core.round, core.started, core.locked_round) == (4, 0, False, -1)
    run(core, [
        Step("stale height-1 timeout is dropped", timeout(0, "propose"), []),
        Step("stale height-3 message is dropped", pv(3, 0, VID, h=3), []),
        Step("entering an older height is a no-op", enter(2), []),
        Step("height 4 starts normally", Start(), [sched(0, "propose", h=4)]),
    ])
    assert core.height == 4 and core.started
