"""Tests for the trio TCP transport (peers/transport.py), on 127.0.0.1 with OS-chosen ports."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
import trio

from multillmn.identity import KeyPair
from peers.transport import LinkCondition, LinkShaper, Transport

FAST = {"backoff_initial": 0.02, "backoff_max": 0.2, "handshake_timeout": 2.0}
KEYS = [KeyPair.from_seed(bytes([i + 1]) * 32) for i in range(4)]


def make(key: KeyPair, peers: list[KeyPair], port: int = 0, **kw: object) -> Transport:
    return Transport(key, ("127.0.0.1", port), {p.peer_id: None for p in peers if p != key}, **{**FAST, **kw})  # type: ignore[arg-type]


async def start(nursery: trio.Nursery, t: Transport) -> trio.CancelScope:
    """Run ``t`` in its own cancel scope (to stop it alone); returns the scope."""
    scope = trio.CancelScope()

    async def runner(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await t.run(task_status=task_status)

    await nursery.start(runner)
    return scope


def wire_up(transports: list[Transport]) -> None:
    """Tell every transport where the others listen."""
    for t in transports:
        for other in transports:
            if other is not t and other.peer_id in t.statistics().peers:
                assert other.listen_port
                t.set_address(other.peer_id, ("127.0.0.1", other.listen_port))


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.01)


async def receive(t: Transport, n: int, timeout: float = 5.0) -> list[tuple[str, bytes]]:
    with trio.fail_after(timeout):
        return [await t.inbound.receive() for _ in range(n)]


async def test_three_transports_exchange_messages(nursery: trio.Nursery) -> None:
    ts = [make(k, KEYS[:3]) for k in KEYS[:3]]
    for t in ts:
        await start(nursery, t)
    assert all(t.listen_port for t in ts) and len({t.listen_port for t in ts}) == 3
    wire_up(ts)
    await wait_until(lambda: all(len(t.connected_peers()) == 2 for t in ts))
    for i, t in enumerate(ts):
        assert t.broadcast_nowait(b"hello from %d" % i) == 2
    for i, t in enumerate(ts):
        got = sorted(await receive(t, 2))
        expected = sorted((ts[j].peer_id, b"hello from %d" % j) for j in range(3) if j != i)
        assert got == expected
    # Order is kept on a link.
    for n in range(50):
        assert ts[0].send_nowait(ts[1].peer_id, b"%d" % n)
    assert [p for _, p in await receive(ts[1], 50)] == [b"%d" % n for n in range(50)]
    await wait_until(lambda: ts[0].statistics().peers[ts[1].peer_id].sent == 51)
    stats = ts[1].statistics().peers[ts[0].peer_id]
    assert stats.received == 51 and stats.dropped == 0 and stats.refused == 0


async def test_restarted_transport_is_reconnected(nursery: trio.Nursery) -> None:
    a, b, c = (make(k, KEYS[:3]) for k in KEYS[:3])
    scopes = [await start(nursery, t) for t in (a, b, c)]
    wire_up([a, b, c])
    await wait_until(lambda: all(len(t.connected_peers()) == 2 for t in (a, b, c)))

    scopes[2].cancel()
    await wait_until(lambda: c.peer_id not in a.connected_peers() + b.connected_peers())
    assert c.connected_peers() == []

    c2 = make(KEYS[2], KEYS[:3], port=c.listen_port or 0)
    await start(nursery, c2)
    assert c2.listen_port == c.listen_port
    wire_up([a, b, c2])
    await wait_until(lambda: all(len(t.connected_peers()) == 2 for t in (a, b, c2)))
    assert a.statistics().peers[c.peer_id].reconnects >= 1
    assert b.statistics().peers[c.peer_id].reconnects >= 1
    assert a.send_nowait(c.peer_id, b"after restart")
    assert await receive(c2, 1) == [(a.peer_id, b"after restart")]


async def test_wrong_and_unknown_identities_are_refused(nursery: trio.Nursery) -> None:
    alice, bob, mallory = KEYS[0], KEYS[1], KEYS[3]
    a = make(alice, [bob])
    m = make(mallory, [alice])  # knows Alice; Alice does not know Mallory
    await start(nursery, a)
    await start(nursery, m)
    # Alice believes Bob listens where Mallory does: Mallory cannot prove Bob's id.
    a.set_address(bob.peer_id, ("127.0.0.1", m.listen_port or 0))
    # Mallory dials Alice, who accepts only Bob.
    m.set_address(alice.peer_id, ("127.0.0.1", a.listen_port or 0))
    await wait_until(
        lambda: a.statistics().peers[bob.peer_id].refused >= 2
        and a.statistics().refused_unknown >= 2
        and m.statistics().peers[alice.peer_id].refused >= 2
    )
    assert a.connected_peers() == [] and m.connected_peers() == []
    assert m.send_nowait(alice.peer_id, b"let me in")
    await trio.sleep(0.2)
    assert a.statistics().peers[bob.peer_id].received == 0
    with pytest.raises(trio.WouldBlock):
        a.inbound.receive_nowait()


async def test_full_send_queue_drops_and_counts(nursery: trio.Nursery) -> None:
    a = make(KEYS[0], KEYS[:2], send_queue=3)
    b = make(KEYS[1], KEYS[:2])
    await start(nursery, a)
    await start(nursery, b)
    bob = b.peer_id
    # Bob's address is not known yet, so nothing drains Alice's queue.
    with trio.fail_after(1):  # send_nowait never blocks
        accepted = [a.send_nowait(bob, b"m%d" % i) for i in range(5)]
    assert accepted == [True, True, True, False, False]
    assert a.broadcast_nowait(b"more") == 0
    assert a.statistics().peers[bob].dropped == 3
    wire_up([a, b])
    assert [p for _, p in await receive(b, 3)] == [b"m0", b"m1", b"m2"]
    await trio.sleep(0.1)
    with pytest.raises(trio.WouldBlock):
        b.inbound.receive_nowait()


async def test_full_inbound_queue_drops_and_counts(nursery: trio.Nursery) -> None:
    a = make(KEYS[0], KEYS[:2])
    b = make(KEYS[1], KEYS[:2], inbound_queue=2)
    await start(nursery, a)
    await start(nursery, b)
    wire_up([a, b])
    for i in range(5):
        a.send_nowait(b.peer_id, b"%d" % i)
    await wait_until(lambda: b.statistics().peers[a.peer_id].received == 5)
    assert b.statistics().peers[a.peer_id].inbound_dropped == 3
    assert [p for _, p in await receive(b, 2)] == [b"0", b"1"]


def test_link_shaper_plans() -> None:
    shaper = LinkShaper(rng=random.Random(7))
    assert shaper.plan("x") == 0.0
    shaper.set("x", delay_s=0.25)
    assert shaper.plan("x") == 0.25 and shaper.plan("y") == 0.0
    shaper.set("x", loss=0.5)
    outcomes = [shaper.plan("x") for _ in range(2000)]
    assert 800 < outcomes.count(None) < 1200
    shaper.set("x", loss=1.0)
    assert all(shaper.plan("x") is None for _ in range(100))
    shaper.clear("x")
    assert shaper.condition("x") == LinkCondition()
    with pytest.raises(ValueError):
        LinkCondition(loss=1.5)
    with pytest.raises(ValueError):
        LinkCondition(delay_s=-1)


async def test_shaper_delay_and_loss_on_the_send_path(nursery: trio.Nursery) -> None:
    a = make(KEYS[0], KEYS[:3])
    b = make(KEYS[1], KEYS[:3])
    c = make(KEYS[2], KEYS[:3])
    for t in (a, b, c):
        await start(nursery, t)
    wire_up([a, b, c])
    await wait_until(lambda: len(a.connected_peers()) == 2)
    a.shaper.set(b.peer_id, delay_s=0.4)
    a.shaper.set(c.peer_id, loss=1.0)
    t0 = trio.current_time()
    assert a.broadcast_nowait(b"x") == 2
    assert a.broadcast_nowait(b"y") == 2
    assert await receive(b, 1) == [(a.peer_id, b"x")]
    assert trio.current_time() - t0 >= 0.4
    assert await receive(b, 1) == [(a.peer_id, b"y")]
    assert trio.current_time() - t0 < 0.75  # each delayed by 0.4 s, not one after the other
    assert a.statistics().peers[c.peer_id].lost == 2
    with pytest.raises(trio.WouldBlock):
        c.inbound.receive_nowait()


async def test_cancellation_closes_everything() -> None:
    a = make(KEYS[0], KEYS[:2])
    b = make(KEYS[1], KEYS[:2])
    async with trio.open_nursery() as nursery:
        await start(nursery, a)
        await start(nursery, b)
        wire_up([a, b])
        await wait_until(lambda: a.connected_peers() == [b.peer_id] and b.connected_peers() == [a.peer_id])
        nursery.cancel_scope.cancel()
    assert a.connected_peers() == [] and b.connected_peers() == []
    # The listening port is free again.
    listeners = await trio.open_tcp_listeners(a.listen_port or 0, host="127.0.0.1")
    for listener in listeners:
        await listener.aclose()


async def test_a_peer_added_while_running_is_dialled_and_a_removed_one_is_cut_off(nursery: trio.Nursery) -> None:
    a, b = make(KEYS[0], KEYS[:1]), make(KEYS[1], KEYS[:2])  # a knows nobody yet; b knows a
    for t in (a, b):
        await start(nursery, t)
    assert b.listen_port and a.listen_port
    b.set_address(KEYS[0].peer_id, ("127.0.0.1", a.listen_port))
    await trio.sleep(0.2)
    assert b.connected_peers() == [] and a.statistics().refused_unknown >= 1  # a refuses a stranger
    a.add_peer(KEYS[1].peer_id, ("127.0.0.1", b.listen_port))  # b joined
    await wait_until(lambda: a.connected_peers() == [KEYS[1].peer_id] and b.connected_peers() == [KEYS[0].peer_id])
    assert a.send_nowait(KEYS[1].peer_id, b"hello")
    assert await receive(b, 1) == [(KEYS[0].peer_id, b"hello")]
    a.remove_peer(KEYS[1].peer_id)  # b left
    await wait_until(lambda: b.connected_peers() == [] and a.known_peers() == [])
    with pytest.raises(KeyError):
        a.send_nowait(KEYS[1].peer_id, b"gone")
    refused = a.statistics().refused_unknown
    await wait_until(lambda: a.statistics().refused_unknown > refused)  # b redials and is refused
    a.set_peers({KEYS[1].peer_id: ("127.0.0.1", b.listen_port), KEYS[2].peer_id: None})
    assert a.known_peers() == sorted([KEYS[1].peer_id, KEYS[2].peer_id])
    await wait_until(lambda: b.connected_peers() == [KEYS[0].peer_id])
