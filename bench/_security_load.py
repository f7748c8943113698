"""Security bench, attack classes 4, 6 and 7: malformed and slow HTTP, floods, availability."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import httpx
import trio

from bench._security_peers import ATTACKER, Peers, Row, decide, settle
from consensus.chain import SCORE_WINDOW
from consensus.driver import MAX_CATCHUP_AHEAD, MAX_CATCHUP_PER_HEIGHT, MAX_CHECKING, MAX_FUTURE_PER_SIGNER
from consensus.driver import RESEND_MESSAGES
from consensus.driver._scoring import FUTURE_HEIGHTS, SIMS_KEPT
from consensus.driver.behaviours import forge_decision
from consensus.messages import Answer, Proposal, Vote, sign
from multillmn.certificate import CertificateError
from multillmn.client import ClientError, check, check_reply
from peers.api import HttpLimits, PeerHandle, create_app
from peers.node import Node
from tests.test_node import Q


# --- 4. malformed HTTP ------------------------------------------------------------------------------


def _json(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def http_attacks() -> list[tuple[str, str, str, dict[str, Any]]]:
    """(name, method, path, httpx request arguments) of requests that must get a 4xx."""
    q, chat, js = "/v1/query", "/v1/chat/completions", {"content-type": "application/json"}
    user = [{"role": "user", "content": "hi"}]
    bodies: list[tuple[str, str, Any]] = [
        ("question an integer", q, {"question": 1}), ("question null", q, {"question": None}),
        ("question a list", q, {"question": ["a"]}), ("question an object", q, {"question": {"a": 1}}),
        ("question a bool", q, {"question": True}), ("question empty", q, {"question": ""}),
        ("question of 2,001 characters", q, {"question": "x" * 2001}),
        ("max_tokens a string", q, {"question": "ok?", "max_tokens": "5"}),
        ("max_tokens 0", q, {"question": "ok?", "max_tokens": 0}),
        ("max_tokens 1,025", q, {"question": "ok?", "max_tokens": 1025}),
        ("max_tokens -1", q, {"question": "ok?", "max_tokens": -1}),
        ("max_tokens 1.5", q, {"question": "ok?", "max_tokens": 1.5}),
        ("max_tokens a bool", q, {"question": "ok?", "max_tokens": True}),
        ("unknown field", q, {"question": "ok?", "temperature": 0.5}), ("no question", q, {}),
        ("body a list", q, [1]), ("body null", q, None), ("body a string", q, "What?"),
        ("chat without messages", chat, {}), ("chat with no message", chat, {"messages": []}),
        ("chat role unknown", chat, {"messages": [{"role": "robot", "content": "hi"}]}),
        ("chat content an integer", chat, {"messages": [{"role": "user", "content": 5}]}),
        ("chat user without content", chat, {"messages": [{"role": "user"}]}),
        ("chat without a user message", chat, {"messages": [{"role": "system", "content": "hi"}]}),
        ("chat messages a string", chat, {"messages": "hi"}),
        ("chat of 257 messages", chat, {"messages": user * 257}),
        ("chat max_tokens 0", chat, {"messages": user, "max_tokens": 0}),
        ("chat max_completion_tokens 5,000", chat, {"messages": user, "max_completion_tokens": 5000}),
        ("chat stream", chat, {"messages": user, "stream": True}),
        ("chat question of 2,001 characters", chat, {"messages": [{"role": "user", "content": "x" * 2001}]}),
    ]
    out = [(name, "POST", path, {"content": _json(body), "headers": js}) for name, path, body in bodies]
    raw: list[tuple[str, str, bytes]] = [
        ("not JSON", q, b"hello"), ("empty body", q, b""), ("truncated JSON", q, b'{"question": "ok?"'),
        ("JSON 1,000 deep", q, b'{"question": "ok", "max_tokens": ' + b"[" * 1000 + b"]" * 1000 + b"}"),
        ("JSON 100,000 deep, unterminated", q, b'{"question": ' + b"[" * 100_000),
        ("JSON 41 deep in an ignored field", chat, b'{"messages": [{"role": "user", "content": "hi"}], "x": '
         + b'{"a": ' * 40 + b"1" + b"}" * 40 + b"}"),
        ("integer of 5,000 digits", q, b'{"question": "ok?", "max_tokens": ' + b"9" * 5000 + b"}"),
        ("NaN", q, b'{"question": NaN}'), ("not UTF-8", q, b'{"question": "\xff\xfe"}'),
        ("lone surrogate", q, b'{"question": "Is \\ud800 a letter?"}'), ("lone low surrogate", q, b'{"question": "\\udfff"}'),
        ("chat content lone surrogate", chat, b'{"messages": [{"role": "user", "content": "hi \\ud800"}]}'),
        ("chat part lone surrogate", chat,
         b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\udbff!"}]}]}'),
        ("chat model lone surrogate", chat, b'{"model": "m\\ud800", "messages": [{"role": "user", "content": "hi"}]}'),
        ("body of 300 KiB", q, b'{"question": "' + b"x" * (300 << 10) + b'"}'),
        ("body of 4 MiB", chat, b" " * (4 << 20)),
    ]
    out += [(name, "POST", path, {"content": body, "headers": js}) for name, path, body in raw]
    out.append(("question as a form", "POST", q, {"data": {"question": "ok?"}}))
    out += [(f"certificate of height {h}", "GET", f"/v1/certificates/{h}", {})
            for h in ("0", "-1", "x", "1.5", str(2**70), "99999999")]
    out += [(f"ledger {k}={v}", "GET", "/v1/ledger", {"params": {k: v}})
            for k, v in (("limit", 0), ("limit", 501), ("offset", -1), ("limit", "x"), ("offset", 2**70))]
    out += [("unknown path", "GET", "/v1/nothing", {}), ("GET on /v1/query", "GET", q, {}),
            ("POST on /v1/status", "POST", "/v1/status", {"content": b"{}"}),
            ("DELETE a certificate", "DELETE", "/v1/certificates/1", {})]
    return out


async def attack_http(c: Peers, row: Row) -> None:
    node = c.node(0)
    app = create_app(PeerHandle(node.key.peer_id, "peer0", "m0", phase="ready", node=node))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://peer", timeout=30) as client:
        for name, method, path, kwargs in http_attacks():
            try:
                r = await client.request(method, path, **kwargs)
            except Exception as exc:  # the app raised through the transport
                row.attempt(name, False, f"{type(exc).__name__}: {exc}")
                continue
            row.attempt(name, 400 <= r.status_code < 500, f"HTTP {r.status_code}: {r.text[:200]}")


async def _stall(address: tuple[str, int], drip: bool, deadline: float, out: list[tuple[float, bytes]]) -> None:
    """Send a request head and part of its body, then stall (or drip a byte every 0.2 s); record when the
    server closed the connection and what it answered."""
    start = trio.current_time()
    received = b""
    head = (b"POST /v1/query HTTP/1.1\r\nHost: peer\r\nContent-Type: application/json\r\n"
            b"Content-Length: 200\r\n\r\n")
    try:
        async with await trio.open_tcp_stream(*address) as stream:
            await stream.send_all(head + b'{"question": "')
            with trio.move_on_after(deadline):
                while True:
                    with trio.move_on_after(0.2 if drip else deadline):
                        chunk = await stream.receive_some(4096)
                        if not chunk:
                            break
                        received += chunk
                        continue
                    await stream.send_all(b"x")
    except (trio.BrokenResourceError, OSError):
        received = received or b"reset"
    out.append((trio.current_time() - start, received))


async def attack_slow_bodies(c: Peers, row: Row, n: int) -> None:
    from hypercorn.trio import serve

    from peers.daemon import http_config

    node = c.node(0)
    app = create_app(PeerHandle(node.key.peer_id, "peer0", "m0", phase="ready", node=node),
                     HttpLimits(body_timeout_s=1.0))
    bound = 6.0
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, app, http_config("127.0.0.1", 0))
        host, port = binds[0].removeprefix("http://").rsplit(":", 1)
        for drip in (False, True):
            results: list[tuple[float, bytes]] = []
            async with trio.open_nursery() as clients:
                for _ in range(n):
                    clients.start_soon(_stall, (host, int(port)), drip, bound + 4, results)
            for t, answer in results:
                ok = t < bound and (answer.startswith(b"HTTP/1.1 408") or answer == b"reset")
                row.attempt("dripping body" if drip else "stalled body", ok, f"open {t:.1f} s, {answer[:40]!r}")
            row.notes.append(f"{'dripping' if drip else 'stalled'}: {n} connections, the last closed after "
                             f"{max(t for t, _ in results):.1f} s (limit 1 s)")
        nursery.cancel_scope.cancel()


# --- 6. floods from one validator ----------------------------------------------------------------


def bounds(node: Node) -> dict[str, int]:
    """Each table of ``Driver.statistics()`` (and the core's buffer) and its bound, as the modules state them."""
    from consensus.driver._driver import MAX_REQUESTS, MAX_SCORING_JOBS, _FUTURE_HEIGHTS

    d = node.driver
    n, r, far = len(d.validators), d.core.round, d.core.catchup_rounds
    window = 4 + far  # rounds round-2 .. round+1+catchup_rounds
    return {
        "pending": d.config.max_pending, "orphan_queries": 1024, "orphan_answers": 1024 * n, "decided_ids": 65_536,
        "score_vectors": (SCORE_WINDOW + 2 + FUTURE_HEIGHTS) * n, "evidence": n, "sims": SIMS_KEPT,
        "held_proposals": window, "checked_proposals": 2 * window, "checking": MAX_CHECKING,
        "scoring_jobs": MAX_SCORING_JOBS, "future_proposals": _FUTURE_HEIGHTS * n * MAX_FUTURE_PER_SIGNER,
        "catchup_waiting": MAX_CATCHUP_AHEAD * MAX_CATCHUP_PER_HEIGHT, "exposed": (r + 2) * n,
        "relayable_votes": 2 * (r + 2) * n, "own_messages": RESEND_MESSAGES + 3 * (r + 1),
        "own_answers": d.config.max_pending, "join_requests": MAX_REQUESTS, "leave_requests": n,
        "judge_silence": n, "core_buffer": d.core.future_heights * n * d.core.buffer_per_signer,
    }


def sizes(node: Node) -> dict[str, int]:
    return {**node.driver.statistics(), "core_buffer": sum(len(v) for v in node.driver.core._buffer.values())}


async def attack_floods(c: Peers, row: Row, n: int) -> None:
    attacker = c.node(ATTACKER)
    key, me = attacker.key, attacker.key.peer_id
    targets = {i: c.node(i) for i in range(4) if i != ATTACKER}
    h = max(t.height for t in targets.values())
    value, _, _ = forge_decision(key, c.net.genesis.validators, h, 800)

    def vote(kind: Any, height: int, round_: int, vid: bytes | None) -> bytes:
        from peers.wire import encode_message

        return encode_message(sign(Vote(type=kind, height=height, round=round_, value_id=vid, voter=me), key))

    def proposal(height: int, round_: int, v: Any = value) -> bytes:
        from peers.wire import encode_message

        return encode_message(sign(Proposal(height=height, round=round_, valid_round=-1, proposer=me, value=v), key))

    def answer(i: int) -> bytes:
        from peers.wire import encode_message

        return encode_message(sign(Answer(query_id=os.urandom(32), peer=me, model="m", text=f"flood {i}", gen_ms=1),
                                   key))

    floods: dict[str, Callable[[], list[bytes]]] = {
        "far-future votes": lambda: [vote(k, h + 1 + i, 0, os.urandom(32)) for i in range(n)
                                     for k in ("prevote", "precommit")],
        "far-round votes at the current height": lambda: [vote(k, h, i, os.urandom(32)) for i in range(n)
                                                          for k in ("prevote", "precommit")],
        "conflicting votes (one round, many values)": lambda: [vote(k, h, 0, os.urandom(32)) for _ in range(n)
                                                               for k in ("prevote", "precommit")],
        "far-future proposals": lambda: [proposal(h + 1 + i // 4, i % 4) for i in range(n // 4)],
        "far-round proposals at the current height": lambda: [proposal(h, i) for i in range(n // 4)],
        "conflicting proposals (one round, many values)":
            lambda: [proposal(h, 0, value.model_copy(update={"answer": f"flood {i}"})) for i in range(n // 4)],
        "orphan answers (queries never sent)": lambda: [answer(i) for i in range(2 * n)],
    }
    worst: dict[str, tuple[int, int]] = {}
    for name, build in floods.items():
        payloads = build()
        over: list[str] = []
        received = {i: t.transport.statistics().peers[me].received for i, t in targets.items()}
        dropped = {i: t.transport.statistics().peers[me].inbound_dropped for i, t in targets.items()}

        def sample() -> None:
            for i, t in targets.items():
                limits = bounds(t)
                for table, size in sizes(t).items():
                    bound = limits.get(table)
                    if bound is None:
                        over.append(f"peer{i} {table}: no stated bound")
                    elif size > bound:
                        over.append(f"peer{i} {table} = {size} > {bound}")
                    if bound is not None and size > worst.get(table, (0, bound))[0]:
                        worst[table] = (size, bound)

        for start in range(0, len(payloads), 256):
            for t in targets.values():
                for payload in payloads[start:start + 256]:
                    attacker.transport.send_nowait(t.key.peer_id, payload)
            with trio.move_on_after(10):
                while any(attacker.transport.statistics().peers[t.key.peer_id].queued
                          or t.transport.statistics().peers[me].inbound_queued for t in targets.values()):
                    sample()
                    await trio.sleep(0.005)
            sample()
        alive = all(i in c.alive() for i in targets)
        row.attempt(name, not over and alive, "; ".join(sorted(set(over))[:5]) + ("" if alive else " (a peer is down)"))
        got = sum(t.transport.statistics().peers[me].received - received[i] for i, t in targets.items())
        lost_in = sum(t.transport.statistics().peers[me].inbound_dropped - dropped[i] for i, t in targets.items())
        row.notes.append(f"{name}: {len(payloads)} messages to each of {len(targets)} peers; they received {got} "
                         f"from the attacker (its gossip included), {lost_in} dropped by full inbound queues")
    row.notes.append("largest tables: " + ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in sorted(worst.items()) if v[0]))


# --- 7. availability ------------------------------------------------------------------------------


async def attack_concurrent_queries(c: Peers, row: Row, n: int) -> None:
    apps = [create_app(PeerHandle(c.node(i).key.peer_id, f"peer{i}", f"m{i}", phase="ready", node=c.node(i)))
            for i in range(4)]
    clients = [httpx.AsyncClient(transport=httpx.ASGITransport(app=a), base_url="http://peer", timeout=600)
               for a in apps]
    results: list[tuple[bool, str]] = []

    async def one(k: int) -> None:
        try:
            r = await clients[k % 4].post("/v1/query", json={"question": Q})
            if r.status_code != 200:
                results.append((False, f"HTTP {r.status_code}: {r.text[:100]}"))
                return
            reply = check_reply(r.json())  # what `multillmn ask` does with a reply
            cert = check(reply, c.net.genesis)
            results.append((cert.answer == "Paris", f"height {cert.height}"))
        except (ClientError, CertificateError) as exc:
            results.append((False, str(exc)))

    try:
        async with trio.open_nursery() as nursery:
            for k in range(n):
                nursery.start_soon(one, k)
    finally:
        for client in clients:
            await client.aclose()
    for k, (ok, why) in enumerate(results):
        row.attempt(f"query {k}", ok, why)
    row.notes.append(f"{n} queries through 4 peers' APIs at once, each reply and certificate checked from the genesis")


async def attack_kill_mid_query(c: Peers, row: Row, n: int = 8, victim: int = 1) -> None:
    results: list[bool] = []

    async def one(entry: int) -> None:
        results.append(await decide(c, entry, timeout=120))

    async with trio.open_nursery() as nursery:
        for k in range(n):
            nursery.start_soon(one, (0, 2)[k % 2])
        with trio.move_on_after(5):  # the victim holds the queries (answering them): now it goes
            while len(c.node(victim).driver.pool) < n // 2:
                await trio.sleep(0.001)
        undecided = n - len(results)
        await c.stop(victim)
    for k, ok in enumerate(results):
        row.attempt(f"query {k} with peer{victim} stopped mid-query", ok)
    restarted = await c.restart(victim)
    converged = restarted and await settle(c, 60)
    row.notes.append(f"peer{victim} stopped with {undecided} of {n} queries undecided; the other 3 decided them; "
                     f"restarted from its store: {'caught up' if converged else 'DID NOT catch up'}")
    if not converged:
        row.not_refused.append({"attack": "restart", "why": f"peer{victim} did not catch up after its restart"})
