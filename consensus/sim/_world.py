"""What the simulated peers share: keys, seeded random streams, the answer table and the similarities.

Signing modes. Every message is really signed with Ed25519 (by the
driver). With ``real_signatures`` every receiver re-opens the envelope with
:func:`consensus.messages.open_envelope` (decode, schema, canonical form,
signature), as the real daemon's wire codec does. On the *fast path* (the
default) a receiver takes the sender's decoded vote or proposal as is, and
all peers share one verified-signature cache, so each answer, query and
score vector a value embeds is verified about once per run. The fast path
therefore tests the protocol, not the cryptography.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from multillmn.identity import KeyPair

__all__ = [
    "Question",
    "answer_table",
    "derive_rng",
    "joiner_keys",
    "normalise",
    "sim_keys",
    "similarities",
    "honest_text",
    "wrong_text",
]

def derive_rng(seed: int, *labels: object) -> random.Random:
    """An independent random stream for ``labels`` under ``seed`` (stable across processes)."""
    text = "/".join([str(seed), *(str(x) for x in labels)])
    return random.Random(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big"))


@lru_cache(maxsize=8)
def sim_keys(n: int) -> tuple[KeyPair, ...]:
    """``n`` deterministic keys sorted by peer id, so node ``i`` is validator ``i``."""
    keys = [KeyPair.from_seed(hashlib.sha256(f"multillmn-sim-key/{i}".encode()).digest()) for i in range(n)]
    return tuple(sorted(keys, key=lambda k: k.peer_id))


@lru_cache(maxsize=8)
def joiner_keys(count: int) -> tuple[KeyPair, ...]:
    """The keys of ``count`` joiners (nodes ``peers``, ``peers + 1``, ...), in joiner order, apart from
    :func:`sim_keys` (the genesis keys stay what they were)."""
    return tuple(KeyPair.from_seed(hashlib.sha256(f"multillmn-sim-joiner/{k}".encode()).digest())
                 for k in range(count))


@dataclass(frozen=True)
class Question:
    """A scripted question with its correct answer."""

    index: int
    text: str
    correct: str


def answer_table(seed: int, count: int) -> tuple[Question, ...]:
    """``count`` arithmetic questions drawn from ``seed``, each with its correct answer."""
    rng = derive_rng(seed, "questions")
    out = []
    for i in range(count):
        a, b = rng.randrange(10, 1000), rng.randrange(10, 1000)
        out.append(Question(i, f"Q{i + 1}: what is {a} + {b}?", str(a + b)))
    return tuple(out)


def normalise(text: str) -> str:
    """Lower case, single spaces, no surrounding blanks or trailing ``.!?``."""
    return " ".join(text.lower().split()).rstrip(".!?").strip()


def similarities(texts: Sequence[str]) -> list[int]:
    """The upper-triangle similarity list: 1000 for equal normalised texts, else 0."""
    norm = [normalise(t) for t in texts]
    n = len(norm)
    return [1000 if norm[i] == norm[j] else 0 for i in range(n) for j in range(i + 1, n)]


_SURFACES = ("{}", "{}.", " {} ", "{}!", "{}  ")


def honest_text(correct: str, rng: random.Random, error_rate: float) -> str:
    """An honest model's answer: the correct one in a random surface form, or a near miss."""
    if error_rate > 0 and rng.random() < error_rate:
        return str(int(correct) + rng.choice((-10, -2, -1, 1, 2, 10)))
    return rng.choice(_SURFACES).format(correct)


def wrong_text(question: Question, salt: str) -> str:
    """A deterministic wrong answer to ``question`` (equal salts give equal texts)."""
    return f"{int(question.correct) + 1 + len(salt) % 7} ({salt})"
