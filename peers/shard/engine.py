"""A sharded peer: an :class:`~peers.engine.AnswerEngine` whose model runs on shard workers (issue 5).

:class:`ShardedEngine` answers like :class:`~peers.engine.ModelEngine` does (same prompt, greedy
decoding, EOS and, for base models, a stop at the first newline, same answer cleaning), but
the tokens come from a :class:`~peers.shard.driver.ShardDriver` relaying activations through
the workers of the peer's device file (``[shard] devices_file``). Similarities come from
MiniLM exactly as in ``ModelEngine``. So a sharded peer signs the answer an unsharded one would.

Threads and loops: the driver is trio-async and the engine is blocking (the runner calls it
from worker threads). The engine runs the driver in **its own trio loop on a dedicated daemon
thread** (``shard-driver``) and each :meth:`ShardedEngine.answer` submits its generation there
with ``trio.from_thread.run(..., trio_token=...)`` and blocks until it is done. It therefore
works from any thread (the daemon's ``trio.to_thread`` workers, tests, benchmarks), and the
worker links, their deadlines and re-plans do not depend on how busy the daemon's loop is.
:meth:`ShardedEngine.close` cancels that loop and joins the thread.

Failures: every worker request has a deadline; a worker that dies or stalls is dropped, the
planner runs again on the others and the answer is replayed (see :mod:`peers.shard.driver`).
When no plan fits the surviving workers, :meth:`~ShardedEngine.answer` raises
:class:`~peers.shard.driver.ShardingFailed` naming each failure; it never hangs. Failed
workers are tried again ``retry_failed_s`` after they failed (a restarted worker rejoins).

Batches: :meth:`ShardedEngine.answer_batch` answers the questions the node hands it together, in
left-padded micro-batches pipelined through the workers, each answer equal to :meth:`answer`'s.

No judge: :class:`~peers.judge.LLMJudge` scores answers by their log-probabilities under the
whole model in one process, which a peer whose layers live elsewhere does not have.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from multillmn.identity import KeyPair
from peers.engine import Reply, upper_triangle
from peers.judge import Judge
from peers.llm.prompting import chat_messages, clean_answer, few_shot_prompt
from peers.shard.devices import (
    DeviceEntry,
    DeviceFileError,
    load_device_file,
    planner_inputs,
    require_workers,
    split_address,
)
from peers.shard.driver import DriverStats, ShardDriver, ShardingFailed, WorkerAddress
from peers.shard.planner import Network, Objective, Plan, Problem
from peers.shard.profiles import ModelShape, profile_from_shape
from peers.transport import LinkShaper

if TYPE_CHECKING:
    from multillmn.config import PeerConfig
    from peers.embedder import Embedder
    from peers.llm.models import ModelSpec

__all__ = ["ShardedEngine", "Prompter", "build_problem", "worker_addresses", "link_shaper"]

log = logging.getLogger("multillmn.shard.engine")

CONTEXT_TOKENS = 2048
"""KV cache reserved per layer when planning (as ``multillmn shard plan`` assumes by default)."""

T = TypeVar("T")


class Prompter:
    """What :class:`peers.llm.Generator` does around the model: prompt ids, EOS, stop, answer text."""

    def __init__(self, spec: ModelSpec, model_dir: Path) -> None:
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

        self.spec = spec
        self.tokenizer: Any = AutoTokenizer.from_pretrained(model_dir)
        try:
            gen = GenerationConfig.from_pretrained(model_dir)
        except OSError:  # no generation_config.json: transformers derives it from the model config
            gen = GenerationConfig.from_model_config(AutoConfig.from_pretrained(model_dir))
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos: list[int] = [] if eos is None else [int(e) for e in (eos if isinstance(eos, list) else [eos])]
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        self.pad: int = int(pad)  # what Generator pads a batch with and feeds a finished row
        self._newline: dict[int, bool] = {}

    def prompt_ids(self, question: str) -> list[int]:
        """Token ids of the exact prompt :class:`peers.llm.Generator` would send for ``question``."""
        if self.spec.prompt_style == "chat":
            text = str(self.tokenizer.apply_chat_template(chat_messages(question), tokenize=False,
                                                          add_generation_prompt=True))
        else:
            text = few_shot_prompt(question)
        ids = self.tokenizer(text, add_special_tokens=self.spec.prompt_style != "chat")["input_ids"]
        return [int(i) for i in ids]

    def stops(self, token: int) -> bool:
        """For base models: the token holds a newline (``NewlineStop``); chat models stop at EOS only."""
        if not self.spec.stop_at_newline:
            return False
        hit = self._newline.get(token)
        if hit is None:
            hit = self._newline[token] = "\n" in self.tokenizer.decode([token], skip_special_tokens=True)
        return hit

    def text(self, tokens: Sequence[int]) -> str:
        return clean_answer(self.tokenizer.decode(list(tokens), skip_special_tokens=True), self.spec.stop_at_newline)


def _model_shape(name: str, model_dir: Path) -> ModelShape:
    try:
        cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{model_dir} has no readable config.json: {exc}") from None
    return ModelShape.from_hf_config(name, cfg)


def build_problem(entries: Sequence[DeviceEntry], shape: ModelShape) -> Problem:
    """The planning problem: the model's cost profile on the devices of a device file (star links)."""
    devices, links = planner_inputs(entries)
    return Problem(profile_from_shape(shape, context_tokens=CONTEXT_TOKENS), tuple(devices), Network.star(links))


def worker_addresses(entries: Sequence[DeviceEntry], where: str = "device file") -> list[WorkerAddress]:
    """Where each device's worker listens and who it must be."""
    require_workers(entries, where)
    out = []
    for e in entries:
        assert e.address is not None and e.peer_id is not None
        host, port = split_address(e.address, f"{where}: device {e.name!r}")
        out.append(WorkerAddress(e.name, host, port, e.peer_id))
    return out


def link_shaper(entries: Sequence[DeviceEntry]) -> LinkShaper | None:
    """The driver's emulated link conditions (``shape_delay_ms``, ``shape_loss``); None if there are none."""
    shaped = [e for e in entries if e.shape_delay_ms or e.shape_loss]
    if not shaped:
        return None
    shaper = LinkShaper()
    for e in shaped:
        assert e.peer_id is not None
        shaper.set(e.peer_id, delay_s=e.shape_delay_ms / 1000, loss=e.shape_loss)
    return shaper


@dataclass(frozen=True)
class _DriverParams:
    key: KeyPair
    problem: Problem
    workers: tuple[WorkerAddress, ...]
    objective: Objective
    request_timeout_s: float
    startup_timeout_s: float
    shaper: LinkShaper | None


class _DriverLoop:
    """A :class:`ShardDriver` in its own trio loop on a daemon thread; :meth:`call` runs a coroutine there."""

    def __init__(self, params: _DriverParams) -> None:
        self._params = params
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self.driver: ShardDriver | None = None
        self._thread = threading.Thread(target=self._run, name="shard-driver", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported to the starting thread, or to the next caller
            while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
                exc = exc.exceptions[0]  # a nursery wraps what the driver raised
            self._error = exc
        finally:
            self._token = None
            self._ready.set()

    async def _main(self) -> None:
        p = self._params
        async with ShardDriver.open(p.key, p.problem, p.workers, objective=p.objective,
                                    request_timeout=p.request_timeout_s, shaper=p.shaper) as driver:
            await driver.wait_connected(p.startup_timeout_s)  # workers may still be starting
            await driver.ensure_plan()  # on those that answered; ShardingFailed if they cannot hold the model
            self.driver, self._stop = driver, trio.Event()
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await self._stop.wait()

    def call(self, fn: Callable[[ShardDriver], Awaitable[T]]) -> T:
        """Run ``fn(driver)`` in the driver's loop and wait for its result (from any other thread)."""
        token, driver = self._token, self.driver
        if token is None or driver is None:
            raise ShardingFailed(f"the shard driver is not running ({self._error or 'closed'})")

        async def job() -> T:
            return await fn(driver)

        try:
            return trio.from_thread.run(job, trio_token=token)
        except (trio.RunFinishedError, trio.Cancelled):
            raise ShardingFailed("the shard driver stopped (engine closed)") from None

    def close(self) -> None:
        token, stop = self._token, self._stop
        if token is not None and stop is not None:
            try:
                trio.from_thread.run_sync(stop.set, trio_token=token)
            except trio.RunFinishedError:
                pass
        self._thread.join(timeout=10)


class ShardedEngine:
    """A peer's model split over shard workers, plus MiniLM for similarities (see the module docstring)."""

    judge: Judge | None = None  # no whole model in this process to score answers with

    def __init__(self, loop: _DriverLoop, prompter: Prompter, embedder: Embedder, model_name: str,
                 retry_failed_s: float = 30.0) -> None:
        self._loop = loop
        self._prompter = prompter
        self._embedder = embedder
        self.model_name = model_name
        self.retry_failed_s = retry_failed_s

    @classmethod
    def load(
        cls,
        model: str,
        cache_dir: Path,
        devices_file: Path,
        key: KeyPair,
        *,
        objective: Objective = "latency",
        request_timeout_s: float = 30.0,
        startup_timeout_s: float = 300.0,
        embedder: Embedder | None = None,
        warm_up: bool = True,
    ) -> ShardedEngine:
        """Connect to the workers of ``devices_file``, plan, load their layers, warm up.

        Raises :class:`~peers.shard.devices.DeviceFileError` for a bad device file and
        :class:`ShardingFailed` when the workers are unreachable or no plan fits them.
        """
        from peers.embedder import Embedder
        from peers.llm.cache import load_or_convert, offline
        from peers.llm.models import resolve_model

        offline()
        entries = load_device_file(devices_file)
        workers = worker_addresses(entries, str(devices_file))
        spec = resolve_model(model)
        model_dir = load_or_convert(spec, cache_dir)
        problem = build_problem(entries, _model_shape(spec.name, model_dir))
        prompter, embedder = Prompter(spec, model_dir), embedder or Embedder.load()
        t0 = time.monotonic()
        loop = _DriverLoop(_DriverParams(key, problem, tuple(workers), objective, request_timeout_s,
                                         startup_timeout_s, link_shaper(entries)))
        engine = cls(loop, prompter, embedder, spec.name)
        log.info("sharded %s over %d workers in %.1f s: %s", spec.name, len(workers), time.monotonic() - t0,
                 engine.plan)
        if warm_up:
            try:
                engine.warm_up()
            except BaseException:
                engine.close()
                raise
        return engine

    @classmethod
    def from_config(cls, cfg: PeerConfig) -> ShardedEngine:
        """The engine a peer with ``[shard] devices_file`` set runs (its own key drives the workers)."""
        if not cfg.shard_devices_file:
            raise DeviceFileError("shard.devices_file is empty: this peer is not sharded")
        objective: Objective = "throughput" if cfg.shard_objective == "throughput" else "latency"
        return cls.load(cfg.model, cfg.path(cfg.cache_dir), cfg.path(cfg.shard_devices_file),
                        KeyPair.load(cfg.path(cfg.key_file)), objective=objective,
                        request_timeout_s=cfg.shard_request_timeout_s,
                        startup_timeout_s=cfg.shard_startup_timeout_s)

    def warm_up(self) -> None:
        """One short answer and one similarity, as ``ModelEngine.warm_up`` does."""
        self.answer("What is 1 + 1?", 2)
        self.similarities("Warm?", ["warm", "up"])

    @property
    def plan(self) -> Plan | None:
        """The layer ranges in use (``None`` after a failed re-plan)."""
        return self._loop.driver.plan if self._loop.driver else None

    @property
    def stats(self) -> DriverStats:
        """The driver's counters: re-plans, replayed tokens, failures, events."""
        assert self._loop.driver is not None
        return self._loop.driver.stats

    def answer(self, question: str, max_new_tokens: int) -> Reply:
        """Greedy answer through the workers; :class:`ShardingFailed` if no plan fits the live ones."""
        t0 = time.monotonic()
        prompt = self._prompter.prompt_ids(question)
        eos, stop, retry = self._prompter.eos, self._prompter.stops, self.retry_failed_s

        async def generate(driver: ShardDriver) -> list[int]:
            driver.revive(retry)
            return await driver.generate(prompt, max(1, int(max_new_tokens)), eos_token_id=eos, stop=stop)

        tokens = self._loop.call(generate)
        return Reply(text=self._prompter.text(tokens), seconds=time.monotonic() - t0)

    def answer_batch(self, questions: Sequence[str], max_new_tokens: int | Sequence[int]) -> list[Reply]:
        """Greedy answers to ``questions`` together, each equal to :meth:`answer`'s (ADR 0019): left-padded
        micro-batches pipelined through the workers (:meth:`ShardDriver.generate_batch`). Every reply's
        ``seconds`` is the batch's wall time; a batch of one is :meth:`answer`."""
        n = len(questions)
        limits = [max_new_tokens] * n if isinstance(max_new_tokens, int) else [int(m) for m in max_new_tokens]
        if len(limits) != n:
            raise ValueError(f"{n} questions but {len(limits)} token limits")
        if n <= 1:
            return [self.answer(q, m) for q, m in zip(questions, limits)]
        t0 = time.monotonic()
        prompts = [self._prompter.prompt_ids(q) for q in questions]
        eos, stop, pad, retry = self._prompter.eos, self._prompter.stops, self._prompter.pad, self.retry_failed_s

        async def generate(driver: ShardDriver) -> list[list[int]]:
            driver.revive(retry)
            return await driver.generate_batch(prompts, [max(1, m) for m in limits], eos_token_id=eos, stop=stop,
                                               pad_token_id=pad)

        rows = self._loop.call(generate)
        seconds = time.monotonic() - t0
        return [Reply(text=self._prompter.text(tokens), seconds=seconds) for tokens in rows]

    def similarities(self, question: str, texts: list[str]) -> list[int]:
        from peers.embedder import quantise
        from peers.similarity import similarity_matrix

        cosines = self._embedder.similarities(texts)
        sims = similarity_matrix(question, texts, cosines)
        return upper_triangle([[quantise(s) for s in row] for row in sims])

    def close(self) -> None:
        """Stop the driver loop (closing the worker links); later answers raise :class:`ShardingFailed`."""
        self._loop.close()

    def __enter__(self) -> ShardedEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
