"""A Merkle tree over a value's query outcomes, with inclusion proofs (RFC 6962, section 2.1).

A value that decides several queries commits to them through one root, so a
client checks its own query's outcome against the signed value id with a
proof of ``log2(n)`` hashes, without the other queries' answers (ADR 0020).

The tree is Certificate Transparency's: SHA-256, a ``0x00`` prefix on leaves
and ``0x01`` on inner nodes (so a leaf can never pass for a node), and the
split of ``n`` leaves at the largest power of two below ``n``. Pure and
deterministic; proofs are bounded by :data:`MAX_LEAVES`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = ["MAX_LEAVES", "MerkleError", "leaf_hash", "root", "proof", "root_from_proof"]

MAX_LEAVES = 1 << 10
"""More leaves than a value can hold (a proof is checked against this bound before any hashing)."""


class MerkleError(ValueError):
    """A proof is malformed (wrong length, index out of range, hash of the wrong size)."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def _root_of(leaves: Sequence[bytes]) -> bytes:
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return _node(_root_of(leaves[:k]), _root_of(leaves[k:]))


def root(items: Sequence[bytes]) -> bytes:
    """The root of the tree whose leaves are ``items`` (each hashed as a leaf); at least one item."""
    if not 1 <= len(items) <= MAX_LEAVES:
        raise MerkleError(f"a tree holds 1 to {MAX_LEAVES} leaves, not {len(items)}")
    return _root_of([leaf_hash(i) for i in items])


def proof(items: Sequence[bytes], index: int) -> tuple[bytes, ...]:
    """The audit path of ``items[index]``: sibling hashes from the leaf up to the root."""
    if not 1 <= len(items) <= MAX_LEAVES or not 0 <= index < len(items):
        raise MerkleError(f"no leaf {index} in a tree of {len(items)}")
    path: list[bytes] = []

    def walk(leaves: list[bytes], m: int) -> None:
        if len(leaves) == 1:
            return
        k = _split(len(leaves))
        if m < k:
            walk(leaves[:k], m)
            path.append(_root_of(leaves[k:]))
        else:
            walk(leaves[k:], m - k)
            path.append(_root_of(leaves[:k]))

    walk([leaf_hash(i) for i in items], index)
    return tuple(path)


def root_from_proof(item: bytes, index: int, count: int, path: Sequence[bytes]) -> bytes:
    """The root that ``path`` proves ``item`` to be leaf ``index`` of ``count`` under; :class:`MerkleError`
    if the path cannot be such a proof (its length is fixed by ``index`` and ``count``)."""
    if not 1 <= count <= MAX_LEAVES or not 0 <= index < count:
        raise MerkleError(f"no leaf {index} in a tree of {count}")
    if any(len(h) != 32 for h in path):
        raise MerkleError("every hash of a proof has 32 bytes")
    # the sizes of the subtrees on the way down, then the hashes on the way up (RFC 9162, 2.1.3.2)
    sides: list[bool] = []  # True: the sibling is on the right
    n, m = count, index
    while n > 1:
        k = _split(n)
        if m < k:
            sides.append(True)
            n = k
        else:
            sides.append(False)
            n, m = n - k, m - k
    if len(path) != len(sides):
        raise MerkleError(f"a proof for leaf {index} of {count} has {len(sides)} hashes, not {len(path)}")
    h = leaf_hash(item)
    for sibling, right in zip(path, reversed(sides), strict=True):
        h = _node(h, sibling) if right else _node(sibling, h)
    return h
