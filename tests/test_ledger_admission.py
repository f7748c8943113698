"""Ledger admission control (issue 10): a flood is refused with a clear signal beyond the bounds, certificates
and evidence still get in, event creation is paced by the ordering lag, and nothing accepted is lost.

The last test runs four :class:`LedgerService` peers gossiping over in-memory links in virtual time.
"""

from __future__ import annotations

import json
from typing import Any

import trio
import trio.testing

from consensus.evidence import from_equivocation
from consensus.messages import VerifiedCache
from consensus.state_machine import Equivocation
from dag import weights_tx
from dag.messages import DagEvents
from multillmn import canonical
from multillmn.certificate import build_certificate
from multillmn.identity import PeerId
from peers.ledger import MAX_PENDING, Admission, LedgerService
from peers.wire import decode_message
from tests.conftest import Net, make_net
from tests.fuzzcorpus import deep_msgpack


class _Links:
    """In-memory links between services: what ``Transport`` offers the ledger (``send_nowait``,
    ``connected_peers``), each peer's inbound frames on a channel."""

    def __init__(self, ids: list[PeerId]) -> None:
        self.ids = ids
        self.channels = {p: trio.open_memory_channel[tuple[PeerId, bytes]](10_000) for p in ids}
        self.sent: dict[str, int] = {}

    def endpoint(self, me: PeerId) -> Any:
        links = self

        class _Endpoint:
            def send_nowait(self, peer: PeerId, payload: bytes) -> bool:
                kind = str(canonical.unpack(payload)["k"])
                links.sent[kind] = links.sent.get(kind, 0) + 1
                links.channels[peer][0].send_nowait((me, payload))
                return True

            def connected_peers(self) -> list[PeerId]:
                return [p for p in links.ids if p != me]

        return _Endpoint()


def _service(net: Net, i: int, transport: Any = None, **kwargs: Any) -> LedgerService:
    return LedgerService.open(net.keys[i], net.genesis, transport, None, **kwargs)


def _certificate(net: Net, height: int = 1) -> dict[str, Any]:
    value = net.value(["Paris"] * len(net.keys))
    quorum = tuple(net.precommit(i, height, 0, value) for i in range(len(net.keys)))
    return dict(json.loads(json.dumps(build_certificate(net.genesis, height, 0, value, quorum))))


def _evidence(net: Net) -> Any:
    a, b = net.value(["Paris"] * len(net.keys)), net.value(["Lyon"] * len(net.keys))
    return from_equivocation(Equivocation(net.precommit(0, 1, 0, a), net.precommit(0, 1, 0, b)))


def _ordered_txs(svc: LedgerService) -> list[bytes]:
    return [tx for ev in svc.hashgraph.ordered() for tx in ev.transactions]


def test_a_flood_is_refused_beyond_the_bound_but_certificates_and_evidence_get_in() -> None:
    net = make_net([1])
    me = net.keys[0].peer_id
    svc = _service(net, 0, monotonic=lambda: 0.0)  # the queue's age is another test's subject
    # not bounded msgpack: every other peer would refuse the event carrying it
    assert svc.submit(deep_msgpack(1010)) is Admission.INVALID
    assert svc.submit(b"\xc1") is Admission.INVALID
    txs = [weights_tx(h, {me: 1}) for h in range(1, MAX_PENDING + 2001)]
    results = [svc.submit(tx) for tx in txs]
    assert results == [Admission.QUEUED] * MAX_PENDING + [Admission.FULL] * 2000
    assert not Admission.FULL.accepted and Admission.QUEUED.accepted and Admission.DUPLICATE.accepted
    assert svc.submit(txs[0]) is Admission.DUPLICATE  # queued once, ordered once
    assert svc.submit(deep_msgpack(1010)) is Admission.FULL  # a full queue refuses before it looks
    # the runner's certificates and evidence have a lane of their own that the flood did not fill
    assert svc.submit_certificate(1, _certificate(net)) is Admission.QUEUED
    assert svc.submit_evidence(_evidence(net)) is Admission.QUEUED
    stats = svc.statistics()
    assert stats["pending_transactions"] == MAX_PENDING + 2 and stats["pending_priority"] == 2
    assert stats["admission"] == {"queued": MAX_PENDING + 2, "duplicate": 1, "full": 2001, "invalid": 2}

    svc._maybe_create(None)
    first = svc.hashgraph.head(me)
    assert first is not None
    assert {canonical.unpack(tx)["type"] for tx in first.transactions[:2]} == {"certificate", "evidence"}
    for _ in range(20):
        svc._maybe_create(None)
    assert svc.statistics()["pending_transactions"] == 0
    assert svc.submit(txs[-1]) is Admission.QUEUED  # room again once the queue drained
    for _ in range(5):
        svc._maybe_create(None)

    accepted = [tx for tx, r in zip(txs, results, strict=True) if r is Admission.QUEUED] + [txs[-1]]
    ordered = _ordered_txs(svc)
    assert sorted(t for t in ordered if canonical.unpack(t)["type"] == "weights") == sorted(accepted)
    assert len(ordered) == len(set(ordered)) == len(accepted) + 2
    assert svc.highest_height() == 1 and len(svc.ledger.evidence) == 1


def test_the_byte_bound_refuses_too() -> None:
    net = make_net([1])
    svc = _service(net, 0, max_pending_bytes=1000)
    big = canonical.pack({"type": "note", "pad": bytes(600)})
    assert svc.submit(big) is Admission.QUEUED
    assert svc.submit(canonical.pack({"type": "note", "pad": bytes(601)})) is Admission.FULL
    assert svc.submit(canonical.pack({"type": "note"})) is Admission.QUEUED
    assert svc.statistics()["pending_bytes"] <= 1000


def test_a_queue_that_does_not_drain_refuses_once_its_oldest_waited_too_long() -> None:
    net = make_net([1])
    me = net.keys[0].peer_id
    now = [100.0]
    svc = _service(net, 0, max_queue_delay_s=1.0, monotonic=lambda: now[0])
    assert svc.submit(weights_tx(1, {me: 1})) is Admission.QUEUED
    now[0] = 100.9
    assert svc.submit(weights_tx(2, {me: 1})) is Admission.QUEUED and abs(svc.queue_delay() - 0.9) < 1e-9
    now[0] = 101.2
    assert svc.submit(weights_tx(3, {me: 1})) is Admission.FULL  # the queue drains slower than it fills
    assert svc.submit_certificate(1, _certificate(net)) is Admission.QUEUED  # not the runner's certificates
    svc._maybe_create(None)
    assert svc.queue_delay() == 0.0 and svc.submit(weights_tx(3, {me: 1})) is Admission.QUEUED


def test_event_creation_is_paced_by_the_ordering_lag_except_for_priority() -> None:
    """Four validators, nobody answering: own events are never ordered. Once ``max_in_flight`` transactions
    are in them, ordinary ones wait (and the queue refuses beyond its bound); a certificate still goes."""
    net = make_net([1, 1, 1, 1])
    me = net.keys[0].peer_id
    svc = _service(net, 0, max_in_flight=12, max_pending=40)
    big = [canonical.pack({"type": "note", "n": i, "pad": bytes(100_000)}) for i in range(60)]
    assert [svc.submit(tx) for tx in big] == [Admission.QUEUED] * 40 + [Admission.FULL] * 20
    for _ in range(10):
        svc._maybe_create(None)
    assert [len(e.transactions) for e in svc.hashgraph.events_by(me)] == [5, 5, 2]  # 512 KiB each; then paced
    stats = svc.statistics()
    assert stats["in_flight_transactions"] == 12 and stats["pending_transactions"] == 28
    assert svc.submit_certificate(1, _certificate(net)) is Admission.QUEUED
    svc._maybe_create(None)
    head = svc.hashgraph.head(me)
    assert head is not None and head.seq == 3 and len(head.transactions) == 1
    assert canonical.unpack(head.transactions[0])["type"] == "certificate"
    svc._maybe_create(None)
    assert svc.hashgraph.height(me) == 4  # nothing but ordinary transactions left: still paced


async def test_four_peers_flooded_order_everything_they_accepted(autojump_clock: trio.testing.MockClock) -> None:
    """Each peer is offered three times its queue's bound at once; what it accepted is ordered at every
    peer, exactly once, with the certificate and the evidence; no peer is sent an event twice by pulls."""
    net = make_net([1, 1, 1, 1])
    ids = [k.peer_id for k in net.keys]
    links = _Links(ids)
    svcs = [_service(net, i, links.endpoint(ids[i]), sync_interval_ms=50, max_pending=400,
                     monotonic=trio.current_time) for i in range(4)]
    received: dict[PeerId, list[bytes]] = {p: [] for p in ids}

    async def dispatch(svc: LedgerService) -> None:
        cache = VerifiedCache()
        async for peer, payload in links.channels[svc.key.peer_id][1]:
            signed = decode_message(payload, net.genesis.validators.public_key_of, cache=cache)
            if isinstance(signed.message, DagEvents):
                received[svc.key.peer_id].extend(e.hash for e in signed.message.decoded())
            svc.handle(peer, signed)

    accepted: list[bytes] = []
    refused = 0
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for svc in svcs:
                nursery.start_soon(dispatch, svc)
                await nursery.start(svc.run)
            for i, svc in enumerate(svcs):
                for k in range(1200):
                    tx = weights_tx(1 + i + 4 * k, {ids[i]: 1})
                    if svc.submit(tx).accepted:
                        accepted.append(tx)
                    else:
                        refused += 1
            assert svcs[1].submit_certificate(1, _certificate(net)) is Admission.QUEUED
            assert svcs[2].submit_evidence(_evidence(net)) is Admission.QUEUED
            while not all(len(_ordered_txs(s)) == len(accepted) + 2 for s in svcs):
                await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
    assert refused == 4 * 800 and len(accepted) == 4 * 400
    orders = [_ordered_txs(s) for s in svcs]
    assert all(o == orders[0] for o in orders) and len(set(orders[0])) == len(orders[0])
    assert set(accepted) <= set(orders[0])
    assert len({s.state_hash() for s in svcs}) == 1
    assert all(s.highest_height() == 1 and len(s.ledger.evidence) == 1 for s in svcs)
    for p, hashes in received.items():
        assert len(hashes) == len(set(hashes)), f"{p} was sent an event twice"
    assert links.sent["dag_sync"] == sum(s.sync_stats["pulls"] for s in svcs)
    assert all(s.sync_stats["timeouts"] == 0 for s in svcs)


async def test_a_peer_outside_the_genesis_observes_the_ledger(autojump_clock: trio.testing.MockClock) -> None:
    """A joiner runs the ledger as an observer: it pulls the committee's events and reaches the same state,
    creates no event and submits nothing (the committee posts every certificate)."""
    from multillmn.identity import KeyPair

    net = make_net([1, 1, 1])
    outsider = KeyPair.generate()
    ids = [k.peer_id for k in net.keys] + [outsider.peer_id]
    keys = {k.peer_id: k.public_key for k in [*net.keys, outsider]}
    links = _Links(ids)
    svcs = [_service(net, i, links.endpoint(ids[i]), sync_interval_ms=50) for i in range(3)]
    observer = LedgerService.open(outsider, net.genesis, links.endpoint(outsider.peer_id), None, sync_interval_ms=50)
    assert observer.observer and not any(s.observer for s in svcs)
    assert observer.submit_certificate(1, _certificate(net)) is None
    assert observer.submit_evidence(_evidence(net)) is None

    async def dispatch(svc: LedgerService) -> None:
        cache = VerifiedCache()
        async for peer, payload in links.channels[svc.key.peer_id][1]:
            svc.handle(peer, decode_message(payload, keys.get, cache=cache))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for svc in [*svcs, observer]:
                nursery.start_soon(dispatch, svc)
                await nursery.start(svc.run)
            assert svcs[0].submit_certificate(1, _certificate(net)) is Admission.QUEUED
            while not (observer.highest_height() == 1 and observer.state_hash() == svcs[0].state_hash()):
                await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
    assert observer.created == 0 and observer.hashgraph.height(outsider.peer_id) <= 0
    assert observer.statistics()["observer"] is True
