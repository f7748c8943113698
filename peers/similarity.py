"""Answer similarity: MiniLM cosine, checked against the answers' key terms.

MiniLM alone barely separates two answers that share a sentence but differ in
the fact: "The capital of France is Paris." vs "... is Lyon." score 0.74, and
"... 100 degrees" vs "... 90 degrees" 0.94, while honest paraphrases score
0.97 or more. Facts in short answers live in names and numbers, so:

* key terms are the words that start with a capital letter (minus common
  sentence openers) and the tokens that contain a digit, lowercased;
* when both answers have key terms, their overlap coefficient
  ``|A ∩ B| / min(|A|, |B|)`` decides: 1 (one set contains the other, as
  "Paris" within "France, Paris") lifts the similarity to at least
  :data:`CONTAINED_FLOOR`; less caps it at the overlap;
* otherwise the cosine stands.

The key-term part is exact and deterministic; only the cosine carries float
noise, which the consensus tolerance absorbs (docs/adr/0002).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["key_terms", "combine", "similarity_matrix", "CONTAINED_FLOOR"]

CONTAINED_FLOOR = 0.9
"""Similarity of two answers whose key terms agree (one set contains the other)."""

_OPENERS = frozenset(
    "the a an it its this that these those there here yes no i we you he she they my our "
    "in on at of for to by from with as is are was were answer".split()
)
_TOKEN = re.compile(r"[^\W_]+(?:[.,'-][^\W_]+)*", re.UNICODE)


def key_terms(text: str) -> frozenset[str]:
    """Capitalised words (not common openers) and tokens with digits, lowercased."""
    terms = set()
    for token in _TOKEN.findall(text):
        lower = token.lower()
        if any(c.isdigit() for c in token):
            terms.add(lower.rstrip(".,"))
        elif token[0].isupper() and lower not in _OPENERS:
            terms.add(lower)
    return frozenset(terms)


def combine(cosine: float, a: frozenset[str], b: frozenset[str]) -> float:
    """Similarity of two answers from their cosine and key terms (see the module docstring)."""
    if not a or not b:
        return cosine
    overlap = len(a & b) / min(len(a), len(b))
    if overlap == 1.0:
        return max(cosine, CONTAINED_FLOOR)
    return min(cosine, overlap)


def similarity_matrix(texts: Sequence[str], cosines: Sequence[Sequence[float]]) -> list[list[float]]:
    """Apply :func:`combine` to every pair of a cosine matrix."""
    terms = [key_terms(t) for t in texts]
    n = len(texts)
    return [[1.0 if i == j else combine(cosines[i][j], terms[i], terms[j]) for j in range(n)] for i in range(n)]
