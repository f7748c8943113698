"""Named fault scenarios on 4 in-process runners (n4f1): each shared Byzantine behaviour
(consensus/driver/behaviours.py) played by a real trio peer."""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import replace
from typing import AsyncIterator

import pytest
import trio

from consensus.driver.behaviours import BehaviourParams, behaviour_names, make_behaviour
from multillmn.config import BYZANTINE_BEHAVIOURS, PeerConfig
from peers.engine import ScriptedEngine
from peers.node import Node, PeerCrashed
from peers.transport import Transport
from tests.conftest import Net, make_net
from tests.test_node import _wait_height

QUESTIONS = [f"What is {i} times three?" for i in range(8)]
TABLE = {q: f"It is {3 * k}." for k, q in enumerate(QUESTIONS)}
BAD = 3  # index of the Byzantine peer


@asynccontextmanager
async def network(net: Net, behaviour: str, **byz: int) -> AsyncIterator[tuple[list[Node], list[str]]]:
    """Four runners on loopback; peer ``BAD`` plays ``behaviour``. Yields the nodes and a crash log."""
    ids = [k.peer_id for k in net.keys]
    nodes: list[Node] = []
    crashed: list[str] = []

    async def run(node: Node, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await node.run(task_status=task_status)
        except* PeerCrashed as group:
            crashed.append(str(group.exceptions[0]))

    async with trio.open_nursery() as nursery:
        for i, key in enumerate(net.keys):
            cfg = replace(PeerConfig.for_tests(), moniker=f"peer{i}")
            if i == BAD:
                cfg = replace(cfg, behaviour=behaviour, **byz)
            transport = Transport(key, ("127.0.0.1", 0), {p: None for p in ids}, backoff_initial=0.05,
                                  backoff_max=0.5)
            node = Node(cfg, key, net.genesis, ScriptedEngine(TABLE, model_name=f"m{i}"), transport)
            await nursery.start(transport.run)
            await nursery.start(run, node)
            nodes.append(node)
        for node in nodes:
            for other in nodes:
                if other is not node:
                    node.transport.set_address(other.key.peer_id, ("127.0.0.1", other.transport.listen_port))
        yield nodes, crashed
        nursery.cancel_scope.cancel()


async def ask_all(nodes: list[Node], n: int = len(QUESTIONS)) -> list[str]:
    return [(await nodes[k % 3].submit(q)).value.answer for k, q in enumerate(QUESTIONS[:n])]


def test_the_config_offers_exactly_the_shared_behaviours() -> None:
    assert list(BYZANTINE_BEHAVIOURS) == behaviour_names()


@pytest.mark.parametrize("behaviour", ["wrong", "junk", "collude"])
async def test_n4f1_bad_answers_are_outvoted_and_lose_weight(behaviour: str) -> None:
    net = make_net([1, 1, 1, 1])
    async with network(net, behaviour) as (nodes, _):
        with trio.fail_after(60):
            answers = await ask_all(nodes)
            await _wait_height(nodes, len(QUESTIONS) + 1)
        final = nodes[0].validators
        digests = {n.driver.chain.weights_digest() for n in nodes[:3]}
    assert answers == [TABLE[q] for q in QUESTIONS]
    assert len(digests) == 1
    assert 10 * final.weight_of(net.keys[BAD].peer_id) <= final.total


async def test_n4f1_copy_late_copies_the_majority() -> None:
    net = make_net([1, 1, 1, 1])
    async with network(net, "copy-late") as (nodes, _):
        with trio.fail_after(60):
            decision = await nodes[0].submit(QUESTIONS[0])
    copied = {a.peer: a.text for a in decision.answers}.get(net.keys[BAD].peer_id)
    assert decision.value.answer == TABLE[QUESTIONS[0]]
    assert copied in (None, TABLE[QUESTIONS[0]])  # it never ran a model, yet it agrees (free-riding)


@pytest.mark.parametrize("behaviour", ["double-vote", "conflicting-proposals"])
async def test_n4f1_equivocation_is_committed_as_evidence_and_slashed(behaviour: str) -> None:
    net = make_net([1, 1, 1, 1])
    bad = net.keys[BAD].peer_id
    async with network(net, behaviour) as (nodes, _):
        with trio.fail_after(60):
            answers = await ask_all(nodes)
            await _wait_height(nodes, len(QUESTIONS) + 1)
        states = [n.driver.chain.state for n in nodes[:3]]
        final = nodes[0].validators
    assert answers == [TABLE[q] for q in QUESTIONS]
    assert all(s is not None and s.evidence for s in states)  # evidence rode in a decided value
    for s in states:  # slashed to trust 0 when the evidence was committed; its honest answers rebuild it slowly
        assert s is not None and 2 * dict(s.trust)[bad] < min(t for p, t in s.trust if p != bad)
    honest = min(final.weight_of(k.peer_id) for k in net.keys if k.peer_id != bad)
    assert 3 * final.weight_of(bad) < 2 * honest


async def test_n4f1_withholding_votes_and_a_slow_peer_do_not_stop_decisions() -> None:
    net = make_net([1, 1, 1, 1])
    for behaviour in ("withhold", "slow"):
        async with network(net, behaviour, slow_ms=300) as (nodes, _):
            with trio.fail_after(60):
                answers = await ask_all(nodes, 4)
        assert answers == [TABLE[q] for q in QUESTIONS[:4]], behaviour


async def test_n4f1_crash_at_height_stops_that_peer_only() -> None:
    net = make_net([1, 1, 1, 1])
    async with network(net, "crash", crash_at_height=3) as (nodes, crashed):
        with trio.fail_after(60):
            answers = await ask_all(nodes, 5)
    assert answers == [TABLE[q] for q in QUESTIONS[:5]]
    assert crashed == ["fault injection: crashing at height 3"]
    assert nodes[BAD].height == 3 and nodes[0].height == 6


def test_a_phased_attacker_answers_wrongly_then_plays_its_behaviour() -> None:
    params = BehaviourParams(from_height=3)
    a, b = (make_behaviour("collude", k.peer_id, params) for k in make_net([1, 1]).keys)
    early = [x.answer_text(QUESTIONS[0]) for x in (a, b)]
    a.height = b.height = 3  # type: ignore[attr-defined]  # what the driver reports to a Phased behaviour
    late = [x.answer_text(QUESTIONS[0]) for x in (a, b)]
    assert early[0] != early[1]  # wrong, each its own
    assert late[0] == late[1] is not None  # colluding: one shared wrong answer
