"""Tests for authenticated encrypted links (peers/secure.py)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from multillmn import canonical
from multillmn.identity import KeyPair
from peers.secure import (
    AUTH_DOMAIN,
    AUTH_FRAME_MAX,
    PREAUTH_MAX_BYTES,
    FrameCipher,
    HandshakeError,
    HandshakeTimeout,
    SecureChannel,
    auth_message,
    derive_session,
    handshake,
    verify_auth,
    x25519_shared,
)
from peers.wire import FrameTooLarge, RemoteProtocolError, encode_frame

ALICE = KeyPair.from_seed(b"a" * 32)
BOB = KeyPair.from_seed(b"b" * 32)
MALLORY = KeyPair.from_seed(b"m" * 32)


def eph() -> tuple[X25519PrivateKey, bytes]:
    k = X25519PrivateKey.generate()
    return k, k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# --- pure crypto -------------------------------------------------------------------


def test_both_sides_derive_matching_keys() -> None:
    (a, a_pub), (b, b_pub) = eph(), eph()
    sa = derive_session(x25519_shared(a, b_pub), a_pub, b_pub)
    sb = derive_session(x25519_shared(b, a_pub), b_pub, a_pub)
    assert sa.send_key == sb.recv_key and sa.recv_key == sb.send_key
    assert sa.challenge == sb.challenge
    assert len({sa.send_key, sa.recv_key, sa.challenge}) == 3
    assert all(len(x) == 32 for x in (sa.send_key, sa.recv_key, sa.challenge))


def test_low_order_and_echoed_keys_are_refused() -> None:
    a, a_pub = eph()
    with pytest.raises(HandshakeError):
        x25519_shared(a, bytes(32))
    with pytest.raises(HandshakeError):
        x25519_shared(a, b"\x01" * 31)
    with pytest.raises(HandshakeError, match="echoed"):
        derive_session(b"s" * 32, a_pub, a_pub)


def test_frame_cipher_counters_and_nonce_layout() -> None:
    key = b"k" * 32
    tx, rx = FrameCipher(key), FrameCipher(key)
    c0, c1 = tx.seal(b"same"), tx.seal(b"same")
    assert c0 != c1  # a fresh nonce per frame
    assert tx.counter == 2
    # Nonce = 4 zero bytes + little-endian 64-bit counter.
    assert ChaCha20Poly1305(key).decrypt(bytes(4) + (1).to_bytes(8, "little"), c1, None) == b"same"
    assert rx.open(c0) == b"same" and rx.open(c1) == b"same"
    assert rx.counter == 2


def test_frame_cipher_rejects_tampering_replay_and_reordering() -> None:
    key = b"k" * 32
    tx = FrameCipher(key)
    c0, c1 = tx.seal(b"zero"), tx.seal(b"one")
    tampered = bytearray(c0)
    tampered[0] ^= 1
    with pytest.raises(RemoteProtocolError):
        FrameCipher(key).open(bytes(tampered))
    with pytest.raises(RemoteProtocolError):
        FrameCipher(key).open(c1)  # reordered: expects counter 0
    rx = FrameCipher(key)
    rx.open(c0)
    with pytest.raises(RemoteProtocolError):
        rx.open(c0)  # replayed


def test_auth_message_binds_the_challenge() -> None:
    msg = auth_message(ALICE, b"c" * 32)
    assert verify_auth(msg, b"c" * 32) == (ALICE.peer_id, ALICE.public_key)
    with pytest.raises(HandshakeError, match="bad signature"):
        verify_auth(msg, b"d" * 32)
    forged = canonical.pack({"pub": BOB.public_key, "sig": ALICE.sign_raw(AUTH_DOMAIN + b"c" * 32)})
    with pytest.raises(HandshakeError):
        verify_auth(forged, b"c" * 32)
    with pytest.raises(HandshakeError):
        verify_auth(b"\xc1", b"c" * 32)


# --- handshake over memory streams ---------------------------------------------------


async def run_pair(
    a_key: KeyPair, b_key: KeyPair, a_kwargs: dict[str, Any], b_kwargs: dict[str, Any]
) -> tuple[Any, Any, Any, Any]:
    """Handshake both ends of a memory stream pair; results are channels or exceptions."""
    sa, sb = trio.testing.memory_stream_pair()
    out: dict[str, Any] = {}

    async def side(name: str, stream: Any, key: KeyPair, kwargs: dict[str, Any]) -> None:
        try:
            out[name] = await handshake(stream, key, **kwargs)
        except Exception as exc:  # collected for the assertions
            out[name] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, "a", sa, a_key, a_kwargs)
        nursery.start_soon(side, "b", sb, b_key, b_kwargs)
    return out["a"], out["b"], sa, sb


async def test_handshake_then_encrypted_round_trip() -> None:
    a, b, sa, _ = await run_pair(ALICE, BOB, {"expected_peer": BOB.peer_id}, {"expected_peer": None})
    assert isinstance(a, SecureChannel) and isinstance(b, SecureChannel)
    assert a.remote_peer_id == BOB.peer_id and b.remote_peer_id == ALICE.peer_id
    assert a.send_counter == 1 and b.recv_counter == 1  # the auth frames used counter 0
    big = bytes(range(256)) * 1000
    await a.send(b"hello")
    await a.send(big)
    await b.send(b"back")
    assert await b.receive() == b"hello"
    assert await b.receive() == big
    assert await a.receive() == b"back"
    assert a.send_counter == 3 and b.recv_counter == 3 and b.send_counter == 2
    await a.aclose()
    with pytest.raises(trio.EndOfChannel):
        await b.receive()
    await b.aclose()


async def test_plaintext_never_on_the_wire() -> None:
    a, b, _, sb = await run_pair(ALICE, BOB, {"expected_peer": BOB.peer_id}, {"expected_peer": None})
    await a.send(b"secret-payload-123")
    raw = await sb.receive_some()  # read the bytes before the channel does
    assert b"secret-payload-123" not in raw
    assert len(raw) == 4 + len(b"secret-payload-123") + 16


async def test_dialer_refuses_wrong_identity() -> None:
    a, b, sa, _ = await run_pair(ALICE, MALLORY, {"expected_peer": BOB.peer_id}, {"expected_peer": None})
    assert isinstance(a, HandshakeError)
    assert a.peer_id == MALLORY.peer_id and BOB.peer_id in str(a)
    with pytest.raises(trio.ClosedResourceError):
        await sa.send_all(b"x")  # the dialer closed its stream


async def test_listener_refuses_peer_not_allowed() -> None:
    a, b, _, _ = await run_pair(
        MALLORY, BOB, {"expected_peer": BOB.peer_id}, {"expected_peer": None, "allowed": {ALICE.peer_id}}
    )
    assert isinstance(b, HandshakeError) and b.peer_id == MALLORY.peer_id


async def test_tampered_ciphertext_kills_the_link() -> None:
    a, b, sa, _ = await run_pair(ALICE, BOB, {"expected_peer": BOB.peer_id}, {"expected_peer": None})
    await a.send(b"fine")
    assert await b.receive() == b"fine"
    await sa.send_all(encode_frame(b"\x00" * 40))  # forged frame injected under the channel
    with pytest.raises(RemoteProtocolError):
        await b.receive()
    with pytest.raises(trio.ClosedResourceError):
        await b.receive()


async def test_max_frame_enforced_on_receive() -> None:
    a, b, _, _ = await run_pair(
        ALICE, BOB, {"expected_peer": BOB.peer_id}, {"expected_peer": None, "max_frame": 100}
    )
    assert isinstance(b, SecureChannel) and b.max_frame == 100
    await a.send(b"x" * 100)
    assert await b.receive() == b"x" * 100
    await a.send(b"x" * 101)
    with pytest.raises(FrameTooLarge):
        await b.receive()
    with pytest.raises(ValueError):
        await b.send(b"y" * 101)


async def test_silent_remote_times_out() -> None:
    sa, _sb = trio.testing.memory_stream_pair()
    with trio.fail_after(2):
        with pytest.raises(HandshakeError, match="timed out"):
            await handshake(sa, ALICE, None, timeout=0.1)


async def test_remote_closing_mid_handshake() -> None:
    sa, sb = trio.testing.memory_stream_pair()
    await sb.send_all(b"\x01" * 10)
    await sb.aclose()
    with pytest.raises(HandshakeError, match="closed|lost"):
        await handshake(sa, ALICE, None, timeout=1)


async def test_garbage_identity_frame_is_refused() -> None:
    sa, sb = trio.testing.memory_stream_pair()
    _, pub = eph()
    await sb.send_all(pub + encode_frame(b"\x00" * 64))  # right length, wrong key
    with pytest.raises(HandshakeError):
        await handshake(sa, ALICE, None, timeout=1)


# --- what a remote can make us hold before it is authenticated -------------------------


class CountingStream(trio.abc.Stream):
    """A stream that counts the bytes read from it (and can be slow to read)."""

    def __init__(self, inner: trio.abc.Stream, read_delay: float = 0.0) -> None:
        self.inner = inner
        self.read = 0
        self.read_delay = read_delay

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        await trio.sleep(self.read_delay)
        data = await self.inner.receive_some(max_bytes)
        self.read += len(data)
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_preauth_bounds() -> None:
    assert AUTH_FRAME_MAX == 256 + 16
    assert PREAUTH_MAX_BYTES == 32 + 4 + AUTH_FRAME_MAX == 308
    assert len(encode_frame(FrameCipher(b"k" * 32).seal(auth_message(ALICE, b"c" * 32)))) == 4 + 125


async def test_handshake_reads_exactly_the_handshake_and_leaves_pipelined_frames() -> None:
    sa, sb = trio.testing.memory_stream_pair()
    counted = CountingStream(sb, read_delay=0.01)  # slow, so Alice's next frames are already waiting
    out: dict[str, Any] = {}

    async def alice() -> None:
        channel = await handshake(sa, ALICE, BOB.peer_id, timeout=5)
        await channel.send(b"early 1")
        await channel.send(b"x" * 100_000)

    async def bob() -> None:
        out["bob"] = await handshake(counted, BOB, None, timeout=5)
        out["read"] = counted.read

    async with trio.open_nursery() as nursery:
        nursery.start_soon(alice)
        nursery.start_soon(bob)
    assert out["read"] == 32 + 4 + 125 <= PREAUTH_MAX_BYTES
    assert await out["bob"].receive() == b"early 1"
    assert await out["bob"].receive() == b"x" * 100_000


@pytest.mark.parametrize(
    ("tail", "read", "match"),
    [
        ((2 * 1024 * 1024).to_bytes(4, "big") + b"\x00" * 100_000, 36, "exceeds the limit of 272"),
        ((2**32 - 1).to_bytes(4, "big"), 36, "exceeds the limit"),
        ((AUTH_FRAME_MAX + 1).to_bytes(4, "big") + b"\x00" * 1000, 36, "exceeds the limit"),
        (encode_frame(b"\x00" * AUTH_FRAME_MAX) + b"\x00" * 100_000, PREAUTH_MAX_BYTES, "authentication"),
    ],
    ids=["2MiB-header", "4GiB-header", "one-over", "largest-garbage"],
)
async def test_preauth_frame_is_refused_within_the_bound(tail: bytes, read: int, match: str) -> None:
    sa, sb = trio.testing.memory_stream_pair()
    counted = CountingStream(sa)
    _, pub = eph()
    await sb.send_all(pub + tail)
    with pytest.raises(HandshakeError, match=match):
        await handshake(counted, ALICE, None, timeout=5)
    assert counted.read == read <= PREAUTH_MAX_BYTES  # the oversized body was never read


async def test_dripping_remote_times_out_with_handshake_timeout() -> None:
    sa, sb = trio.testing.memory_stream_pair()

    async def drip() -> None:
        for _ in range(100):
            await sb.send_all(b"\x01")
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drip)
        with trio.fail_after(2):
            with pytest.raises(HandshakeTimeout, match="timed out after 0.2 s"):
                await handshake(sa, ALICE, None, timeout=0.2)
        nursery.cancel_scope.cancel()
    assert issubclass(HandshakeTimeout, HandshakeError)


async def test_max_receive_refuses_a_bigger_header_before_its_body() -> None:
    a, b, _, sb = await run_pair(ALICE, BOB, {"expected_peer": BOB.peer_id}, {"expected_peer": None})
    assert a.max_receive == a.max_frame
    a.max_receive = 26
    await b.send(b"a" * 26)
    assert await a.receive() == b"a" * 26
    await b.send(b"a" * 27)
    with pytest.raises(FrameTooLarge):
        await a.receive()
    with pytest.raises(ValueError):
        a.max_receive = a.max_frame + 1
