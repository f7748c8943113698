"""The ledger service's bounds, admission results, segment record and transaction/certificate helpers."""

from __future__ import annotations

import base64
import enum
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consensus.messages import Value, decode_value
from consensus.validators import ValidatorSet
from dag import Hashgraph, LedgerEntry, Network, Store
from multillmn import canonical
from multillmn.genesis import Genesis

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
"""A pull not answered within this long is given up and the next peer is asked (one pull in flight at a time)."""
MAX_OPEN_SEGMENTS = 2
"""Unsealed ledger segments held at once: the current epoch's and the next one's."""


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
