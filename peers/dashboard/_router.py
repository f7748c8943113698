"""The dashboard's routes: the page, its static files, a JSON snapshot, server-sent events and verification.

* ``GET /`` redirects to ``GET /dashboard``, the page (HTML, one script, one
  stylesheet and the vendored uPlot under ``/dashboard/static/``).
* ``GET /dashboard/api/snapshot`` — what the page shows, as JSON
  (:class:`~peers.dashboard._snapshot.Snapshots`).
* ``GET /dashboard/api/events`` — the same snapshot as server-sent events: one
  at once, then one whenever it changed, at most one every
  ``min_event_interval_s`` per subscriber, and a comment line every
  :data:`KEEPALIVE_S` when nothing changed. At most ``max_subscribers`` streams
  are open at a time; one more is a **503** with ``Retry-After``.
* ``POST /dashboard/api/verify`` — checks a certificate (the JSON body) with
  :func:`multillmn.certificate.verify` against this peer's genesis and says
  whether it holds and why not (ADR 0021: the page shows who checked it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import TYPE_CHECKING, Annotated, Any

import anyio
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from multillmn import jsonsafe
from multillmn.certificate import CertificateError, verify
from peers.dashboard._snapshot import Snapshots

if TYPE_CHECKING:
    from peers.api import PeerHandle

__all__ = ["KEEPALIVE_S", "MAX_SUBSCRIBERS", "MIN_EVENT_INTERVAL_S", "STATIC_FILES", "dashboard_router"]

MAX_SUBSCRIBERS = 8
"""Event streams open at once at one peer; more are refused with 503."""
MIN_EVENT_INTERVAL_S = 1.0
"""At most one event per this many seconds per stream."""
KEEPALIVE_S = 15.0
"""A comment line after this long without an event (keeps proxies from closing an idle stream)."""
MAX_EVENTS = 100_000
"""Upper bound of a stream's ``max_events`` parameter (tests ask for a few)."""

STATIC_FILES: dict[str, str] = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "uPlot.LICENSE": "text/plain; charset=utf-8",
}
"""The files served under ``/dashboard/static/`` (no other name is looked up)."""


def _static(name: str) -> bytes:
    return resources.files("peers.dashboard").joinpath("static", name).read_bytes()


class _EventStream(StreamingResponse):
    """A streaming response that gives its subscriber slot back however it ends (also if never started)."""

    def __init__(self, content: AsyncIterator[str], release: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def _event(snapshot: dict[str, Any]) -> tuple[str, str]:
    """The SSE frame of a snapshot and a digest of its content (without the build time)."""
    data = json.dumps(snapshot, separators=(",", ":"), default=str)
    content = json.dumps({k: v for k, v in snapshot.items() if k not in ("at", "self")}, sort_keys=True,
                         default=str) + json.dumps({k: v for k, v in snapshot["self"].items() if k != "uptime_s"},
                                                   sort_keys=True, default=str)
    return f"event: snapshot\ndata: {data}\n\n", hashlib.sha256(content.encode()).hexdigest()


def dashboard_router(peer: PeerHandle, *, max_subscribers: int = MAX_SUBSCRIBERS,
                     min_event_interval_s: float = MIN_EVENT_INTERVAL_S, keepalive_s: float = KEEPALIVE_S,
                     ) -> APIRouter:
    """The dashboard of ``peer``: include it in the peer's FastAPI app."""
    if max_subscribers < 1 or min_event_interval_s <= 0 or keepalive_s <= 0:
        raise ValueError("max_subscribers must be at least 1 and the intervals positive")
    router = APIRouter()
    snapshots = Snapshots(peer, min_interval_s=min(0.5, min_event_interval_s))
    open_streams = [0]

    def release() -> None:
        open_streams[0] -= 1

    @router.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/dashboard")

    @router.get("/dashboard", include_in_schema=False)
    async def page() -> Response:
        return Response(_static("index.html"), media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})

    @router.get("/dashboard/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        media_type = STATIC_FILES.get(name)
        if media_type is None:
            raise HTTPException(404, "no such file")
        return Response(_static(name), media_type=media_type, headers={"Cache-Control": "max-age=300"})

    @router.get("/dashboard/api/snapshot")
    async def snapshot() -> dict[str, Any]:
        return snapshots.get()

    @router.get("/dashboard/api/subscribers")
    async def subscribers() -> dict[str, int]:
        return {"open": open_streams[0], "max": max_subscribers}

    @router.get("/dashboard/api/events")
    async def events(max_events: Annotated[int, Query(ge=1, le=MAX_EVENTS)] = MAX_EVENTS) -> Response:
        if open_streams[0] >= max_subscribers:
            raise HTTPException(503, f"too many dashboard streams open at this peer (at most {max_subscribers})",
                                headers={"Retry-After": "5"})
        open_streams[0] += 1

        async def stream() -> AsyncIterator[str]:
            sent, last_digest, quiet = 0, "", 0.0
            while sent < max_events:
                frame, digest = _event(snapshots.get())
                if digest != last_digest:
                    yield frame
                    sent, last_digest, quiet = sent + 1, digest, 0.0
                elif quiet >= keepalive_s:
                    yield ": keepalive\n\n"
                    quiet = 0.0
                await anyio.sleep(min_event_interval_s)
                quiet += min_event_interval_s

        return _EventStream(stream(), release)

    @router.post("/dashboard/api/verify")
    async def check(request: Request) -> dict[str, Any]:
        try:  # within the JSON bounds whatever the content type says (depth, integers, size)
            cert = jsonsafe.loads(await request.body())
        except jsonsafe.JsonError as exc:
            raise HTTPException(422, f"the body must be a certificate (JSON): {exc}") from None
        node = peer.ready_node()
        genesis = node.genesis

        def run() -> dict[str, Any]:
            checked_by = {"checked_by": peer.moniker, "peer_id": peer.peer_id,
                          "genesis_digest": genesis.digest().hex(), "chain_id": genesis.chain_id}
            try:
                c = verify(cert, genesis)
            except CertificateError as exc:
                return {"valid": False, "reason": str(exc), **checked_by}
            return {"valid": True, "reason": None, "height": c.height, "answer": c.answer,
                    "precommit_weight": c.precommit_weight, "agreed_weight": c.agreed_weight,
                    "total_weight": c.total_weight, "path_length": c.path_length, **checked_by}

        return await anyio.to_thread.run_sync(run)

    return router
