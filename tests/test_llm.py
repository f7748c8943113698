"""LLM hosting: registry, prompting, GGUF conversion cache and generation.

Fast tests use a tiny hand-rigged Llama written as a real GGUF file (so the conversion path is
exercised). Its layers output zero, so the next token depends only on the last one, following
a transition table. Real-model tests use the bundled SmolLM2 and Gemma-3 with the shared cache
(``$MULTILLMN_CACHE`` or ``~/.cache/multillmn/models``).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from peers.llm import (
    Generator,
    ModelError,
    chat_messages,
    clean_answer,
    default_cache_dir,
    few_shot_prompt,
    load_or_convert,
    resolve_model,
)
from peers.llm import cache as cache_mod
from peers.llm.prompting import FEW_SHOT_EXAMPLES, SYSTEM_PROMPT

pytestmark = pytest.mark.models  # loads real model weights: not in `make test-fast`

HIDDEN = 272
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _byte_tokens() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return list(bytes_to_unicode().values())


def write_tiny_gguf(path: Path) -> Path:
    """A 1-layer byte-level Llama GGUF whose greedy continuation follows a fixed table.

    After ":" (end of a few-shot prompt) it says " Paris\\n"; after "\\n" (end of a chat
    prompt) it says "OKOKOK..." forever.
    """
    import gguf

    tokens = _byte_tokens() + ["Ġt", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    types = [1] * (len(tokens) - 3) + [3, 3, 3]
    vocab = len(tokens)
    assert vocab <= HIDDEN
    idx = {t: i for i, t in enumerate(tokens)}
    chain = {":": "Ġ", "Ġ": "P", "P": "a", "a": "r", "r": "i", "i": "s", "s": "Ċ", "Ċ": "O", "O": "K", "K": "O"}
    embed = np.zeros((vocab, HIDDEN), np.float32)
    embed[np.arange(vocab), np.arange(vocab)] = 1.0  # one-hot: the residual stream is the last token
    head = np.zeros((vocab, HIDDEN), np.float32)
    for src, dst in chain.items():
        head[idx[dst], idx[src]] = 1.0
    ffn, heads = 16, 4
    rng = np.random.default_rng(0)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(1)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(heads)
    w.add_rope_dimension_count(HIDDEN // heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(["Ġ t"])
    w.add_bos_token_id(idx["<|endoftext|>"])
    w.add_eos_token_id(idx["<|im_end|>"])
    w.add_chat_template(CHAT_TEMPLATE)

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    w.add_tensor("token_embd.weight", embed)
    w.add_tensor("output_norm.weight", np.ones(HIDDEN, np.float32))
    w.add_tensor("output.weight", head)
    w.add_tensor("blk.0.attn_norm.weight", np.ones(HIDDEN, np.float32))
    w.add_tensor("blk.0.attn_q.weight", rand(HIDDEN, HIDDEN))
    w.add_tensor("blk.0.attn_k.weight", rand(HIDDEN, HIDDEN))
    w.add_tensor("blk.0.attn_v.weight", rand(HIDDEN, HIDDEN))
    w.add_tensor("blk.0.attn_output.weight", np.zeros((HIDDEN, HIDDEN), np.float32))
    w.add_tensor("blk.0.ffn_norm.weight", np.ones(HIDDEN, np.float32))
    w.add_tensor("blk.0.ffn_gate.weight", rand(ffn, HIDDEN))
    w.add_tensor("blk.0.ffn_up.weight", rand(ffn, HIDDEN))
    w.add_tensor("blk.0.ffn_down.weight", np.zeros((HIDDEN, ffn), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


@pytest.fixture(scope="module")
def tiny_generator(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Generator:
    return Generator.load(resolve_model(str(tiny_gguf)), tmp_path_factory.mktemp("cache"), threads=1)


# --- registry -------------------------------------------------------------------------------

def test_unknown_name_lists_choices() -> None:
    with pytest.raises(ModelError, match=r"smollm2.*gemma3"):
        resolve_model("llama-9000")


def test_dir_without_config_rejected(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="config.json"):
        resolve_model(str(tmp_path))


def test_other_file_rejected(tmp_path: Path) -> None:
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelError, match="neither"):
        resolve_model(str(f))


def test_bundled_specs() -> None:
    smol = resolve_model("smollm2")
    assert smol.is_gguf and smol.source is not None and smol.source.is_file()
    assert (smol.prompt_style, smol.stop_at_newline) == ("chat", False)
    gemma = resolve_model("GEMMA3")
    assert gemma.is_gguf and gemma.source is None and gemma.assemble is not None
    assert gemma.content_id and (gemma.prompt_style, gemma.stop_at_newline) == ("few-shot", True)


def test_hf_dir_prompt_style(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    spec = resolve_model(str(tmp_path))
    assert not spec.is_gguf and (spec.prompt_style, spec.stop_at_newline) == ("few-shot", True)
    (tmp_path / "tokenizer_config.json").write_text('{"chat_template": "{{ messages }}"}')
    assert resolve_model(str(tmp_path)).prompt_style == "chat"


# --- prompting (pure) -----------------------------------------------------------------------

def test_few_shot_prompt_format() -> None:
    p = few_shot_prompt("  What is\nthe capital of France? ")
    assert p.endswith("\n\nQuestion: What is the capital of France?\nAnswer:")
    assert p.count("Question: ") == len(FEW_SHOT_EXAMPLES) + 1 == p.count("Answer:")
    assert 3 <= len(FEW_SHOT_EXAMPLES) <= 4
    for q, a in FEW_SHOT_EXAMPLES:
        assert f"Question: {q}\nAnswer: {a}\n" in p and "\n" not in a


def test_chat_messages_format() -> None:
    m = chat_messages("Who wrote Hamlet?")
    assert m[0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert "one sentence" in SYSTEM_PROMPT and "short factual answer" in SYSTEM_PROMPT
    assert m[-1] == {"role": "user", "content": "Who wrote Hamlet?"}
    assert [x["role"] for x in m[1:-1]] == ["user", "assistant"] * len(FEW_SHOT_EXAMPLES)


def test_clean_answer() -> None:
    assert clean_answer(" Paris.\nQuestion: next", True) == "Paris."
    assert clean_answer("\n Paris\n", True) == "Paris"
    assert clean_answer(" Line one.\nLine two. ", False) == "Line one.\nLine two."


# --- cache ----------------------------------------------------------------------------------

def test_cache_converts_once_then_hits(
    tiny_gguf: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = resolve_model(str(tiny_gguf))
    assert spec.is_gguf and spec.prompt_style == "chat"
    caplog.set_level(logging.INFO, logger="multillmn.llm")
    first = load_or_convert(spec, tmp_path)
    assert (first / "config.json").is_file() and (first / "model.safetensors").is_file()
    assert any("converted" in r.getMessage() for r in caplog.records)
    caplog.clear()
    assert load_or_convert(spec, tmp_path) == first
    assert any("cache hit" in r.getMessage() for r in caplog.records)
    assert not any("converted" in r.getMessage() for r in caplog.records)
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [first.name]  # no temp dirs left
    # the converted entry is an ordinary Hugging Face directory
    hf = resolve_model(str(first))
    assert not hf.is_gguf and hf.prompt_style == "chat"
    assert load_or_convert(hf, tmp_path) == first


def test_cache_key_changes_with_file(tiny_gguf: Path, tmp_path: Path) -> None:
    copy = tmp_path / "tiny.gguf"
    copy.write_bytes(tiny_gguf.read_bytes())
    k1 = cache_mod.cache_key(resolve_model(str(copy)))
    with copy.open("ab") as fh:
        fh.write(b"\0" * 32)
    assert cache_mod.cache_key(resolve_model(str(copy))) != k1


def test_concurrent_converters_convert_once(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = cache_mod._convert
    calls: list[int] = []

    def slow_convert(src: Path, out: Path) -> None:
        calls.append(1)
        time.sleep(0.5)  # make sure the other thread arrives while we hold the lock
        real(src, out)

    monkeypatch.setattr(cache_mod, "_convert", slow_convert)
    spec = resolve_model(str(tiny_gguf))
    barrier = threading.Barrier(2)
    results: list[Path] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            results.append(load_or_convert(spec, tmp_path))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 2 and results[0] == results[1]
    assert len(calls) == 1


# --- generation (tiny model) ----------------------------------------------------------------

def test_generate_honours_max_new_tokens(tiny_generator: Generator) -> None:
    g = tiny_generator.generate("Say OK", max_new_tokens=5)
    assert (g.text, g.new_tokens) == ("OKOKO", 5)
    assert g.model == "tiny" and g.seconds > 0


def test_generate_stops_at_newline(tiny_generator: Generator) -> None:
    few = Generator(
        dataclasses.replace(tiny_generator.spec, prompt_style="few-shot", stop_at_newline=True),
        tiny_generator.model, tiny_generator.tokenizer,
    )
    g = few.generate("What is the capital of France?", max_new_tokens=20)
    assert g.text == "Paris" and g.new_tokens == 7  # " P a r i s \n", then stop
    g = few.generate("What is the capital of France?", max_new_tokens=3)
    assert (g.text, g.new_tokens) == ("Pa", 3)


def test_generate_from_hf_directory(tiny_generator: Generator, tmp_path: Path) -> None:
    hf_dir = load_or_convert(tiny_generator.spec, Path(tiny_generator.model.name_or_path).parent)
    g = Generator.load(resolve_model(str(hf_dir)), tmp_path, threads=1)
    assert g.generate("hi", 4).text == "OKOK"
    assert not any(tmp_path.iterdir())  # a Hugging Face directory needs no conversion


# --- real bundled models --------------------------------------------------------------------

@pytest.fixture(scope="session")
def smollm2() -> Generator:
    return Generator.load(resolve_model("smollm2"), default_cache_dir(), threads=2)


@pytest.fixture(scope="session")
def gemma3() -> Generator:
    return Generator.load(resolve_model("gemma3"), default_cache_dir(), threads=2)


def test_smollm2_answers_paris(smollm2: Generator) -> None:
    g = smollm2.generate("What is the capital of France?", 48)
    assert "Paris" in g.text and g.model == "smollm2" and 0 < g.new_tokens <= 48


def test_gemma3_answers_paris(gemma3: Generator) -> None:
    g = gemma3.generate("What is the capital of France?", 48)
    assert "Paris" in g.text and "\n" not in g.text and g.model == "gemma3"


def test_smollm2_cached_reload_is_fast(smollm2: Generator) -> None:
    t0 = time.monotonic()
    again = Generator.load(resolve_model("smollm2"), default_cache_dir(), threads=2)
    assert time.monotonic() - t0 < 5.0
    assert again.generate("What is the capital of France?", 16).text == smollm2.generate(
        "What is the capital of France?", 16
    ).text


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_the_judge_prefers_the_correct_answer_in_both_orders(name: str, request: pytest.FixtureRequest) -> None:
    from peers.judge import LLMJudge, judge_pair

    judge = LLMJudge(request.getfixturevalue(name))
    q = "What is the capital of France?"
    result = judge_pair(judge, q, "right", "The capital of France is Paris.", "wrong", "The capital of France is Berlin.")
    assert (result.a_first, result.b_first) == ("right", "right")
    legs = judge_pair(judge, "How many legs does a spider have?", "six", "A spider has six legs.",
                      "eight", "A spider has eight legs.")
    assert legs.winner() == "eight"
