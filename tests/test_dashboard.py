"""The dashboard's routes over ASGI against 4 running in-process nodes (scripted answers, no browser)."""

from __future__ import annotations

import json
from dataclasses import replace
from collections.abc import MutableMapping
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from fastapi import FastAPI

from multillmn.config import PeerConfig
from peers.api import PeerHandle, create_app
from peers.dashboard import STATIC_FILES, dashboard_router
from peers.engine import ScriptedEngine
from peers.node import Node
from tests.conftest import make_net
from tests.test_ledger_integration import _wait_settled, cluster
from tests.test_node import Q, honest, running


def _handle(node: Node) -> PeerHandle:
    return PeerHandle(node.key.peer_id, "peer0", "m0", phase="ready", node=node)


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://peer")


def _events(text: str) -> list[dict[str, Any]]:
    out = []
    for frame in text.split("\n\n"):
        lines = frame.strip().splitlines()
        if lines and lines[0] == "event: snapshot":
            assert lines[1].startswith("data: ")
            out.append(json.loads(lines[1][len("data: "):]))
    return out


async def test_page_and_static_files_are_served_by_the_peer_app() -> None:
    handle = PeerHandle("ab" * 20, "peer0", "m0")  # still starting: the page is served all the same
    async with _client(create_app(handle)) as client:
        root = await client.get("/")
        assert root.status_code == 307 and root.headers["location"] == "/dashboard"
        page = await client.get("/dashboard")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        for name in ("app.js", "style.css", "uPlot.iife.min.js", "uPlot.min.css"):
            assert f"/dashboard/static/{name}" in page.text
        for name, media_type in STATIC_FILES.items():
            r = await client.get(f"/dashboard/static/{name}")
            assert r.status_code == 200 and r.headers["content-type"] == media_type and len(r.content) > 100
        assert "uPlot" in (await client.get("/dashboard/static/uPlot.iife.min.js")).text
        assert "MIT" in (await client.get("/dashboard/static/uPlot.LICENSE")).text
        for bad in ("index.html", "_router.py", "..%2F_router.py", "nothing.js"):
            assert (await client.get(f"/dashboard/static/{bad}")).status_code == 404
        snap = (await client.get("/dashboard/api/snapshot")).json()
        assert snap["self"]["phase"] == "starting" and snap["decisions"] == [] and snap["ledger"] is None
        assert (await client.post("/dashboard/api/verify", json={})).status_code == 503  # not ready


async def test_snapshot_shows_peers_weights_decisions_and_signed_answers() -> None:
    net = make_net([1, 1, 1, 1])
    async with running(net, honest(4)) as nodes:
        async with _client(create_app(_handle(nodes[0]))) as client:
            with trio.fail_after(30):
                for _ in range(2):
                    assert (await client.post("/v1/query", json={"question": Q})).status_code == 200
                snap = (await client.get("/dashboard/api/snapshot")).json()
    assert snap["self"]["height"] == 3 and snap["self"]["chain_id"] == net.genesis.chain_id
    peers = snap["peers"]
    assert len(peers) == 4 and sum(p["self"] for p in peers) == 1
    me = next(p for p in peers if p["self"])
    assert me["link"] == "self" and me["model"] == "m0" and me["height"] == 3 and me["phase"] == "ready"
    others = [p for p in peers if not p["self"]]
    assert all(p["link"] == "up" and p["height"] is None and p["phase"] is None for p in others)
    assert sorted(p["model"] for p in others) == ["m1", "m2", "m3"]  # as signed in their answers
    assert sum(p["share"] for p in peers) == pytest.approx(1.0)
    weights = snap["weights"]
    assert weights["heights"] == [1, 2, 3]
    assert len(weights["series"]) == 4 and all(s["weights"] == [1, 1, 1] for s in weights["series"])
    decisions = snap["decisions"]
    assert [d["height"] for d in decisions] == [2, 1]  # newest first
    d = decisions[0]
    assert d["answer"] == "Paris" and d["question"] == Q and d["agreed_weight"] * 3 > d["total_weight"] * 2
    assert len(d["answers"]) >= 3
    assert all(a["agreed"] and a["text"] == "Paris" and len(a["signature"]) == 128 for a in d["answers"])
    assert snap["ledger"] is None  # these nodes run without a ledger


async def _stream(app: FastAPI, query: str, out: trio.MemorySendChannel[str]) -> None:
    """GET /dashboard/api/events straight through ASGI, each body chunk into ``out`` as it is sent (httpx's
    ASGI transport would wait for the end of the stream)."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": "/dashboard/api/events", "raw_path": b"/dashboard/api/events", "query_string": query.encode(),
             "root_path": "", "headers": [(b"host", b"peer")], "client": ("127.0.0.1", 1), "server": ("peer", 80)}
    asked = False

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200
        elif message.get("body"):
            await out.send(message["body"].decode())

    await app(scope, receive, send)


async def test_events_stream_a_snapshot_at_once_then_changes_at_a_bounded_rate() -> None:
    net = make_net([1, 1, 1, 1])
    interval = 0.2
    async with running(net, honest(4)) as nodes:
        app = FastAPI()
        app.include_router(dashboard_router(_handle(nodes[0]), min_event_interval_s=interval, keepalive_s=0.5))
        send, receive = trio.open_memory_channel[str](100)
        seen: list[tuple[float, dict[str, Any]]] = []
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stream, app, "", send)
                async with _client(create_app(_handle(nodes[0]))) as api:
                    async for chunk in receive:
                        seen.extend((trio.current_time(), e) for e in _events(chunk))
                        if len(seen) == 1:  # the first snapshot came at once: now ask
                            nursery.start_soon(partial(api.post, "/v1/query", json={"question": Q}))
                        if seen and seen[-1][1]["decisions"]:
                            break
                nursery.cancel_scope.cancel()
    first, last = seen[0][1], seen[-1][1]
    assert first["self"]["height"] == 1 and first["decisions"] == []
    assert last["self"]["height"] == 2 and last["decisions"][0]["answer"] == "Paris"
    assert last["weights"]["heights"] == [1, 2]
    gaps = [b - a for (a, _), (b, _) in zip(seen, seen[1:])]
    assert all(g >= interval * 0.9 for g in gaps), gaps  # never faster than one event per interval


async def test_event_streams_are_bounded_and_a_closed_one_frees_its_slot() -> None:
    net = make_net([1, 1, 1, 1])
    async with running(net, honest(4)) as nodes:
        app = FastAPI()
        app.include_router(dashboard_router(_handle(nodes[0]), max_subscribers=2, min_event_interval_s=0.05))
        async with _client(app) as client:
            with trio.fail_after(30):
                async with trio.open_nursery() as nursery:
                    for _ in range(2):  # two streams that would run for a long time
                        nursery.start_soon(client.get, "/dashboard/api/events")
                    while (await client.get("/dashboard/api/subscribers")).json()["open"] < 2:
                        await trio.sleep(0.01)
                    refused = await client.get("/dashboard/api/events", params={"max_events": 1})
                    assert refused.status_code == 503 and "at most 2" in refused.json()["detail"]
                    assert refused.headers["retry-after"] == "5"
                    nursery.cancel_scope.cancel()  # both viewers go away
                assert (await client.get("/dashboard/api/subscribers")).json() == {"open": 0, "max": 2}
                again = await client.get("/dashboard/api/events", params={"max_events": 1})
                assert again.status_code == 200 and len(_events(again.text)) == 1
                assert (await client.get("/dashboard/api/events", params={"max_events": 0})).status_code == 422
    with pytest.raises(ValueError):
        dashboard_router(_handle(nodes[0]), max_subscribers=0)


async def test_verify_says_valid_for_a_decided_certificate_and_why_not_for_a_tampered_one() -> None:
    net = make_net([1, 1, 1, 1])
    async with running(net, honest(4)) as nodes:
        async with _client(create_app(_handle(nodes[0]))) as client:
            with trio.fail_after(30):
                cert = (await client.post("/v1/query", json={"question": Q})).json()["certificate"]
                ok = (await client.post("/dashboard/api/verify", json=cert)).json()
                tampered = dict(cert, summary={**cert["summary"], "answer": "Lyon"})
                bad = (await client.post("/dashboard/api/verify", json=tampered)).json()
                junk = await client.post("/dashboard/api/verify", content=b"not json",
                                         headers={"content-type": "text/plain"})
                deep = await client.post("/dashboard/api/verify", content=b"[" * 50_000 + b"]" * 50_000,
                                         headers={"content-type": "text/plain"})  # no JSON checks by the type
    assert ok["valid"] is True and ok["answer"] == "Paris" and ok["height"] == 1
    assert ok["precommit_weight"] * 3 > ok["total_weight"] * 2
    assert ok["genesis_digest"] == net.genesis.digest().hex() and ok["checked_by"] == "peer0"
    assert bad["valid"] is False and "summary does not match" in bad["reason"]
    assert junk.status_code == 422
    assert deep.status_code == 422 and "nested" in deep.json()["detail"]


async def test_snapshot_shows_the_ledger_tail_newest_first(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        with trio.fail_after(40):
            await c.nodes[0].submit(Q)
            await c.nodes[1].submit(Q)
        await _wait_settled(c.nodes, [1, 2])
        node = c.nodes[2]
        app = FastAPI()
        app.include_router(dashboard_router(PeerHandle(node.key.peer_id, "peer2", "m2", phase="ready", node=node)))
        async with _client(app) as client:
            snap = (await client.get("/dashboard/api/snapshot")).json()
        assert node.ledger is not None
        state_hash = node.ledger.state_hash()
    ledger = snap["ledger"]
    assert ledger["entries"] >= 2 and ledger["state_hash"] == state_hash
    certs = [e for e in ledger["tail"] if e["type"] == "certificate"]
    assert [e["height"] for e in certs] == [2, 1] and certs[0]["answer"] == "Paris"
    assert [e["index"] for e in ledger["tail"]] == sorted((e["index"] for e in ledger["tail"]), reverse=True)
    assert ledger["evidence"] == [] and ledger["evidence_count"] == 0
    assert [d["height"] for d in snap["decisions"]] == [2, 1]


async def test_a_height_that_decides_several_queries_shows_each_and_their_certificates_verify() -> None:
    table = {f"What is {k} + {k}?": str(2 * k) for k in range(1, 7)}
    net = make_net([1, 1, 1, 1])
    engines = [ScriptedEngine(table, model_name=f"m{i}", delay_s=0.2) for i in range(4)]
    cfg = replace(PeerConfig.for_tests(), max_batch=8, queries_per_height=16)
    certs: list[dict[str, Any]] = []
    async with running(net, engines, cfg=cfg) as nodes:
        async with _client(create_app(_handle(nodes[0]))) as client:
            async def ask(question: str) -> None:
                r = await client.post("/v1/query", json={"question": question})
                assert r.status_code == 200, r.text
                certs.append(r.json()["certificate"])

            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    for question in table:
                        nursery.start_soon(ask, question)
                snap = (await client.get("/dashboard/api/snapshot")).json()
                checks = [(await client.post("/dashboard/api/verify", json=c)).json() for c in certs]
    decisions = snap["decisions"]
    assert sorted(d["question"] for d in decisions) == sorted(table)
    assert all(d["answer"] == table[d["question"]] for d in decisions)
    assert len({d["height"] for d in decisions}) < len(table)  # some shared a height
    for d in decisions:
        assert len(d["answers"]) >= 3 and all(a["text"] == d["answer"] and a["agreed"] for a in d["answers"])
        assert len({a["signature"] for a in d["answers"]}) == len(d["answers"])
    assert any(c["version"] == 4 for c in certs)  # query certificates of a shared height
    assert all(c["valid"] for c in checks), checks
