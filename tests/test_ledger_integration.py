"""The hashgraph ledger in the runner: 4 in-process nodes with SQLite stores on loopback, scripted answers.

Certificates become ledger transactions, every peer orders them the same way,
bad ``dag_*`` messages are counted and never fatal, ``/v1/ledger`` pages the
order, and a node restarted from its store has the same order and state and
then catches up the heights it missed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import trio

from consensus.messages import Envelope, Signed, sign
from dag import encode_event, known_vector, sign_event
from dag.messages import DagEvents, DagSync
from multillmn.certificate import verify
from multillmn.config import PeerConfig
from peers.api import PeerHandle, create_app
from peers.engine import ScriptedEngine
from peers.ledger import LedgerService
from peers.node import Node
from peers.transport import Transport
from peers.wire import decode_message, encode_message
from tests.conftest import Net, make_net
from tests.test_node import Q, honest

CFG = PeerConfig.for_tests()


@dataclass
class _Running:
    node: Node
    scope: trio.CancelScope
    done: trio.Event = field(default_factory=trio.Event)


class Cluster:
    """Nodes with ledgers, each in its own cancel scope so one can be stopped and restarted."""

    def __init__(self, nursery: trio.Nursery, net: Net, engines: list[ScriptedEngine], dir: Path) -> None:
        self.nursery, self.net, self.engines, self.dir = nursery, net, engines, dir
        self.running: dict[int, _Running] = {}

    def store(self, i: int) -> Path:
        return self.dir / f"peer{i}" / "ledger.sqlite"

    async def start(self, i: int) -> Node:
        key = self.net.keys[i]
        ids = [k.peer_id for k in self.net.keys]
        transport = Transport(key, ("127.0.0.1", 0), {p: None for p in ids}, backoff_initial=0.05, backoff_max=0.3)
        ledger = LedgerService.open(key, self.net.genesis, transport, self.store(i),
                                    sync_interval_ms=CFG.ledger_sync_interval_ms, snapshot_every=8)
        node = Node(replace(CFG, moniker=f"peer{i}"), key, self.net.genesis, self.engines[i], transport, ledger)
        run = _Running(node, trio.CancelScope())
        await self.nursery.start(self._run, run, transport)
        self.running[i] = run
        for j, other in self.running.items():
            if j != i:
                other.node.transport.set_address(key.peer_id, ("127.0.0.1", transport.listen_port))
                transport.set_address(other.node.key.peer_id, ("127.0.0.1", other.node.transport.listen_port))
        return node

    async def _run(self, run: _Running, transport: Transport, *,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with run.scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(transport.run)
                await nursery.start(run.node.run)
                task_status.started()
        run.done.set()

    async def stop(self, i: int) -> None:
        run = self.running.pop(i)
        run.scope.cancel()
        await run.done.wait()

    @property
    def nodes(self) -> list[Node]:
        return [r.node for _, r in sorted(self.running.items())]


@asynccontextmanager
async def cluster(dir: Path, n: int = 4) -> AsyncIterator[Cluster]:
    net = make_net([1] * n)
    async with trio.open_nursery() as nursery:
        c = Cluster(nursery, net, honest(n), dir)
        for i in range(n):
            await c.start(i)
        yield c
        nursery.cancel_scope.cancel()


def _ledger(node: Node) -> LedgerService:
    assert node.ledger is not None
    return node.ledger


def _settled(nodes: list[Node], heights: list[int]) -> bool:
    stats = [_ledger(n).statistics() for n in nodes]
    return (all(s["certified_heights"] == heights and s["pending_transactions"] == 0
                and s["unordered_events_with_transactions"] == 0 for s in stats)
            and len({s["state_hash"] for s in stats}) == 1)


async def _wait_settled(nodes: list[Node], heights: list[int], timeout: float = 20) -> None:
    with trio.fail_after(timeout):
        while not _settled(nodes, heights):
            await trio.sleep(0.05)


def _vector(node: Node) -> tuple[tuple[str, int], ...]:
    return tuple(sorted(known_vector(_ledger(node).hashgraph).items()))


def _cert_entries(node: Node) -> list[tuple[int, bytes, bytes]]:
    return [(e.position, e.event_hash, e.tx) for e in _ledger(node).ledger.page(0, 1000) if e.type == "certificate"]


async def test_three_decisions_are_ordered_identically_by_all_four_ledgers(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        with trio.fail_after(40):
            for entry in (0, 1, 2):
                await c.nodes[entry].submit(Q)
        await _wait_settled(c.nodes, [1, 2, 3])
        nodes = c.nodes
        assert len({tuple(_cert_entries(n)) for n in nodes}) == 1
        assert len(_cert_entries(nodes[0])) == 3
        led = _ledger(nodes[0])
        for h in (1, 2, 3):
            cert = led.certificate(h)
            assert cert is not None and verify(cert, c.net.genesis).height == h
            assert cert["value_id"] == nodes[1].certificates.get(h)["value_id"]
        # the idle network goes quiet: once the last events have spread, no new ones are made
        with trio.fail_after(10):
            while len({_vector(n) for n in nodes}) > 1:
                await trio.sleep(0.05)
        vector = _vector(nodes[0])
        await trio.sleep(0.5)
        assert {_vector(n) for n in nodes} == {vector}


async def test_bad_dag_messages_are_rejected_and_counted(tmp_path: Path) -> None:
    outsider = make_net([1], seed=50).keys[0]
    async with cluster(tmp_path) as c:
        net = c.net
        sender, target = c.nodes[0], c.nodes[1]
        with trio.fail_after(10):
            while target.key.peer_id not in sender.transport.connected_peers():
                await trio.sleep(0.05)
        keys = net.genesis.validators.public_key_of
        me = sender.key.peer_id
        good = sign(DagSync(sender=me, vector={}), sender.key)
        # 1. malformed event bytes inside a signed batch: refused by the wire schema
        bad_batch = _forge(DagEvents, {"sender": me, "events": (b"\x00not an event",)}, sender)
        # 2. a sync with a bad signature
        unsigned = encode_message(Signed(good.message, Envelope(body=good.envelope.body, sig=bytes(64))))
        # 3. a sync signed by a non-validator
        stranger = encode_message(sign(DagSync(sender=outsider.peer_id, vector={}), outsider))
        # 4. a well-formed batch carrying an event by a non-validator: refused by the hashgraph
        alien = sign_event(outsider, seq=0, self_parent=None, other_parent=None, timestamp=1)
        alien_batch = encode_message(sign(DagEvents(sender=me, events=(encode_event(alien),)), sender.key))
        # 5. a vector with a bad key
        bad_vector = _forge(DagSync, {"sender": me, "vector": {"nope": 1}}, sender)
        for payload in (bad_batch, unsigned, stranger, bad_vector):
            try:
                decode_message(payload, keys)
            except ValueError:
                pass
            else:
                raise AssertionError("a bad dag message decoded")
        before = sum(target.rejects.snapshot().values())
        for payload in (bad_batch, unsigned, stranger, alien_batch, bad_vector, b"\x00garbage"):
            sender.transport.send_nowait(target.key.peer_id, payload)
        with trio.fail_after(10):
            while sum(target.rejects.snapshot().values()) < before + 6:
                await trio.sleep(0.05)
        rejected = target.rejects.snapshot()
        assert rejected.get("dag-event", 0) >= 1 and rejected.get("schema", 0) >= 2, rejected
        assert rejected.get("bad-signature", 0) >= 1 and rejected.get("unknown-signer", 0) >= 1, rejected
        with trio.fail_after(30):
            decision = await target.submit(Q)
        assert decision.value.answer == "Paris"
        await _wait_settled(c.nodes, [1])


def _forge(model: Any, body: dict[str, Any], node: Node) -> bytes:
    """A correctly signed message whose body breaks the schema (built without validation)."""
    from multillmn import canonical

    raw = canonical.pack(body)
    return canonical.pack({"k": model.KIND, "b": raw, "s": node.key.sign(model.KIND, raw)})


async def test_ledger_api_pages_and_validates(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        with trio.fail_after(40):
            await c.nodes[0].submit(Q)
            await c.nodes[1].submit(Q)
        await _wait_settled(c.nodes, [1, 2])
        node = c.nodes[2]
        handle = PeerHandle(node.key.peer_id, "peer2", "m2", phase="ready", node=node)
        app = create_app(handle)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://peer") as client:
            page = (await client.get("/v1/ledger")).json()
            assert page["offset"] == 0 and page["limit"] == 50 and page["total"] >= 2
            assert page["state_hash"] == _ledger(node).state_hash()
            certs = [e for e in page["entries"] if e["type"] == "certificate"]
            assert [e["height"] for e in certs] == [1, 2]
            assert certs[0]["answer"] == "Paris" and certs[0]["question"] == Q
            one = (await client.get("/v1/ledger", params={"offset": 1, "limit": 1})).json()
            assert one["entries"] == page["entries"][1:2]
            assert (await client.get("/v1/ledger", params={"offset": 10_000})).json()["entries"] == []
            for params in ({"limit": 0}, {"limit": 501}, {"offset": -1}, {"limit": "x"}):
                r = await client.get("/v1/ledger", params=params)
                assert r.status_code == 422, (params, r.text)
            state = (await client.get("/v1/ledger/state")).json()
            assert state["state_hash"] == page["state_hash"] and state["certified_heights"] == [1, 2]
            status = (await client.get("/v1/status")).json()
            assert status["ledger"]["state_hash"] == page["state_hash"]


async def test_restarted_node_replays_its_store_then_catches_up(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        with trio.fail_after(40):
            await c.nodes[0].submit(Q)
            await c.nodes[1].submit(Q)
        await _wait_settled(c.nodes, [1, 2])
        old = _ledger(c.running[3].node)
        order, state = old.hashgraph.order_hashes(), old.state_hash()
        await c.stop(3)
        gone = c.net.keys[3].peer_id
        for n in c.nodes:  # drop what the others send peer3 meanwhile (else their queues replay it)
            n.transport.shaper.set(gone, loss=1.0)
        # while peer3 is down, the other three decide height 3
        with trio.fail_after(40):
            await c.nodes[0].submit(Q)
        await _wait_settled(c.nodes, [1, 2, 3])
        # reopen the store alone: same order and state as before the stop
        transport = Transport(c.net.keys[3], ("127.0.0.1", 0), {})
        reopened = LedgerService.open(c.net.keys[3], c.net.genesis, transport, c.store(3))
        try:
            assert reopened.store is not None and reopened.store.latest_snapshot() is not None
            assert reopened.hashgraph.order_hashes() == order and reopened.state_hash() == state
        finally:
            reopened.close()
        for n in c.nodes:
            n.transport.shaper.clear(gone)
        node = await c.start(3)
        assert node.height == 3  # resumed after its last certified height, from the store
        await _wait_settled(c.nodes, [1, 2, 3])
        with trio.fail_after(10):
            while node.height != 4:
                await trio.sleep(0.05)
        assert {n.height for n in c.nodes} == {4}
        # it rebuilt its weights from the certified values: the same state as every other peer
        assert len({n.driver.chain.weights_digest() for n in c.nodes}) == 1
        assert node.validators == c.nodes[0].validators
        for n in c.nodes:  # the ledger derived the same weights from the certified values
            derived = _ledger(n).ledger
            assert derived.weights_at(3) == {v.peer_id: v.weight for v in n.driver.chain.validators_at(3)}
            assert "certificate set differs" not in derived.ignored
        cert3 = node.certificate(3)  # served from the ledger: this run decided nothing itself
        assert node.certificates.decided == 0
        assert cert3 is not None and cert3["value_id"] == c.nodes[0].certificates.get(3)["value_id"]
        # and it takes part in the next decision
        with trio.fail_after(40):
            decision = await node.submit(Q)
        assert decision.height == 4
        await _wait_settled(c.nodes, [1, 2, 3, 4])


def _service(net: Net, i: int, path: Path | None, **kwargs: Any) -> LedgerService:
    transport = Transport(net.keys[i], ("127.0.0.1", 0), {k.peer_id: None for k in net.keys})
    return LedgerService.open(net.keys[i], net.genesis, transport, path, **kwargs)


def test_single_peer_orders_alone_snapshots_and_replays(tmp_path: Path) -> None:
    """One validator: its own events reach consensus; the store restores order, state and snapshot."""
    from multillmn.certificate import build_certificate

    net = make_net([1])
    value = net.value(["Paris"])
    cert = build_certificate(net.genesis, 1, 0, value, (net.precommit(0, 1, 0, value),))
    path = tmp_path / "data" / "ledger.sqlite"
    svc = _service(net, 0, path, snapshot_every=1)
    svc.submit_certificate(1, cert)
    svc.submit_certificate(1, cert)  # the same height twice is queued once
    assert svc.statistics()["pending_transactions"] == 1
    seen: list[int] = []
    svc.on_certificate = lambda h, c: seen.append(h)
    for _ in range(20):
        svc._maybe_create(None)  # what run() does each interval when there are no other peers
    assert seen == [1] and svc.certificate(1) == json_roundtrip(cert)
    stats = svc.statistics()
    assert stats["unordered_events_with_transactions"] == 0 and stats["pending_transactions"] == 0
    events, order, state = len(svc.hashgraph), svc.hashgraph.order_hashes(), svc.state_hash()
    svc._maybe_create(None)
    assert len(svc.hashgraph) == events  # nothing left to order: no new events
    svc.close()
    again = _service(net, 0, path)
    try:
        assert again.store is not None and again.store.latest_snapshot() is not None
        assert again.hashgraph.order_hashes() == order and again.state_hash() == state
        assert again.highest_height() == 1
    finally:
        again.close()


def json_roundtrip(cert: dict[str, Any]) -> dict[str, Any]:
    import json

    return dict(json.loads(json.dumps(cert)))


def test_equivocation_becomes_an_evidence_transaction(tmp_path: Path) -> None:
    from consensus.evidence import from_equivocation
    from consensus.state_machine import Equivocation
    from dag import Ledger

    net = make_net([1, 1, 1, 1])
    a, b = net.value(["Paris"] * 4), net.value(["Lyon"] * 4)
    svc = _service(net, 0, None)
    svc.submit_evidence(from_equivocation(Equivocation(net.precommit(2, 1, 0, a), net.precommit(2, 1, 0, b))))
    same = net.precommit(2, 1, 0, a)
    svc.submit_evidence(from_equivocation(Equivocation(same, same)))  # not evidence: refused
    svc._maybe_create(None)
    ev = svc.hashgraph.head(net.keys[0].peer_id)
    assert ev is not None and len(ev.transactions) == 1
    ledger = Ledger()
    assert ledger.apply([ev]) == 1
    assert ledger.evidence[0]["kind"] == "duplicate_vote" and ledger.evidence[0]["peer_id"] == net.keys[2].peer_id


def test_more_pending_transactions_than_one_event_holds_still_drain(tmp_path: Path) -> None:
    """Regression: past MAX_TRANSACTIONS small pending transactions, event creation used to fail for good."""
    from dag import MAX_TRANSACTIONS, weights_tx

    net = make_net([1])
    svc = _service(net, 0, tmp_path / "ledger.sqlite")
    try:
        total = MAX_TRANSACTIONS + 900
        for h in range(1, total + 1):
            svc.submit(weights_tx(h, {net.keys[0].peer_id: 1}))
        assert svc.statistics()["pending_transactions"] == total
        for _ in range(10):
            svc._maybe_create(None)
        assert svc.statistics()["pending_transactions"] == 0
    finally:
        svc.close()
