"""Simulator with adaptive weights: random faults, half of the peers malicious by count, and overhead.

    .venv/bin/python bench/sim_weights.py --jobs 2 --json /tmp/sim_weights.json      # everything (~1 h)
    .venv/bin/python bench/sim_weights.py --seeds 500 --half-seeds 50 --skip-overhead   # a quick look

1. **Random scenarios** (``--seeds``, default 10,000): ``random_scenario(seed,
   heights=8)``: 4-7 peers, random genesis weights, mixed Byzantine
   behaviours with faulty weight < 1/3 *at genesis*, and sometimes loss, a
   healing partition, an honest crash/restart and slow peers. Weights adapt
   (the first computed set applies from height 4), so a faulty peer that
   answers well can grow past 1/3: such runs are counted as outside the
   model, where termination is not promised (safety is still checked).
   The same scenarios run under ``wbft-static`` (the genesis weights for
   ever), ``equal`` (same core, all weights 1) and ``majority`` (no rounds)
   for accuracy.
2. **Half by count** (``--half-seeds``, default 200 per attack): 8 peers, 4
   faulty; they answer wrong (each its own answer) and follow the protocol
   until ``--attack`` (25), then double-vote, send conflicting proposals or
   collude (one shared wrong answer; score each other 1000, the rest 0) up to
   ``--heights`` (40). Reports the faulty weight share per height (plotted to
   ``--plot``), safety, termination, and accuracy from the attack on under
   wbft, equal and majority, against the all-honest network.
3. **Overhead**: consensus CPU per decision per peer with real Ed25519 at
   4..64 peers, adaptive against static weights (``bench/sim_safety.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from consensus.sim import RunResult, SimConfig, random_scenario, run  # noqa: E402

ATTACKS = ("double-vote", "conflicting-proposals", "collude")
BASELINES = ("wbft", "equal", "majority")
RANDOM_BASELINES = ("wbft", "wbft-static", "equal", "majority")  # wbft-static: the genesis weights for ever


@dataclass
class Tally:
    """Totals over runs of one scenario family under one baseline."""

    runs: int = 0
    decisions: int = 0
    correct: int = 0
    after: int = 0  # heights decided from the attack on (half-by-count only)
    correct_after: int = 0
    safety_violations: int = 0
    termination_failures: int = 0  # within the model: promised, so any is a failure
    termination_outside: int = 0  # outside the model (faulty weight reached 1/3): not promised
    outside_model: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    failing: list[str] = field(default_factory=list)
    cpu_s: float = 0.0
    share_sums: list[float] = field(default_factory=list)
    share_counts: list[int] = field(default_factory=list)
    share_max: list[float] = field(default_factory=list)
    share_last: float = 0.0
    share_max_after: float = 0.0  # highest faulty share at any height from the attack on

    def add(self, r: RunResult, cpu_s: float, attack: int) -> None:
        self.runs += 1
        self.cpu_s += cpu_s
        self.decisions += r.heights_decided
        self.correct += r.correct_heights
        c, d = r.accuracy_from(attack)
        self.correct_after += c
        self.after += d
        self.safety_violations += r.safety_violations
        self.outside_model += not r.within_model
        if r.within_model:
            self.termination_failures += r.termination_failures
        else:
            self.termination_outside += r.termination_failures
        self.kinds.update(v.kind for v in r.violations)
        if (r.safety_violations or (r.within_model and r.termination_failures)) and len(self.failing) < 10:
            self.failing.append(f"seed {r.seed}: {r.violations[0]}")
        for k, share in enumerate(r.faulty_shares):
            if k == len(self.share_sums):
                self.share_sums.append(0.0)
                self.share_counts.append(0)
                self.share_max.append(0.0)
            self.share_sums[k] += share
            self.share_counts[k] += 1
            self.share_max[k] = max(self.share_max[k], share)
        if r.faulty_shares:
            self.share_last += r.faulty_shares[-1]
            self.share_max_after = max([self.share_max_after, *r.faulty_shares[attack - 1:]])

    def merge(self, other: Tally) -> None:
        for name in ("runs", "decisions", "correct", "after", "correct_after", "safety_violations",
                     "termination_failures", "termination_outside", "outside_model"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.kinds.update(other.kinds)
        self.failing = (self.failing + other.failing)[:10]
        self.cpu_s += other.cpu_s
        self.share_last += other.share_last
        self.share_max_after = max(self.share_max_after, other.share_max_after)
        for k in range(len(other.share_sums)):
            if k == len(self.share_sums):
                self.share_sums.append(0.0)
                self.share_counts.append(0)
                self.share_max.append(0.0)
            self.share_sums[k] += other.share_sums[k]
            self.share_counts[k] += other.share_counts[k]
            self.share_max[k] = max(self.share_max[k], other.share_max[k])

    def report(self) -> dict[str, Any]:
        def ratio(a: float, b: float) -> float | None:
            return round(a / b, 4) if b else None

        return {
            "runs": self.runs,
            "decisions": self.decisions,
            "safety_violations": self.safety_violations,
            "termination_failures": self.termination_failures,
            "runs_outside_model": self.outside_model,
            "termination_failures_outside_model": self.termination_outside,
            "violations_by_kind": dict(self.kinds),
            "failures": self.failing,
            "accuracy": ratio(self.correct, self.decisions),
            "accuracy_from_attack": ratio(self.correct_after, self.after),
            "decisions_per_cpu_s": ratio(self.decisions, self.cpu_s),
            "cpu_s": round(self.cpu_s, 1),
            "faulty_share_first": ratio(self.share_sums[0], self.share_counts[0]) if self.share_sums else None,
            "faulty_share_last": ratio(self.share_last, self.runs),
            "faulty_share_max_from_attack": round(self.share_max_after, 4),
            "faulty_share_by_height": [round(s / c, 4) for s, c in zip(self.share_sums, self.share_counts)],
            "faulty_share_max_by_height": [round(m, 4) for m in self.share_max],
        }


# --- work units (top level, so a process pool can run them) ------------------------------------
def _random_chunk(seeds: list[int], heights: int, baseline: str) -> Tally:
    tally = Tally()
    static = baseline == "wbft-static"
    for seed in seeds:
        config = replace(random_scenario(seed, heights=heights), baseline="wbft" if static else baseline,
                         adaptive_weights=not static)  # type: ignore[arg-type]
        t0 = time.process_time()
        result = run(config, seed, check=False)
        tally.add(result, time.process_time() - t0, 1)
    return tally


def half_config(attack: str | None, baseline: str, heights: int, attack_from: int, error_rate: float) -> SimConfig:
    """n = 8, 4 faulty by count (``attack`` from ``attack_from``, wrong before); ``None``: all honest."""
    faulty = (attack,) * 4 if attack is not None else ()
    return SimConfig(peers=8, byzantine_pick=faulty, heights=heights, error_rate=error_rate,
                     attack_from_height=attack_from if attack is not None else None,
                     baseline=baseline)  # type: ignore[arg-type]


def _half_chunk(seeds: list[int], attack: str | None, baseline: str, heights: int, attack_from: int,
                error_rate: float) -> Tally:
    tally = Tally()
    config = half_config(attack, baseline, heights, attack_from, error_rate)
    for seed in seeds:
        t0 = time.process_time()
        result = run(config, seed, check=False)
        tally.add(result, time.process_time() - t0, attack_from)
    return tally


def _chunks(seeds: range, size: int) -> list[list[int]]:
    items = list(seeds)
    return [items[k:k + size] for k in range(0, len(items), size)]


def run_all(pool: ProcessPoolExecutor | None, fn: Callable[..., Tally], chunks: Iterable[list[int]],
            *args: Any) -> Tally:
    """``fn(chunk, *args)`` over every chunk (in a pool if given), merged in chunk order."""
    total = Tally()
    parts = [pool.submit(fn, c, *args) for c in chunks] if pool else None
    for k, chunk in enumerate(chunks):
        total.merge(parts[k].result() if parts else fn(chunk, *args))
    return total


# --- the plot ---------------------------------------------------------------------------------
def plot(half: dict[str, Any], attack_from: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=120)
    for attack in ATTACKS:
        wbft = half[attack]["wbft"]
        mean = wbft["faulty_share_by_height"]
        heights = range(1, len(mean) + 1)
        line, = ax.plot(heights, mean, label=f"wrong, then {attack} (mean)")
        ax.plot(heights, wbft["faulty_share_max_by_height"], color=line.get_color(), linestyle=":", linewidth=1,
                label=f"  max over {wbft['runs']} seeds")
    ax.axhline(1 / 2, color="grey", linewidth=0.8)
    ax.axhline(1 / 3, color="red", linewidth=0.8, linestyle="--", label="1/3")
    ax.axvline(attack_from, color="black", linewidth=0.8, linestyle="-.", label=f"attack from height {attack_from}")
    ax.set_xlabel("height")
    ax.set_ylabel("faulty peers' share of the weight")
    ax.set_title("8 peers, 4 faulty by count: weights adapt to committed scores (simulator)")
    ax.set_ylim(0, 0.55)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


# --- main -------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10_000, help="random scenarios")
    parser.add_argument("--random-heights", type=int, default=8)
    parser.add_argument("--random-baselines", default=",".join(RANDOM_BASELINES),
                        help=f"baselines of the random scenarios (default {','.join(RANDOM_BASELINES)})")
    parser.add_argument("--half-seeds", type=int, default=200, help="seeds per attack in the half-by-count runs")
    parser.add_argument("--heights", type=int, default=40)
    parser.add_argument("--attack", type=int, default=25, help="height from which the faulty peers attack")
    parser.add_argument("--error-rate", type=float, default=0.1, help="honest models err uniformly in [0, this]")
    parser.add_argument("--peers", default="4,7,16,32,64", help="peer counts for the overhead run")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--skip-random", action="store_true")
    parser.add_argument("--skip-half", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--plot", type=Path, default=Path("docs/img/sim_faulty_weight_share.png"))
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    report: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count(), "jobs": args.jobs}
    pool = ProcessPoolExecutor(args.jobs) if args.jobs > 1 else None
    start = time.perf_counter()

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n")

    if not args.skip_random:
        print(f"random scenarios: {args.seeds} seeds, {args.random_heights} heights, adaptive weights", flush=True)
        chunks = _chunks(range(args.seeds), 50)
        section: dict[str, Any] = {"seeds": args.seeds, "heights": args.random_heights}
        for baseline in args.random_baselines.split(","):
            t0 = time.perf_counter()
            tally = run_all(pool, _random_chunk, chunks, args.random_heights, baseline)
            row = section[baseline] = tally.report() | {"wall_s": round(time.perf_counter() - t0, 1)}
            print(f"  {baseline:>8}: safety {row['safety_violations']}  termination {row['termination_failures']} "
                  f"(outside the model: {row['runs_outside_model']} runs, {row['termination_failures_outside_model']} "
                  f"stalls)  accuracy {row['accuracy']}  decisions/cpu-s {row['decisions_per_cpu_s']}  "
                  f"faulty share {row['faulty_share_first']} -> {row['faulty_share_last']}", flush=True)
            for failure in row["failures"][:3]:
                print(f"      {failure}")
        report["random"] = section
        save()
    if not args.skip_half:
        print(f"half by count: 8 peers, 4 faulty, wrong, then attacking from height {args.attack} of "
              f"{args.heights}; error rate {args.error_rate}; {args.half_seeds} seeds each", flush=True)
        chunks = _chunks(range(args.half_seeds), 10)
        half: dict[str, Any] = {"seeds": args.half_seeds, "heights": args.heights, "attack_from": args.attack,
                                "error_rate": args.error_rate}
        honest = run_all(pool, _half_chunk, chunks, None, "wbft", args.heights, args.attack, args.error_rate)
        half["all-honest"] = honest.report()
        print(f"  all honest: accuracy from the attack height {half['all-honest']['accuracy_from_attack']}",
              flush=True)
        for attack in ATTACKS:
            half[attack] = {}
            for baseline in BASELINES:
                tally = run_all(pool, _half_chunk, chunks, attack, baseline, args.heights, args.attack,
                                args.error_rate)
                row = half[attack][baseline] = tally.report()
                share = row["faulty_share_by_height"]
                print(f"  {attack:>21} {baseline:>8}: safety {row['safety_violations']}  termination "
                      f"{row['termination_failures']} (+{row['termination_failures_outside_model']} outside)  "
                      f"outside model {row['runs_outside_model']}  accuracy from attack "
                      f"{row['accuracy_from_attack']}  share at attack "
                      f"{share[args.attack - 1] if len(share) >= args.attack else None}  max from attack "
                      f"{row['faulty_share_max_from_attack']}  decisions/cpu-s {row['decisions_per_cpu_s']}",
                      flush=True)
        report["half"] = half
        save()
        plot(half, args.attack, args.plot)
        print(f"  plot: {args.plot}")
    if pool is not None:
        pool.shutdown()
    if not args.skip_overhead:
        from bench.sim_safety import overhead

        print("overhead with real signatures: consensus CPU per decision per peer vs 2n verifications", flush=True)
        rows = []
        for n in (int(x) for x in args.peers.split(",")):
            heights = 8 if n <= 16 else 5
            for adaptive in (False, True):
                row = overhead(n, 1, heights, adaptive=adaptive)
                rows.append(row)
                print(f"  {n:>3} peers {'adaptive' if adaptive else 'static  '}: floor {row['floor_us'] / 1000:.2f} ms"
                      f"  consensus {row['consensus_us'] / 1000:.2f} ms  ratio {row['ratio']}  all messages "
                      f"{row['ratio_all_messages']}  by category {row['by_category_us']}", flush=True)
        report["overhead"] = rows
    report["wall_s"] = round(time.perf_counter() - start, 1)
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
