"""``[p2p] broadcast = "tree"``: seven real Nodes on encrypted loopback links decide queries with their signed
messages spread over latency trees (``peers/broadcast``), also with a relay that silently drops what it should
forward."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import trio

from multillmn.certificate import verify
from multillmn.config import PeerConfig
from peers.broadcast._host import BroadcastTransport
from peers.engine import ScriptedEngine
from peers.node import Node
from peers.transport import Transport
from tests.conftest import Net, make_net

Q = "What is the capital of France?"
N = 7


@asynccontextmanager
async def running(net: Net, cfg: PeerConfig, *, silent: frozenset[int] = frozenset()) -> AsyncIterator[list[Node]]:
    ids = [k.peer_id for k in net.keys]
    nodes = []
    async with trio.open_nursery() as nursery:
        for i, key in enumerate(net.keys):
            transport = Transport(key, ("127.0.0.1", 0), {p: None for p in ids}, backoff_initial=0.05,
                                  backoff_max=0.5)
            for j, pid in enumerate(ids):  # heterogeneous links: 1 to 13 ms one way
                transport.shaper.set(pid, delay_s=(1 + (3 * i + 5 * j) % 13) / 1000)
            node = Node(replace(cfg, moniker=f"peer{i}"), key, net.genesis,
                        ScriptedEngine({Q: "Paris"}, model_name=f"m{i}"), transport)
            if i in silent:
                assert isinstance(node.transport, BroadcastTransport)
                node.transport._on_send = lambda send, own: own  # type: ignore[method-assign]  # never relays
            await nursery.start(transport.run)
            await nursery.start(node.run)
            nodes.append(node)
        for node in nodes:
            for other in nodes:
                if other is not node:
                    assert other.transport.listen_port is not None
                    node.transport.set_address(other.key.peer_id, ("127.0.0.1", other.transport.listen_port))
        yield nodes
        nursery.cancel_scope.cancel()


def _tree(node: Node) -> BroadcastTransport:
    assert isinstance(node.transport, BroadcastTransport)
    return node.transport


async def test_seven_nodes_decide_over_trees() -> None:
    net = make_net([1] * N)
    cfg = replace(PeerConfig.for_tests(), broadcast="tree", broadcast_fanout=2)
    async with running(net, cfg) as nodes:
        assert all(_tree(n).broadcaster.members == tuple(sorted(k.peer_id for k in net.keys)) for n in nodes)
        with trio.fail_after(60):
            decisions = [await nodes[i].submit(Q) for i in (0, 3, 6)]
            while any(n.height < 4 for n in nodes):
                await trio.sleep(0.05)
        stats = [_tree(n).broadcast_statistics() for n in nodes]
        status = nodes[0].status()
    assert [d.height for d in decisions] == [1, 2, 3]
    for d in decisions:
        assert d.value.answer == "Paris" and verify(d.certificate, net.genesis).precommit_weight >= 5
    for h in (1, 2, 3):
        assert len({n.certificates.get(h)["value_id"] for n in nodes}) == 1
    assert all(s["broadcasts"] > 0 and s["delivered"] > 0 and s["core_sent_gossip"] > 0
               for s in stats)
    # a tree: each message crosses about N - 1 links in all (the mesh too), but from many relays, not all
    # from its origin; copies beyond the first are few
    broadcasts = sum(s["broadcasts"] for s in stats)
    assert sum(s["core_sent_gossip"] for s in stats) <= 1.25 * (N - 1) * broadcasts
    assert sum(s.get("core_duplicates", 0) for s in stats) <= 0.25 * sum(s["delivered"] for s in stats)
    assert status["transport"]["broadcast"]["mode"] == "tree"
    assert set(status["transport"]["broadcast"]["latency_ms"]) <= {k.peer_id for k in net.keys}
    assert status["rejected_messages"] == {}


async def test_a_silent_relay_does_not_stop_the_decisions() -> None:
    net = make_net([1] * N)
    cfg = replace(PeerConfig.for_tests(), broadcast="tree", broadcast_fanout=2)
    async with running(net, cfg, silent=frozenset({2})) as nodes:
        with trio.fail_after(60):
            decisions = [await nodes[i].submit(Q) for i in (0, 4)]
            while any(n.height < 3 for n in nodes):
                await trio.sleep(0.05)
    assert [d.value.answer for d in decisions] == ["Paris", "Paris"]
    assert len({n.certificates.get(2)["value_id"] for n in nodes}) == 1
