"""The ledger follows the epochs on real nodes: a peer joins, another leaves, the ledger's committee follows.

The network of ``tests/test_node_membership.py`` (four genesis nodes, epochs
of 4 heights, scripted answers, loopback links), each node with a ledger. A
fifth node joins and the fourth leaves at the boundary of height 5. The
nodes post their certificates; the node tells its ledger the next epoch's
set (``set_epoch_validators``). The ledgers of the new set end with the
same entries and state; the leaver created no event in segment 1 (and,
its links dropped by the members as the chain forgets it, holds the start
of the same ledger), the joiner none in segment 0 and some in segment 1.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import replace
from typing import AsyncIterator

import trio

from consensus.messages import Leave, sign
from peers.engine import ScriptedEngine
from peers.ledger import LedgerService
from peers.node import Node
from peers.transport import Transport
from tests.test_node_membership import CFG, GENESIS, KEYS, Q, ask_until


@asynccontextmanager
async def network() -> AsyncIterator[list[Node]]:
    members = [k.peer_id for k in KEYS[:4]]
    nodes: list[Node] = []
    async with trio.open_nursery() as nursery:
        for i, key in enumerate(KEYS):
            transport = Transport(key, ("127.0.0.1", 0), {p: None for p in members},
                                  backoff_initial=0.05, backoff_max=0.5)
            await nursery.start(transport.run)
            cfg = replace(CFG, moniker=f"peer{i}", external_address=f"127.0.0.1:{transport.listen_port}")
            ledger = LedgerService.open(key, GENESIS, transport, None, sync_interval_ms=50)
            node = Node(cfg, key, GENESIS, ScriptedEngine({Q: "Paris"}, model_name="m", delay_s=0.05), transport,
                        ledger)
            await nursery.start(node.run)
            nodes.append(node)
        for node in nodes:
            for other in nodes[:4]:
                if other is not node:
                    node.transport.set_address(other.key.peer_id, ("127.0.0.1", other.transport.listen_port))
        yield nodes
        nursery.cancel_scope.cancel()


def _ledger(node: Node) -> LedgerService:
    assert node.ledger is not None
    return node.ledger


async def test_the_ledger_committee_follows_a_join_and_a_leave_on_real_nodes() -> None:
    async with network() as nodes:
        members, joiner, leaver = nodes[:4], nodes[4], nodes[3]
        with trio.fail_after(120):
            await ask_until(members, 1)
            assert members[0].request(joiner.join_request()) is None
            assert leaver.request(sign(Leave(chain_id=GENESIS.chain_id, peer_id=leaver.key.peer_id, created_ms=1),
                                       leaver.key)) is None
            await ask_until(members[:3] + [joiner], 10)
            # every ledger of the new set holds heights 1..9 (two sealed segments) and they agree
            staying = members[:3] + [joiner]
            while not (all(_ledger(n).highest_height() >= 9 and _ledger(n).current >= 2 for n in staying)
                       and len({(_ledger(n).highest_height(), _ledger(n).state_hash()) for n in staying}) == 1):
                await trio.sleep(0.1)
    ledgers = [_ledger(n) for n in staying]
    entries = [[(e.type, e.tx) for e in led.ledger.page(0, 1000)] for led in ledgers]
    assert all(e == entries[0] for e in entries)
    me, gone = joiner.key.peer_id, leaver.key.peer_id
    for led in [*ledgers, _ledger(leaver)]:
        seg0, seg1 = led.segment(0), led.segment(1)
        assert seg0 is not None and gone in seg0.validators and seg0.height(gone) > 0
        assert seg0.height(me) == 0  # the joiner observes epoch 0
        if led is not _ledger(leaver):
            assert led.sealed(0) and seg1 is not None
        if seg1 is not None:
            assert gone not in seg1.validators and me in seg1.validators
            assert seg1.height(gone) == 0  # the leaver stops creating events
    assert all(led.sealed(1) and led.segment(1).height(me) > 0 for led in ledgers)  # type: ignore[union-attr]
    assert not _ledger(joiner).observer
    # the members forget the leaver's links once they sealed its last segment (as the chain forgets it): what
    # its ledger holds is the start of everyone's
    held = [(e.type, e.tx) for e in _ledger(leaver).ledger.page(0, 1000)]
    assert held == entries[0][:len(held)]  # how far it got depends on when its links were dropped
