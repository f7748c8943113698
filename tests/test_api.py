"""HTTP API over ASGI against running in-process nodes: answers, certificates, and 4xx on bad input."""

from __future__ import annotations

from typing import Any, cast

import httpx
import pytest
import trio

from consensus.driver import PoolFull
from multillmn.certificate import verify
from peers.api import MAX_PENDING_PER_CLIENT, RETRY_AFTER_S, PeerHandle, create_app
from peers.node import Node, QueryFailed
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


# -- overload (issue 10): 429 with Retry-After, 503 for the rest, and a bound per client ------------------------


class _StubNode:
    """What the API calls of a node: ``submit``, here failing or held until released."""

    def __init__(self, error: str) -> None:
        self.error = error
        self.calls = 0
        self.release = trio.Event()

    async def submit(self, question: str, max_tokens: int | None = None) -> Any:
        self.calls += 1
        await self.release.wait()
        raise QueryFailed(self.error)

    def status(self) -> dict[str, Any]:
        return {"pending_queries": self.calls}

    @property
    def driver(self) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(config=SimpleNamespace(max_pending=256))


def _stub_client(stub: _StubNode, address: str, app: Any = None) -> httpx.AsyncClient:
    handle = PeerHandle("a" * 40, "peer0", "m", phase="ready", node=cast(Node, stub))
    transport = httpx.ASGITransport(app=app or create_app(handle), client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://peer")


CHAT = {"messages": [{"role": "user", "content": Q}]}


async def test_a_full_query_pool_is_429_with_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real node's "pool full" failure becomes 429 + Retry-After on both query endpoints."""
    net = make_net([1, 1, 1, 1])
    async with running(net, honest(4)) as nodes:
        node = nodes[0]

        def full(*args: Any, **kwargs: Any) -> Any:
            raise PoolFull("256 queries are pending")

        monkeypatch.setattr(node.driver, "submit", full)
        handle = PeerHandle(node.key.peer_id, "peer0", "m0", phase="ready", node=node)
        async with _client(handle) as client:
            for path, body in (("/v1/query", {"question": Q}), ("/v1/chat/completions", CHAT)):
                r = await client.post(path, json=body)
                assert r.status_code == 429, r.text
                assert r.headers["retry-after"] == str(RETRY_AFTER_S)
                assert r.json()["detail"].startswith("too many pending queries")


async def test_other_query_failures_stay_503_without_retry_after() -> None:
    stub = _StubNode("no decision within 30 s")
    stub.release.set()
    async with _stub_client(stub, "10.0.0.1") as client:
        for path, body in (("/v1/query", {"question": Q}), ("/v1/chat/completions", CHAT)):
            r = await client.post(path, json=body)
            assert r.status_code == 503 and "retry-after" not in r.headers
            assert r.json()["detail"] == "no decision within 30 s"


async def test_one_client_cannot_hold_more_than_its_share_of_pending_queries() -> None:
    """16 queries waiting from one address: its 17th is a 429 while another address still gets through;
    once its queries end, the address may ask again."""
    stub = _StubNode("no decision within 30 s")
    handle = PeerHandle("a" * 40, "peer0", "m", phase="ready", node=cast(Node, stub))
    app = create_app(handle)
    statuses: list[int] = []

    async def ask(client: httpx.AsyncClient, path: str = "/v1/query", body: Any = None) -> None:
        statuses.append((await client.post(path, json=body or {"question": Q})).status_code)

    async with _stub_client(stub, "10.0.0.1", app) as greedy, _stub_client(stub, "10.0.0.2", app) as other:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for i in range(MAX_PENDING_PER_CLIENT):
                    nursery.start_soon(ask, greedy, *(("/v1/chat/completions", CHAT) if i % 2 else ()))
                while stub.calls < MAX_PENDING_PER_CLIENT:
                    await trio.sleep(0.01)
                for path, body in (("/v1/query", {"question": Q}), ("/v1/chat/completions", CHAT)):
                    r = await greedy.post(path, json=body)
                    assert r.status_code == 429 and r.headers["retry-after"] == str(RETRY_AFTER_S)
                    assert "from this client" in r.json()["detail"]
                assert stub.calls == MAX_PENDING_PER_CLIENT  # refused before reaching the node
                nursery.start_soon(ask, other)
                while stub.calls < MAX_PENDING_PER_CLIENT + 1:
                    await trio.sleep(0.01)
                queue = (await other.get("/v1/status")).json()["queue"]  # the queue, as /v1/status shows it
                assert queue == {"pending_queries": MAX_PENDING_PER_CLIENT + 1, "max_pending_queries": 256,
                                 "waiting_here": MAX_PENDING_PER_CLIENT + 1, "clients_waiting": 2,
                                 "max_pending_per_client": MAX_PENDING_PER_CLIENT}
                stub.release.set()
            assert statuses == [503] * (MAX_PENDING_PER_CLIENT + 1)
            r = await greedy.post("/v1/query", json={"question": Q})  # its slots were given back
            assert r.status_code == 503 and stub.calls == MAX_PENDING_PER_CLIENT + 2
