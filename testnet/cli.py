"""``multillmn testnet up|status|logs|restart|kill|pause|resume|disconnect|reconnect|join|leave|down``: argparse
wiring for :mod:`testnet.launcher` and :mod:`testnet.perturb`.

Hook into the main CLI with ``add_testnet_commands(subparsers)``; each leaf
parser sets ``func(args) -> int``. User errors print to stderr and return 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from testnet import launcher, perturb
from testnet.launcher import PeerStatus, TestnetError
from consensus.verdicts import GENESIS_RULES
from multillmn.config import BROADCAST_MODES, BYZANTINE_BEHAVIOURS
from testnet.links import LinkPlane
from testnet.manifest import KNOWN_MODELS, Manifest, ManifestError

__all__ = ["add_testnet_commands", "format_table"]

DEFAULT_DIR = Path(".testnet")
DEFAULT_MODELS = "smollm2,gemma3"


def _err(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def format_table(rows: list[PeerStatus]) -> str:
    """Status as an aligned text table."""
    head = ("NAME", "PEER ID", "MODEL", "API URL", "HEIGHT", "PEERS", "WEIGHT", "PHASE")
    body = [(s.name, s.peer_id[:12], s.model, s.api_url, "-" if s.height is None else str(s.height),
             "-" if s.connected_peers is None else str(s.connected_peers),
             "-" if s.weight_share is None else f"{100 * s.weight_share:.1f}%", _phase(s)) for s in rows]
    table = _aligned(head, body)
    workers = [w for s in rows for w in s.workers]
    if not workers:
        return table
    whead = ("SHARD WORKER", "ADDRESS", "PID", "STATE")
    wbody = [(w.name, w.address, "-" if w.pid is None else str(w.pid), w.state) for w in workers]
    return f"{table}\n\n{_aligned(whead, wbody)}"


def _phase(s: PeerStatus) -> str:
    return f"{s.phase}, disconnected" if s.disconnected else s.phase


def _aligned(head: tuple[str, ...], body: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in (head, *body)) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in (head, *body))


def _cmd_up(args: argparse.Namespace) -> int:
    try:
        if args.manifest is not None:
            if args.models is not None:
                return _err("--models applies only with --peers; set each peer's model in the manifest")
            manifest = Manifest.load(args.manifest)
            if args.epoch_length is not None:
                manifest = replace(manifest, epoch_length=args.epoch_length).validate()
            if args.broadcast is not None:
                manifest = replace(manifest, broadcast=args.broadcast).validate()
            if args.link_plane is not None:
                manifest = replace(manifest, link_plane=LinkPlane(seed=args.link_plane)).validate()
            if args.verdict_rule is not None:
                manifest = replace(manifest, verdict_rule=args.verdict_rule).validate()
        else:
            models = [m.strip() for m in (args.models or DEFAULT_MODELS).split(",")]
            if any(not m for m in models):
                return _err(f"--models: empty entry in {args.models!r}; use e.g. --models {DEFAULT_MODELS}")
            manifest = Manifest.from_args(args.peers, models, epoch_length=args.epoch_length,
                                          broadcast=args.broadcast or "mesh",
                                          link_plane=None if args.link_plane is None else LinkPlane(seed=args.link_plane),
                                          verdict_rule=args.verdict_rule or "none")
    except ManifestError as exc:
        return _err(str(exc))
    if args.timeout <= 0:
        return _err(f"--timeout must be positive, got {args.timeout:g}")
    try:
        launcher.up(manifest, args.dir, base_port=args.base_port, ready_timeout_s=args.timeout,
                    progress=_progress, reset=args.reset)
    except TestnetError as exc:
        return _err(str(exc))
    except KeyboardInterrupt:
        print("interrupted; all peers were stopped", file=sys.stderr)
        return 130
    launcher.remember(args.dir)  # `multillmn ask` without --peer asks this testnet
    print(format_table(launcher.status(args.dir)))
    print(f"\ntestnet is up; ask it with: multillmn ask \"What is the capital of France?\"\n"
          f"stop it with: multillmn testnet down --dir {args.dir}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    try:
        rows = launcher.status(args.dir)
    except TestnetError as exc:
        return _err(str(exc))
    if args.json:
        print(json.dumps([asdict(s) for s in rows], indent=2))
    else:
        print(format_table(rows))
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    if args.lines < 0:
        return _err(f"-n must be >= 0, got {args.lines}")
    try:
        print(launcher.logs(args.dir, args.peer, args.lines))
    except TestnetError as exc:
        return _err(str(exc))
    return 0


def _cmd_restart(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        return _err(f"--timeout must be positive, got {args.timeout:g}")
    try:
        record = launcher.restart(args.dir, args.peer, ready_timeout_s=args.timeout)
    except TestnetError as exc:
        return _err(str(exc))
    print(f"{record.name} restarted (pid {record.pid}); it replayed its ledger and catches up")
    return 0


def _cmd_perturb(args: argparse.Namespace) -> int:
    try:
        print(args.perturb(args.dir, args.peer))
    except TestnetError as exc:
        return _err(str(exc))
    return 0


def _cmd_join(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        return _err(f"--timeout must be positive, got {args.timeout:g}")
    try:
        result = launcher.join(args.dir, args.model, name=args.name, byzantine=args.byzantine, wait=args.wait,
                               ready_timeout_s=args.timeout, member_timeout_s=args.timeout, progress=_progress)
    except TestnetError as exc:
        return _err(str(exc))
    except KeyboardInterrupt:
        print("interrupted; the new peer was stopped", file=sys.stderr)
        return 130
    p = result.peer
    if args.wait:
        at = f" from height {result.boundary}" if result.boundary is not None else ""
        print(f"{p.name} ({p.peer_id[:12]}, {p.model}, api {p.api_url}) is a member of the validator set{at}")
    else:
        print(f"{p.name} ({p.peer_id[:12]}, {p.model}, api {p.api_url}) runs and asked {result.via} to join; it "
              f"becomes a member at an epoch boundary (see `multillmn testnet status --dir {args.dir}`)")
    return 0


def _cmd_leave(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        return _err(f"--timeout must be positive, got {args.timeout:g}")
    try:
        result = launcher.leave(args.dir, args.peer, keep_running=args.keep_running, timeout_s=args.timeout,
                                progress=_progress)
    except TestnetError as exc:
        return _err(str(exc))
    at = f" at height {result.boundary}" if result.boundary is not None else ""
    print(f"{args.peer} left the validator set{at}")
    if result.stopped is not None:
        print(result.stopped)
    elif args.keep_running:
        print(f"{args.peer} keeps running, following the network")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    try:
        report = launcher.down(args.dir, timeout_s=args.timeout)
    except TestnetError as exc:
        return _err(str(exc))
    for line in report:
        print(line)
    return 0


def add_testnet_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``testnet`` and its sub-commands on an ``add_subparsers()`` object."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "testnet", help="run a local multi-process testnet",
        description="Start, inspect and stop a testnet of peers on this machine.")
    sub = parser.add_subparsers(dest="testnet_command", metavar="COMMAND", required=True)

    def with_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                       help=f"testnet directory (default: ./{DEFAULT_DIR})")
        return p

    up = with_dir(sub.add_parser("up", help="generate keys, genesis and configs; start the peers",
                                 description="Start a testnet and wait until every peer is ready."))
    which = up.add_mutually_exclusive_group(required=True)
    which.add_argument("--peers", type=int, metavar="N", help="number of peers (1-64), named peer0..")
    which.add_argument("--manifest", type=Path, metavar="FILE.toml", help="testnet manifest (see docs)")
    up.add_argument("--models", metavar="LIST",
                    help=f"comma-separated models assigned round-robin: {', '.join(KNOWN_MODELS)} or "
                         f"a Hugging Face model directory (default: {DEFAULT_MODELS})")
    up.add_argument("--timeout", type=float, default=900, metavar="S",
                    help="seconds to wait for every peer to be ready (default: 900)")
    up.add_argument("--base-port", type=int, metavar="PORT",
                    help="use consecutive ports from PORT (p2p, api per peer) instead of free ones")
    up.add_argument("--epoch-length", type=int, metavar="N",
                    help="heights per epoch (4-10000): members change only at an epoch's first height "
                         "(default: the manifest's, else the genesis default of 100)")
    up.add_argument("--broadcast", choices=BROADCAST_MODES,
                    help="every peer's [p2p] broadcast (default: the manifest's, else mesh)")
    up.add_argument("--link-plane", type=int, metavar="SEED",
                    help="per-link delays: the peers at points of a plane drawn with SEED, 5-80 ms growing with "
                         "distance (testnet/links.py; the manifest's [testnet] link_plane with its defaults)")
    up.add_argument("--verdict-rule", choices=GENESIS_RULES,
                    help="the genesis verdict_rule: veto lets judges' verdicts reject the wrong side of a split "
                         "(ADR 0022; default: the manifest's, else none)")
    up.add_argument("--reset", action="store_true",
                    help="DIR holds a stopped testnet: delete its keys, genesis and ledgers and start a new one")
    up.set_defaults(func=_cmd_up)

    st = with_dir(sub.add_parser("status", help="show each peer's phase, height and connections"))
    st.add_argument("--json", action="store_true", help="print JSON instead of a table")
    st.set_defaults(func=_cmd_status)

    lg = with_dir(sub.add_parser("logs", help="show the end of the peers' logs"))
    lg.add_argument("--peer", metavar="NAME", help="only this peer")
    lg.add_argument("-n", "--lines", type=int, default=50, metavar="LINES", help="lines per peer (default: 50)")
    lg.set_defaults(func=_cmd_logs)

    rs = with_dir(sub.add_parser("restart", help="start a peer that crashed or was killed again (same key and ledger)"))
    rs.add_argument("--peer", metavar="NAME", required=True, help="the peer to restart")
    rs.add_argument("--timeout", type=float, default=900, metavar="S",
                    help="seconds to wait for it to be ready (default: 900)")
    rs.set_defaults(func=_cmd_restart)

    for name, fn, text in (
            ("kill", perturb.kill, "SIGKILL a peer's (or shard worker's) process group: a crash; `restart` brings "
                                   "a peer back"),
            ("pause", perturb.pause, "SIGSTOP a peer or shard worker: it keeps its sockets but does nothing"),
            ("resume", perturb.resume, "SIGCONT a paused peer or shard worker"),
            ("disconnect", perturb.disconnect, "cut every p2p link of a peer, both ways, until `reconnect`"),
            ("reconnect", perturb.reconnect, "restore the p2p links of a disconnected peer")):
        pt = with_dir(sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + "."))
        pt.add_argument("--peer", metavar="NAME", required=True,
                        help="the peer" + (", or a shard worker as PEER/DEVICE" if name in ("kill", "pause", "resume")
                                           else ""))
        pt.set_defaults(func=_cmd_perturb, perturb=fn)

    jn = with_dir(sub.add_parser(
        "join", help="add a peer to the running testnet; it asks a member to join the validator set",
        description="Write a new peer's key and config (the testnet's genesis, the running peers' addresses), "
                    "start it, and wait until it is ready and a member accepted its join request; it votes from "
                    "the first epoch boundary at least two heights after the request is committed. Heights "
                    "advance only as questions are decided."))
    jn.add_argument("--model", required=True, help=f"{' or '.join(KNOWN_MODELS)}, or a Hugging Face model "
                                                    "directory the genesis admits")
    jn.add_argument("--name", help="its name (default: the next free peerN)")
    jn.add_argument("--byzantine", default="none", metavar="BEHAVIOUR",
                    help=f"fault injection: {', '.join(BYZANTINE_BEHAVIOURS)} (default: none)")
    jn.add_argument("--wait", action="store_true",
                    help="also wait until it is a member of the validator set; print the boundary height")
    jn.add_argument("--timeout", type=float, default=900, metavar="S",
                    help="seconds to wait for it to be ready, and with --wait to be a member (default: 900)")
    jn.set_defaults(func=_cmd_join)

    lv = with_dir(sub.add_parser(
        "leave", help="take a peer out of the validator set, then stop it",
        description="Sign the peer's leave request with its key (in the testnet directory), hand it to its own "
                    "API (or another member's), wait until the other members no longer list it (an epoch "
                    "boundary), then stop it."))
    lv.add_argument("--peer", metavar="NAME", required=True, help="the peer that leaves")
    lv.add_argument("--keep-running", action="store_true", help="leave it running, following the network")
    lv.add_argument("--timeout", type=float, default=900, metavar="S",
                    help="seconds to wait until it is out of the set (default: 900)")
    lv.set_defaults(func=_cmd_leave)

    dn = with_dir(sub.add_parser("down", help="stop every peer (SIGTERM, then SIGKILL)"))
    dn.add_argument("--timeout", type=float, default=15, metavar="S",
                    help="seconds to wait after SIGTERM before SIGKILL (default: 15)")
    dn.set_defaults(func=_cmd_down)
    return parser
