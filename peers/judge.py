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

Verdicts on a split query (ADR 0022, :func:`rate`): the same likelihoods, as
the gap between each other answer's and this peer's own, per mille; signed by
the driver and carried in the value, where the veto
(:mod:`consensus.verdicts`) turns them into a decision.
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from consensus.scores import JudgeResult
from multillmn.identity import PeerId

if TYPE_CHECKING:
    from peers.llm import Generator

__all__ = [
    "VERIFY_EXAMPLES", "Judge", "LLMJudge", "ScriptedJudge", "VerifyingJudge", "judge_pair", "judge_pairs",
    "rate", "verify_messages", "verify_prompt",
]


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


def rate(judge: Judge, question: str, own: str, texts: Sequence[str]) -> list[int]:
    """Per-mille verdicts on ``texts`` against this peer's own answer ``own`` (ADR 0022), each in
    ``[-1000, 1000]``: an :class:`LLMJudge` gives the likelihood gap ``1000 * (lp(text) - lp(own))`` (mean token
    log-probabilities as its model's reply, one batched pass with its own answer); a :class:`ScriptedJudge`
    1000 for its table's answer, -1000 for another when its own is the table's, else 0; any other judge 0."""
    if isinstance(judge, LLMJudge):
        lp_own, *lps = judge.logprobs(question, [own, *texts])
        return [max(-1000, min(1000, round(1000 * (lp - lp_own)))) for lp in lps]
    if isinstance(judge, ScriptedJudge):
        right = _norm(judge.table.get(question, ""))
        mine = _norm(own) == right
        return [1000 if _norm(t) == right else -1000 if mine else 0 for t in texts]
    return [0 for _ in texts]


# A verifying judge (issue 15): P("yes") to "is the proposed answer correct?".

VERIFY_EXAMPLES: tuple[tuple[str, str, bool], ...] = (
    ("What is the capital of Italy?", "The capital of Italy is Milan.", False),
    ("How many legs does a spider have?", "A spider has eight legs.", True),
    ("Who wrote Pride and Prejudice?", "Pride and Prejudice was written by Charles Dickens.", False),
    ("What is the chemical symbol for silver?", "The chemical symbol for silver is Ag.", True),
)
"""Few-shot verification examples, two right and two wrong (disjoint from the shipped questions)."""

_ASK = "Is the proposed answer correct? Answer yes or no."
_VERIFY_SYSTEM = "You check answers to questions. Reply with yes or no."


def _verify_block(question: str, answer: str) -> str:
    return f"Question: {' '.join(question.split())}\nProposed answer: {' '.join(answer.split())}\n{_ASK}"


def verify_prompt(question: str, answer: str, examples: Sequence[tuple[str, str, bool]] = VERIFY_EXAMPLES) -> str:
    """The few-shot verification prompt for a base model, ending where it should say " yes" or " no"."""
    shots = "".join(f"{_verify_block(q, a)} {'yes' if ok else 'no'}\n\n" for q, a, ok in examples)
    return f"{shots}{_verify_block(question, answer)}"


def verify_messages(question: str, answer: str,
                    examples: Sequence[tuple[str, str, bool]] = VERIFY_EXAMPLES) -> list[dict[str, str]]:
    """The verification as chat turns for an instruct model: the examples as earlier turns."""
    messages = [{"role": "system", "content": _VERIFY_SYSTEM}]
    for q, a, ok in examples:
        messages += [{"role": "user", "content": _verify_block(q, a)},
                     {"role": "assistant", "content": "Yes" if ok else "No"}]
    messages.append({"role": "user", "content": _verify_block(question, answer)})
    return messages


class VerifyingJudge:
    """A peer's model asked "is the proposed answer correct?": ``P(yes) / (P(yes) + P(no))`` per mille.

    The probability of each word is summed over its spellings' first tokens
    ("yes", " yes", "Yes", " Yes"); an instruct model is asked in its chat
    template with the few-shot examples as earlier turns, a base model in a
    few-shot text prompt (:func:`verify_prompt`). The answers of one question
    are scored in one left-padded forward pass (positions from the mask, so
    each row sees what it would see alone); results are cached per
    (question, answer). The raw score carries the model's yes-bias: the
    decision (:mod:`consensus.verdicts`) subtracts a per-judge calibration.
    """

    def __init__(self, generator: Generator, cache_size: int = 256) -> None:
        self.generator = generator
        self._cache: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._cache_size = cache_size
        tok = generator.tokenizer
        yes = _first_tokens(tok, ("yes", " yes", "Yes", " Yes"))
        no = _first_tokens(tok, ("no", " no", "No", " No"))
        self._yes = [t for t in yes if t not in no]  # a byte-level tokenizer starts both with " "
        self._no = [t for t in no if t not in yes]

    def prompt_ids(self, question: str, answer: str) -> list[int]:
        g = self.generator
        if g.spec.prompt_style == "chat":
            text = str(g.tokenizer.apply_chat_template(verify_messages(question, answer), tokenize=False,
                                                       add_generation_prompt=True))
            return list(g.tokenizer(text, add_special_tokens=False)["input_ids"])
        return list(g.tokenizer(verify_prompt(question, answer), add_special_tokens=True)["input_ids"])

    def yes_score(self, question: str, answer: str) -> int:
        return self.yes_scores(question, [answer])[0]

    def yes_scores(self, question: str, answers: Sequence[str]) -> list[int]:
        """Per-mille ``P(yes)`` of each answer; the ones not cached yet in one batched forward pass."""
        missing = [a for a in dict.fromkeys(answers) if (question, a) not in self._cache]
        if missing:
            for a, v in zip(missing, self._score([self.prompt_ids(question, a) for a in missing]), strict=True):
                self._cache[(question, a)] = v
        out = [self._cache[(question, a)] for a in answers]
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return out

    def _score(self, prompts: list[list[int]]) -> list[int]:
        import torch

        g = self.generator
        width = max(len(p) for p in prompts)
        pad = int(g.tokenizer.pad_token_id if g.tokenizer.pad_token_id is not None else 0)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        lock = getattr(g, "_lock", None) or contextlib.nullcontext()  # the generator's: one pass at a time
        with lock, torch.inference_mode():
            # Only the last position's logits: a 262k-token head over every prompt position would dominate.
            logits = g.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                             logits_to_keep=1).logits[:, -1].float()
        logp = torch.log_softmax(logits, dim=-1)
        out = []
        for row in logp:
            yes = float(torch.logsumexp(row[self._yes], dim=0))
            no = float(torch.logsumexp(row[self._no], dim=0))
            out.append(per_mille_yes(yes, no))
        return out


def per_mille_yes(log_yes: float, log_no: float) -> int:
    """``round(1000 * P(yes) / (P(yes) + P(no)))`` from the two log-probabilities, overflow-free."""
    if math.isinf(log_yes) and math.isinf(log_no):
        return 500
    return round(1000 / (1 + math.exp(max(-50.0, min(50.0, log_no - log_yes)))))


def _first_tokens(tokenizer: Any, spellings: Sequence[str]) -> list[int]:
    """The distinct first token of each spelling."""
    ids = [tokenizer.encode(s, add_special_tokens=False) for s in spellings]
    return sorted({i[0] for i in ids if i})
