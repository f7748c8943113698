"""Batched generation through shard workers (issue 14, ADR 0019): micro-batches answer as one at a time.

Two in-process :class:`~peers.shard.worker.ShardWorker` s (real authenticated loopback links, the real
wire protocol) serve the two layers of the tiny random Llama and Gemma-3 models of
``tests/test_generation_batch.py``; the driver's padded, pipelined micro-batches must give every row
the tokens :class:`~peers.llm.Generator` gives that question alone. Also: the wire's batch bounds and
mask validation, the micro-batch split, and that workers loading at once in one process leave
transformers intact for the models loaded after them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
import trio

from multillmn import canonical
from multillmn.identity import KeyPair
from peers.llm import Generator, ModelSpec
from peers.shard.driver import ShardDriver, WorkerAddress, micro_batch_rows
from peers.shard.engine import Prompter
from peers.shard.model import ShardError, ShardRunner
from peers.shard.planner import Device, Link, Network, Problem
from peers.shard.profiles import ModelShape, profile_from_shape
from peers.shard.protocol import MAX_BATCH, ProtocolError, Request, encode_tensor, pack_request, unpack_request
from peers.shard.worker import ShardWorker, WorkerConfig
from tests.test_generation_batch import QUESTIONS, byte_tokenizer, random_model

DRIVER_KEY = KeyPair.from_seed(b"\x31" * 32)
LIMIT = 24


@pytest.fixture(scope="module", params=["llama-chat", "gemma3-few-shot"])
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Generator]:
    """A tiny model saved to disk for the workers, and the unbatched Generator over the same weights."""
    arch, style = request.param.split("-", 1)
    tokenizer = byte_tokenizer()
    model = random_model(arch, tokenizer, seed=1)
    directory = tmp_path_factory.mktemp(f"tiny-{arch}")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    spec = ModelSpec(f"tiny-{arch}", directory, False, "chat" if style == "chat" else "few-shot", style == "few-shot")
    return directory, Generator(spec, model, tokenizer)


def _problem(model_dir: Path) -> Problem:
    shape = ModelShape.from_hf_config("tiny", json.loads((model_dir / "config.json").read_text()))
    profile = profile_from_shape(shape, context_tokens=256)
    memory = profile.total_bytes() * 7 // 10  # neither device holds the whole model: two shards
    return Problem(profile, (Device("a", memory), Device("b", memory)),
                   Network.star({n: Link(1.0, 12.5e6) for n in "ab"}))


@asynccontextmanager
async def _driver(model_dir: Path, *, max_sessions: int = 16) -> AsyncIterator[ShardDriver]:
    async with trio.open_nursery() as nursery:
        addresses = []
        for i, name in enumerate("ab"):
            key = KeyPair.from_seed(bytes([0x40 + i]) * 32)
            worker = ShardWorker(WorkerConfig(model_dir=model_dir, key=key, allowed=frozenset({DRIVER_KEY.peer_id}),
                                              max_sessions=max_sessions))
            port = await nursery.start(worker.run)
            addresses.append(WorkerAddress(name, "127.0.0.1", port, key.peer_id))
        async with ShardDriver.open(DRIVER_KEY, _problem(model_dir), addresses, request_timeout=30) as driver:
            plan = await driver.ensure_plan()
            assert len(plan.shards) == 2
            yield driver
        nursery.cancel_scope.cancel()


def _alone(gen: Generator, questions: list[str], limits: list[int]) -> list[tuple[str, int]]:
    return [(g.text, g.new_tokens) for g in (gen.generate(q, m) for q, m in zip(questions, limits))]


@pytest.mark.parametrize("micro_batches", [None, 1, 4])
async def test_micro_batches_through_workers_answer_as_one_at_a_time(
        tiny: tuple[Path, Generator], micro_batches: int | None) -> None:
    model_dir, gen = tiny
    prompter = Prompter(gen.spec, model_dir)
    prompts = [prompter.prompt_ids(q) for q in QUESTIONS]
    assert len({len(p) for p in prompts}) > 1  # padding is exercised
    limits = [LIMIT] * len(QUESTIONS)
    alone = _alone(gen, QUESTIONS, limits)
    assert len({n for _, n in alone}) > 1  # rows stop at different steps
    async with _driver(model_dir) as driver:
        with trio.fail_after(120):
            rows = await driver.generate_batch(prompts, limits, eos_token_id=prompter.eos, stop=prompter.stops,
                                               pad_token_id=prompter.pad, micro_batches=micro_batches)
            single = await driver.generate(prompts[2], LIMIT, eos_token_id=prompter.eos, stop=prompter.stops)
        assert [(prompter.text(t), len(t)) for t in rows] == alone
        assert (prompter.text(single), len(single)) == alone[2]
        assert list(driver.stats.batches) == [len(QUESTIONS)] and driver.stats.replans == 0


async def test_each_row_keeps_its_own_token_limit_through_workers(tiny: tuple[Path, Generator]) -> None:
    model_dir, gen = tiny
    prompter = Prompter(gen.spec, model_dir)
    limits = [1, 7, 3, 24, 2, 12, 5, 9, 16]
    async with _driver(model_dir) as driver:
        with trio.fail_after(120):
            rows = await driver.generate_batch([prompter.prompt_ids(q) for q in QUESTIONS], limits,
                                               eos_token_id=prompter.eos, stop=prompter.stops,
                                               pad_token_id=prompter.pad)
            assert await driver.generate_batch([], 4) == []
            with pytest.raises(ValueError, match="token limits"):
                await driver.generate_batch([[1, 2]], [4, 4])
    assert [(prompter.text(t), len(t)) for t in rows] == _alone(gen, QUESTIONS, limits)


@pytest.mark.parametrize("tiny", ["llama-chat"], indirect=True)  # the bound is the worker's, the same for every model
async def test_a_worker_refuses_a_batch_that_would_not_fit_in_a_frame(tiny: tuple[Path, Generator]) -> None:
    model_dir, gen = tiny
    async with _driver(model_dir) as driver:
        conn = await driver._connect("a")
        await conn.call(Request(0, "load", start=0, stop=1), 30)
        x = torch.zeros((MAX_BATCH, 1100), dtype=torch.int64)  # hidden states of 64 x 1100 x 64 floats: 18 MB
        resp = await conn.call(Request(0, "prefill", session="big", pos=0, x=x, want="hidden"), 60)
        assert not resp.ok and "exceeds the frame limit" in resp.error
        resp = await conn.call(Request(0, "decode", session="big", pos=1100, x=x[:, :1], want="hidden"), 30)
        assert not resp.ok and "unknown session" in resp.error  # the refused step's session is gone


# Two in-process workers load their layers at once (each in a trio thread). transformers swaps
# PreTrainedModel.tie_weights for a no-op while it loads; overlapping loads used to leave the no-op in
# place, so the SmolLM2 loaded next by test_shard_engine.py had a random embedding and answered "����".
_CONCURRENT_LOADS = """
import sys, threading
from transformers import PreTrainedModel
from peers.shard.model import ShardRunner, load_full_model
untied, tied = sys.argv[1:3]
original = PreTrainedModel.tie_weights
for _ in range(3):
    threads = [threading.Thread(target=ShardRunner, args=(untied, r)) for r in [(0, 1), (1, 2)] * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
model = load_full_model(tied)
print(PreTrainedModel.tie_weights is original, model.lm_head.weight is model.model.embed_tokens.weight)
"""


@pytest.mark.parametrize("tiny", ["llama-chat"], indirect=True)
def test_workers_loading_at_once_leave_later_tied_models_tied(tiny: tuple[Path, Generator], tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    model_dir, _ = tiny
    tied = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))
    tied.save_pretrained(tmp_path)  # the checkpoint holds one of the two tied tensors, as SmolLM2's does
    out = subprocess.run([sys.executable, "-c", _CONCURRENT_LOADS, str(model_dir), str(tmp_path)],
                         cwd=Path(__file__).parent.parent, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["True", "True"]


# --- pure parts: the runner's mask checks, the wire's bounds, the split ------------------------

def test_runner_checks_masks_and_batch_rows(tiny: tuple[Path, Generator]) -> None:
    model_dir, _ = tiny
    runner = ShardRunner(model_dir, (0, 1))
    x = torch.ones((2, 3), dtype=torch.int64)
    with pytest.raises(ShardError, match="mask must be 0/1"):
        runner.forward(x, 0, state=runner.new_state(), mask=torch.ones((2, 4), dtype=torch.int64))
    state = runner.new_state()
    runner.forward(x, 0, state=state, mask=torch.tensor([[0, 1, 1], [1, 1, 1]]))
    with pytest.raises(ShardError, match="comes with a prefill"):
        runner.forward(x[:, :1], 3, state=state, mask=torch.ones((2, 1), dtype=torch.int64))
    with pytest.raises(ShardError, match="holds a batch of 2 rows, got 3"):
        runner.forward(torch.ones((3, 1), dtype=torch.int64), 3, state=state)
    runner.forward(x[:, :1], 3, state=state)
    assert state.next_pos is not None and state.next_pos.tolist() == [3, 4] and state.seen == 4


def _prefill(x: dict[str, Any], **extra: Any) -> bytes:
    return canonical.pack({"id": 1, "op": "prefill", "session": "s", "pos": 0, "want": "hidden", "x": x, **extra})


def test_the_wire_bounds_the_batch_and_checks_the_mask() -> None:
    ids = torch.ones((2, 3), dtype=torch.int64)
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    req = unpack_request(pack_request(Request(1, "prefill", session="s", x=ids, mask=mask)))
    assert req.mask is not None and torch.equal(req.mask, mask)
    assert unpack_request(pack_request(Request(1, "prefill", session="s", x=ids))).mask is None
    with pytest.raises(ValueError, match="only a prefill"):
        pack_request(Request(1, "decode", session="s", pos=3, x=ids, mask=mask))
    with pytest.raises(ProtocolError, match="batch <= 64"):
        unpack_request(_prefill(encode_tensor(torch.ones((MAX_BATCH + 1, 1), dtype=torch.int64))))
    with pytest.raises(ProtocolError, match="batch"):
        unpack_request(_prefill(encode_tensor(torch.ones((3,), dtype=torch.int64))))
    with pytest.raises(ProtocolError, match="batch"):
        unpack_request(_prefill(encode_tensor(torch.ones((2, 0), dtype=torch.int64))))
    for bad in ([[1, 0, 1], [1, 1, 1]],  # a hole: not left padding
                [[0, 0, 0], [1, 1, 1]],  # a row with nothing
                [[0, 2, 1], [1, 1, 1]]):
        with pytest.raises(ProtocolError, match="left padding"):
            unpack_request(_prefill(encode_tensor(ids), mask=encode_tensor(torch.tensor(bad))))
    with pytest.raises(ProtocolError, match="shape"):
        unpack_request(_prefill(encode_tensor(ids), mask=encode_tensor(torch.ones((2, 2), dtype=torch.int64))))
    with pytest.raises(ProtocolError, match="i64"):
        unpack_request(_prefill(encode_tensor(ids), mask=encode_tensor(torch.ones((2, 3)))))
    decode = canonical.pack({"id": 1, "op": "decode", "session": "s", "pos": 3, "want": "hidden",
                             "x": encode_tensor(ids), "mask": encode_tensor(mask)})
    with pytest.raises(ProtocolError, match="unexpected keys"):
        unpack_request(decode)


def test_micro_batches_split_evenly_then_by_frame_size() -> None:
    assert micro_batch_rows([], [], 2, 4) == []
    assert micro_batch_rows([5] * 9, [4] * 9, 2, 4) == [[0, 1, 2, 3, 4], [5, 6, 7, 8]]
    assert micro_batch_rows([5] * 3, [4] * 3, 8, 4) == [[0], [1], [2]]
    # 4 rows x 100 tokens x 10 bytes = 4000 > 2500: halves of 2000 fit
    assert micro_batch_rows([90] * 4, [10] * 4, 1, 10, max_bytes=2500) == [[0, 1], [2, 3]]
    assert micro_batch_rows([1] * 70, [1] * 70, 1, 1, max_rows=64) == [list(range(35)), list(range(35, 70))]
    # a single row is never cut (the worker refuses it if it does not fit)
    assert micro_batch_rows([10_000], [10], 1, 10, max_bytes=10) == [[0]]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
