"""Shard workers as processes on loopback: identical greedy output, and failures never hang the driver."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import trio

from multillmn.identity import KeyPair
from peers.llm.cache import default_cache_dir, load_or_convert
from peers.llm.models import resolve_model
from peers.secure import HandshakeError, handshake
from peers.shard.driver import ShardDriver, ShardingFailed, WorkerAddress
from peers.shard.model import load_full_model
from peers.shard.planner import Device, Link, Network, Problem
from peers.shard.profiles import KNOWN_SHAPES, profile_from_shape
from peers.shard.protocol import MAX_FRAME, Request, Response, pack_request, pack_response, unpack_request
from peers.wire import RemoteProtocolError
from peers.shard.worker import WorkerProcess
from tests.shardworkers import shard_workers

pytestmark = pytest.mark.models  # loads real model weights: not in `make test-fast`

PROMPT = [504, 3575, 282, 4649, 314, 7042, 30, 378, 3575, 282, 7158, 314]  # "The capital of France is Paris. ..."
NEW_TOKENS = 10
DRIVER_KEY = KeyPair.from_seed(b"\x11" * 32)
PROFILE = profile_from_shape(KNOWN_SHAPES["smollm2"], context_tokens=256)
WHOLE = PROFILE.total_bytes()


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return load_or_convert(resolve_model("smollm2"), default_cache_dir())


@pytest.fixture(scope="module")
def workers(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, WorkerProcess]]:
    with shard_workers(model_dir, tmp_path_factory.mktemp("shard-workers"), DRIVER_KEY.peer_id, seed=0x20,
                       layers={"a": (0, 15), "b": (15, 30)}) as w:  # what the first plan asks for
        yield w


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> tuple[list[int], int]:
    """Unsharded greedy tokens from transformers' generate, and the EOS id."""
    from transformers import GenerationConfig

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = load_full_model(model_dir)
        eos = int(model.generation_config.eos_token_id)
        ids = torch.tensor([PROMPT])
        config = GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=eos, pad_token_id=eos)  # type: ignore[no-untyped-call]
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
    finally:
        torch.set_num_threads(before)
    tokens = [int(t) for t in out[0, len(PROMPT):]]
    assert len(tokens) >= 4
    return tokens, eos


def _problem(memory: dict[str, int]) -> Problem:
    devices = tuple(Device(name, mem) for name, mem in memory.items())
    return Problem(PROFILE, devices, Network.star({name: Link(1.0, 12.5e6) for name in memory}))


def _addresses(workers: dict[str, Any]) -> list[WorkerAddress]:
    return [WorkerAddress(name, w.host, w.port, w.peer_id) for name, w in workers.items()]


async def test_two_workers_generate_like_unsharded(workers: dict[str, WorkerProcess],
                                                   reference: tuple[list[int], int]) -> None:
    expected, eos = reference
    problem = _problem({"a": WHOLE * 7 // 10, "b": WHOLE * 7 // 10})  # neither holds the whole model
    async with ShardDriver.open(DRIVER_KEY, problem, _addresses(workers), request_timeout=20) as driver:
        plan = await driver.ensure_plan()
        assert sorted(plan.devices) == ["a", "b"]
        assert await driver.generate(PROMPT, NEW_TOKENS, eos_token_id=eos) == expected
        assert await driver.generate(PROMPT, 3) == expected[:3]  # sessions are independent
        assert driver.stats.replans == 0 and not driver.stats.failures


async def _stalling_worker(key: KeyPair, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Answers info and load like a worker, then never replies to a generation step."""

    async def serve(stream: trio.SocketStream) -> None:
        chan = await handshake(stream, key, None, allowed={DRIVER_KEY.peer_id}, max_frame=MAX_FRAME)
        async with chan:
            while True:
                try:
                    req = unpack_request(await chan.receive())
                except (trio.EndOfChannel, trio.BrokenResourceError):
                    return  # the driver gave up on us
                if req.op == "info":
                    await chan.send(pack_response(Response(req.id, True, n_layers=30, model_type="llama")))
                elif req.op == "load":
                    await chan.send(pack_response(Response(req.id, True, range=(req.start, req.stop), load_ms=1)))
                # prefill / decode: silence

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, serve, listeners)
        task_status.started(listeners[0].socket.getsockname()[1])


async def test_stalled_worker_times_out_and_no_plan_fits(workers: dict[str, WorkerProcess]) -> None:
    stall_key = KeyPair.from_seed(b"\x31" * 32)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(_stalling_worker, stall_key)
        addrs = [_addresses(workers)[0], WorkerAddress("h", "127.0.0.1", port, stall_key.peer_id)]
        problem = _problem({"a": WHOLE * 7 // 10, "h": WHOLE * 7 // 10})
        async with ShardDriver.open(DRIVER_KEY, problem, addrs, request_timeout=2.0) as driver:
            await driver.ensure_plan()
            t0 = time.monotonic()
            with pytest.raises(ShardingFailed, match=r"h: no reply to (prefill|decode) within 2 s.*fits on no split"):
                await driver.generate(PROMPT, NEW_TOKENS)
            assert time.monotonic() - t0 < 2.0 + 5.0
        nursery.cancel_scope.cancel()


async def test_sigkill_mid_generation_replans_and_replays(workers: dict[str, WorkerProcess],
                                                          reference: tuple[list[int], int]) -> None:
    expected, eos = reference
    # a holds the whole model, but two stages double the pipeline throughput: the plan uses both
    problem = _problem({"a": WHOLE * 2, "b": WHOLE * 7 // 10})

    def kill_b(index: int, _token: int) -> None:
        if index == 2:
            workers["b"].kill()

    async with ShardDriver.open(DRIVER_KEY, problem, _addresses(workers), objective="throughput",
                                request_timeout=20) as driver:
        assert sorted((await driver.ensure_plan()).devices) == ["a", "b"]
        with trio.fail_after(60):
            got = await driver.generate(PROMPT, NEW_TOKENS, eos_token_id=eos, on_token=kill_b)
        assert got == expected
        assert driver.stats.replans == 1 and set(driver.stats.failures) == {"b"}
        assert driver.plan is not None and driver.plan.ranges() == ((0, 30),)
        assert driver.stats.replayed_tokens == len(PROMPT) + 3
    # b stays dead: when a alone cannot hold the model, the query fails at once and says why
    tight = _problem({"a": WHOLE * 7 // 10, "b": WHOLE * 7 // 10})
    async with ShardDriver.open(DRIVER_KEY, tight, _addresses(workers), request_timeout=20) as driver:
        with trio.fail_after(30), pytest.raises(ShardingFailed, match=r"b: cannot connect.*fits on no split"):
            await driver.generate(PROMPT, NEW_TOKENS)


async def test_links_are_authenticated_both_ways(workers: dict[str, WorkerProcess]) -> None:
    a = workers["a"]
    # a driver the worker does not allow is refused during the handshake
    stranger = KeyPair.from_seed(b"\x77" * 32)
    stream = await trio.open_tcp_stream(a.host, a.port)
    try:
        chan = await handshake(stream, stranger, a.peer_id, timeout=10)
    except HandshakeError:
        pass  # refused before our side finished
    else:  # our side verified the worker; the worker refuses us and hangs up without serving
        async with chan:
            with pytest.raises((trio.EndOfChannel, trio.BrokenResourceError, RemoteProtocolError)):
                await chan.send(pack_request(Request(1, "info")))
                with trio.fail_after(10):
                    await chan.receive()
    # a worker that cannot prove the expected identity is treated as failed
    impostor = [_addresses(workers)[0], WorkerAddress("b", a.host, a.port, "00" * 20)]
    problem = _problem({"a": WHOLE * 7 // 10, "b": WHOLE * 7 // 10})
    async with ShardDriver.open(DRIVER_KEY, problem, impostor, request_timeout=20) as driver:
        with pytest.raises(ShardingFailed, match="b: cannot connect .* expected peer 0000"):
            await driver.ensure_plan()
