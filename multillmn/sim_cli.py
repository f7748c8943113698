"""The ``multillmn sim`` command: run the deterministic WBFT simulator over many seeds.

Exit codes: 0 when every run kept its promises, 1 when a run within the fault
model (faulty weight below 1/3 at every height; not the majority baseline)
violated an invariant, 2 on bad flags.

Under ``wbft`` weights adapt to committed answer scores unless
``--static-weights``; the summary reports the faulty peers' share of the
weight at the last height and per height (``--json``).

Membership (issue 12): ``--epoch-length``, ``--joiners`` (peers outside the
genesis that ask to join, one a height from height 2; ``--byzantine-joiners``
of them play ``--behaviour``) and ``--leaves`` (the last genesis peers ask to
leave at height 2); ``--churn`` instead draws a churn scenario per seed
(``consensus.sim.churn_scenario``: peers up to ``--peers``, weights, faults,
joins, leaves and crashes for good).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from typing import Any

from multillmn.argtypes import int_range

__all__ = ["add_sim_command", "build_config"]

_MIXED = "mixed"


def _behaviours() -> list[str]:
    from consensus.sim import behaviour_names

    return [b for b in behaviour_names() if b != "none"]


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1), got {value}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0.0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _weights(text: str) -> tuple[int, ...]:
    try:
        weights = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not weights or any(w < 1 for w in weights):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return weights


def add_sim_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``sim`` on an ``add_subparsers()`` object; return its parser."""
    behaviours = _behaviours()
    p: argparse.ArgumentParser = subparsers.add_parser(
        "sim", help="simulate the WBFT protocol over many seeds (deterministic, virtual time)",
        description="Run many seeded simulations of peers under faults and check agreement, validity, "
                    "termination and equivocation detection. A failing seed replays exactly.")
    p.add_argument("--peers", type=int_range(1), default=4, help="number of peers (default 4)")
    p.add_argument("--byzantine", type=int_range(0), default=0, help="number of Byzantine peers (default 0)")
    p.add_argument("--behaviour", choices=[*behaviours, _MIXED], default="wrong",
                   help="what the Byzantine peers do (default wrong; mixed: drawn per peer and seed)")
    p.add_argument("--weights", type=_weights, help="comma-separated weights, one per peer (default all 1)")
    p.add_argument("--heights", type=int_range(1), default=3, help="heights (queries) per run (default 3)")
    p.add_argument("--seeds", type=int_range(1), default=100, help="number of runs (default 100)")
    p.add_argument("--seed-start", type=int_range(0), default=0, help="first seed (default 0)")
    p.add_argument("--loss", type=_probability, default=0.0, help="message loss probability (default 0)")
    p.add_argument("--latency-ms", type=_non_negative, default=50.0, help="mean one-way latency (default 50)")
    p.add_argument("--partition", action="store_true",
                   help="cut off peers holding >= 1/3 of the weight from 0.5 s to 6 s (virtual)")
    p.add_argument("--real-signatures", action="store_true", help="sign and verify every message with Ed25519")
    p.add_argument("--baseline", choices=["wbft", "equal", "majority"], default="wbft",
                   help="wbft (default), equal (same core, all weights 1) or majority (no rounds)")
    p.add_argument("--static-weights", action="store_true",
                   help="wbft: keep the genesis weights (default: weights follow committed answer scores)")
    p.add_argument("--attack-from-height", type=int_range(1), default=None,
                   help="Byzantine peers only answer wrong (following the protocol) before this height, "
                        "then also misbehave (default: from the start)")
    p.add_argument("--epoch-length", type=int_range(4, 10_000), default=None,
                   help="membership epochs in heights (default: the genesis default, 100)")
    p.add_argument("--joiners", type=int_range(0, 64), default=0,
                   help="peers outside the genesis that ask to join, the k-th at height k + 1 (default 0)")
    p.add_argument("--byzantine-joiners", type=int_range(0, 64), default=0,
                   help="how many of the joiners play --behaviour (default 0)")
    p.add_argument("--leaves", type=int_range(0), default=0,
                   help="the last N genesis peers ask to leave at height 2 (default 0)")
    p.add_argument("--churn", action="store_true",
                   help="draw a churn scenario per seed (joins, leaves, crashes for good, Byzantine peers and "
                        "joiners, network faults; up to --peers genesis peers, at least 4); the other scenario "
                        "flags must keep their defaults")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_sim)
    return p


def build_config(args: argparse.Namespace) -> Any:
    """The :class:`~consensus.sim.SimConfig` for parsed flags, or a ``str`` saying what is wrong."""
    from consensus.sim import Joiner, Leaver, Partition, SimConfig, SimConfigError

    n = args.peers
    if n > 256:
        return f"--peers: at most 256, got {n}"
    if args.churn:
        if n < 4:
            return f"--churn: needs --peers of at least 4 (the most genesis peers drawn), got {n}"
        fixed = [flag for flag, dest, default in _CHURN_FIXED if getattr(args, dest) != default]
        if fixed:
            return f"--churn: draws the scenario per seed; drop {', '.join(fixed)}"
        return SimConfig(peers=n, heights=args.heights).validate()  # a placeholder: each seed draws its own
    if args.byzantine_joiners > args.joiners:
        return f"--byzantine-joiners: {args.byzantine_joiners} but only {args.joiners} joiners"
    if args.leaves >= n:
        return f"--leaves: {args.leaves} of {n} peers would leave; at least one must stay"
    if args.byzantine > n:
        return f"--byzantine: {args.byzantine} Byzantine peers but only {n} peers"
    if args.weights is not None and len(args.weights) != n:
        return f"--weights: {len(args.weights)} weights given for {n} peers"
    weights = args.weights or tuple([1] * n)
    partitions: tuple[Partition, ...] = ()
    if args.partition:
        side: list[int] = []
        for i in range(n):
            if 3 * sum(weights[j] for j in side) >= sum(weights):
                break
            side.append(i)
        if len(side) == n:
            return "--partition: cannot cut off 1/3 of the weight and leave anyone on the other side"
        partitions = (Partition(500, 6000, (tuple(side),)),)
    behaviour = "wrong" if args.behaviour == _MIXED else args.behaviour
    joiners = tuple(Joiner(at_height=k + 2, behaviour=behaviour if k < args.byzantine_joiners else "none")
                    for k in range(args.joiners))
    leaves = tuple(Leaver(i, at_height=2) for i in range(n - args.leaves, n))
    try:
        return SimConfig(peers=n, weights=args.weights, byzantine_pick=(behaviour,) * args.byzantine,
                         heights=args.heights, loss=args.loss, latency_ms=args.latency_ms, partitions=partitions,
                         real_signatures=args.real_signatures, baseline=args.baseline,
                         adaptive_weights=not args.static_weights,
                         attack_from_height=args.attack_from_height, epoch_length=args.epoch_length,
                         joiners=joiners, leaves=leaves).validate()
    except SimConfigError as exc:
        return str(exc)


_CHURN_FIXED = (("--byzantine", "byzantine", 0), ("--weights", "weights", None), ("--loss", "loss", 0.0),
                ("--latency-ms", "latency_ms", 50.0), ("--partition", "partition", False),
                ("--baseline", "baseline", "wbft"), ("--static-weights", "static_weights", False),
                ("--attack-from-height", "attack_from_height", None), ("--epoch-length", "epoch_length", None),
                ("--joiners", "joiners", 0), ("--byzantine-joiners", "byzantine_joiners", 0),
                ("--leaves", "leaves", 0), ("--real-signatures", "real_signatures", False))


def _cmd_sim(args: argparse.Namespace) -> int:
    from consensus.sim import SimConfig, churn_scenario, summarise
    from consensus.sim._world import derive_rng

    config = build_config(args)
    if isinstance(config, str):
        print(f"error: {config}", file=sys.stderr)
        return 2
    assert isinstance(config, SimConfig)
    weights = config.weight_list()
    if args.byzantine and 3 * sum(sorted(weights)[-args.byzantine:]) >= sum(weights):
        print(f"note: {args.byzantine} Byzantine peers may hold 1/3 of the weight or more at genesis; "
              "runs where they do at a height they attack promise neither safety nor termination",
              file=sys.stderr)
    behaviours = _behaviours()

    def config_for(seed: int) -> SimConfig:
        if args.churn:
            return churn_scenario(seed, max_peers=args.peers, heights=args.heights)
        if args.behaviour != _MIXED:
            return config
        rng = derive_rng(seed, "mixed")
        joiners = tuple(replace(j, behaviour=rng.choice(behaviours)) if k < args.byzantine_joiners else j
                        for k, j in enumerate(config.joiners))
        return replace(config, byzantine_pick=tuple(rng.choice(behaviours) for _ in range(args.byzantine)),
                       joiners=joiners)

    seeds = range(args.seed_start, args.seed_start + args.seeds)
    summary = summarise(config_for, seeds, wall_clock=time.perf_counter)
    out = summary.as_dict()
    if args.baseline == "majority":
        out["mean_rounds_per_height"] = None  # no rounds
    header = {"peers": args.peers, "byzantine": args.byzantine, "behaviour": args.behaviour,
              "weights": None if args.churn else list(weights), "heights": args.heights, "seed_start": args.seed_start,
              "loss": args.loss, "latency_ms": args.latency_ms, "partition": args.partition,
              "real_signatures": args.real_signatures, "baseline": args.baseline,
              "adaptive_weights": config.adaptive, "attack_from_height": args.attack_from_height,
              "epoch_length": args.epoch_length, "joiners": args.joiners,
              "byzantine_joiners": args.byzantine_joiners, "leaves": args.leaves, "churn": args.churn}
    if args.json:
        print(json.dumps({**header, **out}, indent=2))
    else:
        print(_render(header, out))
    return 1 if summary.broken_runs else 0


def _render(header: dict[str, Any], out: dict[str, Any]) -> str:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    lines = [
        f"sim: {header['peers']} peers, {header['byzantine']} Byzantine ({header['behaviour']}), "
        f"{header['heights']} heights, baseline {header['baseline']}, "
        f"{'real' if header['real_signatures'] else 'fast-path'} signatures, "
        f"{'adaptive' if header['adaptive_weights'] else 'static'} weights"
        + (f", attack from height {header['attack_from_height']}" if header["attack_from_height"] else "")
        + (", churn scenarios" if header["churn"] else "")
        + (f", {header['joiners']} joiners ({header['byzantine_joiners']} Byzantine)" if header["joiners"] else "")
        + (f", {header['leaves']} leaves" if header["leaves"] else "")
        + (f", epochs of {header['epoch_length']}" if header["epoch_length"] else ""),
        f"  runs                  {out['runs']}",
        f"  decisions             {out['decisions']}",
        f"  safety violations     {out['safety_violations']}",
        f"  termination failures  {out['termination_failures']}",
        f"  mean rounds/height    {'-' if out['mean_rounds_per_height'] is None else out['mean_rounds_per_height']}",
        f"  accuracy              {pct(out['accuracy'])}",
        f"  decisions/s (wall)    {out['decisions_per_second']}",
        f"  faulty weight share   {pct(out['faulty_share_last'])} at the last height (mean; max "
        f"{pct(out['faulty_share_last_max'])})",
        f"  runs outside model    {out['runs_outside_model']} (faulty weight >= 1/3 at some height)",
        f"  first failing seed    {'-' if out['first_failing_seed'] is None else out['first_failing_seed']}",
    ]
    if out["first_failure"]:
        lines.append(f"  first failure         {out['first_failure']}")
    return "\n".join(lines)
