"""The peer's model loop (:mod:`peers.answering`): continuous batching through ``engine.serve``.

A scripted engine with a ``serve`` that decodes one character per step stands in for a model, so
rows end at different steps and questions can join while others run. The real model's ``serve``
is tested against its unbatched answers in ``tests/test_continuous_batching.py``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import trio

from consensus.driver import DriverInput, Generate, GenerationFailed, Generated
from peers.answering import Answerer
from peers.engine import Reply, ScriptedEngine
from peers.metrics import NodeMetrics

TABLE = {"q1": "a", "q2": "bbbbbbbb", "q3": "ccc", "q4": "dddd", "q5": "eeeeee"}
STEP_S = 0.01


class ServingEngine(ScriptedEngine):
    """``serve`` makes one character of each running row's answer per step."""

    def __init__(self, fail_after_steps: int | None = None) -> None:
        super().__init__(TABLE)
        self.serve_calls = 0
        self.most_rows = 0
        self.joined_late = 0  # rows that joined while others were running
        self.fail_after_steps = fail_after_steps
        self.answer_calls = 0
        self.dropped = 0

    def answer(self, question: str, max_new_tokens: int) -> Reply:
        self.answer_calls += 1
        return super().answer(question, max_new_tokens)

    def serve(self, more: Callable[[int], Sequence[tuple[Any, str, int]]], done: Callable[[Any, Reply], None],
              max_rows: int, dropped: Callable[[], Iterable[Any]] | None = None) -> None:
        self.serve_calls += 1
        rows: dict[Any, list[Any]] = {}  # key -> [text, made, started]
        steps = 0
        while True:
            for key in dropped() if dropped is not None else []:
                self.dropped += 1
                rows.pop(key, None)
            for key, question, _ in more(max_rows - len(rows)) if len(rows) < max_rows else []:
                self.joined_late += bool(rows)
                rows[key] = [self._text(question), 0, time.monotonic()]
            if not rows:
                return
            self.most_rows = max(self.most_rows, len(rows))
            if self.fail_after_steps is not None and steps >= self.fail_after_steps:
                raise RuntimeError("the model fell over")
            time.sleep(STEP_S)
            steps += 1
            for key in list(rows):
                rows[key][1] += 1
                text, made, started = rows[key]
                if made >= len(text):
                    del rows[key]
                    done(key, Reply(text, time.monotonic() - started))


class Harness:
    def __init__(self, engine: ScriptedEngine, max_batch: int, continuous: bool = True) -> None:
        self.pending: dict[bytes, int] = {}
        self.results: list[DriverInput] = []
        self.at: dict[bytes, float] = {}
        self.nursery: trio.Nursery | None = None
        self.answerer = Answerer(engine, max_batch, self.pending.get, self.handle, lambda: 0, NodeMetrics(),
                                 self.spawn, continuous=continuous)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The answerer's loop runs for the body of the ``async with``."""
        async with trio.open_nursery() as n:
            self.nursery = n
            n.start_soon(self.answerer.run)
            yield
            n.cancel_scope.cancel()

    def spawn(self, fn: Any, *args: Any) -> None:
        assert self.nursery is not None
        self.nursery.start_soon(fn, *args)

    def handle(self, inp: DriverInput) -> None:
        assert threading.current_thread() is threading.main_thread()  # always in the trio thread
        self.results.append(inp)
        if isinstance(inp, (Generated, GenerationFailed)):
            self.at[inp.query_id] = time.monotonic()

    def ask(self, question: str, **kw: Any) -> bytes:
        qid = question.encode()
        self.pending[qid] = 0
        self.answerer.submit(Generate(qid, question, 48, **kw))
        return qid

    async def until(self, count: int) -> None:
        with trio.fail_after(10):
            while len(self.results) < count:
                await trio.sleep(0.005)


def answers(h: Harness) -> dict[str, str]:
    return {r.query_id.decode(): r.text for r in h.results if isinstance(r, Generated)}


async def test_questions_join_a_running_batch_and_leave_as_they_end() -> None:
    engine = ServingEngine()
    h = Harness(engine, max_batch=4)
    async with h.running():
        for q in ("q2", "q1"):
            h.ask(q)
        await trio.sleep(3 * STEP_S)
        for q in ("q3", "q4", "q5"):
            h.ask(q)
        await h.until(5)
    assert answers(h) == TABLE
    assert engine.serve_calls == 1 and engine.joined_late >= 3 and engine.most_rows <= 4
    assert h.at[b"q1"] < h.at[b"q2"]  # the short answer left before the long one it started with
    status = h.answerer.status()
    assert status["answered"] == 5 and status["batches"] < 5
    assert max(int(k) for k in status["rows_joined"]) >= 3


async def test_decided_questions_are_skipped_and_fabricated_replies_leave_at_once() -> None:
    engine = ServingEngine()
    h = Harness(engine, max_batch=4)
    async with h.running():
        h.ask("q1")
        h.ask("q2", fabricated="forged")
        del h.pending[h.ask("q3")]  # decided before the model got to it
        await h.until(2)
        await trio.sleep(0.1)
    assert answers(h) == {"q1": "a", "q2": "forged"}


async def test_a_failing_model_fails_its_running_questions_and_the_loop_goes_on() -> None:
    engine = ServingEngine(fail_after_steps=2)
    h = Harness(engine, max_batch=4)
    async with h.running():
        h.ask("q2")
        h.ask("q5")
        await h.until(2)
        engine.fail_after_steps = None
        h.ask("q1")
        await h.until(3)
    failed = {r.query_id for r in h.results if isinstance(r, GenerationFailed)}
    assert failed == {b"q2", b"q5"} and answers(h) == {"q1": "a"}


async def test_a_slowed_answer_leaves_later() -> None:
    h = Harness(ServingEngine(), max_batch=4)
    async with h.running():
        h.ask("q3", slowdown=20)
        h.ask("q4")
        await h.until(2)
    slowed = next(r for r in h.results if isinstance(r, Generated) and r.query_id == b"q3")
    assert h.at[b"q4"] < h.at[b"q3"]
    assert slowed.gen_ms >= 20 * 3 * STEP_S * 1000 * 0.9


async def test_one_row_at_a_time_answers_each_question_alone() -> None:
    engine = ServingEngine()
    h = Harness(engine, max_batch=1)
    async with h.running():
        for q in TABLE:
            h.ask(q)
        await h.until(5)
    assert answers(h) == TABLE and engine.serve_calls == 0 and engine.answer_calls == 5


async def test_batches_mode_never_serves() -> None:
    engine = ServingEngine()
    h = Harness(engine, max_batch=4, continuous=False)
    async with h.running():
        for q in TABLE:
            h.ask(q)
        await h.until(5)
    assert answers(h) == TABLE and engine.serve_calls == 0


async def test_a_question_decided_while_its_row_runs_leaves_unanswered() -> None:
    engine = ServingEngine()
    h = Harness(engine, max_batch=4)
    async with h.running():
        long = h.ask("q2")  # 8 steps
        h.ask("q4")
        await trio.sleep(2 * STEP_S)
        del h.pending[long]  # decided by the others meanwhile
        await h.until(1)
        await trio.sleep(10 * STEP_S)
    assert answers(h) == {"q4": "dddd"} and engine.dropped == 1
