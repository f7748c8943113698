"""Bounded JSON decoding for text from outside: HTTP bodies, certificate files, ledger transactions.

:func:`loads` is :func:`json.loads` with the bounds an attacker cannot push
it past, raising :class:`JsonError` (a ``ValueError``) and nothing else:

* at most ``max_bytes`` of input; bytes must be UTF-8 (without a byte order mark);
* arrays and objects nested at most ``max_depth`` deep, checked on the text
  before parsing (the standard parser recurses, and about 1,000 levels raise
  ``RecursionError``);
* integers of at most ``max_int_digits`` digits (Python refuses more than 4,300
  with a bare ``ValueError``, and converting long ones is quadratic);
* no ``NaN`` / ``Infinity`` (not JSON);
* every string and key encodes to UTF-8: a lone surrogate escape such as
  ``"\\ud800"`` is refused, with the path of the string in :attr:`JsonError.path`.

Nothing here recurses in Python.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from itertools import accumulate
from typing import Any, Final, NoReturn

__all__ = ["JsonError", "loads", "check_text", "format_path", "MAX_BYTES", "MAX_DEPTH", "MAX_INT_DIGITS"]

MAX_BYTES: Final = 1 << 20
MAX_DEPTH: Final = 32
MAX_INT_DIGITS: Final = 64

PathItem = str | int

# A string, or an unterminated one up to the end; an escape may be the last character. Every match
# attempt at a quote succeeds, so the scan is linear whatever the text (no rescan from each quote).
_STRING: Final = re.compile(r'"[^"\\]*(?:\\(?:.|\Z)[^"\\]*)*(?:"|\Z)', re.DOTALL)
_NOT_BRACKET: Final = re.compile(r"[^\[\]{}]+")
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89abcdefABCDEF]")
_STEP: Final = {"[": 1, "{": 1, "]": -1, "}": -1}


class JsonError(ValueError):
    """Input is not JSON within the bounds; ``path`` locates the offending value when known."""

    def __init__(self, reason: str, path: tuple[PathItem, ...] = ()) -> None:
        super().__init__(f"{reason} at {format_path(path)}" if path else reason)
        self.reason = reason
        self.path = path


def format_path(path: tuple[PathItem, ...]) -> str:
    """``("messages", 0, "content")`` as ``$.messages[0].content``."""
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def loads(data: bytes | bytearray | memoryview | str, *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH,
          max_int_digits: int = MAX_INT_DIGITS) -> Any:
    """Parse JSON within the bounds; raise :class:`JsonError` (only) saying which one was crossed."""
    text = _text(data, max_bytes)
    depth = _deeper_than(text, max_depth)
    if depth is not None:
        raise JsonError(f"JSON nested {depth} deep, deeper than the limit of {max_depth}")
    try:
        value = json.loads(text, parse_int=_int_parser(max_int_digits), parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise JsonError(f"not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:  # JsonError from the hooks; RecursionError only for a huge max_depth
        if isinstance(exc, JsonError):
            raise
        raise JsonError(f"not JSON: {exc}") from None
    if _SURROGATE_ESCAPE.search(text) is not None:
        check_text(value)
    return value


def _text(data: bytes | bytearray | memoryview | str, max_bytes: int) -> str:
    if isinstance(data, str):
        if len(data) > max_bytes:
            raise JsonError(f"JSON text of {len(data)} characters exceeds the limit of {max_bytes} bytes")
        try:
            data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise JsonError(f"text is not valid Unicode (a lone surrogate at character {exc.start})") from None
        return data
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise JsonError(f"cannot parse {type(data).__name__} as JSON")
    raw = bytes(data)
    if len(raw) > max_bytes:
        raise JsonError(f"JSON of {len(raw)} bytes exceeds the limit of {max_bytes}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonError(f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None


def _deeper_than(text: str, max_depth: int) -> int | None:
    """The bracket nesting outside strings if it exceeds ``max_depth``, else None.

    Up to the first point where the text stops being JSON, the brackets left
    after removing strings are exactly the parser's; past it the parser stops,
    so counting there (an unterminated string runs to the end) only refuses
    what it would refuse anyway.
    """
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    if brackets.count("[") + brackets.count("{") <= max_depth:
        return None
    depth = max(accumulate(map(_STEP.__getitem__, brackets)))
    return depth if depth > max_depth else None


def _int_parser(max_digits: int) -> Callable[[str], int]:
    def parse(digits: str) -> int:
        if len(digits) - digits.startswith("-") > max_digits:
            raise JsonError(f"an integer of {len(digits)} digits exceeds the limit of {max_digits}")
        return int(digits)

    return parse


def _no_constant(name: str) -> NoReturn:
    raise JsonError(f"{name} is not JSON")


def check_text(value: Any) -> None:
    """Raise :class:`JsonError` if a string or key in ``value`` (dicts, lists, tuples, scalars) does not
    encode to UTF-8, with its path; without recursion."""
    stack: list[tuple[Any, tuple[PathItem, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if not _encodes(item):
                raise JsonError("text is not valid Unicode (a lone surrogate)", path)
        elif isinstance(item, (list, tuple)):
            stack.extend((v, (*path, i)) for i, v in enumerate(item))
        elif isinstance(item, dict):
            for k, v in item.items():
                if isinstance(k, str) and not _encodes(k):
                    raise JsonError("a key is not valid Unicode (a lone surrogate)", path)
                stack.append((v, (*path, k)))


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
