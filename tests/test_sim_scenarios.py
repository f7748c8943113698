"""Named simulator scenarios by size and faults (n4f1 = 4 peers, 1 faulty), plus network faults.

Every ``run`` here checks agreement, validity, termination and equivocation
detection and raises ``SimFailure`` (with a replay command) if one fails.
"""

from __future__ import annotations

from consensus.sim import (
    Crash,
    Partition,
    RunResult,
    SimConfig,
    Simulation,
    check_run,
    proposer_of,
    run,
)

SEEDS = range(8)


def run_all(config: SimConfig, seeds: range = SEEDS) -> list[RunResult]:
    return [run(config, seed) for seed in seeds]


def test_n4f1_double_vote() -> None:
    config = SimConfig(byzantine=((2, "double-vote"),))
    for result in run_all(config):
        assert result.heights_decided == 3
        assert result.equivocations_reported > 0
    sim = Simulation(config, 1)
    sim.run()
    assert check_run(sim) == []
    assert {e.signer for e in sim.equivocations} == {2}
    assert {e.reporter for e in sim.equivocations} >= {0, 1, 3}  # every honest peer caught it
    assert {e.kind for e in sim.equivocations} == {"prevote", "precommit"}


def test_n4f1_conflicting_proposals() -> None:
    config = SimConfig(byzantine=((proposer_of(SimConfig(), 1, 0), "conflicting-proposals"),))
    for seed in SEEDS:
        lines: list[str] = []
        sim = Simulation(config, seed, log=lines.append)
        sim.run()
        assert check_run(sim) == []
        proposed = {line.split()[4] for line in lines if " prop 1.0 " in line}
        assert len(proposed) == 2  # two different values really went out in (1, 0)
    for result in run_all(config):
        assert result.heights_decided == 3
        assert result.rounds[0] >= 2  # the split round could not decide


def test_n4f1_withhold() -> None:
    for result in run_all(SimConfig(byzantine=((1, "withhold"),))):
        assert result.heights_decided == 3
        assert result.correct_heights == 3


def test_n4f1_crash_proposer() -> None:
    proposer = proposer_of(SimConfig(), 1, 0)
    config = SimConfig(byzantine=((proposer, "crash"),), crash_at_ms=100)
    for result in run_all(config):
        assert result.heights_decided == 3
        assert result.rounds[0] >= 2  # round 0 of height 1 had no proposer


def test_n7f2_wrong_answers() -> None:
    config = SimConfig(peers=7, byzantine_pick=("wrong", "wrong"), error_rate=0.1)
    results = run_all(config)
    assert all(r.heights_decided == 3 for r in results)
    assert sum(r.correct_heights for r in results) >= 0.9 * 3 * len(results)
    perfect = run_all(SimConfig(peers=7, byzantine_pick=("wrong", "wrong")))
    assert all(r.correct_heights == 3 for r in perfect)


def test_n7f2_mixed_behaviours() -> None:
    for a, b in (("junk", "copy-late"), ("collude", "collude"), ("slow", "double-vote")):
        for result in run_all(SimConfig(peers=7, byzantine_pick=(a, b)), range(4)):
            assert result.heights_decided == 3


def test_partition_of_a_third_stalls_then_heals() -> None:
    config = SimConfig(partitions=(Partition(0, 8000, ((0, 1),)),))  # 2 of 4: neither side has 2/3
    for result in run_all(config):
        assert result.heights_decided == 3
        assert min(result.decided_at_ms) >= 8000  # nothing was decided while cut


def test_partition_below_a_third_does_not_stall() -> None:
    config = SimConfig(partitions=(Partition(0, 8000, ((3,),)),))
    for result in run_all(config):
        assert result.heights_decided == 3
        assert min(result.decided_at_ms) < 8000


def test_weighted_heavy_honest_node_carries_decisions() -> None:
    # Node 2 holds 5 of 8: with node 3 it has 6 > 2/3 of 8, so two colluding (or silent) light nodes are < 1/3.
    weights = (1, 1, 5, 1)
    colluders = ((0, "collude"), (1, "collude"))
    wbft = run_all(SimConfig(weights=weights, byzantine=colluders))
    assert all(r.heights_decided == 3 and r.correct_heights == 3 and r.within_model for r in wbft)
    # The same faults with equal weights are 2 of 4: the colluders win every tie of 2 against 2.
    equal = [run(SimConfig(weights=weights, byzantine=colluders, baseline="equal"), s, check=False) for s in SEEDS]
    assert not equal[0].within_model
    assert sum(r.correct_heights for r in equal) == 0
    # Silent light nodes: weighted peers still decide, equal weights stall.
    silent = ((0, "withhold"), (1, "withhold"))
    assert all(r.heights_decided == 3 for r in run_all(SimConfig(weights=weights, byzantine=silent)))
    stalled = run(SimConfig(weights=weights, byzantine=silent, baseline="equal", heights=1, height_budget_ms=15000),
                  0, check=False)
    assert stalled.heights_decided == 0


def test_majority_baseline_disagrees_under_equivocation() -> None:
    # Models that err 0-40% of the time split the honest answers; one peer equivocating its answer
    # (the majority analogue of double voting) then tips honest peers different ways.
    faults = {"byzantine": ((0, "double-vote"),), "error_rate": 0.4}
    majority = [run(SimConfig(baseline="majority", **faults), s, check=False) for s in range(30)]  # type: ignore[arg-type]
    assert sum(r.safety_violations for r in majority) > 0
    wbft = [run(SimConfig(**faults), s) for s in range(30)]  # type: ignore[arg-type]
    assert all(r.safety_violations == 0 and r.heights_decided == 3 for r in wbft)


def test_honest_crash_and_restart_catches_up() -> None:
    for result in run_all(SimConfig(crashes=(Crash(1, 500, 5000),))):
        assert result.heights_decided == 3
    for result in run_all(SimConfig(crashes=(Crash(2, 1200, 1600),), latency_ms=5)):  # mid-round, WAL replay
        assert result.heights_decided == 3


def test_slow_honest_peer_and_loss() -> None:
    config = SimConfig(peers=5, slowness=((4, 5.0),), loss=0.1, byzantine_pick=("slow",))
    for result in run_all(config):
        assert result.heights_decided == 3


def test_loss_without_gossip_can_stall() -> None:
    # The current runner neither re-sends nor relays: lost votes can leave every peer waiting for ever.
    config = SimConfig(loss=0.2, gossip_ms=0, catchup=False, height_budget_ms=20000)
    results = [run(config, s, check=False) for s in range(10)]
    assert any(r.termination_failures for r in results)
    assert all(r.safety_violations == 0 for r in results)


def test_many_queries_per_height_under_a_double_voter_and_loss() -> None:
    """Queries asked together share heights (ADR 0020); agreement, validity and every query decided once hold."""
    config = SimConfig(byzantine=((2, "double-vote"),), heights=12, query_interval_ms=50, queries_per_height=16,
                       loss=0.05)
    for seed in range(4):
        sim = Simulation(config, seed)
        sim.run()
        assert check_run(sim) == []
        values = {h: r.value for r in sim.decisions[0].values() for h in [r.height] if r.value is not None}
        assert len(values) < 12  # fewer heights than queries
        assert max(len(v.outcomes()) for v in values.values()) > 1
        ids = [q for v in values.values() for q in v.query_ids()]
        assert len(ids) == len(set(ids)) == 12
