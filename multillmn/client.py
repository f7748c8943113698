"""The query client: ask a peer a question, check the certificate, show who agreed."""

from __future__ import annotations

from typing import Any

import httpx

from multillmn.certificate import Certificate, CertificateError, verify
from multillmn.genesis import Genesis

__all__ = ["ClientError", "ask", "check", "render"]


class ClientError(Exception):
    """The peer could not be reached or refused the question; the message says why."""


def ask(url: str, question: str, *, max_tokens: int | None = None, timeout_s: float = 600) -> dict[str, Any]:
    """POST the question to ``url``/v1/query and return the peer's JSON answer."""
    body: dict[str, Any] = {"question": question}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    try:
        response = httpx.post(url.rstrip("/") + "/v1/query", json=body, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise ClientError(f"cannot reach peer at {url}: {exc}") from None
    if response.status_code != 200:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise ClientError(f"peer answered {response.status_code}: {detail}")
    result: dict[str, Any] = response.json()
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
