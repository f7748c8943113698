"""Regressions the simulator found.

1. A peer asked only the peer it last saw ahead for catch-up; when that
   peer crashed, it asked the dead peer for ever and the honest rest, short
   of its weight, stalled (random scenarios 3790 and 9497 of the 10,000-seed
   campaign). The driver now uses that hint once per stuck tick and then asks
   the others in turn.

2. A double voter below 1/3 of the weight once stalled honest peers.

3. Membership (the churn simulator): after an epoch boundary the query pool
   kept the answers of a member that had left, and the proposer crashed
   building a value with an answer of weight 0; a query entered by a member
   that had left stayed the oldest ready one, so every proposal carried it
   and every peer refused it (its signer is no validator). The pool now
   drops both when the set changes (the driver reports the dropped queries
   as expired).

4. Membership: a value's last commit carried only the precommits the
   proposer had when it decided, a bare quorum, so the honest member slower
   than the quorum (200 ms latency, five equal peers) was counted as missing
   nearly every height and removed at the first boundary. Precommits of the
   commit's round for the decided value that arrive later now join the last
   commit, as CometBFT proposers carry those gathered after the commit.

The bug was in ``consensus/votes.py``: only an equivocator's *first* vote
counted, so a peer that received its nil vote first could never count it
towards the quorum the others formed for a value (neither live nor when
catch-up re-sent those votes), nor see the prevote quorum behind a
re-proposal. The fix counts the second vote for its own value (see the
module docstring of ``consensus/votes.py``). These tests failed before it.
"""

from __future__ import annotations

import pytest

from consensus.grouping import build_value, pair_count
from consensus.messages import Answer, Proposal, Query, Signed, Value, Vote, query_id_of, sign
from consensus.sim import random_scenario, run
from consensus.state_machine import Core, Decide, ProposalInput, VoteInput
from consensus.validators import Validator, ValidatorSet
from multillmn.identity import KeyPair

KEYS = sorted((KeyPair.from_seed(bytes([i + 41]) * 32) for i in range(4)), key=lambda k: k.peer_id)
VSET = ValidatorSet(Validator(k.peer_id, k.public_key, 1, f"v{i}") for i, k in enumerate(KEYS))
STALLING_SEEDS = (28, 950, 1026, 1485, 2387, 3956, 4156, 4213)  # random_scenario seeds the bug stalls


def _value() -> tuple[Value, bytes]:
    q = sign(Query(entry=KEYS[0].peer_id, question="2+2?", nonce=bytes(16), max_tokens=8, created_ms=0), KEYS[0])
    answers = [sign(Answer(query_id=query_id_of(q.envelope), peer=k.peer_id, model="m", text="4", gen_ms=1), k)
               for k in KEYS]
    value = build_value(q.envelope, answers, [1000] * pair_count(4), [1] * 4, 800)
    return value, value.value_id()


def _precommit(i: int, vid: bytes | None) -> VoteInput:
    return VoteInput(sign(Vote(type="precommit", height=1, round=0, value_id=vid, voter=KEYS[i].peer_id), KEYS[i]))


def _lagging_peer_sees_quorum_after_nil() -> list[object]:
    """Peer 0 gets the proposal, then peer 3's nil precommit, then precommits for v from 1, 2 and 3."""
    value, vid = _value()
    proposer = VSET.ids.index(VSET.proposer(1, 0))
    core = Core(VSET, KEYS[0].peer_id)
    prop = sign(Proposal(height=1, round=0, valid_round=-1, proposer=KEYS[proposer].peer_id, value=value),
                KEYS[proposer])
    outputs: list[object] = list(core.step(ProposalInput(prop, valid=True)))
    for inp in (_precommit(3, None), _precommit(1, vid), _precommit(2, vid), _precommit(3, vid)):
        outputs += core.step(inp)
    return outputs


def test_precommit_quorum_including_an_equivocator_decides() -> None:
    decisions = [o for o in _lagging_peer_sees_quorum_after_nil() if isinstance(o, Decide)]
    assert len(decisions) == 1
    assert {v.signer for v in decisions[0].precommits} == {KEYS[1].peer_id, KEYS[2].peer_id, KEYS[3].peer_id}


def test_double_voter_below_a_third_cannot_stall_the_network() -> None:
    for seed in STALLING_SEEDS:
        run(random_scenario(seed), seed)  # every invariant, termination included


@pytest.mark.campaign
def test_counting_second_votes_keeps_safety() -> None:
    from consensus.sim import SimConfig

    for seed in range(40):
        assert run(SimConfig(peers=4, byzantine=((seed % 4, "double-vote"),), loss=0.05), seed).within_model
        weighted = SimConfig(peers=7, byzantine=((0, "double-vote"), (2, "double-vote")), weights=(1, 2, 1, 3, 1, 1, 2))
        assert run(weighted, seed).within_model


def test_a_crashed_peer_seen_ahead_does_not_stall_catch_up() -> None:
    from dataclasses import replace

    for seed in (3790, 9497):
        result = run(replace(random_scenario(seed, heights=8), adaptive_weights=True), seed)
        assert result.heights_decided == 8 and not result.violations


def test_a_set_change_drops_answers_and_queries_of_members_that_left() -> None:
    from consensus.driver import QueryPool
    from tests.conftest import make_net

    net = make_net([1, 1, 1, 1])
    everyone = net.genesis.validators
    stay = ValidatorSet(v for v in everyone if v.peer_id != net.keys[3].peer_id)
    pool = QueryPool(everyone)
    mine, theirs = net.query("q1?", entry=0), net.query("q2?", entry=3)
    for q in (mine, theirs):
        pool.add_query(q, 0.0)
        for i in (0, 1, 3):
            pool.add_answer(net.answer(q, i, "Paris"), 1.0)
    assert pool.next_ready() is not None
    dropped = pool.set_validators(stay, 2.0)
    assert [e.query_id for e in dropped] == [query_id_of(theirs.envelope)]
    entry = pool.get(query_id_of(mine.envelope))
    assert entry is not None and set(entry.answers) == {net.keys[0].peer_id, net.keys[1].peer_id}
    assert entry.quorum_at is None and pool.next_ready() is None  # 2 of 3 is no quorum: wait for more
    pool.add_answer(net.answer(mine, 2, "Paris"), 3.0)
    assert pool.next_ready() is entry and entry.quorum_at == 3.0


def test_precommits_that_come_after_the_decision_join_the_last_commit() -> None:
    from consensus.driver import Driver, DriverConfig, Received
    from tests.test_membership import CHAIN, Net as MemberNet

    net = MemberNet(n=4)
    ids = net.chain.validators_at(1).ids
    driver = Driver(net.keys[ids[0]], net.chain, DriverConfig(chain_id=CHAIN))
    value = net.value(1)

    def precommit(voter: str, round_: int = 0, vid: bytes | None = None) -> Signed[Vote]:
        return sign(Vote(chain_id=CHAIN, type="precommit", height=1, round=round_,
                         value_id=vid or value.value_id(), voter=voter), net.keys[voter])

    driver.restore(1, value, tuple(precommit(p) for p in ids[:3]))
    assert len(driver._last_commit) == 3
    for other in (precommit(ids[3], round_=1), precommit(ids[3], vid=b"\x01" * 32)):
        driver.handle(Received(other, ids[3]), 10)  # another round or value: not part of this commit
    assert len(driver._last_commit) == 3
    driver.handle(Received(precommit(ids[3]), ids[3]), 20)
    assert len(driver._last_commit) == 4
    assert net.chain.commit_signers(driver._last_commit, net.chain.validators_at(1), 1) == set(ids)

