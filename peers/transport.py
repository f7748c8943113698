"""Trio TCP transport: one authenticated, encrypted outbound link per known peer.

Every pair of peers is joined by two unidirectional TCP links: each side dials
every other known peer and sends only on that *outbound* link, and receives
only on the *inbound* links that others dialled to it. This is simple and
symmetric: no tie-breaking between simultaneous dials, and each side alone
owns the reconnect loop for the direction it sends in.

- Dialing runs the :mod:`peers.secure` handshake with ``expected_peer`` set to
  the peer id we meant to reach, so an address held by anyone else is refused.
  A failed or lost link is redialled with exponential backoff plus jitter.
- Inbound handshakes accept only peer ids in ``peers``; others are refused and
  counted. An accepted inbound link gets one frame, :data:`ACCEPT`, and nothing
  else ever; the dialer counts its link as up only once it has that frame, so
  a dialer the remote refuses never believes it is connected. A new inbound
  link from a peer replaces its older one.
- Each peer has a bounded send queue. :meth:`Transport.send_nowait` never
  blocks: a full queue drops the message and counts it. Messages queued while
  a link is down go out once it is back; a message being sent when a link
  breaks is lost (the protocol above must tolerate loss).
- Received payloads arrive as ``(peer_id, payload)`` on :attr:`Transport.inbound`
  (bounded; when full, the payload is dropped and counted).
- A :class:`LinkShaper` can add per-destination delay and loss on the send path.
- :meth:`Transport.disconnect` cuts every link and refuses new ones (what is
  sent meanwhile is lost) until :meth:`Transport.reconnect`: a testnet's
  ``disconnect`` perturbation (the daemon's SIGUSR1 / SIGUSR2).
- The known peers change with the validator set: :meth:`Transport.add_peer`
  starts dialling a new one, :meth:`Transport.remove_peer` closes a departed
  one's links and refuses it from then on (:meth:`Transport.set_peers` does
  both); at most :data:`MAX_PEERS`.

Bounds
------
Everything a remote can make the transport hold has a stated bound, enforced
where it is inserted, counted when it bites (:meth:`Transport.statistics`,
:meth:`Transport.status`) and tested by a flood from one hostile remote
(``tests/test_transport_bounds.py``). Constructor parameters override the
defaults.

Before authentication (anyone who can reach the listening port):

- :data:`MAX_HANDSHAKES` (``max_handshakes``, 64): inbound connections whose
  handshake is in flight. A connection accepted beyond it is closed at once
  and counted in ``refused_connections``.
- :data:`HANDSHAKE_TIMEOUT` (``handshake_timeout``, 5 s): deadline from accept
  to authenticated; a connection still in its handshake then (silent,
  dripping) is closed and counted in ``handshake_timeouts``. The same deadline
  applies to each dial (connect, handshake, accept frame).
- :data:`peers.secure.PREAUTH_MAX_BYTES` (308 bytes): what one connection can
  make us buffer before it is authenticated. The handshake reads exactly the
  bytes it needs; an identity frame header over
  :data:`peers.secure.AUTH_FRAME_MAX` (272) is refused before its body is
  read; a garbage key or identity frame closes the connection at once
  (``failed_handshakes``). So hostile connections cost at most
  ``MAX_HANDSHAKES`` times a few KiB (the task, the socket and these bytes)
  and each lives at most ``HANDSHAKE_TIMEOUT``.

After authentication (a validator in ``peers``):

- :data:`MAX_INBOUND_LINKS_PER_PEER` (1): a new inbound link from a peer
  closes its older one (``inbound_replaced``); peer ids not in ``peers`` are
  refused (``refused_unknown``).
- :data:`MAX_FRAME` (``max_frame``, 2 MiB, ``[p2p] max_frame_bytes``):
  largest frame on a link; a larger header is refused before its body is
  buffered, so one link buffers at most a frame, its 16-byte tag and one
  64 KiB read.
- :data:`OUTBOUND_RECEIVE_MAX` (``len(ACCEPT)``): largest frame accepted on an
  outbound link, where the remote only ever sends :data:`ACCEPT`.
- :data:`INBOUND_QUEUE` (``inbound_queue``, 4096 messages in all),
  :data:`INBOUND_PEER_QUEUE` (``inbound_peer_queue``, 1024 messages per peer)
  and :data:`INBOUND_PEER_BYTES` (``inbound_peer_bytes``, 64 MiB per peer):
  received payloads not yet taken from :attr:`Transport.inbound`; over any of
  them the payload is dropped (``inbound_dropped``), so one peer can neither
  fill the memory nor crowd the others out of the queue.
- :data:`SEND_QUEUE` (``send_queue``, 1024 messages per peer,
  ``[p2p] send_queue``) and :data:`SEND_QUEUE_BYTES` (``send_queue_bytes``,
  64 MiB per peer): our messages waiting for a peer's link, which a peer that
  stops reading (and keeps asking) could otherwise grow; over either the
  message is dropped (``dropped``).

Refused inbound connections are logged at most once per
:data:`REFUSAL_LOG_INTERVAL` (with the number not logged), so a flood does not
flood the log either.

Cancelling :meth:`Transport.run` closes every listener and socket.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any

import trio

from multillmn.identity import KeyPair, PeerId
from peers.secure import AUTH_FRAME_MAX, PREAUTH_MAX_BYTES, HandshakeError, HandshakeTimeout, SecureChannel, handshake
from peers.wire import RemoteProtocolError

__all__ = [
    "ACCEPT",
    "HANDSHAKE_TIMEOUT",
    "MAX_PEERS",
    "INBOUND_PEER_BYTES",
    "INBOUND_PEER_QUEUE",
    "INBOUND_QUEUE",
    "MAX_FRAME",
    "MAX_HANDSHAKES",
    "MAX_INBOUND_LINKS_PER_PEER",
    "OUTBOUND_RECEIVE_MAX",
    "REFUSAL_LOG_INTERVAL",
    "SEND_QUEUE",
    "SEND_QUEUE_BYTES",
    "Address",
    "InboundChannel",
    "LinkCondition",
    "LinkShaper",
    "PeerStats",
    "TransportStats",
    "Transport",
]

log = logging.getLogger("multillmn.transport")

Address = tuple[str, int]

ACCEPT = b"multillmn/v1/link-accepted"
"""The only frame a listener sends on an inbound link: right after accepting it."""

MAX_PEERS = 256
"""Peers a transport knows (members, scheduled members, joiners); :meth:`Transport.add_peer` refuses more."""
MAX_HANDSHAKES = 64
"""Inbound connections whose handshake may be in flight at once; more are closed at once and counted."""

HANDSHAKE_TIMEOUT = 5.0
"""Seconds from accept (or dial) to an authenticated link; a connection still handshaking then is closed."""

MAX_INBOUND_LINKS_PER_PEER = 1
"""Authenticated inbound links per peer: a new one closes the older (the constant documents the rule)."""

MAX_FRAME = 2 * 1024 * 1024
"""Largest frame payload on an authenticated link (``[p2p] max_frame_bytes``)."""

OUTBOUND_RECEIVE_MAX = len(ACCEPT)
"""Largest frame accepted on an outbound link: the remote only ever sends :data:`ACCEPT` there."""

SEND_QUEUE = 1024
"""Messages queued per peer for its outbound link (``[p2p] send_queue``); more are dropped and counted."""

SEND_QUEUE_BYTES = 64 * 1024 * 1024
"""Payload bytes queued per peer for its outbound link; more are dropped and counted."""

INBOUND_QUEUE = 4096
"""Received messages not yet taken from :attr:`Transport.inbound`, all peers together."""

INBOUND_PEER_QUEUE = 1024
"""Received messages from one peer not yet taken from :attr:`Transport.inbound`."""

INBOUND_PEER_BYTES = 64 * 1024 * 1024
"""Received payload bytes from one peer not yet taken from :attr:`Transport.inbound`."""

REFUSAL_LOG_INTERVAL = 10.0
"""Seconds between two log lines about refused inbound connections (a flood must not flood the log)."""

_LINK_ERRORS = (
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.EndOfChannel,
    RemoteProtocolError,
)


@dataclass(frozen=True)
class LinkCondition:
    """Network condition towards one destination: added one-way delay and loss probability."""

    delay_s: float = 0.0
    loss: float = 0.0

    def __post_init__(self) -> None:
        if not self.delay_s >= 0:
            raise ValueError("delay_s must be >= 0")
        if not 0.0 <= self.loss <= 1.0:
            raise ValueError("loss must be within [0, 1]")


class LinkShaper:
    """Per-destination :class:`LinkCondition` applied to outgoing messages (default: none)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._conditions: dict[PeerId, LinkCondition] = {}
        self.default = LinkCondition()

    def set(self, peer: PeerId, *, delay_s: float = 0.0, loss: float = 0.0) -> None:
        self._conditions[peer] = LinkCondition(delay_s, loss)

    def clear(self, peer: PeerId | None = None) -> None:
        """Forget one peer's condition, or every one (``None``)."""
        if peer is None:
            self._conditions.clear()
        else:
            self._conditions.pop(peer, None)

    def condition(self, peer: PeerId) -> LinkCondition:
        return self._conditions.get(peer, self.default)

    def plan(self, peer: PeerId) -> float | None:
        """For one message to ``peer``: ``None`` to lose it, else the delay to add (seconds)."""
        cond = self.condition(peer)
        if cond.loss > 0 and self._rng.random() < cond.loss:
            return None
        return cond.delay_s


@dataclass
class PeerStats:
    """Counters for one peer."""

    sent: int = 0
    received: int = 0
    dropped: int = 0  # send queue full (messages or bytes)
    lost: int = 0  # dropped by the LinkShaper
    inbound_dropped: int = 0  # inbound queue full (all peers' messages, this peer's messages or bytes)
    reconnects: int = 0  # outbound link re-established after being up
    refused: int = 0  # dialled, but the remote could not prove this peer id
    protocol_errors: int = 0
    connected: bool = False  # outbound link up
    inbound_connected: bool = False  # an authenticated inbound link from this peer is open
    inbound_replaced: int = 0  # inbound links closed because the peer opened a newer one
    queued: int = 0  # messages waiting in the send queue
    queued_bytes: int = 0  # their payload bytes
    inbound_queued: int = 0  # this peer's messages waiting in the inbound queue
    inbound_queued_bytes: int = 0  # their payload bytes


@dataclass
class TransportStats:
    peers: dict[PeerId, PeerStats]
    refused_unknown: int  # inbound handshakes from peer ids not in ``peers``
    failed_handshakes: int  # other inbound handshakes that failed (garbage, oversized, closed), not timeouts
    refused_connections: int = 0  # inbound connections closed at once: max_handshakes were in flight
    handshake_timeouts: int = 0  # inbound handshakes closed at the deadline
    handshakes_in_flight: int = 0  # inbound connections not yet authenticated, now
    inbound_links: int = 0  # authenticated inbound links open, now


@dataclass
class _Peer:
    address: Address | None
    queue_in: trio.MemorySendChannel[tuple[float, bytes]]
    queue_out: trio.MemoryReceiveChannel[tuple[float, bytes]]
    address_known: trio.Event = field(default_factory=trio.Event)
    stats: PeerStats = field(default_factory=PeerStats)
    inbound_scope: trio.CancelScope | None = None
    dial_scope: trio.CancelScope | None = None


class InboundChannel(trio.abc.ReceiveChannel[tuple[PeerId, bytes]]):
    """:attr:`Transport.inbound`: the received ``(peer_id, payload)`` pairs, oldest first.

    A memory channel's receiving end that also frees each payload's share of
    its sender's inbound quota when it is taken.
    """

    def __init__(self, channel: trio.MemoryReceiveChannel[tuple[PeerId, bytes]], peers: Mapping[PeerId, _Peer]) -> None:
        self._channel = channel
        self._peers = peers

    def _taken(self, item: tuple[PeerId, bytes]) -> tuple[PeerId, bytes]:
        p = self._peers.get(item[0])  # None: removed since (its quota went with it)
        if p is not None:
            p.stats.inbound_queued -= 1
            p.stats.inbound_queued_bytes -= len(item[1])
        return item

    async def receive(self) -> tuple[PeerId, bytes]:
        return self._taken(await self._channel.receive())

    def receive_nowait(self) -> tuple[PeerId, bytes]:
        return self._taken(self._channel.receive_nowait())

    def statistics(self) -> trio.MemoryChannelStatistics:
        return self._channel.statistics()

    async def aclose(self) -> None:
        await self._channel.aclose()


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


class Transport:
    """Authenticated TCP links to a fixed set of peers (see the module docstring).

    ``peers`` maps peer id to address; an address of ``None`` (or one set later
    with :meth:`set_address`) defers dialing. Our own id in ``peers`` is ignored.
    Every bound has a keyword here, defaulting to the module constant of the
    same name.
    """

    def __init__(
        self,
        key: KeyPair,
        listen: Address,
        peers: Mapping[PeerId, Address | None],
        *,
        max_frame: int = MAX_FRAME,
        send_queue: int = SEND_QUEUE,
        send_queue_bytes: int = SEND_QUEUE_BYTES,
        inbound_queue: int = INBOUND_QUEUE,
        inbound_peer_queue: int = INBOUND_PEER_QUEUE,
        inbound_peer_bytes: int = INBOUND_PEER_BYTES,
        max_handshakes: int = MAX_HANDSHAKES,
        backoff_initial: float = 0.2,
        backoff_max: float = 5.0,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        shaper: LinkShaper | None = None,
    ) -> None:
        for name, value in (
            ("max_frame", max_frame), ("send_queue", send_queue), ("send_queue_bytes", send_queue_bytes),
            ("inbound_queue", inbound_queue), ("inbound_peer_queue", inbound_peer_queue),
            ("inbound_peer_bytes", inbound_peer_bytes), ("max_handshakes", max_handshakes),
            ("backoff_initial", backoff_initial), ("backoff_max", backoff_max),
            ("handshake_timeout", handshake_timeout),
        ):
            _positive(name, value)
        self.key = key
        self.listen = listen
        self.listen_port: int | None = None
        self.max_frame = max_frame
        self.send_queue = send_queue
        self.send_queue_bytes = send_queue_bytes
        self.inbound_queue = inbound_queue
        self.inbound_peer_queue = inbound_peer_queue
        self.inbound_peer_bytes = inbound_peer_bytes
        self.max_handshakes = max_handshakes
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.handshake_timeout = handshake_timeout
        self.shaper = shaper or LinkShaper()
        self._rng = random.Random()
        self._peers: dict[PeerId, _Peer] = {}
        self._nursery: trio.Nursery | None = None
        for pid, addr in peers.items():
            self.add_peer(pid, addr)
        self._inbound_send, inbound = trio.open_memory_channel[tuple[PeerId, bytes]](inbound_queue)
        self.inbound = InboundChannel(inbound, self._peers)
        self._refused_unknown = 0
        self._failed_handshakes = 0
        self._refused_connections = 0
        self._handshake_timeouts = 0
        self._handshakes_in_flight = 0
        self._refusal_log_quiet_until = float("-inf")
        self._refusals_not_logged = 0
        self.disconnected = False  # see disconnect()

    # --- public API ------------------------------------------------------------

    @property
    def peer_id(self) -> PeerId:
        return self.key.peer_id

    def set_address(self, peer: PeerId, address: Address) -> None:
        """Set or change where ``peer`` is dialled (used from the next dial on)."""
        p = self._peers[peer]
        p.address = address
        p.address_known.set()

    def add_peer(self, peer: PeerId, address: Address | None) -> None:
        """Know ``peer`` from now on (accept its inbound link, dial it once ``address`` is known); a known
        peer only gets the new address. At most :data:`MAX_PEERS` peers; our own id is ignored."""
        if peer == self.key.peer_id:
            return
        if peer in self._peers:
            if address is not None and address != self._peers[peer].address:
                self.set_address(peer, address)
            return
        if len(self._peers) >= MAX_PEERS:
            raise ValueError(f"a transport knows at most {MAX_PEERS} peers")
        send, recv = trio.open_memory_channel[tuple[float, bytes]](self.send_queue)
        p = self._peers[peer] = _Peer(address, send, recv)
        if address is not None:
            p.address_known.set()
        if self._nursery is not None:
            self._nursery.start_soon(self._dial_loop, peer)

    def remove_peer(self, peer: PeerId) -> None:
        """Forget ``peer``: close its links, drop its queue, refuse its inbound handshakes from now on."""
        p = self._peers.pop(peer, None)
        if p is None:
            return
        for scope in (p.dial_scope, p.inbound_scope):
            if scope is not None:
                scope.cancel()
        p.stats.connected = p.stats.inbound_connected = False

    def set_peers(self, peers: Mapping[PeerId, Address | None]) -> None:
        """Make the known peers exactly ``peers`` (our own id aside): add the new ones, remove the others;
        a ``None`` address keeps the one already known."""
        for pid in [q for q in self._peers if q not in peers]:
            self.remove_peer(pid)
        for pid, address in peers.items():
            self.add_peer(pid, address)

    def disconnect(self) -> None:
        """Cut every link (both directions) and refuse new ones until :meth:`reconnect`; messages sent
        meanwhile are lost (counted in ``lost``), as on a pulled cable. For testnet perturbations."""
        self.disconnected = True
        for p in self._peers.values():
            for scope in (p.dial_scope, p.inbound_scope):
                if scope is not None:
                    scope.cancel()
        log.warning("disconnected: every link cut until reconnect")

    def reconnect(self) -> None:
        """Undo :meth:`disconnect`: accept inbound links again and dial every peer."""
        if not self.disconnected:
            return
        self.disconnected = False
        if self._nursery is not None:
            for pid in self._peers:
                self._nursery.start_soon(self._dial_loop, pid)
        log.warning("reconnected: dialling every peer again")

    def known_peers(self) -> list[PeerId]:
        return sorted(self._peers)

    def send_nowait(self, peer: PeerId, payload: bytes) -> bool:
        """Queue ``payload`` for ``peer``; False (and counted) if its queue is full.

        Full means :data:`SEND_QUEUE` messages or :data:`SEND_QUEUE_BYTES` bytes
        (or the constructor's values). Raises ``KeyError`` for a peer not in
        ``peers`` and ``ValueError`` for a payload over ``max_frame``. A message
        the shaper loses counts as accepted.
        """
        p = self._peers[peer]
        if len(payload) > self.max_frame:
            raise ValueError(f"payload of {len(payload)} bytes exceeds max_frame {self.max_frame}")
        delay = None if self.disconnected else self.shaper.plan(peer)
        if delay is None:
            p.stats.lost += 1
            return True
        if p.stats.queued_bytes + len(payload) > self.send_queue_bytes:
            p.stats.dropped += 1
            return False
        release = trio.current_time() + delay if delay > 0 else 0.0
        try:
            p.queue_in.send_nowait((release, payload))
        except trio.WouldBlock:
            p.stats.dropped += 1
            return False
        p.stats.queued += 1
        p.stats.queued_bytes += len(payload)
        return True

    def broadcast_nowait(self, payload: bytes) -> int:
        """Queue ``payload`` for every peer; returns how many accepted it."""
        return sum(self.send_nowait(pid, payload) for pid in self._peers)

    def connected_peers(self) -> list[PeerId]:
        """Peers whose outbound link is up."""
        return sorted(pid for pid, p in self._peers.items() if p.stats.connected)

    def statistics(self) -> TransportStats:
        """A copy of the counters."""
        return TransportStats(
            peers={pid: replace(p.stats) for pid, p in self._peers.items()},
            refused_unknown=self._refused_unknown,
            failed_handshakes=self._failed_handshakes,
            refused_connections=self._refused_connections,
            handshake_timeouts=self._handshake_timeouts,
            handshakes_in_flight=self._handshakes_in_flight,
            inbound_links=sum(p.stats.inbound_connected for p in self._peers.values()),
        )

    def limits(self) -> dict[str, int | float]:
        """The bounds in force (see the module docstring), by name."""
        return {
            "max_handshakes": self.max_handshakes,
            "handshake_timeout_s": self.handshake_timeout,
            "preauth_max_bytes": PREAUTH_MAX_BYTES,
            "auth_frame_max": AUTH_FRAME_MAX,
            "max_inbound_links_per_peer": MAX_INBOUND_LINKS_PER_PEER,
            "max_frame": self.max_frame,
            "send_queue": self.send_queue,
            "send_queue_bytes": self.send_queue_bytes,
            "inbound_queue": self.inbound_queue,
            "inbound_peer_queue": self.inbound_peer_queue,
            "inbound_peer_bytes": self.inbound_peer_bytes,
        }

    def status(self) -> dict[str, Any]:
        """JSON-ready counters and limits, for ``GET /v1/status``."""
        stats = self.statistics()
        out: dict[str, Any] = {k: v for k, v in asdict(stats).items() if k != "peers"}
        out["peers"] = {pid: asdict(ps) for pid, ps in stats.peers.items()}
        out["limits"] = self.limits()
        out["disconnected"] = self.disconnected
        return out

    async def run(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and keep the outbound links up until cancelled; ``started`` gets the bound port."""
        host, port = self.listen
        listeners = await trio.open_tcp_listeners(port, host=host or None)
        try:
            self.listen_port = int(listeners[0].socket.getsockname()[1])
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    partial(trio.serve_listeners, self._serve_inbound, listeners, handler_nursery=nursery)
                )
                self._nursery = nursery
                for pid in self._peers:
                    nursery.start_soon(self._dial_loop, pid)
                task_status.started(self.listen_port)
        finally:
            self._nursery = None
            for listener in listeners:
                await trio.aclose_forcefully(listener)
            for p in self._peers.values():
                p.stats.connected = False

    # --- outbound --------------------------------------------------------------

    def _jitter(self, backoff: float) -> float:
        return min(self.backoff_max, backoff * self._rng.uniform(0.5, 1.5))

    async def _dial_loop(self, pid: PeerId) -> None:
        p = self._peers.get(pid)
        if p is None:
            return
        with trio.CancelScope() as p.dial_scope:
            await self._keep_dialling(pid, p)

    async def _keep_dialling(self, pid: PeerId, p: _Peer) -> None:
        backoff = self.backoff_initial
        was_up = False
        while not self.disconnected:  # reconnect() starts the loop again
            await p.address_known.wait()
            assert p.address is not None
            channel = await self._dial(pid, p.address)
            if channel is None:
                await trio.sleep(self._jitter(backoff))
                backoff = min(self.backoff_max, backoff * 2)
                continue
            if was_up:
                p.stats.reconnects += 1
            was_up = True
            backoff = self.backoff_initial
            log.debug("link to %s up", pid)
            p.stats.connected = True
            try:
                await self._run_outbound(p, channel)
            finally:
                p.stats.connected = False
            log.debug("link to %s down", pid)
            await trio.sleep(self._jitter(backoff))

    async def _dial(self, pid: PeerId, address: Address) -> SecureChannel | None:
        try:
            with trio.fail_after(self.handshake_timeout):
                stream = await trio.open_tcp_stream(*address)
        except (OSError, trio.TooSlowError):
            return None
        channel: SecureChannel | None = None
        accepted = False
        try:
            channel = await handshake(
                stream, self.key, pid, timeout=self.handshake_timeout, max_frame=self.max_frame
            )
            channel.max_receive = min(OUTBOUND_RECEIVE_MAX, self.max_frame)
            with trio.fail_after(self.handshake_timeout):
                if await channel.receive() != ACCEPT:
                    raise HandshakeError("expected the accept frame")
            accepted = True
            return channel
        except (HandshakeError, trio.EndOfChannel, trio.TooSlowError) as exc:
            if pid in self._peers:
                self._peers[pid].stats.refused += 1
            log.warning("link to %s at %s:%s refused: %s", pid, *address, exc or type(exc).__name__)
        except _LINK_ERRORS:
            pass
        finally:
            if channel is not None and not accepted:
                await trio.aclose_forcefully(channel.stream)
        return None

    async def _run_outbound(self, p: _Peer, channel: SecureChannel) -> None:
        async with channel, trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_outbound, p, channel, nursery.cancel_scope)
            nursery.start_soon(self._pump, p, channel, nursery.cancel_scope)

    async def _pump(self, p: _Peer, channel: SecureChannel, scope: trio.CancelScope) -> None:
        try:
            while True:
                release, payload = await p.queue_out.receive()
                p.stats.queued -= 1
                p.stats.queued_bytes -= len(payload)
                if release:
                    await trio.sleep_until(release)
                await channel.send(payload)
                p.stats.sent += 1
        except _LINK_ERRORS:
            pass
        finally:
            scope.cancel()

    async def _watch_outbound(self, p: _Peer, channel: SecureChannel, scope: trio.CancelScope) -> None:
        """Notice a closed outbound link at once; the remote must never send on it."""
        try:
            await channel.receive()
            p.stats.protocol_errors += 1
        except RemoteProtocolError:
            p.stats.protocol_errors += 1
        except _LINK_ERRORS:
            pass
        finally:
            scope.cancel()

    # --- inbound ---------------------------------------------------------------

    def _log_refusal(self, reason: str) -> None:
        """Log a refused inbound connection, at most once per :data:`REFUSAL_LOG_INTERVAL`."""
        now = trio.current_time()
        if now < self._refusal_log_quiet_until:
            self._refusals_not_logged += 1
            return
        more = f" ({self._refusals_not_logged} more not logged)" if self._refusals_not_logged else ""
        log.warning("refused inbound link: %s%s", reason, more)
        self._refusals_not_logged = 0
        self._refusal_log_quiet_until = now + REFUSAL_LOG_INTERVAL

    async def _serve_inbound(self, stream: trio.SocketStream) -> None:
        if self.disconnected:
            await trio.aclose_forcefully(stream)
            return
        if self._handshakes_in_flight >= self.max_handshakes:
            self._refused_connections += 1
            self._log_refusal(f"{self._handshakes_in_flight} handshakes in flight")
            await trio.aclose_forcefully(stream)
            return
        self._handshakes_in_flight += 1
        try:
            channel = await handshake(
                stream,
                self.key,
                None,
                timeout=self.handshake_timeout,
                max_frame=self.max_frame,
                allowed=self._peers,
            )
        except HandshakeTimeout as exc:
            self._handshake_timeouts += 1
            log.debug("closed inbound connection: %s", exc)
            return
        except HandshakeError as exc:
            if exc.peer_id is not None:
                self._refused_unknown += 1
            else:
                self._failed_handshakes += 1
            self._log_refusal(str(exc))
            return
        except _LINK_ERRORS:
            self._failed_handshakes += 1
            return
        finally:
            self._handshakes_in_flight -= 1
        pid = channel.remote_peer_id
        p = self._peers.get(pid)
        if p is None or self.disconnected:  # removed (or cut off) during its handshake
            self._refused_unknown += p is None
            await trio.aclose_forcefully(channel.stream)
            return
        if p.inbound_scope is not None:  # MAX_INBOUND_LINKS_PER_PEER
            p.inbound_scope.cancel()
            p.stats.inbound_replaced += 1
        with trio.CancelScope() as scope:
            p.inbound_scope = scope
            p.stats.inbound_connected = True
            try:
                async with channel:
                    await channel.send(ACCEPT)
                    await self._receive_loop(pid, p, channel)
            except RemoteProtocolError as exc:
                p.stats.protocol_errors += 1
                log.warning("closed inbound link from %s: %s", pid, exc)
            except _LINK_ERRORS:
                pass
            finally:
                if p.inbound_scope is scope:
                    p.inbound_scope = None
                    p.stats.inbound_connected = False

    async def _receive_loop(self, pid: PeerId, p: _Peer, channel: SecureChannel) -> None:
        stats = p.stats
        while True:
            payload = await channel.receive()
            stats.received += 1
            if (
                stats.inbound_queued >= self.inbound_peer_queue
                or stats.inbound_queued_bytes + len(payload) > self.inbound_peer_bytes
            ):
                stats.inbound_dropped += 1
                continue
            try:
                self._inbound_send.send_nowait((pid, payload))
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                stats.inbound_dropped += 1
                continue
            stats.inbound_queued += 1
            stats.inbound_queued_bytes += len(payload)

    def __repr__(self) -> str:
        return f"Transport({self.peer_id[:8]}, port={self.listen_port}, peers={len(self._peers)})"
