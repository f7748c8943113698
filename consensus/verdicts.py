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
2. Judge ``j``'s verdict on a group is its verdict on the group's
   representative, else on the group's first member (by index) it rated: a
   judge that heard only one of two answers of the same meaning still
   speaks for the group. A contender's *verdict* is
   ``sum(w_j * v_j) // sum(w_j)`` over the judges ``j`` outside it that gave
   one (0 if none: no evidence either way). Contenders within ``margin`` of the best verdict
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

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from consensus.grouping import TIE_MARGIN, Group, group_answers, pair_index
from consensus.messages import (
    MAX_VERDICT,
    Envelope,
    MessageError,
    Verdict,
    VerifiedCache,
    answers_digest,
    open_envelope,
)
from multillmn.identity import PeerId

__all__ = ["GENESIS_RULES", "MAX_VERDICT", "RULES", "Decision", "VerdictRule", "check_verdict", "decide",
           "group_verdict", "judge_on_group", "missing_judges_ok", "open_verdicts", "rejecting_weight", "rejection_pending",
           "verdict_matrix"]

RULES = ("mean", "veto")
GENESIS_RULES = ("none", "veto")
"""The genesis' ``verdict_rule``: ``none`` (weight and tie-breaks only, verdicts refused in values) or ``veto``."""


@dataclass(frozen=True)
class VerdictRule:
    """How verdicts carried in values decide (the genesis' ``verdict_rule = "veto"`` and ``verdict_margin``)."""

    margin: int = 500

    def __post_init__(self) -> None:
        if not 0 <= self.margin <= 2 * MAX_VERDICT:
            raise ValueError(f"verdict margin must be in [0, {2 * MAX_VERDICT}], got {self.margin}")


@dataclass(frozen=True)
class Decision:
    """The winning group and why: ``reason`` is ``"quorum"``, ``"verdict"``, ``"weight"`` or ``"tie-break"``;
    ``contenders``: the groups left after the verdicts (empty for a quorum)."""

    group: Group
    reason: str
    contenders: tuple[Group, ...]


def _sim(n: int, sims: Sequence[int], i: int, j: int) -> int:
    return 1000 if i == j else sims[pair_index(n, i, j)]


def judge_on_group(group: Group, row: Sequence[int | None]) -> int | None:
    """One judge's verdict on ``group``: on its representative, else on the first member it rated; ``None``
    if it rated none of them."""
    if row[group.representative] is not None:
        return row[group.representative]
    return next((v for k in sorted(group.members) if (v := row[k]) is not None), None)


def group_verdict(group: Group, weights: Sequence[int], verdicts: Sequence[Sequence[int | None]]) -> int:
    """Weighted mean verdict (floor) of the judges outside ``group`` on it (:func:`judge_on_group`); 0 if none."""
    inside = set(group.members)
    total = 0
    weight = 0
    for j, row in enumerate(verdicts):
        v = judge_on_group(group, row)
        if j in inside or v is None:
            continue
        total += weights[j] * v
        weight += weights[j]
    return 0 if weight == 0 else total // weight


def rejecting_weight(group: Group, weights: Sequence[int], verdicts: Sequence[Sequence[int | None]],
                     margin: int = 0) -> int:
    """The weight of the judges outside ``group`` whose verdict on it (:func:`judge_on_group`) is below
    ``-margin``."""
    inside = set(group.members)
    return sum(weights[j] for j, row in enumerate(verdicts)
               if j not in inside and (v := judge_on_group(group, row)) is not None and v < -margin)


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


# --- verdicts carried in a value (ADR 0022 "Integration plan") -----------------------------------


def check_verdict(verdict: Verdict, query_id: bytes, peers: Sequence[PeerId], answers: Sequence[Envelope],
                  sims: Sequence[int], threshold: int) -> str | None:
    """Why a signed verdict cannot count for the outcome whose answers (by peer id, in order) are ``peers`` /
    ``answers`` with claimed ``sims``, or ``None``: it is for this query; its judge answered it; every rated
    answer is among them and the digest is of exactly those envelopes; and it rates no answer of the same
    meaning as the judge's own (claimed similarity ``>= threshold``: its own group, from which a judge recuses).
    """
    if verdict.query_id != query_id:
        return f"verdict of {verdict.judge} is for another query"
    index = {p: k for k, p in enumerate(peers)}
    me = index.get(verdict.judge)
    if me is None:
        return f"verdict of {verdict.judge}, who did not answer"
    n = len(peers)
    rated = []
    for answerer, _ in verdict.verdicts:
        k = index.get(answerer)
        if k is None:
            return f"verdict of {verdict.judge} rates {answerer}, who did not answer"
        if sims[pair_index(n, me, k)] >= threshold:
            return f"verdict of {verdict.judge} rates {answerer}, an answer of its own group"
        rated.append(answers[k])
    if answers_digest(rated) != verdict.answers_digest:
        return f"verdict of {verdict.judge} is for other answers"
    return None


def open_verdicts(envelopes: Sequence[Envelope], query_id: bytes, peers: Sequence[PeerId],
                  answers: Sequence[Envelope], sims: Sequence[int], threshold: int,
                  public_key_of: Callable[[PeerId], bytes | None], cache: VerifiedCache | None = None,
                  ) -> tuple[list[list[int | None]], set[int]] | str:
    """The verdict matrix (``rows[j][k]``: judge ``j``'s verdict on answer ``k``) and the indices of the
    judges heard from, or why the carried verdicts are not valid: each opens under a validator's key and
    passes :func:`check_verdict`; judges appear once, in ascending peer-id order."""
    opened: list[Verdict] = []
    for env in envelopes:
        try:
            verdict = open_envelope(Verdict, env, public_key_of, cache).message
        except MessageError as exc:
            return f"verdict: {exc}"
        if opened and verdict.judge <= opened[-1].judge:
            return "verdicts are not in ascending judge order, or a judge gives two"
        reason = check_verdict(verdict, query_id, peers, answers, sims, threshold)
        if reason is not None:
            return reason
        opened.append(verdict)
    return verdict_matrix(opened, peers)


def verdict_matrix(verdicts: Sequence[Verdict], peers: Sequence[PeerId]) -> tuple[list[list[int | None]], set[int]]:
    """:func:`decide`'s verdict rows for checked verdicts over the answers of ``peers``, and the judges' indices."""
    n = len(peers)
    index = {p: k for k, p in enumerate(peers)}
    rows: list[list[int | None]] = [[None] * n for _ in range(n)]
    judges: set[int] = set()
    for verdict in verdicts:
        j = index[verdict.judge]
        judges.add(j)
        for answerer, v in verdict.verdicts:
            rows[j][index[answerer]] = v
    return rows, judges


def rejection_pending(weights: Sequence[int], sims: Sequence[int], threshold: int,
                      verdicts: Sequence[Sequence[int | None]], margin: int, total_weight: int) -> bool:
    """Whether the judges not yet heard on some contender (absent, or rating only other answers) could still
    reject it: a proposer may wait a little longer for them (ADR 0022). Never a validity condition."""
    n = len(weights)
    groups = group_answers(weights, sims, threshold)
    heaviest = max(g.weight for g in groups)
    if 3 * heaviest > 2 * sum(weights):
        return False
    for g in (g for g in groups if 2 * g.weight >= heaviest):
        rejecting = rejecting_weight(g, weights, verdicts, margin)
        silent = sum(weights[j] for j in range(n) if j not in g.members and judge_on_group(g, verdicts[j]) is None)
        if 3 * rejecting <= total_weight < 3 * (rejecting + silent):
            return True
    return False


def missing_judges_ok(weights: Sequence[int], judges: set[int], total_weight: int) -> bool:
    """The omission rule for a contested outcome: the answerers whose verdicts it does not carry weigh at
    most 1/3 of all validators' weight. An honest proposer can meet it whenever the answerers that do not
    judge weigh at most 1/3, so the veto is as live as consensus at the fault bound (faulty answerers at
    exactly 1/3 that never judge cannot stall it); a Byzantine proposer can leave out at most 1/3 of the
    weight's verdicts, which can only lose rejections (the rejection share counts against the total)."""
    return 3 * sum(w for k, w in enumerate(weights) if k not in judges) <= total_weight
