"""A deterministic in-memory network of :class:`Broadcaster` cores (tests and ``bench/broadcast_sim.py``).

Virtual time and an event heap; peers are random points on a unit square
(seeded), and a frame from ``a`` to ``b`` arrives after ``a``'s upload queue
has sent it (``bandwidth`` bytes per second, optional) plus the one-way
latency ``base_s + distance * scale_s``, stretched by a seeded jitter in
``[1, 1 + jitter)``. Every core knows the un-jittered latencies (one
:class:`LatencyMatrix` shared by all: full knowledge). Behaviours:
``drop`` (receives and delivers, never sends), ``corrupt`` (flips a byte of
every payload it forwards or serves; its digests are honest).

Payloads are ``origin | body | tag`` where the tag is a keyed BLAKE2b of the
rest (:func:`make_payload`, :func:`fake_validate`): a relay that changes a
byte is caught, as with a real signature.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from peers.broadcast._core import BroadcastConfig, Broadcaster, Deliver, Effect, Schedule, Send
from peers.broadcast._frames import EXCLUDE, GOSSIP, GRAFT, IHAVE, PRUNE, SUSPECT, Gossip, decode, encode, message_id
from peers.broadcast._trees import LatencyMatrix

__all__ = ["Behaviour", "BroadcastRecord", "SimNet", "fake_validate", "make_payload"]

_TAG_KEY = b"multillmn-broadcast-sim"
_KINDS = {GOSSIP: "gossip", IHAVE: "ihave", GRAFT: "graft", PRUNE: "prune", SUSPECT: "suspect", EXCLUDE: "exclude"}
Behaviour = Literal["honest", "drop", "corrupt"]


def make_payload(origin: str, body: bytes) -> bytes:
    """A payload that :func:`fake_validate` attributes to ``origin`` (stands in for a signature)."""
    head = origin.encode() + b"|" + body
    return head + b"|" + hashlib.blake2b(head, key=_TAG_KEY, digest_size=8).hexdigest().encode()


def fake_validate(payload: bytes) -> str | None:
    """The origin of a payload built by :func:`make_payload`, None if any byte was changed."""
    head, sep, tag = payload.rpartition(b"|")
    origin, sep2, _ = head.partition(b"|")
    if not sep or not sep2 or hashlib.blake2b(head, key=_TAG_KEY, digest_size=8).hexdigest().encode() != tag:
        return None
    try:
        return origin.decode()
    except UnicodeDecodeError:
        return None


@dataclass
class BroadcastRecord:
    """One broadcast: when it started and when each peer delivered it."""

    origin: str
    msg_id: bytes
    start: float
    delivered: dict[str, float] = field(default_factory=dict)


class SimNet:
    """``n`` peers ``p000``... on a plane, each running a :class:`Broadcaster`; see the module docstring."""

    def __init__(self, n: int, *, seed: int = 0, config: BroadcastConfig | None = None,
                 behaviours: dict[str, Behaviour] | None = None, base_s: float = 0.002, scale_s: float = 0.1,
                 jitter: float = 0.1, bandwidth: float | None = None) -> None:
        self.rng = random.Random(seed)
        width = max(3, len(str(n - 1)))
        self.ids = [f"p{i:0{width}d}" for i in range(n)]
        self.points = {p: (self.rng.random(), self.rng.random()) for p in self.ids}
        self.base_s, self.scale_s, self.jitter, self.bandwidth = base_s, scale_s, jitter, bandwidth
        self.config = config if config is not None else BroadcastConfig()
        self.behaviours: dict[str, Behaviour] = dict(behaviours or {})
        self.matrix = LatencyMatrix(base=self.latency)
        self.nodes: dict[str, Broadcaster] = {}
        for p in self.ids:
            node = Broadcaster(p, fake_validate, self.config, matrix=self.matrix)
            node.set_members(self.ids)
            self.nodes[p] = node
        self.now = 0.0
        self._heap: list[tuple[float, int, str, str, object]] = []
        self._seq = 0
        self._uplink_free: dict[str, float] = {p: 0.0 for p in self.ids}
        self.records: dict[bytes, BroadcastRecord] = {}
        self.frames_sent: Counter[str] = Counter()  # by sender, frames actually put on the wire
        self.bytes_sent: Counter[str] = Counter()
        self.kind_frames: Counter[str] = Counter()  # by frame kind (gossip, ihave, graft, prune, other)
        self.kind_bytes: Counter[str] = Counter()
        self.unknown_deliveries = 0

    def latency(self, a: str, b: str) -> float:
        """The one-way latency every core is told (no jitter)."""
        if a == b:
            return 0.0
        return self.base_s + math.dist(self.points[a], self.points[b]) * self.scale_s

    def behaviour(self, peer: str) -> Behaviour:
        return self.behaviours.get(peer, "honest")

    # --- events -------------------------------------------------------------------------

    def _push(self, at: float, kind: str, node: str, item: object) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, kind, node, item))

    def _carry_out(self, node: str, effects: Iterable[Effect]) -> None:
        behaviour = self.behaviour(node)
        for effect in effects:
            if isinstance(effect, Send):
                if behaviour == "drop":
                    continue
                frame = effect.frame
                if behaviour == "corrupt":
                    frame = self._corrupt(frame)
                self._transmit(node, effect.to, frame)
            elif isinstance(effect, Schedule):
                self._push(self.now + effect.delay_s, "timer", node, effect.timer)
            elif isinstance(effect, Deliver):
                record = self.records.get(effect.msg_id)
                if record is None:
                    self.unknown_deliveries += 1
                else:
                    record.delivered.setdefault(node, self.now)

    def _corrupt(self, frame: bytes) -> bytes:
        decoded = decode(frame, max_payload=self.config.max_payload)
        if not isinstance(decoded, Gossip) or not decoded.payload:
            return frame
        payload = bytearray(decoded.payload)
        payload[len(payload) // 2] ^= 0x01
        return encode(Gossip(decoded.origin, bytes(payload), decoded.hops))

    def _transmit(self, sender: str, to: str, frame: bytes) -> None:
        self.frames_sent[sender] += 1
        self.bytes_sent[sender] += len(frame)
        kind = _KINDS.get(frame[1], "other") if len(frame) > 1 and frame[0] & 0xF0 == 0x90 else "other"
        self.kind_frames[kind] += 1
        self.kind_bytes[kind] += len(frame)
        leave = self.now
        if self.bandwidth is not None:
            leave = max(leave, self._uplink_free[sender]) + len(frame) / self.bandwidth
            self._uplink_free[sender] = leave
        delay = self.latency(sender, to) * (1.0 + self.jitter * self.rng.random())
        self._push(leave + delay, "frame", to, (sender, frame))

    def inject(self, sender: str, to: str, frame: bytes) -> None:
        """Put a raw frame on the wire now (a hostile peer outside the cores)."""
        self._transmit(sender, to, frame)

    def broadcast(self, origin: str, body: bytes) -> bytes:
        """``origin`` broadcasts a new payload now; returns its message id."""
        payload = make_payload(origin, body)
        msg_id = message_id(payload)
        self.records[msg_id] = BroadcastRecord(origin, msg_id, self.now, {origin: self.now})
        self._carry_out(origin, self.nodes[origin].broadcast(payload, self.now))
        return msg_id

    def run(self, until: float | None = None) -> None:
        """Process events (in time order, ties by insertion) until none is left or ``until`` is reached."""
        while self._heap and (until is None or self._heap[0][0] <= until):
            at, _, kind, node, item = heapq.heappop(self._heap)
            self.now = at
            broadcaster = self.nodes[node]
            if kind == "frame":
                assert isinstance(item, tuple)
                sender: str = item[0]
                frame: bytes = item[1]
                self._carry_out(node, broadcaster.receive(sender, frame, at))
            else:
                self._carry_out(node, broadcaster.fire(item, at))
        if until is not None:
            self.now = max(self.now, until)

    # --- measurements -------------------------------------------------------------------

    def delivery_ratio(self, msg_id: bytes) -> float:
        return len(self.records[msg_id].delivered) / len(self.ids)

    def latencies(self, msg_id: bytes) -> list[float]:
        record = self.records[msg_id]
        return sorted(t - record.start for p, t in record.delivered.items() if p != record.origin)

    def total(self, key: str) -> int:
        """Sum of one :meth:`Broadcaster.statistics` counter over every peer."""
        return sum(node.statistics().get(key, 0) for node in self.nodes.values())
