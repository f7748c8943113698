"""Hosted LLMs: model registry, GGUF conversion cache, prompting and generation.

``Generator``/``Generation`` are imported lazily so importing this package stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .cache import default_cache_dir, load_or_convert
from .models import BUNDLED_MODELS, ModelError, ModelSpec, PromptStyle, resolve_model
from .prompting import chat_messages, clean_answer, few_shot_prompt

if TYPE_CHECKING:
    from .generator import Generation, Generator

__all__ = [
    "BUNDLED_MODELS", "Generation", "Generator", "ModelError", "ModelSpec", "PromptStyle",
    "chat_messages", "clean_answer", "default_cache_dir", "few_shot_prompt", "load_or_convert",
    "resolve_model",
]


def __getattr__(name: str) -> Any:
    if name in ("Generation", "Generator"):
        from . import generator

        return getattr(generator, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
