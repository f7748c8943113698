"""``multillmn shard plan``: the EdgeShard plan for a device file, next to the baselines. Pure (no torch).

Hook into the main CLI with ``add_shard_commands(subparsers)``; the leaf parser
sets ``func(args) -> int``. A bad device file or flag prints ``error: ...`` to
stderr and returns 2; a model that fits no split returns 1.

The device file (TOML, format in :mod:`peers.shard.devices`) lists the
devices near the driving peer; the plan ignores the keys only a sharded peer
needs (``address``, ``peer_id``) and the testnet link conditions.
Activations are relayed through the driving peer, so a transfer between two
devices crosses both of their links. Speed from ``threads`` assumes ideal
scaling (``speed = threads``); give ``speed`` for a measured figure.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from .devices import DeviceFileError, load_device_file, planner_inputs
from .planner import (
    OBJECTIVES,
    Device,
    Link,
    Network,
    NoFeasiblePlan,
    Objective,
    Plan,
    Problem,
    baselines,
    plan,
    shard_memory,
)
from .profiles import KNOWN_SHAPES, profile_from_shape

__all__ = ["DeviceFileError", "add_shard_commands", "load_devices", "format_plans"]

MIB = 2**20


def load_devices(path: Path) -> tuple[list[Device], dict[str, Link]]:
    """Devices and their links to the driving peer from a device file (worker keys are ignored)."""
    return planner_inputs(load_device_file(path))


def _row(label: str, p: Plan | None, problem: Problem) -> tuple[str, ...]:
    if p is None:
        return (label, "does not fit", "-", "-", "-")
    mem = max(shard_memory(problem.model, s.start, s.stop) / problem.device(s.device).memory_bytes
              if problem.device(s.device).memory_bytes else math.inf for s in p.shards)
    return (label, str(p), f"{p.latency_ms:.1f}", f"{p.throughput_tps:.1f}", f"{mem:.0%}")


def format_plans(problem: Problem, best: Plan, others: dict[str, Plan | None]) -> str:
    """The DP plan and the baselines as an aligned table."""
    head = ("PLAN", "SHARDS", "MS/TOKEN", "TOK/S (PIPELINE FULL)", "PEAK MEMORY USE")
    rows = [_row(best.label, best, problem), *(_row(k, v, problem) for k, v in others.items())]
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in (head, *rows))


def _err(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _cmd_plan(args: argparse.Namespace) -> int:
    try:
        devices, links = load_devices(args.devices)
    except DeviceFileError as exc:
        return _err(str(exc))
    if args.context < 1:
        return _err(f"--context must be positive, got {args.context}")
    objective: Objective = args.objective
    profile = profile_from_shape(KNOWN_SHAPES[args.model], context_tokens=args.context)
    problem = Problem(profile, tuple(devices), Network.star(links))
    try:
        best = plan(problem, objective)
    except NoFeasiblePlan as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    others = baselines(problem, objective)
    if args.json:
        def enc(p: Plan | None) -> object:
            if p is None:
                return None
            return {"shards": [[s.device, s.start, s.stop] for s in p.shards], "latency_ms": p.latency_ms,
                    "bottleneck_ms": p.bottleneck_ms, "throughput_tps": p.throughput_tps}
        print(json.dumps({"model": args.model, "objective": objective, "plan": enc(best),
                          "baselines": {k: enc(v) for k, v in others.items()}}, indent=2))
        return 0
    print(f"model {args.model}: {profile.n_layers} layers, {profile.total_bytes() / MIB:.1f} MiB on one device "
          f"(fp32 weights + KV cache for {args.context} tokens); objective: {objective}")
    print(format_plans(problem, best, others))
    return 0


def add_shard_commands(subparsers: Any) -> None:
    """Register ``shard plan`` on the main CLI's subparsers."""
    shard = subparsers.add_parser("shard", help="split one model across nearby devices (EdgeShard)")
    sub = shard.add_subparsers(dest="shard_command", required=True)
    p = sub.add_parser("plan", help="plan which devices hold which layers; compare with the baselines")
    p.add_argument("--devices", type=Path, required=True, help="device file (TOML, [[device]] tables)")
    p.add_argument("--objective", choices=OBJECTIVES, default="latency",
                   help="latency: fastest token; throughput: slowest pipeline stage (default: latency)")
    p.add_argument("--model", choices=sorted(KNOWN_SHAPES), default="smollm2", help="default: smollm2")
    p.add_argument("--context", type=int, default=2048, help="KV cache tokens to reserve per layer (default 2048)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_plan)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point: ``python -m peers.shard.cli shard plan --devices FILE``."""
    parser = argparse.ArgumentParser(prog="multillmn")
    add_shard_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
