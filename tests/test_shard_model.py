"""Sharded execution equals the unsharded model: logits (fp32, 1e-4) and greedy generation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import DynamicCache, GenerationConfig

from peers.llm.cache import default_cache_dir, load_or_convert
from peers.llm.models import resolve_model
from peers.shard.model import ShardedModel, ShardError, ShardRunner, load_full_model, split_evenly

pytestmark = pytest.mark.models  # loads real model weights: not in `make test-fast`

ATOL = 1e-4
DECODE_STEPS = 8


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model_dir(name: str) -> Path:
    return load_or_convert(resolve_model(name), default_cache_dir())


@pytest.fixture(scope="module")
def smollm2() -> Any:
    return load_full_model(_model_dir("smollm2"))


@pytest.fixture(scope="module")
def gemma3() -> Any:
    return load_full_model(_model_dir("gemma3"))


# "The capital of France is Paris. The capital of Italy is", tokenised once (the Gemma3
# tokenizer alone takes seconds to load).
_PROMPT_IDS = {
    "llama": [504, 3575, 282, 4649, 314, 7042, 30, 378, 3575, 282, 7158, 314],
    "gemma3_text": [2, 818, 5279, 529, 7001, 563, 9079, 236761, 669, 5279, 529, 11702, 563],
}


def _prompt_ids(model: Any) -> torch.Tensor:
    return torch.tensor([_PROMPT_IDS[model.config.model_type]], dtype=torch.long)


_REF: dict[tuple[int, int], tuple[list[torch.Tensor], list[int]]] = {}


def _reference(model: Any, ids: torch.Tensor, steps: int) -> tuple[list[torch.Tensor], list[int]]:
    """Unsharded logits for the prompt and ``steps`` greedy decode steps, and the tokens fed (memoised)."""
    key = (id(model), steps)
    if key not in _REF:
        _REF[key] = _compute_reference(model, ids, steps)
    return _REF[key]


def _compute_reference(model: Any, ids: torch.Tensor, steps: int) -> tuple[list[torch.Tensor], list[int]]:
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        logits = [model(ids, cache=cache, use_cache=True).logits]
        tokens = [int(logits[0][0, -1].argmax())]
        for _ in range(steps):
            out = model(torch.tensor([[tokens[-1]]]), cache=cache, use_cache=True).logits
            logits.append(out)
            tokens.append(int(out[0, -1].argmax()))
    return logits, tokens[:-1]


def _check_partition(model: Any, ranges: list[tuple[int, int]], ids: torch.Tensor | None = None) -> None:
    ids = _prompt_ids(model) if ids is None else ids
    ref, fed = _reference(model, ids, DECODE_STEPS)
    sharded = ShardedModel.from_model(model, ranges)
    got = [sharded(ids)]
    for token in fed:
        got.append(sharded(torch.tensor([[token]])))
    assert len(got) == DECODE_STEPS + 1
    for step, (a, b) in enumerate(zip(ref, got)):
        assert a.shape == b.shape
        diff = float((a - b).abs().max())
        assert diff <= ATOL, f"{ranges} step {step}: max |Δlogit| = {diff}"


@pytest.mark.parametrize("ranges", [[(0, 10), (10, 30)], [(0, 7), (7, 20), (20, 30)]])
def test_smollm2_sharded_logits_equal_unsharded(smollm2: Any, ranges: list[tuple[int, int]]) -> None:
    _check_partition(smollm2, ranges)


@pytest.mark.parametrize("ranges", [[(0, 9), (9, 18)], [(0, 5), (5, 12), (12, 18)]])
def test_gemma3_sharded_logits_equal_unsharded(gemma3: Any, ranges: list[tuple[int, int]]) -> None:
    _check_partition(gemma3, ranges)


def test_gemma3_sliding_window_slides_inside_shards() -> None:
    """With a window of 8, prompt and decode cross it: local layers drop old keys, global ones do not."""
    model = load_full_model(_model_dir("gemma3"), sliding_window=8)
    ids = _prompt_ids(model)
    assert ids.shape[1] > 8
    _check_partition(model, [(0, 5), (5, 12), (12, 18)], ids)  # [0:5) has only sliding layers


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_greedy_generation_identical_to_generate(name: str, smollm2: Any, gemma3: Any) -> None:
    model = smollm2 if name == "smollm2" else gemma3
    ids = _prompt_ids(model)
    eos = model.generation_config.eos_token_id
    config = GenerationConfig(max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=eos)  # type: ignore[no-untyped-call]
    with torch.inference_mode():
        expected = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
    expected_new = [int(t) for t in expected[0, ids.shape[1]:]]
    assert len(expected_new) >= 4
    n = model.config.num_hidden_layers
    sharded = ShardedModel.from_model(model, split_evenly(n, 3))
    assert sharded.generate(ids[0].tolist(), 12, eos_token_id=eos) == expected_new


def test_runner_loaded_from_dir_holds_only_its_layers(smollm2: Any) -> None:
    last = ShardRunner(_model_dir("smollm2"), (20, 30), is_first=False, is_last=True)
    assert last.embed is None and len(last.layers) == 10 and last.lm_head is not None
    per_layer = sum(p.numel() * 4 for p in smollm2.model.layers[0].parameters())
    head = smollm2.lm_head.weight.numel() * 4
    assert last.parameter_bytes() == pytest.approx(10 * per_layer + head, rel=1e-3)
    ids = _prompt_ids(smollm2)
    ref, _ = _reference(smollm2, ids, 0)
    chain = ShardedModel([ShardRunner.from_model(smollm2, (0, 20)), last])
    assert float((chain(ids) - ref[0]).abs().max()) <= ATOL


def test_shard_errors(smollm2: Any) -> None:
    with pytest.raises(ShardError, match="not inside"):
        ShardRunner.from_model(smollm2, (10, 31))
    with pytest.raises(ShardError, match="disagree"):
        ShardRunner.from_model(smollm2, (10, 20), is_first=True)
    r = ShardRunner.from_model(smollm2, (10, 20))
    with pytest.raises(ShardError, match="hidden states"):
        r.forward(torch.tensor([[1, 2]]))
    with pytest.raises(ShardError, match="holds 0 tokens, got position 3"):
        r.forward(torch.zeros(1, 2, 576), 3)
    assert r.forward(torch.zeros(1, 2, 576)).shape == (1, 2, 576) and r.seen == 2
    r.reset()
    assert r.seen == 0
    with pytest.raises(ShardError, match="tile"):
        ShardedModel([ShardRunner.from_model(smollm2, (0, 10)), ShardRunner.from_model(smollm2, (11, 30))])
    assert split_evenly(30, 4) == [(0, 8), (8, 16), (16, 23), (23, 30)]
    with pytest.raises(ShardError):
        split_evenly(3, 4)
