"""The shipped question set and the answer check used by the accuracy benchmark."""

from __future__ import annotations

import pytest

from multillmn.questions import Question, is_correct, load_questions, normalise

Q = {q.question: q for q in load_questions()}


def test_at_least_a_hundred_distinct_questions_with_aliases() -> None:
    questions = load_questions()
    assert len(questions) >= 100
    assert len({q.id for q in questions}) == len({q.question for q in questions}) == len(questions)
    assert all(q.answers and all(a.strip() for a in q.answers) for q in questions)
    assert len({q.topic for q in questions}) >= 4


def test_no_question_contains_its_own_answer() -> None:
    for q in load_questions():
        assert not is_correct(q, q.question), q


def test_every_alias_answers_its_question_alone_and_in_a_sentence() -> None:
    for q in load_questions():
        for alias in q.answers:
            assert is_correct(q, alias), (q.id, alias)
            assert is_correct(q, f"I think the answer is {alias}."), (q.id, alias)


@pytest.mark.parametrize(("question", "answer", "ok"), [
    ("What is the capital of France?", "The capital of France is Paris.", True),
    ("What is the capital of France?", "PARIS!", True),
    ("What is the capital of France?", "The capital of France is Lyon.", False),
    ("What is the capital of France?", "Parisian food is good.", False),  # whole words only
    ("How many legs does a spider have?", "A spider has eight legs.", True),
    ("How many legs does a spider have?", "Spiders have 6 legs.", False),
    ("What is 6 times 7?", "6 x 7 = 42", True),
    ("What is 6 times 7?", "Forty-two.", True),
    ("What is 6 times 7?", "142", False),
    ("What is the chemical symbol for water?", "H₂O", True),
    ("Who wrote Hamlet?", "William Shakespeare wrote it.", True),
    ("Who wrote Hamlet?", "Christopher Marlowe", False),
    ("What is the capital of the United States?", "Washington, D.C.", True),
])
def test_answers_are_judged_by_whole_alias_phrases(question: str, answer: str, ok: bool) -> None:
    assert is_correct(Q[question], answer) is ok


def test_normalise() -> None:
    assert normalise("  The  Answer: Twenty-ONE, 1,000!") == "the answer 20 1 1000"
    assert normalise("") == ""
    assert isinstance(Q["What is the capital of France?"], Question)
