"""Wire schemas of gossip about gossip (pure): sync requests, event batches and wanted-hash requests.

They travel like every other signed message (``peers/wire.py``): a strict,
frozen schema, canonical body, Ed25519 signature by a validator over
``"multillmn/v1/" + kind + "\\0" + body``. Event bytes inside a
:class:`DagEvents` are decoded and checked here (structure, canonical form,
sizes, transactions that decode within the canonical bounds); their
creators' signatures are checked by :class:`dag.Hashgraph` on insert. Every
schema failure is a ``ValueError`` that :func:`consensus.messages.open_envelope`
turns into :class:`~consensus.messages.MessageError`, whatever the bytes.

* ``dag_sync``   ``{sender, epoch, vector}``: "here is what I hold"; the receiver
  answers with a ``dag_events`` of :func:`dag.events_missing` (possibly empty).
* ``dag_events`` ``{sender, epoch, events}``: encoded events, parents first.
* ``dag_want``   ``{sender, epoch, wanted, vector}``: "send me these and their
  ancestors" (:func:`dag.ancestors_missing`), for parents a batch lacked.

Each names the ledger epoch whose hashgraph it is about (``peers/ledger/``);
every event of a ``dag_events`` must be of that epoch.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field, PrivateAttr, field_validator, model_validator

from consensus.messages import MAX_PEERS, Hash32, Message, PeerIdField
from dag.event import Event, EventError, check_transaction, decode_event

__all__ = ["DagSync", "DagEvents", "DagWant", "DAG_KINDS", "MAX_BATCH_EVENTS", "MAX_BATCH_BYTES",
           "MAX_WANTED"]

MAX_BATCH_EVENTS = 1024
MAX_BATCH_BYTES = 768 << 10
"""A batch's event bytes stay under this, so the signed message fits a 1 MiB body."""
MAX_WANTED = 1024

Count = Annotated[int, Field(ge=0, lt=2**62)]
Epoch = Annotated[int, Field(ge=0, lt=2**40)]


class DagSync(Message):
    """A pull request: the sender's known vector (per creator, how many seqs it holds)."""

    KIND: ClassVar[str] = "dag_sync"
    SIGNER: ClassVar[str] = "sender"
    sender: PeerIdField
    vector: Annotated[dict[PeerIdField, Count], Field(max_length=MAX_PEERS)]
    epoch: Epoch = 0


class DagEvents(Message):
    """Encoded events the receiver is missing, parents first (empty: "nothing new, here I am").

    Every event must decode (:func:`dag.event.decode_event`) and every
    transaction in it pass :func:`dag.event.check_transaction`; one bad event
    refuses the whole batch, so it never reaches a hashgraph or a store.
    """

    KIND: ClassVar[str] = "dag_events"
    SIGNER: ClassVar[str] = "sender"
    sender: PeerIdField
    events: Annotated[tuple[bytes, ...], Field(max_length=MAX_BATCH_EVENTS)]
    epoch: Epoch = 0
    _decoded: tuple[tuple[bytes, ...], tuple[Event, ...]] | None = PrivateAttr(default=None)

    @field_validator("events")
    @classmethod
    def _events_size(cls, value: tuple[bytes, ...]) -> tuple[bytes, ...]:
        if sum(len(e) for e in value) > MAX_BATCH_BYTES:
            raise ValueError(f"event batch exceeds {MAX_BATCH_BYTES} bytes")
        return value

    @model_validator(mode="after")
    def _events_decode(self) -> DagEvents:
        decoded: list[Event] = []
        for i, data in enumerate(self.events):
            try:
                event = decode_event(data)
            except EventError as exc:
                raise ValueError(f"event {i}: {exc}") from None
            if event.epoch != self.epoch:
                raise ValueError(f"event {i} is of epoch {event.epoch}, the batch of epoch {self.epoch}")
            for j, tx in enumerate(event.transactions):
                reason = check_transaction(tx)
                if reason is not None:
                    raise ValueError(f"event {i}: transaction {j}: {reason}")
            decoded.append(event)
        self._decoded = (self.events, tuple(decoded))
        return self

    def decoded(self) -> list[Event]:
        """The events (already validated by the schema, so this does not raise)."""
        if self._decoded is not None and self._decoded[0] is self.events:
            return list(self._decoded[1])
        return [decode_event(e) for e in self.events]


class DagWant(Message):
    """Ask for events (and their ancestors) that a received batch referenced but did not carry."""

    KIND: ClassVar[str] = "dag_want"
    SIGNER: ClassVar[str] = "sender"
    sender: PeerIdField
    wanted: Annotated[tuple[Hash32, ...], Field(min_length=1, max_length=MAX_WANTED)]
    vector: Annotated[dict[PeerIdField, Count], Field(max_length=MAX_PEERS)]
    epoch: Epoch = 0


DAG_KINDS: dict[str, type[Message]] = {m.KIND: m for m in (DagSync, DagEvents, DagWant)}
