"""Join, leave and churn in the deterministic simulator (issue 12).

Every ``run`` here checks agreement, validity, termination (a leaver only
before it stopped, a joiner every height), equivocation detection and equal
weight and membership digests on honest peers, and raises ``SimFailure``
with a replay command if one fails while the faulty weight of the set in
force stays below 1/3.
"""

from __future__ import annotations

from fractions import Fraction

import pytest

from consensus.sim import (
    Crash,
    Joiner,
    Leaver,
    SimConfig,
    SimConfigError,
    Simulation,
    check_run,
    churn_scenario,
    run,
)

EPOCH = 4


def _sim(config: SimConfig, seed: int) -> Simulation:
    sim = Simulation(config, seed)
    sim.run()
    assert check_run(sim) == []
    assert sim.within_model
    return sim


def _ids(sim: Simulation, h: int) -> set[int]:
    return {sim.index_of[p] for p in sim.sets[h].ids}


def _stability(sim: Simulation, node: int) -> dict[str, dict[str, int]]:
    """The stability record of ``node`` as an honest member's chain holds it at the end."""
    honest = next(i for i in sim.honest if i not in sim.left_at and i != node)
    chain = sim.nodes[honest].driver.chain  # type: ignore[attr-defined]
    epochs: dict[str, dict[str, int]] = chain.members.stability([sim.keys[node].peer_id])[sim.keys[node].peer_id][
        "epochs"]
    return epochs


def test_a_join_takes_effect_at_the_boundary_and_the_joiner_votes() -> None:
    config = SimConfig(peers=4, heights=12, epoch_length=EPOCH, joiners=(Joiner(at_ms=500),))
    for seed in range(3):
        sim = _sim(config, seed)
        assert 4 not in _ids(sim, 4) and all(4 in _ids(sim, h) for h in range(5, 13))
        assert sim.sets[5].weight_of(sim.keys[4].peer_id) * 10 == sim.sets[5].total  # the admission cap
        assert sorted(sim.decisions[4]) == list(range(1, 13))  # caught up before, then decided as a member
        record = _stability(sim, 4)  # folded from the last commits of later values
        assert "0" not in record and record["1"]["heights"] == 4
        assert sum(e["precommits"] for e in record.values()) >= 5 and record["2"]["missed"] == 0
        later = [sim.decisions[0][h] for h in range(7, 13)]
        assert any(p.signer == sim.keys[4].peer_id for rec in later for p in rec.precommits)


def test_a_join_at_a_height_through_a_crashed_contact_is_sent_again() -> None:
    config = SimConfig(peers=4, heights=12, epoch_length=EPOCH, joiners=(Joiner(at_height=2, via=3),),
                       crashes=(Crash(3, 500, 9000),))
    sim = _sim(config, 1)
    assert 4 in _ids(sim, 9)  # the first copy was lost at the crashed member; a retry reached another one
    assert sorted(sim.decisions[4]) == list(range(1, 13))


def test_a_leave_takes_effect_at_the_boundary_and_the_leaver_stops() -> None:
    config = SimConfig(peers=5, heights=12, epoch_length=EPOCH, leaves=(Leaver(1, at_height=2),))
    for seed in range(3):
        sim = _sim(config, seed)
        assert 1 in _ids(sim, 4) and all(1 not in _ids(sim, h) for h in range(5, 13))
        assert sim.left_at == {1: 5} and sim.nodes[1].down
        assert sorted(sim.decisions[1]) == [1, 2, 3, 4]  # required only while a member
        assert not sim.required(1, 5) and sim.required(1, 4)
        assert all(sorted(sim.decisions[i]) == list(range(1, 13)) for i in (0, 2, 3, 4))


def test_a_member_that_crashes_for_good_is_removed_after_an_epoch() -> None:
    config = SimConfig(peers=5, heights=12, epoch_length=EPOCH, crashes=(Crash(3, 300),))
    sim = _sim(config, 2)
    assert 3 in _ids(sim, 4) and 3 not in _ids(sim, 5)  # it missed both heights known when 5's set was fixed
    assert 0 < sim.faulty_share(sim.sets[4]) <= Fraction(1, 5)  # its weight already shrank (it answers nothing)
    assert all(sim.faulty_weight(sim.sets[h]) == 0 for h in range(5, 13))
    assert _stability(sim, 3)["0"]["missed"] >= 2


def test_a_member_slower_than_the_quorum_is_not_removed() -> None:
    """Regression: a last commit of a bare quorum made the slowest honest member (200 ms links) miss nearly
    every height, and removed it at the first boundary."""
    sim = _sim(SimConfig(peers=5, heights=10, epoch_length=5, latency_ms=200.0), 120)
    assert all(len(vs) == 5 for vs in sim.sets.values())


@pytest.mark.parametrize("behaviour", ["double-vote", "wrong", "withhold"])
def test_a_byzantine_joiner_is_admitted_at_a_tenth_and_changes_nothing_for_the_honest(behaviour: str) -> None:
    config = SimConfig(peers=4, heights=3 * EPOCH + 1, epoch_length=EPOCH,
                       joiners=(Joiner(at_ms=0, behaviour=behaviour),))
    sim = _sim(config, 4)
    joiner = sim.keys[4].peer_id
    assert 4 not in sim.honest and 4 in _ids(sim, 5)
    assert sim.faulty_share(sim.sets[5]) == Fraction(1, 10)
    if behaviour == "double-vote":
        assert {e.signer for e in sim.equivocations} == {4}  # caught by the honest members
    if behaviour == "wrong":  # scored 0 once its first answers are counted (until then trust stands for quality)
        weights = [sim.sets[h].weight_of(joiner) for h in range(5, 14)]
        assert max(weights) <= weights[0] * Fraction(17, 16) ** 2 and weights[-1] < weights[0] * Fraction(3, 4)
    if behaviour == "withhold":  # its precommits never reach a last commit: its first epoch is spared, then it goes
        assert 4 in _ids(sim, 9) and 4 not in _ids(sim, 13)
        assert _stability(sim, 4)["2"]["precommits"] == 0


def test_a_flood_of_byzantine_joiners_never_gets_a_third_within_three_epochs() -> None:
    flood = tuple(Joiner(at_ms=0, behaviour="collude") for _ in range(20))
    config = SimConfig(peers=4, heights=3 * EPOCH + 1, epoch_length=EPOCH, joiners=flood)
    for seed in range(2):
        sim = _sim(config, seed)
        shares = [sim.faulty_share(vs) for vs in sim.sets.values()]
        assert max(shares) < Fraction(1, 3)
        assert [len(sim.sets[h]) for h in (4, 5, 9, 13)] == [4, 5, 6, 7]  # one joiner a boundary (1/10 cap)


def test_churn_scenarios_keep_every_invariant() -> None:
    joined = left = 0
    for seed in range(6):
        config = churn_scenario(seed)
        result = run(config, seed)  # raises SimFailure within the model
        assert result.safety_violations == 0
        sim = Simulation(config, seed)
        sim.run()
        ever = {p for vs in sim.sets.values() for p in vs.ids}
        joined += sum(1 for k in range(len(config.joiners)) if sim.keys[config.peers + k].peer_id in ever)
        left += len(sim.left_at)
    assert joined >= 2 and left >= 2  # the seeds exercise both


def test_a_membership_run_replays_exactly_and_real_signatures_give_the_same_trace() -> None:
    config = SimConfig(peers=4, heights=10, epoch_length=EPOCH, joiners=(Joiner(at_ms=500),),
                       leaves=(Leaver(2, at_height=3),))
    fast = run(config, 1)
    assert run(SimConfig.from_json(config.to_json()), 1).trace_hash == fast.trace_hash
    from dataclasses import replace

    assert run(replace(config, real_signatures=True), 1).trace_hash == fast.trace_hash


@pytest.mark.parametrize("bad, field", [
    (dict(joiners=(Joiner(),)), "joiners"),
    (dict(joiners=(Joiner(at_ms=1, at_height=2),)), "joiners"),
    (dict(joiners=(Joiner(at_ms=1, behaviour="nope"),)), "joiners"),
    (dict(joiners=(Joiner(at_ms=1, via=4),)), "joiners"),
    (dict(leaves=(Leaver(4, at_ms=1),)), "leaves"),
    (dict(leaves=(Leaver(1, at_ms=1), Leaver(1, at_height=2))), "leaves"),
    (dict(leaves=(Leaver(1),)), "leaves"),
    (dict(epoch_length=3), "epoch_length"),
    (dict(epoch_length=4, baseline="equal"), "epoch_length"),
    (dict(joiners=(Joiner(at_ms=1),), adaptive_weights=False), "joiners"),
    (dict(crashes=(Crash(5, 1),), joiners=(Joiner(at_ms=1),)), "crashes"),
])
def test_membership_options_are_validated(bad: dict[str, object], field: str) -> None:
    with pytest.raises(SimConfigError, match=field):
        SimConfig(**bad).validate()  # type: ignore[arg-type]


def test_membership_options_round_trip_through_json() -> None:
    config = SimConfig(peers=5, epoch_length=6, joiners=(Joiner(at_ms=10, behaviour="wrong", via=2),
                                                          Joiner(at_height=3)),
                       leaves=(Leaver(1, at_height=2), Leaver(3, at_ms=700)), crashes=(Crash(5, 100, 900),))
    assert SimConfig.from_json(config.to_json()) == config
    with pytest.raises(SimConfigError, match="malformed"):
        SimConfig.from_json('{"leaves": [{"at_ms": 3}]}')
