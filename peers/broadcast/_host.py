"""The trio host of the tree broadcast: a :class:`BroadcastTransport` around a :class:`~peers.transport.Transport`.

It offers the node the surface of the transport it wraps (``send_nowait``,
``broadcast_nowait``, ``inbound``, ``known_peers``, ``set_peers``,
``connected_peers``, ``statistics``, ``status``, ``run``) and carries out the
effects of the pure :class:`~peers.broadcast.Broadcaster`:

* ``broadcast_nowait(payload)`` hands this peer's own payload to the
  broadcaster, whose ``Send`` effects go out on the wrapped transport; a
  payload sent again, another signer's (relayed votes) or one the core
  refuses goes to every peer directly, as the mesh would (see there).
  ``send_nowait`` (catch-up, ledger gossip, directed messages) passes
  through unchanged.
* Every payload the wrapped transport receives is classified by its first
  byte, without decoding: a broadcast frame is a canonical msgpack array
  (``[kind, ...]``, ``peers/broadcast/_frames.py``: a fixarray, 0x90-0x9f)
  and goes to :meth:`Broadcaster.receive`, which never raises on hostile
  input; a latency frame (:data:`peers.latency.TAG`, 0xc1, a byte msgpack
  never uses) goes to the :class:`~peers.latency.LatencyProbe`; anything
  else passes through to :attr:`inbound` unchanged: a signed message is a
  canonical ``{b, k, s}`` map (0x83), and garbage reaches the node's decoder,
  which counts it as before. A ``Deliver`` becomes ``(relay, payload)``
  on :attr:`inbound`, the relay being the peer whose frame completed it.
* The broadcaster validates every payload before it relays or delivers it:
  :func:`signed_validator` decodes and verifies it with the node's
  :class:`~consensus.messages.VerifiedCache`, so the node's own decode of a
  delivered payload is a cache hit, not a second Ed25519 check.
* ``Schedule`` effects become entries of one heap of deadlines, served by
  one task sleeping until the earliest (not a task per timer).
* RTT: :class:`~peers.latency.LatencyProbe` pings every linked peer over
  the authenticated links (every ``ping_interval_s``, 5 s; a new link
  within :data:`FIRST_PING_TICK_S`) and sends its row to every linked peer
  directly every ``row_interval_s`` (10 s); its estimates and the rows it
  receives feed the host's copy of the matrix (below). A peer speaks only for
  its own links, and a lying one only makes the trees worse, which the
  core's scoring and repair absorb (``peers/latency.py`` for the choice).
* Trees are computed ahead, and a new matrix is adopted only once they
  are: estimates (the probe's own and the rows received) go into the
  host's own copy of the matrix, not the broadcaster's. ``WARM_DELAY_S``
  after the last change, one task takes a snapshot of that copy, builds
  every origin's tree on it in a worker thread (``build_in_thread``; about
  50 ms of CPU per origin at 8 peers, which, run on the event loop, stalled
  every message behind it: the multi-second outliers of issue 13), then
  hands it to :meth:`Broadcaster.adopt_matrix` on the first multiple of
  :data:`ADOPT_SLOT_S` on the wall clock at least :data:`ADOPT_LEAD_S`
  after the snapshot, which switches every view at once and sends an empty
  GRAFT to each new parent. A message never waits for a tree to be built,
  and peers that took the same snapshot (the rows reach them together)
  switch at the same moment.

Bounds
------
:attr:`inbound` holds at most the wrapped transport's ``inbound_queue``
messages, ``inbound_peer_queue`` per peer and ``inbound_peer_bytes`` per peer
(a delivered payload counts against its relay); over any of them the payload
is dropped and counted (``inbound_dropped``), exactly as the transport would.
The timer heap holds at most :data:`MAX_TIMERS` entries (more are dropped and
counted in ``timers_dropped``); the ids of own broadcasts remembered, at most
:data:`MAX_OWN`; the broadcaster's own tables are bounded by its
configuration; the latency probe's are per known peer (one outstanding ping,
one window of samples, pongs and rows rate-limited per peer).
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

import trio

from consensus.messages import VerifiedCache
from multillmn.identity import PeerId
from peers.broadcast import BroadcastConfig, Broadcaster, Deliver, Schedule, Send, message_id
from peers.broadcast._trees import LatencyMatrix
from peers.latency import LatencyConfig, LatencyProbe, is_latency_frame
from peers.transport import Address, LinkShaper, Transport, TransportStats
from peers.wire import RejectStats, decode_message

__all__ = [
    "FIRST_PING_TICK_S",
    "MAX_OWN",
    "WARM_DELAY_S",
    "MAX_TIMERS",
    "BroadcastTransport",
    "HostInbound",
    "signed_validator",
    "tree_transport",
]

log = logging.getLogger("multillmn.broadcast")

_FRAME_FIRST_BYTES: Final = range(0x90, 0xA0)
"""First byte of a broadcast frame: a msgpack fixarray (``peers/broadcast/_frames.py`` packs ``[kind, ...]``)."""

MAX_TIMERS: Final = 65_536
"""Pending broadcaster timers; a ``Schedule`` beyond it is dropped and counted."""

WARM_DELAY_S: Final = 0.2
"""Quiet time after a change of the latency matrix or the members before the trees are computed ahead."""

TREE_RESTARTS: Final = 0
"""Restarts of the local search when a host builds trees (``build_tree``'s default is 12): at 8 peers 3 ms of CPU
per origin instead of 55 ms, for a max latency 2.5% worse on average (20% at worst) over 45 random planes of the
testnet's kind. Every new matrix rebuilds every origin's tree in every peer at once, and the 12 restarts' 3.6 s
of CPU over 8 processes on 2 cores was what remained of issue 13's testnet outliers."""

ADOPT_SLOT_S: Final = 3.0
"""A new matrix is adopted on a multiple of this on the wall clock, the first at least :data:`ADOPT_LEAD_S` after
its snapshot: peers that took the same snapshot (the rows reach them together) switch their trees together."""

ADOPT_LEAD_S: Final = 2.0
"""Time left to build the trees before the switch (about 25 ms of CPU at 8 peers; a build that takes longer
switches when it is done)."""

FIRST_PING_TICK_S: Final = 0.5
"""A linked peer without a latency estimate is pinged within this time (then every ``ping_interval_s``)."""

MAX_OWN: Final = 4096
"""Ids of this peer's own broadcasts remembered, so that sending one again goes to every peer directly."""


def signed_validator(public_key_of: Callable[[str], bytes | None], cache: VerifiedCache,
                     rejects: RejectStats | None = None) -> Callable[[bytes], str | None]:
    """The broadcaster's ``validate``: the signer of a valid signed-message payload, else ``None``.

    Decodes and verifies with :func:`peers.wire.decode_message` into ``cache`` (the node's), so the node
    decoding the delivered payload again finds it verified. A refused payload is counted in ``rejects``.
    """

    def validate(payload: bytes) -> str | None:
        try:
            return decode_message(payload, public_key_of, cache=cache).signer
        except Exception as exc:  # MessageError; anything else is the payload's fault too
            if rejects is not None:
                rejects.record_exception(exc, None)
            return None

    return validate


class HostInbound(trio.abc.ReceiveChannel[tuple[PeerId, bytes]]):
    """:attr:`BroadcastTransport.inbound`: ``(peer, payload)`` pairs, bounded in all and per peer."""

    def __init__(self, size: int, peer_queue: int, peer_bytes: int) -> None:
        self._send, self._recv = trio.open_memory_channel[tuple[PeerId, bytes]](size)
        self.peer_queue = peer_queue
        self.peer_bytes = peer_bytes
        self._count: Counter[str] = Counter()
        self._bytes: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()

    def put_nowait(self, peer: PeerId, payload: bytes) -> bool:
        """Queue one pair; False (counted per peer) when a bound is reached."""
        if self._count[peer] >= self.peer_queue or self._bytes[peer] + len(payload) > self.peer_bytes:
            self.dropped[peer] += 1
            return False
        try:
            self._send.send_nowait((peer, payload))
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.dropped[peer] += 1
            return False
        self._count[peer] += 1
        self._bytes[peer] += len(payload)
        return True

    def _taken(self, item: tuple[PeerId, bytes]) -> tuple[PeerId, bytes]:
        peer = item[0]
        self._count[peer] -= 1
        self._bytes[peer] -= len(item[1])
        if self._count[peer] <= 0:
            del self._count[peer]
            self._bytes.pop(peer, None)
        return item

    async def receive(self) -> tuple[PeerId, bytes]:
        return self._taken(await self._recv.receive())

    def receive_nowait(self) -> tuple[PeerId, bytes]:
        return self._taken(self._recv.receive_nowait())

    def statistics(self) -> trio.MemoryChannelStatistics:
        return self._recv.statistics()

    async def aclose(self) -> None:
        await self._recv.aclose()


@dataclass
class _HostStats:
    broadcasts: int = 0  # own payloads handed to the broadcaster
    sent_direct: int = 0  # payloads broadcast_nowait sent to every peer directly (see there)
    frames_sent: int = 0  # broadcast frames queued on the transport (Send effects)
    frame_bytes_sent: int = 0
    frames_received: int = 0  # broadcast frames received (to Broadcaster.receive)
    frame_bytes_received: int = 0
    sends_refused: int = 0  # a Send the transport refused (queue full, unknown peer, too large)
    delivered: int = 0  # Deliver effects put on inbound
    passed_through: int = 0  # other payloads (signed messages sent directly) handed on as they came
    latency_frames_sent: int = 0
    latency_frames_received: int = 0
    timers_dropped: int = 0  # Schedule over MAX_TIMERS
    trees_computed: int = 0  # origins whose tree was computed ahead on a snapshot of the matrix
    matrices_adopted: int = 0  # snapshots handed to the broadcaster with their trees


class BroadcastTransport:
    """A :class:`Transport` whose ``broadcast_nowait`` goes through a :class:`Broadcaster` (module docstring).

    ``validate`` is the broadcaster's check of a payload (see :func:`signed_validator`).
    :meth:`run` runs the wrapped transport and this host's tasks; :meth:`run_overlay` only the host's
    tasks, for a transport someone else already runs (the daemon starts it before the node exists).
    """

    def __init__(self, inner: Transport, validate: Callable[[bytes], str | None], *,
                 config: BroadcastConfig | None = None, latency: LatencyConfig | None = None,
                 max_timers: int = MAX_TIMERS) -> None:
        self.inner = inner
        self.me: PeerId = inner.peer_id
        self.broadcaster = Broadcaster(self.me, validate, config if config is not None else BroadcastConfig())
        self.broadcaster.matrix.restarts = TREE_RESTARTS
        self.probe = LatencyProbe(self.me, self._set_latency, latency if latency is not None else LatencyConfig())
        self._latest = self.broadcaster.matrix.copy()  # the estimates as measured; adopted with their trees built
        self.build_in_thread = True  # build the trees of a new matrix in a worker thread (else between checkpoints)
        self._changed = trio.Event()  # the matrix or the members changed: trees to compute ahead
        self.warm = False  # every origin's tree is computed for the current matrix and members
        self.inbound = HostInbound(inner.inbound_queue, inner.inbound_peer_queue, inner.inbound_peer_bytes)
        self.max_timers = max_timers
        self.pinging = True  # benchmarks stop the probe after a warm-up so it does not share the measurement
        self._stats = _HostStats()
        self._timers: list[tuple[float, int, object]] = []
        self._timer_seq = 0
        self._own: OrderedDict[bytes, None] = OrderedDict()
        self._sleep_scope: trio.CancelScope | None = None
        self._members_changed()

    # -- the transport's surface --------------------------------------------------------
    @property
    def peer_id(self) -> PeerId:
        return self.me

    @property
    def listen_port(self) -> int | None:
        return self.inner.listen_port

    @property
    def shaper(self) -> LinkShaper:
        return self.inner.shaper

    def send_nowait(self, peer: PeerId, payload: bytes) -> bool:
        """Directly to ``peer``, as :meth:`Transport.send_nowait` (raises the same errors)."""
        return self.inner.send_nowait(peer, payload)

    def broadcast_nowait(self, payload: bytes) -> int:
        """Spread ``payload``; returns how many frames (or copies) the transport accepted now.

        This peer's own payload, the first time, goes to the broadcaster (its tree). Anything else goes
        to every peer directly, as :meth:`Transport.broadcast_nowait` would (counted in ``sent_direct``):
        a payload sent again (the driver re-sends its messages when a height is stuck; the core would drop
        it as seen, and the point of re-sending is to reach peers the first copy missed), a payload of
        another signer (the driver relays the votes of its lock round) and one the core refuses (too large;
        fault injection's junk).
        """
        msg_id = message_id(payload)
        if msg_id not in self._own:
            try:
                effects = self.broadcaster.broadcast(payload, self._now())
            except ValueError:
                effects = None
            if effects is not None:
                self._own[msg_id] = None
                while len(self._own) > MAX_OWN:
                    self._own.popitem(last=False)
                self._stats.broadcasts += 1
                return self._execute(effects, None)
        self._stats.sent_direct += 1
        return self.inner.broadcast_nowait(payload)

    def known_peers(self) -> list[PeerId]:
        return self.inner.known_peers()

    def connected_peers(self) -> list[PeerId]:
        return self.inner.connected_peers()

    def set_address(self, peer: PeerId, address: Address) -> None:
        self.inner.set_address(peer, address)

    def add_peer(self, peer: PeerId, address: Address | None) -> None:
        self.inner.add_peer(peer, address)
        self._members_changed()

    def remove_peer(self, peer: PeerId) -> None:
        self.inner.remove_peer(peer)
        self._members_changed()

    def set_peers(self, peers: Mapping[PeerId, Address | None]) -> None:
        """As :meth:`Transport.set_peers`; the broadcaster's members follow (the known peers and this one)."""
        self.inner.set_peers(peers)
        self._members_changed()

    def statistics(self) -> TransportStats:
        return self.inner.statistics()

    def limits(self) -> dict[str, int | float]:
        return {**self.inner.limits(), "max_timers": self.max_timers}

    def broadcast_statistics(self) -> dict[str, int]:
        """This host's counters, the broadcaster's and the latency probe's (prefixed ``core_``, ``rtt_``)."""
        out: dict[str, int] = dict(vars(self._stats))
        out["inbound_dropped"] = sum(self.inbound.dropped.values())
        out["timers_pending"] = len(self._timers)
        out.update({f"core_{k}": v for k, v in self.broadcaster.statistics().items()})
        out.update({f"rtt_{k}": v for k, v in self.probe.statistics().items()})
        return out

    def status(self) -> dict[str, Any]:
        """The transport's status with a ``broadcast`` section (mode, counters, latency estimates in ms)."""
        out = self.inner.status()
        out["limits"] = self.limits()
        out["broadcast"] = {"mode": "tree", **self.broadcast_statistics(),
                            "latency_ms": {q: round(s * 1000, 2) for q, s in sorted(self.probe.estimates().items())}}
        return out

    async def run(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the wrapped transport and this host until cancelled; ``started`` gets the bound port."""
        async with trio.open_nursery() as nursery:
            port: int = await nursery.start(self.inner.run)
            await nursery.start(self.run_overlay)
            task_status.started(port)

    async def run_overlay(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Only this host's tasks (inbound pump, timers, latency probe) until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump)
            nursery.start_soon(self._timer_loop)
            nursery.start_soon(self._ping_loop)
            nursery.start_soon(self._row_loop)
            nursery.start_soon(self._warm_loop)
            task_status.started()

    # -- effects --------------------------------------------------------------------------
    def _now(self) -> float:
        return trio.current_time()

    def _members_changed(self) -> None:
        known = self.inner.known_peers()
        if set(self.broadcaster.members) != {*known, self.me}:
            self.broadcaster.set_members([*known, self.me])
            self._trees_changed()
        self.probe.set_peers(known)

    def _set_latency(self, a: str, b: str, seconds: float) -> None:
        version = self._latest.version
        self._latest.set(a, b, seconds)
        if self._latest.version != version:
            self._trees_changed()

    def _trees_changed(self) -> None:
        self.warm = False
        self._changed.set()

    async def _warm_loop(self) -> None:
        """Build every origin's tree on a snapshot of the measured matrix, :data:`WARM_DELAY_S` after the last
        change, then adopt it (module docstring)."""
        while True:
            await self._changed.wait()
            while self._changed.is_set():  # wait for a quiet moment: rows come in bursts
                self._changed = trio.Event()
                await trio.sleep(WARM_DELAY_S)
            snapshot = self._latest.copy()
            switch_at = math.ceil((time.time() + ADOPT_LEAD_S) / ADOPT_SLOT_S) * ADOPT_SLOT_S
            core = self.broadcaster
            members, fanout, key = core.members, core.config.fanout, core.members_key
            if self.build_in_thread:
                await trio.to_thread.run_sync(_build_trees, snapshot, members, fanout, key)
            else:
                for origin in members:
                    _build_trees(snapshot, (origin,), fanout, key, members)
                    await trio.sleep(0)
            self._stats.trees_computed += len(members)
            await trio.sleep(max(0.0, switch_at - time.time()))
            self._stats.matrices_adopted += 1
            self._execute(core.adopt_matrix(snapshot, self._now()), None)
            self.warm = not self._changed.is_set()

    def _on_send(self, send: Send, own: bool) -> bool:
        """Whether to carry out ``send`` (``own``: caused by this peer's broadcast). Fault injection overrides."""
        return True

    def _execute(self, effects: Iterable[object], sender: PeerId | None) -> int:
        """Carry out the broadcaster's effects; ``sender``: whose frame caused them (None: ours or a timer)."""
        accepted = 0
        now: float | None = None
        for e in effects:
            if isinstance(e, Send):
                if not self._on_send(e, sender is None):
                    continue
                try:
                    ok = self.inner.send_nowait(e.to, e.frame)
                except (KeyError, ValueError):
                    ok = False
                if ok:
                    accepted += 1
                    self._stats.frames_sent += 1
                    self._stats.frame_bytes_sent += len(e.frame)
                else:
                    self._stats.sends_refused += 1
            elif isinstance(e, Deliver):
                if self.inbound.put_nowait(sender or e.origin, e.payload):
                    self._stats.delivered += 1
            elif isinstance(e, Schedule):
                now = self._now() if now is None else now
                self._schedule(now + max(0.0, e.delay_s), e.timer)
            else:
                log.debug("unknown broadcaster effect %r", type(e).__name__)
        return accepted

    def _schedule(self, deadline: float, timer: object) -> None:
        if len(self._timers) >= self.max_timers:
            self._stats.timers_dropped += 1
            return
        self._timer_seq += 1
        heapq.heappush(self._timers, (deadline, self._timer_seq, timer))
        scope = self._sleep_scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = deadline

    async def _timer_loop(self) -> None:
        while True:
            with trio.CancelScope(deadline=self._timers[0][0] if self._timers else math.inf) as scope:
                self._sleep_scope = scope
                await trio.sleep_forever()
            self._sleep_scope = None
            now = self._now()
            while self._timers and self._timers[0][0] <= now:
                _, _, timer = heapq.heappop(self._timers)
                self._execute(self.broadcaster.fire(timer, now), None)
            await trio.sleep(0)  # checkpoint: a burst of due timers does not starve the others

    async def _pump(self) -> None:
        async for peer, payload in self.inner.inbound:
            first = payload[0] if payload else -1
            if first in _FRAME_FIRST_BYTES:
                self._stats.frames_received += 1
                self._stats.frame_bytes_received += len(payload)
                self._execute(self.broadcaster.receive(peer, payload, self._now()), peer)
            elif is_latency_frame(payload):
                self._stats.latency_frames_received += 1
                reply = self.probe.receive(peer, payload, self._now())
                if reply is not None:
                    self._send_latency(peer, reply)
            else:
                self._stats.passed_through += 1
                self.inbound.put_nowait(peer, payload)

    # -- latency ----------------------------------------------------------------------------
    def _send_latency(self, peer: PeerId, frame: bytes) -> None:
        try:
            if self.inner.send_nowait(peer, frame):
                self._stats.latency_frames_sent += 1
        except (KeyError, ValueError):
            pass

    async def _ping_loop(self) -> None:
        """Ping every linked peer each ``ping_interval_s``, and one without an estimate yet (a new link) at the
        next tick of at most :data:`FIRST_PING_TICK_S`."""
        cfg = self.probe.config
        tick = min(cfg.ping_interval_s, FIRST_PING_TICK_S)
        last_round = float("-inf")
        while True:
            now = self._now()
            full = now - last_round >= cfg.ping_interval_s
            if self.pinging:
                if full:
                    last_round = now
                for peer in self.inner.connected_peers():
                    if full or self.probe.estimate(peer) is None:
                        frame = self.probe.ping(peer, now)  # None while one is outstanding
                        if frame is not None:
                            self._send_latency(peer, frame)
            await trio.sleep(tick)

    async def _row_loop(self) -> None:
        cfg = self.probe.config
        await trio.sleep(min(cfg.row_interval_s, 2 * cfg.ping_interval_s, 2.0))
        while True:
            if self.pinging and self.probe.estimates():
                frame = self.probe.row()
                for peer in self.inner.connected_peers():
                    self._send_latency(peer, frame)
            await trio.sleep(cfg.row_interval_s)

    def __repr__(self) -> str:
        return f"BroadcastTransport({self.inner!r})"



def _build_trees(matrix: LatencyMatrix, origins: tuple[str, ...], fanout: int, members_key: bytes,
                 members: tuple[str, ...] | None = None) -> None:
    """Fill ``matrix``'s cache with the trees of ``origins`` over ``members`` (default: the origins)."""
    for origin in origins:
        matrix.tree(origin, members if members is not None else origins, fanout, members_key)


def tree_transport(inner: Transport, public_key_of: Callable[[str], bytes | None], cache: VerifiedCache,
                   rejects: RejectStats | None = None, *, fanout: int = 3,
                   latency: LatencyConfig | None = None) -> BroadcastTransport:
    """What ``[p2p] broadcast = "tree"`` makes of a node's transport: a :class:`BroadcastTransport` validating
    with :func:`signed_validator` (the node's key lookup, cache and reject counters), ``fanout`` children a peer."""
    config = replace(BroadcastConfig(), fanout=fanout)
    config.validate()
    return BroadcastTransport(inner, signed_validator(public_key_of, cache, rejects), config=config, latency=latency)
