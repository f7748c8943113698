"""``POST /v1/membership/join`` and ``/v1/membership/leave``: signed requests handed to a member.

The body is a signed envelope, ``{"body": base64, "sig": base64}``: a
:class:`~consensus.messages.Join` signed by the joiner's own key (which it
carries), or a :class:`~consensus.messages.Leave` signed by a validator
(``multillmn peer join|leave`` make them). The member checks it against its
chain and relays it to every validator; proposers carry it until it is
committed, and it takes effect at the first epoch boundary at least two
heights later (ADR 0016).

Replies: 202 ``{"status": "accepted", "peer_id", "note"}``; 422
``{"detail": reason, "code": code}`` for a request that does not open (bad
signature, malformed, wrong key) or is refused (wrong chain, already a
member, already requested, unknown model, address taken, replayed); 429 when
the member's queue of requests is full. Every refusal is counted by code in
``/v1/status`` (``membership.requests_refused``); nothing committed changes.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from consensus.membership import reason_code
from consensus.messages import Envelope, Join, Leave, Message, MessageError, open_envelope
from peers.node import Node

__all__ = ["SignedRequest", "membership_router"]


class SignedRequest(BaseModel):
    """A signed envelope, base64-encoded."""

    model_config = ConfigDict(extra="forbid", strict=True)
    body: Annotated[str, Field(min_length=4, max_length=4096)]
    sig: Annotated[str, Field(min_length=86, max_length=88)]


def _refuse(node: Node, status: int, code: str, detail: str) -> JSONResponse:
    refused = node.driver.requests_refused
    if code in ("bad-signature", "malformed"):  # the driver never saw these: count them here
        refused[code] = refused.get(code, 0) + 1
    return JSONResponse({"detail": detail, "code": code}, status_code=status)


def membership_router(ready_node: Callable[[], Node]) -> APIRouter:
    """The two routes; ``ready_node`` gives the running node or raises a 503."""
    router = APIRouter()

    async def handle(kind: type[Message], request: SignedRequest) -> Any:
        node = ready_node()
        try:
            envelope = Envelope(body=base64.b64decode(request.body, validate=True),
                                sig=base64.b64decode(request.sig, validate=True))
        except (binascii.Error, ValueError):
            return _refuse(node, 422, "malformed", "body and sig must be base64 (sig: 64 bytes)")
        keys = (lambda _: None) if kind is Join else node.driver.chain.key_of
        try:
            signed = open_envelope(kind, envelope, keys)
        except MessageError as exc:
            text = str(exc)
            code = "bad-signature" if "signature" in text or "unknown peer" in text else "malformed"
            return _refuse(node, 422, code, f"the {kind.KIND} request does not open: {text}")
        reason = node.request(signed)  # type: ignore[arg-type]
        if reason is not None:
            code = reason_code(reason)
            return _refuse(node, 429 if code == "queue-full" else 422, code, reason)
        p = node.driver.chain.membership_params
        boundary = "" if p is None else (f"; epochs are {p.epoch_length} heights, the next boundary is height "
                                         f"{p.epoch_start(p.epoch_of(node.height) + 1)}")
        return JSONResponse({"status": "accepted", "peer_id": signed.signer,
                             "note": f"relayed to the validators; it takes effect at the first epoch boundary "
                                     f"at least 2 heights after it is committed{boundary}"}, status_code=202)

    @router.post("/v1/membership/join", status_code=202)
    async def join(request: SignedRequest) -> Any:
        return await handle(Join, request)

    @router.post("/v1/membership/leave", status_code=202)
    async def leave(request: SignedRequest) -> Any:
        return await handle(Leave, request)

    return router
