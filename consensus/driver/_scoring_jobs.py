"""Scoring decided values: one job per decision, ending in this peer's signed score vector.

After each decision (on an adaptive chain) the driver scores every answer
against the decided group on its own similarities
(:func:`consensus.scores.score_answers`), with its model as a judge of the
close calls (:func:`~consensus.driver._scoring.judge_pairs`), and signs the
vector. A job takes the value's outcomes one after another: an
:class:`~consensus.driver.Embed` when this peer did not check the value
(catch-up), a :class:`~consensus.driver.Judge` when there are close calls
and a judge, then the vector; the vectors it holds are in
:class:`~consensus.driver._scoring.ScoreBook`.

Bounds: :data:`MAX_SCORING_JOBS` jobs waiting for a host's answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from consensus import grouping
from consensus.driver._base import DriverBase
from consensus.driver._io import Effect, Embed, Judge, Judged, JudgePair, Send
from consensus.driver._scoring import judge_pairs
from consensus.messages import Answer, MessageError, Query, Value, open_envelope
from consensus.scores import JudgeResult, ScoreVector, score_answers
from consensus.validators import ValidatorSet
from multillmn.identity import PeerId

__all__ = ["MAX_SCORING_JOBS", "ScoringMixin"]

MAX_SCORING_JOBS = 16
"""Decisions being scored at once (waiting for similarities or a judge)."""


@dataclass
class _ScoredQuery:
    """One outcome of a decided value being scored: its answers, then its similarities and judged games."""

    question: str
    answers: list[Answer]
    winners: tuple[PeerId, ...]
    sims: tuple[int, ...] | None = None
    judged: list[JudgeResult] | None = None


@dataclass
class _ScoringJob:
    """Scoring a decided value: its outcomes one after another (``current``), then one signed vector."""

    height: int
    value: Value
    validators: ValidatorSet
    parts: list[_ScoredQuery]
    current: int = 0


class ScoringMixin(DriverBase):
    """The :class:`~consensus.driver.Driver`'s scoring of decided values (see the module docstring)."""

    _scoring: dict[int, _ScoringJob]  # jobs waiting for similarities or a judge, by request id

    def _start_scoring(self, height: int, value: Value, vs: ValidatorSet, out: list[Effect]) -> None:
        parts: list[_ScoredQuery] = []
        try:
            for o in value.outcomes():
                answers = [open_envelope(Answer, e, vs.public_key_of, self.verified).message for e in o.answers]
                question = open_envelope(Query, o.query, vs.public_key_of, self.verified).message.question
                parts.append(_ScoredQuery(question, answers, o.winners))
        except MessageError:
            return  # a decided value always opens; be defensive anyway
        known = self.scores.sims_of(value.value_id())  # None: decided without this peer checking it (catch-up)
        if known is not None and len(known) == len(parts):
            for part, sims in zip(parts, known, strict=True):
                part.sims = sims
        self._score_next(_ScoringJob(height, value, vs, parts), out)

    def _score_next(self, job: _ScoringJob, out: list[Effect]) -> None:
        """Take the job's outcomes in turn: similarities if missing, then judged games; then sign the vector."""
        while job.current < len(job.parts):
            part = job.parts[job.current]
            if part.sims is None:
                request = self._request_id()
                self._keep_scoring(request, job)
                out.append(Embed(request, ((part.question, tuple(a.text for a in part.answers)),)))
                return
            if part.judged is None:
                pairs = self._judged_pairs(job.validators, part)
                if pairs:
                    request = self._request_id()
                    self._keep_scoring(request, job)
                    a = part.answers
                    out.append(Judge(request, part.question, tuple(
                        JudgePair(a[i].peer, a[i].text, a[j].peer, a[j].text) for i, j in pairs)))
                    return
                part.judged = []
            job.current += 1
        self._finish_scoring(job, out)

    def _judged_pairs(self, vs: ValidatorSet, part: _ScoredQuery) -> list[tuple[int, int]]:
        """The close calls of one outcome this peer's judge should see (none without a judge)."""
        if not (self.config.judge and self.behaviour.judges()):
            return []
        assert part.sims is not None
        peers = [a.peer for a in part.answers]
        winners = [peers.index(p) for p in part.winners if p in peers]
        contested = 3 * vs.weight_of_set(part.winners) <= 2 * vs.weight_of_set(peers)
        own = peers.index(self.me) if self.me in peers else None
        return judge_pairs(len(peers), part.sims, self.config.threshold, self.config.judge_band,
                           contested_winners=winners if contested else (), own=own)

    def _judged(self, inp: Judged, out: list[Effect]) -> None:
        job = self._scoring.pop(inp.request, None)
        if job is not None and job.current < len(job.parts):
            job.parts[job.current].judged = list(inp.results)
            job.current += 1
            self._score_next(job, out)

    def _finish_scoring(self, job: _ScoringJob, out: list[Effect]) -> None:
        """Score every outcome against its decision; a peer's score for the height is the mean over the
        outcomes it answered (floor), so a value of many queries weighs like one of a single query."""
        totals: dict[PeerId, list[int]] = {}
        for part in job.parts:
            assert part.sims is not None
            peers = [a.peer for a in part.answers]
            texts = [a.text for a in part.answers]
            valid = [r for r in part.judged or [] if r.a in peers and r.b in peers and r.a != r.b]
            for peer, score in score_answers(peers, part.sims, [peers.index(p) for p in part.winners],
                                             grouping.eligibility(part.question, texts), valid):
                totals.setdefault(peer, []).append(score)
        scores = tuple((peer, sum(got) // len(got)) for peer, got in sorted(totals.items()))
        first = job.parts[0]
        own = next((a.text for a in first.answers if a.peer == self.me), None)
        scores = self.behaviour.scores(scores, {a.peer: a.text for a in first.answers}, own)
        vector = self._sign(ScoreVector(scorer=self.me, height=job.height, query_id=job.value.query_id(),
                                        scores=scores))
        self.scores.add_vector(vector, self.core.height)
        out.append(Send(vector))

    def _keep_scoring(self, request: int, job: _ScoringJob) -> None:
        self._scoring[request] = job
        while len(self._scoring) > MAX_SCORING_JOBS:  # a host that never answers must not grow this
            del self._scoring[min(self._scoring)]
