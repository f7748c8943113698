"""Simulator benchmark: join, leave and churn over many random seeds (issue 12).

    .venv/bin/python bench/sim_membership.py                       # 10,000 churn seeds, 10 heights each
    .venv/bin/python bench/sim_membership.py --seeds 500 --heights 8 --json /tmp/out.json

Every seed draws ``churn_scenario(seed)``: 4-7 genesis peers with random
weights and Byzantine behaviours (at most a quarter of the weight), an epoch
of 4-6 heights, up to three joiners (at a time or a height; some Byzantine),
up to two leaves, sometimes a member that crashes for good, and sometimes
loss, a healing partition, an honest crash/restart and slowness, with a
static estimate of the faulty weight below 1/3. The shipping driver runs on
every node (fast signature path). Each run is checked for agreement,
validity, termination (a leaver until it left, a joiner every height, by
catch-up before it joined), equivocation detection and equal weight and
membership digests; a run is *within the model* when the faulty weight of
the set in force, as the honest chains computed it, stays below 1/3 at every
height. Reported: violations within the model (the claim: 0) and outside
it, runs outside the model and why, the membership changes the runs went
through (joins admitted, joiners whose precommits were counted, leaves,
removals for missed heights), and decisions per CPU-second.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from fractions import Fraction
from multiprocessing import Pool
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from consensus.sim import Simulation, churn_scenario, replay_command, simulate  # noqa: E402

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "sim-membership-2026-11-29.json"


def _changes(sim: Simulation) -> dict[str, Any]:
    """The membership changes of a run, from the chain of the honest node that got furthest."""
    running = [i for i in sim.honest if i not in sim.left_at] or list(sim.honest)
    node = max(running, key=lambda i: (sim.nodes[i].driver.chain.height, -i))  # type: ignore[attr-defined]
    members = sim.nodes[node].driver.chain.members  # type: ignore[attr-defined]
    peers = sim.config.peers
    joiners = {sim.keys[peers + k].peer_id: peers + k for k in range(len(sim.config.joiners))}
    honest_ids = {sim.keys[i].peer_id for i in sim.honest}
    admitted = [p for t in members.transitions for p, _ in t.joining]
    removed = [p for t in members.transitions for p in t.removed]
    left = [p for t in members.transitions for p in t.leaving if p not in t.removed]
    record = members.stability(admitted)
    voted = [p for p in admitted if sum(e["precommits"] for e in record[p]["epochs"].values()) > 0]
    return {
        "joins_admitted": len(admitted),
        "byzantine_joins_admitted": sum(1 for p in admitted if joiners.get(p) not in sim.honest),
        "joiners_voted": len(voted),
        "leaves": len(left),
        "removed": len(removed),
        "honest_removed": sum(1 for p in removed if p in honest_ids),
        "set_sizes": sorted({len(vs) for vs in sim.sets.values()}),
    }


def _why_outside(sim: Simulation, changes: dict[str, Any]) -> str:
    if changes["honest_removed"]:
        return "honest member removed for missed heights"
    if changes["byzantine_joins_admitted"]:
        return "byzantine joiner admitted"
    if changes["leaves"]:
        return "honest member left"
    return "weights adapted"


def one(seed: int, heights: int) -> dict[str, Any]:
    config = churn_scenario(seed, heights=heights)
    t0 = time.process_time()
    sim, result = simulate(config, seed)
    cpu = time.process_time() - t0
    changes = _changes(sim)
    shares = [sim.faulty_share(vs) for vs in sim.sets.values()]
    return {
        "seed": seed, "within_model": result.within_model, "cpu_s": cpu,
        "decisions": result.heights_decided, "honest_decisions": result.honest_decisions,
        "correct": result.correct_heights, "rounds": sum(result.rounds),
        "violations": [(v.kind, v.detail) for v in result.violations],
        "max_faulty_share": float(max(shares, default=Fraction(0))),
        "changes": changes, "why_outside": None if result.within_model else _why_outside(sim, changes),
        "joiners": len(config.joiners), "leave_requests": len(config.leaves),
        "crashed_for_good": sum(1 for c in config.crashes if c.restart_ms is None),
        "replay": replay_command(seed, config) if result.violations else None,
    }


def _one(args: tuple[int, int]) -> dict[str, Any]:
    return one(*args)


def campaign(seeds: range, heights: int, jobs: int, progress: bool) -> dict[str, Any]:
    kinds_in: Counter[str] = Counter()
    kinds_out: Counter[str] = Counter()
    why: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    failures: list[str] = []
    outside_seeds: list[int] = []
    runs = decisions = honest_decisions = correct = rounds = 0
    cpu = 0.0
    worst_within = 0.0
    start = time.perf_counter()
    cpu0 = time.process_time()
    work = [(s, heights) for s in seeds]
    results: Iterator[dict[str, Any]]
    pool = Pool(jobs) if jobs > 1 else None
    results = pool.imap(_one, work, chunksize=20) if pool is not None else map(_one, work)
    try:
        for r in results:
            runs += 1
            decisions += r["decisions"]
            honest_decisions += r["honest_decisions"]
            correct += r["correct"]
            rounds += r["rounds"]
            cpu += r["cpu_s"]
            for key, value in r["changes"].items():
                if isinstance(value, int):
                    totals[key] += value
            totals["runs_with_a_join"] += r["changes"]["joins_admitted"] > 0
            totals["runs_with_a_leave"] += r["changes"]["leaves"] > 0
            totals["runs_with_a_removal"] += r["changes"]["removed"] > 0
            totals["joiners"] += r["joiners"]
            totals["leave_requests"] += r["leave_requests"]
            totals["crashed_for_good"] += r["crashed_for_good"]
            target = kinds_in if r["within_model"] else kinds_out
            for kind, _ in r["violations"]:
                target[kind] += 1
            if r["within_model"]:
                worst_within = max(worst_within, r["max_faulty_share"])
            else:
                why[r["why_outside"]] += 1
                outside_seeds.append(r["seed"])
            if r["violations"] and (r["within_model"] or len(failures) < 10):
                kind, detail = r["violations"][0]
                failures.append(f"seed {r['seed']} ({'within' if r['within_model'] else 'outside'} the model): "
                                f"{kind}: {detail}\n  replay: {r['replay']}")
            if progress and runs % 500 == 0:
                print(f"  {runs} runs, {time.perf_counter() - start:.0f} s, within-model violations "
                      f"{dict(kinds_in)}, outside the model {len(outside_seeds)}", file=sys.stderr)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    wall = time.perf_counter() - start
    safety = ("agreement", "validity", "honest-equivocation", "undetected-equivocation", "weights-divergence")
    return {
        "runs": runs,
        "heights_per_run": heights,
        "decisions": decisions,
        "honest_node_decisions": honest_decisions,
        "within_model": {
            "runs": runs - len(outside_seeds),
            "safety_violations": sum(kinds_in[k] for k in safety),
            "agreement_violations": kinds_in["agreement"],
            "validity_violations": kinds_in["validity"],
            "termination_failures": kinds_in["termination"],
            "violations_by_kind": dict(kinds_in),
            "max_faulty_share": round(worst_within, 6),
        },
        "outside_model": {
            "runs": len(outside_seeds),
            "why": dict(why.most_common()),
            "safety_violations": sum(kinds_out[k] for k in safety),
            "violations_by_kind": dict(kinds_out),  # termination is not promised there (not checked)
            "seeds": outside_seeds[:100],
        },
        "membership": dict(totals),
        "first_failures": failures[:20],
        "accuracy": round(correct / decisions, 4) if decisions else None,
        "mean_rounds_per_height": round(rounds / decisions, 4) if decisions else None,
        "cpu_s": round(cpu, 1),
        "decisions_per_cpu_s": round(decisions / cpu, 1) if cpu else None,
        "honest_node_decisions_per_cpu_s": round(honest_decisions / cpu, 1) if cpu else None,
        "wall_s": round(wall, 1),
        "process_cpu_s": round(time.process_time() - cpu0, 1),
        "jobs": jobs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10_000)
    parser.add_argument("--seed-start", type=int, default=0)
    parser.add_argument("--heights", type=int, default=10, help="heights per run (default 10)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"write the results here ({DEFAULT_JSON})")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    print(f"membership churn: {args.seeds} random scenarios of {args.heights} heights "
          f"(joins, leaves, crashes for good, Byzantine peers and joiners, network faults)")
    report: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count(),
                              "command": " ".join([".venv/bin/python", "bench/sim_membership.py", *sys.argv[1:]])}
    r = campaign(range(args.seed_start, args.seed_start + args.seeds), args.heights, args.jobs,
                 progress=not args.quiet)
    report["churn"] = r
    w, o, m = r["within_model"], r["outside_model"], r["membership"]
    print(f"  runs {r['runs']} ({w['runs']} within the model, {o['runs']} outside), decisions {r['decisions']}")
    print(f"  within the model: safety violations {w['safety_violations']} (agreement {w['agreement_violations']}, "
          f"validity {w['validity_violations']}), termination failures {w['termination_failures']}, "
          f"max faulty share {w['max_faulty_share']}")
    print(f"  outside the model: {o['why']}; safety violations there {o['safety_violations']}")
    print(f"  membership: {m}")
    print(f"  accuracy {r['accuracy']}, mean rounds/height {r['mean_rounds_per_height']}, "
          f"{r['decisions_per_cpu_s']} decisions per CPU-second, wall {r['wall_s']} s")
    for failure in r["first_failures"][:5]:
        print(f"  {failure}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"  wrote {args.json}")
    return 1 if w["safety_violations"] or w["termination_failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
