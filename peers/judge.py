"""LLM-as-a-judge for close calls: a peer's own model picks the correct one of two answers.

Which answers are judged is the driver's choice
(:func:`consensus.driver.judge_pairs`): pairs whose quantised
similarity lies within ``band`` per mille of the grouping threshold, where
MiniLM alone cannot tell "same meaning" from "different", and, when the
decision was contested (the winning group held at most 2/3 of the answering
weight), each losing answer against the winner (PolyLink's TIQE cascade:
cheap agreement first, the LLM only for close calls).

How (:class:`LLMJudge`): the peer's model scores each answer by its mean
per-token log-probability as the model's own reply to the question (one
forward pass per answer, cached; deterministic), and prefers the likelier
one unless they are within ``margin`` nats (a tie). Asking the model "A or
B?" was measured and rejected: both small models show a strong position
bias and, even debiased over both orders, pick the correct answer in only
65% (SmolLM2) and 28% (Gemma-3) of pairs, against 88% and 98% by likelihood
(ADR 0009). Every pair is still judged in both orders and an answer wins
only if it wins in both (MT-Bench's rule against position bias), so a judge
with a position preference can only produce ties;
:func:`consensus.scores.scores_from_similarity` turns the results into
scores.

The log-probabilities of a question's answers are computed in one padded
forward pass (:meth:`LLMJudge.logprobs`, ADR 0019): :func:`judge_pairs` asks
for every answer of its pairs at once, so judging k pairs costs one pass, not 2k.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from consensus.scores import JudgeResult
from multillmn.identity import PeerId

if TYPE_CHECKING:
    from peers.llm import Generator

__all__ = ["Judge", "LLMJudge", "ScriptedJudge", "judge_pair", "judge_pairs"]


class Judge(Protocol):
    def prefer(self, question: str, first: str, second: str) -> int | None:
        """0 if ``first`` is the correct answer, 1 if ``second`` is, ``None`` if it cannot tell."""
        ...


class LLMJudge:
    """A :class:`Judge` backed by a loaded model: the likelier answer (mean token log-probability) wins."""

    def __init__(self, generator: Generator, margin: float = 0.05, cache_size: int = 256) -> None:
        self.generator = generator
        self.margin = margin
        self._cache: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._cache_size = cache_size

    def logprob(self, question: str, answer: str) -> float:
        return self.logprobs(question, [answer])[0]

    def logprobs(self, question: str, answers: Sequence[str]) -> list[float]:
        """Mean token log-probability of each answer; the ones not cached yet in one forward pass."""
        missing = [a for a in dict.fromkeys(answers) if (question, a) not in self._cache]
        found: dict[str, float] = {a: self._cache[(question, a)] for a in answers if (question, a) in self._cache}
        if len(missing) == 1:
            found[missing[0]] = self.generator.answer_logprob(question, missing[0])
        elif missing:
            found.update(zip(missing, self.generator.answer_logprobs(question, missing), strict=True))
        for a in missing:
            self._cache[(question, a)] = found[a]
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return [found[a] for a in answers]

    def prefer(self, question: str, first: str, second: str) -> int | None:
        a, b = self.logprobs(question, [first, second])
        if a - b > self.margin:
            return 0
        if b - a > self.margin:
            return 1
        return None


class ScriptedJudge:
    """For tests: prefers the answer equal (normalised) to its table's answer; ``None`` otherwise."""

    def __init__(self, table: dict[str, str], *, always_first: bool = False) -> None:
        self.table = table
        self.always_first = always_first  # a judge with pure position bias

    def prefer(self, question: str, first: str, second: str) -> int | None:
        if self.always_first:
            return 0
        right = _norm(self.table.get(question, ""))
        hits = [_norm(first) == right, _norm(second) == right]
        return hits.index(True) if hits.count(True) == 1 else None


def _norm(text: str) -> str:
    return " ".join(text.lower().strip(" .!").split())


def judge_pair(judge: Judge, question: str, a: PeerId, a_text: str, b: PeerId, b_text: str) -> JudgeResult:
    """Ask ``judge`` in both orders; the verdicts become winners by peer id."""
    first = judge.prefer(question, a_text, b_text)
    second = judge.prefer(question, b_text, a_text)
    return JudgeResult(
        a=a, b=b,
        a_first=None if first is None else (a, b)[first],
        b_first=None if second is None else (b, a)[second],
    )


def judge_pairs(judge: Judge, question: str, pairs: Sequence[tuple[PeerId, str, PeerId, str]]) -> list[JudgeResult]:
    """:func:`judge_pair` for each ``(a, a_text, b, b_text)``; an :class:`LLMJudge` first scores every
    distinct answer in one batched forward pass."""
    if isinstance(judge, LLMJudge):
        judge.logprobs(question, [t for _, a_text, _, b_text in pairs for t in (a_text, b_text)])
    return [judge_pair(judge, question, a, a_text, b, b_text) for a, a_text, b, b_text in pairs]
