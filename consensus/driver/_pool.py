"""The query pool: pending queries and the signed answers (and judges' verdicts) gathered for each.

Pure bookkeeping (times are passed in, in ms): the driver adds verified
queries and answers, asks which query is ready to be decided, and marks
decided ones. Bounds: ``max_pending`` queries, each with one answer and one
verdict per validator; answers that overtook their
query for at most ``max_orphans`` query ids (one per validator each); the
ids of the last ``max_decided`` decided queries (a value re-proposing a
query decided that long ago is no longer recognised as decided: about 4 MB
for the default 65,536).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from consensus.messages import Answer, Query, Signed, Verdict, query_id_of
from consensus.validators import ValidatorSet

__all__ = ["PendingQuery", "QueryPool", "PoolFull"]


class PoolFull(Exception):
    """The pool holds its maximum number of pending queries."""


@dataclass
class PendingQuery:
    """A query not yet decided, with its answers by peer id and when things happened."""

    query: Signed[Query]
    query_id: bytes
    arrived: float
    answers: dict[str, Signed[Answer]] = field(default_factory=dict)
    quorum_at: float | None = None
    verdicts: dict[str, Signed[Verdict]] = field(default_factory=dict)  # judges' (ADR 0022), one per judge


class QueryPool:
    """Pending queries in arrival order, their answers, and the ids already decided."""

    def __init__(self, validators: ValidatorSet, *, max_pending: int = 256, max_orphans: int = 1024,
                 max_decided: int = 65_536) -> None:
        self._validators = validators
        self._pending: dict[bytes, PendingQuery] = {}
        self._orphans: dict[bytes, dict[str, Signed[Answer]]] = {}
        self._decided: OrderedDict[bytes, None] = OrderedDict()
        self._max_pending = max_pending
        self._max_orphans = max_orphans
        self._max_decided = max_decided

    def __len__(self) -> int:
        return len(self._pending)

    def statistics(self) -> dict[str, int]:
        """Table sizes (each bounded: see the module docstring)."""
        return {"pending": len(self._pending), "orphan_queries": len(self._orphans),
                "orphan_answers": sum(len(b) for b in self._orphans.values()), "decided_ids": len(self._decided)}

    def pending(self) -> list[PendingQuery]:
        """Pending queries in arrival order."""
        return list(self._pending.values())

    def set_validators(self, validators: ValidatorSet, now: float) -> list[PendingQuery]:
        """Weigh answers with the set in force at the current height; return the queries dropped.

        At an epoch boundary members change: a query whose entry peer is no
        longer a validator is dropped (a value must carry a query signed by
        one), as are answers of peers that are no longer validators (a value
        may not carry them); a query whose remaining answers carry no quorum
        waits for more."""
        self._validators = validators
        dropped = [e for e in self._pending.values() if e.query.signer not in validators]
        for entry in dropped:
            del self._pending[entry.query_id]
        for entry in self._pending.values():
            gone = [p for p in entry.answers if p not in validators]
            for p in gone:
                del entry.answers[p]
            entry.verdicts = {p: v for p, v in entry.verdicts.items() if p in validators}
            if gone and entry.quorum_at is not None and not validators.has_quorum(self.answer_weight(entry)):
                entry.quorum_at = None
        for qid, bucket in list(self._orphans.items()):
            for p in [p for p in bucket if p not in validators]:
                del bucket[p]
            if not bucket:
                del self._orphans[qid]
        for entry in self._pending.values():
            if entry.quorum_at is None and validators.has_quorum(self.answer_weight(entry)):
                entry.quorum_at = now
        return dropped

    def get(self, query_id: bytes) -> PendingQuery | None:
        return self._pending.get(query_id)

    def is_decided(self, query_id: bytes) -> bool:
        return query_id in self._decided

    def add_query(self, query: Signed[Query], now: float) -> PendingQuery | None:
        """Add a new query; None if it is known or decided. Raises :class:`PoolFull`."""
        qid = query_id_of(query.envelope)
        if qid in self._pending or qid in self._decided:
            return None
        if len(self._pending) >= self._max_pending:
            raise PoolFull(f"{len(self._pending)} queries are pending")
        entry = PendingQuery(query=query, query_id=qid, arrived=now)
        self._pending[qid] = entry
        for answer in self._orphans.pop(qid, {}).values():
            self._add_to(entry, answer, now)
        return entry

    def add_answer(self, answer: Signed[Answer], now: float) -> bool:
        """Record an answer; False if it is a duplicate or for a decided query.

        Answers may overtake their query; they wait (bounded) until it arrives.
        """
        qid = answer.message.query_id
        if qid in self._decided:
            return False
        entry = self._pending.get(qid)
        if entry is None:
            bucket = self._orphans.get(qid)
            if bucket is None:
                if len(self._orphans) >= self._max_orphans:
                    return False
                bucket = self._orphans[qid] = {}
            if answer.signer in bucket or answer.signer not in self._validators:
                return False
            bucket[answer.signer] = answer
            return True
        return self._add_to(entry, answer, now)

    def _add_to(self, entry: PendingQuery, answer: Signed[Answer], now: float) -> bool:
        if answer.signer in entry.answers or answer.signer not in self._validators:
            return False
        entry.answers[answer.signer] = answer
        if entry.quorum_at is None and self._validators.has_quorum(self.answer_weight(entry)):
            entry.quorum_at = now
        return True

    def add_verdict(self, verdict: Signed[Verdict]) -> PendingQuery | None:
        """Keep a judge's verdict on a pending query (its query, if it rates more answers than the one kept);
        the query's entry if it was kept, else ``None`` (unknown or decided query, not a validator, stale)."""
        entry = self._pending.get(verdict.message.query_id)
        if entry is None or verdict.signer not in self._validators:
            return None
        kept = entry.verdicts.get(verdict.signer)
        if kept is not None and len(kept.message.verdicts) >= len(verdict.message.verdicts):
            return None
        entry.verdicts[verdict.signer] = verdict
        return entry

    def answer_weight(self, entry: PendingQuery) -> int:
        return self._validators.weight_of_set(entry.answers)

    def next_ready(self) -> PendingQuery | None:
        """The oldest pending query whose answers carry more than 2/3 of the weight."""
        for entry in self._pending.values():
            if entry.quorum_at is not None:
                return entry
        return None

    def ready(self, limit: int) -> list[PendingQuery]:
        """The oldest ``limit`` pending queries whose answers carry more than 2/3 of the weight, oldest first."""
        out: list[PendingQuery] = []
        for entry in self._pending.values():
            if len(out) >= limit:
                break
            if entry.quorum_at is not None:
                out.append(entry)
        return out

    def expired(self, now: float, wait_s: float) -> list[PendingQuery]:
        """Remove and return queries that waited ``wait_s`` without an answer quorum."""
        gone = [e for e in self._pending.values() if e.quorum_at is None and now - e.arrived >= wait_s]
        for entry in gone:
            del self._pending[entry.query_id]
        return gone

    def discard(self, query_id: bytes) -> None:
        """Forget a pending query without deciding it."""
        self._pending.pop(query_id, None)

    def mark_decided(self, query_id: bytes) -> PendingQuery | None:
        self._decided[query_id] = None
        self._decided.move_to_end(query_id)
        while len(self._decided) > self._max_decided:
            self._decided.popitem(last=False)
        self._orphans.pop(query_id, None)
        return self._pending.pop(query_id, None)
