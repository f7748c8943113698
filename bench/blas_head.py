"""The output head on torch's MKL against numpy's OpenBLAS, in one process (ADR 0019, addendum 6).

One torch thread and one BLAS thread, each bundled model loaded as a peer loads it:
- the head's product alone, on 1 and 16 rows of hidden states (median of 20);
- answering 16 shipped questions (every 8th) as one batch, and the first alone, with either head, in
  alternating order (best of ``--rounds``), and whether the answers are the same.

    flock /tmp/m/heavy.lock nice -n 5 .venv/bin/python bench/blas_head.py --out bench/results/blas-head-2026-11-30.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from multillmn.questions import load_questions  # noqa: E402
from peers.llm import Generator, default_cache_dir, resolve_model  # noqa: E402
from peers.llm.head import BlasHead, limit_blas_threads  # noqa: E402


def median_ms(run: Callable[[], object], times: int = 20) -> float:
    run()
    samples = []
    for _ in range(times):
        t = time.perf_counter()
        run()
        samples.append(time.perf_counter() - t)
    return round(1000 * statistics.median(samples), 2)


def torch_linear(blas: BlasHead) -> torch.nn.Linear:
    linear = torch.nn.Linear(blas.in_features, blas.out_features, bias=False)
    linear.weight = blas.weight
    return linear


def measure(name: str, rounds: int) -> dict[str, Any]:
    gen = Generator.load(resolve_model(name), default_cache_dir(), threads=1)
    limit_blas_threads(1)
    blas = gen.model.get_output_embeddings()
    assert isinstance(blas, BlasHead), "the generator did not install the BLAS head"
    heads: dict[str, torch.nn.Module] = {"torch": torch_linear(blas), "blas": blas}
    out: dict[str, Any] = {"model": name, "vocabulary": blas.out_features, "hidden": blas.in_features}
    with torch.inference_mode():
        for rows in (1, 16):
            hidden = torch.randn(rows, 1, blas.in_features)
            for label, head in heads.items():
                out[f"head_{label}_{rows}_rows_ms"] = median_ms(lambda h=head: h(hidden))  # type: ignore[misc]
    questions = [q.question for q in load_questions()][::8][:16]
    answers: dict[str, list[str]] = {}
    for label in [lab for _ in range(rounds) for lab in heads]:
        gen.model.set_output_embeddings(heads[label])
        t = time.perf_counter()
        batch = [g.text for g in gen.generate_batch(questions, 48)]
        batch_s = time.perf_counter() - t
        t = time.perf_counter()
        alone = gen.generate(questions[0], 48).text
        alone_s = time.perf_counter() - t
        answers[label] = [*batch, alone]
        for key, value in ((f"batch16_{label}_s", batch_s), (f"alone_{label}_s", alone_s)):
            out[key] = round(min(out.get(key, value), value), 3)
    gen.model.set_output_embeddings(blas)
    out["same_answers"] = answers["torch"] == answers["blas"]
    for rows in (1, 16):
        out[f"head_speedup_{rows}_rows"] = round(out[f"head_torch_{rows}_rows_ms"] / out[f"head_blas_{rows}_rows_ms"], 2)
    out["batch16_speedup"] = round(out["batch16_torch_s"] / out["batch16_blas_s"], 2)
    out["alone_speedup"] = round(out["alone_torch_s"] / out["alone_blas_s"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["smollm2", "gemma3"])
    parser.add_argument("--rounds", type=int, default=2, help="runs of each head, alternating (best is kept)")
    parser.add_argument("--out", type=Path, help="JSON output")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    results = []
    for name in args.models:
        results.append(measure(name, args.rounds))
        print(json.dumps(results[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"bench": "blas_head", "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
