"""The peer's HTTP API (FastAPI, served on trio by hypercorn).

* ``POST /v1/query`` — ask a question; returns the consensus answer, the
  certificate, every peer's answer and timings.
* ``GET /v1/status`` — peer id, model, phase, height, connected peers, weights,
  and the query queue (``queue``: pending queries, and those waiting here).
* ``GET /metrics`` — the same and more in the Prometheus text format
  (``peers/metrics.py``).
* ``GET /v1/certificates/{height}`` — the certificate decided at a height
  (also after a restart: the ledger holds it).
* ``GET /v1/ledger?offset=0&limit=50`` — a page of the ordered ledger entries
  (``limit`` <= 500) and the state hash; ``GET /v1/ledger/state`` — the
  ledger's state hash, sizes and certified heights.
* ``POST /v1/membership/join`` and ``/v1/membership/leave`` — a signed join or
  leave request (``peers/membership_api.py``).
* ``POST /v1/chat/completions`` and ``GET /v1/models`` — OpenAI-compatible;
  the assistant message is the consensus answer and the certificate rides in
  an extra ``certificate`` field, so the ``openai`` client works unchanged.

Overload is refused with a clear signal: when the node's query pool is full,
or this client already has :data:`MAX_PENDING_PER_CLIENT` queries waiting
here (clients told apart by their address in the ASGI scope, so one client
cannot starve the others), ``POST /v1/query`` and ``/v1/chat/completions``
answer **429** with a ``Retry-After`` header (:data:`RETRY_AFTER_S` seconds).
A query that could not be decided otherwise (no quorum of answers in time)
is a 503.

Request bodies are strict pydantic models: a wrong type, a missing or unknown
field, a value out of range, or text that cannot be encoded as UTF-8 (a lone
surrogate) is a 422 with the field named. Before any of that,
:class:`peers.httplimits.RequestLimits` bounds every request's body: its size
(413), the time to receive it (408) and, for JSON, its nesting, integers and
text (422).
"""

from __future__ import annotations

import json
import time
from collections import Counter
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from consensus.messages import MAX_QUESTION_CHARS
from multillmn import jsonsafe
from peers.dashboard import dashboard_router
from peers.httplimits import HttpLimits, RequestLimits
from peers.ledger import LedgerService, entry_json
from peers.membership_api import membership_router
from peers.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, render as render_metrics
from peers.node import Decision, Node, QueryFailed

__all__ = ["PeerHandle", "create_app", "MAX_LEDGER_PAGE", "MAX_PENDING_PER_CLIENT", "RETRY_AFTER_S", "HttpLimits"]

MAX_LEDGER_PAGE = 500
MAX_PENDING_PER_CLIENT = 16
"""Queries one client address may have waiting at this peer; more are refused with 429."""
RETRY_AFTER_S = 2
"""The ``Retry-After`` of a 429: about the time a query takes to be decided."""
POOL_FULL = "too many pending queries"
"""How :meth:`peers.node.Node.submit`'s QueryFailed message starts when the query pool is full."""


@dataclass
class PeerHandle:
    """What the API sees of the peer: its phase while loading, then the node."""

    peer_id: str
    moniker: str
    model: str
    phase: str = "starting"
    node: Node | None = None
    started: float = field(default_factory=time.monotonic)

    def ready_node(self) -> Node:
        if self.node is None or self.phase != "ready":
            raise HTTPException(503, f"peer is not ready yet (phase: {self.phase})")
        return self.node


def _utf8(value: Any) -> Any:
    """``value`` if every string in it encodes to UTF-8 (no lone surrogate), else a ValueError."""
    try:
        jsonsafe.check_text(value)
    except jsonsafe.JsonError as exc:
        raise ValueError(str(exc)) from None
    return value


Utf8Str = Annotated[str, AfterValidator(_utf8)]


class QueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    question: Annotated[Utf8Str, Field(min_length=1, max_length=MAX_QUESTION_CHARS)]
    max_tokens: Annotated[int, Field(ge=1, le=1024)] | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None

    @field_validator("content")
    @classmethod
    def _content_utf8(cls, value: Any) -> Any:
        return _utf8(value)


class ChatRequest(BaseModel):
    """The subset of OpenAI's chat request that a consensus answer can honour; other fields are ignored."""

    model_config = ConfigDict(extra="allow")
    model: Utf8Str = "multillmn"
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=256)]
    max_tokens: Annotated[int, Field(ge=1, le=1024)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=1024)] | None = None
    stream: bool = False


def _question_of(messages: list[ChatMessage]) -> str:
    for message in reversed(messages):
        if message.role == "user":
            content = message.content
            if isinstance(content, list):
                content = " ".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
            if content and content.strip():
                if len(content) > MAX_QUESTION_CHARS:
                    raise HTTPException(422, f"the question exceeds {MAX_QUESTION_CHARS} characters")
                return content.strip()
    raise HTTPException(422, "messages must contain a user message with text")


def _decision_json(node: Node, decision: Decision, total_ms: int) -> dict[str, Any]:
    vs = decision.validators or node.validators
    outcome = decision.outcome
    winners = set(outcome.winners)
    agreed = vs.weight_of_set(winners)
    return {
        "question": decision.certificate["summary"]["question"],
        "answer": outcome.answer,
        "height": decision.height,
        "round": decision.round,
        "agreed_weight": agreed,
        "total_weight": vs.total,
        "agreed_share": round(agreed / vs.total, 4),
        "answers": [
            {
                "peer_id": a.peer,
                "moniker": (v.moniker if (v := vs.get(a.peer)) else ""),
                "model": a.model,
                "text": a.text,
                "weight": vs.weight_of(a.peer),
                "agreed": a.peer in winners,
                "generation_ms": a.gen_ms,
                "signature": envelope.sig.hex(),
            }
            for a, envelope in zip(decision.answers, outcome.answers, strict=True)
        ],
        "timings": {
            "total_ms": total_ms,
            "generation_ms": decision.generation_ms,
            "consensus_ms": decision.consensus_ms,
            "protocol_ms": decision.protocol_ms,
        },
        "certificate": decision.certificate,
    }


def _too_many(detail: str) -> HTTPException:
    return HTTPException(429, detail, headers={"Retry-After": str(RETRY_AFTER_S)})


def create_app(peer: PeerHandle, limits: HttpLimits | None = None, *,
               max_pending_per_client: int = MAX_PENDING_PER_CLIENT) -> FastAPI:
    """The API of ``peer``, every request bounded by ``limits`` (default :class:`HttpLimits`) and at most
    ``max_pending_per_client`` queries waiting per client address."""
    if max_pending_per_client < 1:
        raise ValueError("max_pending_per_client must be at least 1")
    app = FastAPI(title="multillmn peer", version="1")
    pending: Counter[str] = Counter()  # client address -> its queries waiting here; no entry at 0
    app.add_middleware(RequestLimits, limits=limits)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's own handler echoes the input as UTF-8 and fails (500) on a lone surrogate; ASCII JSON cannot
        return Response(json.dumps({"detail": jsonable_encoder(exc.errors())}), status_code=422,
                        media_type="application/json")

    async def decide(http: Request, question: str, max_tokens: int | None) -> tuple[Node, Decision, int]:
        node = peer.ready_node()
        client = http.client.host if http.client is not None else "unknown"
        if pending[client] >= max_pending_per_client:
            raise _too_many(f"too many pending queries from this client (at most {max_pending_per_client}); "
                            "try again later")
        pending[client] += 1
        start = time.monotonic()
        try:
            decision = await node.submit(question, max_tokens)
        except QueryFailed as exc:
            message = str(exc)
            raise (_too_many(message) if message.startswith(POOL_FULL) else HTTPException(503, message)) from None
        finally:
            pending[client] -= 1
            if pending[client] <= 0:
                del pending[client]
        return node, decision, int((time.monotonic() - start) * 1000)

    @app.post("/v1/query")
    async def query(http: Request, request: QueryRequest) -> dict[str, Any]:
        node, decision, total_ms = await decide(http, request.question, request.max_tokens)
        return _decision_json(node, decision, total_ms)

    app.include_router(membership_router(peer.ready_node))
    app.include_router(dashboard_router(peer))

    @app.get("/v1/status")
    async def status() -> dict[str, Any]:
        base = {"peer_id": peer.peer_id, "moniker": peer.moniker, "model": peer.model,
                "phase": peer.phase, "ready": peer.phase == "ready",
                "uptime_s": round(time.monotonic() - peer.started, 1),
                "height": 1, "connected_peers": []}
        if peer.node is not None:
            base.update(peer.node.status())
        base["queue"] = {  # the pool's queries (all entry peers) and the ones asked through this API
            "pending_queries": base.get("pending_queries", 0),
            "max_pending_queries": peer.node.driver.config.max_pending if peer.node is not None else 0,
            "waiting_here": sum(pending.values()), "clients_waiting": len(pending),
            "max_pending_per_client": max_pending_per_client,
        }
        return base

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        """The peer's state in the Prometheus text format (``peers/metrics.py``)."""
        return Response(render_metrics(peer), media_type=METRICS_CONTENT_TYPE)

    @app.get("/v1/certificates/{height}")
    async def certificate(height: Annotated[int, Path(ge=1)]) -> dict[str, Any]:
        cert = peer.ready_node().certificate(height)
        if cert is None:
            raise HTTPException(404, f"no certificate for height {height} at this peer")
        return cert

    def ledger_of() -> LedgerService:
        ledger = peer.ready_node().ledger
        if ledger is None:
            raise HTTPException(503, "this peer runs without a ledger")
        return ledger

    @app.get("/v1/ledger")
    async def ledger_page(offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
                          limit: Annotated[int, Query(ge=1, le=MAX_LEDGER_PAGE)] = 50) -> dict[str, Any]:
        ledger = ledger_of()
        entries = ledger.ledger.page(offset, limit)
        return {"offset": offset, "limit": limit, "total": len(ledger.ledger), "state_hash": ledger.state_hash(),
                "entries": [entry_json(e) for e in entries]}

    @app.get("/v1/ledger/state")
    async def ledger_state() -> dict[str, Any]:
        return ledger_of().statistics()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "multillmn", "object": "model", "owned_by": "multillmn"}]}

    @app.post("/v1/chat/completions")
    async def chat(http: Request, request: ChatRequest) -> JSONResponse:
        if request.stream:
            raise HTTPException(400, "streaming is not supported: a consensus answer exists only once decided")
        question = _question_of(request.messages)
        node, decision, total_ms = await decide(http, question, request.max_completion_tokens or request.max_tokens)
        body = _decision_json(node, decision, total_ms)
        return JSONResponse({
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": decision.outcome.answer},
                "finish_reason": "stop",
                "logprobs": None,
            }],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            "certificate": decision.certificate,
            "multillmn": {k: v for k, v in body.items() if k != "certificate"},
        })

    return app
