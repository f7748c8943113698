"""Does an answer say anything the question did not? An exact, deterministic text check.

Small models often echo the question instead of answering it: "Spain is the
capital of Spain.", "20 is half of 20.", "The Earth orbits the satellite."
Such an answer can still agree in meaning with another echo, and two peers
hosting the same model echo alike, so agreement alone would let a non-answer
win. :func:`restates` flags it: every content word of the answer (lowercased,
number words as digits, a plural ``s`` dropped, minus function words) already
occurs in the question.

The grouping rule (:mod:`consensus.grouping`) lets a restating group win only
when no group says anything new, and :mod:`consensus.scores` scores a
restating answer 0. Both sides run this function on signed texts, so every
honest peer gets the same result: there is no float in it.
"""

from __future__ import annotations

import re

__all__ = ["NUMBER_WORDS", "content_words", "restates"]

_FUNCTION_WORDS = frozenset(
    """a an the this that these those it its it's there here what which who whom whose when where why how
    is are was were be been being am do does did done has have had having can could will would shall should
    may might must of in on at to for from by with as into onto about than then so and or but not no nor
    yes i we you he she they me us him her them my our your his their answer answers called known named
    also just simply very really typically usually generally often many much some any all each every one's
    if because while though although up down out over under again further once only own same such too""".split()
)

NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}
NUMBER_WORDS.update({"thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70",
                      "eighty": "80", "ninety": "90", "hundred": "100", "thousand": "1000"})
"""Number words and the digits they stand for (also used by :mod:`peers.similarity`)."""

_TOKEN = re.compile(r"[^\W_]+(?:[.,'-][^\W_]+)*", re.UNICODE)


def _canonical(token: str) -> str:
    lower = token.lower().replace(",", "")
    if lower in NUMBER_WORDS:
        return NUMBER_WORDS[lower]
    if lower.endswith("'s"):
        lower = lower[:-2]
    if len(lower) > 3 and lower.endswith("s") and not lower.endswith("ss") and not lower[-2].isdigit():
        lower = lower[:-1]
    return lower


def content_words(text: str) -> frozenset[str]:
    """The words of ``text`` that carry content: lowercased, canonical, minus function words."""
    return frozenset(w for w in (_canonical(t) for t in _TOKEN.findall(text)) if w and w not in _FUNCTION_WORDS)


def restates(question: str, answer: str) -> bool:
    """True if ``answer`` adds no content word to ``question`` (an empty answer restates too)."""
    return content_words(answer) <= content_words(question)
