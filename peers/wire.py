"""Sans-I/O wire codec: length-prefixed frames and signed-message payloads.

Nothing here touches a socket (in the style of h11): a :class:`FrameDecoder`
is fed bytes and hands back whole frames; :func:`decode_message` turns one
frame payload into a fully validated :class:`~consensus.messages.Signed`.

A frame is a 4-byte big-endian length followed by that many bytes. A message
payload is the canonical msgpack map ``{"b": body, "k": kind, "s": sig}``.
Every rejection of a message raises :class:`MessageError`; its category
(``classify``) says where decoding failed, for :class:`RejectStats`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any, Final

from pydantic import ValidationError

from consensus.messages import KINDS, Envelope, MessageError, Signed, VerifiedCache, open_envelope
from consensus.scores import ScoreVector
from dag.messages import DAG_KINDS
from multillmn import canonical
from peers.catchup import CATCHUP_KINDS

__all__ = [
    "NEED_DATA",
    "HEADER_LEN",
    "RemoteProtocolError",
    "FrameTooLarge",
    "FrameDecoder",
    "encode_frame",
    "encode_message",
    "decode_message",
    "WireRejection",
    "CATEGORIES",
    "classify",
    "RejectStats",
]

log = logging.getLogger("multillmn.wire")

HEADER_LEN: Final = 4
_MAX_LEN: Final = 2**32 - 1
SIG_LEN: Final = 64


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()
"""Returned by :meth:`FrameDecoder.next_frame` when no whole frame is buffered yet."""


class RemoteProtocolError(Exception):
    """The remote broke the framing or link protocol; the link must be closed."""


class FrameTooLarge(RemoteProtocolError):
    """A frame header announces more bytes than the decoder's ``max_frame``."""


def encode_frame(payload: bytes) -> bytes:
    """``payload`` prefixed with its 4-byte big-endian length."""
    if len(payload) > _MAX_LEN:
        raise ValueError(f"frame of {len(payload)} bytes cannot be length-prefixed")
    return len(payload).to_bytes(HEADER_LEN, "big") + payload


class FrameDecoder:
    """Incremental decoder of length-prefixed frames.

    An oversized header raises :class:`FrameTooLarge` as soon as its four bytes
    are seen (from :meth:`feed` or :meth:`next_frame`), before any of the body
    is buffered; the decoder then stays failed.
    """

    def __init__(self, max_frame: int) -> None:
        if max_frame < 0:
            raise ValueError("max_frame must be >= 0")
        self.max_frame = max_frame
        self._buf = bytearray()
        self._error: FrameTooLarge | None = None

    @property
    def buffered(self) -> int:
        """Bytes held that are not yet part of a returned frame."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray) -> None:
        """Append received bytes; raises :class:`FrameTooLarge` on an oversized header."""
        if self._error is not None:
            raise self._error
        if len(self._buf) >= HEADER_LEN:
            self._buf += data
            return
        # Only the first frame's header is checked here; later frames are
        # checked by next_frame() once the earlier ones are consumed.
        missing = HEADER_LEN - len(self._buf)
        self._buf += data[:missing]
        if len(self._buf) == HEADER_LEN:
            self._check_header()
        self._buf += data[missing:]

    def _check_header(self) -> int:
        length = int.from_bytes(self._buf[:HEADER_LEN], "big")
        if length > self.max_frame:
            self._buf.clear()
            self._error = FrameTooLarge(f"frame of {length} bytes exceeds the limit of {self.max_frame}")
            raise self._error
        return length

    def next_frame(self) -> bytes | _NeedData:
        """The next whole frame payload, or :data:`NEED_DATA`."""
        if self._error is not None:
            raise self._error
        if len(self._buf) < HEADER_LEN:
            return NEED_DATA
        length = self._check_header()
        end = HEADER_LEN + length
        if len(self._buf) < end:
            return NEED_DATA
        payload = bytes(self._buf[HEADER_LEN:end])
        del self._buf[:end]
        return payload


# --- signed messages -----------------------------------------------------------

CATEGORIES: Final = (
    "malformed",
    "oversized",
    "unknown-kind",
    "schema",
    "non-canonical",
    "unknown-signer",
    "bad-signature",
)


class WireRejection(MessageError):
    """A :class:`MessageError` raised by :func:`decode_message`, with its category."""

    def __init__(self, category: str, reason: str) -> None:
        super().__init__(reason)
        self.category = category


def encode_message(signed: Signed[Any]) -> bytes:
    """Frame payload for a signed message: canonical ``{"k": kind, "b": body, "s": sig}``."""
    return canonical.pack({"k": signed.kind, "b": signed.envelope.body, "s": signed.envelope.sig})


def decode_message(
    payload: bytes,
    public_key_of: Callable[[str], bytes | None],
    *,
    max_len: int = 1 << 21,
    cache: VerifiedCache | None = None,
) -> Signed[Any]:
    """Decode and fully validate a payload made by :func:`encode_message`.

    Checks the outer map (exactly keys k/b/s, their types, canonical bytes), the
    kind (consensus kinds, the DAG gossip kinds of :mod:`dag.messages` and the catch-up kinds of
    :mod:`peers.catchup`), then
    the body's msgpack (within :func:`multillmn.canonical.unpack`'s bounds on
    size and nesting), schema, canonical form and signature via
    :func:`~consensus.messages.open_envelope`, which decodes the body once.
    Raises only :class:`MessageError` (a :class:`WireRejection` carrying a
    category), whatever the bytes.
    """
    if len(payload) > max_len:
        raise WireRejection("oversized", f"message of {len(payload)} bytes exceeds {max_len}")
    try:
        outer = canonical.unpack(payload, max_len=max_len, max_depth=1)  # a flat map: nothing nests
    except canonical.CanonicalError as exc:
        raise WireRejection("malformed", f"message is not msgpack: {exc}") from exc
    if not isinstance(outer, dict) or set(outer) != {"k", "b", "s"}:
        raise WireRejection("malformed", "message must be a map with exactly the keys k, b, s")
    kind, body, sig = outer["k"], outer["b"], outer["s"]
    if not isinstance(kind, str) or not isinstance(body, bytes) or not isinstance(sig, bytes):
        raise WireRejection("malformed", "message fields have wrong types (k: str, b: bytes, s: bytes)")
    if canonical.pack(outer) != payload:
        raise WireRejection("non-canonical", "message map is not in canonical form")
    model = KINDS.get(kind) or DAG_KINDS.get(kind) or CATCHUP_KINDS.get(kind) or (
        ScoreVector if kind == ScoreVector.KIND else None)
    if model is None:
        raise WireRejection("unknown-kind", f"unknown message kind {kind[:40]!r}")
    if len(sig) != SIG_LEN:
        raise WireRejection("malformed", f"signature has {len(sig)} bytes, not {SIG_LEN}")
    try:
        envelope = Envelope(body=body, sig=sig)
    except ValidationError as exc:
        raise WireRejection("oversized", f"{kind} body of {len(body)} bytes is too large") from exc

    looked_up: list[bytes | None] = []

    def lookup(peer: str) -> bytes | None:
        key = public_key_of(peer)
        looked_up.append(key)
        return key

    try:
        return open_envelope(model, envelope, lookup, cache)
    except MessageError as exc:
        if isinstance(exc.__cause__, canonical.CanonicalError):  # the body's bytes, before any schema
            raise WireRejection("malformed", f"{kind} body is not msgpack: {exc}") from exc
        if looked_up:
            category = "unknown-signer" if looked_up[-1] is None else "bad-signature"
        elif "canonical form" in str(exc):
            category = "non-canonical"
        else:
            category = "schema"
        raise WireRejection(category, str(exc)) from exc
    except (ValidationError, canonical.CanonicalError) as exc:
        # Defensive: a schema failure that escaped open_envelope's own wrapping.
        raise WireRejection("schema", f"invalid {kind}: {exc.__class__.__name__}") from exc


def classify(exc: BaseException) -> str:
    """The reject category of an exception raised while reading a peer's data."""
    if isinstance(exc, WireRejection):
        return exc.category
    if isinstance(exc, FrameTooLarge):
        return "oversized"
    if isinstance(exc, MessageError):
        text = str(exc)
        if "unknown peer" in text:
            return "unknown-signer"
        if "bad signature" in text:
            return "bad-signature"
        if "canonical form" in text:
            return "non-canonical"
        if "malformed msgpack" in text:
            return "malformed"
        return "schema"
    return "malformed"


class RejectStats:
    """Counts rejected inputs per category (and per peer) and logs each one."""

    def __init__(self) -> None:
        self._by_category: Counter[str] = Counter()
        self._by_peer: Counter[str] = Counter()

    def record(self, reason_category: str, detail: str, peer: str | None = None) -> None:
        self._by_category[reason_category] += 1
        if peer is not None:
            self._by_peer[peer] += 1
        log.info("rejected %s from %s: %s", reason_category, peer or "?", detail)

    def record_exception(self, exc: BaseException, peer: str | None = None) -> str:
        """Record ``exc`` under :func:`classify`'s category; returns the category."""
        category = classify(exc)
        self.record(category, str(exc), peer)
        return category

    def snapshot(self) -> dict[str, int]:
        """Rejections per category so far."""
        return dict(self._by_category)

    def by_peer(self) -> dict[str, int]:
        """Rejections per peer so far (only those recorded with a peer)."""
        return dict(self._by_peer)
