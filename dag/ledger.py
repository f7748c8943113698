"""Ledger state derived only from the ordered transactions.

Every transaction is canonical msgpack of a map with a ``type``:

* ``certificate``: ``{type, height >= 1, cert: bytes}``, ``cert`` the JSON
  certificate of the WBFT decision at ``height`` (UTF-8 JSON object whose
  ``height`` equals ``height`` and with a 64-hex ``value_id``). A ledger
  given a ``chain`` and a ``commit_check`` checks it with
  ``commit_check(cert, chain)`` against the validator set *its own chain*
  computed for that height (``multillmn.certificate.verify_commit``), which
  under adaptive weights it can do only once the chain has folded the
  height before: a certificate for a later height waits, at most one per
  (height, event creator) and at most :data:`MAX_AHEAD` heights ahead, and
  the waiting ones are tried in ledger order when the chain gets there.
  Without a chain, ``certificate_check(cert)`` (if given) verifies it. The
  first valid certificate for a height decides it; a later one with the same
  ``value_id`` is a duplicate, one with another ``value_id`` is a conflict;
  both are ignored and counted. A refused certificate whose precommits are
  validly signed by validators who precommitted another value in the same
  round of that height becomes duplicate-vote evidence (in ``evidence``, and
  handed to ``on_evidence``); every refused certificate is also handed to
  ``on_refused``, so a runner can show its precommits to its consensus core,
  which catches a signer that precommits the real value in the same round.
* ``weights``: ``{type, height >= 1, weights: {peer_id: int > 0}}``, the
  weights that apply from ``height``; the first for a height wins. A ledger
  given a ``chain`` (:class:`consensus.chain.Chain`, as every peer's is)
  ignores these and *derives* the weights instead: it folds the certified
  values in height order through the chain and records the weights in force
  at every height where they change, so they are the ones the consensus core
  used; a certificate whose validator set differs is counted under
  ``certificate set differs``.
* ``evidence``: ``{type, kind: str, peer_id, data: bytes}``, misbehaviour
  proof, kept once. For ``kind == "fork"`` (:func:`fork_evidence_tx`),
  ``data`` packs the two encoded events, which must decode, be by
  ``peer_id``, share a seq and differ (and verify, given ``public_key_of``);
  one fork record is kept per (creator, seq).
* ``membership``: ``{type, action: "join" | "leave", peer_id, public_key}``,
  ``public_key`` 32 bytes whose derived id is ``peer_id``.

Anything else (not msgpack, not a map, unknown ``type``, bad fields) is
ignored and counted by reason, so every peer derives the same state from the
same order. :meth:`Ledger.state_hash` is SHA-256 of the canonical state.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from consensus.chain import Chain
from consensus.evidence import EVIDENCE_KINDS, DuplicateVoteEvidence, Evidence, decode_evidence
from consensus.messages import MessageError, Signed, Value, Vote, decode_value
from consensus.validators import ValidatorSet
from dag.event import MAX_TRANSACTION_BYTES, Event, EventError, decode_event, encode_event, verify_event
from dag.hashgraph import ForkEvidence
from multillmn import canonical, jsonsafe
from multillmn.certificate import certificate_precommits
from multillmn.identity import PeerId, is_peer_id, peer_id_of

__all__ = ["Ledger", "LedgerEntry", "TX_TYPES", "MAX_PAGE", "certificate_tx", "weights_tx", "evidence_tx",
           "fork_evidence_tx", "membership_tx"]

TX_TYPES = ("certificate", "weights", "evidence", "membership")
MAX_PAGE = 1000
MAX_AHEAD = 64
"""Heights beyond the chain's next one for which certificates wait to be checked."""
_PRECOMMITS_KEPT = 16
"""Recent certified heights whose precommits are kept, to blame signers of conflicting certificates."""
_MAX_HEIGHT = 2**62

CommitCheck = Callable[[Any, Chain], Value]
"""Checks a certificate for the chain's next height against the chain; returns the value, raises ValueError."""


@dataclass(frozen=True)
class LedgerEntry:
    """One applied transaction: its index among applied ones, where it came from, and what it was."""

    index: int
    position: int
    event_hash: bytes
    type: str
    tx: bytes


class _Skip(Exception):
    """A transaction is ignored; the message is the counted reason."""


def certificate_tx(height: int, cert_json: bytes) -> bytes:
    return canonical.pack({"type": "certificate", "height": height, "cert": cert_json})


def weights_tx(height: int, weights: dict[PeerId, int]) -> bytes:
    return canonical.pack({"type": "weights", "height": height, "weights": weights})


def evidence_tx(kind: str, peer_id: PeerId, data: bytes) -> bytes:
    return canonical.pack({"type": "evidence", "kind": kind, "peer_id": peer_id, "data": data})


def fork_evidence_tx(evidence: ForkEvidence) -> bytes:
    pair = sorted((encode_event(evidence.first), encode_event(evidence.second)))
    return evidence_tx("fork", evidence.creator, canonical.pack(pair))


def membership_tx(action: str, peer_id: PeerId, public_key: bytes) -> bytes:
    return canonical.pack({"type": "membership", "action": action, "peer_id": peer_id, "public_key": public_key})


def _height(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < _MAX_HEIGHT:
        raise _Skip("bad height")
    return value


def _keys(tx: dict[str, Any], keys: set[str]) -> None:
    if set(tx) != keys:
        raise _Skip("bad fields")


class Ledger:
    """The state machine fed by the consensus order; ``apply`` is its only input."""

    def __init__(self, certificate_check: Callable[[Any], None] | None = None,
                 public_key_of: Callable[[PeerId], bytes | None] | None = None,
                 chain: Chain | None = None, commit_check: CommitCheck | None = None) -> None:
        self._check = certificate_check
        self._key_of = public_key_of
        self._chain = chain
        self._commit_check = commit_check
        self.on_evidence: Callable[[Evidence], None] | None = None
        self.on_refused: Callable[[int, dict[str, Any]], None] | None = None
        self.position = 0
        self.answers: dict[int, bytes] = {}
        self._value_ids: dict[int, str] = {}
        self._precommits: dict[int, dict[tuple[int, PeerId], Signed[Vote]]] = {}  # recent certified heights
        self._waiting: dict[int, dict[PeerId, tuple[bytes, dict[str, Any]]]] = {}  # height -> creator -> cert
        self.weights: dict[int, dict[PeerId, int]] = {}
        self.evidence: list[dict[str, Any]] = []
        self._evidence_ids: set[bytes] = set()
        self.membership: dict[PeerId, bytes] = {}
        self.ignored: dict[str, int] = {}
        self._log: list[LedgerEntry] = []
        self.epoch_sets: dict[int, ValidatorSet] = {}
        """The validator set in force at the first height of every epoch the chain reached, recorded as the
        chain folds the height before it: the committee of that epoch's ledger segment (``peers/ledger/``,
        which forgets those of sealed segments). Derived from the answers, so not part of the state."""

    @property
    def chain(self) -> Chain | None:
        """The chain this ledger folds certified values into (None: certificates checked without one)."""
        return self._chain

    def certified_through(self) -> int:
        """The highest height ``h`` such that every height up to ``h`` is certified here (folded, with a chain)."""
        if self._chain is not None and self._chain.adaptive:
            return self._chain.height
        h = 0
        while h + 1 in self.answers:
            h += 1
        return h

    # --- input -----------------------------------------------------------
    def apply(self, events: Iterable[Event]) -> int:
        """Apply the transactions of consensus-ordered events; return how many were accepted."""
        accepted = 0
        for ev in events:
            for tx in ev.transactions:
                pos = self.position
                self.position += 1
                try:
                    kind = self._apply_tx(tx, ev.creator)
                except _Skip as skip:
                    reason = str(skip)
                    self.ignored[reason] = self.ignored.get(reason, 0) + 1
                    continue
                self._log.append(LedgerEntry(len(self._log), pos, ev.hash, kind, tx))
                accepted += 1
        return accepted

    def _apply_tx(self, raw: bytes, creator: PeerId) -> str:
        try:
            tx = canonical.unpack(raw)
        except canonical.CanonicalError:
            raise _Skip("malformed") from None
        if not isinstance(tx, dict) or not isinstance(tx.get("type"), str):
            raise _Skip("malformed")
        kind = tx["type"]
        if kind == "certificate":
            self._certificate(tx, creator)
        elif kind == "weights":
            self._weights(tx)
        elif kind == "evidence":
            self._evidence(tx)
        elif kind == "membership":
            self._membership(tx)
        else:
            raise _Skip("unknown type")
        return str(kind)

    def _certificate(self, tx: dict[str, Any], creator: PeerId) -> None:
        _keys(tx, {"type", "height", "cert"})
        height = _height(tx["height"])
        blob = tx["cert"]
        if not isinstance(blob, bytes):
            raise _Skip("bad certificate")
        try:
            cert = jsonsafe.loads(blob, max_bytes=MAX_TRANSACTION_BYTES)
        except jsonsafe.JsonError:
            raise _Skip("bad certificate") from None
        value_id = cert.get("value_id") if isinstance(cert, dict) else None
        if (not isinstance(cert, dict) or type(cert.get("height")) is not int or cert["height"] != height
                or not isinstance(value_id, str)
                or len(value_id) != 64 or any(ch not in "0123456789abcdef" for ch in value_id)):
            raise _Skip("bad certificate")
        if height in self.answers:
            if self._value_ids[height] != value_id:
                self._blame(height, cert)
                raise _Skip("conflicting certificate")
            raise _Skip("duplicate certificate")
        chain = self._chain
        if chain is not None and self._commit_check is not None and chain.adaptive and height > chain.height + 1:
            if height > chain.height + 1 + MAX_AHEAD:
                raise _Skip("certificate too far ahead")
            waiting = self._waiting.setdefault(height, {})
            if creator in waiting:
                raise _Skip("second waiting certificate of a creator")
            waiting[creator] = (blob, cert)
            return
        self._accept(height, blob, cert)
        self._fold()

    def _accept(self, height: int, blob: bytes, cert: dict[str, Any]) -> None:
        """Check a certificate for ``height`` (under adaptive weights: the chain's next height); record it."""
        chain = self._chain
        try:
            if chain is not None and self._commit_check is not None:
                self._commit_check(cert, chain)
            elif self._check is not None:
                self._check(cert)
        except ValueError:
            self._blame(height, cert)
            if self.on_refused is not None:
                self.on_refused(height, cert)
            raise _Skip("unverified certificate") from None
        self.answers[height] = blob
        self._value_ids[height] = str(cert["value_id"])

    def _remember_precommits(self, height: int, cert: dict[str, Any], chain: Chain) -> None:
        self._precommits[height] = {(v.message.round, v.signer): v
                                    for v in certificate_precommits(cert, chain.validators_at(height).public_key_of,
                                                                    chain.chain_id)}
        for h in [h for h in self._precommits if h <= height - _PRECOMMITS_KEPT]:
            del self._precommits[h]

    def _blame(self, height: int, cert: Any) -> None:
        """Duplicate-vote evidence against validators whose precommits in a refused certificate conflict with
        their own precommits for the value certified at ``height`` (when both are known)."""
        accepted = self._precommits.get(height)
        chain = self._chain
        if not accepted or chain is None:
            return
        for vote in certificate_precommits(cert, chain.validators_at(height).public_key_of, chain.chain_id):
            mine = accepted.get((vote.message.round, vote.signer))
            if mine is None or vote.message.height != height or mine.message.value_id == vote.message.value_id:
                continue
            ev = DuplicateVoteEvidence(first=mine.envelope, second=vote.envelope)
            entry = {"type": "evidence", "kind": "duplicate_vote", "peer_id": vote.signer,
                     "data": canonical.pack(ev.body())}
            ident = canonical.digest(entry)
            if ident in self._evidence_ids:
                continue
            self._evidence_ids.add(ident)
            self.evidence.append(entry)
            if self.on_evidence is not None:
                self.on_evidence(ev)

    def _fold(self, *, count: bool = True) -> None:
        """Fold certified values into the chain in height order; record the derived weights."""
        chain = self._chain
        while chain is not None:
            h = chain.height + 1
            if h not in self.answers and not self._try_waiting(h):
                return
            cert = json.loads(self.answers[h].decode("utf-8"))
            if self._commit_check is not None:
                self._remember_precommits(h, cert, chain)
            try:
                value = decode_value(canonical.unpack(base64.b64decode(cert["value"])))
                chain.apply(h, value)
            except (KeyError, TypeError, ValueError, canonical.CanonicalError):
                self._chain = None  # cannot happen for verified certificates; stop deriving rather than guess
                self.ignored["underivable weights"] = self.ignored.get("underivable weights", 0) + 1
                return
            weights = {v.peer_id: v.weight for v in chain.validators_at(h)}
            mp = chain.membership_params
            if mp is not None and chain.adaptive and h % mp.epoch_length == 0:  # h + 1 opens an epoch
                self.epoch_sets[mp.epoch_of(h + 1)] = chain.validators_at(h + 1)
            if self.weights_at(h) != weights:
                self.weights[h] = weights
            carried = cert.get("validators")
            if count and isinstance(carried, list) and [
                    (v.get("peer_id"), v.get("weight")) for v in carried if isinstance(v, dict)
            ] != sorted(weights.items()):
                self.ignored["certificate set differs"] = self.ignored.get("certificate set differs", 0) + 1

    def _try_waiting(self, height: int) -> bool:
        """Check the certificates waiting for ``height`` in ledger order; True once one is accepted."""
        accepted = False
        for blob, cert in self._waiting.pop(height, {}).values():
            try:
                if not accepted:
                    self._accept(height, blob, cert)
                    accepted = True
                elif self._value_ids[height] == cert["value_id"]:
                    raise _Skip("duplicate certificate")
                else:
                    self._blame(height, cert)
                    raise _Skip("conflicting certificate")
            except _Skip as skip:
                self.ignored[str(skip)] = self.ignored.get(str(skip), 0) + 1
        return accepted

    def _weights(self, tx: dict[str, Any]) -> None:
        _keys(tx, {"type", "height", "weights"})
        if self._chain is not None:
            raise _Skip("derived weights")
        height = _height(tx["height"])
        table = tx["weights"]
        if not isinstance(table, dict) or not table or not all(
                is_peer_id(k) and not isinstance(v, bool) and isinstance(v, int) and 0 < v <= 2**60
                for k, v in table.items()):
            raise _Skip("bad weights")
        if height in self.weights:
            raise _Skip("duplicate weights")
        self.weights[height] = dict(sorted(table.items()))

    def _evidence(self, tx: dict[str, Any]) -> None:
        _keys(tx, {"type", "kind", "peer_id", "data"})
        if (not isinstance(tx["kind"], str) or not 0 < len(tx["kind"]) <= 64 or not is_peer_id(tx["peer_id"])
                or not isinstance(tx["data"], bytes)):
            raise _Skip("bad evidence")
        ident = self._fork_key(tx) if tx["kind"] == "fork" else canonical.digest(tx)
        if ident in self._evidence_ids:
            raise _Skip("duplicate evidence")
        self._evidence_ids.add(ident)
        self.evidence.append(dict(tx))
        if tx["kind"] in EVIDENCE_KINDS and self.on_evidence is not None:
            try:  # another peer caught it: this peer's values carry it too, so every chain applies it
                ev = decode_evidence(canonical.unpack(tx["data"]))
            except (canonical.CanonicalError, MessageError):
                return
            self.on_evidence(ev)

    def _fork_key(self, tx: dict[str, Any]) -> bytes:
        try:
            pair = canonical.unpack(tx["data"])
            if not isinstance(pair, tuple) or len(pair) != 2 or not all(isinstance(p, bytes) for p in pair):
                raise _Skip("bad evidence")
            first, second = decode_event(pair[0]), decode_event(pair[1])
        except (canonical.CanonicalError, EventError):
            raise _Skip("bad evidence") from None
        if (first.creator != tx["peer_id"] or second.creator != first.creator or first.seq != second.seq
                or first.hash == second.hash):
            raise _Skip("bad evidence")
        if self._key_of is not None and (verify_event(first, self._key_of) or verify_event(second, self._key_of)):
            raise _Skip("bad evidence")
        return canonical.digest(["fork", first.creator, first.seq])

    def _membership(self, tx: dict[str, Any]) -> None:
        _keys(tx, {"type", "action", "peer_id", "public_key"})
        pid, key, action = tx["peer_id"], tx["public_key"], tx["action"]
        if action not in ("join", "leave") or not isinstance(key, bytes) or len(key) != 32 \
                or peer_id_of(key) != pid:
            raise _Skip("bad membership")
        if action == "join":
            self.membership[pid] = key
        elif self.membership.pop(pid, None) is None:
            raise _Skip("leave of a non-member")

    # --- reads ---------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._log)

    def page(self, offset: int = 0, limit: int = 100) -> list[LedgerEntry]:
        """Applied transactions ``[offset, offset + limit)``; ``limit`` is capped at :data:`MAX_PAGE`."""
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValueError("offset must be a non-negative integer")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError("limit must be a non-negative integer")
        return self._log[offset:offset + min(limit, MAX_PAGE)]

    def weights_at(self, height: int) -> dict[PeerId, int] | None:
        """The weights in force at ``height``: the latest set declared for a height <= ``height``."""
        best = max((h for h in self.weights if h <= height), default=None)
        return None if best is None else dict(self.weights[best])

    def _state(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "answers": [[h, self.answers[h]] for h in sorted(self.answers)],
            "weights": [[h, self.weights[h]] for h in sorted(self.weights)],
            "evidence": list(self.evidence),
            "membership": [[p, self.membership[p]] for p in sorted(self.membership)],
            "ignored": dict(self.ignored),
            "waiting": [[h, [[c, blob] for c, (blob, _) in self._waiting[h].items()]] for h in sorted(self._waiting)],
        }

    def state_hash(self) -> bytes:
        """SHA-256 of the canonical state (position, answers, weights, evidence, membership, ignored)."""
        return canonical.digest(self._state())

    # --- snapshots -------------------------------------------------------------
    def snapshot(self) -> bytes:
        """Canonical bytes of the state and the applied-transaction log (for :class:`dag.Store`)."""
        state = self._state()
        state["log"] = [[e.position, e.event_hash, e.type, e.tx] for e in self._log]
        return canonical.pack(state)

    @classmethod
    def restore(cls, data: bytes, certificate_check: Callable[[Any], None] | None = None,
                public_key_of: Callable[[PeerId], bytes | None] | None = None,
                chain: Chain | None = None, commit_check: CommitCheck | None = None) -> Ledger:
        """Rebuild a ledger from :meth:`snapshot` bytes (raises ``ValueError`` if malformed).

        A fresh ``chain`` is brought back to the snapshot by folding its certified values again.
        Snapshots are local data, read with wider bounds than the wire's: at most 1 GiB and
        2^24 items per list (the log holds one entry per applied transaction, so a busy ledger
        passes the wire's 65,536 soon; 2^24 entries of at least 40 bytes each fill about 670 MB).
        """
        try:
            raw = canonical.unpack(data, max_len=1 << 30, max_array_len=1 << 24)
            led = cls(certificate_check, public_key_of, chain, commit_check)
            led.position = int(raw["position"])
            for h, blob in raw["answers"]:
                led.answers[h] = blob
                led._value_ids[h] = jsonsafe.loads(blob, max_bytes=MAX_TRANSACTION_BYTES)["value_id"]
            led.weights = {h: dict(w) for h, w in raw["weights"]}
            for ev in raw["evidence"]:
                ev = dict(ev)
                led.evidence.append(ev)
                led._evidence_ids.add(led._fork_key(ev) if ev["kind"] == "fork" else canonical.digest(ev))
            led.membership = {p: k for p, k in raw["membership"]}
            led.ignored = dict(raw["ignored"])
            for h, entries in raw["waiting"]:
                led._waiting[h] = {c: (blob, jsonsafe.loads(blob, max_bytes=MAX_TRANSACTION_BYTES))
                                   for c, blob in entries}
            led._log = [LedgerEntry(i, pos, h, t, tx) for i, (pos, h, t, tx) in enumerate(raw["log"])]
        except (canonical.CanonicalError, KeyError, TypeError, ValueError, AttributeError, RecursionError,
                _Skip) as exc:
            raise ValueError(f"malformed ledger snapshot: {exc}") from None
        if canonical.pack(led._state() | {"log": raw["log"]}) != data:
            raise ValueError("ledger snapshot is not canonical")
        led._fold(count=False)
        return led
