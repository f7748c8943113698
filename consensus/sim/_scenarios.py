"""Random scenarios inside the fault model, for property tests and the safety benchmark.

:func:`random_scenario` draws a fixed genesis set under faults;
:func:`churn_scenario` adds membership churn: short epochs, joiners (some
Byzantine), leaves and members that crash for good, keeping a static
estimate of the faulty weight below 1/3 (the run itself then decides
whether it stayed inside the model: weights adapt as it goes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from consensus.driver.behaviours import behaviour_names
from consensus.sim._config import Crash, Joiner, Leaver, Partition, SimConfig
from consensus.sim._world import derive_rng

__all__ = ["churn_scenario", "random_scenario", "faulty_weight_ok"]


def faulty_weight_ok(weights: tuple[int, ...], faulty: set[int]) -> bool:
    """Faulty weight strictly below one third of the total: ``3 * f < total``."""
    return 3 * sum(weights[i] for i in faulty) < sum(weights)


def random_scenario(seed: int, *, max_peers: int = 7, heights: int = 3, network_faults: bool = True,
                    behaviours: Sequence[str] | None = None) -> SimConfig:
    """A config drawn from ``seed``: peers, weights, mixed Byzantine behaviours (faulty weight < 1/3),
    and optionally loss, a healing partition, an honest crash/restart, slowness and model errors."""
    rng = derive_rng(seed, "scenario")
    n = rng.randrange(4, max_peers + 1)
    weights = tuple(rng.choice((1, 1, 1, 2, 3, 5)) for _ in range(n)) if rng.random() < 0.5 else None
    w = weights or tuple([1] * n)
    if behaviours is None:
        behaviours = [b for b in behaviour_names() if b != "none"]
    order = list(range(n))
    rng.shuffle(order)
    faulty: set[int] = set()
    byzantine: list[tuple[int, str]] = []
    for i in order:
        if rng.random() < 0.5 and faulty_weight_ok(w, faulty | {i}):
            faulty.add(i)
            byzantine.append((i, rng.choice(behaviours)))
    cfg = SimConfig(peers=n, weights=weights, byzantine=tuple(sorted(byzantine)), heights=heights,
                    latency_ms=rng.choice((5.0, 50.0, 200.0)), error_rate=rng.choice((0.0, 0.0, 0.1, 0.3)))
    if not network_faults:
        return cfg
    honest = [i for i in range(n) if i not in faulty]
    extra: dict[str, object] = {}
    if rng.random() < 0.3:
        extra["loss"] = rng.choice((0.01, 0.05, 0.1))
    if rng.random() < 0.3:
        side = tuple(sorted(rng.sample(range(n), rng.randrange(1, n // 2 + 1))))
        start = rng.randrange(0, 3000)
        extra["partitions"] = (Partition(start, start + rng.randrange(500, 8000), (side,)),)
    if rng.random() < 0.3 and honest:
        at = rng.randrange(0, 4000)
        extra["crashes"] = (Crash(rng.choice(honest), at, at + rng.randrange(200, 6000)),)
    if rng.random() < 0.2 and honest:
        extra["slowness"] = ((rng.choice(honest), rng.choice((2.0, 5.0))),)
    return replace(cfg, **extra)  # type: ignore[arg-type]


ADMISSION_SHARE = 0.1  # MembershipParams' default admission_share: the joiners' weight per boundary


def churn_scenario(seed: int, *, max_peers: int = 7, heights: int = 10, max_joiners: int = 3,
                   network_faults: bool = True, behaviours: Sequence[str] | None = None) -> SimConfig:
    """A config drawn from ``seed`` with membership churn: 4-``max_peers`` genesis peers with random
    weights and Byzantine behaviours, an epoch of 4-6 heights, up to ``max_joiners`` joiners (at a time or
    a height, a third of them Byzantine), up to two leaves, sometimes a member that crashes for good, and
    optionally loss, a healing partition, an honest crash/restart and slowness.

    Estimate kept below 1/3 (a drawn fault that would break it is dropped): the faulty weight (Byzantine
    and crashed-for-good members) over the weight left once the honest leavers went, plus one admission
    share per boundary that admits a Byzantine joiner. Weights also adapt to the answers during the run,
    so a run can still leave the model: :attr:`~consensus.sim.RunResult.within_model` says whether it did.
    """
    rng = derive_rng(seed, "churn")
    n = rng.randrange(4, max_peers + 1)
    weights = tuple(rng.choice((1, 1, 1, 2, 3, 5)) for _ in range(n)) if rng.random() < 0.5 else None
    w = weights or tuple([1] * n)
    total = sum(w)
    epoch = rng.choice((4, 4, 5, 6))
    boundaries = sum(1 for b in range(epoch + 1, heights + 1, epoch))
    if behaviours is None:
        behaviours = [b for b in behaviour_names() if b != "none"]
    order = list(range(n))
    rng.shuffle(order)
    faulty: set[int] = set()
    byzantine: list[tuple[int, str]] = []
    for i in order:
        if rng.random() < 0.4 and 4 * sum(w[j] for j in faulty | {i}) < total:  # at most a quarter at genesis
            faulty.add(i)
            byzantine.append((i, rng.choice(behaviours)))
    honest = [i for i in range(n) if i not in faulty]
    horizon_ms = heights * 1000

    def estimate(gone: set[int], left: set[int], byz_joiners: int) -> float:
        bad = sum(w[i] for i in faulty | gone)
        room = total - sum(w[i] for i in left if i not in faulty and i not in gone)
        return bad / room + ADMISSION_SHARE * min(byz_joiners, boundaries) if room > 0 else 1.0

    gone: set[int] = set()  # honest members that crash for good
    crashes: list[Crash] = []
    if rng.random() < 0.3 and len(honest) > 2:
        i = rng.choice(honest)
        if estimate({i}, set(), 0) < 1 / 3:
            gone.add(i)
            crashes.append(Crash(i, rng.randrange(0, horizon_ms // 2)))
    left: set[int] = set()
    leaves: list[Leaver] = []
    for _ in range(rng.choice((0, 1, 1, 2))):
        candidates = [i for i in range(n) if i not in gone and i not in left]
        if len(candidates) - 1 < 3:  # keep three members
            break
        i = rng.choice(candidates)
        if estimate(gone, left | {i}, 0) >= 1 / 3:
            continue
        left.add(i)
        if rng.random() < 0.5:
            leaves.append(Leaver(i, at_height=rng.randrange(1, max(2, heights - epoch))))
        else:
            leaves.append(Leaver(i, at_ms=rng.randrange(0, max(1, horizon_ms // 2))))
    joiners: list[Joiner] = []
    byz_joiners = 0
    for k in range(rng.randrange(0, max_joiners + 1)):
        behaviour = "none"
        if rng.random() < 1 / 3 and estimate(gone, left, byz_joiners + 1) < 1 / 3:
            behaviour = rng.choice(behaviours)
            byz_joiners += 1
        via = rng.randrange(n) if rng.random() < 0.5 else None
        if rng.random() < 0.5:
            joiners.append(Joiner(at_height=rng.randrange(1, max(2, heights - epoch)), behaviour=behaviour, via=via))
        else:
            joiners.append(Joiner(at_ms=rng.randrange(0, max(1, horizon_ms // 2)), behaviour=behaviour, via=via))
    cfg = SimConfig(peers=n, weights=weights, byzantine=tuple(sorted(byzantine)), heights=heights,
                    latency_ms=rng.choice((5.0, 50.0, 200.0)), error_rate=rng.choice((0.0, 0.0, 0.1, 0.3)),
                    epoch_length=epoch, joiners=tuple(joiners), leaves=tuple(sorted(leaves, key=lambda x: x.node)),
                    crashes=tuple(crashes))
    if not network_faults:
        return cfg
    nodes = n + len(joiners)
    steady = [i for i in honest if i not in gone] + [n + k for k, j in enumerate(joiners) if j.behaviour == "none"]
    extra: dict[str, object] = {}
    if rng.random() < 0.3:
        extra["loss"] = rng.choice((0.01, 0.05, 0.1))
    if rng.random() < 0.3:
        side = tuple(sorted(rng.sample(range(nodes), rng.randrange(1, nodes // 2 + 1))))
        start = rng.randrange(0, 3000)
        extra["partitions"] = (Partition(start, start + rng.randrange(500, 8000), (side,)),)
    if rng.random() < 0.3 and steady:
        at = rng.randrange(0, 4000)
        extra["crashes"] = (*crashes, Crash(rng.choice(steady), at, at + rng.randrange(200, 6000)))
    if rng.random() < 0.2 and steady:
        extra["slowness"] = ((rng.choice(steady), rng.choice((2.0, 5.0))),)
    return replace(cfg, **extra)  # type: ignore[arg-type]
