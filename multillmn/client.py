"""The query client: ask a peer a question, check the certificate, show who agreed.

A peer's reply is untrusted input: it is read up to :data:`MAX_REPLY_BYTES`
and parsed by :func:`multillmn.jsonsafe.loads` (bounded nesting, integers and
text), and its fields are checked before anything is shown, so a hostile or
broken peer gets a :class:`ClientError` naming what was wrong, never a
traceback.
"""

from __future__ import annotations

import base64
from typing import Any

import httpx

from consensus.messages import Envelope
from multillmn import jsonsafe
from multillmn.certificate import MAX_FILE_BYTES, Certificate, CertificateError, verify
from multillmn.genesis import Genesis

__all__ = ["ClientError", "MAX_REPLY_BYTES", "ask", "check", "check_reply", "read_bounded", "reply_json", "render",
           "fetch_status", "request_membership"]

MAX_REPLY_BYTES = MAX_FILE_BYTES
"""Largest reply body read from a peer (a certificate with a long trust path fits; a file of the same size would)."""


class ClientError(Exception):
    """The peer could not be reached, refused the question or sent a malformed reply; the message says why."""


def read_bounded(response: httpx.Response, max_bytes: int = MAX_REPLY_BYTES) -> bytes:
    """The body of a streamed ``response``, refused (:class:`ClientError`) past ``max_bytes``."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ClientError(f"the peer's reply of {declared} bytes exceeds the limit of {max_bytes}")
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise ClientError(f"the peer's reply exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def reply_json(body: bytes, what: str = "reply") -> Any:
    """``body`` parsed within :func:`multillmn.jsonsafe.loads`'s bounds, else :class:`ClientError`."""
    try:
        return jsonsafe.loads(body, max_bytes=MAX_REPLY_BYTES)
    except jsonsafe.JsonError as exc:
        raise ClientError(f"the peer's {what} is not JSON within bounds: {exc}") from None


def _detail(body: bytes) -> str:
    """What a refusal says: its JSON ``detail``, else the start of the body."""
    try:
        parsed = jsonsafe.loads(body, max_bytes=MAX_REPLY_BYTES)
    except jsonsafe.JsonError:
        parsed = None
    detail = parsed.get("detail") if isinstance(parsed, dict) else None
    text = detail if isinstance(detail, str) else body[:500].decode("utf-8", "replace")
    return text[:500]


def ask(url: str, question: str, *, max_tokens: int | None = None, timeout_s: float = 600) -> dict[str, Any]:
    """POST the question to ``url``/v1/query and return the peer's JSON answer (checked: see :func:`check_reply`)."""
    body: dict[str, Any] = {"question": question}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    try:
        with httpx.Client(timeout=timeout_s) as client, \
                client.stream("POST", url.rstrip("/") + "/v1/query", json=body) as response:
            raw = read_bounded(response)
            status = response.status_code
    except httpx.HTTPError as exc:
        raise ClientError(f"cannot reach peer at {url}: {exc}") from None
    if status != 200:
        raise ClientError(f"peer answered {status}: {_detail(raw)}")
    return check_reply(reply_json(raw, "answer"))


def fetch_status(url: str, *, timeout_s: float = 10) -> dict[str, Any]:
    """``GET url/v1/status`` as a JSON object, else :class:`ClientError`."""
    try:
        with httpx.Client(timeout=timeout_s) as client, client.stream("GET", f"{url.rstrip('/')}/v1/status") as r:
            raw = read_bounded(r)
            status = r.status_code
    except httpx.HTTPError as exc:
        raise ClientError(f"cannot reach peer at {url}: {exc}") from None
    if status != 200:
        raise ClientError(f"peer answered {status}: {_detail(raw)}")
    reply = reply_json(raw, "status")
    if not isinstance(reply, dict):
        raise ClientError("the peer's status is not a JSON object")
    return reply


def request_membership(url: str, kind: str, envelope: Envelope, *, timeout_s: float = 30) -> dict[str, Any]:
    """POST a signed join or leave request (``kind``) to a member at ``url``; its JSON reply
    (``{"status": "accepted", ...}``), else :class:`ClientError` with the member's reason."""
    body = {"body": base64.b64encode(envelope.body).decode(), "sig": base64.b64encode(envelope.sig).decode()}
    try:
        with httpx.Client(timeout=timeout_s) as client, \
                client.stream("POST", f"{url.rstrip('/')}/v1/membership/{kind}", json=body) as response:
            raw = read_bounded(response, 64 << 10)
            status = response.status_code
    except httpx.HTTPError as exc:
        raise ClientError(f"cannot reach peer at {url}: {exc}") from None
    if status != 202:
        raise ClientError(f"refused ({status}): {_detail(raw)}")
    reply = reply_json(raw, "reply")
    if not isinstance(reply, dict) or reply.get("status") != "accepted":
        raise ClientError("the peer's reply is not an acceptance")
    return reply


_NUMBER = (int, float)
_REPLY_FIELDS: dict[str, tuple[type, ...]] = {
    "question": (str,), "answer": (str,), "height": (int,), "round": (int,), "agreed_weight": (int,),
    "total_weight": (int,), "agreed_share": _NUMBER, "answers": (list,), "timings": (dict,),
}
_ANSWER_FIELDS: dict[str, tuple[type, ...]] = {
    "peer_id": (str,), "moniker": (str,), "model": (str,), "text": (str,), "weight": (int,), "agreed": (bool,),
    "generation_ms": (int,), "signature": (str,),
}
_TIMING_FIELDS = ("total_ms", "generation_ms", "consensus_ms")


def _typed(value: Any, types: tuple[type, ...]) -> bool:
    return isinstance(value, types) and (bool in types or not isinstance(value, bool))


def check_reply(result: Any) -> dict[str, Any]:
    """``result`` if it has every field :func:`render` and ``multillmn ask`` read, with their types;
    else :class:`ClientError` naming the first one that is missing or wrong."""
    if not isinstance(result, dict):
        raise ClientError("the peer's answer is not a JSON object")
    if "certificate" not in result:  # any value: a malformed one is reported INVALID by :func:`check`
        raise ClientError("the peer's answer has no 'certificate'")
    for name, types in _REPLY_FIELDS.items():
        if not _typed(result.get(name), types):
            raise ClientError(f"the peer's answer has no valid {name!r}")
    for i, answer in enumerate(result["answers"]):
        if not isinstance(answer, dict):
            raise ClientError(f"the peer's answer has no valid 'answers[{i}]'")
        for name, types in _ANSWER_FIELDS.items():
            if not _typed(answer.get(name), types):
                raise ClientError(f"the peer's answer has no valid 'answers[{i}].{name}'")
    for name in _TIMING_FIELDS:
        if not _typed(result["timings"].get(name), (int,)):
            raise ClientError(f"the peer's answer has no valid 'timings.{name}'")
    return result


def check(result: dict[str, Any], trusted: Genesis | None) -> Certificate:
    """Verify the result's certificate and that it certifies the answer shown."""
    cert = verify(result.get("certificate"), trusted)
    if cert.answer != result.get("answer"):
        raise CertificateError("the certificate certifies a different answer than the peer reported")
    return cert


def render(result: dict[str, Any], cert: Certificate | None, error: str | None, trusted: bool) -> str:
    """Human-readable report of a consensus answer."""
    lines = [f"Question: {result['question']}", "", "Signed answers:"]
    for a in result["answers"]:
        mark = "agreed  " if a["agreed"] else "outvoted"
        lines.append(f"  [{mark}] {a['moniker'] or a['peer_id'][:12]:<10} {a['model']:<10} "
                     f"w={a['weight']:<3} {a['generation_ms']:>6} ms  sig {a['signature'][:16]}…  {a['text']}")
    share = result["agreed_share"] * 100
    lines += [
        "",
        f"Consensus answer: {result['answer']}",
        f"Agreed weight:    {result['agreed_weight']}/{result['total_weight']} ({share:.0f}%)"
        f" at height {result['height']}, round {result['round']}",
        f"Timings:          total {result['timings']['total_ms']} ms, generation "
        f"{result['timings']['generation_ms']} ms, consensus {result['timings']['consensus_ms']} ms",
    ]
    if cert is not None:
        anchor = "trusted genesis" if trusted else "validator set inside the certificate (no --genesis given)"
        lines.append(f"Certificate:      VALID — precommits carry {cert.precommit_weight}/{cert.total_weight} "
                     f"weight, checked against the {anchor}")
    else:
        lines.append(f"Certificate:      INVALID — {error}")
    return "\n".join(lines)
