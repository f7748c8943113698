"""Grouping answers on integer similarities, and validating proposed values."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.grouping import (
    Group,
    build_value,
    check_claimed_sims,
    choose,
    eligibility,
    group_answers,
    pair_count,
    pair_index,
    quantise_similarity,
    validate_value,
)
from consensus.messages import Answer, Envelope, Query, Signed, Value, query_id_of, sign
from consensus.validators import Validator, ValidatorSet
from multillmn.identity import KeyPair

KEYS = sorted((KeyPair.from_seed(bytes([i + 1]) * 32) for i in range(4)), key=lambda k: k.peer_id)
VS = ValidatorSet(Validator(k.peer_id, k.public_key, 1, f"v{i}") for i, k in enumerate(KEYS))
TH, TOL = 750, 30

TEXTS = ["Paris", "Paris.", "The capital is Paris", "London"]
# pairs (0,1) (0,2) (0,3) (1,2) (1,3) (2,3)
SIMS = [980, 820, 300, 800, 310, 280]


def sim_matrix(n: int, sims: Sequence[int], i: int, j: int) -> int:
    return 1000 if i == j else sims[pair_index(n, i, j)]


# --- pure grouping ---------------------------------------------------------------
def test_pair_index_is_row_major_upper_triangle() -> None:
    n = 5
    expected = [(i, j) for i in range(n) for j in range(i + 1, n)]
    assert [pair_index(n, i, j) for i, j in expected] == list(range(pair_count(n)))
    assert pair_index(n, 3, 1) == pair_index(n, 1, 3)
    with pytest.raises(ValueError):
        pair_index(n, 2, 2)
    assert (quantise_similarity(0.8234), quantise_similarity(1.0000001), quantise_similarity(-2.0)) == (823, 1000, -1000)


def test_similar_answers_group_together() -> None:
    groups = group_answers([1, 1, 1, 1], SIMS, TH)
    assert groups == [Group(0, (0, 1, 2), 3), Group(3, (3,), 1)]
    assert choose([1, 1, 1, 1], SIMS, TH) == Group(0, (0, 1, 2), 3)


def test_weight_beats_head_count() -> None:
    # answer 0 (weight 5) stands alone; 1, 2, 3 (weight 1 each) agree
    sims = [0, 0, 0, 900, 900, 900]
    assert choose([5, 1, 1, 1], sims, TH) == Group(0, (0,), 5)
    assert choose([2, 1, 1, 1], sims, TH) == Group(1, (1, 2, 3), 3)


def test_representative_is_heaviest_and_threshold_is_inclusive() -> None:
    # 0~1 and 1~2 but not 0~2: the heavy middle answer represents all three
    assert group_answers([1, 2, 1], [800, 100, 800], TH) == [Group(1, (0, 1, 2), 4)]
    assert group_answers([1, 1], [750], TH) == [Group(0, (0, 1), 2)]
    assert group_answers([1, 1], [749], TH) == [Group(0, (0,), 1), Group(1, (1,), 1)]


def test_tie_breaks() -> None:
    # equal weights: the candidate with more nearby weight represents
    assert group_answers([2, 2, 1], [0, 0, 900], TH)[0] == Group(1, (1, 2), 3)
    # equal group weights: the group whose representative has the lowest index wins
    assert choose([1, 1], [0], TH) == Group(0, (0,), 1)
    assert choose([1, 1, 1, 1], [900, 0, 0, 0, 0, 900], TH) == Group(0, (0, 1), 2)


def test_bad_inputs_rejected() -> None:
    with pytest.raises(ValueError, match="similarities"):
        group_answers([1, 1, 1], [1000], TH)
    with pytest.raises(ValueError, match="positive"):
        group_answers([1, 0], [1000], TH)
    with pytest.raises(ValueError, match="no answers"):
        group_answers([], [], TH)


@st.composite
def instances(draw: st.DrawFn) -> tuple[list[int], list[int], int]:
    n = draw(st.integers(1, 8))
    weights = draw(st.lists(st.integers(1, 5), min_size=n, max_size=n))
    sims = draw(st.lists(st.sampled_from([-200, 0, 600, 749, 750, 751, 900, 1000]), min_size=pair_count(n), max_size=pair_count(n)))
    threshold = draw(st.sampled_from([0, 500, 750, 900]))
    return weights, sims, threshold


@settings(max_examples=150, deadline=None)
@given(instances())
def test_grouping_properties(inst: tuple[list[int], list[int], int]) -> None:
    weights, sims, threshold = inst
    n = len(weights)
    groups = group_answers(weights, sims, threshold)
    members = [m for g in groups for m in g.members]
    assert sorted(members) == list(range(n))  # a partition
    for k, g in enumerate(groups):
        assert g.representative in g.members
        assert g.weight == sum(weights[m] for m in g.members)
        assert all(sim_matrix(n, sims, g.representative, m) >= threshold for m in g.members)
        later = [m for h in groups[k + 1:] for m in h.members]
        # heaviest unassigned answer represents; nothing similar to it was left out
        assert all(weights[m] <= weights[g.representative] for m in later)
        assert all(sim_matrix(n, sims, g.representative, m) < threshold for m in later)
    win = choose(weights, sims, threshold)
    assert win == choose(list(weights), list(sims), threshold)
    assert win in groups and all(win.weight >= g.weight for g in groups)


@settings(max_examples=100, deadline=None)
@given(instances(), st.randoms(use_true_random=False))
def test_grouping_is_order_independent_without_weight_ties(
    inst: tuple[list[int], list[int], int], rnd: random.Random
) -> None:
    weights, sims, threshold = inst
    n = len(weights)
    weights = [w * 10 + k for k, w in enumerate(weights)]  # distinct weights
    perm = list(range(n))
    rnd.shuffle(perm)
    p_weights = [weights[perm[i]] for i in range(n)]
    p_sims = [sim_matrix(n, sims, perm[i], perm[j]) for i in range(n) for j in range(i + 1, n)]

    def as_sets(gs: list[Group], back: list[int]) -> set[frozenset[int]]:
        return {frozenset(back[m] for m in g.members) for g in gs}

    a = group_answers(weights, sims, threshold)
    b = group_answers(p_weights, p_sims, threshold)
    assert as_sets(a, list(range(n))) == as_sets(b, perm)
    assert choose(weights, sims, threshold).weight == choose(p_weights, p_sims, threshold).weight


def test_check_claimed_sims() -> None:
    assert check_claimed_sims([10, 20], [40, -10], 30) is None
    assert "similarity 1" in (check_claimed_sims([10, 20], [10, -11], 30) or "")
    assert "claimed 1" in (check_claimed_sims([10], [10, 20], 30) or "")


def test_ties_go_to_the_group_closest_in_meaning_to_the_rest() -> None:
    # three singletons of equal weight; answer 1 is nearest the others (pairs (0,1) (0,2) (1,2))
    assert choose([1, 1, 1], [500, 0, 400], TH).representative == 1
    # weight still comes first, and a full tie falls back to the lowest index
    assert choose([1, 3, 1], [500, 900, 0], TH).representative == 1
    assert choose([1, 1], [0], TH).representative == 0


def test_a_group_that_restates_the_question_loses_ties_but_never_overrides_weight() -> None:
    texts = ["Spain is the capital of Spain.", "Madrid.", "The answer is oxygen."]
    flags = eligibility("What is the capital of Spain?", texts)
    assert flags == [False, True, True]
    sims = [300, 300, 0]  # (0,1) (0,2) (1,2): the echo is nearest to the rest
    assert choose([1, 1, 1], sims, TH).representative == 0  # support alone favours the echo
    assert choose([1, 1, 1], sims, TH, flags).representative == 1  # an answer beats an echo of equal weight
    assert choose([2, 1, 1], sims, TH, flags).representative == 0  # but weight comes first
    with pytest.raises(ValueError, match="eligibility"):
        choose([1, 1, 1], sims, TH, [True])


def test_a_rounding_unit_of_weight_does_not_beat_the_tie_breaks() -> None:
    flags = [False, False, False, True, True, True]  # an echo by three peers, an answer by three others
    sims = [1000 if (i < 3) == (j < 3) else 0 for i in range(6) for j in range(i + 1, 6)]
    rounded = [166_667, 166_667, 166_667, 166_667, 166_666, 166_666]  # 10**6 in six "equal" parts
    assert choose(rounded, sims, TH, flags).representative == 3
    assert choose([2, 2, 2, 1, 1, 1], sims, TH, flags).representative == 0  # a real difference still decides
    heavier = [170_000, 170_000, 170_000, 163_334, 163_333, 163_333]  # beyond 1/10,000 of the weight
    assert choose(heavier, sims, TH, flags).representative == 0


def test_validators_apply_the_restating_tie_break() -> None:
    q = query(question="What is the capital of Spain?")
    texts = ["Spain is the capital of Spain.", "Spain is the capital of Spain.", "Madrid.", "Madrid is it."]
    sims = [1000, 200, 200, 200, 200, 900]
    value = build_value(q, [answer(k, q, t) for k, t in zip(KEYS, texts)], sims, [1, 1, 1, 1], TH)
    assert value.answer == "Madrid." and check(value) is None
    echo = with_(value, winners=(KEYS[0].peer_id, KEYS[1].peer_id), answer=texts[0])
    assert "winners" in (check(echo) or "")


# --- values --------------------------------------------------------------------
def query(key: KeyPair = KEYS[0], question: str = "capital of France?") -> Envelope:
    q = Query(entry=key.peer_id, question=question, nonce=bytes(range(16)), max_tokens=32, created_ms=1)
    return sign(q, key).envelope


def answer(key: KeyPair, q: Envelope, text: str) -> Signed[Answer]:
    return sign(Answer(query_id=query_id_of(q), peer=key.peer_id, model="m", text=text, gen_ms=5), key)


def honest() -> Value:
    q = query()
    return build_value(q, [answer(k, q, t) for k, t in zip(KEYS, TEXTS)], SIMS, [1] * 4, TH)


def check(value: Value, local: Sequence[int] | None = None, **kw: bool) -> str | None:
    return validate_value(value, validators=VS, local_sims=None if local is None else [local], threshold=TH, tolerance=TOL, **kw)


def with_(value: Value, **update: object) -> Value:
    fields = {"query": value.query, "answers": value.answers, "sims": value.sims,
              "winners": value.winners, "answer": value.answer}
    return Value(**(fields | update))  # type: ignore[arg-type]


def test_build_value_is_deterministic_and_chooses() -> None:
    v = honest()
    assert v.winners == tuple(k.peer_id for k in KEYS[:3]) and v.answer == "Paris"
    assert tuple(v.sims) == tuple(SIMS)
    # the same answers given in another order (with sims/weights in that order) give the same value
    q = query()
    order = [3, 1, 0, 2]
    shuffled = [answer(KEYS[i], q, TEXTS[i]) for i in order]
    sims = [sim_matrix(4, SIMS, order[i], order[j]) for i in range(4) for j in range(i + 1, 4)]
    assert build_value(q, shuffled, sims, [1] * 4, TH) == v
    with pytest.raises(ValueError, match="duplicate"):
        build_value(q, [answer(KEYS[0], q, "a"), answer(KEYS[0], q, "b")], [0], [1, 1], TH)


def test_honest_value_accepted_with_local_noise() -> None:
    v = honest()
    assert check(v) is None
    assert check(v, [s + d for s, d in zip(SIMS, [20, -20, 30, -30, 0, 5])]) is None


def test_sims_beyond_tolerance_rejected() -> None:
    reason = check(honest(), [s + d for s, d in zip(SIMS, [0, 0, 0, 31, 0, 0])])
    assert reason is not None and "similarity 3" in reason
    assert "similarities" in (check(with_(honest(), sims=(1000,) * 5)) or "")


def test_wrong_winners_rejected() -> None:
    v = honest()
    assert "winners" in (check(with_(v, winners=(KEYS[0].peer_id, KEYS[3].peer_id))) or "")
    # self-consistent but made-up sims fail the tolerance check against local ones
    lying = with_(v, sims=(980, 100, 300, 100, 310, 280))
    assert check(lying) is not None  # winners no longer match the claimed sims
    assert check(with_(lying, winners=(KEYS[0].peer_id, KEYS[1].peer_id)), SIMS) is not None


def test_wrong_answer_text_rejected() -> None:
    assert "answer text" in (check(with_(honest(), answer="London")) or "")


def test_answers_below_quorum_rejected() -> None:
    q = query()
    v = build_value(q, [answer(k, q, "Paris") for k in KEYS[:2]], [1000], [1, 1], TH)
    assert "two thirds" in (check(v) or "")
    assert check(v, min_answer_weight_quorum=False) is None
    v3 = build_value(q, [answer(k, q, "Paris") for k in KEYS[:3]], [1000] * 3, [1] * 3, TH)
    assert check(v3) is None  # 3 of 4


def test_answer_for_another_query_rejected() -> None:
    v = honest()
    other = answer(KEYS[3], query(question="capital of Spain?"), "Madrid")
    bad = with_(v, answers=v.answers[:3] + (other.envelope,))
    assert "another query" in (check(bad) or "")


def test_forged_signatures_rejected() -> None:
    v = honest()
    a0 = v.answers[0]
    forged = Envelope(body=a0.body, sig=v.answers[1].sig)
    assert "bad signature" in (check(with_(v, answers=(forged,) + v.answers[1:])) or "")
    outsider = KeyPair.from_seed(b"\x77" * 32)
    assert "query" in (check(with_(v, query=query(outsider))) or "")


def test_duplicate_answerer_rejected() -> None:
    v = honest()
    q = v.query
    dup = answer(KEYS[0], q, "Paris!").envelope
    bad = with_(v, answers=(v.answers[0], dup) + v.answers[1:], sims=(1000,) * pair_count(5))
    assert "duplicate answer" in (check(bad) or "")
    unordered = with_(v, answers=(v.answers[1], v.answers[0]) + v.answers[2:])
    assert "order" in (check(unordered) or "")
