"""Limits on what an HTTP client may send, as a pure ASGI middleware in front of the API.

hypercorn bounds the request head (size, and the time to send it) but not
the body: a client that sends its headers and then stalls, or drips its body,
would hold a connection and a task for ever. :class:`RequestLimits` reads the
whole body before the app sees the request and answers on its own when the
client breaks a limit:

* **413** when ``Content-Length`` (checked before reading) or the bytes received
  exceed :attr:`HttpLimits.max_body_bytes`;
* **408** when the body is not complete :attr:`HttpLimits.body_timeout_s` after
  the request head arrived (the connection is then closed: the request was
  never finished);
* **422** when a JSON body (``application/json``, ``*+json`` or no content
  type) is not JSON within :func:`multillmn.jsonsafe.loads`'s bounds: nesting
  depth, integer digits, UTF-8, and no string or key that cannot be encoded
  as UTF-8 (a lone surrogate escape), with the field named in ``loc`` as
  FastAPI names fields.

The app then receives the buffered body; later ``receive`` calls (waiting for
a disconnect) go to the server unchanged and without a deadline.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import anyio

from multillmn import jsonsafe

__all__ = ["HttpLimits", "RequestLimits"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class HttpLimits:
    """Bounds on one HTTP request's body."""

    max_body_bytes: int = 256 << 10
    """A question is at most 2,000 characters; a chat history of 256 messages fits with room to spare."""
    body_timeout_s: float = 10.0
    """From the request head to the last byte of the body."""
    max_json_depth: int = 32
    """Nesting of arrays and objects (a chat request is about 5 deep)."""
    max_int_digits: int = 32

    def validate(self) -> None:
        if self.max_body_bytes < 0 or self.body_timeout_s <= 0 or self.max_json_depth < 1 \
                or self.max_int_digits < 1:
            raise ValueError(f"invalid HTTP limits: {self}")


class _TooLarge(Exception):
    pass


class RequestLimits:
    """ASGI middleware: body size (413), time to receive the body (408) and JSON bounds (422)."""

    def __init__(self, app: ASGIApp, limits: HttpLimits | None = None) -> None:
        self.app = app
        self.limits = limits if limits is not None else HttpLimits()
        self.limits.validate()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limits = self.limits
        declared = _content_length(scope)
        if declared is not None and declared > limits.max_body_bytes:
            await _reply(send, 413, f"request body of {declared} bytes exceeds the limit of {limits.max_body_bytes}")
            return
        try:
            with anyio.fail_after(limits.body_timeout_s):
                body = await _read_body(receive, limits.max_body_bytes)
        except TimeoutError:
            await _reply(send, 408, f"request body not received within {limits.body_timeout_s:g} s")
            return
        except _TooLarge:
            await _reply(send, 413, f"request body exceeds the limit of {limits.max_body_bytes} bytes")
            return
        if body is None:
            return  # the client went away
        if body and _is_json(scope):
            try:
                jsonsafe.loads(body, max_bytes=limits.max_body_bytes, max_depth=limits.max_json_depth,
                               max_int_digits=limits.max_int_digits)
            except jsonsafe.JsonError as exc:
                await _reply(send, 422, [{"type": "json_invalid", "loc": ["body", *exc.path], "msg": exc.reason,
                                          "input": None}])
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None if the client disconnected first; raises :class:`_TooLarge`."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


def _content_length(scope: Scope) -> int | None:
    raw = _header(scope, b"content-length")
    if raw is None or not raw.strip().isdigit() or len(raw) > 20:
        return None  # absent or malformed: the server (h11) refuses a malformed one itself
    return int(raw)


def _is_json(scope: Scope) -> bool:
    """Whether FastAPI would parse the body as JSON: no content type, ``application/json`` or ``*+json``."""
    raw = _header(scope, b"content-type")
    if raw is None:
        return True
    mime = raw.split(b";", 1)[0].strip().lower()
    return mime == b"application/json" or (mime.startswith(b"application/") and mime.endswith(b"+json"))


async def _reply(send: Send, status: int, detail: Any) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
