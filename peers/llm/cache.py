"""Cache of GGUF models de-quantised to fp32 Hugging Face directories.

Loading a GGUF de-quantises every tensor (20-60 s); the cache keeps the result as safetensors +
config + tokenizer, which reloads in seconds. Entries are written to a temp dir and renamed into
place; a per-entry ``fcntl.flock`` makes concurrent converters (threads or processes) wait and
then reuse the finished entry.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .models import ModelSpec

LOAD_LOCK = threading.RLock()
"""Held around every ``from_pretrained`` of a model in this process. transformers swaps process-wide
state while it loads and puts it back after (``PreTrainedModel.tie_weights`` and ``init_weights``, the
``torch.nn.init`` functions, torch's default dtype); two loads overlapping in threads of one process
(in-process shard workers loading their layers at once) restored each other's stand-ins, so
``tie_weights`` stayed a no-op and every tied model loaded later (SmolLM2, Gemma-3) kept a random input
embedding and answered garbage."""

__all__ = ["FORMAT_VERSION", "cache_key", "load_or_convert", "default_cache_dir"]

log = logging.getLogger("multillmn.llm")

FORMAT_VERSION = 1
_MARKER = "multillmn-cache.json"


def default_cache_dir() -> Path:
    """``$MULTILLMN_CACHE`` or ``~/.cache/multillmn/models``."""
    env = os.environ.get("MULTILLMN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "multillmn" / "models"


def offline() -> None:
    """Forbid any model-hub access from this process."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def cache_key(spec: ModelSpec) -> str:
    """Directory name of ``spec``'s cache entry (name + digest of source identity and format)."""
    import transformers

    ident: dict[str, object] = {"format": FORMAT_VERSION, "transformers": transformers.__version__}
    if spec.content_id is not None:
        ident["sha256"] = spec.content_id
    elif spec.source is not None:
        st = spec.source.stat()
        ident.update(file=spec.source.name, size=st.st_size, mtime_ns=st.st_mtime_ns)
    else:
        raise ValueError(f"model spec {spec.name!r} has neither a source nor a content id")
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", spec.name)[:64] or "model"
    return f"{safe}-{digest}"


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _complete(entry: Path) -> bool:
    return (entry / _MARKER).is_file()


def _quiet_gguf_progress() -> None:
    """transformers' GGUF loader uses a bare tqdm bar; silence it."""
    try:
        from functools import partial

        import transformers.modeling_gguf_pytorch_utils as gguf_utils
        from tqdm.auto import tqdm

        gguf_utils.tqdm = partial(tqdm, disable=True)  # type: ignore[attr-defined]
    except (ImportError, AttributeError):
        pass


def _convert(gguf_path: Path, out_dir: Path) -> None:
    """De-quantise ``gguf_path`` into an fp32 Hugging Face directory ``out_dir``."""
    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    offline()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    _quiet_gguf_progress()
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    with LOAD_LOCK:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # weights are plain fp32 now
    config.dtype = torch.float32
    config.save_pretrained(out_dir)
    model.generation_config.save_pretrained(out_dir)
    # save_model drops duplicate (tied) tensors, e.g. lm_head.weight == embed_tokens.weight.
    save_model(model, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(out_dir)


def load_or_convert(spec: ModelSpec, cache_dir: Path) -> Path:
    """Return a directory ``from_pretrained`` can load for ``spec``, converting a GGUF once."""
    if not spec.is_gguf:
        if spec.source is None:
            raise ValueError(f"model spec {spec.name!r} has no source directory")
        return spec.source
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(spec)
    entry = cache_dir / key
    if _complete(entry):
        log.info("model cache hit for %s: %s", spec.name, entry)
        return entry
    t0 = time.monotonic()
    with _locked(cache_dir / f"{key}.lock"):
        waited = time.monotonic() - t0
        if _complete(entry):
            log.info("model cache hit for %s after waiting %.1f s for another converter", spec.name, waited)
            return entry
        if entry.exists():  # never completed (e.g. removed marker): rebuild
            shutil.rmtree(entry)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".tmp", dir=cache_dir))
        try:
            t1 = time.monotonic()
            source = spec.source
            if source is None:
                if spec.assemble is None:
                    raise ValueError(f"model spec {spec.name!r} has neither a source nor an assembler")
                source = spec.assemble(tmp / "source.gguf")
                log.info("assembled %s GGUF in %.1f s", spec.name, time.monotonic() - t1)
            out = tmp / "model"
            out.mkdir()
            _convert(source, out)
            for f in out.iterdir():
                f.chmod(0o644)  # safetensors writes 0600; let other local users share the cache
            seconds = time.monotonic() - t1
            (out / _MARKER).write_text(json.dumps(
                {"format": FORMAT_VERSION, "model": spec.name, "key": key, "convert_seconds": round(seconds, 2)}
            ))
            os.rename(out, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s GGUF to %s in %.1f s", spec.name, entry, seconds)
    return entry
