"""The verdict rule (consensus/verdicts.py): quorum first, judges decide contested splits, recusal, ties."""

from __future__ import annotations

import random
from typing import Any

import pytest

from consensus.grouping import choose, pair_count, pair_index
from consensus.verdicts import decide, group_verdict, judge_on_group, missing_judges_ok, rejection_pending


def _sims(labels: list[str]) -> list[int]:
    """1000 for equal labels, 0 otherwise, upper triangle."""
    n = len(labels)
    out = [0] * pair_count(n)
    for i in range(n):
        for j in range(i + 1, n):
            out[pair_index(n, i, j)] = 1000 if labels[i] == labels[j] else 0
    return out


def _verdicts(labels: list[str], judged: dict[int, dict[str, int]]) -> list[list[int | None]]:
    """Judge ``j`` gives ``judged[j][label]`` to every answer with that label (others: no verdict)."""
    return [[judged.get(j, {}).get(lab) for lab in labels] for j in range(len(labels))]


# Two families, two peers each: S answers "Lyon" (wrong), G answers "Paris" (right).
SPLIT = ["Lyon", "Lyon", "Paris", "Paris"]


def test_without_verdicts_it_is_the_grouping_rule_on_random_inputs() -> None:
    rng = random.Random(15)
    for _ in range(2000):
        n = rng.randint(1, 7)
        weights = [rng.choice([1, 1, 2, 3, 5, 1000, 1001]) for _ in range(n)]
        sims = [rng.choice([-200, 0, 500, 799, 800, 950, 1000]) for _ in range(pair_count(n))]
        eligible = [rng.random() < 0.7 for _ in range(n)]
        assert decide(weights, sims, 800, eligible=eligible).group == choose(weights, sims, 800, eligible)


def test_judges_decide_a_two_two_split_and_recuse_from_their_own_side() -> None:
    weights = [1, 1, 1, 1]
    sims = _sims(SPLIT)
    assert choose(weights, sims, 800).representative == 0  # today: the lowest index wins the tie
    # G judges reject "Lyon", S judges accept "Paris" a little: "Paris" wins by verdict.
    verdicts = _verdicts(SPLIT, {0: {"Paris": 100}, 1: {"Paris": 50}, 2: {"Lyon": -300}, 3: {"Lyon": -200}})
    d = decide(weights, sims, 800, verdicts=verdicts)
    assert (d.group.members, d.reason) == ((2, 3), "verdict")
    # Each family swearing by its own answer changes nothing: those verdicts are recused.
    for j, own in enumerate(SPLIT):
        verdicts[j][j] = 1000
        verdicts[j][[1, 0, 3, 2][j]] = 1000  # the other peer of the same family
    assert decide(weights, sims, 800, verdicts=verdicts).group.members == (2, 3)


def test_a_quorum_of_weight_wins_whatever_the_verdicts() -> None:
    labels = ["Lyon", "Lyon", "Lyon", "Paris"]
    verdicts = _verdicts(labels, {3: {"Lyon": -1000}})
    d = decide([1, 1, 1, 1], _sims(labels), 800, verdicts=verdicts)
    assert (d.group.members, d.reason) == ((0, 1, 2), "quorum")
    # 2/3 exactly is not a quorum: the judge decides.
    labels = ["Lyon", "Lyon", "Paris"]
    d = decide([1, 1, 1], _sims(labels), 800, verdicts=_verdicts(labels, {2: {"Lyon": -1000}}))
    assert (d.group.members, d.reason) == ((2,), "verdict")


def test_only_groups_at_least_half_as_heavy_as_the_heaviest_contend() -> None:
    labels = ["Lyon", "Lyon", "Lyon", "Paris", "Rome", "Rome"]
    weights = [1, 1, 1, 1, 1, 1]
    verdicts = _verdicts(labels, {j: {"Lyon": -1000, "Paris": 1000, "Rome": 0} for j in range(6)})
    d = decide(weights, _sims(labels), 800, verdicts=verdicts)  # "Paris" (1) weighs under half of 3
    assert d.group.members == (4, 5)
    assert {g.representative for g in d.contenders} == {4}


def test_verdicts_within_the_margin_fall_back_to_weight_and_tie_breaks() -> None:
    weights = [1, 1, 1, 1]
    sims = _sims(SPLIT)
    verdicts = _verdicts(SPLIT, {0: {"Paris": 10}, 1: {"Paris": 10}, 2: {"Lyon": -10}, 3: {"Lyon": -10}})
    assert decide(weights, sims, 800, verdicts=verdicts, margin=0).group.members == (2, 3)
    d = decide(weights, sims, 800, verdicts=verdicts, margin=20)
    assert (d.group.members, d.reason) == ((0, 1), "tie-break")
    # Heavier wins inside the margin; outside it, the verdict beats weight.
    assert decide([2, 2, 1, 1], sims, 800, verdicts=verdicts, margin=20).group.members == (0, 1)
    assert decide([2, 2, 1, 1], sims, 800, verdicts=verdicts, margin=0).group.members == (2, 3)


def test_confidence_and_relevance_only_break_ties() -> None:
    weights = [1, 1, 1, 1]
    sims = _sims(SPLIT)
    assert decide(weights, sims, 800, confidence=[-900, -900, -100, -100]).group.members == (2, 3)
    assert decide(weights, sims, 800, confidence=[-100, -100, -900, -900]).group.members == (0, 1)
    # An irrelevant answer loses the tie, whatever its confidence ...
    d = decide(weights, sims, 800, confidence=[-100, -100, -900, -900], relevance=[100, 100, 600, 600],
               relevance_floor=300)
    assert d.group.members == (2, 3)
    # ... but not a verdict, and never weight.
    verdicts = _verdicts(SPLIT, {2: {"Lyon": 500}, 3: {"Lyon": 500}, 0: {"Paris": 0}, 1: {"Paris": 0}})
    assert decide(weights, sims, 800, verdicts=verdicts, relevance=[100, 100, 600, 600],
                  relevance_floor=300).group.members == (0, 1)
    assert decide([2, 2, 1, 1], sims, 800, relevance=[100, 100, 600, 600],
                  relevance_floor=300).group.members == (0, 1)


def test_group_verdict_is_the_floor_of_the_weighted_mean_of_outside_judges() -> None:
    labels = ["a", "b", "b", "c"]
    group = decide([1, 1, 1, 1], _sims(labels), 800).contenders[0]
    assert group.members == (1, 2)
    verdicts: list[list[int | None]] = [[None, -5, -5, None], [None, 900, 900, None],
                                        [None, 900, 900, None], [None, 2, 2, None]]
    assert group_verdict(group, [3, 1, 1, 1], verdicts) == (3 * -5 + 1 * 2) // 4  # -5 (floor of -4.25)
    assert group_verdict(group, [3, 1, 1, 1], [[None] * 4] * 4) == 0


def test_colluders_rejecting_every_honest_answer_cannot_pick_between_equal_honest_families() -> None:
    # Two S peers (wrong), two G peers (right), two colluders with "Rome" and -1000 for everyone else.
    labels = ["Lyon", "Lyon", "Paris", "Paris", "Rome", "Rome"]
    honest = {"Lyon": -200, "Paris": 300, "Rome": -600}
    judged = {j: dict(honest) for j in range(4)}
    judged.update({4: {"Lyon": -1000, "Paris": -1000}, 5: {"Lyon": -1000, "Paris": -1000}})
    d = decide([1] * 6, _sims(labels), 800, verdicts=_verdicts(labels, judged))
    assert d.group.members == (2, 3)


def test_bad_shapes_and_ranges_raise() -> None:
    sims = _sims(SPLIT)
    with pytest.raises(ValueError):
        decide([1, 1, 1, 1], sims, 800, verdicts=[[0, 0, 0, 0]] * 3)
    with pytest.raises(ValueError):
        decide([1, 1, 1, 1], sims, 800, verdicts=[[0, 0, 0, 1001]] * 4)
    with pytest.raises(ValueError):
        decide([1, 1, 1, 1], sims, 800, confidence=[0, 0, 0])
    with pytest.raises(ValueError):
        decide([1, 1, 1, 1], sims, 800, margin=-1)


def test_veto_rejects_a_group_only_with_more_than_a_third_of_all_weight() -> None:
    labels = ["Lyon", "Lyon", "Paris", "Paris", "Rome", "Rome"]
    sims = _sims(labels)
    colluders = {4: {"Lyon": -1000, "Paris": -1000}, 5: {"Lyon": -1000, "Paris": -1000}}
    # Colluders alone (1/3 of the weight, not more) reject nothing: the old tie-break (lowest index) stands.
    d = decide([1] * 6, sims, 800, verdicts=_verdicts(labels, colluders), rule="veto")
    assert (d.group.members, d.reason) == ((0, 1), "tie-break")
    # One honest judge rejecting "Lyon" tips it; honest judges reject "Rome" as well.
    judged = {**colluders, 2: {"Lyon": -10, "Rome": -500}, 0: {"Rome": -500}, 1: {"Rome": -500}}
    d = decide([1] * 6, sims, 800, verdicts=_verdicts(labels, judged), rule="veto")
    assert (d.group.members, d.reason) == ((2, 3), "verdict")
    # Within the margin a negative verdict is no rejection.
    assert decide([1] * 6, sims, 800, verdicts=_verdicts(labels, judged), rule="veto",
                  margin=10).group.members == (0, 1)


def test_a_judge_that_rated_another_member_of_a_group_speaks_for_the_group() -> None:
    """A judge that heard only the second "Lyon" answer before its pass (a partial verdict) still rejects
    the "Lyon" group, whose representative is the first (ADR 0022, the network's q054)."""
    sims = _sims(SPLIT)
    verdicts: list[list[int | None]] = [[None, None, None, None], [None, None, None, None],
                                        [-900, -900, None, None], [None, -1000, None, None]]
    d = decide([1] * 4, sims, 800, verdicts=verdicts, rule="veto")
    assert (d.group.members, d.reason) == ((2, 3), "verdict")
    group = next(g for g in [d.group, *d.contenders] if g.members == (2, 3))
    lyon = decide([1] * 4, sims, 800).group
    assert lyon.members == (0, 1) and judge_on_group(lyon, verdicts[3]) == -1000
    assert judge_on_group(lyon, verdicts[2]) == -900 and judge_on_group(group, verdicts[2]) is None
    # Without the second judge's verdict on the group one judge (1/4 of the weight) rejects nothing.
    verdicts[3] = [None] * 4
    assert decide([1] * 4, sims, 800, verdicts=verdicts, rule="veto").group.members == (0, 1)


def test_a_rejection_is_pending_while_judges_not_heard_on_a_contender_could_still_reach_a_third() -> None:
    """What the proposer waits for after the grace period (ADR 0022): not a validity rule."""
    sims = _sims(SPLIT)
    heard_one = _verdicts(SPLIT, {2: {"Lyon": -900}})  # judge 3 not heard: with it, "Lyon" could be rejected
    assert rejection_pending([1] * 4, sims, 800, heard_one, 500, 4)
    everyone = _verdicts(SPLIT, {2: {"Lyon": -900}, 3: {"Lyon": -900}, 0: {"Paris": 100}, 1: {"Paris": 100}})
    assert not rejection_pending([1] * 4, sims, 800, everyone, 500, 4)
    # "Lyon" rejected, but "Paris" not yet rated by the "Lyon" judges: they could still reject it too.
    assert rejection_pending([1] * 4, sims, 800, _verdicts(SPLIT, {2: {"Lyon": -900}, 3: {"Lyon": -900}}), 500, 4)
    accepted = _verdicts(SPLIT, {2: {"Lyon": 100}, 0: {"Paris": 100}, 1: {"Paris": 100}})  # judge 3 alone: 1/4
    assert not rejection_pending([1] * 4, sims, 800, accepted, 500, 4)
    # Two absent validators (total 6): the two "Paris" judges together hold exactly 1/3, never more.
    assert not rejection_pending([1] * 4, sims, 800, heard_one, 500, 6)
    # A quorum of weight is decided whatever anyone could still say.
    labels = ["Lyon", "Paris", "Paris", "Paris"]
    assert not rejection_pending([1] * 4, _sims(labels), 800, _verdicts(labels, {}), 500, 4)


def test_the_omission_rule_lets_at_most_a_third_of_the_weight_go_unheard() -> None:
    """Non-judging answerers at exactly 1/3 (2 of 6) cannot stall the veto; any more can (ADR 0022)."""
    assert missing_judges_ok([1] * 6, {2, 3, 4, 5}, 6)  # 2 of 6 unheard: exactly 1/3
    assert not missing_judges_ok([1] * 6, {3, 4, 5}, 6)  # 3 of 6
    assert missing_judges_ok([1] * 6, set(range(6)), 6)
    # Weighted: 100 of 300 unheard is exactly 1/3, 101 of 301 (one absent validator of weight 1) just above it.
    assert missing_judges_ok([100, 50, 150], {1, 2}, 300)
    assert not missing_judges_ok([101, 50, 150], {1, 2}, 301)
    assert missing_judges_ok([101, 50, 150], {1, 2}, 303)  # absent validators only add to the total


def test_veto_counts_against_all_validators_weight_and_keeps_everyone_if_all_are_rejected() -> None:
    sims = _sims(SPLIT)
    verdicts = _verdicts(SPLIT, {2: {"Lyon": -1}, 3: {"Lyon": -1}})
    assert decide([1] * 4, sims, 800, verdicts=verdicts, rule="veto").group.members == (2, 3)
    # The same two judges hold exactly a third once two absent validators count (total 6): no rejection.
    assert decide([1] * 4, sims, 800, verdicts=verdicts, rule="veto", total_weight=6).group.members == (0, 1)
    everyone = _verdicts(SPLIT, {j: {"Lyon": -1, "Paris": -1} for j in range(4)})
    d = decide([1] * 4, sims, 800, verdicts=everyone, rule="veto")
    assert (d.group.members, len(d.contenders)) == ((0, 1), 2)
    with pytest.raises(ValueError):
        decide([1] * 4, sims, 800, verdicts=everyone, rule="median")
    with pytest.raises(ValueError):
        decide([1] * 4, sims, 800, total_weight=3)


def _bench() -> object:
    import importlib.util
    import sys
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_verdicts", Path(__file__).parents[1] / "bench" / "verdicts.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _row(k: int, smol: tuple[str, bool, float], gemma: tuple[str, bool, float], sim: int) -> dict[str, object]:
    """A recorded question: each model's (answer, correct, the other model's log-probability of it)."""
    s_text, g_text = smol[0], gemma[0]
    return {
        "id": f"q{k}", "question": f"Which city is number {k}?", "gold": "x", "other": "Nowhere",
        "answers": {"smollm2": {"text": s_text, "correct": smol[1], "logprob": -0.1},
                    "gemma3": {"text": g_text, "correct": gemma[1], "logprob": -0.2}},
        "texts": [s_text, g_text, "Nowhere"], "sims": [sim, 0, 0],
        "relevance": {s_text: 0.5, g_text: 0.5, "Nowhere": 0.1},
        "yes": {"smollm2": {s_text: 50, g_text: 50}, "gemma3": {s_text: 300, g_text: 300}},
        "lp": {"smollm2": {s_text: -0.1, g_text: gemma[2]}, "gemma3": {g_text: -0.2, s_text: smol[2]}},
    }


def test_the_bench_decides_committees_with_this_rule() -> None:
    bench: Any = _bench()
    rows = [_row(1, ("It is Lyon.", False, -1.2), ("It is Paris.", True, -0.15), 100),  # Gemma-3 right
            _row(2, ("It is Rome.", True, -0.1), ("It is Milan.", False, -0.9), 100),  # SmolLM2 right
            _row(3, ("It is Oslo.", True, -0.1), ("It is Oslo!", True, -0.1), 1000)]  # one group
    t = bench.tables({"questions": rows})
    assert (t["alone"], t["ceiling"], t["splits"]) == ({"smollm2": 2, "gemma3": 2}, 3, 2)
    right = {(d["mechanism"], d["committee"], d["weights"]): d["right"] for d in t["decided"]}
    # Today the split goes to peer 0's family (SmolLM2); the veto gives each split to the right side.
    assert right[("WBFT today", "4 peers (2+2)", "equal")] == 2
    assert right[("judge lp-minus-own, veto, margin 500", "4 peers (2+2)", "equal")] == 3
    assert right[("judge lp-minus-own, veto, margin 500", "6 peers (3+3)", "equal")] == 3
    # Colluders (1/3) rejecting both honest answers add to the honest rejection and take nothing.
    assert right[("judge lp-minus-own, veto, margin 500", "6 peers (2+2, 2 colluders)", "equal")] == 3
    assert all(d["right"] <= d["reachable"] for d in t["decided"])
