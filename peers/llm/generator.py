"""Blocking text generation with a locally hosted causal LM (CPU, fp32, greedy).

``Generator.generate_batch`` answers several questions in one batched greedy
decode: each prompt is tokenised exactly as alone, left-padded to the longest,
with an attention mask (each row's position ids follow from the mask, so a
padded row sees the positions it would see alone); every row stops on its own
(EOS, the newline stop of a few-shot base model, its own token limit) and
leaves the batch when it does: its row of the KV cache is dropped, so each
decode step costs only the rows still running (ADR 0019, addendum 4). Greedy
answers equal the unbatched ones, which HF ``generate`` makes
(``tests/test_generation_batch.py`` checks both bundled models over the
shipped questions). ``Generator.serve`` batches continuously: questions join
the running batch between two decode steps and each answer leaves as soon as
its row ends (:mod:`.continuous`, ADR 0019 addendum 5).

The prompt's shared prefix (few-shot examples, or the chat template's system
and example turns) is run once per model; its KV cache (:mod:`.prefix`) is
copied to each batch's rows, so a batch prefills only each question's own
tokens, padded between prefix and suffix (ADR 0019, addendum 2).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    GenerationConfig,
    PreTrainedModel,
    StoppingCriteria,
    StoppingCriteriaList,
)

from .cache import LOAD_LOCK, load_or_convert, offline
from .continuous import ModelLock, Row, RunningBatch
from .head import blas_head_enabled, install_blas_head, limit_blas_threads
from .models import ModelSpec
from .prefix import PrefixCache, PrefixStatistics
from .prompting import chat_messages, clean_answer, few_shot_prompt

__all__ = ["Ask", "Generation", "Generator", "NewlineStop"]

log = logging.getLogger("multillmn.llm")


@dataclass(frozen=True)
class Generation:
    """One answer: stripped text, tokens generated, wall-clock seconds, model name."""

    text: str
    new_tokens: int
    seconds: float
    model: str


@dataclass(frozen=True)
class Ask:
    """A question handed to :meth:`Generator.serve`, with the caller's key for its answer."""

    key: Any
    question: str
    max_new_tokens: int


class NewlineStop(StoppingCriteria):
    """Stop a sequence once a generated token contains a newline."""

    def __init__(self, tokenizer: Any, prompt_len: int) -> None:
        self._tok = tokenizer
        self._prompt_len = prompt_len
        self._memo: dict[int, bool] = {}

    def has_newline(self, token_id: int) -> bool:
        """Whether ``token_id`` decodes to text containing a newline (memoised)."""
        hit = self._memo.get(token_id)
        if hit is None:
            hit = "\n" in self._tok.decode([token_id], skip_special_tokens=True)
            self._memo[token_id] = hit
        return hit

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        done = [
            ids.shape[0] > self._prompt_len and self.has_newline(int(ids[-1]))
            for ids in input_ids
        ]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


class Generator:
    """A loaded model plus its prompt style. ``generate`` is blocking and serialised by a lock."""

    def __init__(self, spec: ModelSpec, model: PreTrainedModel, tokenizer: Any,
                 prefix_cache: bool | None = None, blas_head: bool | None = None) -> None:
        """``prefix_cache``: reuse the shared prompt prefix's KV cache (None: the spec's ``prefix_cache``,
        unless the environment sets ``MULTILLMN_PREFIX_CACHE=0``, as benchmarks of the old behaviour do).
        ``blas_head``: compute the output head on numpy's BLAS (:mod:`.head`; None: yes, unless the
        environment sets ``MULTILLMN_BLAS_HEAD=0``), with as many BLAS threads as torch has."""
        self.spec = spec
        self.model: Any = model
        self.tokenizer = tokenizer
        if blas_head is None:
            blas_head = blas_head_enabled()
        if blas_head and install_blas_head(model):
            limit_blas_threads(torch.get_num_threads())
        self._lock = ModelLock()
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self._pad_id: int = int(pad)
        self._eos_id: int | list[int] | None = eos
        if prefix_cache is None:
            prefix_cache = spec.prefix_cache and os.environ.get("MULTILLMN_PREFIX_CACHE", "1") != "0"
        self._use_prefix = prefix_cache
        self._prefix = PrefixCache(self.model, self._prompt_ids)
        # False: a batch runs through HF ``generate`` as one question does, every row until the last one
        # ends (the baseline of ``bench/head_skip.py``); True: :meth:`_decode` drops finished rows.
        self.drop_finished_rows = True

    def prefix_statistics(self) -> PrefixStatistics:
        """The shared prefix cache: whether used, its tokens, rows answered over it and without it."""
        with self._lock:
            return self._prefix.statistics(self._use_prefix)

    @classmethod
    def load(cls, spec: ModelSpec, cache_dir: Path, threads: int) -> Generator:
        """Load ``spec`` (converting a GGUF through the cache) in fp32 eval mode on CPU."""
        offline()
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        torch.set_num_threads(max(1, int(threads)))
        t0 = time.monotonic()
        directory = load_or_convert(spec, Path(cache_dir))
        tokenizer = AutoTokenizer.from_pretrained(directory)
        with LOAD_LOCK:  # one model load at a time in this process (see LOAD_LOCK)
            model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
        model.eval()  # type: ignore[no-untyped-call]
        log.info("loaded %s from %s in %.1f s (%d threads)", spec.name, directory, time.monotonic() - t0, threads)
        return cls(spec, model, tokenizer)

    def prompt(self, question: str) -> str:
        """The exact prompt text sent to the model for ``question``."""
        if self.spec.prompt_style == "chat":
            text = self.tokenizer.apply_chat_template(
                chat_messages(question), tokenize=False, add_generation_prompt=True
            )
            return str(text)
        return few_shot_prompt(question)

    def _continuation(self, answer: str) -> list[int]:
        chat = self.spec.prompt_style == "chat"
        return list(self.tokenizer(("" if chat else " ") + " ".join(answer.split()),
                                   add_special_tokens=False)["input_ids"])

    def _judge_prompt(self, question: str) -> list[int]:
        chat = self.spec.prompt_style == "chat"
        return list(self.tokenizer(self.prompt(question), add_special_tokens=not chat)["input_ids"])

    def answer_logprob(self, question: str, answer: str) -> float:
        """Mean per-token log-probability of ``answer`` as this model's reply to ``question``.

        One forward pass over the model's own answer prompt followed by the
        answer (over the cached prompt prefix when it is on); the mean (not
        the sum) so a full sentence is not penalised against a one-word answer.
        """
        return self.answer_logprobs(question, [answer])[0]

    def answer_logprobs(self, question: str, answers: Sequence[str]) -> list[float]:
        """:meth:`answer_logprob` of each answer, in one padded forward pass (equal within float rounding).

        Right padding: the prompt is the same in every row and each answer's
        tokens attend only to what precedes them, so the padding after them
        changes nothing they see. With the prefix cache on, only the prompt's
        own suffix and the answers run (position ids follow the cache's length).
        The output head runs only at the positions that predict an answer's
        tokens (``logits_to_keep``), not over the whole vocabulary at every
        position of the prompt.
        """
        prompt = self._judge_prompt(question)
        conts = [self._continuation(a) for a in answers]
        rows = [i for i, c in enumerate(conts) if c]
        out = [float("-inf")] * len(answers)
        if not rows:
            return out
        longest = max(len(conts[i]) for i in rows)
        with self._lock, torch.inference_mode():
            suffix = self._prefix.split(prompt) if self._use_prefix else None
            if suffix is not None and not self._prefix.fits(len(prompt) + longest):
                suffix = None
            head = len(prompt) - len(suffix) if suffix is not None else 0
            body = prompt[head:]
            width = len(body) + longest
            # The output head (Gemma-3's: 262k tokens) only where a row predicts one of its answer's tokens.
            keep = torch.zeros(len(rows), width, dtype=torch.bool)
            for r, i in enumerate(rows):
                keep[r, len(body) - 1:len(body) - 1 + len(conts[i])] = True
            if len(rows) == 1 and not head:  # one unpadded row: the single forward pass of before
                logits = self.model(input_ids=torch.tensor([body + conts[rows[0]]]), logits_to_keep=keep).logits
            else:
                ids = torch.tensor([body + conts[i] + [self._pad_id] * (width - len(body) - len(conts[i]))
                                    for i in rows])
                mask = torch.tensor([[1] * (head + len(body) + len(conts[i]))
                                     + [0] * (width - len(body) - len(conts[i])) for i in rows])
                extra: dict[str, Any] = {"cache": self._prefix.copy_for(len(rows)), "use_cache": True} if head else {}
                logits = self.model(input_ids=ids, attention_mask=mask, logits_to_keep=keep, **extra).logits
            if head:
                self._prefix.cached_rows += len(rows)
            else:
                self._prefix.uncached_rows += len(rows)
        logits = logits.reshape(-1, logits.shape[-1])  # the kept positions, row after row
        start = 0
        for i in rows:
            cont = conts[i]
            step = logits[start:start + len(cont)]
            start += len(cont)
            logp = torch.log_softmax(step.float(), dim=-1)[torch.arange(len(cont)), torch.tensor(cont)]
            out[i] = float(logp.mean())
        return out

    def _prompt_ids(self, question: str) -> list[int]:
        # A chat template writes its own special tokens; a plain prompt gets the usual BOS.
        enc = self.tokenizer(self.prompt(question), add_special_tokens=self.spec.prompt_style != "chat")
        return list(enc["input_ids"])

    def _stops(self, token_id: int) -> bool:
        eos = self._eos_id
        return eos is not None and (token_id in eos if isinstance(eos, list) else token_id == eos)

    def generate(self, question: str, max_new_tokens: int) -> Generation:
        """Answer ``question`` greedily with at most ``max_new_tokens`` new tokens."""
        return self.generate_batch([question], max_new_tokens)[0]

    def generate_batch(self, questions: Sequence[str], max_new_tokens: int | Sequence[int]) -> list[Generation]:
        """Answer ``questions`` together, greedily, each as :meth:`generate` would alone.

        ``max_new_tokens`` is one limit for all or one per question. Every
        :class:`Generation` carries the batch's wall time (the time this
        peer took to produce that answer). A single question is run without
        padding, exactly as before batching existed.
        """
        n = len(questions)
        if n == 0:
            return []
        limits = [max(1, int(max_new_tokens))] * n if isinstance(max_new_tokens, int) else \
            [max(1, int(m)) for m in max_new_tokens]
        if len(limits) != n:
            raise ValueError(f"{n} questions but {len(limits)} token limits")
        t0 = time.monotonic()
        prompts = [self._prompt_ids(q) for q in questions]
        with self._lock:
            groups = self._groups(prompts, limits)
            rows: list[list[int]] = [[] for _ in range(n)]
            for members, prefix in groups:
                for i, new in zip(members, self._run([prompts[i] for i in members],
                                                     [limits[i] for i in members], prefix)):
                    rows[i] = new
        seconds = time.monotonic() - t0
        return [self._generation(new, seconds) for new in rows]

    def serve(self, more: Callable[[int], Sequence[Ask]], done: Callable[[Any, Generation], None],
              max_rows: int, dropped: Callable[[], Iterable[Any]] | None = None) -> None:
        """Answer questions by continuous batching until none is running and ``more`` gives none.

        Before each decode step ``more(room)`` is asked for at most ``room`` new questions (it must not
        block); they join the running batch (:class:`~peers.llm.continuous.RunningBatch`) and
        ``done(key, generation)`` is called for each one as soon as its row ends, with the seconds
        from its joining to its end. At most ``max_rows`` rows run at once. Each answer equals
        :meth:`generate`'s. A question whose prompt cannot run over the cached prefix (the cache is
        off, or its prompt does not start with the prefix or would cross the sliding window) is
        answered at once in a batch of its own, as :meth:`generate_batch` would. Other callers of the
        model (the judge) get it between two steps. ``dropped()``, asked before each step, gives the
        keys of questions no longer wanted (decided meanwhile): their rows leave without an answer.
        """
        stops = self._stop_test()
        batch: RunningBatch | None = None
        held: list[tuple[Ask, list[int], int]] = []  # waiting until the batch's window has room
        while True:
            gone = set(dropped()) if dropped is not None else set()
            if gone:
                held = [h for h in held if h[0].key not in gone]
                if batch is not None:
                    batch.cancel(gone)
            running = len(batch.rows) if batch is not None else 0
            room = max(0, int(max_rows)) - running - len(held)
            asks = list(more(room)) if room > 0 else []
            joining, alone = list(held), []
            for ask in asks:
                limit = max(1, int(ask.max_new_tokens))
                suffix = self._prefix.split(self._prompt_ids(ask.question)) if self._use_prefix else None
                # RunningBatch.fits keeps every row strictly below the window, with a column to spare
                if suffix is None or not self._prefix.fits(len(self._prefix.ids) + len(suffix) + limit + 2):
                    alone.append(ask)
                else:
                    joining.append((ask, suffix, limit))
            if alone:
                for ask, gen in zip(alone, self.generate_batch([a.question for a in alone],
                                                               [a.max_new_tokens for a in alone]), strict=True):
                    done(ask.key, gen)
            if not joining and running == 0:
                return
            ended: list[Row] = []
            self._lock.defer_to_waiters()
            with self._lock, torch.inference_mode():
                if batch is None:
                    batch = RunningBatch(self.model, self._prefix.ids, self._prefix.copy_for, self._pad_id, stops,
                                         self._prefix.window)
                # the most rows (in arrival order) that fit the window now; the rest join once rows have left
                # (one always fits an empty batch: a row that could not is answered alone, above)
                fit = next((k for k in range(len(joining), 0, -1)
                            if batch.fits([s for _, s, _ in joining[:k]], [m for _, _, m in joining[:k]])), 0)
                joining, held = joining[:fit], joining[fit:]
                if joining:
                    self._prefix.cached_rows += len(joining)
                    ended += batch.admit([a.key for a, _, _ in joining], [s for _, s, _ in joining],
                                         [m for _, _, m in joining])
                ended += batch.step()
            for row in ended:
                done(row.key, self._generation(row.made, time.monotonic() - row.started))

    def _stop_test(self) -> Callable[[int], bool]:
        """Whether a token ends an answer: the model's EOS, or a newline for a few-shot base model."""
        newline = NewlineStop(self.tokenizer, 0) if self.spec.stop_at_newline else None
        return lambda token: self._stops(token) or (newline is not None and newline.has_newline(token))

    def _generation(self, new: Sequence[int], seconds: float) -> Generation:
        raw = self.tokenizer.decode(list(new), skip_special_tokens=True)
        return Generation(clean_answer(raw, self.spec.stop_at_newline), len(new), seconds, self.spec.name)

    def _groups(self, prompts: Sequence[Sequence[int]], limits: Sequence[int]) -> list[tuple[list[int], int]]:
        """The batch's rows that run over the cached prefix (its length) and those that do not (0)."""
        if not self._use_prefix:
            self._prefix.uncached_rows += len(prompts)
            return [(list(range(len(prompts))), 0)]
        plen = len(self._prefix.ids)
        cached = [i for i, p in enumerate(prompts) if self._prefix.split(p) is not None]
        if cached and not self._prefix.fits(max(len(prompts[i]) for i in cached) + max(limits[i] for i in cached)):
            cached = []  # the padding between prefix and suffix would meet the sliding window
        rest = [i for i in range(len(prompts)) if i not in set(cached)]
        self._prefix.cached_rows += len(cached)
        self._prefix.uncached_rows += len(rest)
        return [(g, p) for g, p in ((cached, plen), (rest, 0)) if g]

    def _run(self, prompts: Sequence[Sequence[int]], limits: Sequence[int], prefix: int) -> list[list[int]]:
        """One batched greedy decode; each row's new tokens up to its own stop. Called under the lock.

        Without a prefix, rows are left-padded: ``[pad.. prompt]``. With the cached prefix of
        ``prefix`` tokens (which every prompt starts with), the padding sits between the prefix
        and each row's own suffix, ``[prefix pad.. suffix]``, masked out; position ids derived
        from the mask (``cumsum - 1``) give each suffix token the position it has alone, and only
        the columns after the prefix are run through the model. One question runs through HF
        ``generate`` (the reference the batches are checked against); a batch runs
        :meth:`_decode`, which drops each row as it finishes.
        """
        width = max(len(p) for p in prompts)
        head = list(prompts[0][:prefix])
        # Every row's last prompt token is in the last column, so new tokens line up.
        input_ids = torch.tensor([head + [self._pad_id] * (width - len(p)) + list(p[prefix:]) for p in prompts],
                                 dtype=torch.long)
        attention_mask = torch.tensor([[1] * prefix + [0] * (width - len(p)) + [1] * (len(p) - prefix)
                                       for p in prompts], dtype=torch.long)
        newline = NewlineStop(self.tokenizer, width) if self.spec.stop_at_newline else None  # for HF generate
        stops = self._stop_test()

        cache = self._prefix.copy_for(len(prompts)) if prefix else None
        with torch.inference_mode():
            if len(prompts) > 1 and self.drop_finished_rows:
                return self._decode(input_ids, attention_mask, cache, prefix, limits, stops)
            config = GenerationConfig(  # type: ignore[no-untyped-call]
                max_new_tokens=max(limits),
                do_sample=False,
                pad_token_id=self._pad_id,
                eos_token_id=self._eos_id,
            )
            stopping = StoppingCriteriaList([newline] if newline is not None else [])
            extra: dict[str, Any] = {"cache": cache} if cache is not None else {}
            out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config,
                                      stopping_criteria=stopping, **extra)
        rows = []
        for row, limit in zip(out, limits):
            new = [int(t) for t in row[width:width + limit]]
            # A finished row is padded to the batch's length: keep it up to its own stop.
            for i, token in enumerate(new):
                if stops(token):
                    new = new[:i + 1]
                    break
            rows.append(new)
        return rows

    def _decode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: DynamicCache | None,
                prefix: int, limits: Sequence[int], stops: Callable[[int], bool]) -> list[list[int]]:
        """Greedy decode of a left-padded batch that drops each row once it finishes (ADR 0019, addendum 4).

        The model is called as HF ``generate`` calls it: the prefill over the columns after the cached
        prefix with the position ids ``cumsum(mask) - 1`` (0 on padding), the mask left out if it has no
        padding, only the last position through the output head; then one token per row and step, the
        mask one column longer and each row's position one further. A row that made a stop token or its
        own limit leaves the batch: its row of the input, the mask, the positions and every layer of the
        KV cache (``DynamicCache.batch_select_indices``, which also cuts Gemma-3's sliding-window layers)
        is removed, so a step costs only the rows still running. Each row's tokens are those it makes
        alone (``tests/test_generation_batch.py``).
        """
        positions = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
        mask: torch.Tensor | None = None if bool((attention_mask == 1).all()) else attention_mask
        if cache is None:
            cache = DynamicCache(config=self.model.config)
        logits = self.model(input_ids=input_ids[:, prefix:], attention_mask=mask, position_ids=positions[:, prefix:],
                            cache=cache, use_cache=True, logits_to_keep=1).logits
        last = positions[:, -1:]
        running = list(range(input_ids.shape[0]))  # the batch's rows still decoding, in batch order
        made: list[list[int]] = [[] for _ in running]
        while True:
            tokens = logits[:, -1].float().argmax(-1)
            keep = []
            for j, row in enumerate(running):
                token = int(tokens[j])
                made[row].append(token)
                if not stops(token) and len(made[row]) < limits[row]:
                    keep.append(j)
            if not keep:
                return made
            if len(keep) < len(running):
                index = torch.tensor(keep, dtype=torch.long)
                cache.batch_select_indices(index)
                tokens, last = tokens[index], last[index]
                mask = mask[index] if mask is not None else None
                running = [running[j] for j in keep]
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
            last = last + 1
            logits = self.model(input_ids=tokens[:, None], attention_mask=mask, position_ids=last, cache=cache,
                                use_cache=True, logits_to_keep=1).logits
