"""Validator sets: thresholds, weighted proposer selection, serialisation."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from consensus.validators import Validator, ValidatorSet
from multillmn import canonical
from multillmn.identity import KeyPair

KEYS = sorted((KeyPair.from_seed(bytes([i + 1]) * 32) for i in range(8)), key=lambda k: k.peer_id)


def vset(weights: Sequence[int]) -> ValidatorSet:
    return ValidatorSet(
        Validator(k.peer_id, k.public_key, w, f"v{i}") for i, (k, w) in enumerate(zip(KEYS, weights))
    )


def test_thresholds_are_strict_integer_comparisons() -> None:
    vs = vset([3, 1, 1, 1])  # total 6
    assert vs.total == 6
    assert not vs.has_quorum(4)  # 3*4 == 2*6: exactly two thirds is not enough
    assert vs.has_quorum(5)
    assert not vs.has_one_third(2)  # 3*2 == 6
    assert vs.has_one_third(3)
    assert vs.weight_of_set([KEYS[0].peer_id, KEYS[0].peer_id, KEYS[1].peer_id, "f" * 40]) == 4
    assert vs.weight_of("f" * 40) == 0 and vs.public_key_of("f" * 40) is None
    assert vs.public_key_of(KEYS[2].peer_id) == KEYS[2].public_key


def test_sorted_by_peer_id_regardless_of_input_order() -> None:
    vals = [Validator(k.peer_id, k.public_key, 1, "") for k in reversed(KEYS[:4])]
    vs = ValidatorSet(vals)
    assert vs.ids == tuple(k.peer_id for k in KEYS[:4])
    assert vs == ValidatorSet(reversed(vals)) and hash(vs) == hash(ValidatorSet(vals))


def test_proposer_frequency_proportional_to_weight() -> None:
    vs = vset([3, 2, 1])
    counts = Counter(vs.proposer(h, 0) for h in range(1, 601))
    assert {vs.weight_of(p): n for p, n in counts.items()} == {3: 300, 2: 200, 1: 100}
    rounds = Counter(vs.proposer(7, r) for r in range(60))
    assert {vs.weight_of(p): n for p, n in rounds.items()} == {3: 30, 2: 20, 1: 10}


def test_proposer_sequence_matches_spec_example() -> None:
    # tendermint spec/consensus/proposer-selection.md: powers (p0,4),(p1,2),(p2,2),(p3,2)
    # give p0, p1, p2, p3, p0, p0, p1, p2, p3, p0 (ties go to the smallest id).
    vs = vset([4, 2, 2, 2])
    seq = [vs.ids.index(vs.proposer(h, 0)) for h in range(1, 11)]
    assert seq == [0, 1, 2, 3, 0, 0, 1, 2, 3, 0]
    # round r at height h is the same step as round 0 at height h + r
    assert [vs.proposer(3, r) for r in range(5)] == [vs.proposer(3 + r, 0) for r in range(5)]


def test_proposer_deterministic_across_instances_and_query_orders() -> None:
    weights = [5, 1, 3, 2, 7]
    pairs = [(h, r) for h in range(1, 40) for r in range(3)]
    a = [vset(weights).proposer(h, r) for h, r in pairs]  # fresh instance every time
    shared = vset(weights)
    b = [shared.proposer(h, r) for h, r in pairs]  # cached, increasing
    c = [shared.proposer(h, r) for h, r in reversed(pairs)][::-1]  # cached, decreasing
    assert a == b == c
    with pytest.raises(ValueError):
        shared.proposer(0, 0)


def test_body_round_trip_and_hash() -> None:
    vs = vset([2, 1, 1])
    body = canonical.unpack(canonical.pack(vs.to_body()))
    again = ValidatorSet.from_body(body)
    assert again == vs
    assert again.set_hash() == vs.set_hash() == canonical.digest(vs.to_body())
    assert vset([2, 1, 2]).set_hash() != vs.set_hash()


def _body(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"validators": rows}


def _row(k: KeyPair, weight: Any = 1, **over: Any) -> dict[str, Any]:
    return {"peer_id": k.peer_id, "public_key": k.public_key, "weight": weight, "moniker": "m"} | over


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_body([_row(KEYS[0]), _row(KEYS[0])]), "duplicate validator"),
        (_body([_row(KEYS[0], 0)]), "positive integer"),
        (_body([_row(KEYS[0], -3)]), "positive integer"),
        (_body([_row(KEYS[0], True)]), "positive integer"),
        (_body([_row(KEYS[0], peer_id=KEYS[1].peer_id)]), "does not match"),
        (_body([_row(KEYS[0], public_key=b"\x00" * 31)]), "32 bytes"),
        (_body([]), "at least one"),
        (_body([{"peer_id": KEYS[0].peer_id}]), "keys"),
        ({"validators": [], "extra": 1}, "exactly the key"),
    ],
)
def test_from_body_rejections(body: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ValidatorSet.from_body(body)
