"""Weights as consensus state: recomputed from committed score vectors and evidence.

Every honest peer folds the same committed data into the same
:class:`WeightState` with integer and :class:`~fractions.Fraction` arithmetic
only. Normative rule for :func:`update` at height ``h`` (``ONE`` = 10**6,
scores per mille, stakes ``s_i`` = weights of the set in force at ``h``):

1. *Evidence.* Valid evidence (:func:`consensus.evidence.check_evidence`) of
   height ``e`` with ``h - evidence_max_age <= e <= h``, not applied before,
   marks its signer an *offender*: trust 0, quality 0, so share 0 (its
   weight falls to ``floor`` as fast as step 6 lets the others grow), and
   its score vectors are ignored.
2. *Queries.* Score vectors are grouped by ``(height, query_id)``; only
   groups with ``scored_through < height < h`` count. A scorer with two
   different vectors in one group is ignored in it. A group counts only if
   its scorers hold more than 2/3 of the weight.
3. *Consensus score* of peer ``j`` in a group (Yuma, ``kappa`` = 1/2)::

       C_j = max{c : den(kappa) * sum(s_i : S_ij >= c) > num(kappa) * sum(s_i)}

   the stake-weighted median of the scores ``j`` received (a missing entry is
   0; self-scores count like any other). Scores are clipped to ``C_j`` from
   both sides, so quality ``Q_j = C_j * ONE / 1000``; averaged (floor) over
   the counted groups. See ADR 0006 for why not Yuma's one-sided clip.
4. *Trust* (EMA, ``ema`` = p/d): ``T_j <- floor((T_j * (d - p) + Q_j * p) / d)``.
   Without counted groups trust is unchanged and ``Q_j := T_j``.
5. *Shares* (WBFT): ``x_j = alpha * Q_j / sum Q + beta * T_j / sum T``.
   If every quality is 0 (nobody's answer was agreed with: no information),
   ``x_j = T_j / sum T``; a zero trust sum gives equal parts to the
   non-offenders.
6. *Growth bound* (ADR 0012). Let ``w`` be the weights of the last set in
   the schedule (the one in force just before the new set takes effect),
   ``W = sum w`` (``scale`` except for the genesis set). Peer ``j`` may get
   at most ``g_j = max(floor, floor((1 + growth) * w_j * scale / W))``.
   Since ``growth * floor >= 1`` (a parameter constraint), ``g_j`` is at
   least the peer's rescaled weight rounded up, so the caps sum to at least
   ``scale``, and a peer at the floor can always grow.
7. *Integer weights* summing to exactly ``scale``: global cap
   ``c = max(floor(cap_share * scale), ceil(scale / n), floor)``, raised only
   if ``sum_j min(c, g_j) < scale`` (the last set had a peer above ``c``) to
   the least integer that makes that sum reach ``scale``; per-peer cap
   ``e_j = min(c, g_j)``. Target
   ``y_j = floor + (R - |U| * floor) * x_j / sum_U x`` (equal parts of ``R``
   if ``sum_U x = 0``) over the unpinned set ``U`` with
   ``R = scale - sum(e_j : j pinned)``; pin every ``y_j > e_j`` to ``e_j``
   and repeat; then floor the ``y_j`` and hand the remaining units one each
   to the largest fractional parts, ties by ascending peer id.
8. *Schedule.* The new weights take effect at height ``h + delay_heights``.

*Guarantee of steps 6-7.* Between two consecutive computed sets ``w`` and
``w'`` (both total ``scale``, each weight at least ``floor``) every peer has
``w'_j <= floor((1 + growth) * w_j)``, so any set ``S`` of peers, whatever
it answers, scores or gets decided, has ``w'(S) <= (1 + growth) * w(S)``:
the weight in force grows by at most a factor ``1 + growth`` from one height
to the next. A coalition below ``1 / (3 * (1 + growth))`` of the weight
(16/51, about 0.314, at ``growth`` = 1/16) cannot reach 1/3 at the next
height, and one at share ``s < 1/3`` needs at least
``ceil(log(1 / (3 s)) / log(1 + growth))`` heights of gain to reach it
(2 of 7 equal peers: 3 heights; 3 of 10: 2). Falling is bounded by the
others' growth: a set at share ``s`` loses at most ``(1 - s) * growth`` per
height. A peer at ``floor`` (0.1% by default) regains at most a factor
``1 + growth`` per height: 1% after 39 heights, an equal seventh after 82.
From the genesis set (any total) the same holds of shares, except that a
peer with less than ``floor`` may rise to ``floor``. The bound is on the
rate, not the destination: a coalition that keeps winning decisions keeps
gaining, ``1 + growth`` per height.

At genesis trust is ``initial_trust * w_j / max w`` (shares start as genesis
set them); a validator the state has never seen starts at ``initial_trust``.

Nothing is recomputed when ``h`` has no counted group and no new evidence.

*Members.* The peers of a computed set are those of the set in force just
before it takes effect: members change only at epoch boundaries
(:mod:`consensus.membership`, applied by :func:`with_members`). A peer that
was no validator at ``h`` (a joiner) has no quality there: ``Q_j = T_j``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

from consensus.evidence import Evidence, check_evidence, evidence_id
from consensus.scores import MAX_SCORE, ScoreVector
from consensus.validators import Validator, ValidatorSet
from multillmn import canonical
from multillmn.identity import PeerId

__all__ = [
    "ONE",
    "WeightParams",
    "WeightState",
    "PeerWeights",
    "weighted_median",
    "allocate",
    "growth_caps",
    "update",
    "with_members",
]

ONE = 1_000_000
"""Unit of trust and quality: ``ONE`` means every scorer gave 1000."""

PeerWeights = tuple[tuple[PeerId, int], ...]
"""``(peer id, int)`` pairs sorted by peer id."""


@dataclass(frozen=True)
class WeightParams:
    """Consensus parameters of the weight rule (genesis constants)."""

    alpha_quality: Fraction = Fraction(1, 4)  # share of the last heights' quality
    beta_trust: Fraction = Fraction(3, 4)  # share of EMA trust; alpha + beta = 1
    ema: Fraction = Fraction(1, 10)  # trust moves 1/10 of the way to quality per height
    kappa: Fraction = Fraction(1, 2)  # consensus score: more than half the scoring stake
    floor: int = 1_000  # every validator keeps at least 0.1% of the default scale
    cap_share: Fraction = Fraction(3, 10)  # < 1/3: no single peer can stall or veto
    growth: Fraction = Fraction(1, 16)  # a weight grows at most 1/16 per height (ADR 0012)
    """Largest relative growth of any peer's weight from one scheduled set to the next.

    A coalition at share ``s`` holds at most ``s * (1 + growth)`` at the next
    height, so one below ``1 / (3 * (1 + growth))`` (16/51 at 1/16) cannot
    cross 1/3 in one height; a peer at the floor regains at most this factor
    per height. ``growth * floor >= 1``: a peer at the floor can gain a unit.
    """
    scale: int = 1_000_000  # total weight of every computed set, exactly
    delay_heights: int = 2  # weights computed at h apply from h + 2 (CometBFT)
    initial_trust: int = ONE // 2  # prior of the heaviest genesis peer (others pro rata)
    evidence_max_age: int = 10_000  # heights; older evidence is ignored

    @classmethod
    def default(cls) -> WeightParams:
        return cls()

    @classmethod
    def for_tests(cls) -> WeightParams:
        return cls(scale=10_000, floor=16)  # the least floor that can grow at growth 1/16

    def validate(self) -> WeightParams:
        """Return ``self`` or raise ``ValueError`` naming the bad field."""
        if self.alpha_quality < 0 or self.beta_trust < 0 or self.alpha_quality + self.beta_trust != 1:
            raise ValueError("alpha_quality and beta_trust must be >= 0 and sum to 1")
        if not 0 < self.ema <= 1:
            raise ValueError("ema must be in (0, 1]")
        if not 0 < self.kappa < 1:
            raise ValueError("kappa must be in (0, 1)")
        if not 0 < self.cap_share <= 1:
            raise ValueError("cap_share must be in (0, 1]")
        if self.growth * self.floor < 1:
            raise ValueError("growth must satisfy growth * floor >= 1 (a peer at the floor can grow)")
        if self.scale < 1 or not 1 <= self.floor <= self.scale:
            raise ValueError("scale and floor must satisfy 1 <= floor <= scale")
        if self.delay_heights < 1:
            raise ValueError("delay_heights must be >= 1")
        if not 0 <= self.initial_trust <= ONE:
            raise ValueError(f"initial_trust must be in [0, {ONE}]")
        if self.evidence_max_age < 0:
            raise ValueError("evidence_max_age must be >= 0")
        return self


def weighted_median(entries: Iterable[tuple[int, int]], kappa: Fraction = Fraction(1, 2)) -> int:
    """The largest score ``c`` whose supporters (``score >= c``) hold more than ``kappa`` of the stake.

    ``entries`` are ``(score, stake)`` pairs with stakes >= 0 and a positive total.
    """
    items = sorted(entries, key=lambda e: -e[0])
    total = sum(s for _, s in items)
    if total <= 0 or any(s < 0 for _, s in items):
        raise ValueError("stakes must be non-negative with a positive total")
    acc = 0
    for score, stake in items:
        acc += stake
        if acc * kappa.denominator > kappa.numerator * total:
            return score
    raise AssertionError("unreachable for kappa < 1")


def growth_caps(previous: Mapping[PeerId, int], params: WeightParams) -> dict[PeerId, int]:
    """Rule step 6: the most each peer may hold in the next set, given the last one.

    ``previous`` may have any positive total (a genesis set); it is rescaled
    to ``scale``. With ``growth * floor >= 1`` every cap is at least the
    peer's rescaled weight rounded up, so the caps sum to at least ``scale``.
    """
    total = sum(previous.values())
    if total <= 0 or any(w < 0 for w in previous.values()):
        raise ValueError("previous weights must be non-negative with a positive total")
    num = params.growth.denominator + params.growth.numerator
    den = params.growth.denominator * total
    return {j: max(params.floor, num * w * params.scale // den) for j, w in previous.items()}


def allocate(shares: dict[PeerId, Fraction], params: WeightParams,
             previous: Mapping[PeerId, int] | None = None) -> dict[PeerId, int]:
    """Integer weights summing to ``scale``, each in ``[floor, cap]``, by rule steps 6-7.

    ``previous`` is the last scheduled set (same peers); with it each peer is
    also held to its :func:`growth_caps` bound. Without it only the global
    cap applies.
    """
    ids = sorted(shares)
    n = len(ids)
    f, scale = params.floor, params.scale
    if n == 0 or n * f > scale:
        raise ValueError(f"{n} validators cannot each get floor {f} out of {scale}")
    if any(x < 0 for x in shares.values()):
        raise ValueError("shares must be non-negative")
    raw_cap = params.cap_share.numerator * scale // params.cap_share.denominator
    cap = max(raw_cap, -(-scale // n), f)
    if previous is None:
        limit = dict.fromkeys(ids, cap)
    else:
        if set(previous) != set(ids):
            raise ValueError("previous weights must name exactly the peers of the shares")
        grow = growth_caps(previous, params)
        if sum(grow.values()) < scale:
            raise ValueError("growth caps sum below scale: growth * floor must be >= 1")
        if sum(min(cap, grow[j]) for j in ids) < scale:
            # The last set had a peer above the global cap: it comes down only as fast as
            # the others may grow. Least integer cap that keeps the caps feasible.
            lo, hi = cap, max(grow.values())
            while lo < hi:
                mid = (lo + hi) // 2
                if sum(min(mid, grow[j]) for j in ids) >= scale:
                    hi = mid
                else:
                    lo = mid + 1
            cap = lo
        limit = {j: min(cap, grow[j]) for j in ids}
    pinned: set[PeerId] = set()
    while True:
        free = [j for j in ids if j not in pinned]
        rest = scale - sum(limit[j] for j in pinned)
        mass = sum((shares[j] for j in free), Fraction(0))
        if mass == 0:
            y = {j: Fraction(rest, len(free)) for j in free}
        else:
            y = {j: f + (rest - len(free) * f) * shares[j] / mass for j in free}
        over = [j for j in free if y[j] > limit[j]]
        if not over:
            break
        pinned.update(over)
    out = {j: limit[j] for j in pinned}
    for j in free:
        out[j] = y[j].numerator // y[j].denominator
    left = scale - sum(out.values())
    by_remainder = sorted(free, key=lambda j: (-(y[j] - out[j]), j))
    for j in by_remainder[:left]:
        out[j] += 1
    return out


@dataclass(frozen=True)
class WeightState:
    """Per-validator trust and the schedule of integer weights by effective height."""

    height: int  # last height folded in; 0 at genesis
    trust: PeerWeights  # trust in [0, ONE]
    schedule: tuple[tuple[int, PeerWeights], ...]  # (effective from height, weights), ascending
    scored_through: int = 0  # highest query height whose score vectors were counted
    evidence: tuple[tuple[int, bytes], ...] = field(default=())  # applied (height, id), for dedup

    @classmethod
    def genesis(cls, validators: ValidatorSet, params: WeightParams) -> WeightState:
        """Genesis weights from height 1; trust ``initial_trust * w / max w``, so shares start as at genesis."""
        params.validate()
        top = max(v.weight for v in validators)
        return cls(
            height=0,
            trust=tuple((v.peer_id, params.initial_trust * v.weight // top) for v in validators),
            schedule=((1, tuple((v.peer_id, v.weight) for v in validators)),),
        )

    def weights_at(self, height: int) -> dict[PeerId, int]:
        """The weights in force at ``height`` (changes computed at h apply from h + delay)."""
        entry = None
        for start, weights in self.schedule:
            if start <= height:
                entry = weights
        if entry is None:
            raise ValueError(f"no weights for height {height} (pruned or before genesis)")
        return dict(entry)

    def validator_set(self, base: ValidatorSet, height: int) -> ValidatorSet:
        """``base`` (keys, monikers) with the weights in force at ``height``."""
        weights = self.weights_at(height)
        try:
            return ValidatorSet(
                Validator(v.peer_id, v.public_key, weights[v.peer_id], v.moniker) for v in base
            )
        except KeyError as exc:
            raise ValueError(f"validator {exc.args[0]} has no scheduled weight") from exc

    def trust_of(self, peer: PeerId) -> int | None:
        return dict(self.trust).get(peer)

    def to_body(self) -> dict[str, Any]:
        """A canonical-msgpack-able map of the whole state."""
        return {
            "height": self.height,
            "trust": [list(t) for t in self.trust],
            "schedule": [[h, [list(w) for w in ws]] for h, ws in self.schedule],
            "scored_through": self.scored_through,
            "evidence": [list(e) for e in self.evidence],
        }

    @classmethod
    def from_body(cls, body: Any) -> WeightState:
        """Parse :meth:`to_body` output (lists or tuples); raise ``ValueError`` if malformed."""

        def num(x: Any) -> int:
            if isinstance(x, bool) or not isinstance(x, int):
                raise ValueError(f"{x!r} is not an integer")
            return x

        def pairs(raw: Any) -> PeerWeights:
            out = tuple((p, num(x)) for p, x in raw)
            if any(not isinstance(p, str) for p, _ in out):
                raise ValueError("peer ids must be strings")
            return out

        try:
            evidence = tuple((num(h), i) for h, i in body["evidence"])
            if any(not isinstance(i, bytes) for _, i in evidence):
                raise ValueError("evidence ids must be bytes")
            return cls(
                height=num(body["height"]),
                trust=pairs(body["trust"]),
                schedule=tuple((num(h), pairs(ws)) for h, ws in body["schedule"]),
                scored_through=num(body["scored_through"]),
                evidence=evidence,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed weight state: {exc}") from exc

    def digest(self) -> bytes:
        """SHA-256 of the canonical body: equal on every honest peer at the same height."""
        return canonical.digest(self.to_body())


def _usable_groups(
    state: WeightState, validators: ValidatorSet, vectors: Sequence[ScoreVector],
    offenders: set[PeerId], height: int,
) -> dict[tuple[int, bytes], dict[PeerId, ScoreVector]]:
    groups: dict[tuple[int, bytes], dict[PeerId, ScoreVector]] = {}
    conflicted: set[tuple[int, bytes, PeerId]] = set()
    for v in vectors:
        if not state.scored_through < v.height < height:
            continue
        if v.scorer not in validators or v.scorer in offenders:
            continue
        key = (v.height, v.query_id)
        group = groups.setdefault(key, {})
        seen = group.get(v.scorer)
        if seen is not None and seen != v:
            conflicted.add((v.height, v.query_id, v.scorer))
        group[v.scorer] = v
    for h, q, scorer in conflicted:
        del groups[(h, q)][scorer]
    return {
        key: group for key, group in groups.items()
        if group and validators.has_quorum(validators.weight_of_set(group))
    }


def update(
    state: WeightState,
    validators: ValidatorSet,
    vectors: Sequence[ScoreVector],
    evidence: Sequence[Evidence],
    *,
    height: int,
    params: WeightParams,
) -> WeightState:
    """Fold the score vectors and evidence committed at ``height`` into ``state`` (module rule).

    ``validators`` must be the set in force at ``height``
    (``state.validator_set(base, height)``); the result is independent of the
    order of ``vectors`` and ``evidence``.
    """
    params.validate()
    if height <= state.height:
        raise ValueError(f"height {height} is not after the last folded height {state.height}")
    scheduled = state.weights_at(height)
    if any(scheduled.get(v.peer_id) != v.weight for v in validators):
        raise ValueError(f"validators do not carry the weights scheduled for height {height}")
    ids = validators.ids

    applied = {i for _, i in state.evidence}
    offenders: set[PeerId] = set()
    new_evidence: list[tuple[int, bytes]] = []
    for ev in evidence:
        checked = check_evidence(ev, validators)
        if isinstance(checked, str):
            continue
        offender, ev_height = checked
        eid = evidence_id(ev)
        if eid in applied or not height - params.evidence_max_age <= ev_height <= height:
            continue
        applied.add(eid)
        offenders.add(offender)
        new_evidence.append((ev_height, eid))

    groups = _usable_groups(state, validators, vectors, offenders, height)
    start = height + params.delay_heights
    # The peers of the new entry: those of the set in force just before it (members change at epoch
    # boundaries, consensus/membership.py). A peer that was no validator at ``height`` has no quality here.
    targets = sorted(state.weights_at(start - 1))
    kept_evidence = tuple(sorted(
        e for e in (*state.evidence, *new_evidence) if e[0] >= height - params.evidence_max_age
    ))
    # Keep the entry in force at ``height`` and everything after it.
    current = [(h, w) for h, w in state.schedule if h <= height][-1:]
    future = tuple((h, w) for h, w in state.schedule if h > height)
    if not groups and not offenders:
        return WeightState(height, state.trust, (*current, *future), state.scored_through, kept_evidence)

    scored = set(ids)
    quality: dict[PeerId, int] = {j: 0 for j in targets}
    for group in groups.values():
        rows = [(dict(vec.scores), validators.weight_of(i)) for i, vec in group.items()]
        for j in targets:
            if j in scored:
                c = weighted_median(((row.get(j, 0), s) for row, s in rows), params.kappa)
                quality[j] += c * (ONE // MAX_SCORE)
    old_trust = dict(state.trust)
    trust: dict[PeerId, int] = {}
    p, d = params.ema.numerator, params.ema.denominator
    for j in targets:
        t = old_trust.get(j, params.initial_trust)
        if j in offenders:
            t, quality[j] = 0, 0
        elif groups and j in scored:
            quality[j] //= len(groups)
            t = (t * (d - p) + quality[j] * p) // d
        elif groups:
            quality[j] = t  # not a validator at ``height``: no information
        trust[j] = t
    if not groups:
        quality = {j: 0 if j in offenders else trust[j] for j in targets}

    honest = [j for j in targets if j not in offenders]

    def normalised(values: dict[PeerId, int]) -> dict[PeerId, Fraction]:
        total = sum(values.values())
        if total == 0:
            return {j: Fraction(1 if j in honest else 0, max(1, len(honest))) for j in targets}
        return {j: Fraction(values[j], total) for j in targets}

    qn, tn = normalised(quality), normalised(trust)
    if sum(quality.values()) == 0:  # no information about quality: do not pull shares towards equal
        shares = tn
    else:
        shares = {j: params.alpha_quality * qn[j] + params.beta_trust * tn[j] for j in targets}
    future = tuple((h, w) for h, w in future if h < start)
    last = dict((*current, *future)[-1][1])  # in force just before ``start``
    weights = allocate(shares, params, {j: last[j] for j in targets})
    entry = (start, tuple((j, weights[j]) for j in targets))
    return WeightState(
        height=height,
        trust=tuple((j, trust[j]) for j in targets),
        schedule=(*current, *future, entry),
        scored_through=max([state.scored_through, *(h for h, _ in groups)]),
        evidence=kept_evidence,
    )


def with_members(state: WeightState, boundary: int, leaving: Iterable[PeerId],
                 joining: Sequence[tuple[PeerId, int]], joiner_trust: int, params: WeightParams) -> WeightState:
    """The state with the members changed at ``boundary`` (the last scheduled start or later).

    Leavers lose their weight and trust. Joiners get the given weights (out of
    ``scale``) and ``joiner_trust``; the staying members share the rest of
    ``scale`` in proportion to the weights scheduled at ``boundary`` (by
    :func:`allocate` over that remainder: each keeps at least ``floor``).
    """
    if state.schedule and boundary < state.schedule[-1][0]:
        raise ValueError(f"boundary {boundary} is before the last scheduled set ({state.schedule[-1][0]})")
    gone = set(leaving)
    last = state.weights_at(boundary)
    staying = {j: w for j, w in last.items() if j not in gone}
    new = dict(joining)
    if not staying or set(new) & set(last):
        raise ValueError("a boundary must keep a member and may not re-admit one")
    rest = params.scale - sum(new.values())
    kept = allocate({j: Fraction(w) for j, w in staying.items()}, replace(params, scale=rest))
    weights = {**kept, **new}
    ids = sorted(weights)
    trust = {**{j: t for j, t in state.trust if j in staying}, **dict.fromkeys(new, joiner_trust)}
    schedule = tuple((h, w) for h, w in state.schedule if h < boundary)
    return WeightState(
        height=state.height,
        trust=tuple((j, trust.get(j, params.initial_trust)) for j in ids),
        schedule=(*schedule, (boundary, tuple((j, weights[j]) for j in ids))),
        scored_through=state.scored_through,
        evidence=state.evidence,
    )
