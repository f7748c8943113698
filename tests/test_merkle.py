"""The Merkle tree of a value's outcomes: proofs for every leaf, against a brute-force recomputation."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, strategies as st

from consensus import merkle


def _reference_root(items: list[bytes]) -> bytes:
    """RFC 6962's MTH, written straight from the definition."""
    if len(items) == 1:
        return hashlib.sha256(b"\x00" + items[0]).digest()
    k = 1
    while k * 2 < len(items):
        k *= 2
    return hashlib.sha256(b"\x01" + _reference_root(items[:k]) + _reference_root(items[k:])).digest()


@given(st.lists(st.binary(max_size=8), min_size=1, max_size=40))
def test_every_leaf_proves_against_the_reference_root(items: list[bytes]) -> None:
    top = merkle.root(items)
    assert top == _reference_root(items)
    for i, item in enumerate(items):
        path = merkle.proof(items, i)
        assert len(path) <= max(1, len(items)).bit_length()
        assert merkle.root_from_proof(item, i, len(items), path) == top


def test_a_proof_does_not_prove_another_leaf_index_or_count() -> None:
    items = [bytes([i]) for i in range(7)]
    top = merkle.root(items)
    path = merkle.proof(items, 3)
    assert merkle.root_from_proof(items[3], 3, 7, path) == top
    assert merkle.root_from_proof(items[4], 3, 7, path) != top  # another item
    assert merkle.root_from_proof(items[3], 2, 7, path) != top  # another position
    with pytest.raises(merkle.MerkleError):
        merkle.root_from_proof(items[3], 3, 4, path)  # a tree of 4 needs a shorter path
    with pytest.raises(merkle.MerkleError):
        merkle.root_from_proof(items[3], 7, 7, path)
    with pytest.raises(merkle.MerkleError):
        merkle.root_from_proof(items[3], 3, 7, path[:-1] + (b"short",))


def test_a_leaf_cannot_pass_for_an_inner_node() -> None:
    items = [b"a", b"b"]
    top = merkle.root(items)
    forged = merkle.leaf_hash(b"a") + merkle.leaf_hash(b"b")  # the bytes under the root, as one leaf
    assert merkle.root([forged]) != top


def test_bounds() -> None:
    with pytest.raises(merkle.MerkleError):
        merkle.root([])
    with pytest.raises(merkle.MerkleError):
        merkle.root_from_proof(b"x", 0, merkle.MAX_LEAVES + 1, ())
