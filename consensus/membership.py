"""Membership: epochs, joins and leaves, removal of absent validators, the stability record (pure).

Normative rule (ADR 0016). Heights are grouped in *epochs* of
``epoch_length`` heights: epoch ``e`` holds heights ``e*L + 1 .. (e+1)*L``.
The members of the validator set change only at the first height of an
epoch (a *boundary*), deterministically from committed values:

* A :class:`~consensus.messages.Join` (signed by the joiner's own key) or a
  :class:`~consensus.messages.Leave` (signed by a member) rides in a value;
  :meth:`Membership.check` says whether a value may carry it. A request
  committed at height ``h`` takes effect at the first boundary ``b`` with
  ``b >= h + delay`` (``delay`` = the weight rule's ``delay_heights``, so the
  set of ``h + 1`` is fixed when ``h`` is decided, as for weights).
* The transition is computed when height ``b - delay`` is folded
  (:meth:`Membership.transition`). Leavers go, and so does every member whose
  precommit is missing from more than ``max_missed`` of the heights of the
  epoch whose commits are known then (``last_commit``), except in the epoch
  it joined at (it is catching up). At least
  ``min_validators`` members stay: if leaving would go below, no one leaves
  at this boundary (leave requests stay pending). Then pending joiners are
  admitted in commit order while there is room: each starts with the lower
  median weight of the staying members (as a share), the joiners admitted at
  one boundary hold together at most ``admission_share`` of the total, and
  there are at most ``max_validators`` members. A joiner that does not fit
  stays pending for the next boundary. A joiner starts with the lower median
  trust of the staying members. The staying members share the rest of the
  total in proportion to their weights (:func:`consensus.weights.allocate`).
* A flood of joiners therefore gains at most ``admission_share`` of the
  weight per epoch: with 1/10 it needs four epochs to pass 1/3, while the
  weight rule meanwhile follows the answers it gives.

The *stability record* (:class:`EpochRecord`) of every member and epoch is
folded from committed values only, so every peer computes the same one:
heights whose decided value counted its answer, heights whose committed
commit (``last_commit`` of the next value) counted its precommit, its median
answer latency (signed ``gen_ms``), missed heights, and its uptime over the
past epochs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from consensus.messages import Envelope, Join, Leave, MessageError, Signed, open_envelope
from consensus.validators import Validator, ValidatorSet
from multillmn.identity import PeerId

if TYPE_CHECKING:
    from consensus.messages import VerifiedCache

__all__ = ["EpochRecord", "Member", "Membership", "MembershipParams", "MAX_EPOCH_LENGTH", "MAX_PENDING_JOINS",
           "KEPT_EPOCHS", "Transition", "reason_code"]

MAX_PENDING_JOINS = 64
"""Committed joins waiting for a boundary; a value cannot carry more."""
KEPT_EPOCHS = 8
"""Past epochs whose records are kept (uptime sums all of them)."""
MAX_DEPARTED = 4096
"""Departed peers whose last request time is remembered (a replayed old join is refused)."""
MAX_EPOCH_LENGTH = 10_000


def reason_code(reason: str) -> str:
    """The short code a refusal reason starts with (``"unknown-model"``, ...), for counting."""
    return reason.split(":", 1)[0] if ":" in reason[:24] else "invalid"


@dataclass(frozen=True)
class MembershipParams:
    """Genesis constants of membership; see the module docstring."""

    epoch_length: int = 100
    admission_share: Fraction = Fraction(1, 10)
    max_missed: Fraction = Fraction(1, 2)
    max_validators: int = 64
    min_validators: int = 1
    models: tuple[str, ...] = ()  # model names a joiner may declare; empty: any

    def validate(self) -> MembershipParams:
        if not 4 <= self.epoch_length <= MAX_EPOCH_LENGTH:
            raise ValueError(f"epoch_length must be in [4, {MAX_EPOCH_LENGTH}], got {self.epoch_length}")
        if not 0 <= self.admission_share <= 1:
            raise ValueError("admission_share must be in [0, 1]")
        if not 0 <= self.max_missed <= 1:
            raise ValueError("max_missed must be in [0, 1]")
        if not 1 <= self.min_validators <= self.max_validators <= 256:
            raise ValueError("validators: need 1 <= min_validators <= max_validators <= 256")
        return self

    def epoch_of(self, height: int) -> int:
        return (height - 1) // self.epoch_length

    def epoch_start(self, epoch: int) -> int:
        return epoch * self.epoch_length + 1

    def boundary_for(self, height: int, delay: int) -> int:
        """The first epoch start ``b > 1`` with ``b >= height + delay``: where a request committed at
        ``height`` takes effect."""
        e = max(1, -(-(height + delay - 1) // self.epoch_length))
        return self.epoch_start(e)


@dataclass(frozen=True)
class Member:
    """What the chain knows of a peer that is, was or will be a validator."""

    peer_id: PeerId
    public_key: bytes
    moniker: str
    address: str = ""  # "" for genesis members (their operators configure addresses)
    model: str = ""
    since: int = 0  # the boundary it joined at (0: genesis)


@dataclass
class EpochRecord:
    """One member's stability in one epoch (see the module docstring)."""

    heights: int = 0  # heights of the epoch, as a member, whose commit is committed
    precommits: int = 0  # of those, the ones whose commit counts its precommit
    answers: int = 0  # heights whose decided value counted its answer
    latencies: list[int] = field(default_factory=list)  # gen_ms of its counted answers

    @property
    def missed(self) -> int:
        return self.heights - self.precommits

    def median_latency_ms(self) -> int | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[(len(ordered) - 1) // 2]

    def to_json(self) -> dict[str, Any]:
        return {"heights": self.heights, "precommits": self.precommits, "answers": self.answers,
                "missed": self.missed, "median_latency_ms": self.median_latency_ms()}


@dataclass(frozen=True)
class Transition:
    """A boundary's change of members: who leaves, who joins with which weight and trust."""

    boundary: int
    leaving: tuple[PeerId, ...]
    removed: tuple[PeerId, ...]  # of ``leaving``: for missing heights
    joining: tuple[tuple[PeerId, int], ...]  # (peer, weight out of the scale)
    trust: int  # starting trust of every joiner


class Membership:
    """The members' registry, the requests waiting for a boundary and the stability records."""

    def __init__(self, params: MembershipParams, genesis: ValidatorSet, chain_id: str) -> None:
        self.params = params.validate()
        self.chain_id = chain_id
        self.registry: dict[PeerId, Member] = {
            v.peer_id: Member(v.peer_id, v.public_key, v.moniker) for v in genesis}
        self.joins: dict[PeerId, tuple[int, Join]] = {}  # pending, with commit height; dict order = commit order
        self.leaves: dict[PeerId, int] = {}  # pending leave -> commit height
        self.records: dict[int, dict[PeerId, EpochRecord]] = {}
        self.uptime: dict[PeerId, tuple[int, int]] = {}  # (precommits, heights) over completed epochs
        self.last_request: OrderedDict[PeerId, int] = OrderedDict()  # created_ms of the last committed request
        self.refused: dict[str, int] = {}
        self.transitions: list[Transition] = []  # the last few, for status

    # --- views -------------------------------------------------------------
    def validator_set(self, weights: Mapping[PeerId, int]) -> ValidatorSet:
        """The set of these weights, with the registry's keys and monikers."""
        try:
            return ValidatorSet(Validator(p, self.registry[p].public_key, w, self.registry[p].moniker)
                                for p, w in weights.items())
        except KeyError as exc:
            raise ValueError(f"peer {exc.args[0]} has a weight but no registered key") from exc

    def key_of(self, peer: PeerId) -> bytes | None:
        """The key of a registered peer or of a committed joiner (which syncs before its boundary)."""
        m = self.registry.get(peer)
        if m is not None:
            return m.public_key
        pending = self.joins.get(peer)
        return None if pending is None else pending[1].public_key

    def addresses(self) -> dict[PeerId, str]:
        """The p2p address of every registered peer and committed joiner that declared one."""
        out = {p: m.address for p, m in self.registry.items() if m.address}
        out.update((p, j.address) for p, (_, j) in self.joins.items())
        return out

    # --- what a value may carry -----------------------------------------------
    def join_reason(self, join: Join, height: int, members: Iterable[PeerId]) -> str | None:
        """Why ``join`` may not be committed at ``height`` (``members``: every peer in a set in force
        at or after it), or ``None``. A reason reads ``"<code>: <detail>"`` (:func:`reason_code`)."""
        if join.chain_id != self.chain_id:
            return f"wrong-chain: the join is for chain {join.chain_id!r}, not {self.chain_id!r}"
        if join.peer_id in set(members):
            return f"already-member: {join.peer_id} is already a validator"
        if join.peer_id in self.joins:
            return f"already-requested: {join.peer_id} asked to join at height {self.joins[join.peer_id][0]}; it waits for the next epoch"
        if self.params.models and join.model not in self.params.models:
            return f"unknown-model: {join.model!r}; this network admits {', '.join(self.params.models)}"
        last = self.last_request.get(join.peer_id)
        if last is not None and join.created_ms <= last:
            return "replayed: the join is not newer than the peer's last committed request"
        taken = next((m.peer_id for m in self.registry.values()
                      if m.address == join.address and m.peer_id != join.peer_id), None) \
            or next((p for p, (_, j) in self.joins.items() if j.address == join.address), None)
        if taken is not None:
            return f"address-taken: {join.address} is the address of {taken}"
        if len(self.joins) >= MAX_PENDING_JOINS:
            return f"queue-full: {MAX_PENDING_JOINS} joins are already waiting for the next epoch"
        return None

    def leave_reason(self, leave: Leave, height: int, members: ValidatorSet) -> str | None:
        """Why ``leave`` may not be committed at ``height`` (``members``: the set in force there), or ``None``."""
        if leave.chain_id != self.chain_id:
            return f"wrong-chain: the leave is for chain {leave.chain_id!r}, not {self.chain_id!r}"
        if leave.peer_id not in members:
            return f"not-a-member: {leave.peer_id} is not a validator at height {height}"
        if leave.peer_id in self.leaves:
            return f"already-requested: {leave.peer_id} asked to leave at height {self.leaves[leave.peer_id]}"
        last = self.last_request.get(leave.peer_id)
        if last is not None and leave.created_ms <= last:
            return "replayed: the leave is not newer than the peer's last committed request"
        return None

    def open_join(self, env: Envelope, cache: VerifiedCache | None = None) -> Join:
        return open_envelope(Join, env, lambda _: None, cache).message

    def check(self, joins: Sequence[Envelope], leaves: Sequence[Envelope], height: int,
              vs: ValidatorSet, members: set[PeerId], cache: VerifiedCache | None = None) -> str | None:
        """``None`` if a value at ``height`` may carry these requests, else why not."""
        seen: set[PeerId] = set()
        addresses: set[str] = set()
        room = MAX_PENDING_JOINS - len(self.joins)
        for k, env in enumerate(joins):
            try:
                join = self.open_join(env, cache)
            except MessageError as exc:
                return f"join {k}: {exc}"
            reason = self.join_reason(join, height, members)
            if reason is None and join.peer_id in seen:
                reason = "duplicate: a second join of this peer in the value"
            if reason is None and join.address in addresses:
                reason = f"address-taken: {join.address} is the address of another join in the value"
            if reason is None and k >= room:
                reason = "queue-full: the join queue is full"
            if reason is not None:
                return f"join {k} by {join.peer_id}: {reason}"
            seen.add(join.peer_id)
            addresses.add(join.address)
        seen.clear()
        for k, env in enumerate(leaves):
            try:
                leave = open_envelope(Leave, env, vs.public_key_of, cache).message
            except MessageError as exc:
                return f"leave {k}: {exc}"
            reason = self.leave_reason(leave, height, vs)
            if reason is None and leave.peer_id in seen:
                reason = "duplicate: a second leave of this peer in the value"
            if reason is not None:
                return f"leave {k} by {leave.peer_id}: {reason}"
            seen.add(leave.peer_id)
        return None

    def includable(self, joins: Iterable[Signed[Join]], leaves: Iterable[Signed[Leave]], height: int,
                   vs: ValidatorSet, members: set[PeerId], limit: int) -> tuple[tuple[Envelope, ...], tuple[Envelope, ...]]:
        """The requests a value proposed at ``height`` should carry (valid, at most ``limit`` each, by peer id)."""
        ok_joins: dict[PeerId, Envelope] = {}
        addresses: set[str] = set()
        for j in sorted(joins, key=lambda j: j.message.peer_id):
            join = j.message
            if len(ok_joins) < min(limit, MAX_PENDING_JOINS - len(self.joins)) and join.address not in addresses \
                    and join.peer_id not in ok_joins and self.join_reason(join, height, members) is None:
                ok_joins[join.peer_id] = j.envelope
                addresses.add(join.address)
        ok_leaves: dict[PeerId, Envelope] = {}
        for x in sorted(leaves, key=lambda x: x.message.peer_id):
            if len(ok_leaves) < limit and self.leave_reason(x.message, height, vs) is None:
                ok_leaves.setdefault(x.message.peer_id, x.envelope)
        return tuple(ok_joins.values()), tuple(ok_leaves.values())

    # --- folding a decided value in -----------------------------------------------
    def commit_requests(self, joins: Sequence[Envelope], leaves: Sequence[Envelope], height: int,
                        vs: ValidatorSet, cache: VerifiedCache | None = None) -> None:
        """Record the requests a decided value at ``height`` carried (validated by the quorum)."""
        for env in joins:
            try:
                join = self.open_join(env, cache)
            except MessageError:
                continue
            self.joins.setdefault(join.peer_id, (height, join))
            self._requested(join.peer_id, join.created_ms)
        for env in leaves:
            try:
                leave = open_envelope(Leave, env, vs.public_key_of, cache).message
            except MessageError:
                continue
            self.leaves.setdefault(leave.peer_id, height)
            self._requested(leave.peer_id, leave.created_ms)

    def _requested(self, peer: PeerId, created_ms: int) -> None:
        self.last_request[peer] = max(created_ms, self.last_request.get(peer, -1))
        self.last_request.move_to_end(peer)
        while len(self.last_request) > MAX_DEPARTED + len(self.registry):
            self.last_request.popitem(last=False)

    def record(self, height: int, vs: ValidatorSet, answers: Sequence[tuple[PeerId, int]],
               previous: ValidatorSet | None, precommitted: set[PeerId]) -> None:
        """Fold height ``height``'s counted answers ``(peer, gen_ms)`` and the commit of ``height - 1``
        (its set ``previous`` and the signers ``precommitted``) into the records."""
        epoch = self.params.epoch_of(height)
        book = self.records.setdefault(epoch, {})
        for peer, gen_ms in answers:
            if peer in vs:
                rec = book.setdefault(peer, EpochRecord())
                rec.answers += 1
                rec.latencies.append(gen_ms)
        if previous is not None and height > 1:
            prev_book = self.records.setdefault(self.params.epoch_of(height - 1), {})
            for peer in previous.ids:
                rec = prev_book.setdefault(peer, EpochRecord())
                rec.heights += 1
                rec.precommits += peer in precommitted
        if height == self.params.epoch_start(epoch) and epoch >= 1:
            self._close_epoch(epoch - 1)  # its last commit came with this value

    def _close_epoch(self, epoch: int) -> None:
        """Fold ``epoch`` into the uptime sums; forget records older than :data:`KEPT_EPOCHS`."""
        for peer, rec in self.records.get(epoch, {}).items():
            p, h = self.uptime.get(peer, (0, 0))
            self.uptime[peer] = (p + rec.precommits, h + rec.heights)
        for old in [e for e in self.records if e < epoch - KEPT_EPOCHS]:
            del self.records[old]

    def transition(self, boundary: int, weights: Mapping[PeerId, int], trust: Mapping[PeerId, int],
                   scale: int, floor: int) -> Transition:
        """Who leaves and who joins at ``boundary`` (see the module rule), given the weights scheduled
        there and the trust table; pending requests it applies are consumed."""
        p = self.params
        epoch = p.epoch_of(boundary - 1)
        book = self.records.get(epoch, {})
        first = p.epoch_start(epoch)  # a member that joined there is catching up: its first epoch does not count
        removed = tuple(sorted(
            peer for peer in weights
            if (rec := book.get(peer)) is not None and rec.heights > 0 and self._since(peer) != first
            and rec.missed * p.max_missed.denominator > p.max_missed.numerator * rec.heights))
        leaving = tuple(sorted({*removed, *(peer for peer in self.leaves if peer in weights)}))
        if len(weights) - len(leaving) < p.min_validators:
            leaving, removed = (), ()
        staying = {j: w for j, w in weights.items() if j not in leaving}
        for peer in leaving:
            self.leaves.pop(peer, None)
        for peer in [q for q in self.leaves if q not in weights]:
            del self.leaves[peer]  # left already (removed) before its request took effect
        total = sum(staying.values())
        ordered_w = sorted(staying.values())
        median_w = ordered_w[(len(ordered_w) - 1) // 2]
        start = median_w * scale // total
        budget = p.admission_share.numerator * scale // p.admission_share.denominator
        joining: list[tuple[PeerId, int]] = []
        for peer in list(self.joins):
            if len(staying) + len(joining) >= p.max_validators:
                break
            weight = min(start, budget)
            if weight < floor or (len(staying) + len(joining) + 1) * floor > scale:
                break
            joining.append((peer, weight))
            budget -= weight
            _, join = self.joins.pop(peer)
            self.registry[peer] = Member(peer, join.public_key, join.moniker, join.address, join.model, boundary)
        ordered_t = sorted(trust.get(j, 0) for j in staying)
        t = Transition(boundary, leaving, removed, tuple(joining), ordered_t[(len(ordered_t) - 1) // 2])
        self.transitions = [*self.transitions[-(KEPT_EPOCHS - 1):], t]
        return t

    def _since(self, peer: PeerId) -> int:
        m = self.registry.get(peer)
        return 0 if m is None else m.since

    def prune(self, live: Iterable[PeerId]) -> None:
        """Forget the keys of peers in no live set and with no pending request."""
        keep = set(live) | set(self.joins)
        self.registry = {p: m for p, m in self.registry.items() if p in keep}
        self.uptime = {p: u for p, u in self.uptime.items() if p in keep}

    # --- status ------------------------------------------------------------------
    def stability(self, peers: Iterable[PeerId]) -> dict[PeerId, dict[str, Any]]:
        """The record of each peer: every kept epoch, and its uptime over completed epochs (per mille)."""
        out: dict[PeerId, dict[str, Any]] = {}
        for peer in peers:
            p, h = self.uptime.get(peer, (0, 0))
            out[peer] = {
                "epochs": {str(e): book[peer].to_json() for e, book in sorted(self.records.items()) if peer in book},
                "uptime_permille": None if h == 0 else p * 1000 // h,
            }
        return out

    def digest_body(self) -> dict[str, Any]:
        """Everything that decides future sets, as a canonical-msgpack-able map."""
        return {
            "registry": [[m.peer_id, m.public_key, m.moniker, m.address, m.model, m.since]
                         for m in sorted(self.registry.values(), key=lambda m: m.peer_id)],
            "joins": [[p, h] for p, (h, _) in self.joins.items()],
            "leaves": sorted([p, h] for p, h in self.leaves.items()),
            "records": [[e, sorted([p, r.heights, r.precommits, r.answers, sorted(r.latencies)]
                                   for p, r in book.items())] for e, book in sorted(self.records.items())],
            "uptime": sorted([p, a, b] for p, (a, b) in self.uptime.items()),
        }
