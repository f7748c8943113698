"""A sharded peer: ShardedEngine over 2 real SmolLM2 shard workers answers as the unsharded model does.

One module-scoped pair of workers (neither may hold the whole model) serves every test; the
test that kills a worker runs last.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import trio

from multillmn.config import PeerConfig
from peers.embedder import Embedder
from peers.engine import ModelEngine
from peers.llm import Generator, resolve_model
from peers.llm.cache import default_cache_dir, load_or_convert
from peers.node import Node
from peers.shard.devices import DeviceEntry, DeviceFileError, render_device_file
from peers.shard.driver import RETRANSMIT_S, ShardDriver, ShardingFailed
from peers.shard.engine import ShardedEngine, build_problem, worker_addresses
from peers.shard.profiles import KNOWN_SHAPES
from peers.shard.worker import WorkerProcess
from peers.transport import LinkShaper, Transport
from tests.conftest import make_net
from tests.shardworkers import shard_workers

pytestmark = pytest.mark.models  # loads real model weights: not in `make test-fast`

QUESTION = "What is the capital of France?"
NET = make_net([1, 1], seed=90)
SHARDED_KEY = NET.keys[0]  # the sharded peer drives the workers with its own key


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return load_or_convert(resolve_model("smollm2"), default_cache_dir())


@pytest.fixture(scope="module")
def workers(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, WorkerProcess]]:
    with shard_workers(model_dir, tmp_path_factory.mktemp("engine-workers"), SHARDED_KEY.peer_id, seed=0x60) as w:
        yield w


def _entries(workers: dict[str, WorkerProcess], **extra: float) -> list[DeviceEntry]:
    # SmolLM2 needs 603 MiB (fp32 weights + a 2048-token KV cache): neither device holds it alone
    return [DeviceEntry(name, memory_mb=400, link_ms=0.5, threads=1, address=f"{w.host}:{w.port}",
                        peer_id=w.peer_id, **extra) for name, w in workers.items()]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder.load()


@pytest.fixture(scope="module")
def devices_file(workers: dict[str, WorkerProcess], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("devices") / "devices.toml"
    path.write_text(render_device_file(_entries(workers), header="two SmolLM2 shard workers on loopback"))
    return path


@pytest.fixture(scope="module")
def sharded(devices_file: Path, embedder: Embedder) -> Iterator[ShardedEngine]:
    with ShardedEngine.load("smollm2", default_cache_dir(), devices_file, SHARDED_KEY, embedder=embedder,
                            request_timeout_s=20, startup_timeout_s=60) as engine:
        yield engine


@pytest.fixture(scope="module")
def unsharded(embedder: Embedder) -> Iterator[ModelEngine]:
    before = torch.get_num_threads()
    try:
        yield ModelEngine(Generator.load(resolve_model("smollm2"), default_cache_dir(), threads=1), embedder, "smollm2")
    finally:
        torch.set_num_threads(before)


def test_device_file_round_trips_and_needs_worker_identities(workers: dict[str, WorkerProcess], embedder: Embedder,
                                                            devices_file: Path, tmp_path: Path) -> None:
    from peers.shard.devices import load_device_file

    entries = load_device_file(devices_file)
    assert entries == _entries(workers)
    assert [w.name for w in worker_addresses(entries)] == ["a", "b"]
    assert build_problem(entries, KNOWN_SHAPES["smollm2"]).model.n_layers == 30
    anonymous = tmp_path / "anonymous.toml"
    anonymous.write_text("[[device]]\nname = 'x'\nthreads = 1\nmemory_mb = 1\nlink_ms = 1\n")
    with pytest.raises(DeviceFileError, match="device 'x': missing address and peer_id"):
        ShardedEngine.load("smollm2", default_cache_dir(), anonymous, SHARDED_KEY)
    with pytest.raises(DeviceFileError, match="not sharded"):
        ShardedEngine.from_config(PeerConfig())
    # a device whose worker never comes up is left out of the plan after the start-up wait
    gone = DeviceEntry("gone", memory_mb=4000, link_ms=0.5, threads=8, address="127.0.0.1:1", peer_id="00" * 20)
    three = tmp_path / "three.toml"
    three.write_text(render_device_file([*entries, gone]))
    with ShardedEngine.load("smollm2", default_cache_dir(), three, SHARDED_KEY, embedder=embedder,
                            startup_timeout_s=1, warm_up=False) as engine:
        assert engine.plan is not None and set(engine.plan.devices) == {"a", "b"}
        assert engine.stats.failures["gone"].startswith("unreachable for 1 s: cannot connect to 127.0.0.1:1")


async def test_sharded_peer_decides_the_same_answer_as_an_unsharded_peer(
        sharded: ShardedEngine, unsharded: ModelEngine) -> None:
    expected = (await trio.to_thread.run_sync(unsharded.answer, QUESTION, 32)).text
    assert "Paris" in expected
    assert (await trio.to_thread.run_sync(sharded.answer, QUESTION, 32)).text == expected
    cfg = replace(PeerConfig.for_tests(), max_new_tokens=32, judge_band=0)
    ids = [k.peer_id for k in NET.keys]
    async with trio.open_nursery() as nursery:
        nodes = []
        for i, engine in enumerate((sharded, unsharded)):  # peer 0 sharded, peer 1 not
            transport = Transport(NET.keys[i], ("127.0.0.1", 0), {p: None for p in ids}, backoff_initial=0.05)
            node = Node(replace(cfg, moniker=f"peer{i}"), NET.keys[i], NET.genesis, engine, transport)
            await nursery.start(transport.run)
            await nursery.start(node.run)
            nodes.append(node)
        for node in nodes:
            other = nodes[1 - nodes.index(node)]
            node.transport.set_address(other.key.peer_id, ("127.0.0.1", other.transport.listen_port))
        with trio.fail_after(60):
            decision = await nodes[0].submit(QUESTION)  # the runner calls the engine from its worker threads
        nursery.cancel_scope.cancel()
    assert decision.value.answer == expected
    assert set(decision.value.winners) == set(ids)  # both answers fell in one group: the same text
    assert sharded.stats.replans == 0 and not sharded.stats.failures


def test_sharded_peer_answers_a_batch_as_one_at_a_time(sharded: ShardedEngine, unsharded: ModelEngine) -> None:
    """Left-padded micro-batches pipelined through the two workers (ADR 0019) give the unsharded answers."""
    from multillmn.questions import load_questions

    questions = [q.question for q in load_questions()][::16]  # 8 shipped questions, every topic
    limits = [32, 5, 32, 32, 12, 32, 32, 32]
    replies = sharded.answer_batch(questions, limits)
    assert [r.text for r in replies] == [unsharded.answer(q, m).text for q, m in zip(questions, limits)]
    assert len({r.seconds for r in replies}) == 1 and sharded.stats.batches[-1] == len(questions)
    assert sharded.answer_batch(questions[:1], 8)[0].text == unsharded.answer(questions[0], 8).text
    assert sharded.stats.replans == 0 and not sharded.stats.failures


async def test_driver_link_shaper_adds_delay_and_resends_lost_frames(
        workers: dict[str, WorkerProcess], sharded: ShardedEngine) -> None:
    entries = _entries(workers)
    problem = build_problem(entries, KNOWN_SHAPES["smollm2"])
    prompt = [1, 504, 3575, 282, 4649, 314]
    async with ShardDriver.open(SHARDED_KEY, problem, worker_addresses(entries), request_timeout=20) as plain:
        expected = await plain.generate(prompt, 3)
        t0 = trio.current_time()
        await plain.generate(prompt, 3)
        base = trio.current_time() - t0
    shaper = _CountingShaper(random.Random(7))
    shaper.set(workers["a"].peer_id, delay_s=0.05)
    shaper.set(workers["b"].peer_id, loss=0.3)
    async with ShardDriver.open(SHARDED_KEY, problem, worker_addresses(entries), request_timeout=20,
                                shaper=shaper) as shaped:
        await shaped.ensure_plan()
        shaper.lost = 0
        t0 = trio.current_time()
        assert await shaped.generate(prompt, 3) == expected  # delay and loss slow it down, never change it
        took = trio.current_time() - t0
    # 3 steps x (request + reply) x 50 ms on a's link; b's link lost frames, each resent after 200 ms
    print(f"base {base:.3f} s, shaped {took:.3f} s, {shaper.lost} frames lost")
    assert shaper.lost >= 1
    assert took - base >= 0.8 * (6 * 0.05 + RETRANSMIT_S * shaper.lost)
    assert not shaped.stats.failures


class _CountingShaper(LinkShaper):
    lost = 0

    def plan(self, peer: str) -> float | None:
        delay = super().plan(peer)
        self.lost += delay is None
        return delay


def test_a_dead_worker_fails_the_answer_quickly_with_the_reason(
        sharded: ShardedEngine, workers: dict[str, WorkerProcess]) -> None:
    workers["b"].kill()
    t0 = time.monotonic()
    with pytest.raises(ShardingFailed, match=r"b: .*fits on no split"):
        sharded.answer(QUESTION, 8)
    assert time.monotonic() - t0 < 15
    assert "b" in sharded.stats.failures
    sharded.retry_failed_s = 0.0  # b is retried on the next answer, and fails again at once
    with pytest.raises(ShardingFailed, match=r"b: cannot connect"):
        sharded.answer(QUESTION, 8)
