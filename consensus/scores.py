"""Score vectors: one validator's per-answer quality scores for a decided query.

After a query is decided at height ``h``, every validator scores each answer
in the decided value with :func:`score_answers` on *its own* similarities
(and, optionally, its own LLM-judge verdicts), signs a :class:`ScoreVector`
and gossips it. Committed vectors feed :func:`consensus.weights.update`,
which takes the stake-weighted median per answerer, so no minority of
scorers can move anyone's score.

Normative scoring rule (all integers, per mille; ``W`` = the decided group)::

    A_j = 1000                                   if j is in W
    A_j = 0                                      if j restates the question (consensus.content)
    A_j = floor(max(0, max_{k in W} sim(j, k)) / 2)     otherwise: a near miss keeps some credit
    J_j = floor((1000 * wins_j + 500 * ties_j) / games_j)        judge score
    score_j = A_j                                       if j played no judged game
    score_j = floor((A_j * (d - p) + J_j * p) / d)      else, judge_share = p/d

Agreement is measured against the *decided* answer, not against every
other answer: a bloc that always gives one shared answer agrees with itself,
and scoring agreement with all answers let such a bloc earn credit from
honest scorers while it lost every decision (docs/benchmarks.md, the
accuracy runs of 2026-11-22). Judged games, when the decision was contested
or a pair was a close call, let a losing answer that was in fact better win
its score back.

A judged game between answers ``a`` and ``b`` is shown to the judge in both
orders; an answer wins only if it wins in both orders, anything else (split
verdicts, ties) is a tie for both: the position-bias rule of MT-Bench, as
used by PolyLink's TIQE.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Annotated, ClassVar

from pydantic import Field, model_validator

from consensus.grouping import pair_count, pair_index
from consensus.messages import MAX_PEERS, Hash32, Height, Message, PeerIdField
from multillmn.identity import PeerId

__all__ = [
    "ScoreVector",
    "JudgeResult",
    "Scores",
    "MAX_SCORE",
    "DEFAULT_JUDGE_SHARE",
    "score_answers",
]

MAX_SCORE = 1000
DEFAULT_JUDGE_SHARE = Fraction(1, 2)

Score = Annotated[int, Field(ge=0, le=MAX_SCORE)]
Scores = tuple[tuple[PeerId, int], ...]
"""``(peer id, score)`` pairs sorted by peer id, unique."""


class ScoreVector(Message):
    """A scorer's per-mille scores of the answers to the query decided at ``height``."""

    KIND: ClassVar[str] = "scores"
    SIGNER: ClassVar[str] = "scorer"
    scorer: PeerIdField
    height: Height
    query_id: Hash32
    scores: Annotated[
        tuple[tuple[PeerIdField, Score], ...], Field(min_length=1, max_length=MAX_PEERS)
    ]

    @model_validator(mode="after")
    def _sorted_unique(self) -> ScoreVector:
        ids = [p for p, _ in self.scores]
        if any(a >= b for a, b in zip(ids, ids[1:])):
            raise ValueError("scores must be sorted by peer id without duplicates")
        return self

    def score_of(self, peer: PeerId) -> int | None:
        """The score given to ``peer``, ``None`` if it was not scored."""
        for p, s in self.scores:
            if p == peer:
                return s
        return None


@dataclass(frozen=True)
class JudgeResult:
    """An LLM judge's verdicts on answers ``a`` and ``b``, shown in both orders.

    ``a_first`` is the winner (``a``, ``b`` or ``None`` for a tie) when ``a``
    is shown first; ``b_first`` when ``b`` is shown first.
    """

    a: PeerId
    b: PeerId
    a_first: PeerId | None
    b_first: PeerId | None

    def winner(self) -> PeerId | None:
        """The answer that won in both orders, or ``None`` (a tie)."""
        if self.a_first is not None and self.a_first == self.b_first:
            return self.a_first
        return None


def _judge_scores(peers: Sequence[PeerId], results: Sequence[JudgeResult]) -> dict[PeerId, int]:
    known = set(peers)
    points: dict[PeerId, int] = {}
    games: dict[PeerId, int] = {}
    for r in results:
        if r.a == r.b or r.a not in known or r.b not in known:
            raise ValueError(f"judge result for unknown or identical answers {r.a}, {r.b}")
        for verdict in (r.a_first, r.b_first):
            if verdict is not None and verdict not in (r.a, r.b):
                raise ValueError(f"judge verdict {verdict} is neither {r.a} nor {r.b}")
        win = r.winner()
        for p in (r.a, r.b):
            games[p] = games.get(p, 0) + 1
            points[p] = points.get(p, 0) + (1000 if win == p else 500 if win is None else 0)
    return {p: points[p] // games[p] for p in games}


def score_answers(
    peers: Sequence[PeerId],
    sims: Sequence[int],
    decided: Collection[int],
    eligible: Sequence[bool] | None = None,
    judge_results: Sequence[JudgeResult] = (),
    judge_share: Fraction = DEFAULT_JUDGE_SHARE,
) -> Scores:
    """Per-answerer scores by the module's rule, sorted by peer id.

    ``peers`` are the answerers in the order of ``sims`` (the upper triangle,
    as in :mod:`consensus.grouping`), ``decided`` the indices of the decided
    group and ``eligible[j]`` whether answer ``j`` says something the question
    did not (:func:`consensus.grouping.eligibility`; default: all do).
    """
    n = len(peers)
    if n == 0 or len(set(peers)) != n:
        raise ValueError("answerers must be non-empty and distinct")
    if len(sims) != pair_count(n) or any(not -1000 <= s <= 1000 for s in sims):
        raise ValueError(f"{n} answers need {pair_count(n)} similarities in [-1000, 1000]")
    winners = set(decided)
    if not winners or any(not 0 <= k < n for k in winners):
        raise ValueError(f"the decided group must be a non-empty set of indices below {n}")
    if eligible is not None and len(eligible) != n:
        raise ValueError(f"{n} answers need {n} eligibility flags")
    if not 0 <= judge_share <= 1:
        raise ValueError("judge_share must be in [0, 1]")
    judged = _judge_scores(peers, judge_results)
    out: list[tuple[PeerId, int]] = []
    for j in range(n):
        if j in winners:
            agreement = MAX_SCORE
        elif eligible is not None and not eligible[j]:
            agreement = 0
        else:
            agreement = max(0, max(sims[pair_index(n, j, k)] for k in winners)) // 2
        score = agreement
        if peers[j] in judged:
            p, d = judge_share.numerator, judge_share.denominator
            score = (agreement * (d - p) + judged[peers[j]] * p) // d
        out.append((peers[j], score))
    return tuple(sorted(out))
