"""Every bound of peers/transport.py, tried from one hostile remote on loopback sockets.

Before authentication the remote is anyone who can reach the port: it opens
raw TCP connections and stays silent, drips, sends garbage or an oversized
frame header. After authentication it is a validator: it opens link after
link and floods frames. Each test checks the connection counts and, where
memory is the point, the Python heap (``tracemalloc``) while the attack is
held; the hostile side uses plain non-blocking sockets, so its own cost is a
few hundred bytes per connection.
"""

from __future__ import annotations

import ast
import gc
import inspect
import json
import os
import socket
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import pytest
import trio

from multillmn.identity import KeyPair
from peers import secure, transport
from peers.secure import AUTH_FRAME_MAX, EPH_LEN, PREAUTH_MAX_BYTES, SecureChannel, handshake
from peers.transport import ACCEPT, HANDSHAKE_TIMEOUT, MAX_HANDSHAKES, Transport
from peers.wire import encode_frame

KEYS = [KeyPair.from_seed(bytes([i + 1]) * 32) for i in range(4)]
ME, HOSTILE, HONEST = KEYS[0], KEYS[1], KEYS[2]
FAST = {"backoff_initial": 0.02, "backoff_max": 0.2}

HELD_CONNECTION_BUDGET = 24 * 1024
"""Heap one held pre-auth connection may cost (task, socket, handshake state, buffered bytes)."""


def make(**kw: object) -> Transport:
    peers = {k.peer_id: None for k in (HOSTILE, HONEST)}
    return Transport(ME, ("127.0.0.1", 0), peers, **{**FAST, **kw})  # type: ignore[arg-type]


async def start(nursery: trio.Nursery, t: Transport) -> int:
    port: int = await nursery.start(t.run)
    return port


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.01)


@contextmanager
def traced() -> Iterator[Callable[[], int]]:
    """Heap bytes allocated since entering (``tracemalloc``), as a callable."""
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    gc.collect()
    base = tracemalloc.get_traced_memory()[0]
    try:
        yield lambda: (gc.collect(), tracemalloc.get_traced_memory()[0] - base)[1]
    finally:
        if not was_tracing:
            tracemalloc.stop()


async def warm_up(port: int) -> None:
    """One full handshake, so one-time imports and caches are not counted as an attack's cost."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    channel = await handshake(stream, HONEST, ME.peer_id, timeout=5)
    assert await channel.receive() == ACCEPT
    await channel.aclose()


def connect(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        socks.append(s)
    return socks


def is_closed(s: socket.socket) -> bool:
    """True once the listener closed ``s`` (EOF or reset); drains what it sent (its ephemeral key)."""
    try:
        while True:
            data = s.recv(4096)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def try_send(s: socket.socket, data: bytes) -> int:
    try:
        return s.send(data)
    except OSError:
        return 0


def eph_key() -> bytes:
    _, pub = _x25519()
    return pub


def _x25519() -> tuple[object, bytes]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    k = X25519PrivateKey.generate()
    return k, k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# --- the bounds are stated ----------------------------------------------------------


def _documented_constants(module: object) -> dict[str, str]:
    """Module-level UPPER_CASE assignments followed by a docstring."""
    tree = ast.parse(inspect.getsource(module))  # type: ignore[arg-type]
    out: dict[str, str] = {}
    for node, nxt in zip(tree.body, tree.body[1:]):
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id.isupper()
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            out[node.targets[0].id] = nxt.value.value
    return out


def test_every_bound_is_a_documented_constant_listed_in_the_module_docstring() -> None:
    bounds = ["MAX_HANDSHAKES", "HANDSHAKE_TIMEOUT", "MAX_INBOUND_LINKS_PER_PEER", "MAX_FRAME",
              "OUTBOUND_RECEIVE_MAX", "SEND_QUEUE", "SEND_QUEUE_BYTES", "INBOUND_QUEUE",
              "INBOUND_PEER_QUEUE", "INBOUND_PEER_BYTES"]
    documented = _documented_constants(transport)
    doc = transport.__doc__ or ""
    for name in bounds:
        assert name in documented, f"{name} has no docstring"
        assert name in transport.__all__
        assert f":data:`{name}`" in doc or f"``{name.lower()}``" in doc, f"{name} not in the module docstring"
    for name in ("PREAUTH_MAX_BYTES", "AUTH_FRAME_MAX"):
        assert name in _documented_constants(secure)
        assert f"peers.secure.{name}" in doc
    assert PREAUTH_MAX_BYTES == EPH_LEN + 4 + AUTH_FRAME_MAX == 308
    assert (MAX_HANDSHAKES, HANDSHAKE_TIMEOUT) == (64, 5.0)
    t = Transport(ME, ("127.0.0.1", 0), {})
    assert t.limits() == {
        "max_handshakes": 64, "handshake_timeout_s": 5.0, "preauth_max_bytes": 308, "auth_frame_max": 272,
        "max_inbound_links_per_peer": 1, "max_frame": 2 << 20, "send_queue": 1024,
        "send_queue_bytes": 64 << 20, "inbound_queue": 4096, "inbound_peer_queue": 1024,
        "inbound_peer_bytes": 64 << 20,
    }


@pytest.mark.parametrize("name", ["max_handshakes", "handshake_timeout", "send_queue_bytes",
                                  "inbound_peer_queue", "inbound_peer_bytes", "max_frame"])
def test_bounds_must_be_positive(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        make(**{name: 0})


# --- before authentication: anyone who reaches the port --------------------------------


@pytest.mark.parametrize("behaviour", ["silent", "drip", "max-preauth"])
async def test_200_hostile_connections_are_held_to_the_cap_and_closed_by_the_deadline(
    nursery: trio.Nursery, behaviour: str
) -> None:
    n, deadline = 200, 1.5
    t = make(handshake_timeout=deadline)  # the default cap: MAX_HANDSHAKES
    port = await start(nursery, t)
    await warm_up(port)
    peak = 0

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, t.statistics().handshakes_in_flight)
            await trio.sleep(0.005)

    nursery.start_soon(sample)
    opening = eph_key() + AUTH_FRAME_MAX.to_bytes(4, "big") + bytes(AUTH_FRAME_MAX - 1)
    with traced() as heap:
        t0 = trio.current_time()
        socks = connect(port, n)
        if behaviour == "max-preauth":  # everything the handshake reads, less the last byte
            assert all(try_send(s, opening) == len(opening) for s in socks)
        await wait_until(lambda: t.statistics().refused_connections == n - MAX_HANDSHAKES, timeout=deadline)
        stats = t.statistics()
        assert stats.handshakes_in_flight == MAX_HANDSHAKES and stats.handshake_timeouts == 0
        # The excess connections were closed at once; the ones in flight are still open.
        await wait_until(lambda: sum(map(is_closed, socks)) == n - MAX_HANDSHAKES, timeout=1)
        if behaviour == "drip":  # one byte a tick on every connection, faster than 1 byte/s
            for _ in range(3):
                for s in socks:
                    try_send(s, b"\x01")
                await trio.sleep(0.1)
        held = heap()
        assert held < MAX_HANDSHAKES * HELD_CONNECTION_BUDGET, held
        # Every connection is gone by the deadline (plus scheduling slack).
        await wait_until(lambda: all(is_closed(s) for s in socks), timeout=deadline + 1.0)
        closed_after = trio.current_time() - t0
    await wait_until(lambda: t.statistics().handshakes_in_flight == 0, timeout=0.5)  # the closing tasks' bookkeeping
    stats = t.statistics()
    assert stats.handshake_timeouts == MAX_HANDSHAKES
    assert stats.refused_connections == n - MAX_HANDSHAKES and stats.failed_handshakes == 0
    assert peak == MAX_HANDSHAKES
    assert deadline <= closed_after < deadline + 1.0
    print(f"{behaviour}: {n} connections, {MAX_HANDSHAKES} held, heap +{held / 1024:.0f} KiB "
          f"({held / MAX_HANDSHAKES:.0f} B each), all closed after {closed_after:.2f} s")
    for s in socks:
        s.close()
    # The listener still takes honest links afterwards.
    await warm_up(port)


def _low_order() -> bytes:
    return bytes(32)


def _garbage_auth_frame() -> bytes:
    return eph_key() + encode_frame(os.urandom(125))  # right size, not sealed with the session key


def _junk() -> bytes:
    return os.urandom(32) + b"\xff" * 300  # a random key, then a header announcing ~4 GiB


@pytest.mark.parametrize("opening", [_low_order, _garbage_auth_frame, _junk], ids=lambda f: f.__name__)
async def test_a_garbage_handshake_is_closed_at_once(nursery: trio.Nursery, opening: Callable[[], bytes]) -> None:
    t = make(handshake_timeout=30.0)
    port = await start(nursery, t)
    socks = connect(port, 10)
    t0 = trio.current_time()
    for s in socks:
        try_send(s, opening())
    await wait_until(lambda: all(map(is_closed, socks)), timeout=2)
    assert trio.current_time() - t0 < 2 < 30  # long before the deadline
    await wait_until(lambda: t.statistics().failed_handshakes == 10, timeout=0.5)
    stats = t.statistics()
    assert stats.handshake_timeouts == 0 and stats.handshakes_in_flight == 0
    for s in socks:
        s.close()


async def test_an_oversized_preauth_frame_header_is_refused_without_buffering_the_body(
    nursery: trio.Nursery,
) -> None:
    """The issue's measurement: 20 connections announcing a 2 MiB identity frame and sending it.

    Before the bound each one buffered up to 2 MiB (20 held: +47 MB of heap);
    now the header is refused and the connection closed before the body is read.
    """
    n, size = 20, 2 * 1024 * 1024
    t = make(handshake_timeout=30.0)
    port = await start(nursery, t)
    await warm_up(port)
    body = bytes(size)
    with traced() as heap:
        socks = connect(port, n)
        for s in socks:
            try_send(s, eph_key() + size.to_bytes(4, "big"))
        sent = [0] * n
        t0 = trio.current_time()
        while trio.current_time() - t0 < 1.0 and not all(map(is_closed, socks)):
            for i, s in enumerate(socks):
                sent[i] += try_send(s, body[sent[i] : sent[i] + 65536])
            await trio.sleep(0.001)
        assert all(map(is_closed, socks))
        closed_after = trio.current_time() - t0
        held = heap()
    await wait_until(lambda: t.statistics().failed_handshakes == n, timeout=0.5)
    assert t.statistics().handshakes_in_flight == 0
    assert held < n * 16 * 1024, held  # not n * 2 MiB
    print(f"{n} oversized headers: heap +{held / 1024:.0f} KiB, closed after {closed_after:.3f} s, "
          f"hostile side pushed {sum(sent)} body bytes into the kernel before the reset")
    for s in socks:
        s.close()


# --- after authentication: a validator ------------------------------------------------


async def hostile_link(port: int, key: KeyPair = HOSTILE) -> SecureChannel:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    channel = await handshake(stream, key, ME.peer_id, timeout=5)
    assert await channel.receive() == ACCEPT
    return channel


async def test_one_authenticated_inbound_link_per_peer(nursery: trio.Nursery) -> None:
    t = make()
    port = await start(nursery, t)
    links = []
    for i in range(20):
        links.append(await hostile_link(port))
        await wait_until(lambda: t.statistics().peers[HOSTILE.peer_id].inbound_replaced == i)
        stats = t.statistics()
        assert stats.inbound_links == 1 and stats.peers[HOSTILE.peer_id].inbound_connected
    for old in links[:-1]:  # every older link was closed by the newer one
        with pytest.raises((trio.EndOfChannel, trio.BrokenResourceError)):
            with trio.fail_after(2):
                await old.receive()
    await links[-1].send(b"still here")
    assert await t.inbound.receive() == (HOSTILE.peer_id, b"still here")
    await links[-1].aclose()
    await wait_until(lambda: t.statistics().inbound_links == 0)
    assert not t.statistics().peers[HOSTILE.peer_id].inbound_connected
    for old in links[:-1]:
        await old.aclose()


async def test_inbound_bytes_per_peer_bound_memory_and_leaves_room_for_others(nursery: trio.Nursery) -> None:
    """A validator floods 40 frames of 1 MiB at a node that is not reading: 4 MiB are kept, 36 dropped."""
    bound, n, size = 4 << 20, 40, 1 << 20
    t = make(inbound_peer_bytes=bound)
    port = await start(nursery, t)
    await warm_up(port)
    honest = await hostile_link(port, HONEST)
    frame = os.urandom(size)
    with traced() as heap:
        link = await hostile_link(port)
        for _ in range(n):
            await link.send(frame)
        await wait_until(lambda: t.statistics().peers[HOSTILE.peer_id].received == n)
        held = heap()
        await honest.send(b"honest")  # the flood did not take the honest peer's room
        await wait_until(lambda: t.statistics().peers[HONEST.peer_id].received == 1)
    hostile = t.statistics().peers[HOSTILE.peer_id]
    assert hostile.inbound_queued == 4 and hostile.inbound_queued_bytes == 4 * size <= bound
    assert hostile.inbound_dropped == n - 4
    assert held < bound + (3 << 20), held  # 4 MiB kept, one frame in flight, not 40 MiB
    print(f"{n} x 1 MiB from one validator: heap +{held / 2**20:.1f} MiB with a {bound >> 20} MiB bound")
    got = [await t.inbound.receive() for _ in range(5)]
    assert got[-1] == (HONEST.peer_id, b"honest")
    after = t.statistics().peers[HOSTILE.peer_id]
    assert after.inbound_queued == 0 and after.inbound_queued_bytes == 0
    await link.send(b"room again")  # taking frames frees the quota
    assert await t.inbound.receive() == (HOSTILE.peer_id, b"room again")
    await link.aclose()
    await honest.aclose()


async def test_inbound_messages_per_peer_bound(nursery: trio.Nursery) -> None:
    t = make(inbound_peer_queue=10, inbound_queue=100)
    port = await start(nursery, t)
    link = await hostile_link(port)
    honest = await hostile_link(port, HONEST)
    for i in range(500):
        await link.send(b"%d" % i)
    await honest.send(b"honest")
    await wait_until(lambda: t.statistics().peers[HOSTILE.peer_id].received == 500
                     and t.statistics().peers[HONEST.peer_id].received == 1)
    stats = t.statistics().peers
    assert stats[HOSTILE.peer_id].inbound_queued == 10 and stats[HOSTILE.peer_id].inbound_dropped == 490
    assert stats[HONEST.peer_id].inbound_dropped == 0
    assert t.inbound.statistics().current_buffer_used == 11
    got = [t.inbound.receive_nowait() for _ in range(11)]
    assert got[:10] == [(HOSTILE.peer_id, b"%d" % i) for i in range(10)] and got[10] == (HONEST.peer_id, b"honest")
    await link.aclose()
    await honest.aclose()


async def test_send_queue_bytes_bound(nursery: trio.Nursery) -> None:
    t = make(send_queue_bytes=1000)
    await start(nursery, t)
    bob = HONEST.peer_id  # address unknown: nothing drains the queue
    assert [t.send_nowait(bob, bytes(300)) for _ in range(5)] == [True, True, True, False, False]
    s = t.statistics().peers[bob]
    assert s.queued == 3 and s.queued_bytes == 900 and s.dropped == 2
    assert t.send_nowait(bob, bytes(100))  # a smaller one still fits
    assert not t.send_nowait(bob, b"x")


async def test_outbound_link_refuses_frames_beyond_the_accept_frame(nursery: trio.Nursery) -> None:
    """A peer we dial may send only ACCEPT; a big frame header there is refused before its body."""

    async def hostile_listener(stream: trio.SocketStream) -> None:
        channel = await handshake(stream, HOSTILE, None, timeout=5)
        await channel.send(ACCEPT)
        await stream.send_all((1 << 20).to_bytes(4, "big") + bytes(1000))
        await trio.sleep_forever()

    listeners = await nursery.start(partial(trio.serve_tcp, hostile_listener, 0, host="127.0.0.1"))
    t = make()
    await start(nursery, t)
    t.set_address(HOSTILE.peer_id, ("127.0.0.1", listeners[0].socket.getsockname()[1]))
    await wait_until(lambda: t.statistics().peers[HOSTILE.peer_id].protocol_errors >= 2)  # closed, redialled, closed


async def test_status_reports_the_counts_as_json(nursery: trio.Nursery) -> None:
    t = make(max_handshakes=2, handshake_timeout=0.5)
    port = await start(nursery, t)
    socks = connect(port, 3)
    await wait_until(lambda: t.statistics().refused_connections == 1)
    await wait_until(lambda: t.statistics().handshake_timeouts == 2)
    status = json.loads(json.dumps(t.status()))
    assert status["refused_connections"] == 1 and status["handshake_timeouts"] == 2
    assert status["handshakes_in_flight"] == 0 and status["inbound_links"] == 0
    assert status["limits"]["max_handshakes"] == 2
    assert set(status["peers"]) == {HOSTILE.peer_id, HONEST.peer_id}
    assert status["peers"][HONEST.peer_id]["inbound_dropped"] == 0
    for s in socks:
        s.close()
