"""The shipped question set: simple factual questions with accepted answer aliases.

``multillmn/data/questions.json`` holds at least 100 questions a small model
can answer (capitals, science, arithmetic, people, general knowledge), each
with the aliases a correct answer may use. :func:`is_correct` accepts an
answer that contains an alias as a whole phrase after normalisation
(case, punctuation, a leading article; number words from zero to twenty
read as digits), so "The capital of France is Paris." matches "Paris" and
"It has eight legs" matches "8". No question contains one of its own
aliases, so restating the question never counts as answering it.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from functools import cache
from importlib import resources

__all__ = ["Question", "load_questions", "is_correct", "normalise"]

_NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
            "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]
_WORD_TO_DIGIT = {w: str(i) for i, w in enumerate(_NUMBERS)}


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    answers: tuple[str, ...]
    topic: str


def normalise(text: str) -> str:
    """Lowercase words separated by single spaces; punctuation dropped; number words as digits."""
    t = unicodedata.normalize("NFKC", text).lower().replace("₂", "2")
    t = re.sub(r"(?<=\d)[,.](?=\d)", "", t)  # 1,000 -> 1000
    words = re.findall(r"[a-z0-9]+", t)
    return " ".join(_WORD_TO_DIGIT.get(w, w) for w in words)


def is_correct(question: Question, answer: str) -> bool:
    """True if ``answer`` contains one of the question's aliases as a whole phrase."""
    text = f" {normalise(answer)} "
    return any(f" {alias} " in text for alias in (normalise(a) for a in question.answers) if alias)


@cache
def _load() -> tuple[Question, ...]:
    raw = json.loads(resources.files("multillmn").joinpath("data/questions.json").read_text(encoding="utf-8"))
    return tuple(Question(q["id"], q["question"], tuple(q["answers"]), q["topic"]) for q in raw)


def load_questions() -> list[Question]:
    """Every shipped question, in file order."""
    return list(_load())
