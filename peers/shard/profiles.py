"""Cost profiles of real models for the planner: shapes, parameter counts, a fitted cost model. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .planner import ModelProfile

__all__ = ["ModelShape", "KNOWN_SHAPES", "profile_from_shape"]


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a decoder-only transformer that drive its cost."""

    name: str
    n_layers: int
    hidden: int
    intermediate: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab: int
    tied: bool = True
    norms_per_layer: int = 2

    def layer_params(self) -> int:
        attn = self.hidden * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads)
        return attn + 3 * self.hidden * self.intermediate + self.norms_per_layer * self.hidden

    def embed_params(self) -> int:
        return self.vocab * self.hidden

    @classmethod
    def from_hf_config(cls, name: str, cfg: Mapping[str, object]) -> ModelShape:
        """Read the shape from a Hugging Face ``config.json`` mapping (Llama / Gemma3 style)."""

        def num(key: str, default: int | None = None) -> int:
            v = cfg.get(key, default)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"config key {key!r} must be an integer, got {v!r}")
            return v

        hidden, heads = num("hidden_size"), num("num_attention_heads")
        gemma = str(cfg.get("model_type", "")).startswith("gemma")
        return cls(
            name=name,
            n_layers=num("num_hidden_layers"),
            hidden=hidden,
            intermediate=num("intermediate_size"),
            n_heads=heads,
            n_kv_heads=num("num_key_value_heads", heads),
            head_dim=num("head_dim", hidden // heads),
            vocab=num("vocab_size"),
            tied=bool(cfg.get("tie_word_embeddings", True)),
            norms_per_layer=4 if gemma else 2,
        )


KNOWN_SHAPES: dict[str, ModelShape] = {
    "smollm2": ModelShape("smollm2", 30, 576, 1536, 9, 3, 64, 49152, tied=True, norms_per_layer=2),
    "gemma3": ModelShape("gemma3", 18, 640, 2048, 4, 1, 256, 262144, tied=True, norms_per_layer=4),
}
"""SmolLM2-135M and Gemma-3-270M, as converted into the model cache."""


def profile_from_shape(
    shape: ModelShape,
    *,
    layer_overhead_ms: float = 0.12,
    ms_per_mparam: float = 0.33,
    head_ms_per_mparam: float = 0.255,
    embed_ms: float = 0.05,
    shard_overhead_ms: float = 1.0,
    context_tokens: int = 2048,
    dtype_bytes: int = 4,
    message_overhead: int = 96,
) -> ModelProfile:
    """A per-token decode profile: compute ≈ overhead + parameters × rate, memory = fp weights + KV cache.

    The defaults are fitted to one core of the development machine (fp32, torch eager, decode,
    measured by ``bench/shard_latency.py``: SmolLM2 1.28 ms/layer and 7.3 ms head, Gemma3 1.95
    ms/layer and 42.7 ms head). Activations cross a boundary as ``hidden`` floats plus an
    envelope; the driver sends a token id in and gets a token id back.
    """
    h = shape.hidden
    layer_p = shape.layer_params()
    kv = 2 * shape.n_kv_heads * shape.head_dim * dtype_bytes * context_tokens
    layer_ms = layer_overhead_ms + layer_p / 1e6 * ms_per_mparam
    head_p = shape.embed_params() + h
    n = shape.n_layers
    return ModelProfile(
        name=shape.name,
        layer_ms=(layer_ms,) * n,
        layer_bytes=(layer_p * dtype_bytes + kv,) * n,
        boundary_bytes=(message_overhead,) + (h * dtype_bytes + message_overhead,) * (n - 1) + (message_overhead,),
        embed_ms=embed_ms,
        head_ms=head_p / 1e6 * head_ms_per_mparam,
        embed_bytes=shape.embed_params() * dtype_bytes,
        head_bytes=head_p * dtype_bytes,
        tied_head=shape.tied,
        shard_ms=shard_overhead_ms,
    )
