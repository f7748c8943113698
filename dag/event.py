"""Hashgraph events: fields, canonical body, hash, signing and strict validation.

An event is what one creator adds to the DAG: its position in its own chain
(``seq``, 0 for the first event), the hashes of its self-parent (the
creator's previous event) and other-parent (the latest event it heard of
from another creator), the creator's own timestamp (an input, int
nanoseconds; never read from a clock here), a batch of opaque
transactions, and the ledger *epoch* whose hashgraph it belongs to (the
members of the validator set change by epochs, and each epoch's ledger is
a hashgraph of that epoch's members; see ``peers/ledger/``).

Normative encoding::

    body      = canonical msgpack {creator, seq, self_parent, other_parent,
                                   timestamp, transactions[, epoch]}
                (``epoch`` present exactly when it is not 0)
    signature = Ed25519 over b"multillmn/v1/dag_event\\0" + body
    wire      = canonical msgpack {"body": body, "sig": signature}
    hash      = SHA-256(wire)

The hash covers the signature: Ed25519 lets a key holder make several valid
signatures of one body, and the signature feeds the coin and the order's
tie-break, so two signatures must be two events (a fork), never one event
that different peers hold in different forms.

Structure rules checked here (no graph needed): ``seq == 0`` exactly when
there is no self-parent, a first event has no other-parent either, the two
parents differ, all integers are in range and the transaction batch is
within :data:`MAX_TRANSACTIONS` / :data:`MAX_TRANSACTION_BYTES` /
:data:`MAX_PAYLOAD_BYTES`. Rules that need the parents (same creator,
``seq`` + 1, increasing timestamps) are checked by :class:`dag.Hashgraph`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from multillmn import canonical
from multillmn.identity import KeyPair, PeerId, is_peer_id, verify_signature

__all__ = [
    "KIND",
    "MAX_TRANSACTIONS",
    "MAX_TRANSACTION_BYTES",
    "MAX_PAYLOAD_BYTES",
    "MAX_EVENT_BYTES",
    "EventError",
    "Event",
    "event_hash",
    "sign_event",
    "verify_event",
    "encode_event",
    "decode_event",
    "check_transaction",
]

KIND = "dag_event"
MAX_TRANSACTIONS = 4096
MAX_TRANSACTION_BYTES = 1 << 20
MAX_PAYLOAD_BYTES = 4 << 20
MAX_EVENT_BYTES = MAX_PAYLOAD_BYTES + (64 << 10)
MAX_SEQ = 2**62
MAX_TIMESTAMP = 2**63

_BODY_KEYS = frozenset({"creator", "seq", "self_parent", "other_parent", "timestamp", "transactions"})
MAX_EPOCH = 2**40


class EventError(ValueError):
    """An event is malformed or badly signed (the creator's or sender's fault); the message says why."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_hash(value: object, what: str) -> None:
    if value is not None and (not isinstance(value, bytes) or len(value) != 32):
        raise EventError(f"{what} must be None or a 32-byte hash")


@dataclass(frozen=True, slots=True)
class Event:
    """A signed hashgraph event. Construction validates every field (raises :class:`EventError`)."""

    creator: PeerId
    seq: int
    self_parent: bytes | None
    other_parent: bytes | None
    timestamp: int
    transactions: tuple[bytes, ...]
    signature: bytes
    epoch: int = 0
    body: bytes = field(init=False, repr=False, compare=False)
    hash: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not is_peer_id(self.creator):
            raise EventError("creator must be a peer id (40 lowercase hex characters)")
        if not _is_int(self.seq) or not 0 <= self.seq < MAX_SEQ:
            raise EventError(f"seq must be an integer in [0, 2^62), got {self.seq!r:.40}")
        _check_hash(self.self_parent, "self_parent")
        _check_hash(self.other_parent, "other_parent")
        if (self.seq == 0) != (self.self_parent is None):
            raise EventError("an event has a self-parent exactly when seq > 0")
        if self.self_parent is None and self.other_parent is not None:
            raise EventError("a creator's first event has no other-parent")
        if self.self_parent is not None and self.self_parent == self.other_parent:
            raise EventError("self-parent and other-parent must differ")
        if not _is_int(self.timestamp) or not 0 <= self.timestamp < MAX_TIMESTAMP:
            raise EventError(f"timestamp must be an integer in [0, 2^63) ns, got {self.timestamp!r:.40}")
        txs = self.transactions
        if isinstance(txs, list):
            txs = tuple(txs)
            object.__setattr__(self, "transactions", txs)
        if not isinstance(txs, tuple):
            raise EventError("transactions must be a tuple of bytes")
        if len(txs) > MAX_TRANSACTIONS:
            raise EventError(f"{len(txs)} transactions exceed the limit of {MAX_TRANSACTIONS}")
        total = 0
        for i, tx in enumerate(txs):
            if not isinstance(tx, bytes):
                raise EventError(f"transaction {i} must be bytes")
            if len(tx) > MAX_TRANSACTION_BYTES:
                raise EventError(f"transaction {i} has {len(tx)} bytes, over {MAX_TRANSACTION_BYTES}")
            total += len(tx)
        if total > MAX_PAYLOAD_BYTES:
            raise EventError(f"transactions total {total} bytes, over {MAX_PAYLOAD_BYTES}")
        if not isinstance(self.signature, bytes) or len(self.signature) != 64:
            raise EventError("signature must be 64 bytes")
        if not _is_int(self.epoch) or not 0 <= self.epoch < MAX_EPOCH:
            raise EventError(f"epoch must be an integer in [0, 2^40), got {self.epoch!r:.40}")
        body = canonical.pack(_body_map(self.creator, self.seq, self.self_parent, self.other_parent,
                                        self.timestamp, txs, self.epoch))
        object.__setattr__(self, "body", body)
        object.__setattr__(self, "hash", hashlib.sha256(_wire(body, self.signature)).digest())

    def __repr__(self) -> str:
        sp = self.self_parent.hex()[:8] if self.self_parent else None
        op = self.other_parent.hex()[:8] if self.other_parent else None
        return (f"Event({self.hash.hex()[:8]} by {self.creator[:8]}#{self.seq} sp={sp} op={op} "
                f"t={self.timestamp} txs={len(self.transactions)}{f' epoch={self.epoch}' if self.epoch else ''})")


def _body_map(creator: str, seq: int, sp: bytes | None, op: bytes | None, ts: int,
              txs: Sequence[bytes], epoch: int) -> dict[str, Any]:
    body: dict[str, Any] = {"creator": creator, "seq": seq, "self_parent": sp, "other_parent": op,
                            "timestamp": ts, "transactions": list(txs)}
    if epoch:
        body["epoch"] = epoch
    return body


def _wire(body: bytes, signature: bytes) -> bytes:
    return canonical.pack({"body": body, "sig": signature})


def event_hash(event: Event) -> bytes:
    """SHA-256 of the event's wire bytes (body and signature); 32 bytes."""
    return event.hash


def sign_event(key: KeyPair, *, seq: int, self_parent: bytes | None, other_parent: bytes | None,
               timestamp: int, transactions: Sequence[bytes] = (), epoch: int = 0) -> Event:
    """Create and sign an event by ``key``'s peer. Raises :class:`EventError` on bad fields."""
    txs = tuple(transactions)
    # Build once unsigned to validate fields and get the body, then sign those exact bytes.
    draft = Event(key.peer_id, seq, self_parent, other_parent, timestamp, txs, bytes(64), epoch)
    return Event(key.peer_id, seq, self_parent, other_parent, timestamp, txs, key.sign(KIND, draft.body), epoch)


def verify_event(event: Event, public_key_of: Callable[[PeerId], bytes | None]) -> str | None:
    """``None`` if ``event`` is signed by its creator's key, else the reason it is not."""
    key = public_key_of(event.creator)
    if key is None:
        return f"unknown creator {event.creator}"
    if not verify_signature(key, KIND, event.body, event.signature):
        return f"bad signature on event {event.hash.hex()[:16]} by {event.creator}"
    return None


def encode_event(event: Event) -> bytes:
    """The wire bytes of ``event`` (what :func:`decode_event` reads and the hash covers)."""
    return _wire(event.body, event.signature)


def check_transaction(tx: bytes) -> str | None:
    """``None`` if ``tx`` is what gossip accepts in an event, else why not.

    Events are opaque to the hashgraph, but whatever reads their transactions
    (:class:`dag.Ledger`) decodes them as msgpack: a transaction must be one
    msgpack value within :func:`multillmn.canonical.unpack`'s bounds (nesting
    at most :data:`multillmn.canonical.MAX_DEPTH`, no floats, string keys),
    so a decoder bomb is refused at the edge, before any store sees it.
    """
    try:
        canonical.unpack(tx, max_len=MAX_TRANSACTION_BYTES)
    except canonical.CanonicalError as exc:
        return str(exc)
    return None


def decode_event(data: bytes) -> Event:
    """Parse and validate wire bytes; raise :class:`EventError` naming the problem, and nothing else
    whatever ``data`` holds (the outer map may not nest, the body only holds the transaction list).

    The body must be canonical (re-encoding gives the same bytes), so the
    signed bytes and the hashed bytes are unambiguous. Signatures are not
    checked here: see :func:`verify_event`; transactions neither: see
    :func:`check_transaction`.
    """
    if not isinstance(data, bytes):
        raise EventError("an encoded event is bytes")
    if len(data) > MAX_EVENT_BYTES:
        raise EventError(f"encoded event of {len(data)} bytes exceeds {MAX_EVENT_BYTES}")
    try:
        outer = canonical.unpack(data, max_len=MAX_EVENT_BYTES, max_depth=1)
    except canonical.CanonicalError as exc:
        raise EventError(f"event: {exc}") from None
    if not isinstance(outer, dict) or set(outer) != {"body", "sig"}:
        raise EventError("an encoded event is a map with exactly 'body' and 'sig'")
    body, sig = outer["body"], outer["sig"]
    if not isinstance(body, bytes) or not isinstance(sig, bytes):
        raise EventError("event body and sig must be bytes")
    try:
        raw = canonical.unpack(body, max_len=MAX_EVENT_BYTES, max_depth=2)  # a map holding a list of bytes
    except canonical.CanonicalError as exc:
        raise EventError(f"event body: {exc}") from None
    if not isinstance(raw, dict) or set(raw) - {"epoch"} != _BODY_KEYS:
        got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise EventError(f"event body must have exactly the keys {sorted(_BODY_KEYS)} (and epoch if not 0), "
                         f"got {got}")
    txs = raw["transactions"]
    if not isinstance(txs, tuple):
        raise EventError("transactions must be a list of bytes")
    epoch = raw.get("epoch", 0)
    if "epoch" in raw and (not _is_int(epoch) or epoch == 0):
        raise EventError("an event of epoch 0 carries no epoch key; another epoch is a positive integer")
    event = Event(raw["creator"], raw["seq"], raw["self_parent"], raw["other_parent"], raw["timestamp"],
                  txs, sig, epoch)
    if event.body != body or encode_event(event) != data:
        raise EventError("event is not in canonical form")
    return event
