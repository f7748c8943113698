"""n4f1 flood: one Byzantine validator tries to grow every table of an honest driver; memory stays bounded.

The attacker signs (validly) proposals for far-future heights and rounds,
conflicting votes in many rounds, forged decisions of later heights, score
vectors for every height, oversized answers and a flood of queries. Every
table the driver keeps stays within its stated bound, and once the bounds
are reached, four times more flooding costs no more memory.
"""

from __future__ import annotations

import hashlib
import tracemalloc

from consensus.chain import SCORE_WINDOW, Chain
from consensus.driver import (
    MAX_CATCHUP_AHEAD,
    MAX_CATCHUP_PER_HEIGHT,
    MAX_CHECKING,
    MAX_FUTURE_PER_SIGNER,
    MAX_REQUESTS,
    Certified,
    Driver,
    DriverConfig,
    Received,
)
from consensus.driver._scoring import FUTURE_HEIGHTS
from consensus.driver.behaviours import forge_decision
from consensus.messages import MAX_ANSWER_CHARS, Answer, Join, Leave, Proposal, Query, Vote, query_id_of, sign
from consensus.scores import ScoreVector
from consensus.state_machine import Timeouts
from consensus.weights import WeightParams
from multillmn.identity import KeyPair
from tests.conftest import make_net
from tests.test_driver_steps import value_of

NET = make_net([1, 1, 1, 1])
ME, BAD = NET.keys[0], NET.keys[3]
CFG = DriverConfig(timeouts=Timeouts(300, 100, 100, 50), answer_grace_ms=100, answer_wait_ms=5000, max_pending=64,
                   max_orphans=64)  # small bounds: reached quickly


def flood(d: Driver, seed: int, scale: int) -> None:
    """``scale`` rounds of every kind of hostile input from validator BAD (all validly signed)."""
    now = 0
    vs = NET.genesis.validators
    for k in range(scale):
        tag = hashlib.sha256(b"%d/%d" % (seed, k)).digest()
        q = sign(Query(entry=BAD.peer_id, question=f"flood {seed} {k}?", nonce=tag[:16], max_tokens=16,
                       created_ms=0), BAD)
        d.handle(Received(q, BAD.peer_id), now)
        big = sign(Answer(query_id=query_id_of(q.envelope), peer=BAD.peer_id, model="m", text="x" * MAX_ANSWER_CHARS,
                          gen_ms=0), BAD)
        d.handle(Received(big, BAD.peer_id), now)
        orphan = sign(Answer(query_id=tag, peer=BAD.peer_id, model="m", text="y" * MAX_ANSWER_CHARS, gen_ms=0), BAD)
        d.handle(Received(orphan, BAD.peer_id), now)
        value = value_of(NET, q, ["Paris"] * 4)
        for height in (1 + k % 8, 1 + k % (3 * MAX_CATCHUP_AHEAD)):
            for round_ in (k % 50, 10**5 + k):
                prop = sign(Proposal(height=height, round=round_, valid_round=-1, proposer=BAD.peer_id, value=value),
                            BAD)
                d.handle(Received(prop, BAD.peer_id), now)
                for kind in ("prevote", "precommit"):
                    for vid in (tag, value.value_id(), None):
                        vote = sign(Vote(type=kind, height=height, round=round_, value_id=vid,  # type: ignore[arg-type]
                                         voter=BAD.peer_id), BAD)
                        d.handle(Received(vote, BAD.peer_id), now)
        forged, precommit, _ = forge_decision(BAD, vs, 2 + k % (2 * MAX_CATCHUP_AHEAD), 800, round_=k % 7)
        d.handle(Certified(precommit.message.height, precommit.message.round, forged, (precommit,)), now)
        vector = sign(ScoreVector(scorer=BAD.peer_id, height=1 + k % 1000, query_id=tag,
                                  scores=((BAD.peer_id, 1000),)), BAD)
        d.handle(Received(vector, BAD.peer_id), now)
        joiner = KeyPair.from_seed(tag)  # the attacker makes up joiners (and leaves, once committed twice)
        join = sign(Join(chain_id="", peer_id=joiner.peer_id, public_key=joiner.public_key, moniker=f"sybil{k}",
                         address=f"10.9.{k % 250}.{k // 250 % 250}:9000", model="m", created_ms=k), joiner)
        d.handle(Received(join, BAD.peer_id), now)
        leave = sign(Leave(chain_id="", peer_id=BAD.peer_id, created_ms=k), BAD)
        d.handle(Received(leave, BAD.peer_id), now)
        now += 1


def within_bounds(d: Driver) -> None:
    s = d.statistics()
    n = len(d.validators)
    assert s["pending"] <= CFG.max_pending
    assert s["orphan_queries"] <= CFG.max_orphans and s["orphan_answers"] <= CFG.max_orphans * n
    assert s["future_proposals"] <= 4 * n * MAX_FUTURE_PER_SIGNER
    assert s["catchup_waiting"] <= MAX_CATCHUP_AHEAD * MAX_CATCHUP_PER_HEIGHT
    assert s["checking"] <= MAX_CHECKING
    assert s["held_proposals"] <= 2 + 1 + 1 + d.core.catchup_rounds
    assert s["score_vectors"] <= (SCORE_WINDOW + 1 + FUTURE_HEIGHTS) * n
    assert s["evidence"] <= n
    assert s["relayable_votes"] <= 2 * n * (d.core.round + 2)
    assert s["join_requests"] <= MAX_REQUESTS and s["leave_requests"] <= n


def test_one_validator_cannot_grow_an_honest_drivers_tables() -> None:
    d = Driver(ME, Chain(NET.genesis.validators, WeightParams.for_tests()), CFG)
    flood(d, 1, 200)
    within_bounds(d)
    s = d.statistics()
    assert s["pending"] == CFG.max_pending and s["orphan_queries"] == CFG.max_orphans  # full: the bounds decide
    assert s["future_proposals"] > 0 and s["catchup_waiting"] == 0  # a forger alone is no credible catch-up
    assert s["join_requests"] == MAX_REQUESTS and s["leave_requests"] == 1 and d.requests_refused["queue-full"] > 0
    assert d.height == 1 and len(d.scores.evidence) == 1  # the conflicting votes were caught, once


def test_four_times_more_flooding_costs_no_more_memory() -> None:
    d = Driver(ME, Chain(NET.genesis.validators, WeightParams.for_tests()), CFG)
    flood(d, 2, 200)  # bounds reached
    tracemalloc.start()
    try:
        flood(d, 3, 100)
        first, _ = tracemalloc.get_traced_memory()
        flood(d, 4, 400)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    within_bounds(d)
    assert after - first < 256 * 1024, f"memory grew by {after - first} bytes under 4x more flooding"
