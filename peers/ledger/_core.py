"""The ledger service's state: segments (open, apply, seal, restore), reads and admission (no gossip)."""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import trio

from consensus.chain import Chain
from consensus.evidence import Evidence, check_evidence
from consensus.messages import Value, VerifiedCache
from consensus.validators import ValidatorSet
from dag import (
    Hashgraph,
    Ledger,
    LedgerEntry,
    Store,
    StoreError,
    certificate_tx,
    evidence_tx,
    replay,
)
from dag.event import check_transaction
from dag.messages import MAX_BATCH_BYTES
from multillmn import canonical
from multillmn.certificate import verify_commit
from multillmn.genesis import Genesis
from multillmn.identity import KeyPair, PeerId
from multillmn.logs import fields
from peers.ledger._common import (
    MAX_IN_FLIGHT,
    MAX_OPEN_SEGMENTS,
    MAX_PENDING,
    MAX_PENDING_BYTES,
    MAX_PRIORITY,
    MAX_PRIORITY_BYTES,
    MAX_QUEUE_DELAY_S,
    SNAPSHOT_EVERY,
    SYNC_TIMEOUT_S,
    Admission,
    CertificateHook,
    _Segment,
    _cert_height,
    _tx_map,
    network_of,
)
from peers.transport import Transport
from peers.wire import RejectStats

log = logging.getLogger("multillmn.ledger")


class _LedgerCore:
    """:class:`~peers.ledger.LedgerService` without its gossip: segments, reads, transactions in."""

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
             ) -> Self:
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
