"""Authenticated, encrypted links in the style of CometBFT's SecretConnection.

Handshake (both sides run the same steps, each writing before it reads):

1. send a fresh X25519 ephemeral public key (32 bytes, plaintext) and read the
   remote's; X25519 gives the shared secret (an all-zero result is refused);
2. with the two ephemeral keys sorted as ``lo``, ``hi``, HKDF-SHA256 over the
   shared secret with ``info = INFO + lo + hi`` yields 96 bytes: the key for
   lo→hi frames, the key for hi→lo frames and a 32-byte challenge;
3. each side sends, encrypted, canonical msgpack ``{"pub": ed25519 key,
   "sig": sign(AUTH_DOMAIN + challenge)}`` and verifies the remote's. The
   challenge binds the identity proof to this very key exchange, so it cannot
   be replayed or relayed by a man in the middle.

After it every frame is ``encode_frame(ChaCha20Poly1305(key, nonce, payload))``
with nonce = 4 zero bytes + a little-endian 64-bit counter per direction.
Any decryption failure is fatal for the link. The pure crypto state
(:func:`derive_session`, :class:`FrameCipher`) is separate from the I/O.

Before the remote is authenticated it can make us hold very little: the
handshake reads exactly the bytes it needs, never more (the 32-byte key, a
4-byte frame header, then that frame's body), so at most
:data:`PREAUTH_MAX_BYTES` (308) bytes of the remote's are ever buffered. An
identity frame announced larger than :data:`AUTH_FRAME_MAX` is refused on its
header, before any of its body is read, and a remote that pipelines frames
after its identity proof leaves them in the kernel until the channel reads
them. The whole handshake runs under one deadline (``timeout``; a
:class:`HandshakeTimeout` when it passes).
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from types import TracebackType

import trio
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from multillmn import canonical
from multillmn.identity import KeyPair, PeerId, peer_id_of
from peers.wire import HEADER_LEN, FrameDecoder, RemoteProtocolError, encode_frame

__all__ = [
    "INFO",
    "AUTH_DOMAIN",
    "TAG_LEN",
    "DEFAULT_MAX_FRAME",
    "AUTH_FRAME_MAX",
    "PREAUTH_MAX_BYTES",
    "HandshakeError",
    "HandshakeTimeout",
    "SessionKeys",
    "derive_session",
    "x25519_shared",
    "FrameCipher",
    "auth_message",
    "verify_auth",
    "SecureChannel",
    "handshake",
]

INFO = b"multillmn/secret-connection/v1"
AUTH_DOMAIN = b"multillmn/v1/link-auth\x00"
TAG_LEN = 16
EPH_LEN = 32
DEFAULT_MAX_FRAME = 2 * 1024 * 1024
_AUTH_MAX = 256
_MAX_COUNTER = 2**64 - 1
_READ_SIZE = 65536

AUTH_FRAME_MAX = _AUTH_MAX + TAG_LEN
"""Largest identity frame body (sealed ``{"pub", "sig"}``; a real one is 125 bytes).

A larger frame header is refused before any of the body is read.
"""

PREAUTH_MAX_BYTES = EPH_LEN + HEADER_LEN + AUTH_FRAME_MAX
"""Most bytes of a remote's that a handshake ever buffers before it is authenticated (308)."""


class HandshakeError(RemoteProtocolError):
    """The remote failed the handshake (bad key exchange or identity proof, wrong or refused peer).

    ``peer_id`` is the remote's proven id when it got that far, else None.
    """

    def __init__(self, reason: str, peer_id: PeerId | None = None) -> None:
        super().__init__(reason)
        self.peer_id = peer_id


class HandshakeTimeout(HandshakeError):
    """The handshake did not finish within its deadline (a silent or dripping remote)."""


# --- pure crypto -------------------------------------------------------------


@dataclass(frozen=True)
class SessionKeys:
    """One side's view of a key exchange: its send/receive keys and the shared challenge."""

    send_key: bytes
    recv_key: bytes
    challenge: bytes


def x25519_shared(private: X25519PrivateKey, remote_public: bytes) -> bytes:
    """X25519 shared secret; :class:`HandshakeError` for a malformed or low-order remote key."""
    if len(remote_public) != EPH_LEN:
        raise HandshakeError("ephemeral key must have 32 bytes")
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(remote_public))
    except ValueError as exc:  # OpenSSL refuses an all-zero result itself
        raise HandshakeError("ephemeral key gives an all-zero shared secret") from exc
    if shared == bytes(32):
        raise HandshakeError("ephemeral key gives an all-zero shared secret")
    return shared


def derive_session(shared: bytes, local_eph: bytes, remote_eph: bytes) -> SessionKeys:
    """Derive direction keys and challenge from the shared secret and both ephemeral keys."""
    if local_eph == remote_eph:
        raise HandshakeError("remote echoed our ephemeral key")
    lo, hi = sorted((local_eph, remote_eph))
    okm = HKDF(algorithm=hashes.SHA256(), length=96, salt=None, info=INFO + lo + hi).derive(shared)
    lo_to_hi, hi_to_lo, challenge = okm[:32], okm[32:64], okm[64:]
    if local_eph == lo:
        return SessionKeys(send_key=lo_to_hi, recv_key=hi_to_lo, challenge=challenge)
    return SessionKeys(send_key=hi_to_lo, recv_key=lo_to_hi, challenge=challenge)


class FrameCipher:
    """ChaCha20Poly1305 for one direction, with its own nonce counter.

    ``seal`` and ``open`` each advance the counter by one, so the receiving
    side rejects any dropped, replayed or reordered frame.
    """

    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self.counter = 0

    def _next_nonce(self) -> bytes:
        if self.counter > _MAX_COUNTER:
            raise RemoteProtocolError("nonce counter exhausted")
        nonce = bytes(4) + self.counter.to_bytes(8, "little")
        self.counter += 1
        return nonce

    def seal(self, plaintext: bytes) -> bytes:
        return self._aead.encrypt(self._next_nonce(), plaintext, None)

    def open(self, ciphertext: bytes) -> bytes:
        """Decrypt the next frame; :class:`RemoteProtocolError` if it does not authenticate."""
        try:
            return self._aead.decrypt(self._next_nonce(), ciphertext, None)
        except InvalidTag as exc:
            raise RemoteProtocolError("frame failed authentication") from exc


def auth_message(key: KeyPair, challenge: bytes) -> bytes:
    """The plaintext identity proof a side sends: canonical ``{"pub", "sig"}``."""
    return canonical.pack({"pub": key.public_key, "sig": key.sign_raw(AUTH_DOMAIN + challenge)})


def verify_auth(plaintext: bytes, challenge: bytes) -> tuple[PeerId, bytes]:
    """Check a remote's identity proof; returns its (peer id, public key)."""
    try:
        msg = canonical.unpack(plaintext, max_len=_AUTH_MAX)
    except canonical.CanonicalError as exc:
        raise HandshakeError(f"identity proof is not msgpack: {exc}") from exc
    if not isinstance(msg, dict) or set(msg) != {"pub", "sig"}:
        raise HandshakeError("identity proof must be a map with keys pub, sig")
    pub, sig = msg["pub"], msg["sig"]
    if not isinstance(pub, bytes) or len(pub) != 32 or not isinstance(sig, bytes) or len(sig) != 64:
        raise HandshakeError("identity proof has wrong field types or lengths")
    try:
        Ed25519PublicKey.from_public_bytes(pub).verify(sig, AUTH_DOMAIN + challenge)
    except (InvalidSignature, ValueError) as exc:
        raise HandshakeError("identity proof has a bad signature") from exc
    return peer_id_of(pub), pub


# --- I/O ---------------------------------------------------------------------


class SecureChannel:
    """An established link: encrypted frames over a trio stream.

    One task may send and one task may receive at a time (sends are serialised
    by a lock so nonces match the byte order on the wire).
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        send_cipher: FrameCipher,
        recv_cipher: FrameCipher,
        remote_public_key: bytes,
        decoder: FrameDecoder,
        max_frame: int,
    ) -> None:
        self._stream = stream
        self._send = send_cipher
        self._recv = recv_cipher
        self._decoder = decoder
        self._send_lock = trio.Lock()
        self.max_frame = max_frame
        self.remote_public_key = remote_public_key
        self.remote_peer_id: PeerId = peer_id_of(remote_public_key)

    @property
    def stream(self) -> trio.abc.Stream:
        return self._stream

    @property
    def max_receive(self) -> int:
        """Largest payload :meth:`receive` accepts (``max_frame`` unless lowered).

        A frame announced larger is refused on its header, before its body is
        buffered; a link that only ever expects tiny frames sets this low.
        """
        return self._decoder.max_frame - TAG_LEN

    @max_receive.setter
    def max_receive(self, value: int) -> None:
        if not 0 <= value <= self.max_frame:
            raise ValueError(f"max_receive must be within [0, {self.max_frame}]")
        self._decoder.max_frame = value + TAG_LEN

    @property
    def send_counter(self) -> int:
        """Nonce counter of the next frame this side sends."""
        return self._send.counter

    @property
    def recv_counter(self) -> int:
        """Nonce counter of the next frame this side expects."""
        return self._recv.counter

    async def send(self, payload: bytes) -> None:
        """Encrypt and send one frame (``ValueError`` if over ``max_frame``)."""
        if len(payload) > self.max_frame:
            raise ValueError(f"payload of {len(payload)} bytes exceeds max_frame {self.max_frame}")
        async with self._send_lock:
            await self._stream.send_all(encode_frame(self._send.seal(payload)))

    async def receive(self) -> bytes:
        """The next decrypted frame.

        Raises :class:`trio.EndOfChannel` at a clean EOF, :class:`RemoteProtocolError`
        (after closing the link) on a truncated, oversized or forged frame.
        """
        try:
            return await _read_frame(self._stream, self._decoder, self._recv)
        except RemoteProtocolError:
            await trio.aclose_forcefully(self._stream)
            raise

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def __aenter__(self) -> SecureChannel:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await trio.aclose_forcefully(self._stream)


async def _read_frame(stream: trio.abc.ReceiveStream, decoder: FrameDecoder, cipher: FrameCipher) -> bytes:
    while True:
        frame = decoder.next_frame()
        if not isinstance(frame, bytes):
            data = await stream.receive_some(_READ_SIZE)
            if not data:
                if decoder.buffered:
                    raise RemoteProtocolError("connection closed in the middle of a frame")
                raise trio.EndOfChannel("remote closed the link")
            decoder.feed(data)
            continue
        return cipher.open(frame)


async def _receive_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    """Exactly ``n`` bytes; never reads past them, so nothing else is buffered here."""
    buf = bytearray()
    while len(buf) < n:
        data = await stream.receive_some(n - len(buf))
        if not data:
            raise HandshakeError("connection closed during the handshake")
        buf += data
    return bytes(buf)


async def _receive_auth_frame(stream: trio.abc.ReceiveStream) -> bytes:
    """The remote's sealed identity frame: header first, refused if over :data:`AUTH_FRAME_MAX`."""
    length = int.from_bytes(await _receive_exactly(stream, HEADER_LEN), "big")
    if length > AUTH_FRAME_MAX:
        raise HandshakeError(f"identity frame of {length} bytes exceeds the limit of {AUTH_FRAME_MAX}")
    return await _receive_exactly(stream, length)


async def handshake(
    stream: trio.abc.Stream,
    key: KeyPair,
    expected_peer: PeerId | None,
    *,
    timeout: float = 10,
    max_frame: int = DEFAULT_MAX_FRAME,
    allowed: Container[PeerId] | None = None,
) -> SecureChannel:
    """Run the handshake on ``stream`` and return the established channel.

    ``expected_peer`` (dialer side) must equal the remote's proven id;
    ``allowed`` (listener side), if given, must contain it. Raises
    :class:`HandshakeError` when the remote fails or is refused,
    :class:`HandshakeTimeout` when it is not done within ``timeout`` seconds,
    and closes ``stream`` on any failure. At most :data:`PREAUTH_MAX_BYTES`
    are read from the remote before it is authenticated.
    """
    ok = False
    try:
        with trio.fail_after(timeout):
            eph_private = X25519PrivateKey.generate()
            local_eph = eph_private.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
            # Both sides write before they read: fine for TCP and buffered memory
            # streams, whose send_all never waits for the reader (lockstep streams
            # would deadlock until the timeout).
            await stream.send_all(local_eph)
            remote_eph = await _receive_exactly(stream, EPH_LEN)
            keys = derive_session(x25519_shared(eph_private, remote_eph), local_eph, remote_eph)
            send_cipher, recv_cipher = FrameCipher(keys.send_key), FrameCipher(keys.recv_key)
            sealed = encode_frame(send_cipher.seal(auth_message(key, keys.challenge)))
            await stream.send_all(sealed)
            try:
                plaintext = recv_cipher.open(await _receive_auth_frame(stream))
            except HandshakeError:
                raise
            except RemoteProtocolError as exc:
                raise HandshakeError(f"bad identity frame: {exc}") from exc
            remote_id, remote_pub = verify_auth(plaintext, keys.challenge)
            if expected_peer is not None and remote_id != expected_peer:
                raise HandshakeError(f"expected peer {expected_peer}, got {remote_id}", remote_id)
            if allowed is not None and remote_id not in allowed:
                raise HandshakeError(f"peer {remote_id} is not allowed", remote_id)
        # The ciphers carry on from the auth frames (counter 1); nothing past the
        # remote's auth frame has been read, so the channel's decoder starts empty.
        decoder = FrameDecoder(max_frame + TAG_LEN)
        channel = SecureChannel(stream, send_cipher, recv_cipher, remote_pub, decoder, max_frame)
        ok = True
        return channel
    except trio.TooSlowError as exc:
        raise HandshakeTimeout(f"handshake timed out after {timeout} s") from exc
    except trio.BrokenResourceError as exc:
        raise HandshakeError(f"connection lost during the handshake: {exc}") from exc
    finally:
        if not ok:
            await trio.aclose_forcefully(stream)
