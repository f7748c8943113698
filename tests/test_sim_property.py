"""Property tests: scenarios drawn by Hypothesis inside the fault model (faulty weight < 1/3), on the shipping driver.

Scenarios are built from strategies (peers, weights, behaviours, loss,
partitions, crashes, slowness), so a failure shrinks to a small scenario
and prints its seed and replay command. Every invariant holds, termination
included: no tolerance for any behaviour.
"""

from __future__ import annotations

import pytest

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.driver.behaviours import behaviour_names
from consensus.sim import Crash, Partition, SimConfig, random_scenario, run
from consensus.sim._scenarios import faulty_weight_ok

FAULTY = [b for b in behaviour_names() if b != "none"]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[SimConfig, int]:
    n = draw(st.integers(4, 7))
    weights = draw(st.one_of(st.none(), st.tuples(*[st.sampled_from((1, 1, 2, 3, 5))] * n)))
    w = weights or (1,) * n
    byzantine: list[tuple[int, str]] = []
    for i in draw(st.permutations(range(n))):
        if draw(st.booleans()) and faulty_weight_ok(w, {j for j, _ in byzantine} | {i}):
            byzantine.append((i, draw(st.sampled_from(FAULTY))))
    honest = [i for i in range(n) if i not in {j for j, _ in byzantine}]
    extra: dict[str, object] = {}
    if draw(st.booleans()):
        extra["loss"] = draw(st.sampled_from((0.01, 0.05, 0.1)))
    if draw(st.booleans()):
        side = tuple(sorted(draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=n // 2))))
        start = draw(st.integers(0, 3000))
        extra["partitions"] = (Partition(start, start + draw(st.integers(500, 8000)), (side,)),)
    if draw(st.booleans()) and honest:
        at = draw(st.integers(0, 4000))
        extra["crashes"] = (Crash(draw(st.sampled_from(honest)), at, at + draw(st.integers(200, 6000))),)
    if draw(st.booleans()) and honest:
        extra["slowness"] = ((draw(st.sampled_from(honest)), draw(st.sampled_from((2.0, 5.0)))),)
    config = SimConfig(peers=n, weights=weights, byzantine=tuple(sorted(byzantine)), heights=3,
                       latency_ms=draw(st.sampled_from((5.0, 50.0, 200.0))),
                       error_rate=draw(st.sampled_from((0.0, 0.1, 0.3))), **extra)  # type: ignore[arg-type]
    return config.validate(), draw(st.integers(0, 2**32))


@pytest.mark.campaign
@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenarios())
def test_property_drawn_scenarios_never_violate(scenario: tuple[SimConfig, int]) -> None:
    """Random peers, weights, behaviours (faulty weight < 1/3), loss, partitions, crashes: every invariant."""
    config, seed = scenario
    run(config, seed)


@pytest.mark.campaign
def test_the_benchmark_scenarios_never_violate() -> None:
    """The seed-drawn scenarios of bench/sim_safety.py, double voters and forgers included: every invariant."""
    for seed in range(100):
        result = run(random_scenario(seed), seed)
        assert result.within_model and result.heights_decided == 3
