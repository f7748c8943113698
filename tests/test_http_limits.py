"""HTTP limits (issue 10): slow bodies time out, large bodies get 413, deep or invalid JSON and lone surrogates 422.

The slow-body test runs a real hypercorn server on loopback, as the daemon
configures it, and holds many connections that send their headers and then
stall or drip their body.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio
from hypercorn.trio import serve
from pydantic import ValidationError

from peers.api import ChatRequest, HttpLimits, PeerHandle, QueryRequest, create_app
from peers.daemon import http_config

HEAD = (b"POST /v1/query HTTP/1.1\r\nHost: peer\r\nContent-Type: application/json\r\n"
        b"Content-Length: 200\r\n\r\n")


def _handle() -> PeerHandle:
    return PeerHandle("a" * 40, "peer0", "m", phase="loading-model")  # valid requests get 503


def _client(limits: HttpLimits | None = None) -> httpx.AsyncClient:
    app = create_app(_handle(), limits)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://peer")


async def _serve(nursery: trio.Nursery, limits: HttpLimits) -> tuple[str, int]:
    config = http_config("127.0.0.1", 0)
    binds = await nursery.start(serve, create_app(_handle(), limits), config)
    host, port = binds[0].removeprefix("http://").rsplit(":", 1)
    return host, int(port)


async def _stall(address: tuple[str, int], drip: bool, deadline: float, out: list[tuple[float, bytes]]) -> None:
    """Send the head and part of the body, then stall (or drip a byte every 0.2 s); record when the server
    closed the connection (or ``deadline``) and what it answered (``b"reset"`` for a reset)."""
    start = trio.current_time()
    stream = await trio.open_tcp_stream(*address)
    received = b""
    async with stream:
        await stream.send_all(HEAD + b'{"question": "')
        with trio.move_on_after(deadline):
            try:
                while True:
                    with trio.move_on_after(0.2 if drip else deadline):
                        chunk = await stream.receive_some(4096)
                        if not chunk:
                            break
                        received += chunk
                        continue
                    await stream.send_all(b"x")
            except trio.BrokenResourceError:  # the server closed with our drip unread: a reset
                received = received or b"reset"
        out.append((trio.current_time() - start, received))


@pytest.mark.parametrize("drip", [False, True], ids=["stalled", "dripping"])
async def test_connections_that_never_finish_their_body_are_answered_408_and_closed(drip: bool) -> None:
    limits = HttpLimits(body_timeout_s=1.0)
    results: list[tuple[float, bytes]] = []
    async with trio.open_nursery() as nursery:
        address = await _serve(nursery, limits)
        async with trio.open_nursery() as clients:
            for _ in range(300):
                clients.start_soon(_stall, address, drip, 10.0, results)
        nursery.cancel_scope.cancel()
    assert len(results) == 300
    slowest = max(t for t, _ in results)
    assert slowest < 6.0, f"a connection stayed open {slowest:.1f} s"  # 1 s limit, generous for a loaded machine
    answered = [r for _, r in results if r != b"reset"]
    assert all(r.startswith(b"HTTP/1.1 408") and b"not received within 1 s" in r for r in answered), answered[:1]
    if not drip:  # a dripping client may see the close as a reset, its unread 408 discarded
        assert len(answered) == len(results)


async def test_without_the_body_deadline_a_stalled_connection_stays_open() -> None:
    """The control of the test above: with a long deadline, the same client is still waiting after 2 s."""
    results: list[tuple[float, bytes]] = []
    async with trio.open_nursery() as nursery:
        address = await _serve(nursery, HttpLimits(body_timeout_s=60.0))
        await _stall(address, False, 2.0, results)
        nursery.cancel_scope.cancel()
    assert results[0][1] == b"" and results[0][0] >= 2.0


def test_default_limits_are_bounded() -> None:
    limits = HttpLimits()
    assert 1 <= limits.body_timeout_s <= 30 and limits.max_body_bytes <= 1 << 20 and limits.max_json_depth <= 64
    with pytest.raises(ValueError, match="invalid HTTP limits"):
        HttpLimits(body_timeout_s=0).validate()


async def _exchange(address: tuple[str, int], request: bytes) -> bytes:
    """Send ``request`` and read the answer until the server closes (a reset after an answer ends it too)."""
    received = b""
    async with await trio.open_tcp_stream(*address) as stream:
        try:
            await stream.send_all(request)
            while chunk := await stream.receive_some(65536):
                received += chunk
        except trio.BrokenResourceError:
            pass
    return received


async def test_oversized_bodies_get_413_declared_or_streamed() -> None:
    limits = HttpLimits(max_body_bytes=1000)
    async with _client(limits) as client:
        declared = await client.post("/v1/query", content=b"x" * 1001, headers={"content-type": "application/json"})
        assert declared.status_code == 413 and "exceeds the limit of 1000" in declared.json()["detail"]
        fits = await client.post("/v1/query", json={"question": "x" * 900})
        assert fits.status_code == 503  # within the limit: validated, then the peer is not ready
    chunk = b"64\r\n" + b" " * 100 + b"\r\n"
    async with trio.open_nursery() as nursery:
        address = await _serve(nursery, limits)
        with trio.fail_after(10):
            streamed = await _exchange(address, b"POST /v1/query HTTP/1.1\r\nHost: peer\r\n"
                                       b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                                       + chunk * 11)
        nursery.cancel_scope.cancel()
    assert streamed.startswith(b"HTTP/1.1 413"), streamed


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/query", b'{"question": "ok", "max_tokens": ' + b"[" * 1000 + b"]" * 1000 + b"}"),
        ("/v1/query", b'{"question": ' + b"[" * 100_000),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "x": '
         + b'{"a": ' * 40 + b"1" + b"}" * 40 + b"}"),
        ("/v1/query", b'{"question": "ok?", "max_tokens": ' + b"9" * 5000 + b"}"),
        ("/v1/query", b'{"question": "\xff\xfe"}'),
        ("/v1/query", b'{"question": NaN}'),
    ],
    ids=["depth-1000", "depth-100000-unterminated", "depth-41-in-an-ignored-field", "huge-integer", "not-utf8",
         "nan"],
)
async def test_json_outside_the_bounds_gets_422_never_500(path: str, body: bytes) -> None:
    async with _client() as client:
        r = await client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["type"] == "json_invalid"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/query", '{"question": "Is \\ud800 a letter?"}', ["body", "question"]),
        ("/v1/query", '{"question": "\\udfff"}', ["body", "question"]),
        ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi \\ud800"}]}',
         ["body", "messages", 0, "content"]),
        ("/v1/chat/completions",
         '{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\udbff!"}]}]}',
         ["body", "messages", 0, "content", 0, "text"]),
        ("/v1/chat/completions", '{"model": "m\\ud800", "messages": [{"role": "user", "content": "hi"}]}',
         ["body", "model"]),
    ],
)
async def test_lone_surrogates_get_422_naming_the_field(path: str, body: str, field: list[Any]) -> None:
    async with _client() as client:
        r = await client.post(path, content=body.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == field


async def test_surrogate_pairs_and_plain_text_pass() -> None:
    async with _client() as client:
        pair = await client.post("/v1/query", content='{"question": "Is \\ud83d\\ude00 a smile?"}'.encode(),
                                 headers={"content-type": "application/json"})
        chat = await client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "héllo"}]})
    assert pair.status_code == 503 and chat.status_code == 503  # validated; the peer is not ready


def test_models_refuse_text_that_cannot_be_encoded_without_the_middleware() -> None:
    with pytest.raises(ValidationError, match="question"):
        QueryRequest.model_validate({"question": "\ud800"})
    with pytest.raises(ValidationError, match="content"):
        ChatRequest.model_validate({"messages": [{"role": "user", "content": [{"type": "text", "text": "\udc00"}]}]})
    with pytest.raises(ValidationError, match="model"):
        ChatRequest.model_validate({"model": "\udc00", "messages": [{"role": "user", "content": "hi"}]})
    assert json.loads(QueryRequest.model_validate({"question": "\U0001f600"}).model_dump_json())["question"]
