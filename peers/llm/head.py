"""The output head on numpy's BLAS: the same product, 1.5-1.9x faster on this machine (ADR 0019, addendum 6).

A small model's output head is its largest matrix: Gemma-3-270M's maps 640
dimensions to 262,144 tokens (168M weights, 671 MB in fp32, more than its
transformer layers), and every decode step streams it once per batch. The
torch CPU wheel computes it with MKL, which runs slowly on AMD processors;
numpy's OpenBLAS, on a contiguous copy of the transposed weight, does the
same product 1.5-1.9x faster on one thread of this AMD EPYC (1 and 16 rows,
both bundled models' heads), which answers Gemma-3's questions 1.2-1.3x
faster (``bench/blas_head.py``, ``bench/results/blas-head-2026-11-30.json``).
:class:`BlasHead` replaces the model's head with that product.

The logits differ from torch's in the last bits (another summation order),
as batched and single-row products already differ from each other; greedy
answers are checked unchanged, alone and batched, on the bundled models
(``tests/test_blas_head.py``). OpenBLAS's threads are limited to the peer's
torch threads (:func:`limit_blas_threads`), or each peer of a testnet would
start one per core.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

__all__ = ["BlasHead", "blas_head_enabled", "blas_head_for", "install_blas_head", "limit_blas_threads"]

log = logging.getLogger("multillmn.llm")


class BlasHead(torch.nn.Module):
    """A bias-free fp32 linear output head computed as ``hidden @ weight.T`` by numpy on a transposed copy."""

    def __init__(self, head: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features = head.in_features
        self.out_features = head.out_features
        self.weight = head.weight  # the original, tied to the input embeddings: kept for anything that reads it
        self._weight_t = np.ascontiguousarray(head.weight.detach().numpy().T)  # (in, out), row-major

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        flat = hidden.detach().reshape(-1, self.in_features).contiguous().numpy()
        return torch.from_numpy(flat @ self._weight_t).reshape(*hidden.shape[:-1], self.out_features)


def blas_head_enabled() -> bool:
    """Whether heads go to BLAS: yes, unless the environment sets ``MULTILLMN_BLAS_HEAD=0`` (for comparisons)."""
    return os.environ.get("MULTILLMN_BLAS_HEAD", "1") != "0"


def blas_head_for(head: torch.nn.Module) -> torch.nn.Module:
    """``head`` as a :class:`BlasHead` if it is a bias-free fp32 ``Linear`` (or already one), else unchanged."""
    if isinstance(head, BlasHead):
        return head
    if not isinstance(head, torch.nn.Linear) or head.bias is not None or head.weight.dtype != torch.float32:
        log.info("output head kept on torch: %s", type(head).__name__)
        return head
    return BlasHead(head)


def install_blas_head(model: Any) -> bool:
    """Replace ``model``'s output head by a :class:`BlasHead` if it is a bias-free fp32 ``Linear``; whether it is one."""
    head = blas_head_for(model.get_output_embeddings())
    if isinstance(head, BlasHead):
        model.set_output_embeddings(head)
        return True
    return False


def limit_blas_threads(threads: int) -> None:
    """Limit this process's BLAS libraries (numpy's OpenBLAS) to ``threads`` threads."""
    threadpool_limits(limits=max(1, int(threads)), user_api="blas")
