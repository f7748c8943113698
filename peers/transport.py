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

Cancelling :meth:`Transport.run` closes every listener and socket.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import partial

import trio

from multillmn.identity import KeyPair, PeerId
from peers.secure import HandshakeError, SecureChannel, handshake
from peers.wire import RemoteProtocolError

__all__ = ["ACCEPT", "Address", "LinkCondition", "LinkShaper", "PeerStats", "TransportStats", "Transport"]

log = logging.getLogger("multillmn.transport")

Address = tuple[str, int]

ACCEPT = b"multillmn/v1/link-accepted"
"""The only frame a listener sends on an inbound link: right after accepting it."""

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
    dropped: int = 0  # send queue full
    lost: int = 0  # dropped by the LinkShaper
    inbound_dropped: int = 0  # inbound queue full
    reconnects: int = 0  # outbound link re-established after being up
    refused: int = 0  # dialled, but the remote could not prove this peer id
    protocol_errors: int = 0
    connected: bool = False  # outbound link up


@dataclass
class TransportStats:
    peers: dict[PeerId, PeerStats]
    refused_unknown: int  # inbound handshakes from peer ids not in ``peers``
    failed_handshakes: int  # other inbound handshake failures


@dataclass
class _Peer:
    address: Address | None
    queue_in: trio.MemorySendChannel[tuple[float, bytes]]
    queue_out: trio.MemoryReceiveChannel[tuple[float, bytes]]
    address_known: trio.Event = field(default_factory=trio.Event)
    stats: PeerStats = field(default_factory=PeerStats)
    inbound_scope: trio.CancelScope | None = None


class Transport:
    """Authenticated TCP links to a fixed set of peers (see the module docstring).

    ``peers`` maps peer id to address; an address of ``None`` (or one set later
    with :meth:`set_address`) defers dialing. Our own id in ``peers`` is ignored.
    """

    def __init__(
        self,
        key: KeyPair,
        listen: Address,
        peers: Mapping[PeerId, Address | None],
        *,
        max_frame: int = 2 * 1024 * 1024,
        send_queue: int = 1024,
        inbound_queue: int = 4096,
        backoff_initial: float = 0.2,
        backoff_max: float = 5.0,
        handshake_timeout: float = 10.0,
        shaper: LinkShaper | None = None,
    ) -> None:
        self.key = key
        self.listen = listen
        self.listen_port: int | None = None
        self.max_frame = max_frame
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.handshake_timeout = handshake_timeout
        self.shaper = shaper or LinkShaper()
        self._rng = random.Random()
        self._peers: dict[PeerId, _Peer] = {}
        for pid, addr in peers.items():
            if pid == key.peer_id:
                continue
            send, recv = trio.open_memory_channel[tuple[float, bytes]](send_queue)
            self._peers[pid] = _Peer(addr, send, recv)
            if addr is not None:
                self._peers[pid].address_known.set()
        self._inbound_send, self.inbound = trio.open_memory_channel[tuple[PeerId, bytes]](inbound_queue)
        self._refused_unknown = 0
        self._failed_handshakes = 0

    # --- public API ------------------------------------------------------------

    @property
    def peer_id(self) -> PeerId:
        return self.key.peer_id

    def set_address(self, peer: PeerId, address: Address) -> None:
        """Set or change where ``peer`` is dialled (used from the next dial on)."""
        p = self._peers[peer]
        p.address = address
        p.address_known.set()

    def send_nowait(self, peer: PeerId, payload: bytes) -> bool:
        """Queue ``payload`` for ``peer``; False (and counted) if its queue is full.

        Raises ``KeyError`` for a peer not in ``peers`` and ``ValueError`` for a
        payload over ``max_frame``. A message the shaper loses counts as accepted.
        """
        p = self._peers[peer]
        if len(payload) > self.max_frame:
            raise ValueError(f"payload of {len(payload)} bytes exceeds max_frame {self.max_frame}")
        delay = self.shaper.plan(peer)
        if delay is None:
            p.stats.lost += 1
            return True
        release = trio.current_time() + delay if delay > 0 else 0.0
        try:
            p.queue_in.send_nowait((release, payload))
        except trio.WouldBlock:
            p.stats.dropped += 1
            return False
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
        )

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
                for pid in self._peers:
                    nursery.start_soon(self._dial_loop, pid)
                task_status.started(self.listen_port)
        finally:
            for listener in listeners:
                await trio.aclose_forcefully(listener)
            for p in self._peers.values():
                p.stats.connected = False

    # --- outbound --------------------------------------------------------------

    def _jitter(self, backoff: float) -> float:
        return min(self.backoff_max, backoff * self._rng.uniform(0.5, 1.5))

    async def _dial_loop(self, pid: PeerId) -> None:
        p = self._peers[pid]
        backoff = self.backoff_initial
        was_up = False
        while True:
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
            with trio.fail_after(self.handshake_timeout):
                if await channel.receive() != ACCEPT:
                    raise HandshakeError("expected the accept frame")
            accepted = True
            return channel
        except (HandshakeError, trio.EndOfChannel, trio.TooSlowError) as exc:
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

    async def _serve_inbound(self, stream: trio.SocketStream) -> None:
        try:
            channel = await handshake(
                stream,
                self.key,
                None,
                timeout=self.handshake_timeout,
                max_frame=self.max_frame,
                allowed=self._peers,
            )
        except HandshakeError as exc:
            if exc.peer_id is not None:
                self._refused_unknown += 1
            else:
                self._failed_handshakes += 1
            log.warning("refused inbound link: %s", exc)
            return
        except _LINK_ERRORS:
            self._failed_handshakes += 1
            return
        pid = channel.remote_peer_id
        p = self._peers[pid]
        if p.inbound_scope is not None:
            p.inbound_scope.cancel()
        with trio.CancelScope() as scope:
            p.inbound_scope = scope
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

    async def _receive_loop(self, pid: PeerId, p: _Peer, channel: SecureChannel) -> None:
        while True:
            payload = await channel.receive()
            p.stats.received += 1
            try:
                self._inbound_send.send_nowait((pid, payload))
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                p.stats.inbound_dropped += 1

    def __repr__(self) -> str:
        return f"Transport({self.peer_id[:8]}, port={self.listen_port}, peers={len(self._peers)})"
