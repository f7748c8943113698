"""The runner end to end in one process: 4 nodes, real links on loopback, scripted answers.

These tests exercise node + core + wire + secure transport together without a
model; the real-model testnet is in ``test_e2e_testnet.py``.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import replace
from typing import AsyncIterator

import pytest
import trio

from consensus.messages import Vote, sign
from multillmn.certificate import verify
from multillmn.config import PeerConfig
from peers.engine import Reply, ScriptedEngine
from peers.node import Node, QueryFailed
from peers.transport import Transport
from peers.wire import encode_message
from tests.conftest import Net, make_net

Q = "What is the capital of France?"


@asynccontextmanager
async def running(net: Net, engines: list[ScriptedEngine], *, skip: set[int] = frozenset(),
                  cfg: PeerConfig | None = None) -> AsyncIterator[list[Node]]:
    """Start a node per key (except ``skip``) on loopback and wire their addresses."""
    cfg = cfg or PeerConfig.for_tests()
    ids = [k.peer_id for k in net.keys]
    nodes = []
    async with trio.open_nursery() as nursery:
        for i, key in enumerate(net.keys):
            if i in skip:
                continue
            transport = Transport(key, ("127.0.0.1", 0), {p: None for p in ids},
                                  backoff_initial=0.05, backoff_max=0.5)
            node = Node(replace(cfg, moniker=f"peer{i}"), key, net.genesis, engines[i], transport)
            await nursery.start(transport.run)
            await nursery.start(node.run)
            nodes.append(node)
        for node in nodes:
            for other in nodes:
                if other is not node:
                    node.transport.set_address(other.key.peer_id, ("127.0.0.1", other.transport.listen_port))
        yield nodes
        nursery.cancel_scope.cancel()


def honest(n: int, answer: str = "Paris") -> list[ScriptedEngine]:
    return [ScriptedEngine({Q: answer}, model_name=f"m{i}") for i in range(n)]


async def test_four_honest_nodes_decide_and_certify() -> None:
    net = make_net([1, 1, 1, 1])
    async with running(net, honest(4)) as nodes:
        with trio.fail_after(20):
            decision = await nodes[1].submit(Q)
            await _wait_height(nodes, 2)
    assert decision.value.answer == "Paris" and decision.height == 1
    assert len(decision.value.winners) >= 3
    cert = verify(decision.certificate, net.genesis)
    assert cert.question == Q and cert.precommit_weight >= 3
    # every node decided the same value at height 1
    assert len({n.certificates.get(1)["value_id"] for n in nodes}) == 1


async def test_a_lying_minority_is_outvoted() -> None:
    net = make_net([1, 1, 1, 1])
    engines = honest(3) + [ScriptedEngine({Q: "Berlin"}, model_name="liar")]
    async with running(net, engines) as nodes:
        with trio.fail_after(20):
            decision = await nodes[3].submit(Q)  # even when the liar is the entry peer
    assert decision.value.answer == "Paris"
    assert net.keys[3].peer_id not in decision.value.winners


async def test_silent_proposer_costs_a_round_not_the_network() -> None:
    net = make_net([1, 1, 1, 1])
    ids = [k.peer_id for k in net.keys]
    silent = ids.index(net.genesis.validators.proposer(1, 0))
    async with running(net, honest(4), skip={silent}) as nodes:
        with trio.fail_after(30):
            first = await nodes[0].submit(Q)
            second = await nodes[1].submit(Q)
    assert (first.height, second.height) == (1, 2)
    assert first.round >= 1  # round 0's proposer never spoke: timeout, next round
    assert ids[silent] not in first.value.winners


async def test_weighted_heavy_liar_without_quorum_cannot_win() -> None:
    net = make_net([3, 2, 2, 2])  # the liar holds 1/3 of weight: not enough
    engines = [ScriptedEngine({Q: "Berlin"})] + honest(4)[1:]
    async with running(net, engines) as nodes:
        with trio.fail_after(20):
            decision = await nodes[0].submit(Q)
    assert decision.value.answer == "Paris"


async def test_query_fails_clearly_without_an_answer_quorum() -> None:
    net = make_net([1, 1, 1, 1])
    cfg = replace(PeerConfig.for_tests(), answer_wait_ms=1500)
    async with running(net, honest(4), skip={1, 2}, cfg=cfg) as nodes:
        with trio.fail_after(10), pytest.raises(QueryFailed, match="only 2 of 4 weight answered"):
            await nodes[0].submit(Q)


async def test_garbage_and_forged_messages_are_counted_not_fatal() -> None:
    net = make_net([1, 1, 1, 1])
    outsider = make_net([1], seed=50).keys[0]
    async with running(net, honest(4)) as nodes:
        sender, target = nodes[0].transport, nodes[1].key.peer_id
        with trio.fail_after(10):
            while target not in sender.connected_peers():
                await trio.sleep(0.05)
        sender.send_nowait(target, b"\x00garbage")
        forged = sign(Vote(type="prevote", height=1, round=0, value_id=None, voter=outsider.peer_id), outsider)
        sender.send_nowait(target, encode_message(forged))
        with trio.fail_after(20):
            decision = await nodes[1].submit(Q)
        rejected = nodes[1].rejects.snapshot()
    assert decision.value.answer == "Paris"
    assert sum(rejected.values()) >= 2, rejected


async def _wait_height(nodes: list[Node], height: int) -> None:
    while any(n.height < height for n in nodes):
        await trio.sleep(0.05)


async def test_own_votes_lost_on_a_link_are_sent_again_when_the_height_is_stuck() -> None:
    net = make_net([1, 1, 1, 1])
    cfg = replace(PeerConfig.for_tests(), timeout_propose_ms=400, timeout_prevote_ms=60_000,
                  timeout_precommit_ms=60_000)  # rounds would take a minute: only re-sending can help
    async with running(net, honest(4), skip={3}, cfg=cfg) as nodes:
        lossy = nodes[0].transport.shaper
        for other in nodes[1:]:
            lossy.set(other.key.peer_id, loss=1.0)  # every message of peer 0 is lost ...
        with trio.fail_after(30):
            submitted = trio.Event()

            async def heal() -> None:
                while not nodes[0].driver.own_messages():  # ... until it has voted at height 1
                    await trio.sleep(0.05)
                await trio.sleep(0.3)
                lossy.clear()
                submitted.set()

            async with trio.open_nursery() as n:
                n.start_soon(heal)
                decision = await nodes[1].submit(Q)
    assert submitted.is_set() and decision.value.answer == "Paris" and decision.round == 0


class _BrokenEngine(ScriptedEngine):
    def answer(self, question: str, max_new_tokens: int) -> Reply:
        raise RuntimeError("no plan fits the workers left")


async def test_an_engine_that_fails_skips_the_query_and_the_peer_stays_up() -> None:
    net = make_net([1, 1, 1, 1])
    engines = honest(3) + [_BrokenEngine({Q: "Paris"})]
    async with running(net, engines) as nodes:
        with trio.fail_after(20):
            first = await nodes[0].submit(Q)
            second = await nodes[3].submit(Q)  # the broken peer still takes part in consensus
    assert first.value.answer == second.value.answer == "Paris"
    assert net.keys[3].peer_id not in {a.peer for a in second.answers}
