"""Running simulations: one run with its invariants, replays, and summaries of many runs."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from consensus.driver.behaviours import BEHAVIOURS
from consensus.sim._config import SimConfig
from consensus.sim._engine import Simulation
from consensus.sim._invariants import Violation, check_run

__all__ = ["RunResult", "SimFailure", "run", "replay", "replay_command", "simulate", "Summary", "summarise"]

SAFETY_KINDS = ("agreement", "validity", "honest-equivocation", "undetected-equivocation", "disagreement",
                "weights-divergence")


@dataclass(frozen=True)
class RunResult:
    """What one run produced; ``trace_hash`` identifies its exact event sequence."""

    seed: int
    config: SimConfig
    trace_hash: str
    violations: tuple[Violation, ...]
    within_model: bool
    heights_decided: int  # heights decided by every honest node
    correct_heights: int  # of those, heights whose agreed answer is the correct one
    honest_decisions: int  # decision records of honest nodes (any height)
    rounds: tuple[int, ...]  # rounds used (decision round + 1) per decided height
    decided_at_ms: tuple[float, ...]  # virtual time of the first honest decision per decided height
    decided_heights: tuple[int, ...]  # the heights decided by every honest node, ascending
    correct_flags: tuple[bool, ...]  # per decided height: whether the agreed answer is correct
    faulty_shares: tuple[float, ...]  # faulty weight / total of the set in force at heights 1, 2, ... reached
    events: int
    end_ms: float
    messages_sent: int
    messages_lost: int
    equivocations_reported: int
    cpu_ns: dict[str, int] = field(default_factory=dict)  # CPU per category (only with a cpu_clock)
    cpu_calls: dict[str, int] = field(default_factory=dict)

    @property
    def safety_violations(self) -> int:
        return sum(1 for v in self.violations if v.kind in SAFETY_KINDS)

    @property
    def termination_failures(self) -> int:
        return sum(1 for v in self.violations if v.kind == "termination")

    @property
    def faulty_share_last(self) -> float | None:
        """The faulty peers' share of the weight at the last height reached."""
        return self.faulty_shares[-1] if self.faulty_shares else None

    def accuracy_from(self, height: int) -> tuple[int, int]:
        """(correct, decided) over the heights decided by every honest node from ``height`` on."""
        flags = [c for h, c in zip(self.decided_heights, self.correct_flags) if h >= height]
        return sum(flags), len(flags)


class SimFailure(AssertionError):
    """An invariant failed; the message holds the seed and a one-line replay command."""

    def __init__(self, result: RunResult) -> None:
        self.result = result
        first = result.violations[0]
        more = f" (+{len(result.violations) - 1} more)" if len(result.violations) > 1 else ""
        super().__init__(f"{first.kind} violated at seed {result.seed}{more}: {first.detail}\n"
                         f"  replay: {replay_command(result.seed, result.config)}")


def replay_command(seed: int, config: SimConfig) -> str:
    """A shell command that replays ``(seed, config)`` and prints its trace hash and violations."""
    modules = sorted({BEHAVIOURS[name].__module__ for name in _behaviour_names(config)} - {
        "consensus.driver.behaviours"})
    imports = "".join(f" --import {shlex.quote(m)}" for m in modules)
    paths = sorted({str(Path(f).parent) for m in modules if "." not in m
                    and (f := getattr(sys.modules.get(m), "__file__", None)) is not None})
    env = f"PYTHONPATH={shlex.quote(':'.join(paths))} " if paths else ""
    return (f"{env}{sys.executable} -m consensus.sim --seed {seed} --config {shlex.quote(config.to_json())}"
            f"{imports}")


def _behaviour_names(config: SimConfig) -> set[str]:
    return {name for _, name in config.byzantine} | set(config.byzantine_pick)


def run(config: SimConfig, seed: int, *, check: bool = True,
        cpu_clock: Callable[[], int] | None = None) -> RunResult:
    """Simulate ``config`` under ``seed`` and check the invariants.

    Raises :class:`SimFailure` when ``check`` and an invariant fails while the
    fault model holds (faulty weight below 1/3); otherwise the violations are
    only reported in the result.
    """
    sim, result = simulate(config, seed, cpu_clock=cpu_clock)
    if check and result.violations and sim.within_model and config.baseline != "majority":
        raise SimFailure(result)
    return result


def simulate(config: SimConfig, seed: int, *,
             cpu_clock: Callable[[], int] | None = None) -> tuple[Simulation, RunResult]:
    """Simulate and check without raising; the finished :class:`Simulation` too (its nodes' chains, for
    reports such as the membership changes a run went through)."""
    sim = Simulation(config, seed, cpu_clock=cpu_clock)
    sim.run()
    return sim, _result(sim, tuple(check_run(sim)))


def replay(seed: int, config: SimConfig) -> RunResult:
    """Run again exactly (same trace hash), without raising."""
    return run(config, seed, check=False)


def _result(sim: Simulation, violations: tuple[Violation, ...]) -> RunResult:
    rounds: list[int] = []
    times: list[float] = []
    decided: list[int] = []
    flags: list[bool] = []
    for h in range(1, sim.config.heights + 1):
        recs = [sim.decisions[i][h] for i in sim.honest if h in sim.decisions[i]]
        if not recs or len(recs) < sum(1 for i in sim.honest if sim.required(i, h)):
            continue
        decided.append(h)
        first = min(recs, key=lambda r: (r.time_us, r.node))
        rounds.append(first.round + 1)
        times.append(first.time_us / 1000)
        flags.append(all(sim.correct(r) for r in recs))
    heights_decided, correct = len(decided), sum(flags)
    shares = tuple(round(float(sim.faulty_share(vs)), 6) for vs in sim.sets.values())
    c = sim.counters
    return RunResult(
        seed=sim.seed, config=sim.config, trace_hash=sim.trace_hash, violations=violations,
        within_model=sim.within_model, heights_decided=heights_decided, correct_heights=correct,
        honest_decisions=sum(len(sim.decisions[i]) for i in sim.honest), rounds=tuple(rounds),
        decided_at_ms=tuple(times), decided_heights=tuple(decided), correct_flags=tuple(flags),
        faulty_shares=shares, events=c.events, end_ms=sim.now / 1000, messages_sent=c.sent, messages_lost=c.lost,
        equivocations_reported=len(sim.equivocations), cpu_ns=dict(c.cpu_ns), cpu_calls=dict(c.cpu_calls),
    )


@dataclass
class Summary:
    """Totals over many runs, as the ``sim`` command prints them."""

    runs: int = 0
    decisions: int = 0
    safety_violations: int = 0
    termination_failures: int = 0
    rounds_total: int = 0
    correct: int = 0
    events: int = 0
    equivocations_reported: int = 0
    wall_s: float = 0.0
    first_failing_seed: int | None = None
    first_failure: str | None = None
    broken_runs: int = 0  # runs whose violations break a promise (faulty weight < 1/3, not the majority baseline)
    failing_seeds: list[int] = field(default_factory=list)
    outside_model: int = 0  # runs whose faulty weight reached 1/3 at some height (termination not promised)
    share_sums: list[float] = field(default_factory=list)  # per height: sum of faulty shares over runs
    share_counts: list[int] = field(default_factory=list)  # per height: runs that reached it
    share_last_sum: float = 0.0
    share_last_max: float | None = None

    def add(self, r: RunResult) -> None:
        self.runs += 1
        self.decisions += r.heights_decided
        self.safety_violations += r.safety_violations
        self.termination_failures += r.termination_failures
        self.rounds_total += sum(r.rounds)
        self.correct += r.correct_heights
        self.events += r.events
        self.equivocations_reported += r.equivocations_reported
        self.outside_model += not r.within_model
        for k, share in enumerate(r.faulty_shares):
            if k == len(self.share_sums):
                self.share_sums.append(0.0)
                self.share_counts.append(0)
            self.share_sums[k] += share
            self.share_counts[k] += 1
        last = r.faulty_share_last
        if last is not None:
            self.share_last_sum += last
            self.share_last_max = last if self.share_last_max is None else max(self.share_last_max, last)
        if r.violations and r.within_model and r.config.baseline != "majority":
            self.broken_runs += 1
        if r.violations:
            self.failing_seeds.append(r.seed)
            if self.first_failing_seed is None:
                self.first_failing_seed = r.seed
                self.first_failure = f"{r.violations[0]}  replay: {replay_command(r.seed, r.config)}"

    @property
    def faulty_share_by_height(self) -> list[float]:
        """Mean over runs of the faulty weight share at heights 1, 2, ... (runs that reached the height)."""
        return [round(t / c, 6) for t, c in zip(self.share_sums, self.share_counts)]

    def as_dict(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "decisions": self.decisions,
            "safety_violations": self.safety_violations,
            "termination_failures": self.termination_failures,
            "mean_rounds_per_height": round(self.rounds_total / self.decisions, 4) if self.decisions else None,
            "accuracy": round(self.correct / self.decisions, 4) if self.decisions else None,
            "decisions_per_second": round(self.decisions / self.wall_s, 2) if self.wall_s > 0 else None,
            "runs_per_second": round(self.runs / self.wall_s, 2) if self.wall_s > 0 else None,
            "events": self.events,
            "equivocations_reported": self.equivocations_reported,
            "wall_s": round(self.wall_s, 3),
            "broken_runs": self.broken_runs,
            "runs_outside_model": self.outside_model,
            "faulty_share_last": round(self.share_last_sum / self.runs, 6) if self.runs else None,
            "faulty_share_last_max": self.share_last_max,
            "faulty_share_by_height": self.faulty_share_by_height,
            "first_failing_seed": self.first_failing_seed,
            "first_failure": self.first_failure,
        }


def summarise(config: SimConfig | Callable[[int], SimConfig], seeds: Iterable[int], *,
              wall_clock: Callable[[], float] | None = None,
              on_result: Callable[[RunResult], None] | None = None) -> Summary:
    """Run ``config`` (or ``config(seed)``) under every seed, never raising, and total the results."""
    summary = Summary()
    start = wall_clock() if wall_clock else 0.0
    for seed in seeds:
        result = run(config(seed) if callable(config) else config, seed, check=False)
        summary.add(result)
        if on_result is not None:
            on_result(result)
    if wall_clock is not None:
        summary.wall_s = wall_clock() - start
    return summary
