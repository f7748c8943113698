"""The hashgraph ledger at the runner's edge: storage, gossip about gossip, certificates in, catch-up out.

:class:`LedgerService` owns one peer's ledger *segments*, one
:class:`dag.Hashgraph` per epoch, its :class:`dag.Ledger` (certificates
verified against the ledger's own chain) and its :class:`dag.Store`
(SQLite). The ``dag/`` package stays pure; this module does the I/O.

Segments (ADR 0017). Segment ``e`` is a ``Hashgraph(epoch=e)`` run by the
validator set in force at epoch ``e``'s first height (the genesis set for
``e = 0``), with that height's weights. The ledger state machine applies
segment ``e``'s consensus order, event by event; the first ordered event
after which the ledger is certified through the epoch's last height
(``Ledger.certified_through() >= epoch_start(e + 1) - 1``) *seals* the
segment: what segment ``e`` orders after it is never applied, and the
ledger goes on with segment ``e + 1``, whose set the ledger's own chain has
just computed (``Ledger.epoch_sets``). The rule reads ordered data only, so
every peer seals at the same event. A static-weight network has no epochs:
segment 0 is never sealed.

* The *current* segment is the lowest unsealed one: a peer pulls it,
  creates events only in it and only if a member of its set (else it
  observes), and routes certificates to the segment of their height (a
  certificate of a later epoch waits in the priority lane).
* At most :data:`MAX_OPEN_SEGMENTS` segments are unsealed: the current one
  and the next, which the node may open early
  (:meth:`LedgerService.set_epoch_validators`, from its chain) so that the
  next epoch's events that faster peers create are kept; events of any other
  epoch are refused. Sealed segments accept no event and answer pulls.
* On sealing, this peer's own transactions the segment did not apply (in
  events ordered after the seal or not ordered) are queued again for the
  next segment.

The rest is as with one hashgraph:

* every ``sync_interval`` it sends its known vector (``dag_sync``) to the next
  validator (round robin); the receiver answers with the events it is missing
  (``dag_events``, chunked, possibly empty); parents a batch lacked are asked
  for with ``dag_want``;
* after a ``dag_events`` reply it creates an event (other-parent: the
  sender's latest) carrying its pending transactions, but only when it has
  pending transactions or the DAG still holds unordered ones, so an idle
  network goes quiet (syncs continue, events do not);
* new events are appended to the store before they are gossiped and before
  their order rows; newly ordered events are applied to the ledger, and a
  snapshot is saved every :data:`SNAPSHOT_EVERY` ordered events;
* each newly ordered certificate is reported to the node
  (``on_certificate``), which fast-forwards a core that is behind.

Everything runs in the trio thread (the store is opened there); the
messages reach :meth:`handle` already decoded and signature-checked by
``peers/wire.py``.
"""

from __future__ import annotations

import base64
import enum
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from consensus.chain import Chain
from consensus.evidence import Evidence, check_evidence
from consensus.messages import Message, Signed, Value, VerifiedCache, decode_value, sign
from consensus.validators import ValidatorSet
from dag import (
    Event,
    Hashgraph,
    InsertError,
    Ledger,
    LedgerEntry,
    Network,
    Store,
    StoreError,
    SyncError,
    ancestors_missing,
    certificate_tx,
    encode_event,
    events_missing,
    evidence_tx,
    fork_evidence_tx,
    known_vector,
    receive,
    replay,
    sign_event,
)
from dag.event import MAX_TRANSACTIONS, check_transaction
from dag.messages import MAX_BATCH_BYTES, MAX_BATCH_EVENTS, MAX_WANTED, DagEvents, DagSync, DagWant
from multillmn import canonical
from multillmn.certificate import verify_commit
from multillmn.genesis import Genesis
from multillmn.identity import KeyPair, PeerId
from multillmn.logs import fields
from peers.transport import Transport
from peers.wire import RejectStats, encode_message

__all__ = ["Admission", "LedgerService", "MAX_OPEN_SEGMENTS", "SNAPSHOT_EVERY", "MAX_EVENT_PAYLOAD", "MAX_PENDING", "MAX_PENDING_BYTES",
           "MAX_PRIORITY", "MAX_PRIORITY_BYTES", "MAX_QUEUE_DELAY_S", "MAX_IN_FLIGHT", "SYNC_TIMEOUT_S",
           "check_store", "entry_json", "network_of"]

log = logging.getLogger("multillmn.ledger")

SNAPSHOT_EVERY = 256
"""Ordered events between two ledger snapshots in the store."""
MAX_EVENT_PAYLOAD = 512 << 10
"""Own events carry at most this many transaction bytes (so any event fits one ``dag_events`` batch)."""
MAX_PENDING = 8192
"""Ordinary transactions queued for this peer's next events; :meth:`LedgerService.submit` refuses more (FULL)."""
MAX_PENDING_BYTES = 16 << 20
"""Their bytes, at most."""
MAX_PRIORITY = 1024
"""Priority transactions (certificates, evidence) queued: a reserved lane that ordinary load cannot fill."""
MAX_PRIORITY_BYTES = 64 << 20
"""Their bytes, at most."""
MAX_IN_FLIGHT = 8192
"""Ordinary transactions in this peer's own events that are not ordered yet; at the bound, new events carry
only priority transactions (event creation is paced by the ordering lag)."""
MAX_QUEUE_DELAY_S = 0.5
"""Ordinary transactions are refused (FULL) while the oldest queued one has waited longer than this: the
queue drains slower than it fills, and a longer queue would only add latency."""
SYNC_TIMEOUT_S = 2.0
MAX_OPEN_SEGMENTS = 2
"""Unsealed ledger segments held at once: the current epoch's and the next one's."""
"""A pull not answered within this long is given up and the next peer is asked (one pull in flight at a time)."""


class Admission(enum.Enum):
    """What :meth:`LedgerService.submit` did with a transaction: a clear signal, never a silent drop."""

    QUEUED = "queued"
    """Queued for this peer's next events; it will be ordered unless the process dies first."""
    DUPLICATE = "duplicate"
    """The same bytes are already queued here (they are ordered once)."""
    FULL = "full"
    """Refused: the queue is at its bound (the ledger is overloaded); submit again later."""
    INVALID = "invalid"
    """Refused: not a msgpack value within the wire's bounds, which every other peer would refuse."""

    @property
    def accepted(self) -> bool:
        return self in (Admission.QUEUED, Admission.DUPLICATE)


CertificateHook = Callable[[int, dict[str, Any]], None]


@dataclass
class _Segment:
    """One epoch's hashgraph and how far the ledger applied its order."""

    epoch: int
    validators: ValidatorSet
    hashgraph: Hashgraph
    applied: int = 0  # ordered events applied to the ledger (for a sealed segment: up to the sealing one)
    sealed: bool = False


def _tx_map(tx: bytes) -> dict[str, Any] | None:
    try:
        raw = canonical.unpack(tx)
    except canonical.CanonicalError:
        return None
    return raw if isinstance(raw, dict) else None


def _cert_height(tx: bytes) -> int | None:
    raw = _tx_map(tx)
    if raw is None or raw.get("type") != "certificate" or type(raw.get("height")) is not int:
        return None
    return int(raw["height"])


def entry_json(entry: LedgerEntry) -> dict[str, Any]:
    """A ledger entry as the API shows it (a summary of the transaction, not its bytes)."""
    out: dict[str, Any] = {"index": entry.index, "position": entry.position,
                           "event_hash": entry.event_hash.hex(), "type": entry.type, "bytes": len(entry.tx)}
    raw = _tx_map(entry.tx) or {}
    if entry.type == "certificate":
        cert = json.loads(raw["cert"].decode("utf-8"))
        summary = cert.get("summary") if isinstance(cert.get("summary"), dict) else {}
        out.update(height=raw["height"], value_id=cert.get("value_id"), round=cert.get("round"),
                   question=summary.get("question"), answer=summary.get("answer"))
    elif entry.type == "weights":
        out.update(height=raw["height"], weights=raw["weights"])
    elif entry.type == "evidence":
        out.update(kind=raw["kind"], peer_id=raw["peer_id"])
    elif entry.type == "membership":
        out.update(action=raw["action"], peer_id=raw["peer_id"])
    return out


class LedgerService:
    """One peer's hashgraph, ledger and store, synced with the other validators over the transport."""

    def __init__(self, key: KeyPair, genesis: Genesis, transport: Transport, store: Store | None, *,
                 sync_interval_ms: int = 200, snapshot_every: int = SNAPSHOT_EVERY,
                 clock_ns: Callable[[], int] = time.time_ns, max_pending: int = MAX_PENDING,
                 max_pending_bytes: int = MAX_PENDING_BYTES, max_in_flight: int = MAX_IN_FLIGHT,
                 sync_timeout_s: float = SYNC_TIMEOUT_S, reply_bytes: int = MAX_BATCH_BYTES,
                 max_queue_delay_s: float = MAX_QUEUE_DELAY_S, monotonic: Callable[[], float] = time.monotonic
                 ) -> None:
        """Use :meth:`open`, which replays the store."""
        if not (max_pending >= 1 and max_pending_bytes >= 1 and max_in_flight >= 1 and sync_timeout_s > 0
                and 1 <= reply_bytes <= MAX_BATCH_BYTES and max_queue_delay_s > 0):
            raise ValueError("admission and sync bounds must be positive (reply_bytes at most MAX_BATCH_BYTES)")
        self.key = key
        self.genesis = genesis
        self.transport = transport
        self.store = store
        self.sync_interval_s = sync_interval_ms / 1000
        self.snapshot_every = snapshot_every
        self._clock_ns = clock_ns
        self.rejects = RejectStats()
        self.verified = VerifiedCache()
        self.on_certificate: CertificateHook | None = None
        self.on_evidence: Callable[[Evidence], None] | None = None
        self.on_refused: Callable[[int, dict[str, Any]], None] | None = None
        self.ledger = self._new_ledger()
        chain = self.ledger.chain
        mp = chain.membership_params if chain is not None and chain.adaptive else None
        self.epoch_length: int | None = None if mp is None else mp.epoch_length
        """Heights per epoch (None: static weights, one segment for ever)."""
        self._segments: dict[int, _Segment] = {0: _Segment(0, genesis.validators, Hashgraph(genesis.validators))}
        self.current = 0
        """The lowest unsealed segment's epoch: the one this peer pulls and creates events in."""
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.max_queue_delay_s = max_queue_delay_s
        self._monotonic = monotonic
        self.max_in_flight = max_in_flight
        self.sync_timeout_s = sync_timeout_s
        self.reply_bytes = reply_bytes
        # Two lanes of transactions waiting for an event: priority (certificates, evidence) goes first and
        # has its own bounds, so ordinary load can neither fill it nor delay it.
        self._priority: dict[bytes, int] = {}  # value: the epoch whose segment must carry it
        self._priority_bytes = 0
        self._pending: OrderedDict[bytes, float] = OrderedDict()  # first in, first out; value: when submitted
        self._pending_bytes = 0
        self._unordered_tx: dict[int, set[bytes]] = {}  # by epoch: events with transactions not ordered yet
        self._checked: dict[bytes, bool] = {}  # per event held: its transactions pass check_transaction
        self._own_unordered: dict[bytes, int] = {}  # own events with transactions, not ordered yet: how many
        self._in_flight = 0  # their transactions
        self._submitted: set[int] = set()  # heights whose certificate this peer queued (bounded below)
        self._since_snap = 0  # ordered events applied since the last snapshot
        self._peers = self._pull_peers()
        self._next_peer = 0
        self._awaiting: PeerId | None = None  # the peer asked by the pull in flight
        self._awaiting_since = 0.0
        self._pull_again = False  # the last reply was full: pull again without waiting an interval
        self._wake: trio.Event | None = None
        self.created = 0
        self.admission: dict[str, int] = {a.value: 0 for a in Admission}
        self.sync_stats: dict[str, int] = {"pulls": 0, "replies": 0, "timeouts": 0, "full_replies": 0}

    @classmethod
    def open(cls, key: KeyPair, genesis: Genesis, transport: Transport, path: Path | None, **kwargs: Any
             ) -> LedgerService:
        """Open (or create) the store at ``path`` and rebuild the same order and state as before a crash.

        ``path=None`` keeps everything in memory. Raises :class:`dag.StoreError` if the
        store is unusable or inconsistent, :class:`dag.NetworkMismatch` if it holds
        another network's ledger.
        """
        store = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            store = Store.open(path, network_of(genesis))
        svc = cls(key, genesis, transport, store, **kwargs)
        if store is not None:
            try:
                sets = store.segments()
                if not sets:
                    store.save_segment(0, genesis.validators)
                    sets = {0: genesis.validators}
                if sets.get(0) != genesis.validators:
                    raise StoreError(f"{path}: its epoch-0 ledger segment is not run by this genesis' validators; "
                                     "move the file aside to resync the ledger from the other peers")
                for epoch, vs in sets.items():
                    svc._segments[epoch] = _Segment(epoch, vs, replay(store, vs, epoch=epoch))
            except BaseException:
                store.close()
                raise
        svc._restore()
        return svc

    # -- segments -------------------------------------------------------------

    @property
    def hashgraph(self) -> Hashgraph:
        """The current segment's hashgraph."""
        return self._segments[self.current].hashgraph

    @property
    def validators(self) -> ValidatorSet:
        """The current segment's committee."""
        return self._segments[self.current].validators

    @property
    def observer(self) -> bool:
        """Not in the current segment's committee: it pulls and holds the ledger but creates no events, so it
        submits nothing (the committee posts every certificate)."""
        return self.key.peer_id not in self._segments[self.current].validators

    def segment(self, epoch: int) -> Hashgraph | None:
        """Segment ``epoch``'s hashgraph, if this peer holds it."""
        seg = self._segments.get(epoch)
        return None if seg is None else seg.hashgraph

    def sealed(self, epoch: int) -> bool:
        seg = self._segments.get(epoch)
        return seg is not None and seg.sealed

    def epoch_of(self, height: int) -> int:
        """The ledger epoch (segment) a certificate of ``height`` belongs to."""
        return 0 if self.epoch_length is None else (height - 1) // self.epoch_length

    def _last_height(self, epoch: int) -> int | None:
        return None if self.epoch_length is None else (epoch + 1) * self.epoch_length

    def key_of(self, peer: PeerId) -> bytes | None:
        """The key of a member of any segment held (whose DAG messages this peer reads)."""
        for seg in self._segments.values():
            key = seg.validators.public_key_of(peer)
            if key is not None:
                return key
        return None

    def members(self) -> set[PeerId]:
        """The members of the unsealed segments (whom this peer's ledger still needs to reach)."""
        return {p for seg in self._segments.values() if not seg.sealed for p in seg.validators.ids}

    def _ledger_key_of(self, peer: PeerId) -> bytes | None:
        """For the ledger (fork evidence): the key of a member of a segment up to the current one, which every
        peer applying the current segment holds (so every peer decides alike)."""
        for epoch in range(self.current, -1, -1):
            seg = self._segments.get(epoch)
            key = None if seg is None else seg.validators.public_key_of(peer)
            if key is not None:
                return key
        return None

    def set_epoch_validators(self, epoch: int, validators: ValidatorSet) -> None:
        """The node's chain computed ``epoch``'s set (at its first height): open that segment early, so events
        that faster peers create in it are kept. Only the next epoch is opened this way; on sealing the
        current one, the set the ledger's own chain derived decides (a differing early segment is dropped)."""
        if self.epoch_length is None or epoch in self._segments or epoch != self.current + 1:
            return
        derived = self.ledger.epoch_sets.get(epoch)
        if derived is not None and derived != validators:
            log.error("the node's set for the next ledger segment differs from the ledger's own: ignored",
                      extra=fields(epoch=epoch))
            return
        self._open(epoch, validators)
        self._peers = self._pull_peers()

    def _open(self, epoch: int, validators: ValidatorSet) -> _Segment:
        seg = self._segments[epoch] = _Segment(epoch, validators, Hashgraph(validators, epoch=epoch))
        if self.store is not None:
            self.store.save_segment(epoch, validators)
        log.info("ledger segment opened", extra=fields(epoch=epoch, validators=len(validators)))
        return seg

    def _pull_peers(self) -> list[PeerId]:
        """Whom to pull from: the current segment's members, then the next one's (if open), not this peer."""
        ids = list(self._segments[self.current].validators.ids)
        nxt = self._segments.get(self.current + 1)
        if nxt is not None:
            ids += [p for p in nxt.validators.ids if p not in ids]
        return [p for p in ids if p != self.key.peer_id]

    def _advance(self) -> None:
        """Apply the current segment's new order to the ledger; seal it once the ledger is certified through
        the epoch's last height, and go on with the next segment."""
        while True:
            seg = self._segments[self.current]
            last = self._last_height(seg.epoch)
            sealed = last is not None and self.ledger.certified_through() >= last  # a snapshot taken at the seal
            first = len(self.ledger)
            for ev in seg.hashgraph.ordered(seg.applied) if not sealed else ():
                self.ledger.apply([ev])
                seg.applied += 1
                self._since_snap += 1
                if last is not None and self.ledger.certified_through() >= last:
                    sealed = True
                    break
            if self.store is not None and self._since_snap >= self.snapshot_every:
                self.store.save_snapshot(seg.applied, self.ledger.snapshot(), seg.epoch)
                self._since_snap = 0
            self._report(first)
            if not sealed or not self._seal(seg):
                return

    def _seal(self, seg: _Segment) -> bool:
        """Seal ``seg`` and make the next segment current; False if the next set is unknown (cannot happen
        while the ledger derives weights)."""
        nxt = seg.epoch + 1
        vs = self.ledger.epoch_sets.get(nxt)
        if vs is None:
            log.error("cannot seal the ledger segment: the next epoch's set is unknown", extra=fields(epoch=seg.epoch))
            return False
        held = self._segments.get(nxt)
        if held is not None and held.validators != vs:
            log.error("ledger segment opened with another set than the ledger derived: dropped", extra=fields(
                epoch=nxt))
            del self._segments[nxt]
            self._unordered_tx.pop(nxt, None)
            if self.store is not None:
                self.store.drop_segment(nxt)
            held = None
        if held is None:
            self._open(nxt, vs)
        seg.sealed = True
        self.current = nxt
        for e in [e for e in self.ledger.epoch_sets if e <= nxt]:  # the rest: at most MAX_AHEAD heights on
            del self.ledger.epoch_sets[e]
        me = self.key.peer_id
        applied = set(seg.hashgraph.order_hashes()[:seg.applied])
        requeue: list[bytes] = []
        for ev in seg.hashgraph.events_by(me):
            self._in_flight -= self._own_unordered.pop(ev.hash, 0)
            if ev.hash not in applied:
                requeue.extend(ev.transactions)
        self._unordered_tx.pop(seg.epoch, None)
        for tx, epoch in list(self._priority.items()):
            if epoch <= seg.epoch:
                height = _cert_height(tx)
                if height is not None and (height in self.ledger.answers or self.epoch_of(height) <= seg.epoch):
                    self._drop_priority(tx)
                else:
                    self._priority[tx] = nxt
        observer = self.observer
        if observer:
            for tx in [tx for tx, epoch in self._priority.items() if epoch == nxt]:
                self._drop_priority(tx)
        elif requeue:
            for tx in requeue:
                height = _cert_height(tx)
                if height is not None and (height in self.ledger.answers or self.epoch_of(height) <= seg.epoch):
                    continue
                self.submit(tx, priority=(_tx_map(tx) or {}).get("type") in ("certificate", "evidence"),
                            epoch=None if height is None else self.epoch_of(height))
        self._peers = self._pull_peers()
        self._awaiting = None
        log.info("ledger segment sealed", extra=fields(epoch=seg.epoch, applied=seg.applied,
                                                       ordered=seg.hashgraph.ordered_count, next=nxt,
                                                       member=not observer, requeued=len(requeue)))
        return True

    def _drop_priority(self, tx: bytes) -> None:
        if tx in self._priority:
            del self._priority[tx]
            self._priority_bytes -= len(tx)

    def _check_commit(self, cert: Any, chain: Chain) -> Value:
        """A certificate checked against the set this peer's own chain computed (CertificateError is a
        ValueError: the ledger ignores and counts it)."""
        params = self.genesis.params
        return verify_commit(cert, chain, threshold=params.similarity_threshold,
                             tolerance=params.similarity_tolerance, cache=self.verified)

    def _new_ledger(self) -> Ledger:
        ledger = Ledger(None, self._ledger_key_of, self.genesis.chain(self.verified), self._check_commit)
        ledger.on_evidence = self._on_evidence
        ledger.on_refused = self._on_refused
        return ledger

    def _on_evidence(self, evidence: Evidence) -> None:
        if self.on_evidence is not None:
            self.on_evidence(evidence)

    def _on_refused(self, height: int, cert: dict[str, Any]) -> None:
        log.warning("refused a certificate", extra=fields(height=height, value_id=cert.get("value_id")))
        if self.on_refused is not None:
            self.on_refused(height, cert)

    def _restore(self) -> None:
        """Apply the replayed segments' order from the latest usable snapshot (sealing as the order says)."""
        snap = self.store.latest_snapshot_at() if self.store is not None else None
        if snap is not None:
            epoch, position, state = snap
            seg = self._segments.get(epoch)
            if seg is not None and position <= seg.hashgraph.ordered_count and all(
                    e in self._segments for e in range(epoch)):
                try:
                    ledger = Ledger.restore(state, None, self._ledger_key_of,
                                            self.genesis.chain(self.verified), self._check_commit)
                except ValueError as exc:
                    log.warning("ledger snapshot unusable; re-applying the whole order",
                                extra=fields(error=str(exc)))
                else:
                    ledger.on_evidence = self._on_evidence
                    ledger.on_refused = self._on_refused
                    self.ledger = ledger
                    for e in range(epoch):
                        self._segments[e].sealed = True
                        self._segments[e].applied = self._segments[e].hashgraph.ordered_count
                    seg.applied = position
                    self.current = epoch
                    for e in [e for e in ledger.epoch_sets if e <= epoch]:
                        del ledger.epoch_sets[e]
        for seg in self._segments.values():
            if seg.sealed:
                continue
            done = set(seg.hashgraph.order_hashes())
            for ev in seg.hashgraph:
                if ev.transactions and ev.hash not in done:
                    self._unordered_tx.setdefault(seg.epoch, set()).add(ev.hash)
                    if ev.creator == self.key.peer_id and seg.epoch == self.current:
                        self._own_unordered[ev.hash] = len(ev.transactions)
                        self._in_flight += len(ev.transactions)
        self._advance()
        self._since_snap = 0
        self._peers = self._pull_peers()
        log.info("ledger opened", extra=fields(epoch=self.current, segments=len(self._segments),
                                               events=sum(len(s.hashgraph) for s in self._segments.values()),
                                               entries=len(self.ledger), state_hash=self.state_hash()))

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    # -- reads ----------------------------------------------------------------

    def state_hash(self) -> str:
        return self.ledger.state_hash().hex()

    def highest_height(self) -> int:
        """The highest height whose certificate the ledger holds (0 if none)."""
        return max(self.ledger.answers, default=0)

    def certificate(self, height: int) -> dict[str, Any] | None:
        blob = self.ledger.answers.get(height)
        return None if blob is None else dict(json.loads(blob.decode("utf-8")))

    def statistics(self) -> dict[str, Any]:
        hg = self.hashgraph
        return {
            "state_hash": self.state_hash(),
            "entries": len(self.ledger),
            "position": self.ledger.position,
            "events": len(hg),
            "ordered_events": hg.ordered_count,
            "max_round": hg.max_round,
            "own_events": hg.height(self.key.peer_id),
            "observer": self.observer,
            "epoch": self.current,
            "segments": {e: {"validators": len(s.validators), "events": len(s.hashgraph),
                             "ordered": s.hashgraph.ordered_count, "applied": s.applied, "sealed": s.sealed}
                         for e, s in sorted(self._segments.items())[-MAX_OPEN_SEGMENTS - 2:]},
            "pending_transactions": len(self._pending) + len(self._priority),
            "pending_priority": len(self._priority),
            "pending_bytes": self._pending_bytes + self._priority_bytes,
            "unordered_events_with_transactions": sum(map(len, self._unordered_tx.values())),
            "own_unordered_events": len(self._own_unordered),
            "in_flight_transactions": self._in_flight,
            "admission": dict(self.admission),
            "sync": dict(self.sync_stats),
            "certified_heights": sorted(self.ledger.answers),
            "ignored": dict(self.ledger.ignored),
            "forkers": sorted(hg.forkers),
        }

    # -- transactions in ----------------------------------------------------------

    def submit(self, tx: bytes, *, priority: bool = False, epoch: int | None = None) -> Admission:
        """Queue a transaction for this peer's next events, or refuse it; never blocks, never drops silently.

        Returns :attr:`Admission.QUEUED` (or :attr:`~Admission.DUPLICATE` for bytes already
        queued): the transaction will be ordered. :attr:`~Admission.FULL`: refused, the queue
        holds :attr:`max_pending` transactions or :attr:`max_pending_bytes` bytes (the caller
        keeps it and submits again later). :attr:`~Admission.INVALID`: refused for good, it
        is not a msgpack value within the wire's bounds (:func:`dag.event.check_transaction`),
        so every other peer would refuse this peer's event carrying it.

        ``priority`` (certificates and evidence, which must never be lost) uses a lane of its
        own, ahead of ordinary transactions in every event and with its own bounds
        (:data:`MAX_PRIORITY`, :data:`MAX_PRIORITY_BYTES`), so ordinary load cannot refuse it.
        A priority transaction goes to segment ``epoch`` (default: the current one).
        """
        if tx in self._priority or tx in self._pending:
            if priority and tx in self._pending and len(self._priority) < MAX_PRIORITY:  # promote it
                del self._pending[tx]
                self._pending_bytes -= len(tx)
                self._priority[tx] = self.current if epoch is None else max(epoch, self.current)
                self._priority_bytes += len(tx)
            return self._count(Admission.DUPLICATE)
        size = len(tx) if isinstance(tx, bytes) else 0
        if priority:
            full = len(self._priority) >= MAX_PRIORITY or self._priority_bytes + size > MAX_PRIORITY_BYTES
        else:  # checked before validation: a refusal under overload costs next to nothing
            full = (len(self._pending) >= self.max_pending or self._pending_bytes + size > self.max_pending_bytes
                    or self.queue_delay() > self.max_queue_delay_s)
        if full:
            if priority:
                log.error("ledger priority lane full: transaction refused", extra=fields(bytes=size))
            return self._count(Admission.FULL)
        reason = check_transaction(tx)
        if reason is not None:
            log.warning("ledger transaction refused", extra=fields(reason=reason))
            return self._count(Admission.INVALID)
        if priority:
            self._priority[tx] = self.current if epoch is None else max(epoch, self.current)
            self._priority_bytes += size
        else:
            self._pending[tx] = self._monotonic()
            self._pending_bytes += size
        return self._count(Admission.QUEUED)

    def queue_delay(self) -> float:
        """Seconds the oldest ordinary transaction queued here has waited (0 if none)."""
        if not self._pending:
            return 0.0
        return self._monotonic() - next(iter(self._pending.values()))

    def _count(self, result: Admission) -> Admission:
        self.admission[result.value] += 1
        if result is Admission.FULL and not self.admission[result.value] & (self.admission[result.value] - 1):
            log.warning("ledger overloaded: transactions refused", extra=fields(  # 1st, 2nd, 4th, 8th... time
                refused=self.admission[result.value], pending=len(self._pending)))
        return result

    def submit_certificate(self, height: int, cert: dict[str, Any]) -> Admission | None:
        """Queue a decision's certificate (priority) for the segment of its height, unless the ledger already
        certified that height, this peer queued it, that segment is sealed or this peer is not in its
        committee (then None).

        Only a certificate the ledger *accepted* counts: another one it merely
        carries (perhaps a forgery) must not stop this peer from posting the real one.
        """
        epoch = self.epoch_of(height)
        seg = self._segments.get(epoch)
        if (epoch < self.current or (seg is not None and self.key.peer_id not in seg.validators)
                or height in self.ledger.answers or height in self._submitted):
            return None
        result = self.submit(certificate_tx(height, json.dumps(cert, sort_keys=True, separators=(",", ":")).encode()),
                             priority=True, epoch=epoch)
        if result.accepted:
            self._submitted.add(height)
            self._submitted = {h for h in self._submitted if h > height - 64}
        return result

    def submit_evidence(self, evidence: Evidence) -> Admission | None:
        """Queue equivocation evidence as a ledger transaction (priority), if it checks out (else None)."""
        if self.observer:
            return None
        result = check_evidence(evidence, self.validators, self.genesis.chain_id)
        if isinstance(result, str):
            log.warning("evidence not recorded", extra=fields(reason=result))
            return None
        return self.submit(evidence_tx(evidence.KIND, result[0], canonical.pack(evidence.body())), priority=True)

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

    def _report(self, first: int) -> None:
        """Hand the certificates among the ledger entries from ``first`` on to the node."""
        new: list[LedgerEntry] = []
        while first < len(self.ledger):
            page = self.ledger.page(first, len(self.ledger) - first)
            new.extend(e for e in page if e.type == "certificate")
            first += len(page)
        for entry in new:
            height = _cert_height(entry.tx)
            cert = self.certificate(height) if height is not None else None
            log.info("ledger certificate", extra=fields(height=height, position=entry.position))
            if cert is not None and height is not None and self.on_certificate is not None:
                self.on_certificate(height, cert)


def network_of(genesis: Genesis) -> Network:
    """The network a ledger store is bound to: the genesis' chain id and hash."""
    return Network(genesis.chain_id, genesis.digest())


def check_store(path: Path, genesis: Genesis) -> None:
    """Fail fast, before a model loads: raise :class:`dag.StoreError` if the store at ``path`` (if any)
    is unusable or belongs to another network."""
    if path.exists():
        Store.open(path, network_of(genesis)).close()


def value_of_certificate(cert: dict[str, Any] | None) -> Value | None:
    """The value a (verified) certificate decided, or None if there is none or it does not decode."""
    if cert is None:
        return None
    try:
        return decode_value(canonical.unpack(base64.b64decode(cert["value"])))
    except Exception:  # a verified certificate always decodes; be defensive anyway
        return None


def query_id_of_certificate(cert: dict[str, Any]) -> bytes | None:
    """The query id a (verified) certificate decided, or None if it does not decode."""
    value = value_of_certificate(cert)
    return None if value is None else value.query_id()
