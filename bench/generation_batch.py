"""Batched generation against the memory-bandwidth limit (issue 14, ADR 0019).

For each bundled model: answer the shipped questions (``--questions`` of them, evenly spaced over
the file, or all) in batches of 1, 4, 8 and 16 with ``Generator.generate_batch`` (greedy,
``--max-new-tokens`` 48, torch threads ``--threads`` 2) and report wall time, generated tokens/s,
the split between prefill (the prompts' forward pass) and decode steps, and whether every answer
equals the reference: batch 1 without the prompt prefix's KV cache. ``--prefix-cache`` off, on or
both (default): each batch size without and with the shared prefix's KV cache (ADR 0019,
addendum 2); the prefix itself is computed once in the warm-up.

The bound: decoding one sequence streams every weight a step reads once per token, so one stream
cannot beat ``bandwidth / weight bytes per step`` tokens/s. The bandwidth is measured here (a
256 MiB numpy copy, best of 5, read + write bytes); the weight bytes per step are the fp32
parameters a decode step reads (all of them, less the input embedding when it is not also the
output head: the lookup reads only B rows). ``ratio`` is tokens/s over that one-stream bound; a
batch can exceed 1 since it reads the weights once for B tokens.

    .venv/bin/python bench/generation_batch.py                  # 64 questions, both models
    .venv/bin/python bench/generation_batch.py --questions 0    # all shipped questions
    .venv/bin/python bench/generation_batch.py --prefix-cache off  # as before the prefix cache

Writes ``bench/results/generation-batch-<date>.json`` and prints a table. The load average of the
machine (shared with others) is recorded before and after.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from multillmn.questions import load_questions  # noqa: E402
from peers.llm import Generator, default_cache_dir, resolve_model  # noqa: E402

BATCHES = (1, 4, 8, 16)


def memory_bandwidth(mib: int = 256, repeat: int = 5) -> float:
    """Bytes per second moved by a large array copy (each byte read once and written once)."""
    a = np.ones(mib * 2**20 // 8)
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t0)
    return 2 * a.nbytes / best


def weight_bytes_per_step(model: Any) -> int:
    """fp32 bytes a decode step reads: every parameter once, less an input embedding not used as the head."""
    seen: dict[int, int] = {}
    for p in model.parameters():
        seen[id(p)] = p.numel() * p.element_size()
    total = sum(seen.values())
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    return total if embed is head else total - embed.numel() * embed.element_size()


class PhaseTimer:
    """Forward-pass time split into prefill (more than one new position) and decode steps."""

    def __init__(self, model: Any) -> None:
        self.prefill = self.decode = 0.0
        self.steps = 0
        self._t = 0.0
        self._width = 0
        model.register_forward_pre_hook(self._pre, with_kwargs=True)
        model.register_forward_hook(self._post, with_kwargs=True)

    def _pre(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        self._width = int(kwargs["input_ids"].shape[1])
        self._t = time.perf_counter()

    def _post(self, module: Any, args: Any, kwargs: dict[str, Any], out: Any) -> None:
        dt = time.perf_counter() - self._t
        if self._width > 1:
            self.prefill += dt
        else:
            self.decode += dt
            self.steps += 1

    def reset(self) -> None:
        self.prefill = self.decode = 0.0
        self.steps = 0


def run_model(name: str, questions: list[str], max_new_tokens: int, threads: int, bandwidth: float,
              caches: list[bool]) -> dict[str, Any]:
    loaded = Generator.load(resolve_model(name), default_cache_dir(), threads=threads)
    per_step = weight_bytes_per_step(loaded.model)
    limit = bandwidth / per_step  # tokens/s of one stream, at best
    timer = PhaseTimer(loaded.model)
    reference: list[str] | None = None
    if caches[0]:  # the reference is always batch 1 without the cache
        plain = Generator(loaded.spec, loaded.model, loaded.tokenizer, prefix_cache=False)
        reference = [plain.generate(q, max_new_tokens).text for q in questions]
    rows = []
    for cache, size in ((c, b) for c in caches for b in BATCHES):
        g = Generator(loaded.spec, loaded.model, loaded.tokenizer, prefix_cache=cache)
        g.generate_batch(questions[:2], 4)  # warm up (and compute the prefix's cache)
        timer.reset()
        t0 = time.perf_counter()
        answers = []
        for i in range(0, len(questions), size):
            answers += g.generate_batch(questions[i:i + size], max_new_tokens)
        wall = time.perf_counter() - t0
        tokens = sum(a.new_tokens for a in answers)
        texts = [a.text for a in answers]
        if reference is None:
            reference = texts
        rows.append({
            "prefix_cache": cache, "batch": size, "wall_s": round(wall, 2), "tokens": tokens,
            "tokens_per_s": round(tokens / wall, 2),
            "prefill_s": round(timer.prefill, 2), "decode_s": round(timer.decode, 2), "decode_steps": timer.steps,
            "decode_tokens_per_s": round(tokens / timer.decode, 2) if timer.decode else None,
            "ratio": round(tokens / wall / limit, 3),
            "decode_ratio": round(tokens / timer.decode / limit, 3) if timer.decode else None,
            "differing_answers": sum(a != b for a, b in zip(texts, reference)),
        })
        print(f"  {name} cache {'on' if cache else 'off'} batch {size}: {wall:.1f} s, {tokens / wall:.1f} tok/s",
              flush=True)
    return {"model": name, "weight_bytes_per_step": per_step, "bandwidth_limit_tokens_per_s": round(limit, 2),
            "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="smollm2,gemma3")
    ap.add_argument("--questions", type=int, default=64, help="evenly spaced over the shipped set; 0: all")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefix-cache", choices=("off", "on", "both"), default="both")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    shipped = [q.question for q in load_questions()]
    n = args.questions or len(shipped)
    questions = [shipped[i * len(shipped) // n] for i in range(n)]
    load_before = os.getloadavg()
    bandwidth = memory_bandwidth()
    print(f"memory bandwidth {bandwidth / 1e9:.2f} GB/s (numpy copy); load average {load_before[0]:.2f}", flush=True)
    caches = {"off": [False], "on": [True], "both": [False, True]}[args.prefix_cache]
    models = [run_model(m, questions, args.max_new_tokens, args.threads, bandwidth, caches)
              for m in args.models.split(",")]
    load_after = os.getloadavg()

    print(f"\n{len(questions)} questions, max_new_tokens {args.max_new_tokens}, {args.threads} torch threads, "
          f"memory bandwidth {bandwidth / 1e9:.2f} GB/s")
    print(f"{'model':8} {'cache':>5} {'batch':>5} {'wall s':>7} {'tokens':>6} {'tok/s':>6} {'prefill s':>9} {'decode s':>8} "
          f"{'dec tok/s':>9} {'bw limit':>8} {'ratio':>6} {'dec ratio':>9} {'differ':>6}")
    for m in models:
        for r in m["rows"]:
            print(f"{m['model']:8} {'on' if r['prefix_cache'] else 'off':>5} {r['batch']:>5} {r['wall_s']:>7.1f} {r['tokens']:>6} {r['tokens_per_s']:>6.1f} "
                  f"{r['prefill_s']:>9.1f} {r['decode_s']:>8.1f} {r['decode_tokens_per_s'] or 0:>9.1f} "
                  f"{m['bandwidth_limit_tokens_per_s']:>8.1f} {r['ratio']:>6.2f} {r['decode_ratio'] or 0:>9.2f} "
                  f"{r['differing_answers']:>6}")
    result = {
        "command": "bench/generation_batch.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.date.today().isoformat(), "questions": len(questions),
        "max_new_tokens": args.max_new_tokens, "threads": args.threads, "cpus": os.cpu_count(),
        "memory_bandwidth_bytes_per_s": round(bandwidth), "load_average_before": load_before,
        "load_average_after": load_after, "torch": torch.__version__, "models": models,
    }
    out = args.out or Path(__file__).parent / "results" / f"generation-batch-{result['date']}.json"
    n_out = 2
    while args.out is None and out.exists():  # never overwrite an earlier run of the day
        out = out.with_name(f"generation-batch-{result['date']}-{n_out}.json")
        n_out += 1
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
