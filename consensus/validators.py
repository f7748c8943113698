"""The validator set: peers, their public keys and voting weights, and proposer selection.

Weights are positive integers; all thresholds are integer comparisons:
a quorum is ``3*w > 2*total`` (more than two thirds) and "one third" is
``3*w > total`` (enough weight to include at least one honest validator).

Proposer selection is CometBFT's weighted round-robin. The normative rule,
starting from all priorities 0 at genesis, one *step* is:

1. if ``max - min`` of the priorities exceeds ``2*total``, divide every
   priority by ``ceil((max - min) / (2*total))`` truncating towards zero;
2. centre: subtract ``floor(sum / n)`` from every priority;
3. add each validator's weight to its priority;
4. choose the validator with the largest priority (ties: smallest peer id)
   and subtract ``total`` from its priority.

The proposer of (height ``h``, round ``r``) is the validator chosen by step
number ``(h - 1) + r + 1``: the state after ``(h - 1) + r`` steps advanced once.
For a fixed set, steps 1 and 2 never change anything and every window of
``total`` consecutive steps chooses each validator exactly ``weight`` times.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from multillmn import canonical
from multillmn.identity import PeerId, is_peer_id, peer_id_of

__all__ = ["Validator", "ValidatorSet", "MAX_TOTAL_WEIGHT", "MAX_MONIKER_CHARS"]

MAX_TOTAL_WEIGHT = 2**60
MAX_MONIKER_CHARS = 64


@dataclass(frozen=True)
class Validator:
    """One validator: its peer id, raw Ed25519 public key, voting weight and display name."""

    peer_id: PeerId
    public_key: bytes
    weight: int
    moniker: str

    def to_body(self) -> dict[str, Any]:
        return {
            "peer_id": self.peer_id,
            "public_key": self.public_key,
            "weight": self.weight,
            "moniker": self.moniker,
        }


def _check(v: Validator) -> None:
    if not is_peer_id(v.peer_id):
        raise ValueError(f"validator id {v.peer_id!r} is not 40 lowercase hex characters")
    if not isinstance(v.public_key, bytes) or len(v.public_key) != 32:
        raise ValueError(f"validator {v.peer_id}: public key must be 32 bytes")
    if peer_id_of(v.public_key) != v.peer_id:
        raise ValueError(
            f"validator {v.peer_id}: id does not match sha256(public key)[:20] "
            f"(expected {peer_id_of(v.public_key)})"
        )
    if isinstance(v.weight, bool) or not isinstance(v.weight, int) or v.weight <= 0:
        raise ValueError(f"validator {v.peer_id}: weight must be a positive integer, got {v.weight!r}")
    if not isinstance(v.moniker, str) or len(v.moniker) > MAX_MONIKER_CHARS:
        raise ValueError(f"validator {v.peer_id}: moniker must be a string of at most {MAX_MONIKER_CHARS} chars")


def _tdiv(a: int, b: int) -> int:
    """Integer division truncating towards zero (as Go's int64 ``/``)."""
    q = abs(a) // b
    return q if a >= 0 else -q


class ValidatorSet:
    """An immutable, non-empty set of validators sorted by peer id."""

    __slots__ = ("_validators", "_index", "_total", "_base", "_last")

    def __init__(self, validators: Iterable[Validator]) -> None:
        vals = tuple(sorted(validators, key=lambda v: v.peer_id))
        if not vals:
            raise ValueError("a validator set needs at least one validator")
        index: dict[PeerId, Validator] = {}
        for v in vals:
            _check(v)
            if v.peer_id in index:
                raise ValueError(f"duplicate validator id {v.peer_id}")
            index[v.peer_id] = v
        total = sum(v.weight for v in vals)
        if total > MAX_TOTAL_WEIGHT:
            raise ValueError(f"total weight {total} exceeds {MAX_TOTAL_WEIGHT}")
        self._validators = vals
        self._index = index
        self._total = total
        # Proposer-selection memo (not part of the value): (steps done, priorities).
        zero = (0, tuple(0 for _ in vals))
        self._base: tuple[int, tuple[int, ...]] = zero
        self._last: tuple[int, tuple[int, ...]] = zero

    # --- lookups -------------------------------------------------------
    @property
    def validators(self) -> tuple[Validator, ...]:
        return self._validators

    @property
    def ids(self) -> tuple[PeerId, ...]:
        return tuple(v.peer_id for v in self._validators)

    @property
    def total(self) -> int:
        return self._total

    def __len__(self) -> int:
        return len(self._validators)

    def __iter__(self) -> Iterator[Validator]:
        return iter(self._validators)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ValidatorSet) and self._validators == other._validators

    def __hash__(self) -> int:
        return hash(self._validators)

    def __repr__(self) -> str:
        inner = ", ".join(f"{v.moniker or v.peer_id[:8]}:{v.weight}" for v in self._validators)
        return f"ValidatorSet({inner})"

    def get(self, peer_id: PeerId) -> Validator | None:
        return self._index.get(peer_id)

    def weight_of(self, peer_id: PeerId) -> int:
        """The weight of ``peer_id``, 0 if it is not a validator."""
        v = self._index.get(peer_id)
        return v.weight if v is not None else 0

    def public_key_of(self, peer_id: PeerId) -> bytes | None:
        v = self._index.get(peer_id)
        return v.public_key if v is not None else None

    def weight_of_set(self, peer_ids: Iterable[PeerId]) -> int:
        """Total weight of the distinct validators among ``peer_ids`` (others count 0)."""
        return sum(self.weight_of(p) for p in set(peer_ids))

    def has_quorum(self, weight: int) -> bool:
        """More than two thirds of the total: ``3*w > 2*total``."""
        return 3 * weight > 2 * self._total

    def has_one_third(self, weight: int) -> bool:
        """More than one third of the total: ``3*w > total``."""
        return 3 * weight > self._total

    # --- proposer selection ------------------------------------------
    def _advance(self, prios: tuple[int, ...], steps: int) -> tuple[tuple[int, ...], int]:
        """Apply ``steps`` (>= 1) selection steps; return new priorities and the last chosen index."""
        p = list(prios)
        n = len(p)
        total = self._total
        window = 2 * total
        chosen = 0
        for _ in range(steps):
            diff = max(p) - min(p)
            if diff > window:
                ratio = -(-diff // window)
                p = [_tdiv(x, ratio) for x in p]
            avg = sum(p) // n
            if avg:
                p = [x - avg for x in p]
            best = 0
            for i in range(n):
                p[i] += self._validators[i].weight
                if p[i] > p[best]:  # strict: ties keep the smaller id (earlier index)
                    best = i
            p[best] -= total
            chosen = best
        return tuple(p), chosen

    def advance_priorities(self, prios: tuple[int, ...], steps: int) -> tuple[tuple[int, ...], int]:
        """Apply ``steps`` (>= 1) selection steps to ``prios`` (one per validator, in id order).

        Returns the new priorities and the index of the last chosen validator;
        :class:`consensus.chain.Chain` carries priorities across heights with it.
        """
        if steps < 1 or len(prios) != len(self._validators):
            raise ValueError("need steps >= 1 and one priority per validator")
        return self._advance(prios, steps)

    def _state_after(self, k: int) -> tuple[int, ...]:
        best = (0, tuple(0 for _ in self._validators))
        for cand in (self._base, self._last):
            if best[0] < cand[0] <= k:
                best = cand
        if best[0] == k:
            return best[1]
        prios, _ = self._advance(best[1], k - best[0])
        return prios

    def proposer(self, height: int, round: int) -> PeerId:
        """The proposer of (``height`` >= 1, ``round`` >= 0); O(1) amortised for increasing heights."""
        if height < 1 or round < 0:
            raise ValueError("height must be >= 1 and round >= 0")
        base_k = height - 1
        base = self._state_after(base_k)
        if base_k > self._base[0]:
            self._base = (base_k, base)
        k = base_k + round
        before = base if round == 0 else self._state_after(k)
        after, chosen = self._advance(before, 1)
        self._last = (k + 1, after)
        return self._validators[chosen].peer_id

    # --- serialisation -------------------------------------------------
    def to_body(self) -> dict[str, Any]:
        """A canonical-msgpack-able map (public keys as bytes), validators in id order."""
        return {"validators": [v.to_body() for v in self._validators]}

    @classmethod
    def from_body(cls, body: Any) -> ValidatorSet:
        """Parse and validate :meth:`to_body` output; raise ``ValueError`` with the reason."""
        if not isinstance(body, dict) or set(body) != {"validators"}:
            raise ValueError("validator set body must be a map with exactly the key 'validators'")
        raw = body["validators"]
        if not isinstance(raw, (list, tuple)):
            raise ValueError("'validators' must be a list")
        vals: list[Validator] = []
        keys = {"peer_id", "public_key", "weight", "moniker"}
        for i, item in enumerate(raw):
            if not isinstance(item, dict) or set(item) != keys:
                raise ValueError(f"validator {i} must be a map with keys {sorted(keys)}")
            vals.append(
                Validator(
                    peer_id=item["peer_id"],
                    public_key=item["public_key"],
                    weight=item["weight"],
                    moniker=item["moniker"],
                )
            )
        return cls(vals)

    def set_hash(self) -> bytes:
        """SHA-256 of the canonical body."""
        return canonical.digest(self.to_body())
