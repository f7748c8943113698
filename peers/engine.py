"""Answer engines: what a peer uses to answer questions and compare answers.

``ModelEngine`` wraps a real LLM (:mod:`peers.llm`) and all-MiniLM-L6-v2
(:mod:`peers.embedder`). ``ScriptedEngine`` answers from a table and compares
answers by normalised text; tests of the runner use it so they need no model.
Both are blocking: the runner calls them from worker threads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from consensus.grouping import pair_index

from peers.judge import Judge, LLMJudge, ScriptedJudge

if TYPE_CHECKING:
    from peers.embedder import Embedder
    from peers.llm import Generator

__all__ = ["AnswerEngine", "Reply", "ModelEngine", "ScriptedEngine", "upper_triangle"]


@dataclass(frozen=True)
class Reply:
    text: str
    seconds: float


class AnswerEngine(Protocol):
    model_name: str
    judge: Judge | None  # this peer's model as a judge of close calls (None: similarity only)

    def answer(self, question: str, max_new_tokens: int) -> Reply: ...

    def similarities(self, question: str, texts: list[str]) -> list[int]:
        """Quantised (per mille) similarities of answers to ``question``, upper triangle, row-major."""
        ...


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

    def answer(self, question: str, max_new_tokens: int) -> Reply:
        start = time.monotonic()
        if self._delay:
            time.sleep(self._delay)
        text = self._table.get(question, "I do not know.")
        return Reply(text=text, seconds=time.monotonic() - start)

    def similarities(self, question: str, texts: list[str]) -> list[int]:
        norm = [" ".join(t.lower().strip(" .!").split()) for t in texts]
        return upper_triangle([[1000 if a == b else 0 for b in norm] for a in norm])
