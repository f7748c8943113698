"""Answer engines: what a peer uses to answer questions and compare answers.

``ModelEngine`` wraps a real LLM (:mod:`peers.llm`) and all-MiniLM-L6-v2
(:mod:`peers.embedder`). ``ScriptedEngine`` answers from a table and compares
answers by normalised text; tests of the runner use it so they need no model.
Both are blocking: the runner calls them from worker threads.

``answer_batch`` answers several questions in one batched generation
(ADR 0019; a sharded peer's ``ShardedEngine`` pipelines micro-batches through
its workers); :func:`answer_all` falls back to one ``answer`` per question for
an engine without it. ``ModelEngine.serve`` batches continuously (questions
join a running batch, answers leave as their rows end; :mod:`peers.answering`
uses it when an engine has it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from consensus.grouping import pair_index

from peers.judge import Judge, LLMJudge, ScriptedJudge

if TYPE_CHECKING:
    from peers.embedder import Embedder
    from peers.llm import Generator

__all__ = ["AnswerEngine", "Reply", "ModelEngine", "ScriptedEngine", "answer_all", "upper_triangle"]


@dataclass(frozen=True)
class Reply:
    """An answer and the wall time this peer took to produce it (signed as the answer's ``gen_ms``).

    In a batch every answer carries the whole batch's wall time: that is how
    long its question waited for the model, and the timing the stability
    record takes its median answer latency from.
    """

    text: str
    seconds: float


class AnswerEngine(Protocol):
    model_name: str
    judge: Judge | None  # this peer's model as a judge of close calls (None: similarity only)

    def answer(self, question: str, max_new_tokens: int) -> Reply: ...

    def answer_batch(self, questions: Sequence[str], max_new_tokens: int | Sequence[int]) -> list[Reply]:
        """Answers to ``questions`` in order, each equal to :meth:`answer`'s; every ``seconds`` is the batch's."""
        ...

    def similarities(self, question: str, texts: list[str]) -> list[int]:
        """Quantised (per mille) similarities of answers to ``question``, upper triangle, row-major."""
        ...


class _OneByOne(Protocol):
    def answer(self, question: str, max_new_tokens: int) -> Reply: ...


def answer_all(engine: _OneByOne, questions: Sequence[str], max_new_tokens: int | Sequence[int]) -> list[Reply]:
    """``engine.answer_batch`` if it has one, else one ``answer`` per question (each then carries the
    wall time of all of them, as a batch's answers do)."""
    batch = getattr(engine, "answer_batch", None)
    if batch is not None:
        return list(batch(questions, max_new_tokens))
    limits = [max_new_tokens] * len(questions) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    start = time.monotonic()
    texts = [engine.answer(q, m).text for q, m in zip(questions, limits, strict=True)]
    seconds = time.monotonic() - start
    return [Reply(text=t, seconds=seconds) for t in texts]


def upper_triangle(matrix: list[list[int]]) -> list[int]:
    """Flatten the strict upper triangle of a square matrix in :func:`pair_index` order."""
    n = len(matrix)
    out = [0] * (n * (n - 1) // 2)
    for i in range(n):
        for j in range(i + 1, n):
            out[pair_index(n, i, j)] = matrix[i][j]
    return out


class ModelEngine:
    """A real model for answers and MiniLM for similarities."""

    def __init__(self, generator: Generator, embedder: Embedder, model_name: str) -> None:
        self._generator = generator
        self._embedder = embedder
        self.model_name = model_name
        self.judge: Judge | None = LLMJudge(generator)

    @classmethod
    def load(cls, model: str, cache_dir: Path, threads: int) -> ModelEngine:
        from peers.embedder import Embedder
        from peers.llm import Generator, resolve_model

        spec = resolve_model(model)
        engine = cls(Generator.load(spec, cache_dir, threads=threads), Embedder.load(), spec.name)
        engine.warm_up()
        return engine

    def warm_up(self) -> None:
        """Run both models once so the first real query does not pay for lazy initialisation."""
        self.answer("What is 1 + 1?", 2)
        self.similarities("Warm?", ["warm", "up"])

    def answer(self, question: str, max_new_tokens: int) -> Reply:
        gen = self._generator.generate(question, max_new_tokens)
        return Reply(text=gen.text, seconds=gen.seconds)

    def answer_batch(self, questions: Sequence[str], max_new_tokens: int | Sequence[int]) -> list[Reply]:
        """One batched greedy generation (:meth:`peers.llm.Generator.generate_batch`); every reply's
        ``seconds`` is the batch's wall time."""
        return [Reply(text=g.text, seconds=g.seconds)
                for g in self._generator.generate_batch(list(questions), max_new_tokens)]

    def serve(self, more: Callable[[int], Sequence[tuple[Any, str, int]]], done: Callable[[Any, Reply], None],
              max_rows: int, dropped: Callable[[], Iterable[Any]] | None = None) -> None:
        """Continuous batching (:meth:`peers.llm.Generator.serve`): ``more(room)`` gives up to ``room``
        new ``(key, question, max_new_tokens)`` without blocking, ``done(key, reply)`` takes each answer
        as its row ends (``seconds``: from its joining to its end), ``dropped()`` the keys no longer
        wanted; returns when none is left running."""
        from peers.llm.generator import Ask

        self._generator.serve(lambda room: [Ask(k, q, m) for k, q, m in more(room)],
                              lambda key, g: done(key, Reply(text=g.text, seconds=g.seconds)), max_rows, dropped)

    def similarities(self, question: str, texts: list[str]) -> list[int]:
        from peers.embedder import quantise
        from peers.similarity import similarity_matrix

        cosines = self._embedder.similarities(texts)
        sims = similarity_matrix(question, texts, cosines)
        return upper_triangle([[quantise(s) for s in row] for row in sims])


class ScriptedEngine:
    """Answers from a table (question -> answer); similarity 1000 for equal normalised text, else 0.

    Its judge prefers the answer equal to the table's (:class:`~peers.judge.ScriptedJudge`).
    """

    def __init__(self, table: dict[str, str], model_name: str = "scripted", delay_s: float = 0.0) -> None:
        self._table = table
        self._delay = delay_s
        self.model_name = model_name
        self.judge: Judge | None = ScriptedJudge(table)

    def _text(self, question: str) -> str:
        return self._table.get(question, "I do not know.")

    def answer(self, question: str, max_new_tokens: int) -> Reply:
        start = time.monotonic()
        if self._delay:
            time.sleep(self._delay)
        return Reply(text=self._text(question), seconds=time.monotonic() - start)

    def answer_batch(self, questions: Sequence[str], max_new_tokens: int | Sequence[int]) -> list[Reply]:
        """The table's answers; one ``delay_s`` for the whole batch, as a batched model costs about one.

        It does not go through :meth:`answer`: a subclass that overrides ``answer`` overrides this too.
        """
        start = time.monotonic()
        if self._delay:
            time.sleep(self._delay)
        seconds = time.monotonic() - start
        return [Reply(text=self._text(q), seconds=seconds) for q in questions]

    def similarities(self, question: str, texts: list[str]) -> list[int]:
        norm = [" ".join(t.lower().strip(" .!").split()) for t in texts]
        return upper_triangle([[1000 if a == b else 0 for b in norm] for a in norm])
