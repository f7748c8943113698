"""Score vectors: schema, signing, and scores by agreement with the decided answer and judge verdicts."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.grouping import pair_index
from consensus.messages import MessageError, open_envelope, sign
from consensus.scores import JudgeResult, ScoreVector, score_answers
from multillmn import canonical
from multillmn.identity import KeyPair

KEYS = sorted((KeyPair.from_seed(bytes([i + 1]) * 32) for i in range(6)), key=lambda k: k.peer_id)
P = [k.peer_id for k in KEYS]
QID = b"\x01" * 32


def test_the_decided_group_scores_full_and_a_near_miss_keeps_half_its_similarity() -> None:
    # pairs (0,1) (0,2) (0,3) (1,2) (1,3) (2,3); decided group {0, 1}
    sims = [900, 600, -100, 700, 300, 0]
    got = score_answers(P[:4], sims, [0, 1])
    assert got == ((P[0], 1000), (P[1], 1000), (P[2], 700 // 2), (P[3], 300 // 2))
    assert score_answers(P[:1], [], [0]) == ((P[0], 1000),)


def test_an_answer_that_restates_the_question_scores_zero_unless_it_was_decided() -> None:
    sims = [100, 600, 600]  # (0,1) (0,2) (1,2)
    assert dict(score_answers(P[:3], sims, [0], [True, True, False]))[P[2]] == 0
    assert dict(score_answers(P[:3], sims, [0], [True, True, True]))[P[2]] == 300
    assert dict(score_answers(P[:3], sims, [2], [True, True, False]))[P[2]] == 1000


def test_judge_counts_only_wins_in_both_orders() -> None:
    sims = [1000, 1000, 1000]  # one group: agreement 1000 for all three
    results = [
        JudgeResult(P[0], P[1], a_first=P[0], b_first=P[0]),  # P0 wins in both orders
        JudgeResult(P[0], P[2], a_first=P[0], b_first=P[2]),  # position bias: split = tie
        JudgeResult(P[1], P[2], a_first=None, b_first=P[1]),  # tie + win = tie
    ]
    got = dict(score_answers(P[:3], sims, [0, 1, 2], judge_results=results))
    # judge: P0 (1000 + 500) / 2 = 750; P1 (0 + 500) / 2 = 250; P2 (500 + 500) / 2 = 500
    assert got == {P[0]: (1000 + 750) // 2, P[1]: (1000 + 250) // 2, P[2]: (1000 + 500) // 2}
    only_judge = dict(score_answers(P[:3], sims, [0, 1, 2], judge_results=results, judge_share=Fraction(1)))
    assert only_judge == {P[0]: 750, P[1]: 250, P[2]: 500}
    with pytest.raises(ValueError):
        score_answers(P[:2], [0], [0], judge_results=[JudgeResult(P[0], P[1], P[2], None)])
    with pytest.raises(ValueError):
        score_answers(P[:2], [0], [0], judge_results=[JudgeResult(P[0], P[5], None, None)])


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="distinct"):
        score_answers([P[0], P[0]], [0], [0])
    with pytest.raises(ValueError, match="similarities"):
        score_answers(P[:2], [0, 0], [0])
    with pytest.raises(ValueError, match="similarities"):
        score_answers(P[:2], [1001], [0])
    with pytest.raises(ValueError, match="decided"):
        score_answers(P[:2], [0], [])
    with pytest.raises(ValueError, match="decided"):
        score_answers(P[:2], [0], [2])
    with pytest.raises(ValueError, match="eligibility"):
        score_answers(P[:2], [0], [0], [True])


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_scores_do_not_depend_on_answer_order(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 6))
    sims = data.draw(st.lists(st.integers(-1000, 1000), min_size=n * (n - 1) // 2,
                              max_size=n * (n - 1) // 2))
    decided = data.draw(st.sets(st.integers(0, n - 1), min_size=1))
    eligible = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    perm = data.draw(st.permutations(range(n)))
    got = score_answers(P[:n], sims, decided, eligible)
    sims2 = [sims[pair_index(n, perm[i], perm[j])] for i in range(n) for j in range(i + 1, n)]
    where = {old: new for new, old in enumerate(perm)}
    assert score_answers([P[k] for k in perm], sims2, {where[k] for k in decided}, [eligible[k] for k in perm]) == got
    assert all(0 <= s <= 1000 for _, s in got)


def test_score_vector_schema_and_signature() -> None:
    scores = score_answers(P[:3], [900, 800, 100], [0, 1])
    vec = ScoreVector(scorer=P[1], height=7, query_id=QID, scores=scores)
    signed = sign(vec, KEYS[1])
    opened = open_envelope(ScoreVector, signed.envelope, {k.peer_id: k.public_key for k in KEYS}.get)
    assert opened.message == vec and opened.signer == P[1] and opened.kind == "scores"
    assert canonical.unpack(signed.envelope.body)["scores"] == tuple(tuple(s) for s in scores)
    assert vec.score_of(P[0]) == scores[0][1] and vec.score_of(P[5]) is None
    for bad in (
        ((P[1], 1), (P[0], 1)),  # unsorted
        ((P[0], 1), (P[0], 2)),  # duplicate
        ((P[0], 1001),),  # out of range
        ((P[0], -1),),
        (),
    ):
        with pytest.raises(ValueError):
            ScoreVector(scorer=P[1], height=7, query_id=QID, scores=bad)
    body = canonical.pack(dict(vec.body(), scores=[[P[1], 1], [P[0], 1]]))
    with pytest.raises(MessageError, match="sorted"):
        open_envelope(ScoreVector, signed.envelope.model_copy(update={"body": body}),
                      {P[1]: KEYS[1].public_key}.get)
