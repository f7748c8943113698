"""The ledger service's gossip: pulls, replies, received events and event creation (see the package docstring)."""

from __future__ import annotations

import logging
from typing import Any

import trio

from consensus.messages import Message, Signed, sign
from dag import (
    Event,
    InsertError,
    SyncError,
    ancestors_missing,
    encode_event,
    events_missing,
    fork_evidence_tx,
    known_vector,
    receive,
    sign_event,
)
from dag.event import MAX_TRANSACTIONS, check_transaction
from dag.messages import MAX_BATCH_BYTES, MAX_BATCH_EVENTS, MAX_WANTED, DagEvents, DagSync, DagWant
from multillmn.identity import PeerId
from multillmn.logs import fields
from peers.ledger._common import MAX_EVENT_PAYLOAD, _Segment
from peers.ledger._core import _LedgerCore
from peers.wire import encode_message

log = logging.getLogger("multillmn.ledger")


class LedgerService(_LedgerCore):
    """One peer's hashgraph, ledger and store, synced with the other validators over the transport."""

    # -- gossip -------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Pull from the next validator every sync interval until cancelled; closes the store on exit.

        One pull is in flight at a time: the next ``dag_sync`` goes out only once the
        previous one was answered (or :attr:`sync_timeout_s` passed), so a peer that falls
        behind is not sent the same events by several peers at once (each copy costs it a
        full decode and check). A full reply means the responder holds more: the next pull
        leaves at once instead of after an interval.
        """
        try:
            task_status.started()
            while True:
                self._wake = trio.Event()
                if not self._pull_again:
                    with trio.move_on_after(self.sync_interval_s):
                        await self._wake.wait()
                self._pull_again = False
                if not self._peers:
                    self._maybe_create(None)
                    continue
                now = trio.current_time()
                if self._awaiting is not None:
                    if now - self._awaiting_since < self.sync_timeout_s:
                        continue
                    self.sync_stats["timeouts"] += 1
                peer = self._pick_peer()
                self._awaiting, self._awaiting_since = peer, now
                self.sync_stats["pulls"] += 1
                self._send(peer, DagSync(sender=self.key.peer_id, vector=known_vector(self.hashgraph),
                                         epoch=self.current))
        finally:
            self.close()

    def _pick_peer(self) -> PeerId:
        """The next validator in round robin, skipping those whose link is down (unless all are)."""
        try:
            up = set(self.transport.connected_peers())
        except AttributeError:  # no transport (a store-only service)
            up = set()
        for _ in range(len(self._peers)):
            peer = self._peers[self._next_peer % len(self._peers)]
            self._next_peer += 1
            if not up or peer in up:
                return peer
        return peer

    def handle(self, peer: PeerId, signed: Signed[Any]) -> None:
        """A decoded, signature-checked ``dag_*`` message from ``peer``; bad contents are counted, never raised."""
        msg = signed.message
        try:
            if isinstance(msg, DagSync):  # any segment held; an empty reply for one not held
                hg = self.segment(msg.epoch)
                self._send_events(msg.sender, [] if hg is None else events_missing(hg, msg.vector), msg.epoch,
                                  limit=self.reply_bytes)
            elif isinstance(msg, DagWant):
                hg = self.segment(msg.epoch)
                if hg is not None:
                    self._send_events(msg.sender, ancestors_missing(hg, msg.wanted, msg.vector), msg.epoch)
            elif isinstance(msg, DagEvents):
                if msg.sender == self._awaiting:
                    self.sync_stats["replies"] += 1
                    self._awaiting = None
                    if sum(map(len, msg.events)) > self.reply_bytes // 2 or len(msg.events) >= MAX_BATCH_EVENTS:
                        self.sync_stats["full_replies"] += 1  # the responder holds more: ask again at once
                        self._pull_again = True
                        if self._wake is not None:
                            self._wake.set()
                self._receive(msg)
        except SyncError as exc:
            self.rejects.record("dag", str(exc), peer)

    def _send(self, peer: PeerId, message: Message) -> None:
        try:
            self.transport.send_nowait(peer, encode_message(sign(message, self.key)))
        except (KeyError, ValueError) as exc:
            log.warning("dag message not sent", extra=fields(peer=peer, error=str(exc)))

    def _send_events(self, peer: PeerId, events: list[Event], epoch: int, *, limit: int | None = None) -> None:
        """Send ``events`` in batches; with ``limit`` (a sync reply) only the first batch of at most ``limit``
        bytes, possibly empty: the puller asks again for the rest with its updated vector."""
        batch: list[bytes] = []
        size = 0
        cap = MAX_BATCH_BYTES if limit is None else limit
        for ev in events:
            if not self._sendable(ev):
                continue
            data = encode_event(ev)
            if len(data) > MAX_BATCH_BYTES:
                continue  # cannot travel; an honest creator never makes one (MAX_EVENT_PAYLOAD)
            if batch and (size + len(data) > cap or len(batch) == MAX_BATCH_EVENTS):
                if limit is not None:
                    break
                self._send_batch(peer, batch, epoch)
                batch, size = [], 0
            batch.append(data)
            size += len(data)
        if batch or limit is not None:
            self._send_batch(peer, batch, epoch)

    def _send_batch(self, peer: PeerId, batch: list[bytes], epoch: int) -> None:
        # Every event here passed the schema's checks once (on receipt, or its transactions on submit, or
        # in _sendable): building the message unvalidated saves checking each transaction again per send.
        self._send(peer, DagEvents.model_construct(sender=self.key.peer_id, events=tuple(batch), epoch=epoch))

    def _sendable(self, ev: Event) -> bool:
        """Whether ``ev``'s transactions pass :func:`dag.event.check_transaction` (checked once per event)."""
        ok = self._checked.get(ev.hash)
        if ok is None:
            reasons = [r for r in map(check_transaction, ev.transactions) if r is not None]
            ok = self._checked[ev.hash] = not reasons
            if reasons:  # only a store written before submit checked transactions can hold one
                log.error("event not gossiped: it holds a transaction every peer refuses",
                          extra=fields(event=repr(ev), reason=reasons[0]))
        return ok

    def _receive(self, msg: DagEvents) -> None:
        seg = self._segments.get(msg.epoch)
        if seg is None or seg.sealed:  # a sealed segment is complete for the ledger; another is not open
            if seg is None and msg.events:
                self.rejects.record("dag", f"events of epoch {msg.epoch}, a segment not open here (at epoch "
                                           f"{self.current})", msg.sender)
            return
        hg = seg.hashgraph
        got = receive(hg, msg.decoded())
        for ev, reason in got.rejected:
            self.rejects.record("dag-event", f"{ev!r}: {reason}", msg.sender)
        if got.inserted:
            self._stored(got.inserted)
        if got.ordered:
            self._ordered(seg, got.ordered)
        if got.missing and not seg.sealed:
            self._send(msg.sender, DagWant(sender=self.key.peer_id, wanted=tuple(got.missing[:MAX_WANTED]),
                                           vector=known_vector(hg), epoch=seg.epoch))
        for evidence in hg.take_evidence():
            self.submit(fork_evidence_tx(evidence), priority=True)
        if seg.epoch == self.current:
            self._maybe_create(hg.head(msg.sender))

    def _maybe_create(self, other: Event | None) -> None:
        """Create an event if there is something to order: pending transactions, or unordered ones.

        Priority transactions go first. Ordinary ones go while fewer than :attr:`max_in_flight`
        of this peer's transactions are in its events but not ordered yet: creation is paced
        by the ordering lag, so the DAG never holds more unordered work than consensus keeps
        up with, and the queue (bounded, refusing beyond) absorbs the rest.
        """
        if self.observer:
            return
        seg = self._segments[self.current]
        hg = seg.hashgraph
        me = self.key.peer_id
        head = hg.head(me)
        room = min(self.max_in_flight - self._in_flight, MAX_TRANSACTIONS)
        priority = [tx for tx, epoch in self._priority.items() if epoch == seg.epoch]
        if not priority and (room <= 0 or not self._pending):
            if not self._unordered_tx.get(seg.epoch):
                return
            alone = not self._peers  # a single validator orders by extending its own chain
            if head is not None and not alone and (other is None or hg.is_ancestor(other.hash, head.hash)):
                return  # nothing new to record: the event would not help the order along
        txs: list[bytes] = []
        size = 0
        for tx in priority:
            if txs and (size + len(tx) > MAX_EVENT_PAYLOAD or len(txs) == MAX_TRANSACTIONS):
                break
            txs.append(tx)
            size += len(tx)
        if room > 0:
            room += len(txs)
            for tx in self._pending:
                if len(txs) >= room or (txs and (size + len(tx) > MAX_EVENT_PAYLOAD or len(txs) == MAX_TRANSACTIONS)):
                    break
                txs.append(tx)
                size += len(tx)
        now = self._clock_ns()
        try:
            if head is None:
                ev = sign_event(self.key, seq=0, self_parent=None, other_parent=None, timestamp=now,
                                transactions=txs, epoch=seg.epoch)
            else:
                op = other.hash if other is not None and other.creator != me else None
                ev = sign_event(self.key, seq=head.seq + 1, self_parent=head.hash, other_parent=op,
                                timestamp=max(now, head.timestamp + 1), transactions=txs, epoch=seg.epoch)
            ordered = hg.insert(ev)
        except (InsertError, ValueError) as exc:  # a bug, not the network's fault: keep the transactions
            log.error("cannot create an event", extra=fields(error=str(exc)))
            return
        for tx in txs:
            if tx in self._priority:
                del self._priority[tx]
                self._priority_bytes -= len(tx)
            else:
                del self._pending[tx]
                self._pending_bytes -= len(tx)
        self.created += 1
        self._stored([ev])
        if ordered:
            self._ordered(seg, ordered)

    def _stored(self, events: list[Event]) -> None:
        """Persist newly inserted events (before they are gossiped and before their order rows)."""
        if self.store is not None:
            self.store.append_events(events)
        me = self.key.peer_id
        for ev in events:
            self._checked[ev.hash] = True  # received (the schema checked it) or created here (submit checked it)
            if ev.transactions:
                self._unordered_tx.setdefault(ev.epoch, set()).add(ev.hash)
                if ev.creator == me and ev.epoch == self.current:
                    self._own_unordered[ev.hash] = len(ev.transactions)
                    self._in_flight += len(ev.transactions)

    def _ordered(self, seg: _Segment, events: list[Event]) -> None:
        """Newly ordered events of ``seg``: stored, then applied if ``seg`` is the current segment."""
        if self.store is not None:
            self.store.append_order((e.hash for e in events), seg.epoch)
        unordered = self._unordered_tx.get(seg.epoch, set())
        for ev in events:
            unordered.discard(ev.hash)
            self._in_flight -= self._own_unordered.pop(ev.hash, 0)
        if seg.epoch == self.current:
            self._advance()
