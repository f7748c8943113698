"""Answer similarity: MiniLM cosine, checked against the answers' key terms.

MiniLM alone barely separates two answers that share a sentence but differ in
the fact: "The capital of France is Paris." vs "... is Lyon." score 0.74, and
"... 100 degrees" vs "... 90 degrees" 0.94, while honest paraphrases score
0.97 or more. Facts in short answers live in names and numbers, so:

* key terms are the words that start with a capital letter (minus common
  sentence openers) and numbers (digits, or number words up to twenty and the
  tens), lowercased, minus the terms of the question itself: "Japan is the
  capital of Japan." says nothing that the question did not;
* when both answers have key terms, their overlap coefficient
  ``|A ∩ B| / min(|A|, |B|)`` decides: 1 (one set contains the other, as
  "Paris" within "Paris, France") lifts the similarity to at least
  :data:`CONTAINED_FLOOR`; less caps it at the overlap;
* when only one answer has key terms, the other states no fact of its own:
  the similarity is capped at :data:`ONE_SIDED_CAP`, below any threshold;
* when neither has, the cosine stands.

The key-term part is exact and deterministic; only the cosine carries float
noise, which the consensus tolerance absorbs (docs/adr/0002).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from consensus.content import NUMBER_WORDS

__all__ = ["key_terms", "combine", "similarity_matrix", "CONTAINED_FLOOR", "ONE_SIDED_CAP"]

CONTAINED_FLOOR = 0.9
"""Similarity of two answers whose key terms agree (one set contains the other)."""

ONE_SIDED_CAP = 0.5
"""Similarity cap when only one of two answers has key terms."""

_OPENERS = frozenset(
    "the a an it its this that these those there here yes no i we you he she they my our "
    "in on at of for to by from with as is are was were answer".split()
)
_TOKEN = re.compile(r"[^\W_]+(?:[.,'-][^\W_]+)*", re.UNICODE)


def key_terms(text: str, question: str = "") -> frozenset[str]:
    """Names and numbers in ``text``, lowercased, minus those of ``question``."""
    return _terms(text) - _terms(question)


def _terms(text: str) -> frozenset[str]:
    terms = set()
    for token in _TOKEN.findall(text):
        lower = token.lower()
        if any(c.isdigit() for c in token):
            terms.add(lower.rstrip(".,"))
        elif lower in NUMBER_WORDS:
            terms.add(NUMBER_WORDS[lower])
        elif token[0].isupper() and lower not in _OPENERS:
            terms.add(lower)
    return frozenset(terms)


def combine(cosine: float, a: frozenset[str], b: frozenset[str]) -> float:
    """Similarity of two answers from their cosine and key terms (see the module docstring)."""
    if not a and not b:
        return cosine
    if not a or not b:
        return min(cosine, ONE_SIDED_CAP)
    overlap = len(a & b) / min(len(a), len(b))
    if overlap == 1.0:
        return max(cosine, CONTAINED_FLOOR)
    return min(cosine, overlap)


def similarity_matrix(question: str, texts: Sequence[str], cosines: Sequence[Sequence[float]]) -> list[list[float]]:
    """Apply :func:`combine` to every pair of a cosine matrix of answers to ``question``."""
    terms = [key_terms(t, question) for t in texts]
    n = len(texts)
    return [[1.0 if i == j else combine(cosines[i][j], terms[i], terms[j]) for j in range(n)] for i in range(n)]
