"""Deciding an honest split by judges' verdicts (issue 15): a pure rule on integers.

When the answers of a query fall into groups (:func:`consensus.grouping.group_answers`)
and no group holds more than 2/3 of the answering weight, weight alone
decides a split between two honest model families by whichever family is
heavier, whatever the question. This rule lets the peers' judges decide it
instead, on per-judge integer verdicts that every peer can re-run:

* ``verdicts[j][k]``: judge ``j``'s (an answerer's) verdict on answer ``k``,
  per mille in ``[-1000, 1000]`` (positive: correct), already calibrated by
  the judge (``None``: no verdict). A judge's verdict on any answer of its
  own group is ignored (recusal: a model likes its own answer).
* ``relevance[k]``: per-mille similarity of answer ``k`` to its question;
  below ``relevance_floor`` the answer counts as not answering, like an echo
  (:func:`consensus.content.restates`).
* ``confidence[k]``: the answering model's mean token log-probability in
  milli-nats (``<= 0``), a tie signal only.

Normative rule (:func:`decide`), all integer arithmetic:

1. A group holding more than 2/3 of the answering weight wins (verdicts
   never override a quorum of weight). Otherwise the *contenders* are the
   groups weighing at least half as much as the heaviest (``2 * w >= max``)
   when verdicts are given, else the groups tied in weight as in
   :func:`consensus.grouping.choose` (within ``answering // TIE_MARGIN``).
2. A contender's *verdict* is ``sum(w_j * v_j) // sum(w_j)`` over the judges
   ``j`` outside it that gave a verdict on its representative (0 if none:
   no evidence either way). Contenders within ``margin`` of the best verdict
   stay; with ``margin >= 2000`` verdicts never decide. Under ``rule="veto"``
   instead, a contender is *rejected* when the judges outside it whose
   verdict is below ``-margin`` hold more than 1/3 of ``total_weight`` (all
   validators' weight): faulty judges, below 1/3 by the fault model, can
   reject nothing on their own. The contenders not rejected stay (all of
   them if every one is rejected).
3. Among those, the heaviest (within ``answering // TIE_MARGIN``), then the
   old order of :func:`consensus.grouping.choose`: a representative that
   *answers* (not an echo, and at least ``relevance_floor`` relevant when
   relevance is given) over one that does not, the larger support, then
   the higher confidence, the larger weight, the lowest index.

Without verdicts, relevance and confidence it is exactly
:func:`consensus.grouping.choose` (``tests/test_verdicts.py`` checks it on
random inputs).

The verdicts are signed by their judges and carried in the decided value, so
a validator re-runs this function on them, as it re-runs grouping on the
claimed similarities; only relevance and similarities are floats re-checked
within a tolerance.

Chosen by measurement (ADR 0022, ``bench/verdicts.py``): ``rule="veto"``,
``margin=500``, with each judge's verdict the gap between an answer's mean
token log-probability under the judge's model and its own answer's, in
milli-nats. The weighted mean is kept for comparison: with recusal it is
captured by colluders (their verdicts land on every honest group and on
none of theirs), which the veto's 1/3 threshold prevents.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from consensus.grouping import TIE_MARGIN, Group, group_answers, pair_index

__all__ = ["MAX_VERDICT", "RULES", "Decision", "decide", "group_verdict", "rejecting_weight"]

MAX_VERDICT = 1000
RULES = ("mean", "veto")


@dataclass(frozen=True)
class Decision:
    """The winning group and why: ``reason`` is ``"quorum"``, ``"verdict"``, ``"weight"`` or ``"tie-break"``;
    ``contenders``: the groups left after the verdicts (empty for a quorum)."""

    group: Group
    reason: str
    contenders: tuple[Group, ...]


def _sim(n: int, sims: Sequence[int], i: int, j: int) -> int:
    return 1000 if i == j else sims[pair_index(n, i, j)]


def group_verdict(group: Group, weights: Sequence[int], verdicts: Sequence[Sequence[int | None]]) -> int:
    """Weighted mean verdict (floor) of the judges outside ``group`` on its representative; 0 if none."""
    inside = set(group.members)
    total = 0
    weight = 0
    for j, row in enumerate(verdicts):
        v = row[group.representative]
        if j in inside or v is None:
            continue
        total += weights[j] * v
        weight += weights[j]
    return 0 if weight == 0 else total // weight


def rejecting_weight(group: Group, weights: Sequence[int], verdicts: Sequence[Sequence[int | None]],
                     margin: int = 0) -> int:
    """The weight of the judges outside ``group`` whose verdict on its representative is below ``-margin``."""
    inside = set(group.members)
    return sum(weights[j] for j, row in enumerate(verdicts)
               if j not in inside and (v := row[group.representative]) is not None and v < -margin)


def decide(
    weights: Sequence[int],
    sims: Sequence[int],
    threshold: int,
    *,
    eligible: Sequence[bool] | None = None,
    verdicts: Sequence[Sequence[int | None]] | None = None,
    relevance: Sequence[int] | None = None,
    relevance_floor: int = 0,
    confidence: Sequence[int] | None = None,
    margin: int = 0,
    rule: str = "mean",
    total_weight: int | None = None,
) -> Decision:
    """The winning group by the module's rule (see the docstring); raises ``ValueError`` on bad shapes."""
    n = len(weights)
    for name, seq in (("eligible", eligible), ("verdicts", verdicts), ("relevance", relevance),
                      ("confidence", confidence)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{n} answers need {n} {name} entries, got {len(seq)}")
    if verdicts is not None:
        for row in verdicts:
            if len(row) != n:
                raise ValueError(f"a verdict row must have {n} entries")
            if any(v is not None and not -MAX_VERDICT <= v <= MAX_VERDICT for v in row):
                raise ValueError("verdicts are per mille in [-1000, 1000]")
    if margin < 0:
        raise ValueError("margin must be non-negative")
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}")
    total = sum(weights) if total_weight is None else total_weight
    if total < sum(weights):
        raise ValueError("the total weight is less than the answering weight")
    groups = group_answers(weights, sims, threshold)
    answering = sum(weights)
    heaviest = max(g.weight for g in groups)
    if 3 * heaviest > 2 * answering:
        return Decision(next(g for g in groups if g.weight == heaviest), "quorum", ())
    if verdicts is None:
        contenders = [g for g in groups if g.weight >= heaviest - answering // TIE_MARGIN]
    else:
        contenders = [g for g in groups if 2 * g.weight >= heaviest]
    reason = "tie-break"
    if verdicts is not None and len(contenders) > 1:
        if rule == "mean":
            scored = {g.representative: group_verdict(g, weights, verdicts) for g in contenders}
            best = max(scored.values())
            kept = [g for g in contenders if scored[g.representative] >= best - margin]
        else:
            kept = [g for g in contenders if 3 * rejecting_weight(g, weights, verdicts, margin) <= total] \
                or contenders
        if len(kept) < len(contenders):
            reason = "verdict"
        contenders = kept
    heaviest_left = max(g.weight for g in contenders)
    tied = [g for g in contenders if g.weight >= heaviest_left - answering // TIE_MARGIN]
    if len(tied) < len(contenders) and reason == "tie-break":
        reason = "weight"

    def answers(g: Group) -> bool:
        k = g.representative
        if eligible is not None and not eligible[k]:
            return False
        return relevance is None or relevance[k] >= relevance_floor

    def support(g: Group) -> int:
        inside = set(g.members)
        return sum(weights[k] * max(0, _sim(n, sims, g.representative, k)) for k in range(n) if k not in inside)

    def key(g: Group) -> tuple[bool, int, int, int, int]:
        conf = 0 if confidence is None else confidence[g.representative]
        return (answers(g), support(g), conf, g.weight, -g.representative)

    return Decision(max(tied, key=key), reason, tuple(contenders))
