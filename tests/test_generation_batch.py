"""Batched generation (issue 14, ADR 0019): a batch answers exactly as one question at a time.

Fast tests use tiny randomly initialised Llama and Gemma-3 models (the two architectures of the
bundled models) with a byte-level tokenizer, so left padding, position ids, the newline stop, EOS
and per-row token limits are exercised without weights on disk. Every answer is compared with the
reference: the same model answering one question at a time without the shared prompt prefix's KV
cache (``prefix_cache=False``), i.e. as before batching and the cache existed. Tests marked
``models`` compare the bundled SmolLM2 and Gemma-3 over the shipped questions at batch sizes 1, 4
and 8 (each question in one of them), over the prefix cache, against that reference. A node-level
test checks that concurrent questions share engine calls and decide as before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
import torch
import trio

from multillmn.config import PeerConfig
from peers.engine import ModelEngine, Reply, ScriptedEngine, answer_all
from peers.judge import LLMJudge, judge_pair, judge_pairs
from peers.llm import Generator, ModelSpec
from tests.conftest import make_net

torch.set_num_threads(1)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QUESTIONS = [
    "What is the capital of France?",
    "2+2?",
    "Who wrote Hamlet, the play about a Danish prince, and in which year was it first performed?",
    "How many legs does a spider have?",
    "Name a planet.",
    "What is the boiling point of water at sea level in degrees Celsius?",
    "Why?",
    "What is the chemical symbol for gold?",
    "Which ocean is the largest on Earth by surface area?",
]


def byte_tokenizer() -> Any:
    """A byte-level BPE tokenizer without merges (256 byte tokens + BOS, EOS/<|im_end|>, <|im_start|>, <pad>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {t: i for i, t in enumerate(bytes_to_unicode().values())}
    specials = ["<bos>", "<|im_end|>", "<|im_start|>", "<pad>"]
    for t in specials:
        vocab[t] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<|im_end|>",
                                   pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def random_model(arch: str, tokenizer: Any, seed: int, window: int = 48) -> Any:
    """A 2-layer model with large random weights (logits far apart, so greedy has no near ties)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    common: dict[str, Any] = dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, initializer_range=0.3, tie_word_embeddings=False,
    )
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:  # Gemma-3: sliding-window and global layers alternate; a small window so padding meets it
        model = Gemma3ForCausalLM(Gemma3TextConfig(**common, sliding_window=window,
                                                   layer_types=["sliding_attention", "full_attention"]))
    # A second end token that random weights emit now and then, so rows end at different steps.
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("$")]
    model.eval()
    return model


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return byte_tokenizer()


# gemma3 has a 48-token sliding window, which a batch over the cached prefix would exceed (so it runs
# without the cache, left-padded across the window); gemma3wide has a 1024-token one and uses the cache.
def tiny_generator(name: str, tokenizer: Any) -> Generator:
    arch, style = name.split("-", 1)
    spec = ModelSpec(f"tiny-{arch}", None, False, "chat" if style == "chat" else "few-shot", style == "few-shot")
    window = 1024 if arch == "gemma3wide" else 48
    return Generator(spec, random_model(arch.removesuffix("wide"), tokenizer, seed=1, window=window), tokenizer)


@pytest.fixture(scope="module", params=["llama-chat", "gemma3-few-shot", "gemma3wide-few-shot"])
def generator(request: pytest.FixtureRequest, tokenizer: Any) -> Generator:
    return tiny_generator(request.param, tokenizer)


@pytest.fixture(scope="module", params=["llama-chat", "gemma3wide-few-shot"])
def cached_generator(request: pytest.FixtureRequest, tokenizer: Any) -> Generator:
    """The tiny models whose batches run over the cached prefix."""
    return tiny_generator(request.param, tokenizer)


def reference(gen: Generator) -> Generator:
    """The same model and tokenizer without the prefix cache: the answers of before batching."""
    return Generator(gen.spec, gen.model, gen.tokenizer, prefix_cache=False)


def one_by_one(gen: Generator, questions: Sequence[str], limits: Sequence[int]) -> list[tuple[str, int]]:
    """Unbatched, uncached answers (the reference)."""
    ref = reference(gen)
    return [(g.text, g.new_tokens) for g in (ref.generate(q, m) for q, m in zip(questions, limits))]


def uses_the_cache(gen: Generator) -> bool:
    return gen.spec.name != "tiny-gemma3"


# --- generation ------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [1, 4, 8])
def test_a_batch_answers_as_one_question_at_a_time(generator: Generator, size: int) -> None:
    alone = one_by_one(generator, QUESTIONS, [24] * len(QUESTIONS))
    together = []
    for i in range(0, len(QUESTIONS), size):
        together += [(g.text, g.new_tokens) for g in generator.generate_batch(QUESTIONS[i:i + size], 24)]
    assert together == alone
    assert len({n for _, n in alone}) > 1  # rows stopped at different steps (EOS or newline)


def test_each_row_keeps_its_own_token_limit(generator: Generator) -> None:
    limits = [1, 7, 3, 24, 2, 12, 5, 9, 16]
    batch = generator.generate_batch(QUESTIONS, limits)
    assert [(g.text, g.new_tokens) for g in batch] == one_by_one(generator, QUESTIONS, limits)
    assert all(g.new_tokens <= m for g, m in zip(batch, limits))


def test_finished_rows_leave_the_batch(generator: Generator) -> None:
    """Each decode step runs the body and the output head over the rows still running only."""
    generator.generate(QUESTIONS[0], 1)  # the shared prefix is computed (one row) beforehand
    body: list[int] = []
    head: list[int] = []
    hooks = [generator.model.get_input_embeddings().register_forward_hook(
                 lambda module, args, out: body.append(args[0].shape[0])),
             generator.model.get_output_embeddings().register_forward_hook(
                 lambda module, args, out: head.append(args[0].shape[0]))]
    try:
        batch = generator.generate_batch(QUESTIONS, 24)
    finally:
        for hook in hooks:
            hook.remove()
    made = [g.new_tokens for g in batch]
    assert len(set(made)) > 1  # rows finished at different steps
    running = [sum(n > step for n in made) for step in range(max(made))]  # the prefill, then each decode step
    assert running[0] == len(QUESTIONS) and body == running and head == running
    assert [(g.text, g.new_tokens) for g in batch] == one_by_one(generator, QUESTIONS, [24] * len(QUESTIONS))


def test_a_batch_through_generate_answers_as_the_dropping_decode(generator: Generator) -> None:
    """The baseline that keeps finished rows to the end (``drop_finished_rows = False``) answers the same."""
    limits = [24, 7, 3, 24, 2, 12, 5, 9, 16]
    dropping = [(g.text, g.new_tokens) for g in generator.generate_batch(QUESTIONS, limits)]
    generator.drop_finished_rows = False
    try:
        riding = [(g.text, g.new_tokens) for g in generator.generate_batch(QUESTIONS, limits)]
    finally:
        generator.drop_finished_rows = True
    assert riding == dropping


def test_a_batch_shares_one_wall_time_and_takes_no_question_twice(generator: Generator) -> None:
    batch = generator.generate_batch(QUESTIONS[:3], 8)
    assert len(batch) == 3 and len({g.seconds for g in batch}) == 1 and batch[0].seconds > 0
    assert generator.generate_batch([], 8) == []
    with pytest.raises(ValueError, match="token limits"):
        generator.generate_batch(QUESTIONS[:3], [4, 4])


def test_the_same_question_twice_in_a_batch_gets_the_same_answer(generator: Generator) -> None:
    a, b, c = generator.generate_batch([QUESTIONS[2], QUESTIONS[1], QUESTIONS[2]], 16)
    assert (a.text, a.new_tokens) == (c.text, c.new_tokens)


# --- the shared prefix's KV cache ------------------------------------------------------------

def test_single_answers_over_the_cached_prefix_equal_the_uncached_ones(generator: Generator) -> None:
    before = generator.prefix_statistics()
    alone = [(g.text, g.new_tokens) for g in (generator.generate(q, 24) for q in QUESTIONS)]
    assert alone == one_by_one(generator, QUESTIONS, [24] * len(QUESTIONS))
    after = generator.prefix_statistics()
    assert after.enabled and after.tokens > 100  # the few-shot examples or the system and example turns
    cached = after.cached_rows - before.cached_rows
    assert cached == (len(QUESTIONS) if uses_the_cache(generator) else 0)
    assert after.uncached_rows - before.uncached_rows == len(QUESTIONS) - cached


def test_the_prefix_is_every_prompts_start_and_the_shared_cache_is_never_changed(generator: Generator) -> None:
    ids = generator._prefix.ids
    for q in QUESTIONS:
        prompt = generator._prompt_ids(q)
        assert prompt[:len(ids)] == ids and generator._prefix.split(prompt) == prompt[len(ids):]
    assert generator._prefix.split(ids) is None and generator._prefix.split(ids[:-1] + [ids[-1] + 1] + [7]) is None
    generator.generate_batch(QUESTIONS[:4], 8)
    shared = generator._prefix._cache
    if not uses_the_cache(generator):
        return
    assert shared is not None and shared.get_seq_length() == len(ids)
    snapshot = [(layer.keys.clone(), layer.values.clone()) for layer in shared.layers]
    generator.generate_batch(QUESTIONS, 16)
    generator.generate(QUESTIONS[0], 16)
    assert generator._prefix._cache is shared and shared.get_seq_length() == len(ids)
    for layer, (k, v) in zip(shared.layers, snapshot):
        assert layer.keys.shape[0] == 1 and torch.equal(layer.keys, k) and torch.equal(layer.values, v)


def test_a_question_whose_prompt_does_not_start_with_the_prefix_runs_without_it(
        cached_generator: Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    generator = cached_generator
    assert uses_the_cache(generator)
    odd = generator._prompt_ids(QUESTIONS[2])
    split = generator._prefix.split
    monkeypatch.setattr(generator._prefix, "split", lambda p: None if p == odd else split(p))
    before = generator.prefix_statistics()
    batch = generator.generate_batch(QUESTIONS[:5], 24)
    after = generator.prefix_statistics()
    assert (after.cached_rows - before.cached_rows, after.uncached_rows - before.uncached_rows) == (4, 1)
    assert [(g.text, g.new_tokens) for g in batch] == one_by_one(generator, QUESTIONS[:5], [24] * 5)
    assert len({g.seconds for g in batch}) == 1


def test_a_batch_that_would_cross_the_sliding_window_runs_without_the_cache(tokenizer: Any) -> None:
    generator = tiny_generator("gemma3wide-few-shot", tokenizer)  # the wide-window Gemma-3 uses the cache
    pc = generator._prefix
    assert pc.fits(1024) and not pc.fits(1025)
    before = generator.prefix_statistics()
    width = max(len(generator._prompt_ids(q)) for q in QUESTIONS[:2])
    limit = 1024 - width + 1  # one column more than the window
    generator.generate_batch(QUESTIONS[:2], [limit, 4])
    after = generator.prefix_statistics()
    assert (after.cached_rows - before.cached_rows, after.uncached_rows - before.uncached_rows) == (0, 2)


def test_the_cache_off_switch_is_per_model(tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = ModelSpec("tiny-llama", None, False, "chat", False, prefix_cache=False)
    gen = Generator(spec, random_model("llama", tokenizer, seed=1), tokenizer)
    gen.generate_batch(QUESTIONS[:3], 4)
    stats = gen.prefix_statistics()
    assert not stats.enabled and not stats.computed and (stats.cached_rows, stats.uncached_rows) == (0, 3)
    assert Generator(spec, gen.model, tokenizer, prefix_cache=True).prefix_statistics().enabled
    on = replace(spec, prefix_cache=True)
    assert Generator(on, gen.model, tokenizer).prefix_statistics().enabled
    monkeypatch.setenv("MULTILLMN_PREFIX_CACHE", "0")  # benchmarks of the behaviour before the cache
    assert not Generator(on, gen.model, tokenizer).prefix_statistics().enabled


# --- the judge -------------------------------------------------------------------------------

ANSWERS = ["Paris", "The capital of France is Paris.", "", "Berlin, in Germany, is the capital of France, I think.",
           "  Paris  "]


def test_batched_log_probabilities_equal_one_by_one(generator: Generator) -> None:
    q = QUESTIONS[0]
    batched = generator.answer_logprobs(q, ANSWERS)
    alone = [reference(generator).answer_logprob(q, a) for a in ANSWERS]  # uncached, unpadded
    one_by_one_scores = [generator.answer_logprob(q, a) for a in ANSWERS]
    # Equal within float rounding: the output head's BLAS sums a different number of rows another way.
    assert all(x == y == float("-inf") or abs(x - y) < 1e-5 for x, y in zip(one_by_one_scores, batched))
    if generator.spec.prompt_style == "chat":
        assert batched[2] == alone[2] == float("-inf")  # an empty answer (few-shot: a lone space)
    for x, y in zip(batched, alone):
        assert x == y == float("-inf") or abs(x - y) < 1e-4
    assert generator.answer_logprobs(q, []) == []


def full_head_logprob(gen: Generator, question: str, answer: str) -> float:
    """The judge's score as first written: the output head over every position of prompt and answer."""
    prompt, cont = gen._judge_prompt(question), gen._continuation(answer)
    if not cont:
        return float("-inf")
    with torch.inference_mode():
        logits = gen.model(input_ids=torch.tensor([prompt + cont])).logits[0]
    step = logits[len(prompt) - 1:len(prompt) - 1 + len(cont)]
    return float(torch.log_softmax(step.float(), dim=-1)[torch.arange(len(cont)), torch.tensor(cont)].mean())


def test_log_probabilities_run_the_output_head_only_at_the_answers_positions(generator: Generator) -> None:
    q = QUESTIONS[2]
    heads: list[int] = []
    hook = generator.model.lm_head.register_forward_hook(
        lambda module, args, out: heads.append(args[0].reshape(-1, args[0].shape[-1]).shape[0]))  # rows of the head
    try:
        scores = generator.answer_logprobs(q, ANSWERS)
        single = generator.answer_logprob(q, ANSWERS[1])
    finally:
        hook.remove()
    tokens = [len(generator._continuation(a)) for a in ANSWERS]
    assert heads == [sum(tokens), tokens[1]]  # one row of the head per answer token, none for the prompt
    full = [full_head_logprob(generator, q, a) for a in ANSWERS]
    for x, y in zip(scores + [single], full + [full[1]]):
        assert x == y == float("-inf") or abs(x - y) < 1e-4


def test_the_llm_judge_scores_a_questions_answers_in_one_pass(generator: Generator) -> None:
    calls: list[int] = []
    inner = generator.answer_logprobs

    def counting(question: str, answers: Sequence[str]) -> list[float]:
        calls.append(len(answers))
        return inner(question, answers)

    judge = LLMJudge(generator)
    judge.generator = type("G", (), {"answer_logprobs": staticmethod(counting),
                                    "answer_logprob": generator.answer_logprob})()  # type: ignore[assignment]
    q = QUESTIONS[0]
    pairs = [("a", ANSWERS[0], "b", ANSWERS[1]), ("a", ANSWERS[0], "c", ANSWERS[3]), ("b", ANSWERS[1], "c", ANSWERS[3])]
    results = judge_pairs(judge, q, pairs)
    assert calls == [3]  # three distinct answers, one forward pass; the pairs then hit the cache
    reference = LLMJudge(generator)
    assert results == [judge_pair(reference, q, *p) for p in pairs]


# --- engines ---------------------------------------------------------------------------------

def test_model_engine_answers_a_batch_as_its_generator(generator: Generator) -> None:
    engine = ModelEngine(generator, embedder=None, model_name="tiny")  # type: ignore[arg-type]
    replies = engine.answer_batch(QUESTIONS[:4], 12)
    assert [r.text for r in replies] == [engine.answer(q, 12).text for q in QUESTIONS[:4]]
    assert [r.text for r in replies] == [t for t, _ in one_by_one(generator, QUESTIONS[:4], [12] * 4)]
    assert len({r.seconds for r in replies}) == 1


def test_scripted_engine_and_the_one_by_one_fallback() -> None:
    engine = ScriptedEngine({"a": "A", "b": "B"}, delay_s=0.05)
    t0 = time.monotonic()
    replies = engine.answer_batch(["a", "b", "c"], 8)
    assert time.monotonic() - t0 < 0.1  # one delay for the batch
    assert [r.text for r in replies] == ["A", "B", "I do not know."] and len({r.seconds for r in replies}) == 1

    class OneByOne:  # an engine without answer_batch (a sharded peer's today)
        def __init__(self) -> None:
            self.calls = 0

        def answer(self, question: str, max_new_tokens: int) -> Reply:
            self.calls += 1
            return Reply(question.upper()[:max_new_tokens], 0.01)

    old = OneByOne()
    replies = answer_all(old, ["ab", "cd"], [1, 2])
    assert [r.text for r in replies] == ["A", "CD"] and old.calls == 2 and replies[0].seconds == replies[1].seconds
    assert [r.text for r in answer_all(engine, ["a"], 8)] == ["A"]


# --- the node --------------------------------------------------------------------------------

class CountingEngine(ScriptedEngine):
    """Counts model calls and the batch sizes it was given."""

    def __init__(self, table: dict[str, str], **kw: Any) -> None:
        super().__init__(table, **kw)
        self.lock = threading.Lock()
        self.batches: list[int] = []  # questions per call
        self.batch_calls = 0  # calls of answer_batch

    def answer(self, question: str, max_new_tokens: int) -> Reply:
        with self.lock:
            self.batches.append(1)
        return super().answer(question, max_new_tokens)

    def answer_batch(self, questions: Sequence[str], max_new_tokens: int | Sequence[int]) -> list[Reply]:
        with self.lock:
            self.batches.append(len(questions))
            self.batch_calls += 1
        return super().answer_batch(questions, max_new_tokens)


TABLE = {f"What is {k} + {k}?": str(2 * k) for k in range(1, 6)}


async def _ask_together(max_batch: int) -> tuple[list[CountingEngine], list[Any]]:
    from tests.test_node import running

    net = make_net([1, 1, 1, 1])
    engines = [CountingEngine(TABLE, model_name=f"m{i}", delay_s=0.3) for i in range(4)]
    decisions: dict[str, Any] = {}
    cfg = replace(PeerConfig.for_tests(), max_batch=max_batch, queries_per_height=1)  # batching alone
    async with running(net, engines, cfg=cfg) as nodes:
        async def ask(i: int, question: str) -> None:
            decisions[question] = await nodes[i % 4].submit(question)

        with trio.fail_after(60):
            async with trio.open_nursery() as n:
                for i, question in enumerate(TABLE):
                    n.start_soon(ask, i, question)
    return engines, [decisions[q] for q in TABLE]


async def test_concurrent_questions_share_engine_calls_and_decide_as_before() -> None:
    engines, decisions = await _ask_together(max_batch=8)
    assert [d.outcome.answer for d in decisions] == list(TABLE.values())
    assert len({d.height for d in decisions}) == len(TABLE)  # one query per height, as before
    # (a peer skips a question decided before its model got to it, so a few may be left out)
    assert all(sum(e.batches) <= len(TABLE) for e in engines)
    assert sum(sum(e.batches) for e in engines) >= 3 * len(TABLE)  # +2/3 answered every question
    assert all(len(e.batches) < len(TABLE) and max(e.batches) > 1 for e in engines)  # fewer calls than questions


async def test_max_batch_bounds_a_batch_and_one_means_one_at_a_time() -> None:
    engines, decisions = await _ask_together(max_batch=2)
    assert [d.outcome.answer for d in decisions] == list(TABLE.values())
    assert all(max(e.batches) <= 2 for e in engines) and any(2 in e.batches for e in engines)
    engines, decisions = await _ask_together(max_batch=1)
    assert [d.outcome.answer for d in decisions] == list(TABLE.values())
    assert all(set(e.batches) == {1} and e.batch_calls == 0 for e in engines)  # engine.answer, as before


# --- the bundled models ----------------------------------------------------------------------

def shipped_questions() -> list[str]:
    """Every 8th shipped question (16, every topic); MULTILLMN_ALL_QUESTIONS=1: all of them."""
    import os

    from multillmn.questions import load_questions

    questions = [q.question for q in load_questions()]
    return questions if os.environ.get("MULTILLMN_ALL_QUESTIONS") == "1" else questions[::8]


def batch_sizes(n: int, sizes: Sequence[int] = (1, 4, 8, 2, 1)) -> list[int]:
    """``n`` questions cut into batches of the given sizes in turn (alone, 4 and 8 all occur for n >= 13)."""
    out: list[int] = []
    while sum(out) < n:
        out.append(min(sizes[len(out) % len(sizes)], n - sum(out)))
    return out


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def bundled(request: pytest.FixtureRequest) -> Generator:
    from peers.llm import default_cache_dir, resolve_model

    return Generator.load(resolve_model(request.param), default_cache_dir(), threads=1)


@pytest.mark.models
def test_bundled_models_answer_in_batches_as_one_at_a_time(bundled: Generator) -> None:
    """Over the prefix cache (if the model ships with it), alone and in batches of 4 and 8 (each question in
    one of them), against the plain reference: one question at a time, no cache."""
    questions = shipped_questions()
    alone = one_by_one(bundled, questions, [48] * len(questions))
    before = bundled.prefix_statistics()
    assert before.enabled == bundled.spec.prefix_cache
    sizes = batch_sizes(len(questions))
    assert {1, 4, 8} <= set(sizes)
    start = 0
    for size in sizes:
        together = [(g.text, g.new_tokens) for g in bundled.generate_batch(questions[start:start + size], 48)]
        differ = [(q, a, b) for q, a, b in zip(questions[start:], alone[start:], together) if a != b]
        assert not differ, f"batch of {size}: {differ}"
        start += size
    stats = bundled.prefix_statistics()
    over_cache = stats.cached_rows - before.cached_rows
    assert over_cache == (len(questions) if stats.enabled else 0)  # every prompt starts with the prefix


@pytest.mark.models
def test_bundled_models_log_probabilities_in_one_pass(bundled: Generator) -> None:
    q = "What is the capital of France?"
    answers = ["Paris", "The capital of France is Paris.", "The capital of France is Berlin.", "Lyon, I think"]
    alone = [reference(bundled).answer_logprob(q, a) for a in answers]
    full = [full_head_logprob(bundled, q, a) for a in answers]  # the head over every position, as before
    for x, y, z in zip(bundled.answer_logprobs(q, answers), alone, full):
        assert abs(x - y) < 1e-4 and abs(x - z) < 1e-4
