"""The hashgraph: weighted virtual voting over a DAG of signed events (pure, deterministic).

This follows L. Baird, *The Swirlds Hashgraph Consensus Algorithm* (Swirlds
TR-2016-02), with **weights instead of member counts**: every "more than 2n/3
members" of the paper reads "creators whose weights sum to more than 2/3 of
the total", tested with integers as ``3*w > 2*T`` (``ValidatorSet.has_quorum``).
A creator of weight ``k`` behaves exactly like ``k`` members that always agree.

Normative definitions, for events ``x``, ``y`` inserted parents-first:

* **ancestor**: ``y`` is an ancestor of ``x`` if ``y == x`` or ``y`` is an
  ancestor of a parent of ``x``. **self-ancestor**: the same along self-parents.
* **fork**: two events by one creator neither of which is a self-ancestor of
  the other (equivalently, two events with the same ``seq``). Inserting the
  second reports :class:`ForkEvidence`.
* **see**: ``x`` sees ``y`` if ``y`` is an ancestor of ``x`` and no fork by
  ``y``'s creator is among the ancestors of ``x`` (the paper's definition: a
  fork is never seen, so a forker cannot make two views both count).
* **strongly see**: ``x`` strongly sees ``y`` if ``x`` sees ``y`` and the
  creators ``c`` for which some event ``z`` by ``c`` has ``x`` seeing ``z``
  and ``z`` seeing ``y`` carry more than 2/3 of the weight.
* **round**: an event without parents has round 1; otherwise let ``r`` be the
  largest round of its parents; the event has round ``r + 1`` if it strongly
  sees round-``r`` witnesses whose creators carry more than 2/3 of the
  weight, else round ``r``. A **witness** is an event with no self-parent or
  a round above its self-parent's.
* **fame** (``decideFame``): for a round-``r`` witness ``x`` and a
  round-``R`` witness ``y`` (``d = R - r``): if ``d == 1`` ``y`` votes "``y``
  sees ``x``". Otherwise let ``S`` be the round-``R-1`` witnesses ``y``
  strongly sees, ``yes``/``no`` the weights of their creators voting
  yes/no, ``v = yes >= no`` and ``t`` the weight voting ``v``. In a normal
  round (``d mod C != 0``) ``y`` votes ``v`` and, if ``t`` is more than 2/3
  of the total, ``x``'s fame is decided as ``v``. In a coin round
  (``d mod C == 0``) ``y`` votes ``v`` if ``t`` is more than 2/3, else the
  coin: bit 0 of byte 32 of ``y``'s signature (the low bit of Ed25519's
  ``S`` half, the paper's "middle bit"). ``C`` (``coin_period``) is at least 3.
* **round received**: rounds are processed in increasing order; round ``r``
  is processed once every known round-``r`` witness has decided fame. Its
  **unique famous witnesses** ``U`` are the famous ones whose creator has no
  other famous witness in round ``r``. An event not yet ordered is received
  in round ``r`` if it is an ancestor of every member of ``U`` (and ``U`` is
  not empty). A witness that arrives after its round was processed is never
  famous (the paper proves its election decides "no"; it is not run).
* **consensus timestamp**: for each ``w`` in ``U``, the timestamp of the
  earliest self-ancestor of ``w`` that has the event as an ancestor; the
  consensus timestamp is the **weighted lower median** of these, each
  weighted by ``w``'s creator's weight (the smallest ``t`` such that the
  weight at or below ``t`` is at least half of ``U``'s weight). With equal
  weights this is the paper's median (lower one for even counts); with
  weights it is the paper's median over the equivalent unit members, so a
  side holding less than half of ``U``'s weight cannot move it past every
  timestamp of the other side.
* **order**: by (round received, consensus timestamp, whitened signature,
  hash), where the whitened signature is the signature, as a big-endian
  integer, XOR the XOR of the signatures of ``U``.

Efficiency: each event keeps "last ancestors" (per creator, the highest
``seq`` among its ancestors and that event), so ancestry and strong seeing
are O(1) and O(n) lookups; skew-binary jump pointers answer "the
self-ancestor at seq k" in O(log k); fork bookkeeping (per-event sets of
visible forkers and their branch tips) costs nothing until a fork exists.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from consensus.validators import ValidatorSet
from dag.event import Event, verify_event
from multillmn.identity import PeerId

__all__ = ["DEFAULT_COIN_PERIOD", "ForkEvidence", "Hashgraph", "InsertError", "MissingParent"]

DEFAULT_COIN_PERIOD = 10
_EMPTY: frozenset[int] = frozenset()


class InsertError(ValueError):
    """An event cannot join the graph (bad signature, unknown creator, broken parent rules)."""


class MissingParent(InsertError):
    """A parent of the event is not in the graph yet: fetch it (sync) and retry."""

    def __init__(self, message: str, missing: bytes) -> None:
        super().__init__(message)
        self.missing = missing


@dataclass(frozen=True)
class ForkEvidence:
    """Two signed events by one creator with the same ``seq``: proof that it forked."""

    first: Event
    second: Event

    @property
    def creator(self) -> PeerId:
        return self.first.creator

    @property
    def seq(self) -> int:
        return self.first.seq


class Hashgraph:
    """One peer's copy of the DAG and its consensus order; ``insert`` is the only input."""

    def __init__(self, validators: ValidatorSet, *, coin_period: int = DEFAULT_COIN_PERIOD,
                 verify: bool = True, epoch: int = 0) -> None:
        """The DAG of ``epoch``'s members (``validators``); events of another epoch are refused."""
        if isinstance(coin_period, bool) or not isinstance(coin_period, int) or coin_period < 3:
            raise ValueError(f"coin_period must be an integer >= 3, got {coin_period!r}")
        self.epoch = epoch
        self._vs = validators
        self._ids = validators.ids
        self._cidx = {p: i for i, p in enumerate(self._ids)}
        self._w = [validators.weight_of(p) for p in self._ids]
        self._total = validators.total
        self._coin = coin_period
        self._verify = verify
        # Per event, indexed by local insertion position (never used to decide anything).
        self._ev: list[Event] = []
        self._idx: dict[bytes, int] = {}
        self._cr: list[int] = []
        self._seq: list[int] = []
        self._sp: list[int] = []
        self._jump: list[int] = []
        self._la: list[tuple[int, ...]] = []
        self._top: list[tuple[int, ...]] = []
        self._fk: list[frozenset[int]] = []
        self._tips: list[dict[int, tuple[int, ...]] | None] = []
        self._round: list[int] = []
        self._wit: list[bool] = []
        # Per creator: events at each seq (more than one only for forkers).
        self._by_seq: list[list[list[int]]] = [[] for _ in self._ids]
        self._forkers: set[int] = set()
        self._first_fork: dict[int, int] = {}
        # Virtual voting state.
        self._witnesses: dict[int, list[int]] = {}
        self._ss: dict[int, tuple[int, ...]] = {}
        self._fame: dict[int, bool] = {}
        self._votes: dict[int, dict[int, bool]] = {}
        self._max_round = 0
        self._next_round = 1
        self._unordered: list[int] = []
        self._order: list[int] = []
        self._rr: dict[int, int] = {}
        self._cts: dict[int, int] = {}
        self._evidence: list[ForkEvidence] = []
        self._new_evidence: list[ForkEvidence] = []

    # --- input -----------------------------------------------------------
    def insert(self, event: Event) -> list[Event]:
        """Add ``event`` (its parents must be present); return the events it newly ordered.

        Inserting an event already present returns ``[]``. Raises
        :class:`MissingParent` or :class:`InsertError` without changing anything.
        """
        if not isinstance(event, Event):
            raise InsertError(f"expected an Event, got {type(event).__name__}")
        if event.hash in self._idx:
            return []
        if event.epoch != self.epoch:
            raise InsertError(f"event of epoch {event.epoch} in the hashgraph of epoch {self.epoch}")
        c = self._cidx.get(event.creator)
        if c is None:
            raise InsertError(f"unknown creator {event.creator}")
        sp = op = -1
        if event.self_parent is not None:
            sp = self._idx.get(event.self_parent, -1)
            if sp < 0:
                raise MissingParent(f"self-parent {event.self_parent.hex()[:16]} is unknown", event.self_parent)
        if event.other_parent is not None:
            op = self._idx.get(event.other_parent, -1)
            if op < 0:
                raise MissingParent(f"other-parent {event.other_parent.hex()[:16]} is unknown", event.other_parent)
        if sp >= 0:
            if self._cr[sp] != c:
                raise InsertError("self-parent was created by another creator")
            if self._seq[sp] + 1 != event.seq:
                raise InsertError(f"seq {event.seq} does not follow the self-parent's seq {self._seq[sp]}")
            if event.timestamp <= self._ev[sp].timestamp:
                raise InsertError("timestamp is not after the self-parent's timestamp")
        if op >= 0 and self._cr[op] == c:
            raise InsertError("other-parent was created by the same creator")
        if self._verify:
            reason = verify_event(event, self._vs.public_key_of)
            if reason is not None:
                raise InsertError(reason)
        x = self._add(event, c, sp, op)
        self._unordered.append(x)
        if not self._wit[x]:
            return []
        self._decide_fame()
        return [self._ev[i] for i in self._find_order()]

    def take_evidence(self) -> list[ForkEvidence]:
        """Fork evidence found since the last call (all of it stays in :attr:`fork_evidence`)."""
        out, self._new_evidence = self._new_evidence, []
        return out

    # --- ancestry ----------------------------------------------------------
    def _add(self, ev: Event, c: int, sp: int, op: int) -> int:
        x = len(self._ev)
        s = ev.seq
        self._ev.append(ev)
        self._idx[ev.hash] = x
        self._cr.append(c)
        self._seq.append(s)
        self._sp.append(sp)
        jump = x
        if sp >= 0:
            j1 = self._jump[sp]
            j2 = self._jump[j1]
            seq = self._seq
            jump = j2 if seq[sp] - seq[j1] == seq[j1] - seq[j2] else sp
        self._jump.append(jump)

        chain = self._by_seq[c]
        if s < len(chain):
            evidence = ForkEvidence(self._ev[chain[s][0]], ev)
            chain[s].append(x)
            self._forkers.add(c)
            self._first_fork[c] = min(s, self._first_fork.get(c, s))
            self._evidence.append(evidence)
            self._new_evidence.append(evidence)
        else:
            chain.append([x])

        n = len(self._ids)
        fk = _EMPTY
        if sp < 0:
            la, top = [-1] * n, [-1] * n
        elif op < 0:
            la, top, fk = list(self._la[sp]), list(self._top[sp]), self._fk[sp]
        else:
            la_a, top_a, la_b, top_b = self._la[sp], self._top[sp], self._la[op], self._top[op]
            la = list(map(max, la_a, la_b))
            top = [ta if a >= b else tb for a, b, ta, tb in zip(la_a, la_b, top_a, top_b)]
            if self._fk[sp] or self._fk[op]:
                fk = self._fk[sp] | self._fk[op]
            for f in self._forkers:
                a, b = top_a[f], top_b[f]
                if f != c and f not in fk and a >= 0 and b >= 0 and a != b:
                    lo, hi = (a, b) if self._seq[a] <= self._seq[b] else (b, a)
                    if not self._self_anc(lo, hi):
                        fk = fk | {f}
            if c in self._forkers and c not in fk:
                b = top_b[c]
                if b >= 0 and not (self._seq[b] < s and self._self_anc(b, sp)):
                    fk = fk | {c}
        la[c], top[c] = s, x
        tips: dict[int, tuple[int, ...]] | None = None
        if fk:
            tips = {}
            for f in fk:
                # Branch tips already ordered are dropped: their ancestors are all ordered,
                # and ancestry is only ever asked about events not yet ordered.
                cand = {t for t in (*self._tips_of(sp, f), *self._tips_of(op, f)) if t not in self._rr}
                if f == c:
                    cand.add(x)
                tips[f] = tuple(sorted(t for t in cand if not any(u != t and self._self_anc(t, u) for u in cand)))
        self._la.append(tuple(la))
        self._top.append(tuple(top))
        self._fk.append(fk)
        self._tips.append(tips)
        self._assign_round(x, sp, op)
        return x

    def _tips_of(self, e: int, f: int) -> tuple[int, ...]:
        if e < 0:
            return ()
        if f in self._fk[e]:
            tips = self._tips[e]
            assert tips is not None
            return tips[f]
        t = self._top[e][f]
        return (t,) if t >= 0 else ()

    def _level(self, x: int, s: int) -> int:
        """The self-ancestor of ``x`` with seq ``s`` (``s <= seq(x)``), in O(log)."""
        seq, jump, sp = self._seq, self._jump, self._sp
        while seq[x] > s:
            j = jump[x]
            x = j if seq[j] >= s else sp[x]
        return x

    def _at(self, w: int, s: int) -> int:
        c = self._cr[w]
        if c not in self._forkers:
            return self._by_seq[c][s][0]
        return self._level(w, s)

    def _self_anc(self, a: int, b: int) -> bool:
        """``a`` is ``b`` or a self-ancestor of ``b`` (same creator)."""
        return self._seq[a] <= self._seq[b] and self._level(b, self._seq[a]) == a

    def _is_anc(self, y: int, x: int) -> bool:
        """``y`` is an ancestor of ``x`` (or ``x`` itself)."""
        d = self._cr[y]
        if d in self._fk[x]:
            tips = self._tips[x]
            assert tips is not None
            return any(self._self_anc(y, t) for t in tips[d])
        t = self._top[x][d]
        if t < 0 or self._seq[t] < self._seq[y]:
            return False
        return d not in self._forkers or self._self_anc(y, t)

    def _sees(self, x: int, y: int) -> bool:
        return self._cr[y] not in self._fk[x] and self._is_anc(y, x)

    def _ss_tops(self, x: int) -> list[tuple[int, tuple[int, ...], int]]:
        """(weight, last-ancestors, event) of the latest event of each creator that ``x`` sees."""
        fk = self._fk[x]
        return [(self._w[c], self._la[t], t) for c, t in enumerate(self._top[x]) if t >= 0 and c not in fk]

    def _strongly(self, x: int, tops: list[tuple[int, tuple[int, ...], int]], y: int) -> bool:
        if not self._sees(x, y):
            return False
        d, s = self._cr[y], self._seq[y]
        exact = d in self._forkers
        w = 0
        for wc, la_t, t in tops:
            if la_t[d] >= s and (not exact or self._is_anc(y, t)):
                w += wc
        return 3 * w > 2 * self._total

    # --- rounds and fame --------------------------------------------------
    def _assign_round(self, x: int, sp: int, op: int) -> None:
        r = 1 if sp < 0 else max(self._round[sp], self._round[op] if op >= 0 else 0)
        tops = self._ss_tops(x)
        seen = [y for y in self._witnesses.get(r, ()) if self._strongly(x, tops, y)]
        rnd = r + 1 if 3 * sum(self._w[self._cr[y]] for y in seen) > 2 * self._total else r
        self._round.append(rnd)
        wit = sp < 0 or rnd > self._round[sp]
        self._wit.append(wit)
        if not wit:
            return
        if rnd > r:
            self._ss[x] = tuple(seen)
        elif rnd > 1:
            self._ss[x] = tuple(y for y in self._witnesses.get(rnd - 1, ()) if self._strongly(x, tops, y))
        self._witnesses.setdefault(rnd, []).append(x)
        self._max_round = max(self._max_round, rnd)

    def _decide_fame(self) -> None:
        top_round = self._max_round
        for r in range(self._next_round, top_round - 1):
            for x in self._witnesses.get(r, ()):
                if x not in self._fame:
                    self._elect(x, r, top_round)

    def _elect(self, x: int, r: int, top_round: int) -> None:
        votes = self._votes.setdefault(x, {})
        w, cr, total = self._w, self._cr, self._total
        for big_r in range(r + 1, top_round + 1):
            d = big_r - r
            for y in self._witnesses.get(big_r, ()):
                if y in votes:
                    continue
                if d == 1:
                    votes[y] = self._sees(y, x)
                    continue
                yes = no = 0
                for z in self._ss[y]:
                    if votes[z]:
                        yes += w[cr[z]]
                    else:
                        no += w[cr[z]]
                v = yes >= no
                t = yes if v else no
                if d % self._coin:
                    votes[y] = v
                    if 3 * t > 2 * total:
                        self._fame[x] = v
                        del self._votes[x]
                        return
                else:
                    votes[y] = v if 3 * t > 2 * total else bool(self._ev[y].signature[32] & 1)

    # --- order ---------------------------------------------------------------
    def _find_order(self) -> list[int]:
        out: list[int] = []
        while True:
            r = self._next_round
            ws = self._witnesses.get(r)
            if not ws or any(x not in self._fame for x in ws):
                return out
            self._next_round = r + 1
            for y in ws:
                self._ss.pop(y, None)
            famous = [x for x in ws if self._fame[x]]
            per_creator = Counter(self._cr[x] for x in famous)
            uniq = [x for x in famous if per_creator[self._cr[x]] == 1]
            if not uniq:
                continue
            got: list[int] = []
            keep: list[int] = []
            for e in self._unordered:
                (got if all(self._is_anc(e, u) for u in uniq) else keep).append(e)
            self._unordered = keep
            mask = 0
            for u in uniq:
                mask ^= int.from_bytes(self._ev[u].signature, "big")
            keyed = []
            for e in got:
                ev = self._ev[e]
                keyed.append((self._median_time(e, uniq), int.from_bytes(ev.signature, "big") ^ mask, ev.hash, e))
            keyed.sort()
            for cts, _, _, e in keyed:
                self._rr[e] = r
                self._cts[e] = cts
                self._order.append(e)
                out.append(e)

    def _median_time(self, e: int, uniq: list[int]) -> int:
        stamps: list[tuple[int, int]] = []
        for u in uniq:
            lo, hi = 0, self._seq[u]
            while lo < hi:
                mid = (lo + hi) // 2
                if self._is_anc(e, self._at(u, mid)):
                    hi = mid
                else:
                    lo = mid + 1
            stamps.append((self._ev[self._at(u, lo)].timestamp, self._w[self._cr[u]]))
        stamps.sort()
        half = sum(wt for _, wt in stamps)
        acc = 0
        for ts, wt in stamps:
            acc += wt
            if 2 * acc >= half:
                return ts
        raise AssertionError("unreachable: weights are positive")

    # --- queries -----------------------------------------------------------
    def _i(self, h: bytes) -> int:
        i = self._idx.get(h)
        if i is None:
            raise KeyError(f"no event {h.hex()[:16]}")
        return i

    @property
    def validators(self) -> ValidatorSet:
        return self._vs

    @property
    def coin_period(self) -> int:
        return self._coin

    def __len__(self) -> int:
        return len(self._ev)

    def __contains__(self, h: object) -> bool:
        return h in self._idx

    def __iter__(self) -> Iterator[Event]:
        """Events in insertion order (parents before children)."""
        return iter(self._ev)

    def get(self, h: bytes) -> Event | None:
        i = self._idx.get(h)
        return None if i is None else self._ev[i]

    def topo_index(self, h: bytes) -> int:
        """Local insertion position of an event: a topological order, not a consensus value."""
        return self._i(h)

    def height(self, creator: PeerId) -> int:
        """Number of distinct seqs ``creator`` has here (its highest seq + 1; 0 if none)."""
        c = self._cidx.get(creator)
        return 0 if c is None else len(self._by_seq[c])

    def events_by(self, creator: PeerId, from_seq: int = 0) -> list[Event]:
        """``creator``'s events with ``seq >= from_seq`` (forks included), by seq then arrival."""
        c = self._cidx.get(creator)
        if c is None:
            return []
        return [self._ev[i] for level in self._by_seq[c][max(from_seq, 0):] for i in level]

    def head(self, creator: PeerId) -> Event | None:
        """The latest event of ``creator`` (for a forker: the last one to arrive at its highest seq)."""
        c = self._cidx.get(creator)
        if c is None or not self._by_seq[c]:
            return None
        return self._ev[self._by_seq[c][-1][-1]]

    def first_fork_seq(self, creator: PeerId) -> int | None:
        """The lowest seq at which ``creator`` has two events here, if any."""
        c = self._cidx.get(creator)
        return None if c is None else self._first_fork.get(c)

    def round(self, h: bytes) -> int:
        return self._round[self._i(h)]

    def is_witness(self, h: bytes) -> bool:
        return self._wit[self._i(h)]

    def fame(self, h: bytes) -> bool | None:
        """True/False once decided; None for non-witnesses and undecided (or late) witnesses."""
        return self._fame.get(self._i(h))

    def witnesses(self, round_: int) -> list[bytes]:
        return [self._ev[i].hash for i in self._witnesses.get(round_, ())]

    def is_ancestor(self, ancestor: bytes, of: bytes) -> bool:
        return self._is_anc(self._i(ancestor), self._i(of))

    def sees(self, x: bytes, y: bytes) -> bool:
        return self._sees(self._i(x), self._i(y))

    def strongly_sees(self, x: bytes, y: bytes) -> bool:
        i = self._i(x)
        return self._strongly(i, self._ss_tops(i), self._i(y))

    def round_received(self, h: bytes) -> int | None:
        return self._rr.get(self._i(h))

    def consensus_timestamp(self, h: bytes) -> int | None:
        return self._cts.get(self._i(h))

    @property
    def max_round(self) -> int:
        return self._max_round

    @property
    def last_processed_round(self) -> int:
        """The last round whose received events have been ordered (0 before any)."""
        return self._next_round - 1

    @property
    def ordered_count(self) -> int:
        return len(self._order)

    def ordered(self, start: int = 0) -> list[Event]:
        """The consensus order from position ``start``."""
        return [self._ev[i] for i in self._order[start:]]

    def order_hashes(self) -> list[bytes]:
        return [self._ev[i].hash for i in self._order]

    @property
    def fork_evidence(self) -> tuple[ForkEvidence, ...]:
        return tuple(self._evidence)

    @property
    def forkers(self) -> frozenset[PeerId]:
        return frozenset(self._ids[c] for c in self._forkers)

    def statistics(self) -> dict[str, int]:
        return {"events": len(self._ev), "ordered": len(self._order), "max_round": self._max_round,
                "processed_round": self._next_round - 1, "forks": len(self._evidence),
                "undecided_votes": len(self._votes), "unordered": len(self._unordered)}
