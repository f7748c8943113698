"""``multillmn ledger tail`` and ``multillmn ledger show``: read a peer's hashgraph ledger over HTTP.

Exit codes as for every command: 0 on success, 1 when the peer has no such
certificate or it does not verify, 2 on bad input, an unreachable peer or a
malformed reply. A reply is read up to
:data:`multillmn.client.MAX_REPLY_BYTES` and parsed by
:func:`multillmn.jsonsafe.loads`; a ledger page is checked field by field
before it is shown.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import httpx

from multillmn.argtypes import int_range
from multillmn.client import ClientError, read_bounded, reply_json

__all__ = ["add_ledger_commands", "MAX_TAIL"]

MAX_TAIL = 500
DEFAULT_PEER = "http://127.0.0.1:8080"


class _Unreachable(Exception):
    pass


def _get(peer: str, path: str, params: dict[str, int] | None = None) -> httpx.Response:
    """The peer's reply, its body read (at most ``MAX_REPLY_BYTES``; more is :class:`_Unreachable`)."""
    try:
        with httpx.Client(timeout=30.0, trust_env=False) as client, \
                client.stream("GET", peer.rstrip("/") + path, params=params) as response:
            body = read_bounded(response)
            return httpx.Response(response.status_code, content=body)
    except httpx.HTTPError as exc:
        raise _Unreachable(f"cannot reach peer at {peer}: {exc}") from None
    except ClientError as exc:
        raise _Unreachable(f"{peer}: {exc}") from None


def _body(response: httpx.Response, what: str) -> Any:
    """The reply's JSON within bounds; :class:`ClientError` otherwise."""
    return reply_json(response.content, what)


def _detail(response: httpx.Response) -> str:
    try:
        body = _body(response, "refusal")
    except ClientError:
        return response.content[:200].decode("utf-8", "replace")
    detail = body.get("detail") if isinstance(body, dict) else None
    return str(detail)[:500] if detail is not None else response.content[:200].decode("utf-8", "replace")


def _int_field(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _page(body: Any) -> dict[str, Any]:
    """A ``/v1/ledger`` page with the fields :func:`_entry_line` reads, else :class:`ClientError`."""
    if not isinstance(body, dict) or not _int_field(body.get("total")) or not isinstance(body.get("state_hash"), str) \
            or not isinstance(body.get("entries"), list):
        raise ClientError("the peer's ledger page lacks an integer total, a state_hash or a list of entries")
    for i, e in enumerate(body["entries"]):
        if not (isinstance(e, dict) and _int_field(e.get("index")) and _int_field(e.get("position"))
                and isinstance(e.get("type"), str) and (e["type"] != "certificate" or _int_field(e.get("height")))):
            raise ClientError(f"the peer's ledger entry {i} lacks an integer index, position (or height) or a type")
    return body


def _entry_line(e: dict[str, Any]) -> str:
    head = f"#{e['index']:<5} pos {e['position']:<6} {e['type']:<11}"
    if e["type"] == "certificate":
        return f"{head} height {e['height']:<5} {e.get('question')!s:.50} -> {e.get('answer')!s:.60}"
    if e["type"] == "evidence":
        return f"{head} {e.get('kind')} by {e.get('peer_id')}"
    return f"{head} " + ", ".join(f"{k}={v}" for k, v in e.items()
                                   if k not in ("index", "position", "type", "event_hash", "bytes"))


def _cmd_tail(args: argparse.Namespace) -> int:
    try:
        first = _get(args.peer, "/v1/ledger", {"offset": 0, "limit": 1})
        if first.status_code != 200:
            print(f"error: peer answered {first.status_code}: {_detail(first)}", file=sys.stderr)
            return 2
        total = _page(_body(first, "ledger page"))["total"]
        page = _get(args.peer, "/v1/ledger", {"offset": max(0, total - args.n), "limit": args.n})
        if page.status_code != 200:
            print(f"error: peer answered {page.status_code}: {_detail(page)}", file=sys.stderr)
            return 2
        body = _page(_body(page, "ledger page"))
    except (_Unreachable, ClientError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    print(f"ledger at {args.peer}: {body['total']} entries, state hash {body['state_hash']}")
    for e in body["entries"]:
        print(_entry_line(e))
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from multillmn.certificate import CertificateError, verify

    try:
        r = _get(args.peer, f"/v1/certificates/{args.height}")
        if r.status_code == 404:
            print(f"error: {args.peer} holds no certificate for height {args.height}", file=sys.stderr)
            return 1
        if r.status_code != 200:
            print(f"error: peer answered {r.status_code}: {_detail(r)}", file=sys.stderr)
            return 2
        cert = _body(r, "certificate")
    except (_Unreachable, ClientError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        checked = verify(cert)
    except CertificateError as exc:
        print(f"INVALID certificate for height {args.height}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(cert, indent=2))
        return 0
    print(f"height {checked.height} round {checked.round} on {checked.chain_id}\n"
          f"question: {checked.question}\nanswer:   {checked.answer}\n"
          f"value id: {cert['value_id']}\n"
          f"agreed weight {checked.agreed_weight}/{checked.total_weight}; precommits "
          f"{checked.precommit_weight}/{checked.total_weight} (checked against the validator set it carries; "
          "use `multillmn verify --genesis` to pin one)")
    return 0


def add_ledger_commands(subparsers: Any) -> None:
    """Register ``ledger tail`` and ``ledger show`` on the main CLI's subparsers."""
    ledger = subparsers.add_parser("ledger", help="read a peer's hashgraph ledger")
    sub = ledger.add_subparsers(dest="ledger_command", required=True)
    tail = sub.add_parser("tail", help="the last ordered ledger entries and the state hash")
    tail.add_argument("--peer", default=DEFAULT_PEER, help=f"a peer's API URL (default {DEFAULT_PEER})")
    tail.add_argument("-n", type=int_range(1, MAX_TAIL), default=20, help=f"entries to show, 1..{MAX_TAIL} (default 20)")
    tail.add_argument("--json", action="store_true", help="print the JSON page")
    tail.set_defaults(func=_cmd_tail)
    show = sub.add_parser("show", help="the certificate of one height, checked")
    show.add_argument("height", type=int_range(1), metavar="HEIGHT")
    show.add_argument("--peer", default=DEFAULT_PEER, help=f"a peer's API URL (default {DEFAULT_PEER})")
    show.add_argument("--json", action="store_true", help="print the certificate JSON")
    show.set_defaults(func=_cmd_show)
