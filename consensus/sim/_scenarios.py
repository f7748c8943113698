"""Random scenarios inside the fault model, for property tests and the safety benchmark."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from consensus.driver.behaviours import behaviour_names
from consensus.sim._config import Crash, Partition, SimConfig
from consensus.sim._world import derive_rng

__all__ = ["random_scenario", "faulty_weight_ok"]


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
