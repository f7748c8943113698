"""Grouping answers by meaning, on integers only, and validating a proposed :class:`Value`.

Similarities are per-mille integers in ``[-1000, 1000]`` given as the upper
triangle of the matrix, row major: for ``n`` answers the pairs
``(0,1), (0,2), ..., (0,n-1), (1,2), ..., (n-2,n-1)``. An answer's
similarity to itself is 1000 and is not listed.

Normative grouping rule (``threshold`` is a per-mille int):

1. While some answer is unassigned, pick as *representative* the unassigned
   answer with the largest weight; ties: the larger sum of weights of the
   unassigned answers (itself included) whose similarity to it is
   ``>= threshold``; then the lowest index.
2. Its group is every unassigned answer (itself included) whose similarity to
   the representative is ``>= threshold``; those become assigned.
3. The winning group has the largest total weight. Groups within
   ``floor(answering weight / 10_000)`` of the heaviest count as tied (the
   integer rounding of computed weights, at most one unit per validator,
   must not decide); ties, in order: a group whose representative says
   something the question did not (:func:`consensus.content.restates` is
   false) over one that restates it; the larger *support*, the sum over
   answers outside the group of ``weight * max(0, similarity to the
   representative)`` (the answer closest in meaning to the rest); the larger
   weight; the lowest representative index. Restating only breaks ties:
   "It is 0." rightly answers "What is 0 times 3?", so it must never
   override weight.

The choice is a pure function of the *claimed* integers in a value; honest
validators only check that their own similarities are close to the claimed
ones, so float noise in embeddings cannot split them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from consensus.messages import (
    Answer,
    Envelope,
    EvidencePair,
    MessageError,
    Outcome,
    Query,
    Signed,
    Value,
    Verdict,
    VerifiedCache,
    open_envelope,
    query_id_of,
)
from consensus.content import restates
from consensus.validators import ValidatorSet

if TYPE_CHECKING:
    from consensus.verdicts import VerdictRule
from multillmn import canonical
from multillmn.identity import PeerId

__all__ = [
    "TIE_MARGIN",
    "Group",
    "pair_index",
    "pair_count",
    "quantise_similarity",
    "group_answers",
    "choose",
    "eligibility",
    "check_claimed_sims",
    "validate_value",
    "validate_outcome",
    "build_value",
    "build_outcome",
]


TIE_MARGIN = 10_000
"""Groups within 1/TIE_MARGIN of the answering weight of the heaviest one are tied (rule 3)."""


@dataclass(frozen=True)
class Group:
    """A group of answers: its representative's index, member indices (ascending) and total weight."""

    representative: int
    members: tuple[int, ...]
    weight: int


def pair_count(n: int) -> int:
    """Number of entries in the upper triangle for ``n`` answers: ``n(n-1)/2``."""
    return n * (n - 1) // 2


def pair_index(n: int, i: int, j: int) -> int:
    """Position of the pair ``{i, j}`` (``i != j``) in the row-major upper triangle for ``n`` answers."""
    if i == j or not (0 <= i < n and 0 <= j < n):
        raise ValueError(f"no pair ({i}, {j}) among {n} answers")
    if i > j:
        i, j = j, i
    return i * n - i * (i + 1) // 2 + (j - i - 1)


def quantise_similarity(cosine: float) -> int:
    """A float similarity as a per-mille int clamped to ``[-1000, 1000]`` (for the runner)."""
    return max(-1000, min(1000, round(cosine * 1000)))


def _sim(n: int, sims: Sequence[int], i: int, j: int) -> int:
    return 1000 if i == j else sims[pair_index(n, i, j)]


def group_answers(weights: Sequence[int], sims: Sequence[int], threshold: int) -> list[Group]:
    """Partition answers into groups by the module's normative rule, in order of formation."""
    n = len(weights)
    if n == 0:
        raise ValueError("no answers to group")
    if len(sims) != pair_count(n):
        raise ValueError(f"{n} answers need {pair_count(n)} similarities, got {len(sims)}")
    if any(w <= 0 for w in weights):
        raise ValueError("answer weights must be positive")
    if not -1000 <= threshold <= 1000:
        raise ValueError("threshold must be a per-mille int in [-1000, 1000]")
    unassigned = list(range(n))
    groups: list[Group] = []
    while unassigned:

        def near(rep: int) -> list[int]:
            return [k for k in unassigned if _sim(n, sims, rep, k) >= threshold]

        def key(i: int) -> tuple[int, int, int]:
            return (weights[i], sum(weights[k] for k in near(i)), -i)

        rep = max(unassigned, key=key)
        members = near(rep)
        groups.append(Group(rep, tuple(members), sum(weights[k] for k in members)))
        taken = set(members)
        unassigned = [k for k in unassigned if k not in taken]
    return groups


def choose(weights: Sequence[int], sims: Sequence[int], threshold: int,
           eligible: Sequence[bool] | None = None) -> Group:
    """The winning group by rule 3; ``eligible[k]``: answer ``k`` says something new (default: all do)."""
    n = len(weights)
    groups = group_answers(weights, sims, threshold)
    if eligible is not None and len(eligible) != n:
        raise ValueError(f"{n} answers need {n} eligibility flags, got {len(eligible)}")

    def support(g: Group) -> int:
        inside = set(g.members)
        return sum(weights[k] * max(0, _sim(n, sims, g.representative, k)) for k in range(n) if k not in inside)

    def says_something(g: Group) -> bool:
        return eligible is None or eligible[g.representative]

    heaviest = max(g.weight for g in groups)
    tied = [g for g in groups if g.weight >= heaviest - sum(weights) // TIE_MARGIN]
    return max(tied, key=lambda g: (says_something(g), support(g), g.weight, -g.representative))


def eligibility(question: str, texts: Sequence[str]) -> list[bool]:
    """Rule 3's tie-break flag per answer: it says something ``question`` did not."""
    return [not restates(question, t) for t in texts]


def check_claimed_sims(claimed: Sequence[int], local: Sequence[int], tolerance: int) -> str | None:
    """``None`` if every claimed similarity is within ``tolerance`` of the local one, else why not."""
    if len(claimed) != len(local):
        return f"claimed {len(claimed)} similarities, computed {len(local)}"
    for k, (c, m) in enumerate(zip(claimed, local)):
        if abs(c - m) > tolerance:
            return f"similarity {k} claimed {c} but computed {m} (tolerance {tolerance})"
    return None


def validate_value(
    value: Value,
    *,
    validators: ValidatorSet,
    local_sims: Sequence[Sequence[int]] | None,
    threshold: int,
    tolerance: int,
    min_answer_weight_quorum: bool = True,
    cache: VerifiedCache | None = None,
    chain_id: str | None = None,
    verdict_rule: VerdictRule | None = None,
) -> str | None:
    """``None`` if ``value`` is valid, else a human-readable reason.

    With ``chain_id``, the value must be for that chain. Its queries must be
    distinct and each :class:`Outcome` valid (:func:`validate_outcome`);
    ``local_sims``, if given, holds this peer's own similarities per outcome.
    """
    if chain_id is not None and value.chain_id != chain_id:
        return f"the value is for chain {value.chain_id!r}, not {chain_id!r}"
    outcomes = value.outcomes()
    if len({o.query_id() for o in outcomes}) != len(outcomes):
        return "the value decides one query twice"
    if local_sims is not None and len(local_sims) != len(outcomes):
        return f"{len(outcomes)} outcomes need {len(outcomes)} similarity lists, got {len(local_sims)}"
    for k, outcome in enumerate(outcomes):
        reason = validate_outcome(
            outcome, validators=validators, local_sims=None if local_sims is None else local_sims[k],
            threshold=threshold, tolerance=tolerance, min_answer_weight_quorum=min_answer_weight_quorum, cache=cache,
            verdict_rule=verdict_rule)
        if reason is not None:
            return reason if k == 0 else f"query {k}: {reason}"
    return None


def validate_outcome(
    outcome: Outcome,
    *,
    validators: ValidatorSet,
    local_sims: Sequence[int] | None,
    threshold: int,
    tolerance: int,
    min_answer_weight_quorum: bool = True,
    cache: VerifiedCache | None = None,
    verdict_rule: VerdictRule | None = None,
) -> str | None:
    """``None`` if one query's outcome is valid, else a human-readable reason.

    Checks: the query is signed by a validator; each answer opens, is for this
    query and comes from a distinct validator, in ascending peer-id order; the
    answerers carry a quorum of weight (if ``min_answer_weight_quorum``); the
    similarity list has ``n(n-1)/2`` entries within ``tolerance`` of
    ``local_sims`` (if given); and ``winners``/``answer`` are exactly what
    :func:`choose` yields on the claimed similarities. With a ``verdict_rule``
    (the genesis' ``veto``, ADR 0022), the carried verdicts must be valid
    (:func:`consensus.verdicts.open_verdicts`), a contested outcome must carry
    those of answerers holding all but at most 1/3 of the total weight
    (:func:`consensus.verdicts.missing_judges_ok`), and the choice is
    :func:`consensus.verdicts.decide`'s veto; without one, an outcome carries
    no verdicts and the choice is :func:`choose`'s.
    """
    try:
        question = open_envelope(Query, outcome.query, validators.public_key_of, cache).message.question
    except MessageError as exc:
        return f"query: {exc}"
    qid = query_id_of(outcome.query)
    answers: list[Answer] = []
    seen: set[PeerId] = set()
    for k, env in enumerate(outcome.answers):
        try:
            answer = open_envelope(Answer, env, validators.public_key_of, cache).message
        except MessageError as exc:
            return f"answer {k}: {exc}"
        if answer.query_id != qid:
            return f"answer {k} from {answer.peer} is for another query"
        if answer.peer in seen:
            return f"duplicate answer from {answer.peer}"
        if answers and answer.peer < answers[-1].peer:
            return "answers are not in ascending peer-id order"
        seen.add(answer.peer)
        answers.append(answer)
    weights = [validators.weight_of(a.peer) for a in answers]
    if min_answer_weight_quorum and not validators.has_quorum(sum(weights)):
        return (
            f"answers carry weight {sum(weights)} of {validators.total}; "
            "more than two thirds is required"
        )
    n = len(answers)
    if len(outcome.sims) != pair_count(n):
        return f"{n} answers need {pair_count(n)} similarities, got {len(outcome.sims)}"
    if local_sims is not None:
        reason = check_claimed_sims(outcome.sims, local_sims, tolerance)
        if reason is not None:
            return reason
    eligible = eligibility(question, [a.text for a in answers])
    if verdict_rule is None:
        if outcome.verdicts:
            return "verdicts in a value of a chain without a verdict rule"
        group = choose(weights, outcome.sims, threshold, eligible)
    else:
        from consensus import verdicts as rule

        opened = rule.open_verdicts(outcome.verdicts, qid, [a.peer for a in answers], outcome.answers,
                                    outcome.sims, threshold, validators.public_key_of, cache)
        if isinstance(opened, str):
            return opened
        matrix, judges = opened
        contested = 3 * max(g.weight for g in group_answers(weights, outcome.sims, threshold)) <= 2 * sum(weights)
        if contested and not rule.missing_judges_ok(weights, judges, validators.total):
            return ("a contested query without the verdicts of answerers holding all but at most 1/3 "
                    "of the weight")
        group = rule.decide(weights, outcome.sims, threshold, eligible=eligible,
                            verdicts=matrix if judges else None, rule="veto", margin=verdict_rule.margin,
                            total_weight=validators.total).group
    winners = tuple(answers[k].peer for k in group.members)
    if outcome.winners != winners:
        return f"winners {list(outcome.winners)} differ from the computed {list(winners)}"
    if outcome.answer != answers[group.representative].text:
        return "answer text is not the winning group's representative answer"
    return None


def build_outcome(
    query: Envelope, answers: Sequence[Signed[Answer]], sims: Sequence[int], weights: Sequence[int], threshold: int,
    *, verdicts: Sequence[Signed[Verdict]] = (), verdict_rule: VerdictRule | None = None, total_weight: int = 0,
) -> Outcome:
    """One query's outcome: answers sorted by peer id, the claimed sims and the choice.

    ``sims`` (upper triangle) and ``weights`` refer to ``answers`` in the order
    given; they are permuted to the sorted order. Raises ``ValueError`` on a
    duplicate answerer, an answer for another query or mismatched lengths.
    With a ``verdict_rule``, the ``verdicts`` (signatures checked, one per
    judge) that count for these answers (:func:`consensus.verdicts.check_verdict`)
    are carried and decide by the veto over ``total_weight`` (all validators').
    """
    n = len(answers)
    if len(weights) != n or len(sims) != pair_count(n):
        raise ValueError("weights and similarities do not match the answers")
    qid = query_id_of(query)
    if any(a.message.query_id != qid for a in answers):
        raise ValueError("an answer is for another query")
    order = sorted(range(n), key=lambda k: answers[k].signer)
    if len({a.signer for a in answers}) != n:
        raise ValueError("duplicate answerer")
    new_weights = [weights[k] for k in order]
    new_sims = [
        sims[pair_index(n, order[i], order[j])] for i in range(n) for j in range(i + 1, n)
    ]
    sorted_answers = [answers[k] for k in order]
    question = str(canonical.unpack(query.body)["question"])  # our own query envelope: no need to verify
    eligible = eligibility(question, [a.message.text for a in sorted_answers])
    carried: list[Signed[Verdict]] = []
    if verdict_rule is None:
        group = choose(new_weights, new_sims, threshold, eligible)
    else:
        from consensus import verdicts as rule

        peers = [a.signer for a in sorted_answers]
        envelopes = [a.envelope for a in sorted_answers]
        by_judge = {v.signer: v for v in verdicts
                    if rule.check_verdict(v.message, qid, peers, envelopes, new_sims, threshold) is None}
        carried = [by_judge[j] for j in sorted(by_judge)]
        matrix, judges = rule.verdict_matrix([v.message for v in carried], peers)
        group = rule.decide(new_weights, new_sims, threshold, eligible=eligible,
                            verdicts=matrix if judges else None, rule="veto", margin=verdict_rule.margin,
                            total_weight=max(total_weight, sum(new_weights))).group
    return Outcome(
        query=query,
        answers=tuple(a.envelope for a in sorted_answers),
        sims=tuple(new_sims),
        winners=tuple(sorted_answers[k].signer for k in group.members),
        answer=sorted_answers[group.representative].message.text,
        verdicts=tuple(v.envelope for v in carried),
    )


def build_value(
    query: Envelope,
    answers: Sequence[Signed[Answer]],
    sims: Sequence[int],
    weights: Sequence[int],
    threshold: int,
    *,
    validators_hash: bytes = b"",
    next_validators_hash: bytes = b"",
    chain_id: str = "",
    scores: Sequence[Envelope] = (),
    evidence: Sequence[EvidencePair] = (),
    joins: Sequence[Envelope] = (),
    leaves: Sequence[Envelope] = (),
    last_commit: Sequence[Envelope] = (),
    more: Sequence[Outcome] = (),
    verdicts: Sequence[Signed[Verdict]] = (),
    verdict_rule: VerdictRule | None = None,
    total_weight: int = 0,
) -> Value:
    """The proposer's value: the first query's outcome (:func:`build_outcome`), then ``more`` outcomes.

    ``validators_hash``, ``next_validators_hash``, ``scores``, ``evidence``, the membership requests
    and ``last_commit`` are carried as given (see :class:`consensus.chain.Chain`).
    """
    first = build_outcome(query, answers, sims, weights, threshold, verdicts=verdicts, verdict_rule=verdict_rule,
                          total_weight=total_weight)
    return Value(
        chain_id=chain_id,
        query=first.query,
        answers=first.answers,
        sims=first.sims,
        winners=first.winners,
        answer=first.answer,
        validators_hash=validators_hash,
        next_validators_hash=next_validators_hash,
        scores=tuple(scores),
        evidence=tuple(evidence),
        joins=tuple(joins),
        leaves=tuple(leaves),
        last_commit=tuple(last_commit),
        more=tuple(more),
        verdicts=first.verdicts,
    )
