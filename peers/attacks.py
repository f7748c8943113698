"""Hostile inputs one validator key can produce, for fault injection, regression tests and the security bench.

Each function builds bytes or JSON that an attacker holding one validator's
key could send; nothing here sends anything. Honest peers and clients must
refuse all of them (see ``tests/test_n4f1_attacks.py`` and the security
table in docs/benchmarks.md).
"""

from __future__ import annotations

import os
from typing import Any

from consensus import grouping
from consensus.messages import Answer, Query, Vote, query_id_of, sign
from consensus.validators import Validator, ValidatorSet
from multillmn import canonical
from multillmn.certificate import build_certificate
from multillmn.genesis import Genesis
from multillmn.identity import KeyPair

__all__ = ["deep_msgpack", "forged_certificate"]


def forged_certificate(key: KeyPair, genesis: Genesis, height: int, *, round_: int = 0,
                       question: str = "Is the earth flat?", answer: str = "Yes, flat.",
                       own_weight: int = 10**6) -> dict[str, Any]:
    """A certificate for ``height`` that only ``key`` signed: the genesis members and keys, but weights of the
    forger's choosing (``own_weight`` for itself, 1 for the others), its own query, answer and precommit.

    It is a quorum of the set it claims, so only a check against a trusted set can refuse it.
    """
    forged = ValidatorSet(Validator(v.peer_id, v.public_key, own_weight if v.peer_id == key.peer_id else 1, v.moniker)
                          for v in genesis.validators)
    query = sign(Query(entry=key.peer_id, question=question, nonce=os.urandom(16), max_tokens=32, created_ms=0), key)
    reply = sign(Answer(query_id=query_id_of(query.envelope), peer=key.peer_id, model="forger", text=answer,
                        gen_ms=1), key)
    value = grouping.build_value(query.envelope, [reply], [], [own_weight], genesis.params.similarity_threshold,
                                 validators_hash=forged.set_hash(), next_validators_hash=forged.set_hash())
    precommit = sign(Vote(type="precommit", height=height, round=round_, value_id=value.value_id(),
                          voter=key.peer_id), key)
    return build_certificate(genesis, height, round_, value, (precommit,), validators=forged)


def deep_msgpack(depth: int = 1010) -> bytes:
    """msgpack nested ``depth`` arrays deep (``[[[...nil...]]]``): once crashed every decoder by recursion."""
    return b"\x91" * depth + b"\xc0"


def deep_payload(kind: str = "vote", depth: int = 1010) -> bytes:
    """A wire payload of ``kind`` whose body is :func:`deep_msgpack` (with a dummy signature)."""
    return canonical.pack({"k": kind, "b": deep_msgpack(depth), "s": bytes(64)})
