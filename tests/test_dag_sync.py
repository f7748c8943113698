"""Gossip about gossip: a pull sends exactly the events the puller lacks, parents first."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dag import Hashgraph, SyncError, check_vector, events_missing, known_vector, sign_event
from dag.sim import GossipSim, keys_for, validator_set
from dag.sync import ancestors_missing, receive


def subgraph(sim: GossipSim, keep: float, seed: int) -> Hashgraph:
    """A graph holding a random ancestor-closed part of everything created."""
    rng = random.Random(seed)
    hg = Hashgraph(sim.validators, verify=False)
    for e in sim.created:
        parents_in = all(p is None or p in hg for p in (e.self_parent, e.other_parent))
        if parents_in and rng.random() < keep:
            hg.insert(e)
    return hg


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), keep_a=st.floats(0, 1), keep_b=st.floats(0, 1))
def test_sync_sends_exactly_the_missing_events_in_topological_order(
        seed: int, keep_a: float, keep_b: float) -> None:
    sim = GossipSim([1, 2, 1, 1], seed=seed % 7, observers=())
    sim.run(40)
    a, b = subgraph(sim, keep_a, seed), subgraph(sim, keep_b, seed + 1)
    # Ancestor-closed per creator chain: a creator's events held are a prefix of its chain.
    sent = events_missing(b, known_vector(a))
    assert {e.hash for e in sent} == {e.hash for e in b} - {e.hash for e in a}
    for e in sent:  # parents first: each event inserts in turn
        a.insert(e)
    assert {e.hash for e in b} <= {e.hash for e in a}
    assert events_missing(b, known_vector(a)) == []


def test_known_vector_counts_seqs_per_creator() -> None:
    sim = GossipSim([1, 1, 1], seed=3, observers=())
    sim.run(30)
    g = sim.nodes[0].graph
    vec = known_vector(g)
    for v in sim.validators:
        assert vec.get(v.peer_id, 0) == len(g.events_by(v.peer_id))
    assert events_missing(g, {}) == list(g)  # insertion order is topological


@pytest.mark.parametrize("vector,reason", [
    ([1, 2], "map"),
    ({"nothex": 1}, "not a peer id"),
    ({"a" * 40: -1}, "count"),
    ({"a" * 40: True}, "count"),
])
def test_bad_vectors_are_rejected(vector: object, reason: str) -> None:
    with pytest.raises(SyncError, match=reason):
        check_vector(vector)


def test_unseen_fork_is_repaired_through_missing_parents() -> None:
    """X and Y each hold one branch of A's fork at seq 1; a count cannot tell, a missing parent can."""
    keys = keys_for(4, seed=8)
    vs = validator_set(keys, [1, 1, 1, 1])
    a, b, c, d = keys
    a0, b0, c0, d0 = (sign_event(k, seq=0, self_parent=None, other_parent=None, timestamp=1) for k in keys)
    a1 = sign_event(a, seq=1, self_parent=a0.hash, other_parent=b0.hash, timestamp=2)
    a1_twin = sign_event(a, seq=1, self_parent=a0.hash, other_parent=c0.hash, timestamp=2)
    b1 = sign_event(b, seq=1, self_parent=b0.hash, other_parent=a1.hash, timestamp=3)
    d1 = sign_event(d, seq=1, self_parent=d0.hash, other_parent=a1_twin.hash, timestamp=3)
    x, y = Hashgraph(vs), Hashgraph(vs)
    for e in (a0, b0, c0, d0, a1, b1):
        x.insert(e)
    for e in (a0, b0, c0, d0, a1_twin, d1):
        y.insert(e)
    res = receive(x, events_missing(y, known_vector(x)))
    assert res.pending == [d1] and res.missing == [a1_twin.hash]
    res = receive(x, ancestors_missing(y, res.missing, known_vector(x)) + res.pending)
    assert not res.missing and not res.pending and not res.rejected
    assert {e.hash for e in y} <= {e.hash for e in x}
    assert x.forkers == {a.peer_id} and x.take_evidence()[0].second == a1_twin
    # Now that X knows A forked, its vector asks for A's events from the fork on, and X sends all
    # of A's branches from there (a superset for a forker: Y drops the twin it holds).
    assert known_vector(x)[a.peer_id] == 1
    assert {e.hash for e in events_missing(x, known_vector(y))} == {b1.hash, a1.hash, a1_twin.hash}
    with pytest.raises(SyncError, match="hashes"):
        ancestors_missing(y, [b"short"], {})
