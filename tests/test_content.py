"""Restating the question is not answering it."""

from __future__ import annotations

import pytest

from consensus.content import content_words, restates
from multillmn.questions import load_questions


@pytest.mark.parametrize(("question", "answer"), [
    ("What is the capital of Spain?", "Spain is the capital of Spain."),
    ("What is half of 20?", "20 is half of 20."),
    ("What natural satellite orbits the Earth?", "The Earth orbits the satellite."),
    ("What is 5 times 5?", "five times five"),
    ("What is the capital of France?", ""),
])
def test_echoes_restate(question: str, answer: str) -> None:
    assert restates(question, answer)


@pytest.mark.parametrize(("question", "answer"), [
    ("What is the capital of Spain?", "The capital of Spain is Madrid."),
    ("What is the capital of Spain?", "The answer is oxygen."),  # wrong, but it says something
    ("How many minutes are in an hour?", "An hour is 60 minutes."),
    ("What color is grass?", "Grass is a green color."),
    ("How many legs does a spider have?", "A spider has eight legs."),
])
def test_answers_do_not(question: str, answer: str) -> None:
    assert not restates(question, answer)


def test_content_words_are_canonical() -> None:
    assert content_words("The Moons, two of them; Earth's orbits") == {"moon", "2", "earth", "orbit"}


def test_no_accepted_answer_of_the_shipped_set_restates_its_question() -> None:
    assert not [(q.question, a) for q in load_questions() for a in q.answers if restates(q.question, a)]
