"""Blocking text generation with a locally hosted causal LM (CPU, fp32, greedy)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    StoppingCriteria,
    StoppingCriteriaList,
)

from .cache import load_or_convert, offline
from .models import ModelSpec
from .prompting import chat_messages, clean_answer, few_shot_prompt

__all__ = ["Generation", "Generator", "NewlineStop"]

log = logging.getLogger("multillmn.llm")


@dataclass(frozen=True)
class Generation:
    """One answer: stripped text, tokens generated, wall-clock seconds, model name."""

    text: str
    new_tokens: int
    seconds: float
    model: str


class NewlineStop(StoppingCriteria):
    """Stop a sequence once a generated token contains a newline."""

    def __init__(self, tokenizer: Any, prompt_len: int) -> None:
        self._tok = tokenizer
        self._prompt_len = prompt_len
        self._memo: dict[int, bool] = {}

    def _has_newline(self, token_id: int) -> bool:
        hit = self._memo.get(token_id)
        if hit is None:
            hit = "\n" in self._tok.decode([token_id], skip_special_tokens=True)
            self._memo[token_id] = hit
        return hit

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        done = [
            ids.shape[0] > self._prompt_len and self._has_newline(int(ids[-1]))
            for ids in input_ids
        ]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


class Generator:
    """A loaded model plus its prompt style. ``generate`` is blocking and serialised by a lock."""

    def __init__(self, spec: ModelSpec, model: PreTrainedModel, tokenizer: Any) -> None:
        self.spec = spec
        self.model: Any = model
        self.tokenizer = tokenizer
        self._lock = threading.Lock()
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self._pad_id: int = int(pad)
        self._eos_id: int | list[int] | None = eos

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

    def answer_logprob(self, question: str, answer: str) -> float:
        """Mean per-token log-probability of ``answer`` as this model's reply to ``question``.

        One forward pass over the model's own answer prompt followed by the
        answer; the mean (not the sum) so a full sentence is not penalised
        against a one-word answer.
        """
        chat = self.spec.prompt_style == "chat"
        prompt = self.tokenizer(self.prompt(question), add_special_tokens=not chat)["input_ids"]
        cont = self.tokenizer(("" if chat else " ") + " ".join(answer.split()), add_special_tokens=False)["input_ids"]
        if not cont:
            return float("-inf")
        ids = torch.tensor([list(prompt) + list(cont)])
        with self._lock, torch.inference_mode():
            logits = self.model(input_ids=ids).logits[0, len(prompt) - 1:-1]
        logp = torch.log_softmax(logits.float(), dim=-1)[torch.arange(len(cont)), torch.tensor(cont)]
        return float(logp.mean())

    def generate(self, question: str, max_new_tokens: int) -> Generation:
        """Answer ``question`` greedily with at most ``max_new_tokens`` new tokens."""
        t0 = time.monotonic()
        prompt = self.prompt(question)
        # A chat template writes its own special tokens; a plain prompt gets the usual BOS.
        enc = self.tokenizer(
            prompt, return_tensors="pt", add_special_tokens=self.spec.prompt_style != "chat"
        )
        input_ids = enc["input_ids"]
        prompt_len = int(input_ids.shape[1])
        config = GenerationConfig(  # type: ignore[no-untyped-call]
            max_new_tokens=max(1, int(max_new_tokens)),
            do_sample=False,
            pad_token_id=self._pad_id,
            eos_token_id=self._eos_id,
        )
        stopping = StoppingCriteriaList()
        if self.spec.stop_at_newline:
            stopping.append(NewlineStop(self.tokenizer, prompt_len))
        with self._lock, torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=enc.get("attention_mask", torch.ones_like(input_ids)),
                generation_config=config,
                stopping_criteria=stopping,
            )
        new = out[0, prompt_len:]
        raw = self.tokenizer.decode(new, skip_special_tokens=True)
        text = clean_answer(raw, self.spec.stop_at_newline)
        return Generation(text, int(new.shape[0]), time.monotonic() - t0, self.spec.name)
