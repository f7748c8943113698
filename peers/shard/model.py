"""Run one causal LM split by contiguous layer ranges (Llama / SmolLM2 and Gemma3).

A :class:`ShardRunner` holds layers ``[start, stop)`` of a model, plus the
embedding if it is the first shard and the final norm + LM head if it is the
last, and its own KV cache. Its :meth:`~ShardRunner.forward` reproduces, for
its layers only, what ``LlamaModel.forward`` / ``Gemma3TextModel.forward``
(transformers 5) do per layer: position ids from the absolute position of the
first token, rotary embeddings (one table per layer type for Gemma3: local
10k-theta for sliding layers, 1M-theta for global ones), the causal mask or
the sliding-window mask per layer type sized from this shard's own cache, and
Gemma3's embedding scale (inside its scaled embedding module). The cache is a
``DynamicCache(config=...)`` over all layers that keeps the original layer
indices, so sliding layers get ``DynamicSlidingWindowLayer``; only this
shard's entries ever fill.

:class:`ShardedModel` chains local runners for greedy generation (the
reference for the networked driver in :mod:`peers.shard.worker`).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, DynamicCache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from peers.llm.head import blas_head_enabled, blas_head_for

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "ShardError",
    "ShardState",
    "ShardRunner",
    "ShardedModel",
    "load_full_model",
    "split_evenly",
]

log = logging.getLogger("multillmn.shard")

SUPPORTED_MODEL_TYPES = ("llama", "gemma3_text")
_FULL = "full_attention"
_SLIDING = "sliding_attention"


class ShardError(ValueError):
    """A shard was asked for something inconsistent (bad range, wrong input, position out of sync)."""


@dataclass
class ShardState:
    """One sequence's (or one left-padded batch's) KV cache for one shard, and how many columns it holds.

    ``mask`` is the batch's 2D attention mask over every cached column (``None``: no padding, every
    row at positions ``0..seen-1``); ``next_pos`` the position of each row's next token then.
    """

    cache: DynamicCache
    seen: int = 0
    mask: torch.Tensor | None = None
    next_pos: torch.Tensor | None = None


def load_full_model(model_dir: Path | str, **config_overrides: Any) -> Any:
    """Load a Hugging Face causal LM in fp32 eval mode on CPU, offline and without progress bars.

    ``config_overrides`` change config values (e.g. ``sliding_window=8`` in tests). One load at a time
    per process (``from_pretrained`` is not thread-safe, see :data:`peers.llm.cache.LOAD_LOCK`).
    """
    from transformers.utils import logging as hf_logging

    from peers.llm.cache import LOAD_LOCK, offline

    offline()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    with LOAD_LOCK:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, **config_overrides)
    model.eval()  # type: ignore[no-untyped-call]
    return model


def split_evenly(n_layers: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ranges covering ``[0, n_layers)``, sizes differing by at most one."""
    if not 1 <= parts <= n_layers:
        raise ShardError(f"cannot split {n_layers} layers into {parts} parts")
    bounds = [0]
    for k in range(parts):
        bounds.append(bounds[-1] + n_layers // parts + (1 if k < n_layers % parts else 0))
    return list(zip(bounds, bounds[1:]))


class ShardRunner:
    """Layers ``[start, stop)`` of one model with their own KV cache.

    ``forward(x, position)``: ``x`` is token ids ``(batch, q)`` for the first
    shard, else hidden states ``(batch, q, hidden)``; ``position`` is the
    absolute position of ``x``'s first token and must equal the number of
    tokens this shard has already cached. Returns hidden states, or logits for
    the last shard.

    A left-padded batch (ADR 0019) gives its ``mask`` ``(batch, q)`` with the
    prefill (``position`` 0): each row's position ids are then
    ``cumsum(mask) - 1`` (0 on padding) and continue by one per decoded
    column, and the padded keys are masked out, as ``generate`` does with
    an attention mask, so each row sees what it would see alone.
    """

    def __init__(
        self,
        model_dir: Path | str,
        layer_range: tuple[int, int],
        is_first: bool | None = None,
        is_last: bool | None = None,
    ) -> None:
        model = load_full_model(model_dir)
        self._bind(model, layer_range, is_first, is_last)
        del model  # drop every module this shard does not hold
        gc.collect()

    @classmethod
    def from_model(
        cls, model: Any, layer_range: tuple[int, int], is_first: bool | None = None, is_last: bool | None = None
    ) -> ShardRunner:
        """A runner sharing (not copying) the modules of an already loaded model."""
        runner = cls.__new__(cls)
        runner._bind(model, layer_range, is_first, is_last)
        return runner

    def _bind(self, model: Any, layer_range: tuple[int, int], is_first: bool | None, is_last: bool | None) -> None:
        config = model.config
        if config.model_type not in SUPPORTED_MODEL_TYPES:
            raise ShardError(f"model type {config.model_type!r} is not supported; expected {SUPPORTED_MODEL_TYPES}")
        if getattr(config, "use_bidirectional_attention", False):
            raise ShardError("bidirectional Gemma3 attention is not supported")
        n = int(config.num_hidden_layers)
        start, stop = int(layer_range[0]), int(layer_range[1])
        if not 0 <= start < stop <= n:
            raise ShardError(f"layer range [{start}:{stop}) is not inside [0:{n})")
        is_first = start == 0 if is_first is None else is_first
        is_last = stop == n if is_last is None else is_last
        if is_first != (start == 0) or is_last != (stop == n):
            raise ShardError(f"shard [{start}:{stop}) of {n} layers: is_first={is_first}, is_last={is_last} disagree")
        inner = model.model
        self.config = config
        self.model_type: str = config.model_type
        self.n_layers = n
        self.start, self.stop = start, stop
        self.is_first, self.is_last = is_first, is_last
        self.hidden_size = int(config.hidden_size)
        self.vocab_size = int(config.vocab_size)
        self.embed: nn.Module | None = inner.embed_tokens if is_first else None
        self.layers: list[nn.Module] = list(inner.layers[start:stop])
        self.norm: nn.Module | None = inner.norm if is_last else None
        # The head on numpy's BLAS, as an unsharded peer computes it (the same logits, so the same answers).
        self.lm_head: nn.Module | None = (blas_head_for(model.lm_head) if blas_head_enabled() else model.lm_head) \
            if is_last else None
        self.rotary_emb: nn.Module = inner.rotary_emb
        types = getattr(config, "layer_types", None) or [_FULL] * n
        self.layer_types: list[str] = [str(t) for t in types[start:stop]]
        unknown = set(self.layer_types) - {_FULL, _SLIDING}
        if unknown:
            raise ShardError(f"unsupported layer types {sorted(unknown)}")
        # The cache layer that sizes each mask: the shard's first layer of that type
        # (as the full model uses its first full / sliding layer: all have seen the same tokens).
        self._mask_layer = {t: start + self.layer_types.index(t) for t in dict.fromkeys(self.layer_types)}
        self.softcap: float | None = getattr(config, "final_logit_softcapping", None)
        self.reset()

    @property
    def layer_range(self) -> tuple[int, int]:
        return (self.start, self.stop)

    def new_state(self) -> ShardState:
        """An empty KV cache for this shard (one per concurrent sequence)."""
        return ShardState(DynamicCache(config=self.config))

    def reset(self) -> None:
        """Forget the default sequence."""
        self.state = self.new_state()

    @property
    def seen(self) -> int:
        """Tokens cached in the default sequence."""
        return self.state.seen

    def parameter_bytes(self) -> int:
        """Bytes of the distinct parameters this shard holds."""
        mods: list[nn.Module] = [*self.layers]
        for m in (self.embed, self.norm, self.lm_head):
            if m is not None:
                mods.append(m)
        seen: dict[int, int] = {}
        for mod in mods:
            for p in mod.parameters():
                seen[p.data_ptr()] = p.numel() * p.element_size()
        return sum(seen.values())

    @torch.inference_mode()
    def forward(
        self, x: torch.Tensor, position: int | None = None, *, last_only: bool = False, state: ShardState | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run this shard on ``x`` at absolute ``position`` (default: tokens seen) in ``state`` (default: own).

        ``mask``: the left-padding attention mask of a batch's prefill (see the class docstring).
        """
        st = self.state if state is None else state
        position = st.seen if position is None else int(position)
        if position != st.seen:
            raise ShardError(f"shard [{self.start}:{self.stop}) holds {st.seen} tokens, got position {position}")
        if x.dim() < 2 or x.shape[0] < 1:
            raise ShardError(f"input must be (batch, q, ...) with batch >= 1, got {tuple(x.shape)}")
        if mask is not None:
            if position != 0:
                raise ShardError("an attention mask comes with a prefill (position 0)")
            if mask.dtype != torch.int64 or tuple(mask.shape) != tuple(x.shape[:2]) or bool(
                    ((mask != 0) & (mask != 1)).any()):
                raise ShardError(f"mask must be 0/1 int64 of shape {tuple(x.shape[:2])}, got {tuple(mask.shape)}")
        elif st.mask is not None and x.shape[0] != st.mask.shape[0]:
            raise ShardError(f"the session holds a batch of {st.mask.shape[0]} rows, got {x.shape[0]}")
        if self.embed is not None:
            if x.dtype not in (torch.int64, torch.int32) or x.dim() != 2:
                raise ShardError(f"the first shard takes token ids (batch, q), got {tuple(x.shape)} {x.dtype}")
            if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.vocab_size):
                raise ShardError(f"token ids must lie in [0, {self.vocab_size})")
            hidden = self.embed(x.long())
        else:
            if x.dtype != torch.float32 or x.dim() != 3 or x.shape[-1] != self.hidden_size:
                raise ShardError(
                    f"shard [{self.start}:{self.stop}) takes fp32 hidden states (batch, q, {self.hidden_size}), "
                    f"got {tuple(x.shape)} {x.dtype}"
                )
            hidden = x
        q = int(hidden.shape[1])
        if q < 1:
            raise ShardError("empty input")
        if mask is not None:  # a padded batch starts: positions as generate derives them from the mask
            st.mask = mask
            position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        elif st.mask is not None:  # it continues: every row one position further per column
            st.mask = torch.cat([st.mask, st.mask.new_ones((st.mask.shape[0], q))], dim=-1)
            assert st.next_pos is not None
            position_ids = st.next_pos.unsqueeze(1) + torch.arange(q, device=hidden.device)
        else:
            position_ids = (torch.arange(q, device=hidden.device) + position).unsqueeze(0)
        if st.mask is not None:
            st.next_pos = position_ids[:, -1] + 1
        masks: dict[str, Any] = {}
        for t, idx in self._mask_layer.items():
            make: Callable[..., Any] = create_causal_mask if t == _FULL else create_sliding_window_causal_mask
            masks[t] = make(
                config=self.config, inputs_embeds=hidden, attention_mask=st.mask,
                cache=st.cache, position_ids=position_ids, layer_idx=idx,
            )
        if self.model_type == "gemma3_text":
            rope = {t: self.rotary_emb(hidden, position_ids, t) for t in self._mask_layer}
            for layer, t in zip(self.layers, self.layer_types):
                hidden = layer(
                    hidden, attention_mask=masks[t], position_embeddings=rope[t],
                    position_ids=position_ids, cache=st.cache,
                )
        else:
            rope_all = self.rotary_emb(hidden, position_ids=position_ids)
            for layer in self.layers:
                hidden = layer(
                    hidden, attention_mask=masks[_FULL], position_embeddings=rope_all,
                    position_ids=position_ids, cache=st.cache, use_cache=True,
                )
        st.seen += q
        if self.norm is None or self.lm_head is None:
            out: torch.Tensor = hidden
            return out
        hidden = self.norm(hidden)
        if last_only:
            hidden = hidden[:, -1:, :]
        logits: torch.Tensor = self.lm_head(hidden)
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    __call__ = forward

    def __repr__(self) -> str:
        return f"ShardRunner({self.model_type}, [{self.start}:{self.stop}), first={self.is_first}, last={self.is_last})"


class ShardedModel:
    """Local runners chained in order: the in-process reference for a split model."""

    def __init__(self, runners: Sequence[ShardRunner]) -> None:
        if not runners:
            raise ShardError("a sharded model needs at least one shard")
        pos = 0
        for r in runners:
            if r.start != pos:
                raise ShardError(f"shards must tile the layers in order; {r} starts at layer {r.start}, expected {pos}")
            pos = r.stop
        if pos != runners[0].n_layers:
            raise ShardError(f"shards end at layer {pos}; the model has {runners[0].n_layers}")
        self.runners = list(runners)

    @classmethod
    def from_model(cls, model: Any, ranges: Sequence[tuple[int, int]]) -> ShardedModel:
        return cls([ShardRunner.from_model(model, r) for r in ranges])

    @classmethod
    def from_dir(cls, model_dir: Path | str, ranges: Sequence[tuple[int, int]]) -> ShardedModel:
        return cls([ShardRunner(model_dir, r) for r in ranges])

    def reset(self) -> None:
        for r in self.runners:
            r.reset()

    @property
    def seen(self) -> int:
        return self.runners[0].seen

    def forward(self, input_ids: torch.Tensor, *, last_only: bool = False) -> torch.Tensor:
        """Logits for ``input_ids`` appended to the cached sequence."""
        x: torch.Tensor = input_ids
        pos = self.seen
        for r in self.runners:
            x = r.forward(x, pos, last_only=last_only)
        return x

    __call__ = forward

    def generate(
        self,
        input_ids: Sequence[int] | torch.Tensor,
        max_new_tokens: int,
        eos_token_id: int | Sequence[int] | None = None,
        stop: Callable[[int], bool] | None = None,
    ) -> list[int]:
        """Greedy decoding from a fresh cache; returns the new tokens (ending with EOS if one was produced)."""
        ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(1, -1)
        eos = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())
        self.reset()
        out: list[int] = []
        x = ids
        for _ in range(max_new_tokens):
            logits = self.forward(x, last_only=True)
            token = int(logits[0, -1].argmax())
            out.append(token)
            if token in eos or (stop is not None and stop(token)):
                break
            x = torch.tensor([[token]], dtype=torch.long)
        return out
