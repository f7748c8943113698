"""The shared prompt prefix's KV cache (ADR 0019, addendum 2): computed once per model, copied per batch.

Every prompt of a model starts with the same tokens (the few-shot examples of a base model, the
system turn and example turns of a chat model). :class:`PrefixCache` finds them as the longest
common token prefix of a few probe prompts, runs them through the model once (lazily, on first
use) and hands out a fresh copy of their KV cache repeated to a batch's rows, so a batch prefills
only each question's own tokens. The shared cache is never mutated: ``generate`` appends to the
copy.

A prompt uses the cache only if its own token ids start with the prefix's ids (:meth:`split`), so
the model sees exactly the token ids it would see without the cache. A model with a sliding
window uses it only while the whole batch (prefix, padding, suffix, new tokens) fits in the
window: the padding of a batch then sits between prefix and suffix, which a window measured in
cache columns would otherwise count (:meth:`fits`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

__all__ = ["PrefixCache", "PrefixStatistics", "common_prefix"]

# Probe questions whose prompts share only the template: different first characters and lengths.
PROBES: tuple[str, ...] = ("A?", "Zebra crossing, why", "7 + 7", "\"quoted\" question", "why is the sky blue?")


def common_prefix(rows: Sequence[Sequence[int]]) -> list[int]:
    """The longest list of ids that every row starts with."""
    if not rows:
        return []
    first = list(rows[0])
    n = len(first)
    for row in rows[1:]:
        n = min(n, len(row))
        for i in range(n):
            if row[i] != first[i]:
                n = i
                break
    return first[:n]


@dataclass(frozen=True)
class PrefixStatistics:
    """What the prefix cache did: its length, how long computing it took, rows with and without it."""

    enabled: bool
    tokens: int
    computed: bool
    compute_s: float
    cached_rows: int
    uncached_rows: int


class PrefixCache:
    """One model's shared prompt prefix and its KV cache (batch of one), computed on first use.

    Not thread-safe on its own: the :class:`~peers.llm.generator.Generator` calls it under its lock.
    """

    def __init__(self, model: Any, prompt_ids: Callable[[str], list[int]], min_tokens: int = 8) -> None:
        self._model = model
        self._prompt_ids = prompt_ids
        self._min_tokens = min_tokens
        self._ids: list[int] | None = None
        self._cache: DynamicCache | None = None
        self._compute_s = 0.0
        self.cached_rows = 0
        self.uncached_rows = 0
        window = getattr(model.config, "sliding_window", None)
        self._window: int | None = int(window) if window else None

    @property
    def ids(self) -> list[int]:
        """The prefix's token ids (found from the probe prompts on first use; empty: no usable prefix)."""
        if self._ids is None:
            ids = common_prefix([self._prompt_ids(q) for q in PROBES])
            self._ids = ids if len(ids) >= self._min_tokens else []
        return self._ids

    def split(self, prompt: Sequence[int]) -> list[int] | None:
        """The ids after the prefix if ``prompt`` starts with it (and has at least one more), else None."""
        ids = self.ids
        if not ids or len(prompt) <= len(ids) or list(prompt[:len(ids)]) != ids:
            return None
        return list(prompt[len(ids):])

    @property
    def window(self) -> int | None:
        """The model's sliding window in tokens (None: no sliding layers)."""
        return self._window

    def fits(self, columns: int) -> bool:
        """Whether a batch of ``columns`` in all (prefix, padding, suffix, new tokens) stays within the
        model's sliding window, so padding between prefix and suffix cannot move a key out of it."""
        return self._window is None or columns <= self._window

    def copy_for(self, rows: int) -> DynamicCache:
        """A new cache holding the prefix for ``rows`` rows (the shared one is computed once, never handed out)."""
        if self._cache is None:
            t0 = time.perf_counter()
            cache = DynamicCache(config=self._model.config)
            with torch.inference_mode():
                self._model(input_ids=torch.tensor([self.ids], dtype=torch.long), cache=cache, use_cache=True,
                            logits_to_keep=1)
            self._cache = cache
            self._compute_s = time.perf_counter() - t0
        out = copy.deepcopy(self._cache)
        if rows > 1:
            out.batch_repeat_interleave(rows)
        return out

    def statistics(self, enabled: bool) -> PrefixStatistics:
        return PrefixStatistics(enabled, len(self._ids or []), self._cache is not None, round(self._compute_s, 4),
                                self.cached_rows, self.uncached_rows)
