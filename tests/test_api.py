"""HTTP API over ASGI against running in-process nodes: answers, certificates, and 4xx on bad input."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio

from multillmn.certificate import verify
from peers.api import PeerHandle, create_app
from tests.conftest import make_net
from tests.test_node import Q, honest, running


def _client(handle: PeerHandle) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(handle)), base_url="http://peer")


async def test_query_status_certificates_and_chat() -> None:
    net = make_net([1, 1, 1, 1])
    async with running(net, honest(4)) as nodes:
        node = nodes[0]
        handle = PeerHandle(node.key.peer_id, "peer0", "m0", phase="ready", node=node)
        async with _client(handle) as client:
            with trio.fail_after(30):
                r = await client.post("/v1/query", json={"question": Q})
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["answer"] == "Paris" and body["agreed_share"] >= 0.75
                assert {a["model"] for a in body["answers"]} <= {"m0", "m1", "m2", "m3"}
                assert all(len(a["signature"]) == 128 for a in body["answers"])
                assert set(body["timings"]) == {"total_ms", "generation_ms", "consensus_ms", "protocol_ms"}
                assert verify(body["certificate"], net.genesis).answer == "Paris"

                status = (await client.get("/v1/status")).json()
                assert status["ready"] and status["peer_id"] == node.key.peer_id
                assert status["height"] == 2 and status["total_weight"] == 4
                assert len(status["validators"]) == 4

                cert = await client.get("/v1/certificates/1")
                assert cert.status_code == 200 and cert.json()["height"] == 1
                assert (await client.get("/v1/certificates/7")).status_code == 404
                assert (await client.get("/v1/certificates/0")).status_code == 422

                chat = await client.post("/v1/chat/completions", json={
                    "model": "multillmn", "messages": [{"role": "system", "content": "Be brief."},
                                                       {"role": "user", "content": Q}]})
                assert chat.status_code == 200, chat.text
                data = chat.json()
                assert data["object"] == "chat.completion"
                assert data["choices"][0]["message"] == {"role": "assistant", "content": "Paris"}
                assert verify(data["certificate"], net.genesis).height == 2


@pytest.mark.parametrize(
    ("path", "body", "status", "detail"),
    [
        ("/v1/query", {}, 422, "question"),
        ("/v1/query", {"question": ""}, 422, "question"),
        ("/v1/query", {"question": 42}, 422, "question"),
        ("/v1/query", {"question": "x" * 2001}, 422, "question"),
        ("/v1/query", {"question": "ok?", "max_tokens": 0}, 422, "max_tokens"),
        ("/v1/query", {"question": "ok?", "colour": "red"}, 422, "colour"),
        ("/v1/query", "not json", 422, ""),
        ("/v1/chat/completions", {"messages": []}, 422, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "system", "content": "hi"}]}, 422, "user message"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stream": True}, 400,
         "streaming"),
        ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, 422, "role"),
        # issue 10: a lone surrogate was a 500, nesting 1,000 deep too
        ("/v1/query", '{"question": "Is \\ud800 a letter?"}', 422, "question"),
        ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "\\udfff"}]}', 422, "content"),
        ("/v1/query", '{"question": ' + "[" * 1000 + "]" * 1000 + "}", 422, "nested"),
    ],
)
async def test_bad_requests_get_a_clear_4xx(path: str, body: Any, status: int, detail: str) -> None:
    handle = PeerHandle("a" * 40, "peer0", "m", phase="ready", node=None)
    async with _client(handle) as client:
        if isinstance(body, str):
            r = await client.post(path, content=body, headers={"content-type": "application/json"})
        else:
            r = await client.post(path, json=body)
    assert r.status_code == status, r.text
    assert detail in r.text


async def test_not_ready_peer_answers_503_with_its_phase() -> None:
    handle = PeerHandle("a" * 40, "peer0", "smollm2", phase="loading-model")
    async with _client(handle) as client:
        r = await client.post("/v1/query", json={"question": "hi?"})
        status = (await client.get("/v1/status")).json()
    assert r.status_code == 503 and "loading-model" in r.json()["detail"]
    assert status["ready"] is False and status["phase"] == "loading-model"
