"""SQLite persistence of the DAG: events, the consensus order and ledger snapshots, by ledger epoch.

One file, WAL journal, ``synchronous=FULL`` (a committed append survives a
crash or power loss), foreign keys on. The ledger runs one hashgraph per
epoch (a *segment*, ``peers/ledger/``); every table is keyed by it
(schema version 2). Tables:

* ``events(idx, epoch, hash, creator, seq, body)``: wire bytes in insertion
  order (``epoch`` is the event's own signed epoch);
* ``consensus_order(epoch, position, event_hash)``: each segment's order,
  each row referencing a stored event;
* ``snapshots(epoch, position, state)``: ledger snapshots, taken after
  ``position`` ordered events of segment ``epoch`` were applied;
* ``segments(epoch, validators)``: the validator set each held segment was
  opened with (the set in force at the epoch's first height);
* ``network(chain_id, genesis_hash)``: the network the ledger belongs to,
  bound when the store is first opened for one; opening it for another
  network raises :class:`NetworkMismatch`, so a peer never replays a ledger
  whose events the genesis it was given cannot explain;
* ``quarantine(id, idx, hash, body, reason)``: event rows moved aside because
  they did not decode (:meth:`Store.load`) or did not insert (:func:`replay`).

Every append is one transaction, so a crash leaves a prefix of what was
appended. Order rows can only reference events already committed (foreign
key), so order is never ahead of the events. On restart :func:`replay`
re-inserts the events into a fresh :class:`Hashgraph`, checks that the stored
order is a prefix of the order it derives, and appends the rest (events that
were committed but whose ordering was not, before the crash).

A malformed record never prevents a restart: an event row that does not
decode or does not insert is moved to ``quarantine`` with a log line, and as
the order and the snapshots are derived from the events, they are dropped
with it and derived again from the events that remain (the events the peer
lost come back from the other validators by sync). The invariants hold after
a quarantine as before: every order row names a stored event, and the stored
order is a prefix of the replayed one.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from consensus.validators import ValidatorSet
from dag.event import Event, EventError, decode_event, encode_event
from multillmn import canonical
from dag.hashgraph import DEFAULT_COIN_PERIOD, Hashgraph, InsertError

__all__ = ["Network", "NetworkMismatch", "Store", "StoreError", "replay", "SCHEMA_VERSION"]

log = logging.getLogger("multillmn.store")

SCHEMA_VERSION = 2
"""2: events, order and snapshots keyed by ledger epoch, and the segments table (1: one hashgraph)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    idx INTEGER PRIMARY KEY,
    epoch INTEGER NOT NULL,
    hash BLOB NOT NULL UNIQUE,
    creator TEXT NOT NULL,
    seq INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_epoch ON events (epoch, idx);
CREATE TABLE IF NOT EXISTS consensus_order (
    epoch INTEGER NOT NULL,
    position INTEGER NOT NULL,
    event_hash BLOB NOT NULL UNIQUE REFERENCES events(hash),
    PRIMARY KEY (epoch, position)
);
CREATE TABLE IF NOT EXISTS snapshots (
    epoch INTEGER NOT NULL,
    position INTEGER NOT NULL,
    state BLOB NOT NULL,
    PRIMARY KEY (epoch, position)
);
CREATE TABLE IF NOT EXISTS segments (
    epoch INTEGER PRIMARY KEY,
    validators BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS network (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    chain_id TEXT NOT NULL,
    genesis_hash BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    idx INTEGER NOT NULL,
    hash BLOB,
    body BLOB,
    reason TEXT NOT NULL
);
"""


class StoreError(Exception):
    """The database is unusable, inconsistent, or an append breaks its invariants."""


@dataclass(frozen=True)
class Network:
    """What a ledger belongs to: a chain id and the hash of its genesis."""

    chain_id: str
    genesis_hash: bytes

    def __str__(self) -> str:
        return f"chain {self.chain_id!r} (genesis {self.genesis_hash.hex()[:16]})"


class NetworkMismatch(StoreError):
    """The store holds another network's ledger."""


class Store:
    """An open DAG database. Use :meth:`open`; close it (or use ``with``)."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._db = conn
        self.path = path

    @classmethod
    def open(cls, path: str | Path, network: Network | None = None) -> Store:
        """Open or create the database at ``path``; with ``network``, it must hold that network's ledger.

        A store opened for a network for the first time is bound to it. Raises
        :class:`NetworkMismatch` (naming both networks) if it is bound to another.
        """
        p = Path(path)
        try:
            conn = sqlite3.connect(p, isolation_level=None, check_same_thread=True)
            # the version first, before anything writes: a store of another schema is left as it was
            held = conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
            row = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone() if held else None
            if row is not None and row[0] != SCHEMA_VERSION:
                raise StoreError(_schema_message(p, row[0]))
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.executescript(_SCHEMA)
            if row is None:
                conn.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            if network is not None:
                _bind(conn, p, network)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {p}: {exc}") from exc
        except StoreError:
            conn.close()
            raise
        return cls(conn, p)

    # --- segments ---------------------------------------------------------
    def segments(self) -> dict[int, ValidatorSet]:
        """The validator set of every stored segment, by epoch (ascending)."""
        out: dict[int, ValidatorSet] = {}
        try:
            for epoch, body in self._db.execute("SELECT epoch, validators FROM segments ORDER BY epoch"):
                out[int(epoch)] = ValidatorSet.from_body(canonical.unpack(bytes(body)))
        except (sqlite3.Error, canonical.CanonicalError, ValueError, TypeError, KeyError) as exc:
            raise StoreError(f"{self.path}: unreadable segments table ({exc}); move the file aside to resync "
                             "the ledger from the other peers") from None
        return out

    def save_segment(self, epoch: int, validators: ValidatorSet) -> None:
        """Record (or replace) the validator set segment ``epoch`` runs with."""
        try:
            with self._db:
                self._db.execute("INSERT OR REPLACE INTO segments (epoch, validators) VALUES (?, ?)",
                                 (epoch, canonical.pack(validators.to_body())))
        except sqlite3.Error as exc:
            raise StoreError(f"save_segment failed: {exc}") from exc

    def drop_segment(self, epoch: int) -> None:
        """Forget segment ``epoch``: its events, order, snapshots and set (one transaction)."""
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("DELETE FROM consensus_order WHERE epoch = ?", (epoch,))
                self._db.execute("DELETE FROM snapshots WHERE epoch >= ?", (epoch,))
                self._db.execute("DELETE FROM events WHERE epoch = ?", (epoch,))
                self._db.execute("DELETE FROM segments WHERE epoch = ?", (epoch,))
        except sqlite3.Error as exc:
            raise StoreError(f"drop_segment failed: {exc}") from exc

    def network(self) -> Network | None:
        """The network this ledger is bound to (None: not bound yet)."""
        row = self._db.execute("SELECT chain_id, genesis_hash FROM network").fetchone()
        return None if row is None else Network(str(row[0]), bytes(row[1]))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # --- writes -----------------------------------------------------------
    def append_events(self, events: Iterable[Event]) -> None:
        """Append events in insertion order, atomically; already stored ones are skipped."""
        rows = [(e.epoch, e.hash, e.creator, e.seq, encode_event(e)) for e in events]
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(
                    "INSERT OR IGNORE INTO events (epoch, hash, creator, seq, body) VALUES (?, ?, ?, ?, ?)", rows)
        except sqlite3.Error as exc:
            raise StoreError(f"append_events failed: {exc}") from exc

    def append_order(self, hashes: Iterable[bytes], epoch: int = 0) -> int:
        """Append event hashes to segment ``epoch``'s consensus order, atomically; return its new length.

        Every hash must name a stored event not yet ordered.
        """
        items = list(hashes)
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                start = self._db.execute("SELECT COALESCE(MAX(position) + 1, 0) FROM consensus_order WHERE epoch = ?",
                                         (epoch,)).fetchone()[0]
                self._db.executemany("INSERT INTO consensus_order (epoch, position, event_hash) VALUES (?, ?, ?)",
                                     [(epoch, start + i, h) for i, h in enumerate(items)])
        except sqlite3.IntegrityError as exc:
            raise StoreError(f"append_order: an unknown or already ordered event ({exc})") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"append_order failed: {exc}") from exc
        return int(start) + len(items)

    def save_snapshot(self, position: int, state: bytes, epoch: int = 0) -> None:
        """Store ledger state as of ``position`` ordered events of segment ``epoch`` (replacing one there)."""
        try:
            with self._db:
                self._db.execute("INSERT OR REPLACE INTO snapshots (epoch, position, state) VALUES (?, ?, ?)",
                                 (epoch, position, state))
        except sqlite3.Error as exc:
            raise StoreError(f"save_snapshot failed: {exc}") from exc

    # --- reads ----------------------------------------------------------------
    def latest_snapshot(self) -> tuple[int, bytes] | None:
        """(position, state) of the latest snapshot (see :meth:`latest_snapshot_at` for its epoch)."""
        got = self.latest_snapshot_at()
        return None if got is None else (got[1], got[2])

    def latest_snapshot_at(self) -> tuple[int, int, bytes] | None:
        """(epoch, position, state) of the latest snapshot, or None."""
        row = self._db.execute(
            "SELECT epoch, position, state FROM snapshots ORDER BY epoch DESC, position DESC LIMIT 1").fetchone()
        return None if row is None else (int(row[0]), int(row[1]), bytes(row[2]))

    def counts(self) -> tuple[int, int]:
        """(stored events, stored order length)."""
        ev = self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        order = self._db.execute("SELECT COUNT(*) FROM consensus_order").fetchone()[0]
        return int(ev), int(order)

    def quarantined(self) -> list[tuple[int, str]]:
        """(former ``idx``, reason) of every event row moved to quarantine, oldest first."""
        return [(int(i), str(r)) for i, r in self._db.execute("SELECT idx, reason FROM quarantine ORDER BY id")]

    def quarantine(self, hashes: Iterable[tuple[bytes, str]]) -> int:
        """Move the stored events with these hashes (and reasons) to quarantine; return how many moved.

        The consensus order of their segments and the snapshots are derived from the
        events, so they are dropped too (one transaction), to be derived again by :func:`replay`.
        """
        wanted = list(hashes)
        rows = []
        for h, reason in wanted:
            row = self._db.execute("SELECT idx FROM events WHERE hash = ?", (h,)).fetchone()
            if row is not None:
                rows.append((int(row[0]), reason))
        self._quarantine(rows)
        return len(rows)

    def _quarantine(self, rows: list[tuple[int, str]]) -> None:
        if not rows:
            return
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("DELETE FROM snapshots")
                for idx, _ in rows:
                    self._db.execute("DELETE FROM consensus_order WHERE epoch = "
                                     "(SELECT epoch FROM events WHERE idx = ?)", (idx,))
                for idx, reason in rows:
                    self._db.execute("INSERT INTO quarantine (idx, hash, body, reason) "
                                     "SELECT idx, hash, body, ? FROM events WHERE idx = ?", (reason[:500], idx))
                    self._db.execute("DELETE FROM events WHERE idx = ?", (idx,))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot quarantine events in {self.path}: {exc}") from exc
        for idx, reason in rows:
            log.warning("ledger store: event row %d quarantined: %s", idx, reason[:200])
        log.warning("ledger store %s: %d event rows quarantined; the consensus order and snapshots are "
                    "derived again", self.path, len(rows))

    def load(self, epoch: int = 0) -> tuple[list[Event], list[bytes]]:
        """Segment ``epoch``'s (events in insertion order, ordered event hashes); checks the database's invariants.

        An event row that does not decode, or whose columns do not match its
        body, is quarantined (see :meth:`quarantine`) instead of failing the load.
        """
        try:
            check = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise StoreError(f"{self.path}: integrity check failed: {check}")
            events: list[Event] = []
            bad: list[tuple[int, str]] = []
            for idx, h, creator, seq, body in self._db.execute(
                    "SELECT idx, hash, creator, seq, body FROM events WHERE epoch = ? ORDER BY idx", (epoch,)):
                ev = _decode_row(h, creator, seq, body, epoch)
                if isinstance(ev, Event):
                    events.append(ev)
                else:
                    bad.append((int(idx), ev))
            self._quarantine(bad)
            order: list[bytes] = []
            for pos, h in self._db.execute("SELECT position, event_hash FROM consensus_order WHERE epoch = ? "
                                           "ORDER BY position", (epoch,)):
                if pos != len(order):
                    raise StoreError(f"consensus order of epoch {epoch} has a gap at position {len(order)}")
                order.append(bytes(h))
            orphan = self._db.execute(
                "SELECT COUNT(*) FROM consensus_order o LEFT JOIN events e ON e.hash = o.event_hash "
                "WHERE o.epoch = ? AND (e.hash IS NULL OR e.epoch != o.epoch)", (epoch,)).fetchone()[0]
            if orphan:
                raise StoreError(f"{orphan} order rows of epoch {epoch} name events that are not stored in it")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read {self.path}: {exc}") from exc
        return events, order


def _decode_row(h: object, creator: object, seq: object, body: object, epoch: int = 0) -> Event | str:
    """The event of a stored row, or why the row is unusable (it does not decode or its columns disagree)."""
    if not isinstance(body, bytes):
        return f"body is {type(body).__name__}, not a blob"
    try:
        ev = decode_event(body)
    except EventError as exc:
        return str(exc)
    if ev.hash != h or ev.creator != creator or ev.seq != seq or ev.epoch != epoch:
        return "columns do not match its body"
    return ev


def _bind(conn: sqlite3.Connection, path: Path, network: Network) -> None:
    row = conn.execute("SELECT chain_id, genesis_hash FROM network").fetchone()
    if row is None:
        conn.execute("INSERT INTO network (one, chain_id, genesis_hash) VALUES (1, ?, ?)",
                     (network.chain_id, network.genesis_hash))
        return
    held = Network(str(row[0]), bytes(row[1]))
    if held != network:
        raise NetworkMismatch(f"the ledger {path} belongs to {held}, not to this peer's {network}; "
                              "move it aside (or start the testnet with --reset) to begin a new ledger")


def _schema_message(path: Path, version: object) -> str:
    if version == 1:
        return (f"the ledger store {path} has schema version 1 (one hashgraph), this peer needs version "
                f"{SCHEMA_VERSION} (one hashgraph per epoch): stop the peer, move the file aside (mv {path} "
                f"{path}.v1) and start it again; it resyncs the ledger from the other peers")
    return (f"the ledger store {path} has schema version {version!r}, this peer reads version {SCHEMA_VERSION}: "
            "move the file aside to resync the ledger from the other peers")


def replay(store: Store, validators: ValidatorSet, *, coin_period: int = DEFAULT_COIN_PERIOD,
           verify: bool = True, epoch: int = 0) -> Hashgraph:
    """Rebuild segment ``epoch``'s hashgraph from ``store``; check and complete its stored order.

    Stored events that do not decode or do not insert (bad signature, missing
    parent, ...) are quarantined with a log line (:meth:`Store.quarantine`) and
    the order is derived again without them. Raises :class:`StoreError` if the
    database is unusable or the stored order is not a prefix of the order the
    events produce (a stored order that nothing explains is never rewritten).
    """
    events, stored = store.load(epoch)
    hg = Hashgraph(validators, coin_period=coin_period, verify=verify, epoch=epoch)
    bad: list[tuple[bytes, str]] = []
    for i, ev in enumerate(events):
        try:
            hg.insert(ev)
        except InsertError as exc:
            bad.append((ev.hash, f"stored event {i} does not insert: {exc}"))
    if bad:
        store.quarantine(bad)
        stored = []
    derived = hg.order_hashes()
    if derived[:len(stored)] != stored:
        at = next((i for i, (a, b) in enumerate(zip(derived, stored)) if a != b), len(derived))
        raise StoreError(f"stored consensus order of epoch {epoch} diverges from the replayed one at position {at}")
    if len(derived) > len(stored):
        store.append_order(derived[len(stored):], epoch)
    return hg
