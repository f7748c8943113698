"""Continuous batching (ADR 0019, addendum 5): questions join a running batch, answers leave as they end.

A :class:`RunningBatch` holds the rows a model is decoding now, all over the shared prompt prefix's
KV cache (:mod:`.prefix`). Its layout is the batch layout of :meth:`Generator._run`: every row is
``[prefix pad.. suffix, new tokens]``, its last token in the last column, padding masked out and
each row's position ids its own (``cumsum(mask) - 1``), so a row sees the token ids and positions it
sees alone. :meth:`RunningBatch.admit` prefills new rows' suffixes over a copy of the prefix and
joins them to the running rows: whichever side has fewer columns gets masked padding columns
inserted right after the prefix, so the last columns line up. :meth:`RunningBatch.step` runs one
greedy decode step for every running row and drops the rows that ended (their row of every cache
layer, the mask, the positions) and then the columns no running row attends to any more, so the
batch never holds more columns than its longest running row needs.

Only the arithmetic's shapes differ from answering alone (as for any batch); answers are checked
equal to the unbatched reference by ``tests/test_continuous_batching.py`` (tiny models) and the
bundled models' identity test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

__all__ = ["ModelLock", "Row", "RunningBatch"]


class ModelLock:
    """The model's lock, with a hand-over: a long serving loop lets waiting callers in between steps.

    ``with lock:`` as usual. A plain lock is not fair: a loop that releases and retakes it at once
    would keep a judge's pass waiting for as long as questions keep coming. The loop calls
    :meth:`defer_to_waiters` (not holding the lock) before each step, which waits until every thread
    that was waiting for the lock has taken it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = threading.Lock()
        self._waiting = 0

    def __enter__(self) -> ModelLock:
        with self._count:
            self._waiting += 1
        try:
            self._lock.acquire()
        finally:
            with self._count:
                self._waiting -= 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def defer_to_waiters(self) -> None:
        """Return once no other thread is waiting for the lock (call it without holding the lock)."""
        while self._waiting:
            time.sleep(0.001)


@dataclass
class Row:
    """One question in a running batch: its key (the caller's), token limit and tokens made so far."""

    key: Any
    limit: int
    started: float
    made: list[int] = field(default_factory=list)


def _layers(cache: DynamicCache) -> list[Any]:
    layers: list[Any] = list(cache.layers)
    return [layer for layer in layers if getattr(layer, "is_initialized", False) and layer.keys.numel()]


def _set_columns(layer: Any, keys: torch.Tensor, values: torch.Tensor) -> None:
    layer.keys, layer.values = keys, values
    if getattr(layer, "is_sliding", False):  # a sliding layer counts its columns itself (below its window)
        layer.cumulative_length = keys.shape[-2]


def insert_columns(cache: DynamicCache, at: int, count: int) -> None:
    """Insert ``count`` zero key/value columns before column ``at`` in every layer (masked padding)."""
    if count <= 0:
        return
    for layer in _layers(cache):
        def padded(t: torch.Tensor) -> torch.Tensor:
            zeros = t.new_zeros((*t.shape[:2], count, t.shape[-1]))
            return torch.cat([t[:, :, :at], zeros, t[:, :, at:]], dim=-2)
        _set_columns(layer, padded(layer.keys), padded(layer.values))


def keep_columns(cache: DynamicCache, index: torch.Tensor) -> None:
    """Keep only the key/value columns ``index`` (ascending) in every layer."""
    for layer in _layers(cache):
        _set_columns(layer, layer.keys.index_select(-2, index), layer.values.index_select(-2, index))


def join_rows(cache: DynamicCache, other: DynamicCache) -> None:
    """Append ``other``'s rows to ``cache``'s (both with the same columns in every layer)."""
    mine: list[Any] = list(cache.layers)
    theirs: list[Any] = list(other.layers)
    for layer, more in zip(mine, theirs, strict=True):
        if not getattr(more, "is_initialized", False) or not more.keys.numel():
            continue
        _set_columns(layer, torch.cat([layer.keys, more.keys]), torch.cat([layer.values, more.values]))


class RunningBatch:
    """The rows a model decodes together now; see the module docstring.

    ``model`` is called as :meth:`Generator._decode` calls it; ``prefix_cache(rows)`` gives a fresh
    copy of the prefix's cache for ``rows`` rows; ``stops(token)`` says whether a token ends a row.
    """

    def __init__(self, model: Any, prefix: Sequence[int], prefix_cache: Callable[[int], DynamicCache],
                 pad_id: int, stops: Callable[[int], bool], window: int | None) -> None:
        self._model = model
        self._prefix = list(prefix)
        self._prefix_cache = prefix_cache
        self._pad = pad_id
        self._stops = stops
        self._window = window
        self.rows: list[Row] = []
        self._cache: DynamicCache | None = None
        self._mask = torch.zeros((0, 0), dtype=torch.long)
        self._last = torch.zeros((0, 1), dtype=torch.long)  # each row's position of its last token
        self._tokens = torch.zeros(0, dtype=torch.long)  # each row's next input token (made, not yet run)

    @property
    def columns(self) -> int:
        return int(self._mask.shape[1])

    def fits(self, suffixes: Sequence[Sequence[int]], limits: Sequence[int]) -> bool:
        """Whether rows of these suffixes and token limits can join without the batch ever reaching the
        sliding window (a window counts cache columns, padding included: see ``PrefixCache.fits``)."""
        if self._window is None:
            return True
        width = len(self._prefix) + max(len(s) for s in suffixes)
        columns = max(width, self.columns)
        ahead = max([*(limit for limit in limits), *(r.limit - len(r.made) for r in self.rows)])
        return columns + ahead < self._window - 1

    def admit(self, keys: Sequence[Any], suffixes: Sequence[Sequence[int]], limits: Sequence[int]) -> list[Row]:
        """Prefill new rows (each prompt's ids after the prefix) and join them; returns those that ended
        with their first token (they never join)."""
        started = time.monotonic()
        plen, width = len(self._prefix), max(len(s) for s in suffixes)
        ids = torch.tensor([[self._pad] * (width - len(s)) + list(s) for s in suffixes], dtype=torch.long)
        mask = torch.tensor([[1] * plen + [0] * (width - len(s)) + [1] * len(s) for s in suffixes], dtype=torch.long)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        cache = self._prefix_cache(len(suffixes))
        logits = self._model(input_ids=ids, attention_mask=None if bool((mask == 1).all()) else mask,
                             position_ids=positions[:, plen:], cache=cache, use_cache=True, logits_to_keep=1).logits
        tokens = logits[:, -1].float().argmax(-1)
        rows = [Row(k, limit, started, [int(t)]) for k, limit, t in zip(keys, limits, tokens, strict=True)]
        going = [j for j, r in enumerate(rows) if not self._ended(r)]
        ended = [r for r in rows if self._ended(r)]
        if not going:
            return ended
        if len(going) < len(rows):
            index = torch.tensor(going, dtype=torch.long)
            cache.batch_select_indices(index)
            mask, positions, tokens = mask[index], positions[index], tokens[index]
        if self._cache is None:
            self._cache, self._mask = cache, mask
            self._last, self._tokens = positions[:, -1:], tokens
        else:
            gap = self.columns - mask.shape[1]  # pad whichever side is shorter, after the prefix
            if gap > 0:
                insert_columns(cache, plen, gap)
                mask = torch.cat([mask[:, :plen], mask.new_zeros((mask.shape[0], gap)), mask[:, plen:]], dim=-1)
            elif gap < 0:
                insert_columns(self._cache, plen, -gap)
                self._mask = torch.cat([self._mask[:, :plen], self._mask.new_zeros((self._mask.shape[0], -gap)),
                                        self._mask[:, plen:]], dim=-1)
            join_rows(self._cache, cache)
            self._mask = torch.cat([self._mask, mask])
            self._last = torch.cat([self._last, positions[:, -1:]])
            self._tokens = torch.cat([self._tokens, tokens])
        self.rows += [rows[j] for j in going]
        return ended

    def step(self) -> list[Row]:
        """One greedy decode step of every running row; returns the rows that ended (and left)."""
        if not self.rows or self._cache is None:
            return []
        mask = torch.cat([self._mask, self._mask.new_ones((self._mask.shape[0], 1))], dim=-1)
        self._mask, self._last = mask, self._last + 1
        logits = self._model(input_ids=self._tokens[:, None], attention_mask=None if bool((mask == 1).all()) else mask,
                             position_ids=self._last, cache=self._cache, use_cache=True, logits_to_keep=1).logits
        self._tokens = logits[:, -1].float().argmax(-1)
        for row, token in zip(self.rows, self._tokens.tolist(), strict=True):
            row.made.append(int(token))
        going = [j for j, r in enumerate(self.rows) if not self._ended(r)]
        if len(going) == len(self.rows):
            return []
        ended = [r for r in self.rows if self._ended(r)]
        self._drop(going)
        return ended

    def cancel(self, keys: set[Any]) -> None:
        """Drop the running rows of these keys (questions no longer wanted), without an answer."""
        going = [j for j, r in enumerate(self.rows) if r.key not in keys]
        if len(going) < len(self.rows):
            self._drop(going)

    def _ended(self, row: Row) -> bool:
        return self._stops(row.made[-1]) or len(row.made) >= row.limit

    def _drop(self, going: list[int]) -> None:
        """Keep the rows ``going``, then only the columns some kept row attends to (the prefix always)."""
        assert self._cache is not None
        self.rows = [self.rows[j] for j in going]
        if not going:
            self._cache = None
            self._mask = torch.zeros((0, 0), dtype=torch.long)
            self._last = torch.zeros((0, 1), dtype=torch.long)
            self._tokens = torch.zeros(0, dtype=torch.long)
            return
        index = torch.tensor(going, dtype=torch.long)
        self._cache.batch_select_indices(index)
        self._mask, self._last, self._tokens = self._mask[index], self._last[index], self._tokens[index]
        used = self._mask.any(0)
        used[:len(self._prefix)] = True
        if not bool(used.all()):
            columns = used.nonzero().flatten()
            keep_columns(self._cache, columns)
            self._mask = self._mask[:, columns]
