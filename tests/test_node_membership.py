"""Membership on real nodes in one process: a peer joins a running network, another leaves.

Four genesis nodes with an epoch of 4 heights, scripted answers, real links on
loopback. A fifth node, outside the genesis, hands its signed join request to
one member (as ``POST /v1/membership/join`` does); once the request is
committed the members link to it, it catches up by certificates and votes
from the next boundary on. A member asks to leave and is out at the boundary
after. Every node ends with the same chain state (weights, members, records).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import replace
from typing import AsyncIterator

import trio

from consensus.messages import Leave, sign
from multillmn.config import PeerConfig
from multillmn.genesis import Genesis, Params
from multillmn.identity import KeyPair
from peers.engine import ScriptedEngine
from peers.node import Node
from peers.transport import Transport

Q = "What is the capital of France?"
KEYS = [KeyPair.from_seed(bytes([i + 61]) * 32) for i in range(5)]
GENESIS = Genesis.build("members", [(f"peer{i}", k.public_key, 1) for i, k in enumerate(KEYS[:4])],
                        Params(epoch_length=4, models=("m",)))
CFG = replace(PeerConfig.for_tests(), model="m")


@asynccontextmanager
async def network() -> AsyncIterator[list[Node]]:
    """Four genesis nodes and the joiner (last), every transport knowing the genesis members."""
    members = [k.peer_id for k in KEYS[:4]]
    nodes: list[Node] = []
    async with trio.open_nursery() as nursery:
        for i, key in enumerate(KEYS):
            transport = Transport(key, ("127.0.0.1", 0), {p: None for p in members},
                                  backoff_initial=0.05, backoff_max=0.5)
            await nursery.start(transport.run)
            cfg = replace(CFG, moniker=f"peer{i}", external_address=f"127.0.0.1:{transport.listen_port}")
            node = Node(cfg, key, GENESIS, ScriptedEngine({Q: "Paris"}, model_name="m", delay_s=0.05), transport)
            await nursery.start(node.run)
            nodes.append(node)
        for node in nodes:
            for other in nodes[:4]:
                if other is not node:
                    node.transport.set_address(other.key.peer_id, ("127.0.0.1", other.transport.listen_port))
        yield nodes
        nursery.cancel_scope.cancel()


async def ask_until(nodes: list[Node], height: int) -> None:
    """Keep questions flowing (through the genesis members) until every node is past ``height``."""
    k = 0
    while min(n.height for n in nodes) <= height:
        entry = nodes[k % 3]  # not peer3, which leaves
        with trio.move_on_after(10):
            await entry.submit(f"{Q} ({k})")
        k += 1
        await trio.sleep(0.3)  # a pace at which a newcomer catches up within its first epoch


async def test_a_peer_joins_a_running_network_and_another_leaves() -> None:
    async with network() as nodes:
        members, joiner = nodes[:4], nodes[4]
        with trio.fail_after(120):
            await ask_until(members, 1)
            first = joiner.join_request()
            assert members[0].request(first) is None  # accepted: relayed to every member
            assert members[0].request(first) is None  # the same request again: known, nothing to do
            newer = sign(first.message.model_copy(update={"created_ms": first.message.created_ms + 1}), joiner.key)
            again = members[0].request(newer)  # a second request while the first waits
            assert again is not None and "already-requested" in again
            leaver = members[3]
            assert leaver.request(sign(Leave(chain_id=GENESIS.chain_id, peer_id=leaver.key.peer_id, created_ms=1),
                                       leaver.key)) is None
            await ask_until(members[:3] + [joiner], 13)
    chains = [n.driver.chain for n in nodes[:3] + [joiner]]
    me, gone = joiner.key.peer_id, nodes[3].key.peer_id
    vs = chains[0].validators_at(chains[0].height)
    assert me in vs and gone not in vs and len(vs) == 4
    assert len({c.weights_digest() for c in chains}) == 1  # the joiner folded the same history
    record = chains[0].members.stability([me])[me]  # type: ignore[union-attr]
    assert sum(e["precommits"] for e in record["epochs"].values()) >= 2  # it voted, and its votes counted
    status = nodes[0].status()["membership"]
    assert status["requests_refused"] == {"already-requested": 1} and status["transitions"]
    assert joiner.status()["member"] and not nodes[3].status()["member"]
