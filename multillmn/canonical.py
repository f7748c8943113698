"""Canonical msgpack bytes: the only form that is ever hashed or signed.

Two peers that hold equal values must produce equal bytes, so maps are packed
with sorted keys, strings and bytes keep distinct types, and nothing but
None, bool, int, str, bytes, list/tuple and str-keyed dict may appear.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack

__all__ = ["CanonicalError", "pack", "unpack", "digest"]


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


def unpack(data: bytes, *, max_len: int = 1 << 24) -> Any:
    """Decode msgpack produced by :func:`pack`; lists come back as tuples.

    Raises :class:`CanonicalError` on malformed bytes, trailing data, non-string
    map keys or float values (never used on the wire).
    """
    if len(data) > max_len:
        raise CanonicalError(f"{len(data)} bytes exceeds the limit of {max_len}")
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            use_list=False,
            strict_map_key=True,
            max_bin_len=max_len,
            max_str_len=max_len,
            max_array_len=1 << 16,
            max_map_len=1 << 12,
            max_ext_len=0,
        )
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as exc:
        raise CanonicalError(f"malformed msgpack: {exc}") from exc
    _reject_floats(value)
    return value


def _reject_floats(value: Any) -> None:
    if isinstance(value, float):
        raise CanonicalError("floats are not allowed on the wire")
    if isinstance(value, tuple):
        for v in value:
            _reject_floats(v)
    elif isinstance(value, dict):
        for v in value.values():
            _reject_floats(v)


def digest(value: Any) -> bytes:
    """SHA-256 of the canonical bytes of ``value`` (32 bytes)."""
    return hashlib.sha256(pack(value)).digest()
