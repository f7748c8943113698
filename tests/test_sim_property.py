"""Property tests: random scenarios inside the fault model (faulty weight < 1/3), fast path."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.sim import random_scenario, run

_NO_DOUBLE_VOTE = ("wrong", "junk", "copy-late", "collude", "conflicting-proposals", "withhold", "crash", "slow")


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=2**32))
def test_property_random_faults_below_a_third_never_violate(seed: int) -> None:
    """Random peers, weights, behaviours (faulty weight < 1/3), loss, partitions, crashes: all invariants."""
    run(random_scenario(seed, behaviours=_NO_DOUBLE_VOTE), seed)


def test_property_double_voters_never_break_safety() -> None:
    """Double voters included: safety always holds; liveness only fails by the known tally bug."""
    for seed in range(150):
        config = random_scenario(seed)
        result = run(config, seed, check=False)
        assert result.within_model
        assert result.safety_violations == 0, result.violations
        if result.termination_failures:
            assert any(name == "double-vote" for _, name in config.byzantine)
