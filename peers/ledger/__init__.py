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

Modules: ``_common`` (bounds, :class:`Admission`, helpers), ``_core`` (segments, reads, transactions in),
``_service`` (:class:`LedgerService`: the gossip).
"""

from peers.ledger._common import (
    MAX_EVENT_PAYLOAD,
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
    check_store,
    entry_json,
    network_of,
    query_id_of_certificate,
    value_of_certificate,
)
from peers.ledger._service import LedgerService

__all__ = ["Admission", "CertificateHook", "LedgerService", "MAX_OPEN_SEGMENTS", "SNAPSHOT_EVERY", "MAX_EVENT_PAYLOAD",
           "MAX_PENDING", "MAX_PENDING_BYTES", "MAX_PRIORITY", "MAX_PRIORITY_BYTES", "MAX_QUEUE_DELAY_S",
           "MAX_IN_FLIGHT", "SYNC_TIMEOUT_S", "check_store", "entry_json", "network_of", "query_id_of_certificate",
           "value_of_certificate"]
