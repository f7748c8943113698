"""Hostile inputs one validator key can produce, for fault injection, regression tests and the security bench.

Each function builds bytes or JSON that an attacker holding one validator's
key could send; nothing here sends anything. Honest peers and clients must
refuse all of them (see ``tests/test_n4f1_attacks.py`` and the security
table in docs/benchmarks.md).
"""

from __future__ import annotations

import time
from typing import Any

from consensus.driver.behaviours import deep_msgpack, forge_decision
from dag.event import encode_event, sign_event
from dag.messages import DagEvents
from multillmn import canonical
from multillmn.certificate import build_certificate
from multillmn.genesis import Genesis
from multillmn.identity import KeyPair

__all__ = ["deep_msgpack", "deep_payload", "forged_certificate", "poisoned_events_payload"]


def forged_certificate(key: KeyPair, genesis: Genesis, height: int, *, round_: int = 0,
                       question: str = "Is the earth flat?", answer: str = "Yes, flat.",
                       own_weight: int = 10**6) -> dict[str, Any]:
    """The certificate of :func:`~consensus.driver.behaviours.forge_decision`: a quorum of the set it claims,
    signed by ``key`` alone, so only a check against a trusted set can refuse it."""
    value, precommit, forged = forge_decision(key, genesis.validators, height, genesis.params.similarity_threshold,
                                              chain_id=genesis.chain_id, round_=round_, question=question,
                                              answer=answer, own_weight=own_weight)
    return build_certificate(genesis, height, round_, value, (precommit,), validators=forged)


def deep_payload(kind: str = "vote", depth: int = 1010) -> bytes:
    """A wire payload of ``kind`` whose body is :func:`deep_msgpack` (with a dummy signature)."""
    return canonical.pack({"k": kind, "b": deep_msgpack(depth), "s": bytes(64)})


def poisoned_events_payload(key: KeyPair, tx: bytes) -> bytes:
    """A signed ``dag_events`` wire payload whose one event (a fork at seq 0) carries ``tx`` as is.

    Built by hand, because the honest message class refuses such a batch.
    """
    event = sign_event(key, seq=0, self_parent=None, other_parent=None, timestamp=time.time_ns(),
                       transactions=[tx])
    body = canonical.pack({"events": [encode_event(event)], "sender": key.peer_id})
    return canonical.pack({"k": DagEvents.KIND, "b": body, "s": key.sign(DagEvents.KIND, body)})
