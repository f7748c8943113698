"""The output head on numpy's BLAS (:mod:`peers.llm.head`): the same logits within float rounding, and the
bundled models' greedy answers unchanged, alone and in batches."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from threadpoolctl import threadpool_info

from peers.llm import Generator
from peers.llm.head import BlasHead, install_blas_head, limit_blas_threads
from tests.test_generation_batch import byte_tokenizer, random_model, shipped_questions, tiny_generator


def test_the_blas_head_computes_the_linear_heads_product() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(24, 1000, bias=False)
    head = BlasHead(linear)
    for shape in [(1, 1, 24), (3, 5, 24), (7, 24)]:
        hidden = torch.randn(*shape)
        with torch.inference_mode():
            got, want = head(hidden), linear(hidden)
        assert got.shape == want.shape and got.dtype == torch.float32
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    with torch.inference_mode():  # a non-contiguous view (the last positions of each row) reads right too
        hidden = torch.randn(2, 6, 24)[:, 3:, :]
        assert torch.allclose(head(hidden), linear(hidden), rtol=1e-5, atol=1e-5)


def test_only_a_bias_free_fp32_linear_head_is_replaced() -> None:
    tok = byte_tokenizer()
    model = random_model("llama", tok, seed=1)
    original = model.get_output_embeddings()
    assert install_blas_head(model) and isinstance(model.get_output_embeddings(), BlasHead)
    assert model.get_output_embeddings().weight is original.weight  # still tied to the input embeddings
    assert install_blas_head(model)  # idempotent: a second Generator over the same model
    half = random_model("llama", tok, seed=1).to(torch.bfloat16)
    assert not install_blas_head(half) and isinstance(half.get_output_embeddings(), torch.nn.Linear)


def test_a_generator_installs_it_unless_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    tok = byte_tokenizer()
    assert isinstance(tiny_generator("llama-chat", tok).model.get_output_embeddings(), BlasHead)
    monkeypatch.setenv("MULTILLMN_BLAS_HEAD", "0")
    assert type(tiny_generator("llama-chat", tok).model.get_output_embeddings()) is torch.nn.Linear


def test_a_sharded_model_computes_its_head_as_an_unsharded_peer_does(monkeypatch: pytest.MonkeyPatch) -> None:
    from peers.shard.model import ShardedModel

    model = random_model("llama", byte_tokenizer(), seed=1)
    n = model.config.num_hidden_layers
    sharded = ShardedModel.from_model(model, [(0, n // 2), (n // 2, n)])
    assert isinstance(sharded.runners[-1].lm_head, BlasHead) and sharded.runners[0].lm_head is None
    monkeypatch.setenv("MULTILLMN_BLAS_HEAD", "0")
    plain = ShardedModel.from_model(random_model("llama", byte_tokenizer(), seed=1), [(0, n)])
    assert type(plain.runners[-1].lm_head) is torch.nn.Linear


def test_blas_threads_follow_the_limit() -> None:
    before = torch.get_num_threads()
    try:
        limit_blas_threads(1)
        assert {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"} == {1}
    finally:
        limit_blas_threads(before)


@contextmanager
def torch_head(model: Any) -> Iterator[None]:
    """``model`` with torch's own ``Linear`` head over the same weight, for the time of the block."""
    blas = model.get_output_embeddings()
    linear = torch.nn.Linear(blas.in_features, blas.out_features, bias=False)
    linear.weight = blas.weight
    model.set_output_embeddings(linear)
    try:
        yield
    finally:
        model.set_output_embeddings(blas)


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def bundled(request: pytest.FixtureRequest) -> Generator:
    from peers.llm import default_cache_dir, resolve_model

    return Generator.load(resolve_model(request.param), default_cache_dir(), threads=1)


@pytest.mark.models
def test_bundled_models_answer_as_with_torchs_head(bundled: Generator) -> None:
    """16 shipped questions (every topic) in two batches of 8 and the first alone: the same greedy answers."""
    assert isinstance(bundled.model.get_output_embeddings(), BlasHead)
    questions = shipped_questions()

    def answers() -> list[tuple[str, int]]:
        batched = [g for half in (questions[:8], questions[8:]) for g in bundled.generate_batch(half, 48)]
        return [(g.text, g.new_tokens) for g in [*batched, bundled.generate(questions[0], 48)]]

    with_blas = answers()
    with torch_head(bundled.model):
        with_torch = answers()
    assert with_blas == with_torch
