"""The query pool: answer quorum, orphan answers, expiry and decided queries."""

from __future__ import annotations

import pytest

from consensus.messages import query_id_of
from consensus.driver import PoolFull, QueryPool
from tests.conftest import make_net


def test_quorum_needs_more_than_two_thirds_of_weight() -> None:
    net = make_net([1, 1, 1, 1])
    pool = QueryPool(net.genesis.validators)
    q = net.query()
    entry = pool.add_query(q, now=0.0)
    assert entry is not None and pool.next_ready() is None
    for i in range(2):
        pool.add_answer(net.answer(q, i, "Paris"), now=1.0)
    assert pool.next_ready() is None  # 2/4 is not > 2/3
    pool.add_answer(net.answer(q, 2, "Paris"), now=2.0)
    assert pool.next_ready() is entry and entry.quorum_at == 2.0


def test_weighted_quorum_and_duplicates() -> None:
    net = make_net([4, 1, 1])
    pool = QueryPool(net.genesis.validators)
    q = net.query()
    pool.add_query(q, 0.0)
    assert pool.add_answer(net.answer(q, 0, "Paris"), 0.0)
    assert not pool.add_answer(net.answer(q, 0, "Lyon"), 0.0)  # one answer per peer
    assert pool.next_ready() is None  # 4/6 is exactly 2/3: not a quorum
    pool.add_answer(net.answer(q, 1, "Paris"), 0.0)
    assert pool.next_ready() is not None


def test_answers_overtaking_their_query_are_kept() -> None:
    net = make_net([1, 1, 1])
    pool = QueryPool(net.genesis.validators)
    q = net.query()
    for i in range(3):
        assert pool.add_answer(net.answer(q, i, "Paris"), 0.0)
    entry = pool.add_query(q, 1.0)
    assert entry is not None and len(entry.answers) == 3 and pool.next_ready() is entry


def test_decided_queries_are_refused_and_expired_ones_removed() -> None:
    net = make_net([1, 1, 1])
    pool = QueryPool(net.genesis.validators)
    q1, q2 = net.query("a?"), net.query("b?")
    pool.add_query(q1, 0.0)
    pool.add_query(q2, 5.0)
    assert pool.mark_decided(query_id_of(q1.envelope)) is not None
    assert pool.add_query(q1, 6.0) is None
    assert not pool.add_answer(net.answer(q1, 0, "x"), 6.0)
    gone = pool.expired(now=10.0, wait_s=5.0)
    assert [e.query_id for e in gone] == [query_id_of(q2.envelope)] and len(pool) == 0


def test_discard_forgets_without_deciding() -> None:
    net = make_net([1])
    pool = QueryPool(net.genesis.validators)
    q = net.query()
    pool.add_query(q, 0.0)
    pool.discard(query_id_of(q.envelope))
    assert len(pool) == 0 and not pool.is_decided(query_id_of(q.envelope))
    assert pool.add_query(q, 1.0) is not None


def test_pool_is_bounded() -> None:
    net = make_net([1])
    pool = QueryPool(net.genesis.validators, max_pending=2)
    pool.add_query(net.query("1"), 0)
    pool.add_query(net.query("2"), 0)
    with pytest.raises(PoolFull):
        pool.add_query(net.query("3"), 0)
