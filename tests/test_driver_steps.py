"""The peer driver, step by step: each input, the effects it returns, and the driver's state after it.

Four validators with equal weights; the driver under test is one of them
and every other message is signed by hand. The tables check the effects
(by kind, and their key fields) and the state (height, round, step, pool,
requests in flight) after every step, not only at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from consensus.chain import Chain
from consensus.driver import (
    Certified,
    CoreTimeout,
    Decided,
    Driver,
    DriverConfig,
    DriverInput,
    Effect,
    Embed,
    Embedded,
    EvidenceFound,
    Generate,
    Generated,
    GraceTimer,
    Persist,
    Received,
    Schedule,
    Send,
    Tick,
    TimerFired,
)
from consensus.grouping import build_value, pair_count
from consensus.messages import Answer, Proposal, Query, Signed, Value, Vote, query_id_of, sign
from consensus.state_machine import Timeouts
from consensus.weights import WeightParams
from tests.conftest import Net, make_net

Q = "What is the capital of France?"
CFG = DriverConfig(timeouts=Timeouts(300, 100, 100, 50), answer_grace_ms=100, answer_wait_ms=5000, tick_ms=1000)


@dataclass
class Step:
    desc: str
    input: DriverInput
    effects: list[str]  # effect kinds in order, e.g. "Send:prevote", "Persist:VoteInput", "Schedule:Tick"
    state: Callable[[Driver], bool] = field(default=lambda d: True)
    at: int | None = None  # the driver's clock (ms) for this step; default: 10 ms after the previous one


def kinds(effects: list[Effect]) -> list[str]:
    out = []
    for e in effects:
        if isinstance(e, Send):
            msg = e.signed.message
            out.append(f"Send:{msg.type if isinstance(msg, Vote) else msg.KIND}")
        elif isinstance(e, Schedule):
            out.append(f"Schedule:{type(e.timer).__name__}")
        elif isinstance(e, Persist):
            out.append(f"Persist:{type(e.record).__name__}")
        else:
            out.append(type(e).__name__)
    return out


def run(driver: Driver, steps: list[Step], start_ms: int = 0) -> list[list[Effect]]:
    """Feed each step's input (10 ms apart unless it says when); check its effects and the state after it."""
    seen = []
    now = start_ms
    for st in steps:
        now = st.at if st.at is not None else now + 10
        effects = driver.handle(st.input, now)
        assert kinds(effects) == st.effects, f"{st.desc}: got {kinds(effects)}"
        assert st.state(driver), f"{st.desc}: state {driver.height}.{driver.core.round} {driver.core.step_name}"
        seen.append(effects)
    return seen


def driver_for(net: Net, i: int, adaptive: bool = False) -> Driver:
    params = WeightParams.for_tests() if adaptive else None
    return Driver(net.keys[i], Chain(net.genesis.validators, params), CFG)


def query(net: Net, entry: int = 1) -> Signed[Query]:
    return sign(Query(entry=net.keys[entry].peer_id, question=Q, nonce=bytes(16), max_tokens=16, created_ms=0),
                net.keys[entry])


def answer(net: Net, q: Signed[Query], i: int, text: str = "Paris") -> Signed[Answer]:
    return net.answer(q, i, text)


def value_of(net: Net, q: Signed[Query], texts: list[str], height: int = 1) -> Value:
    answers = [answer(net, q, i, t) for i, t in enumerate(texts)]
    n = len(answers)
    vs = net.genesis.validators
    return build_value(q.envelope, answers, [1000 if texts[i] == texts[j] else 0 for i in range(n)
                                             for j in range(i + 1, n)], [1] * n, 800,
                       validators_hash=vs.set_hash(), next_validators_hash=vs.set_hash())


def proposal(net: Net, value: Value, height: int = 1, round_: int = 0) -> Signed[Proposal]:
    who = net.genesis.validators.proposer(height, round_)
    key = next(k for k in net.keys if k.peer_id == who)
    return sign(Proposal(height=height, round=round_, valid_round=-1, proposer=who, value=value), key)


def vote(net: Net, i: int, kind: str, value: Value | None, height: int = 1, round_: int = 0) -> Received:
    k = net.keys[i]
    v = Vote(type=kind, height=height, round=round_,  # type: ignore[arg-type]
             value_id=value.value_id() if value is not None else None, voter=k.peer_id)
    return Received(sign(v, k), k.peer_id)


def index_of(net: Net, peer: str) -> int:
    return next(i for i, k in enumerate(net.keys) if k.peer_id == peer)


def test_a_validator_answers_checks_the_proposal_votes_and_decides() -> None:
    net = make_net([1, 1, 1, 1])
    proposer = index_of(net, net.genesis.validators.proposer(1, 0))
    me = next(i for i in range(4) if i != proposer)
    d = driver_for(net, me)
    q = query(net, entry=proposer)
    qid = query_id_of(q.envelope)
    others = [i for i in range(4) if i not in (me,)]
    v = value_of(net, q, ["Paris"] * 4)
    prop = proposal(net, v)
    seen = run(d, [
        Step("a query: ask the model", Received(q, q.signer), ["Generate"], lambda d: len(d.pool) == 1),
        Step("the model answers: sign and send it", Generated(qid, "Paris", 12), ["Send:answer"],
             lambda d: d.pool.get(qid) is not None and len(d.pool.get(qid).answers) == 1),  # type: ignore[union-attr]
        Step("a second answer", Received(answer(net, q, others[0]), None), [], lambda d: not d.core.started),
        Step("a third: quorum, the height starts", Received(answer(net, q, others[1]), None),
             ["Persist:Start", "Schedule:CoreTimeout"], lambda d: d.core.started and d.core.step_name == "propose"),
        Step("the proposal: its similarities are needed", Received(prop, prop.signer), ["Embed"],
             lambda d: d.statistics()["checking"] == 1),
    ])
    embed = seen[-1][0]
    assert isinstance(embed, Embed) and embed.groups == ((Q, ("Paris",) * 4),)
    run(d, [
        Step("similarities in: valid, prevote", Embedded(embed.request, ((1000,) * pair_count(4),)),
             ["Persist:ProposalInput", "Persist:VoteInput", "Send:prevote"],
             lambda d: d.core.step_name == "prevote" and d.statistics()["checking"] == 0),
        Step("prevote 1", vote(net, others[0], "prevote", v), ["Persist:VoteInput"]),
        Step("prevote 2: a quorum with ours, lock and precommit", vote(net, others[1], "prevote", v),
             ["Persist:VoteInput", "Persist:VoteInput", "Send:precommit"],
             lambda d: d.core.locked_round == 0 and d.core.step_name == "precommit"),
        Step("precommit 1", vote(net, others[0], "precommit", v), ["Persist:VoteInput"]),
        Step("precommit 2: decided, next height entered", vote(net, others[1], "precommit", v),
             ["Persist:VoteInput", "Decided"],
             lambda d: d.height == 2 and not d.core.started and len(d.pool) == 0 and d.pool.is_decided(qid)),
        Step("a late prevote of height 1 changes nothing", vote(net, others[2], "prevote", v), [],
             lambda d: d.height == 2),
    ])


def test_the_proposer_waits_for_the_grace_period_then_proposes() -> None:
    net = make_net([1, 1, 1, 1])
    me = index_of(net, net.genesis.validators.proposer(1, 0))
    d = driver_for(net, me)
    q = query(net, entry=me)
    qid = query_id_of(q.envelope)
    others = [i for i in range(4) if i != me]
    seen = run(d, [
        Step("query", Received(q, None), ["Generate"]),
        Step("own answer", Generated(qid, "Paris", 5), ["Send:answer"]),
        Step("answer 2", Received(answer(net, q, others[0]), None), []),
        Step("answer 3: quorum; as proposer, wait for the fourth (grace)", Received(answer(net, q, others[1]), None),
             ["Persist:Start", "Schedule:GraceTimer", "Schedule:CoreTimeout"],
             lambda d: d.statistics()["checking"] == 0),
        Step("too early: still within the grace period", TimerFired(GraceTimer(1, 0)), [], at=60),
        Step("the grace timer fires: compute similarities of the three", TimerFired(GraceTimer(1, 0)), ["Embed"],
             at=150),
    ])
    embed = seen[-1][0]
    assert isinstance(embed, Embed) and len(embed.groups) == 1 and len(embed.groups[0][1]) == 3
    seen = run(d, [
        Step("similarities in: propose, then prevote our own value",
             Embedded(embed.request, ((1000, 1000, 1000),)),
             ["Persist:ProposeValue", "Persist:ProposalInput", "Send:proposal", "Persist:VoteInput", "Send:prevote"],
             lambda d: d.core.step_name == "prevote" and len(d.own_messages()) == 2),
    ], start_ms=200)
    sent = [e for e in seen[0] if isinstance(e, Send) and isinstance(e.signed.message, Proposal)]
    assert len(sent[0].signed.message.value.answers) == 3


def test_an_invalid_proposal_gets_nil_and_a_proposal_ahead_waits_for_its_height() -> None:
    net = make_net([1, 1, 1, 1])
    proposer = index_of(net, net.genesis.validators.proposer(1, 0))
    me = next(i for i in range(4) if i != proposer)
    d = driver_for(net, me)
    q = query(net, entry=proposer)
    bad = value_of(net, q, ["Paris"] * 4).model_copy(update={"answer": "Berlin"})
    later = proposal(net, value_of(net, query(net, entry=proposer), ["Lyon"] * 4), height=2, round_=0)
    seen = run(d, [
        Step("the query and three answers start the height", Received(q, None), ["Generate"]),
        Step("a", Received(answer(net, q, 0), None), []),
        Step("b", Received(answer(net, q, 1), None), []),
        Step("c", Received(answer(net, q, 2), None), ["Persist:Start", "Schedule:CoreTimeout"]),
        Step("a proposal for height 2 is kept for height 2", Received(later, later.signer), [],
             lambda d: d.statistics()["future_proposals"] == 1 and d.deferred_proposals == 1),
        Step("a tampered answer text: similarities first", Received(proposal(net, bad), None), ["Embed"]),
    ])
    embed = seen[-1][0]
    assert isinstance(embed, Embed)
    run(d, [
        Step("the choice does not follow from the claimed integers: prevote nil",
             Embedded(embed.request, ((1000,) * 6,)), ["Persist:ProposalInput", "Persist:VoteInput", "Send:prevote"],
             lambda d: d.rejected.get("invalid-proposal") == 1 and d.own_messages()[-1].message.value_id is None),
    ])


def test_a_stuck_height_resends_and_relays_on_tick() -> None:
    net = make_net([1, 1, 1, 1])
    proposer = index_of(net, net.genesis.validators.proposer(1, 0))
    me = next(i for i in range(4) if i != proposer)
    d = driver_for(net, me)
    q = query(net, entry=proposer)
    run(d, [
        Step("query", Received(q, None), ["Generate"]),
        Step("own answer", Generated(query_id_of(q.envelope), "Paris", 1), ["Send:answer"]),
        Step("first tick: progress noted", TimerFired(Tick()), ["Schedule:Tick"]),
        Step("second tick, nothing moved: re-send the pending query and our answer, ask to catch up",
             TimerFired(Tick()), ["Schedule:Tick", "Send:query", "Send:answer", "AskCatchUp"]),
    ])


def test_catch_up_from_another_peer_is_checked_against_this_peers_chain() -> None:
    net = make_net([1, 1, 1, 1])
    d = driver_for(net, 0)
    q = query(net, entry=1)
    v = value_of(net, q, ["Paris"] * 4)

    def precommit(i: int, value: Value) -> Signed[Vote]:
        return sign(Vote(type="precommit", height=1, round=0, value_id=value.value_id(),
                         voter=net.keys[i].peer_id), net.keys[i])

    forged = v.model_copy(update={"answer": "Lyon"})
    run(d, [
        Step("one signer is no quorum of our set: refused, its precommit shown to the core",
             Certified(1, 0, v, (precommit(3, v),)), ["Persist:VoteInput"],
             lambda d: d.height == 1 and d.rejected.get("uncertified-catchup") == 1),
        Step("a quorum for a value our chain does not admit: refused",
             Certified(1, 0, forged, tuple(precommit(i, forged) for i in (1, 2, 3))),
             ["Persist:VoteInput", "Persist:VoteInput", "Persist:VoteInput", "EvidenceFound"],
             lambda d: d.height == 1 and d.rejected.get("uncertified-catchup") == 2),
        Step("a quorum for a valid value: decided and folded", Certified(1, 0, v, tuple(precommit(i, v) for i in (1, 2))
                                                                        + (precommit(0, v),)),
             ["Decided"], lambda d: d.height == 2 and d.chain.height == 1),
    ])


def test_equivocation_is_reported_once_per_round_and_kind() -> None:
    net = make_net([1, 1, 1, 1])
    d = driver_for(net, 0)
    q = query(net, entry=1)
    a, b = value_of(net, q, ["Paris"] * 4), value_of(net, q, ["Lyon"] * 4)
    seen = run(d, [
        Step("prevote for a", vote(net, 2, "prevote", a), ["Persist:VoteInput"]),
        Step("prevote for b by the same voter: evidence", vote(net, 2, "prevote", b),
             ["Persist:VoteInput", "EvidenceFound"], lambda d: len(d.scores.evidence) == 1),
        Step("a third one is not reported again", vote(net, 2, "prevote", None), ["Persist:VoteInput"]),
    ])
    found = seen[1][1]
    assert isinstance(found, EvidenceFound)


def test_adaptive_weights_score_a_decision_and_sign_a_vector() -> None:
    net = make_net([1, 1, 1, 1])
    d = driver_for(net, 0, adaptive=True)
    q = query(net, entry=1)
    vs = net.genesis.validators
    texts = ["Paris", "Paris", "Paris", "Lyon"]
    answers = [answer(net, q, i, t) for i, t in enumerate(texts)]
    v = build_value(q.envelope, answers, [1000, 1000, 0, 1000, 0, 0], [1] * 4, 800, validators_hash=vs.set_hash(),
                    next_validators_hash=vs.set_hash())
    precommits = tuple(sign(Vote(type="precommit", height=1, round=0, value_id=v.value_id(),
                                 voter=net.keys[i].peer_id), net.keys[i]) for i in (1, 2, 3))
    seen = run(d, [
        Step("a checked catch-up decision: certify, then similarities to score it",
             Certified(1, 0, v, precommits), ["Decided", "Embed"], lambda d: d.statistics()["scoring_jobs"] == 1),
    ])
    embed = seen[0][1]
    assert isinstance(embed, Embed)
    seen = run(d, [
        Step("similarities in: sign and send our score vector", Embedded(embed.request, ((1000, 1000, 0, 1000, 0, 0),)),
             ["Send:scores"], lambda d: len(d.scores.own_vectors(d.me)) == 1),
    ])
    vector: Any = seen[0][0]
    assert dict(vector.signed.message.scores)[net.keys[3].peer_id] == 0  # the outvoted answer
    assert isinstance(seen, list) and not [e for e in seen[0] if isinstance(e, (Decided, Generate))]
    assert CoreTimeout(1, 0, "propose") != CoreTimeout(1, 1, "propose")  # timers are plain data
