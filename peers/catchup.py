"""Catch-up by certificates: a peer that lags asks another for decided heights.

The driver emits :class:`~consensus.driver.AskCatchUp` when its height is
stuck behind (or periodically when idle); the node sends a
:class:`CatchUpRequest` to that peer, which answers with up to
:data:`BATCH` :class:`CatchUpReply` messages, one certificate each (its own
decisions or its ledger's). The receiver hands each to its driver as
:class:`~consensus.driver.Certified`, which checks it against the set its
own chain computed, as any catch-up: the replier is trusted for nothing. A
reply that says the replier has more (``latest``) makes the node ask
again as soon as that peer's rate limit allows (:data:`MIN_INTERVAL_S` after
its last request), so a newcomer catches up at the speed of its checks, not
of the driver's tick: :data:`BATCH` per interval is 128 heights/s from one
peer, about what a 2-core machine checks.

Bounds: a peer is served at most once per :data:`MIN_INTERVAL_S` (more
requests are dropped and counted), each reply holds one certificate of at
most :data:`MAX_CERTIFICATE_BYTES` (a batch is at most 32 MiB, half the
transport's per-peer send queue; a four-peer certificate is about 9 KB).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar

from pydantic import Field

from consensus.messages import Height, Message, PeerIdField

__all__ = ["BATCH", "CATCHUP_KINDS", "CatchUpReply", "CatchUpRequest", "MAX_CERTIFICATE_BYTES", "MIN_INTERVAL_S",
           "RateLimit", "certificate_bytes"]

BATCH = 32
"""Certificates sent for one request."""
MIN_INTERVAL_S = 0.25
"""A peer's requests closer together than this are dropped."""
MAX_CERTIFICATE_BYTES = 1 << 20


class CatchUpRequest(Message):
    """``sender`` asks for the certificates of ``height`` and the heights after it."""

    KIND: ClassVar[str] = "catchup_req"
    SIGNER: ClassVar[str] = "sender"
    sender: PeerIdField
    height: Height


class CatchUpReply(Message):
    """One decided height's certificate (JSON, as ``GET /v1/certificates/{h}`` serves it) and the
    replier's latest decided height."""

    KIND: ClassVar[str] = "catchup"
    SIGNER: ClassVar[str] = "sender"
    sender: PeerIdField
    height: Height
    latest: Annotated[int, Field(ge=0, le=2**62)]
    certificate: Annotated[bytes, Field(max_length=MAX_CERTIFICATE_BYTES)]


CATCHUP_KINDS: dict[str, type[Message]] = {m.KIND: m for m in (CatchUpRequest, CatchUpReply)}


def certificate_bytes(cert: dict[str, Any]) -> bytes | None:
    """A certificate as a reply carries it, or ``None`` if it is too large to send."""
    raw = json.dumps(cert, sort_keys=True, separators=(",", ":")).encode()
    return raw if len(raw) <= MAX_CERTIFICATE_BYTES else None


class RateLimit:
    """At most one served request per peer per ``interval_s``; a bounded table of the last times."""

    def __init__(self, interval_s: float = MIN_INTERVAL_S, max_peers: int = 1024) -> None:
        self.interval_s = interval_s
        self.max_peers = max_peers
        self._last: dict[str, float] = {}
        self.dropped = 0

    def allow(self, peer: str, now: float) -> bool:
        last = self._last.get(peer)
        if last is not None and now - last < self.interval_s:
            self.dropped += 1
            return False
        if len(self._last) >= self.max_peers:
            self._last = {p: t for p, t in self._last.items() if now - t < self.interval_s}
        self._last[peer] = now
        return True
