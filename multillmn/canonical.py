"""Canonical msgpack bytes: the only form that is ever hashed or signed.

Two peers that hold equal values must produce equal bytes, so maps are packed
with sorted keys, strings and bytes keep distinct types, and nothing but
None, bool, int, str, bytes, list/tuple and str-keyed dict may appear.
"""

from __future__ import annotations

import hashlib
from itertools import chain
from typing import Any, Final

import msgpack

__all__ = ["CanonicalError", "MAX_DEPTH", "MAX_ARRAY_LEN", "MAX_MAP_LEN", "pack", "unpack", "digest"]

MAX_DEPTH: Final = 16
"""Deepest nesting :func:`unpack` accepts by default (a proposal is about 6 levels deep)."""
MAX_ARRAY_LEN: Final = 1 << 16
MAX_MAP_LEN: Final = 1 << 12


class CanonicalError(ValueError):
    """A value cannot be given canonical bytes, or bytes are not canonical msgpack."""


def _normalise(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        if not -(2**63) <= value < 2**64:
            raise CanonicalError(f"integer {value} does not fit in 64 bits")
        return value
    if value is None or isinstance(value, (bool, str, bytes)):
        return value
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise CanonicalError("map keys must be strings")
        return {k: _normalise(value[k]) for k in sorted(value)}
    raise CanonicalError(f"type {type(value).__name__} has no canonical form")


def pack(value: Any) -> bytes:
    """Canonical msgpack bytes of ``value`` (sorted map keys, bin type for bytes)."""
    packed: bytes = msgpack.packb(_normalise(value), use_bin_type=True, strict_types=False)
    return packed


def unpack(data: bytes, *, max_len: int = 1 << 24, max_depth: int = MAX_DEPTH,
           max_array_len: int = MAX_ARRAY_LEN) -> Any:
    """Decode msgpack produced by :func:`pack`; lists come back as tuples.

    Raises :class:`CanonicalError`, and nothing else, for any input: malformed
    bytes, trailing data, more than ``max_len`` bytes, a string, bytes, array
    or map over its length limit, nesting deeper than ``max_depth`` (a scalar
    has depth 0, a list of scalars depth 1), map keys that are not strings,
    float or extension values (never used on the wire). Integers are those
    msgpack can hold, ``[-2^63, 2^64)``. Nothing here recurses in Python, so
    no nesting reaches the interpreter's limit. ``max_array_len`` (items of
    one array) may be raised for local data such as a ledger snapshot: every
    item takes at least a byte, so ``max_len`` still bounds the work.
    """
    try:
        size = len(data)
    except TypeError:
        raise CanonicalError(f"cannot decode {type(data).__name__}: msgpack is bytes") from None
    if size > max_len:
        raise CanonicalError(f"{size} bytes exceeds the limit of {max_len}")
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            use_list=False,
            strict_map_key=True,
            max_bin_len=max_len,
            max_str_len=max_len,
            max_array_len=max_array_len,
            max_map_len=MAX_MAP_LEN,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises ValueError and its subclasses, TypeError, MemoryError...
        raise CanonicalError(f"malformed msgpack: {type(exc).__name__}: {exc}"[:300]) from None
    _check_tree(value, max_depth)
    return value


_SCALARS: Final = frozenset({type(None), bool, int, str, bytes})
_CONTAINERS: Final = frozenset({tuple, dict})
_ALLOWED: Final = _SCALARS | _CONTAINERS


def _check_tree(value: Any, max_depth: int) -> None:
    """Reject floats, non-string keys and nesting deeper than ``max_depth``, level by level, without recursion.

    Linear in the number of items: each level's types are checked at C speed,
    and only containers are visited one by one (about 0.15 s for 2 MiB of
    nested empty arrays, the worst case of a maximal wire message).
    """
    level: list[Any] = [value]
    depth = 0
    while True:
        kinds = set(map(type, level))
        if not kinds <= _ALLOWED:
            bad = next(k for k in kinds if k not in _ALLOWED)
            raise CanonicalError("floats are not allowed on the wire" if bad is float
                                 else f"type {bad.__name__} is not allowed on the wire")
        if not kinds & _CONTAINERS:
            return
        if depth >= max_depth:
            raise CanonicalError(f"nested deeper than {max_depth} levels")
        depth += 1
        below: list[Any] = []
        keys: list[Any] = []
        for item in level:
            kind = type(item)
            if kind is tuple:
                below.extend(item)
            elif kind is dict:
                keys.extend(item)
                below.extend(item.values())
        if not set(map(type, keys)) <= {str}:
            raise CanonicalError("map keys must be strings")
        level = below


def digest(value: Any) -> bytes:
    """SHA-256 of the canonical bytes of ``value`` (32 bytes)."""
    return hashlib.sha256(pack(value)).digest()
