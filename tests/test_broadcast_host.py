"""The tree broadcast's trio host (``peers/broadcast/_host.py``), its latency probe (``peers/latency.py``) and the
``[p2p] broadcast`` keys: pure probe steps, then real encrypted loopback transports around the real core."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest
import trio

from consensus.messages import VerifiedCache, Vote, sign
from multillmn import canonical
from multillmn.config import ConfigError, PeerConfig, render_toml
from multillmn.identity import KeyPair
from peers.broadcast import Gossip, encode
from peers.broadcast._host import BroadcastTransport, signed_validator, tree_transport
from peers.latency import MAX_LATENCY_S, MAX_ROW, TAG, LatencyConfig, LatencyProbe, is_latency_frame
from peers.transport import Transport
from peers.wire import RejectStats, encode_message

A, B, C, D = ("a" * 40, "b" * 40, "c" * 40, "d" * 40)


# -- config -------------------------------------------------------------------------------------------------


def test_broadcast_keys_default_to_the_mesh_and_are_validated() -> None:
    default = PeerConfig()
    assert (default.broadcast, default.broadcast_fanout) == ("mesh", 3)
    assert PeerConfig.for_tests().broadcast == "mesh"
    cfg = PeerConfig.from_dict({"p2p": {"broadcast": "tree", "broadcast_fanout": 4}})
    assert (cfg.broadcast, cfg.broadcast_fanout) == ("tree", 4)
    text = render_toml(default)
    assert 'broadcast = "mesh"' in text and "broadcast_fanout = 3" in text
    assert "# How this peer's signed messages reach the others" in text
    for data, message in [
        ({"p2p": {"broadcast": "star"}}, "p2p.broadcast: expected mesh | tree, got 'star'"),
        ({"p2p": {"broadcast": 1}}, "p2p.broadcast: expected str"),
        ({"p2p": {"broadcast_fanout": 0}}, r"p2p.broadcast_fanout: 0 is outside \[1, 16\]"),
        ({"p2p": {"broadcast_fanout": 17}}, r"p2p.broadcast_fanout: 17 is outside \[1, 16\]"),
        ({"p2p": {"broadcast_fanout": 2.5}}, "p2p.broadcast_fanout: expected int"),
    ]:
        with pytest.raises(ConfigError, match=message):
            PeerConfig.from_dict(data)


# -- the latency probe, pure --------------------------------------------------------------------------------


def _probe(me: str = A, **kwargs: float) -> tuple[LatencyProbe, list[tuple[str, str, float]]]:
    fed: list[tuple[str, str, float]] = []
    probe = LatencyProbe(me, lambda a, b, s: fed.append((a, b, s)),
                         replace(LatencyConfig.for_tests(), **kwargs), rng=random.Random(1))
    probe.set_peers([A, B, C])
    return probe, fed


def test_a_pong_gives_half_the_round_trip_and_an_ewma_reported_past_a_deadband() -> None:
    a, fed = _probe(alpha=0.5, min_change_s=0.002, rel_change=0.1, window=1)
    b, _ = _probe(B)
    ping = a.ping(B, now=10.0)
    assert ping is not None and is_latency_frame(ping)
    assert a.ping(B, now=10.01) is None  # one outstanding ping per peer
    pong = b.receive(A, ping, now=10.02)
    assert pong is not None and a.receive(B, pong, now=10.04) is None
    assert a.estimate(B) == pytest.approx(0.02) and fed == []  # own entries are handed on with the row
    a.row()
    assert fed == [(A, B, pytest.approx(0.02))]
    # a second sample moves the EWMA, within the deadband: not reported again
    b._peers[A].last_pong = float("-inf")
    a.receive(B, b.receive(A, a.ping(B, now=11.0) or b"", now=11.0) or b"", now=11.042)
    assert a.estimate(B) == pytest.approx(0.0205) and len(fed) == 1 and a.estimates() == {B: pytest.approx(0.02)}
    # a big move is reported
    b._peers[A].last_pong = float("-inf")
    a.receive(B, b.receive(A, a.ping(B, now=12.0) or b"", now=12.0) or b"", now=12.2)
    a.row()
    assert len(fed) == 2 and fed[-1][2] == pytest.approx(0.06025, abs=1e-6)
    assert a.statistics()["samples"] == 3 and a.statistics()["outstanding"] == 0


def test_a_stalled_round_trip_does_not_move_the_estimate_a_lasting_change_does() -> None:
    a, _ = _probe(alpha=0.5, window=3)
    b, _ = _probe(B, min_pong_interval_s=0.001)

    def sample(t: float, rtt: float) -> None:
        a.receive(B, b.receive(A, a.ping(B, now=t) or b"", now=t) or b"", now=t + rtt)

    sample(0, 0.04)
    sample(1, 0.5)  # the loop stalled for 460 ms
    assert a.estimate(B) == pytest.approx(0.02)
    for t in (2, 3, 4):
        sample(t, 0.2)  # the link got slower for good
    assert a.estimate(B) == pytest.approx(0.08)  # windows of min 0.02, 0.1, 0.1 through the EWMA


def test_a_pong_without_its_ping_and_garbage_are_ignored() -> None:
    a, fed = _probe()
    forged = TAG + canonical.pack({"t": "pong", "n": 7})
    assert a.receive(B, forged, now=1.0) is None
    a.ping(B, now=1.0)
    for junk in (forged, b"", TAG, TAG + b"\xff\xff", TAG + canonical.pack([1, 2]),
                 TAG + canonical.pack({"t": "pong", "n": "x"}), TAG + canonical.pack({"t": "pong", "n": 7, "x": 1}),
                 TAG + b"\x00" * 20_000):
        assert a.receive(B, junk, now=1.1) is None
    assert a.receive(D, TAG + canonical.pack({"t": "ping", "n": 1}), now=1.1) is None  # not a known peer
    assert fed == [] and a.estimate(B) is None
    assert a.statistics()["ignored"] == 10


def test_a_ping_flood_gets_one_pong_per_interval() -> None:
    b, _ = _probe(B, min_pong_interval_s=0.25)
    ping = TAG + canonical.pack({"t": "ping", "n": 5})
    replies = [b.receive(A, ping, now=1.0 + i * 0.01) for i in range(100)]  # one second of pings
    assert sum(r is not None for r in replies) == 4


def test_rows_speak_only_for_their_sender_are_clamped_rate_limited_and_bounded() -> None:
    a, fed = _probe(min_row_interval_s=1.0)
    row = TAG + canonical.pack({"t": "row", "r": {A: 5_000, C: 99_000_000, D: 1_000, B: 1, "x": -4, "y": "z"}})
    assert a.receive(B, row, now=5.0) is None
    assert sorted(fed) == [(B, A, 0.005), (B, C, MAX_LATENCY_S)]  # D unknown, B itself, bad values skipped
    assert a.receive(B, row, now=5.5) is None and len(fed) == 2  # rate-limited
    too_long = TAG + canonical.pack({"t": "row", "r": {f"{i:040x}": 1 for i in range(MAX_ROW + 1)}})
    a.receive(C, too_long, now=9.0)
    assert len(fed) == 2


def test_a_row_carries_the_reported_estimates_and_set_peers_forgets() -> None:
    a, _ = _probe()
    b, _ = _probe(B)
    a.receive(B, b.receive(A, a.ping(B, now=0.0) or b"", now=0.0) or b"", now=0.03)
    row = canonical.unpack(a.row()[1:])
    assert row == {"t": "row", "r": {B: 15_000}}
    a.set_peers([C])
    assert a.estimates() == {} and a.ping(B, now=5.0) is None


# -- the host on real loopback transports ----------------------------------------------------------------------


@asynccontextmanager
async def network(n: int, *, fanout: int = 2, silent: frozenset[int] = frozenset()
                  ) -> AsyncIterator[tuple[list[KeyPair], list[BroadcastTransport]]]:
    keys = [KeyPair.from_seed(bytes([40 + i]) * 32) for i in range(n)]
    public = {k.peer_id: k.public_key for k in keys}
    ids = [k.peer_id for k in keys]
    hosts: list[BroadcastTransport] = []
    async with trio.open_nursery() as nursery:
        for i, key in enumerate(keys):
            inner = Transport(key, ("127.0.0.1", 0), {p: None for p in ids}, backoff_initial=0.05, backoff_max=0.5)
            host = tree_transport(inner, public.get, VerifiedCache(), RejectStats(), fanout=fanout,
                                  latency=LatencyConfig.for_tests())
            if i in silent:
                host._on_send = lambda send, own: own  # type: ignore[method-assign]  # never relays
            await nursery.start(host.run)
            hosts.append(host)
        for h in hosts:
            for other in hosts:
                if other is not h:
                    assert other.listen_port is not None
                    h.set_address(other.peer_id, ("127.0.0.1", other.listen_port))
        with trio.fail_after(20):
            while any(len(h.connected_peers()) < n - 1 for h in hosts):
                await trio.sleep(0.02)
        yield keys, hosts
        nursery.cancel_scope.cancel()


def _vote(key: KeyPair, height: int) -> bytes:
    return encode_message(sign(Vote(type="prevote", height=height, round=0, value_id=None, voter=key.peer_id), key))


async def _drain(host: BroadcastTransport, into: list[tuple[str, bytes]]) -> None:
    async for item in host.inbound:
        into.append(item)


async def test_a_broadcast_reaches_every_peer_once_through_the_trees_and_direct_sends_pass_through() -> None:
    async with network(6) as (keys, hosts):
        got: list[list[tuple[str, bytes]]] = [[] for _ in hosts]
        async with trio.open_nursery() as nursery:
            for h, box in zip(hosts, got):
                nursery.start_soon(_drain, h, box)
            payloads = [_vote(keys[i % 6], 1 + i) for i in range(6)]
            for i, p in enumerate(payloads):
                hosts[i % 6].broadcast_nowait(p)
            direct = _vote(keys[0], 99)
            assert hosts[0].send_nowait(keys[1].peer_id, direct)
            with trio.fail_after(10):
                while any(len(box) < (5 + (j == 1)) for j, box in enumerate(got)):
                    await trio.sleep(0.02)
            await trio.sleep(0.3)
            nursery.cancel_scope.cancel()
    for j, box in enumerate(got):
        expected = {p for i, p in enumerate(payloads) if i % 6 != j} | ({direct} if j == 1 else set())
        assert sorted(p for _, p in box) == sorted(expected)  # each exactly once, not its own
        assert all(peer in {k.peer_id for k in keys} and peer != keys[j].peer_id for peer, _ in box)
    total = [h.broadcast_statistics() for h in hosts]
    assert sum(s["delivered"] for s in total) == 30 and sum(s["passed_through"] for s in total) == 1
    assert sum(s["frames_sent"] for s in total) >= 30 and all(s["sends_refused"] == 0 for s in total)
    # the origin sends at most fanout eager copies (plus lazy announcements), not one per peer
    assert hosts[0].status()["broadcast"]["mode"] == "tree"


async def test_latency_estimates_reach_the_broadcaster_and_hostile_frames_are_only_counted() -> None:
    async with network(4) as (keys, hosts):
        for h in hosts:
            h.inner.shaper.set(keys[3].peer_id, delay_s=0.2)  # everyone is 200 ms from peer 3, one way
        with trio.fail_after(15):
            while any(len(h.probe.estimates()) < 3 for h in hosts) or \
                    hosts[0].probe.statistics()["rows_taken"] < 3 or hosts[0].probe.statistics()["samples"] < 9:
                await trio.sleep(0.05)
        est = {q: hosts[0].probe.estimate(q) or 0.0 for q in hosts[0].probe.estimates()}
        # (200 ms + ~0) / 2 against ~0, give or take a loaded machine's scheduling delays
        assert est[keys[3].peer_id] - est[keys[1].peer_id] > 0.05
        status = hosts[0].status()["broadcast"]
        assert status["rtt_samples"] >= 3 and status["latency_frames_received"] > 0
        # hostile frames from an authenticated peer: array junk to the core, latency junk to the probe
        inner = hosts[1].inner
        for junk in (b"\x92\x01\xc0", b"\x94\x01\xa1x\xc4\x01z\x01", b"\x91\x09", TAG + b"\x00", b"\x9f" * 50):
            inner.send_nowait(keys[0].peer_id, junk)
        await trio.sleep(0.3)
        payload = _vote(keys[1], 5)
        got: list[tuple[str, bytes]] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drain, hosts[0], got)
            hosts[1].broadcast_nowait(payload)
            with trio.fail_after(5):
                while not got:
                    await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
        assert got[0][1] == payload
        assert hosts[0].broadcast_statistics()["frames_received"] >= 4


async def test_a_forged_payload_is_neither_relayed_nor_delivered_and_a_resend_goes_direct() -> None:
    async with network(4) as (keys, hosts):
        good = _vote(keys[0], 3)
        forged = good[:-1] + bytes([good[-1] ^ 1])  # the signature's last byte
        got: list[list[tuple[str, bytes]]] = [[] for _ in hosts]
        async with trio.open_nursery() as nursery:
            for h, box in zip(hosts, got):
                nursery.start_soon(_drain, h, box)
            # a relay pushes a forged payload in a gossip frame: refused, scored, not relayed
            hosts[1].inner.send_nowait(keys[2].peer_id, encode(Gossip(keys[0].peer_id, forged, 1)))
            await trio.sleep(0.3)
            assert all(box == [] for box in got)
            assert hosts[2].broadcaster.statistics()["rejected_invalid-payload"] == 1
            assert hosts[2].broadcaster.score(keys[1].peer_id) < 0
            # the first copy of an own payload takes the tree; sending it again (the driver's re-send when a
            # height is stuck) and relaying another signer's payload go to every peer directly
            assert hosts[0].broadcast_nowait(good) >= 1
            with trio.fail_after(5):
                while any(len(box) < 1 for box in got[1:]):
                    await trio.sleep(0.02)
            assert hosts[0].broadcast_nowait(good) == 3
            assert hosts[3].broadcast_nowait(good) == 3
            await trio.sleep(0.3)
            nursery.cancel_scope.cancel()
        assert [len(box) for box in got] == [1, 3, 3, 2]  # peer 0 gets its own only from peer 3's relay
        assert hosts[0].broadcast_statistics()["sent_direct"] == 1 == hosts[3].broadcast_statistics()["sent_direct"]


async def test_a_silent_relay_is_routed_around() -> None:
    async with network(7, fanout=2, silent=frozenset({1, 2})) as (keys, hosts):
        got: list[list[tuple[str, bytes]]] = [[] for _ in hosts]
        async with trio.open_nursery() as nursery:
            for h, box in zip(hosts, got):
                nursery.start_soon(_drain, h, box)
            payloads = [_vote(keys[0], 10 + i) for i in range(5)]
            for p in payloads:
                hosts[0].broadcast_nowait(p)
                await trio.sleep(0.05)
            with trio.fail_after(20):
                while any(len(box) < 5 for box in got[1:]):
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        for box in got[1:]:
            assert sorted(p for _, p in box) == sorted(payloads)


async def test_timers_are_one_bounded_heap() -> None:
    keys = [KeyPair.from_seed(bytes([60]) * 32)]
    inner = Transport(keys[0], ("127.0.0.1", 0), {})
    host = BroadcastTransport(inner, signed_validator(lambda peer: None, VerifiedCache()), max_timers=3)
    fired: list[object] = []
    host.broadcaster.fire = lambda timer, now: fired.append(timer) or []  # type: ignore[method-assign,func-returns-value]
    async with trio.open_nursery() as nursery:
        await nursery.start(host.run_overlay)
        for i, delay in enumerate([0.3, 0.1, 0.2, 0.05]):
            host._schedule(trio.current_time() + delay, i)
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    assert fired == [1, 2, 0] and host.broadcast_statistics()["timers_dropped"] == 1


async def test_the_inbound_channel_is_bounded_per_peer() -> None:
    key = KeyPair.from_seed(bytes([61]) * 32)
    inner = Transport(key, ("127.0.0.1", 0), {}, inbound_peer_queue=2)
    host = BroadcastTransport(inner, signed_validator(lambda peer: None, VerifiedCache()))
    assert [host.inbound.put_nowait(A, b"x") for _ in range(3)] == [True, True, False]
    assert host.inbound.put_nowait(B, b"y")
    assert host.inbound.receive_nowait() == (A, b"x")
    assert host.inbound.put_nowait(A, b"z")
    assert host.broadcast_statistics()["inbound_dropped"] == 1
