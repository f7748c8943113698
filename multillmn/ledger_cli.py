"""``multillmn ledger tail`` and ``multillmn ledger show``: read a peer's hashgraph ledger over HTTP.

Exit codes as for every command: 0 on success, 1 when the peer has no such
certificate or it does not verify, 2 on bad input or an unreachable peer.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import httpx

from multillmn.argtypes import int_range

__all__ = ["add_ledger_commands", "MAX_TAIL"]

MAX_TAIL = 500
DEFAULT_PEER = "http://127.0.0.1:8080"


class _Unreachable(Exception):
    pass


def _get(peer: str, path: str, params: dict[str, int] | None = None) -> httpx.Response:
    try:
        return httpx.get(peer.rstrip("/") + path, params=params, timeout=30.0, trust_env=False)
    except httpx.HTTPError as exc:
        raise _Unreachable(f"cannot reach peer at {peer}: {exc}") from None


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return {"detail": response.text}


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
            print(f"error: peer answered {first.status_code}: {_json(first).get('detail')}", file=sys.stderr)
            return 2
        total = int(first.json()["total"])
        page = _get(args.peer, "/v1/ledger", {"offset": max(0, total - args.n), "limit": args.n})
    except _Unreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if page.status_code != 200:
        print(f"error: peer answered {page.status_code}: {_json(page).get('detail')}", file=sys.stderr)
        return 2
    body = page.json()
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
    except _Unreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if r.status_code == 404:
        print(f"error: {args.peer} holds no certificate for height {args.height}", file=sys.stderr)
        return 1
    if r.status_code != 200:
        print(f"error: peer answered {r.status_code}: {_json(r).get('detail')}", file=sys.stderr)
        return 2
    cert = r.json()
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
