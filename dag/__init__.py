"""The DAG ledger: hashgraph events, weighted virtual voting, gossip sync, ledger state and storage.

Pure cores (``event``, ``hashgraph``, ``sync``, ``ledger``, ``sim``) and one
I/O module (``store``, SQLite). See ``dag/hashgraph.py`` for the algorithm.
"""

from dag.event import (
    KIND,
    MAX_EVENT_BYTES,
    MAX_PAYLOAD_BYTES,
    MAX_TRANSACTION_BYTES,
    MAX_TRANSACTIONS,
    Event,
    EventError,
    decode_event,
    encode_event,
    event_hash,
    sign_event,
    verify_event,
)
from dag.hashgraph import DEFAULT_COIN_PERIOD, ForkEvidence, Hashgraph, InsertError, MissingParent
from dag.sync import Received, SyncError, ancestors_missing, check_vector, events_missing, known_vector, receive
from dag.ledger import (
    MAX_PAGE,
    TX_TYPES,
    Ledger,
    LedgerEntry,
    certificate_tx,
    evidence_tx,
    fork_evidence_tx,
    membership_tx,
    weights_tx,
)
from dag.store import SCHEMA_VERSION, Network, NetworkMismatch, Store, StoreError, replay

__all__ = [
    "KIND", "MAX_EVENT_BYTES", "MAX_PAYLOAD_BYTES", "MAX_TRANSACTION_BYTES", "MAX_TRANSACTIONS",
    "Event", "EventError", "decode_event", "encode_event", "event_hash", "sign_event", "verify_event",
    "DEFAULT_COIN_PERIOD", "ForkEvidence", "Hashgraph", "InsertError", "MissingParent",
    "Received", "SyncError", "ancestors_missing", "check_vector", "events_missing", "known_vector", "receive",
    "MAX_PAGE", "TX_TYPES", "Ledger", "LedgerEntry", "certificate_tx", "evidence_tx", "fork_evidence_tx",
    "membership_tx",
    "weights_tx",
    "SCHEMA_VERSION", "Network", "NetworkMismatch", "Store", "StoreError", "replay",
]
