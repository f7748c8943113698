"""The simulator with judges' verdicts (ADR 0022): honest judges that know the truth, and a Byzantine
proposer that leaves out every rejecting verdict; agreement, validity (the veto re-run on the carried
verdicts) and termination hold."""

from __future__ import annotations

from consensus.messages import Verdict, open_envelope
from consensus.sim import SimConfig, Simulation, check_run, proposer_of, run, simulate

SEEDS = range(4)


def _config(**kw: object) -> SimConfig:
    return SimConfig(peers=4, heights=8, error_rate=0.6, verdict_rule="veto", adaptive_weights=False, **kw)  # type: ignore[arg-type]


def test_honest_judges_decide_every_height_with_verdicts_carried() -> None:
    carried = 0
    for seed in SEEDS:
        sim = Simulation(_config(), seed)
        sim.run()
        assert check_run(sim) == []
        node = sim.nodes[0]
        assert sorted(node.decided) == list(range(1, 9))
        carried += sum(len(o.verdicts) for item in node.decided.values() for o in item.value.outcomes())
    assert carried > 0  # some heights split and were decided with verdicts


def test_a_proposer_omitting_rejections_breaks_neither_safety_nor_liveness() -> None:
    cfg = _config(byzantine=((1, "omit-verdicts"),))
    for seed in SEEDS:
        result = run(cfg, seed)  # raises SimFailure (with a replay command) on any violation
        assert result.heights_decided == 8
    by_omitter = 0
    for seed in SEEDS:
        sim = Simulation(cfg, seed)
        sim.run()
        omitter = sim.nodes[1].driver.me
        for item in sim.nodes[0].decided.values():
            if proposer_of(cfg, item.height, item.round) != 1:
                continue
            by_omitter += 1
            for o in item.value.outcomes():  # what it carried: no one else's rejection
                verdicts = [open_envelope(Verdict, e, sim.validators.public_key_of).message for e in o.verdicts]
                assert all(v >= -500 for x in verdicts if x.judge != omitter for _, v in x.verdicts)
    assert by_omitter > 0  # its proposals were decided (it is not simply never heard)


def test_non_judging_colluders_at_exactly_a_third_do_not_stall_the_veto() -> None:
    """6 equal peers, 2 colluders that answer alike and never judge (1/3 of the weight, the edge of the fault
    model): every query is contested (the 4 honest hold exactly 2/3), decided with the honest verdicts alone,
    and for the honest answer, the colluders' rejected by the 4 honest judges. With the omission rule at
    strictly under 1/3 this halted at height 1 (``max_events`` keeps such a failure to seconds)."""
    cfg = SimConfig(peers=6, heights=6, verdict_rule="veto", adaptive_weights=False,
                    byzantine=((0, "collude"), (1, "collude")), max_events=30_000)
    for seed in range(3):
        sim, result = simulate(cfg, seed)
        assert (result.violations, result.heights_decided, result.correct_heights) == ((), 6, 6), seed
        colluders = {sim.nodes[0].driver.me, sim.nodes[1].driver.me}
        for item in sim.nodes[2].decided.values():
            for o in item.value.outcomes():
                verdicts = [open_envelope(Verdict, e, sim.validators.public_key_of).message for e in o.verdicts]
                assert len(verdicts) >= 4 and not {v.judge for v in verdicts} & colluders  # by the honest only
                rated = [(p, v) for x in verdicts for p, v in x.verdicts]
                assert rated and all(p in colluders and v < -500 for p, v in rated)  # 4 of 6 reject them
