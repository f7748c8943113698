"""Link latency between peers, measured over the authenticated transport (sans-I/O).

The tree broadcast (:mod:`peers.broadcast`) builds its trees from one-way
latency estimates between members. :class:`LatencyProbe` produces them; its
host (:class:`peers.broadcast._host.BroadcastTransport`) only moves its frames
and reads the clock.

* **PING/PONG.** Every ``ping_interval_s`` the probe pings each known peer
  (one outstanding ping per peer, a random 64-bit nonce); a PONG carrying
  the nonce of the outstanding ping gives one round-trip sample, which
  includes the emulated link delay of both directions and the send queues.
  The estimate of the one-way latency is an EWMA (``alpha``) of RTT/2,
  each sample first replaced by the smallest of the last ``window`` samples:
  a stalled event loop, a busy queue or a slow peer only ever lengthens a
  round trip, so the windowed minimum keeps those out while a lasting
  change of the link still comes through within ``window`` pings. A
  PONG without a matching outstanding ping (late, replayed, invented) is
  ignored and counted.
* **Reported values.** Peers compute the same tree for an origin only if
  their latency matrices agree, and every change makes a broadcaster rebuild
  its trees. So the estimate handed on changes only when the EWMA moves by
  more than ``min_change_s`` and ``rel_change`` of the value reported
  before, and this peer's own entries reach its own broadcaster only when
  its row goes out to the others (:meth:`LatencyProbe.row`), not at each
  sample: every peer's matrix then changes at about the same moment, and
  until the first rows every peer has the same (default) matrix.
* **Rows.** Every ``row_interval_s`` the probe hands its host its row (its
  estimates towards every peer, in microseconds) to send to every peer
  directly, as a host frame: the links are authenticated, so a row from X
  can only speak for X's own links. The receiver feeds ``(X, Y, s)`` to its
  broadcaster for every member Y of the row. A peer that lies about its row
  only makes the trees less efficient; the broadcaster's scoring and repair
  cover a relay that is slow or silent whatever it claims. (A signed row
  travelling inside the trees would reach members with fewer messages, but
  it would need a new signed message kind; at 256 peers a row is about
  12 KiB, sent once per ``row_interval_s`` to each peer.)

Frames are ``TAG + canonical msgpack``. :data:`TAG` (0xc1) is the one byte
msgpack never uses, so a host frame can be told apart from a signed message
(a canonical map, 0x83) and from any other msgpack frame by its first byte.

Bounds: one outstanding ping and one estimate per known peer (the host
forgets a peer with :meth:`LatencyProbe.forget`); a PONG is sent at most
once per ``min_pong_interval_s`` per peer (a ping flood gets no more); a row
is accepted at most once per ``min_row_interval_s`` per peer, holds at most
:data:`MAX_ROW` entries, entries outside the known peers are skipped and
values are clamped to :data:`MAX_LATENCY_S`; frames over :data:`MAX_FRAME`
bytes are refused before decoding.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from multillmn import canonical

__all__ = [
    "MAX_FRAME",
    "MAX_LATENCY_S",
    "MAX_ROW",
    "TAG",
    "LatencyConfig",
    "LatencyProbe",
    "is_latency_frame",
]

TAG: Final = b"\xc1"
"""First byte of every latency frame: 0xc1 is never used by msgpack."""

MAX_ROW: Final = 256
"""Entries in one row (the transport's ``MAX_PEERS``); a longer row is refused."""

MAX_LATENCY_S: Final = 10.0
"""Largest one-way latency believed, from a sample or a row (seconds)."""

MAX_FRAME: Final = 1 + 16 + MAX_ROW * 56
"""Largest latency frame accepted (a full row with 40-character ids), in bytes."""

_PING, _PONG, _ROW = "ping", "pong", "row"


def is_latency_frame(payload: bytes) -> bool:
    """Whether ``payload`` is a latency frame (its first byte is :data:`TAG`)."""
    return payload[:1] == TAG


@dataclass(frozen=True)
class LatencyConfig:
    """How often to measure and to spread the measurements; every default stated."""

    ping_interval_s: float = 5.0
    """Time between two pings of one peer."""
    row_interval_s: float = 10.0
    """Time between two rows sent to every peer."""
    alpha: float = 0.25
    """EWMA weight of a new sample."""
    window: int = 4
    """Each sample fed to the EWMA is the smallest of the last ``window`` round trips."""
    min_pong_interval_s: float = 0.25
    """A peer's pings are answered at most once per this time."""
    min_row_interval_s: float = 1.0
    """A peer's rows are taken at most once per this time."""
    ping_timeout_s: float = 10.0
    """An unanswered ping is forgotten after this time (the next one replaces it)."""
    min_change_s: float = 0.01
    """A new estimate is reported only if it differs from the last reported by more than this ...
    (every report changes the matrix, so every peer rebuilds every origin's tree, ~50 ms of CPU each at 8
    peers: on issue 13's testnet, with 2 ms and 10 %, one change about every row interval)"""
    rel_change: float = 0.3
    """... and by more than this fraction of it."""

    def validate(self) -> LatencyConfig:
        for name in ("ping_interval_s", "row_interval_s", "min_pong_interval_s", "min_row_interval_s",
                     "ping_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if not 0 < self.alpha <= 1:
            raise ValueError("alpha must be within (0, 1]")
        if not 1 <= self.window <= 64:
            raise ValueError("window must be within [1, 64]")
        if not (self.min_change_s >= 0 and self.rel_change >= 0):
            raise ValueError("min_change_s and rel_change must be >= 0")
        return self

    @classmethod
    def for_tests(cls) -> LatencyConfig:
        return cls(ping_interval_s=0.2, row_interval_s=0.5, min_pong_interval_s=0.05, min_row_interval_s=0.1,
                   ping_timeout_s=1.0)


def _frame(value: dict[str, Any]) -> bytes:
    return TAG + canonical.pack(value)


@dataclass
class _PeerLatency:
    nonce: int | None = None
    sent_at: float = 0.0
    estimate_s: float | None = None  # the EWMA
    reported_s: float | None = None  # what was last handed on (see the module docstring)
    samples: int = 0
    recent: deque[float] = field(default_factory=deque)  # the last ``window`` one-way samples
    last_pong: float = float("-inf")
    last_row: float = float("-inf")


class LatencyProbe:
    """One peer's latency measurements (see the module docstring). No I/O: the host sends the frames.

    ``on_estimate(a, b, seconds)`` is called with ``(me, peer, s)`` for this peer's row when it is made and
    with ``(sender, y, s)`` for each entry of a row received.
    """

    def __init__(self, me: str, on_estimate: Callable[[str, str, float], None],
                 config: LatencyConfig = LatencyConfig(), rng: random.Random | None = None) -> None:
        self.me = me
        self.config = config.validate()
        self._on_estimate = on_estimate
        self._rng = rng or random.SystemRandom()
        self._peers: dict[str, _PeerLatency] = {}
        self._stats = {"pings_sent": 0, "pongs_sent": 0, "samples": 0, "rows_sent": 0, "rows_taken": 0,
                       "reported": 0, "ignored": 0}

    # -- membership -----------------------------------------------------------------
    def set_peers(self, peers: Iterable[str]) -> None:
        """Measure exactly these peers (our own id aside); the others' state is forgotten."""
        wanted = {p for p in peers if p != self.me}
        for gone in [p for p in self._peers if p not in wanted]:
            del self._peers[gone]
        for p in wanted:
            self._peers.setdefault(p, _PeerLatency())

    def forget(self, peer: str) -> None:
        self._peers.pop(peer, None)

    # -- outgoing ---------------------------------------------------------------------
    def ping(self, peer: str, now: float) -> bytes | None:
        """A PING frame for ``peer``, or ``None`` while one is outstanding (and not timed out)."""
        p = self._peers.get(peer)
        if p is None:
            return None
        if p.nonce is not None and now - p.sent_at < self.config.ping_timeout_s:
            return None
        p.nonce = self._rng.getrandbits(63)
        p.sent_at = now
        self._stats["pings_sent"] += 1
        return _frame({"t": _PING, "n": p.nonce})

    def row(self) -> bytes:
        """This peer's reported estimates as a ROW frame (microseconds, peers without one left out); they reach
        ``on_estimate`` now, as ``(me, peer, s)``, as they reach the others (see the module docstring)."""
        entries = {q: round(p.reported_s * 1e6) for q, p in self._peers.items() if p.reported_s is not None}
        for q, micros in sorted(entries.items()):
            self._on_estimate(self.me, q, micros / 1e6)
        self._stats["rows_sent"] += 1
        return _frame({"t": _ROW, "r": entries})

    # -- incoming ---------------------------------------------------------------------
    def receive(self, peer: str, frame: bytes, now: float) -> bytes | None:
        """Take a latency frame from ``peer``; returns the reply to send it (a PONG), if any. Never raises."""
        p = self._peers.get(peer)
        msg = self._decode(frame) if p is not None else None
        if p is None or msg is None:
            self._stats["ignored"] += 1
            return None
        kind = msg.get("t")
        if kind == _PING and set(msg) == {"t", "n"} and type(msg["n"]) is int:
            if now - p.last_pong < self.config.min_pong_interval_s:
                self._stats["ignored"] += 1
                return None
            p.last_pong = now
            self._stats["pongs_sent"] += 1
            return _frame({"t": _PONG, "n": msg["n"]})
        if kind == _PONG and set(msg) == {"t", "n"} and p.nonce is not None and msg["n"] == p.nonce:
            p.nonce = None
            self._sample(peer, p, (now - p.sent_at) / 2)
            return None
        if kind == _ROW and set(msg) == {"t", "r"} and isinstance(msg["r"], dict) and len(msg["r"]) <= MAX_ROW:
            if now - p.last_row < self.config.min_row_interval_s:
                self._stats["ignored"] += 1
                return None
            p.last_row = now
            self._stats["rows_taken"] += 1
            for other, micros in sorted(msg["r"].items()):
                if other == peer or type(micros) is not int or micros < 0:
                    continue
                if other == self.me or other in self._peers:
                    self._on_estimate(peer, other, min(micros / 1e6, MAX_LATENCY_S))
            return None
        self._stats["ignored"] += 1
        return None

    def _decode(self, frame: bytes) -> dict[str, Any] | None:
        if not is_latency_frame(frame) or len(frame) > MAX_FRAME:
            return None
        try:
            msg = canonical.unpack(frame[1:], max_len=MAX_FRAME, max_depth=2)
        except canonical.CanonicalError:
            return None
        return msg if isinstance(msg, dict) else None

    def _sample(self, peer: str, p: _PeerLatency, one_way_s: float) -> None:
        one_way_s = min(max(one_way_s, 0.0), MAX_LATENCY_S)
        p.recent.append(one_way_s)
        while len(p.recent) > self.config.window:
            p.recent.popleft()
        one_way_s = min(p.recent)
        a = self.config.alpha
        p.estimate_s = one_way_s if p.estimate_s is None else (1 - a) * p.estimate_s + a * one_way_s
        p.samples += 1
        self._stats["samples"] += 1
        old, cfg = p.reported_s, self.config
        if old is None or abs(p.estimate_s - old) > max(cfg.min_change_s, cfg.rel_change * old):
            p.reported_s = p.estimate_s
            self._stats["reported"] += 1

    # -- introspection ------------------------------------------------------------------
    def estimate(self, peer: str) -> float | None:
        """The current one-way estimate (the EWMA) towards ``peer`` (seconds), if any."""
        p = self._peers.get(peer)
        return None if p is None else p.estimate_s

    def estimates(self) -> dict[str, float]:
        """The reported estimates by peer (seconds): what the broadcaster and the rows got."""
        return {q: p.reported_s for q, p in self._peers.items() if p.reported_s is not None}

    def statistics(self) -> dict[str, int]:
        return {**self._stats, "peers": len(self._peers),
                "outstanding": sum(p.nonce is not None for p in self._peers.values())}
