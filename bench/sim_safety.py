"""Simulator benchmarks: safety over many random seeds, and consensus CPU overhead against the signature floor.

    .venv/bin/python bench/sim_safety.py                      # 10,000 seeds, then 4..64 peers
    .venv/bin/python bench/sim_safety.py --seeds 2000 --peers 4,16 --json out.json
    .venv/bin/python bench/sim_safety.py --static-weights     # genesis weights for ever

Weights adapt to committed scores by default (3 heights per scenario: the
first computed set applies from height 4, so only the carrying and checking
of score vectors is exercised; ``bench/sim_weights.py`` runs longer chains).

1. **Safety**: ``random_scenario(seed)`` for every seed: 4-7 peers, random
   weights, mixed Byzantine behaviours with faulty weight < 1/3, and sometimes
   loss, a healing partition, an honest crash/restart and slow peers (fast
   signature path). Reports safety violations (target 0), termination
   failures, and runs per second.
2. **Overhead**: an honest network of n peers with real Ed25519 signatures;
   the CPU each peer spends per decision in the shipping driver (everything
   it does: the core, signing, checking proposals, scoring and folding
   weights, answers and queries included) plus verifying votes and proposals
   at the host's edge, against the floor of ``2n`` signature verifications
   at the verify cost measured in the same process. The simulator's own
   bookkeeping is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from consensus.messages import Vote, sign  # noqa: E402
from consensus.sim import SimConfig, random_scenario, run  # noqa: E402
from consensus.sim._world import sim_keys  # noqa: E402
from multillmn.identity import verify_signature  # noqa: E402

CONSENSUS = ("driver", "vote-verify", "proposal-verify")


def safety(seeds: range, *, progress: bool, adaptive: bool = True) -> dict[str, Any]:
    """Run every seed's random scenario; count violations by kind."""
    kinds: Counter[str] = Counter()
    termination_seeds: list[int] = []
    failures: list[str] = []
    decisions = correct = runs = rounds = 0
    start = time.perf_counter()
    cpu0 = time.process_time()
    for seed in seeds:
        config = replace(random_scenario(seed), adaptive_weights=adaptive)
        result = run(config, seed, check=False)
        runs += 1
        decisions += result.heights_decided
        correct += result.correct_heights
        rounds += sum(result.rounds)
        for v in result.violations:
            kinds[v.kind] += 1
        if result.termination_failures:
            termination_seeds.append(seed)
        if result.violations:
            failures.append(f"seed {seed}: {result.violations[0]}")
        if progress and runs % 1000 == 0:
            print(f"  {runs} runs, {time.perf_counter() - start:.0f} s, violations {dict(kinds)}", file=sys.stderr)
    wall = time.perf_counter() - start
    return {
        "runs": runs,
        "decisions": decisions,
        "safety_violations": sum(c for k, c in kinds.items() if k != "termination"),
        "termination_failures": kinds["termination"],
        "violations_by_kind": dict(kinds),
        "termination_seeds": termination_seeds[:50],
        "first_failures": failures[:20],
        "accuracy": round(correct / decisions, 4) if decisions else None,
        "mean_rounds_per_height": round(rounds / decisions, 4) if decisions else None,
        "wall_s": round(wall, 1),
        "cpu_s": round(time.process_time() - cpu0, 1),
        "runs_per_s": round(runs / wall, 1),
    }


def verify_cost_us(samples: int = 3000) -> float:
    """Median-of-5 CPU cost of one Ed25519 vote verification (``verify_signature``), in microseconds."""
    key = sim_keys(4)[0]
    vote = sign(Vote(type="prevote", height=7, round=0, value_id=bytes(32), voter=key.peer_id), key)
    body, sig, pub = vote.envelope.body, vote.envelope.sig, key.public_key
    batches = []
    for _ in range(5):
        t0 = time.thread_time_ns()
        for _ in range(samples // 5):
            verify_signature(pub, "vote", body, sig)
        batches.append((time.thread_time_ns() - t0) / (samples // 5) / 1000)
    return sorted(batches)[2]


def overhead(n: int, seeds: int, heights: int, *, adaptive: bool = True) -> dict[str, Any]:
    """CPU per decision per peer with real signatures, by category, against the 2n-verification floor.

    ``driver`` is everything the shipping driver does (core, signing, checking values and their extras,
    scoring, folding weights); ``<kind>-verify`` is the host's edge opening each received message."""
    floor_us = verify_cost_us()
    cpu: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    node_decisions = 0
    total_ns = 0
    for seed in range(seeds):
        config = SimConfig(peers=n, heights=heights, real_signatures=True, adaptive_weights=adaptive)
        t0 = time.thread_time_ns()
        result = run(config, seed, cpu_clock=time.thread_time_ns)
        total_ns += time.thread_time_ns() - t0
        assert not result.violations and result.heights_decided == heights, result.violations
        node_decisions += n * result.heights_decided
        cpu.update(result.cpu_ns)
        calls.update(result.cpu_calls)
    per = {k: v / node_decisions / 1000 for k, v in cpu.items()}  # us per decision per peer
    consensus_us = sum(per.get(k, 0.0) for k in CONSENSUS)
    floor = 2 * n * floor_us
    return {
        "peers": n,
        "adaptive_weights": adaptive,
        "decisions": node_decisions // n,
        "verify_us": round(floor_us, 1),
        "floor_us": round(floor, 1),
        "consensus_us": round(consensus_us, 1),
        "ratio": round(consensus_us / floor, 2),
        "ratio_all_messages": round(sum(per.values()) / floor, 2),
        "total_us": round(total_ns / node_decisions / 1000, 1),
        "by_category_us": {k: round(v, 1) for k, v in sorted(per.items())},
        "verifications_per_decision_per_peer": round(
            (calls["vote-verify"] + calls["proposal-verify"]) / node_decisions, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10_000)
    parser.add_argument("--seed-start", type=int, default=0)
    parser.add_argument("--peers", default="4,7,16,32,64", help="peer counts for the overhead run")
    parser.add_argument("--overhead-seeds", type=int, default=2)
    parser.add_argument("--skip-safety", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--static-weights", action="store_true", help="keep the genesis weights")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    report: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    if not args.skip_safety:
        print(f"safety: {args.seeds} random scenarios (faulty weight < 1/3, mixed behaviours, network faults)")
        s = safety(range(args.seed_start, args.seed_start + args.seeds), progress=True,
                   adaptive=not args.static_weights)
        report["safety"] = s
        print(f"  runs {s['runs']}  decisions {s['decisions']}  safety violations {s['safety_violations']}  "
              f"termination failures {s['termination_failures']}  ({s['runs_per_s']} runs/s, {s['wall_s']} s)")
        print(f"  accuracy {s['accuracy']}  mean rounds/height {s['mean_rounds_per_height']}")
        if s["termination_seeds"]:
            print(f"  termination failures at seeds {s['termination_seeds'][:20]}")
        print(f"  first failures: {s['first_failures']}")
    if not args.skip_overhead:
        print("overhead with real signatures: consensus CPU per decision per peer vs 2n verifications")
        print(f"  {'peers':>5} {'verify':>7} {'floor':>9} {'consensus':>10} {'ratio':>6} {'all-msgs':>8} "
              f"{'all-in':>9} {'verif/dec':>9}")
        rows = []
        for n in (int(x) for x in args.peers.split(",")):
            heights = 3 if n <= 16 else 2
            row = overhead(n, args.overhead_seeds if n <= 16 else 1, heights, adaptive=not args.static_weights)
            rows.append(row)
            print(f"  {n:>5} {row['verify_us']:>6}u {row['floor_us'] / 1000:>8.2f}m {row['consensus_us'] / 1000:>9.2f}m "
                  f"{row['ratio']:>6} {row['ratio_all_messages']:>8} {row['total_us'] / 1000:>8.2f}m "
                  f"{row['verifications_per_decision_per_peer']:>9}")
            print(f"        by category (us): {row['by_category_us']}")
        report["overhead"] = rows
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
