"""Continuous batching (ADR 0019, addendum 5): questions join a running batch and leave as they end.

Every answer is compared with the reference of ``tests/test_generation_batch.py``: the same tiny
random model answering one question at a time without the prefix cache. The schedules make rows
join at different steps (so either side of a join is padded), end at different steps (so columns
are dropped) and exceed ``max_rows`` (so questions wait for room). The bundled models run the same
check over the shipped questions (``models`` marker).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
import torch

from peers.llm import Generator, ModelSpec
from peers.llm.continuous import RunningBatch
from peers.llm.generator import Ask
from tests.test_generation_batch import (
    QUESTIONS,
    byte_tokenizer,
    one_by_one,
    random_model,
    shipped_questions,
    tiny_generator,
)

torch.set_num_threads(1)


class Schedule:
    """Hands out questions at given serving steps: ``arrivals`` maps a step to the questions arriving then."""

    def __init__(self, arrivals: dict[int, list[tuple[str, int]]]) -> None:
        self.steps = 0
        self.waiting: list[tuple[int, str, int]] = []
        self.arrivals = arrivals
        self.given = 0
        self.answers: dict[int, tuple[str, int]] = {}
        self.done_at: dict[int, int] = {}
        self.most_running = 0

    def more(self, room: int) -> list[Ask]:
        for question, limit in self.arrivals.get(self.steps, []):
            self.waiting.append((len(self.waiting) + self.given, question, limit))
        self.steps += 1
        out, self.waiting = self.waiting[:room], self.waiting[room:]
        self.given += len(out)
        self.most_running = max(self.most_running, self.given - len(self.answers))
        return [Ask(key, q, m) for key, q, m in out]

    def done(self, key: int, gen: Any) -> None:
        assert key not in self.answers, "answered twice"
        self.answers[key] = (gen.text, gen.new_tokens)
        self.done_at[key] = self.steps

    def serve(self, gen: Generator, max_rows: int) -> None:
        last = max(self.arrivals)
        while True:  # serve returns when idle: keep it going until every arrival has been handed out
            gen.serve(self.more, self.done, max_rows)
            if self.waiting:
                continue
            if self.steps > last:
                return
            self.steps = min(s for s in self.arrivals if s >= self.steps)  # idle until the next arrival

    def asked(self) -> list[tuple[str, int]]:
        return [item for step in sorted(self.arrivals) for item in self.arrivals[step]]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return byte_tokenizer()


@pytest.fixture(scope="module", params=["llama-chat", "gemma3wide-few-shot"])
def cached_generator(request: pytest.FixtureRequest, tokenizer: Any) -> Generator:
    """The tiny models whose questions join a running batch (over the cached prefix)."""
    return tiny_generator(request.param, tokenizer)


@pytest.fixture(scope="module", params=["llama-chat", "gemma3-few-shot", "gemma3wide-few-shot"])
def generator(request: pytest.FixtureRequest, tokenizer: Any) -> Generator:
    return tiny_generator(request.param, tokenizer)


def staggered(questions: Sequence[str], limits: Sequence[int]) -> dict[int, list[tuple[str, int]]]:
    """Three at once, then one or two every few steps."""
    items = list(zip(questions, limits, strict=True))
    arrivals = {0: items[:3]}
    step = 2
    for i in range(3, len(items), 2):
        arrivals[step] = items[i:i + 2]
        step += 3
    return arrivals


def check_against_reference(gen: Generator, schedule: Schedule) -> None:
    asked = schedule.asked()
    expected = one_by_one(gen, [q for q, _ in asked], [m for _, m in asked])
    assert len(schedule.answers) == len(asked)
    differ = [(asked[k][0], expected[k], schedule.answers[k]) for k in range(len(asked))
              if schedule.answers[k] != expected[k]]
    assert not differ


@pytest.mark.parametrize("max_rows", [2, 16])
def test_rows_joining_a_running_batch_answer_as_alone(generator: Generator, max_rows: int) -> None:
    limits = [24, 3, 17, 30, 1, 9, 24, 12, 5]
    schedule = Schedule(staggered(QUESTIONS, limits))
    schedule.serve(generator, max_rows)
    check_against_reference(generator, schedule)
    assert schedule.most_running <= max_rows


def test_the_same_question_joining_twice_gets_the_same_answer(generator: Generator) -> None:
    schedule = Schedule({0: [(QUESTIONS[0], 20)], 4: [(QUESTIONS[0], 20), (QUESTIONS[2], 20)]})
    schedule.serve(generator, 8)
    check_against_reference(generator, schedule)
    assert schedule.answers[0] == schedule.answers[1]


def test_an_answer_leaves_when_its_row_ends(tokenizer: Any) -> None:
    gen = tiny_generator("llama-chat", tokenizer)
    schedule = Schedule({0: [(QUESTIONS[0], 30), (QUESTIONS[1], 2)]})
    schedule.serve(gen, 8)
    check_against_reference(gen, schedule)
    assert schedule.done_at[1] < schedule.done_at[0]  # the 2-token answer did not wait for the other


def test_rows_wait_for_room_in_the_sliding_window(tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A window that holds one row but not a second one joining at another step: the second waits."""
    wide = tiny_generator("gemma3wide-few-shot", tokenizer)
    prefix = len(wide._prefix.ids) or len(wide._prompt_ids("x"))
    suffixes = [len(wide._prompt_ids(q)) - prefix for q in QUESTIONS[:2]]
    window = prefix + max(suffixes) + 20 + 3
    spec = ModelSpec("tiny-gemma3-window", None, False, "few-shot", True)
    gen = Generator(spec, random_model("gemma3", tokenizer, seed=1, window=window), tokenizer)
    rows_after_joining: list[int] = []
    admit = RunningBatch.admit

    def counting(batch: RunningBatch, *args: Any) -> Any:
        ended = admit(batch, *args)
        rows_after_joining.append(len(batch.rows))
        return ended

    monkeypatch.setattr(RunningBatch, "admit", counting)
    schedule = Schedule({0: [(QUESTIONS[0], 20)], 2: [(QUESTIONS[1], 20)]})
    schedule.serve(gen, 8)
    check_against_reference(gen, schedule)
    assert schedule.most_running == 2  # the second was handed over while the first ran ...
    assert rows_after_joining == [1, 1]  # ... and joined only once the first had left
    assert gen.prefix_statistics().cached_rows == 2


def test_the_judge_gets_the_model_while_a_batch_keeps_running(tokenizer: Any) -> None:
    gen = tiny_generator("llama-chat", tokenizer)
    feeding = threading.Event()
    feeding.set()
    served: list[int] = []

    def more(room: int) -> list[Ask]:
        if feeding.is_set() and room:
            return [Ask(len(served), QUESTIONS[len(served) % len(QUESTIONS)], 6)]
        return []

    failed: list[BaseException] = []

    def run() -> None:
        try:
            gen.serve(more, lambda key, g: served.append(key), 4)
        except BaseException as exc:
            failed.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while len(served) < 3 and not failed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(served) >= 3 and not failed
        scores = gen.answer_logprobs(QUESTIONS[0], ["Paris", "Lyon"])
        assert runner.is_alive()  # the judge ran while questions kept joining
        assert all(s < 0 for s in scores)
    finally:
        feeding.clear()
        runner.join(timeout=60)
    assert not runner.is_alive() and not failed


@pytest.mark.models
@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_bundled_models_answer_by_continuous_batching_as_alone(name: str) -> None:
    from peers.llm import default_cache_dir, resolve_model

    gen = Generator.load(resolve_model(name), default_cache_dir(), threads=1)
    questions = shipped_questions()
    schedule = Schedule(staggered(questions, [48] * len(questions)))
    schedule.serve(gen, 16)
    check_against_reference(gen, schedule)


def test_a_dropped_row_leaves_and_the_others_answer_as_alone(cached_generator: Generator) -> None:
    gen = cached_generator
    asked = [(QUESTIONS[0], 30), (QUESTIONS[2], 30), (QUESTIONS[5], 30)]
    given: list[Ask] = [Ask(k, q, m) for k, (q, m) in enumerate(asked)]
    steps = 0
    answers: dict[int, tuple[str, int]] = {}

    def more(room: int) -> list[Ask]:
        nonlocal steps
        steps += 1
        out = given[:room]
        del given[:len(out)]
        return out

    def dropped() -> list[int]:
        return [1] if steps == 4 else []

    gen.serve(more, lambda key, g: answers.__setitem__(key, (g.text, g.new_tokens)), 8, dropped)
    expected = one_by_one(gen, [q for q, _ in asked], [m for _, m in asked])
    assert set(answers) == {0, 2}
    assert answers[0] == expected[0] and answers[2] == expected[2]


@pytest.mark.parametrize("spare", [0, 1, 2, 3])
def test_a_row_at_the_edge_of_the_window_is_answered(tokenizer: Any, spare: int) -> None:
    """A question whose prompt and token limit just fit the window (or just do not) is answered, alone or
    in the running batch, and never waits for room it cannot get."""
    wide = tiny_generator("gemma3wide-few-shot", tokenizer)
    prefix = len(wide._prefix.ids)
    suffix = len(wide._prompt_ids(QUESTIONS[1])) - prefix
    window = prefix + suffix + 6 + spare
    spec = ModelSpec("tiny-gemma3-edge", None, False, "few-shot", True)
    gen = Generator(spec, random_model("gemma3", tokenizer, seed=1, window=window), tokenizer)
    schedule = Schedule({0: [(QUESTIONS[1], 6)]})
    runner = threading.Thread(target=schedule.serve, args=(gen, 4), daemon=True)
    runner.start()
    runner.join(timeout=60)
    assert not runner.is_alive(), "serve never returned"
    check_against_reference(gen, schedule)


def test_rows_that_fit_the_window_only_apart_join_one_after_the_other(tokenizer: Any) -> None:
    """A long question with a short limit and a short question with a long limit, arriving together:
    together they would cross the window, so the first joins and the second once the first has left."""
    wide = tiny_generator("gemma3wide-few-shot", tokenizer)
    prefix = len(wide._prefix.ids)
    long_q, short_q = QUESTIONS[2], QUESTIONS[1]
    s_long, s_short = (len(wide._prompt_ids(q)) - prefix for q in (long_q, short_q))
    window = prefix + max(s_long + 2, s_short + 20) + 2
    assert prefix + s_long + 20 >= window - 1  # together they do not fit
    spec = ModelSpec("tiny-gemma3-apart", None, False, "few-shot", True)
    gen = Generator(spec, random_model("gemma3", tokenizer, seed=1, window=window), tokenizer)
    schedule = Schedule({0: [(long_q, 2), (short_q, 20)]})
    runner = threading.Thread(target=schedule.serve, args=(gen, 4), daemon=True)
    runner.start()
    runner.join(timeout=60)
    assert not runner.is_alive(), "serve never returned"
    check_against_reference(gen, schedule)
    assert gen.prefix_statistics().cached_rows == 2  # both ran over the prefix, in the running batch
