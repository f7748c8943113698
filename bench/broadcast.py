r"""Tree broadcast against the full mesh (issue 13), in one process, with real encrypted loopback transports.

    # the figures in bench/results/broadcast-loopback-2026-11-30.json (about 5 + 5 minutes on two cores)
    nice -n 10 .venv/bin/python bench/broadcast.py --sizes 8 16 32 --broadcasts 20
    nice -n 10 .venv/bin/python bench/broadcast.py --sizes 64 --broadcasts 8
    # two origins in turn, so each origin's later broadcasts run on its settled tree (dups 1st / rep. / 4th+)
    nice -n 10 .venv/bin/python bench/broadcast.py --sizes 32 64 --broadcasts 16 --origins 2 \
        --faults quarter-silent --modes tree --json bench/results/broadcast-loopback-settled-2026-11-30.json
    # decision latency of 8 real Nodes (scripted answers) on the same kind of links, mesh then tree
    nice -n 10 .venv/bin/python bench/broadcast.py --nodes 8 --queries 16
    # a quick look (tests/test_bench_broadcast.py runs run_network(8, ...) with 3 broadcasts)
    .venv/bin/python bench/broadcast.py --sizes 8 --broadcasts 5 --no-json

Every command merges its rows into ``--json`` (default
``bench/results/broadcast-loopback-<today>.json``) and prints the table.

**Setup.** N peers (8, 16, 32, 64), each with its own real
:class:`~peers.transport.Transport` on 127.0.0.1 (X25519 + Ed25519 handshake,
ChaCha20-Poly1305 frames), all in one trio process. Link delays are
heterogeneous: N points drawn from a seeded RNG in the unit square, and the
one-way delay from i to j is ``5 ms + 75 ms * distance / sqrt(2)`` (5 to
80 ms), set on each sender's :class:`~peers.transport.LinkShaper`. Every
payload is a real signed ``vote`` (about 200 bytes), signed by its origin;
each receiver validates it as the node would (``decode_message`` with a
``VerifiedCache``).

* **mesh**: the origin's ``Transport.broadcast_nowait`` (N-1 direct sends).
* **tree**: a :class:`~peers.broadcast._host.BroadcastTransport` around each
  transport (``BroadcastConfig(fanout=--fanout)``, the shipped timers), its
  latency probe warmed up first (pings every 0.5 s, rows every 1 s, both
  times N/16 above 16 peers, until every peer has an estimate towards every
  other and two rows went round), then paused so that its frames do not
  share the measurement, and every host's trees computed ahead.

Broadcasts go one at a time from honest origins in turn (seeded; every
broadcast from a new origin while there are any, so every one is its
origin's first, "cold", unless ``--origins K`` makes K origins take turns):
*t0* when
the origin hands the payload over; each peer's delivery time is when the
payload comes out of its ``inbound`` channel. A broadcast ends when every
honest peer has it or after ``--deadline`` seconds, then ``--settle`` seconds
pass so that lazy announcements and repairs it caused are counted with it.

Reported per (N, mode, faults): p50, p99 and max delivery latency over every
(broadcast, honest receiver); frames and bytes sent per peer per broadcast
(every peer's sends in the window, over N); the origin's sends; duplicates
per delivered message (payload copies an honest receiver got beyond the
first, from the broadcaster's counters, over the honest deliveries; 0 in the
mesh; ``dups_all`` adds the silent peers' own, which never stop because a
silent peer's PRUNEs are dropped with the rest of its sends), also split
into each origin's first broadcast, its later ones and its fourth on; delivery ratio (honest receivers
that got it before the deadline). **faults = quarter-silent**: a quarter of
the peers (never an origin) silently drop every frame they would relay
(:class:`SilentRelay`: they still receive, deliver to themselves and answer
pings); in the mesh nothing relays, so only the receivers change.

**Decisions** (``--nodes N``): N real :class:`~peers.node.Node` s with
scripted answers (``PeerConfig.for_tests()`` timeouts, ``[p2p] broadcast``
mesh, then tree with ``broadcast_fanout``), each with its own loopback
transport and the same plane delays; after the links are up (and, for the
tree, the latency warm-up as above) ``--queries`` questions are submitted one
at a time, from each peer in turn. Reported: the time from ``submit`` to the
decision at the entry peer (p50, mean, max) and the protocol part (from the
height's first proposal at the entry peer).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import random
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from consensus.messages import VerifiedCache, Vote, sign  # noqa: E402
from multillmn.identity import KeyPair  # noqa: E402
from peers.broadcast import BroadcastConfig, Send  # noqa: E402
from peers.broadcast._host import BroadcastTransport, signed_validator  # noqa: E402
from peers.latency import LatencyConfig  # noqa: E402
from peers.transport import Transport  # noqa: E402
from peers.wire import encode_message  # noqa: E402
from testnet.links import plane_delays  # noqa: E402

delay_matrix = plane_delays
"""One-way delays in seconds: seeded points in the unit square, 5 ms + 75 ms * distance / sqrt(2) (the testnet's
``[testnet] link_plane`` is the same matrix)."""

DEFAULT_JSON = ROOT / "bench" / "results" / f"broadcast-loopback-{datetime.date.today().isoformat()}.json"
CHAIN = "bench-broadcast"


class SilentRelay(BroadcastTransport):
    """Fault injection: never relays (drops every frame not caused by its own broadcast), silently."""

    def _on_send(self, send: Send, own: bool) -> bool:
        return own


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


@dataclass
class _Peer:
    key: KeyPair
    transport: Transport
    host: BroadcastTransport | None
    silent: bool
    got: dict[int, float] = field(default_factory=dict)  # broadcast index -> delivery time
    copies: int = 0  # payload copies beyond the first (mesh: same payload twice)

    @property
    def surface(self) -> Transport | BroadcastTransport:
        return self.host if self.host is not None else self.transport


async def run_network(n: int, mode: str, *, broadcasts: int, silent_fraction: float = 0.0, seed: int = 1,
                      fanout: int = 3, deadline_s: float = 5.0, settle_s: float = 0.3,
                      connect_timeout_s: float = 600.0, latency: LatencyConfig | None = None,
                      origins: int = 0) -> dict[str, Any]:
    """One network of ``n`` peers in ``mode`` ("mesh" | "tree"); returns the row of figures. ``origins``: that many
    honest peers broadcast in turn (so each origin's later broadcasts run on a settled tree); 0: every broadcast
    from another origin while there are honest peers left (every one cold)."""
    assert mode in ("mesh", "tree")
    rng = random.Random(seed * 1000 + n)
    keys = [KeyPair.from_seed(rng.randbytes(32)) for _ in range(n)]
    ids = [k.peer_id for k in keys]
    public = {k.peer_id: k.public_key for k in keys}
    delays = delay_matrix(n, seed)
    silent_set = set(rng.sample(range(n), int(n * silent_fraction)))
    honest = [i for i in range(n) if i not in silent_set]
    payloads: dict[bytes, int] = {}
    peers: list[_Peer] = []
    for i, key in enumerate(keys):
        t = Transport(key, ("127.0.0.1", 0), {p: None for p in ids if p != key.peer_id},
                      backoff_initial=0.05, backoff_max=1.0, handshake_timeout=30.0)  # 64 peers dial at once
        for j, other in enumerate(ids):
            if j != i:
                t.shaper.set(other, delay_s=delays[i][j])
        host: BroadcastTransport | None = None
        if mode == "tree":
            cls = SilentRelay if i in silent_set else BroadcastTransport
            host = cls(t, signed_validator(public.get, VerifiedCache()),
                       config=_config(fanout),
                       latency=latency or _warmup_latency(n))
        peers.append(_Peer(key, t, host, i in silent_set))

    started = time.perf_counter()
    out: dict[str, Any] = {"n": n, "mode": mode, "faults": "quarter-silent" if silent_set else "none",
                           "silent": len(silent_set), "fanout": fanout if mode == "tree" else None,
                           "seed": seed, "broadcasts": broadcasts}
    async with trio.open_nursery() as nursery:
        for p in peers:
            await nursery.start(p.surface.run)
        for p in peers:
            for q in peers:
                if q is not p:
                    assert q.transport.listen_port is not None
                    p.transport.set_address(q.key.peer_id, ("127.0.0.1", q.transport.listen_port))
        for p in peers:
            nursery.start_soon(_collect, p, payloads)
        with trio.fail_after(connect_timeout_s):
            while any(len(p.transport.connected_peers()) < n - 1 for p in peers):
                await trio.sleep(0.1)
        out["connect_s"] = round(time.perf_counter() - started, 2)
        if mode == "tree":
            warm = time.perf_counter()
            with trio.fail_after(connect_timeout_s):
                while any(len(p.host.probe.estimates()) < n - 1 for p in peers if p.host is not None):
                    await trio.sleep(0.1)
                rows = 2 * max(p.host.probe.config.row_interval_s for p in peers if p.host is not None)
                await trio.sleep(rows + 0.5)
            for p in peers:
                assert p.host is not None
                p.host.pinging = False
            await trio.sleep(0.5)  # the last pongs and rows land
            with trio.fail_after(connect_timeout_s):
                while not all(p.host.warm for p in peers if p.host is not None):  # trees computed ahead
                    await trio.sleep(0.1)
            out["warmup_s"] = round(time.perf_counter() - warm, 2)
        base = _counters(peers)
        latencies: list[float] = []
        delivered = expected = 0
        per_broadcast: list[dict[str, int]] = []
        origin_sends: list[int] = []  # every frame the origin sent in the window (tree: payloads and digests)
        origin_payload_sends: list[int] = []  # of which carried the payload
        if origins:
            chosen = rng.sample(honest, min(origins, len(honest)))
            order = [chosen[k % len(chosen)] for k in range(broadcasts)]
        else:
            order = [honest[k % len(honest)] for k in range(broadcasts)]
            rng.shuffle(order)
        repeat: list[bool] = []  # this origin broadcast before (its tree had a chance to settle)
        settled: list[bool] = []  # its fourth broadcast or later
        for b, origin in enumerate(order):
            repeat.append(origin in order[:b])
            settled.append(order[:b].count(origin) >= 3)
            vote = Vote(chain_id=CHAIN, type="prevote", height=b + 1, round=0, value_id=None, voter=ids[origin])
            payload = encode_message(sign(vote, keys[origin]))
            payloads[payload] = b
            before = _counters(peers)
            t0 = trio.current_time()
            mesh_sent = peers[origin].surface.broadcast_nowait(payload)
            targets = [i for i in honest if i != origin]
            with trio.move_on_after(deadline_s):
                while any(b not in peers[i].got for i in targets):
                    await trio.sleep(0.002)
            await trio.sleep(settle_s)
            after = _counters(peers)
            for i in targets:
                expected += 1
                if b in peers[i].got:
                    delivered += 1
                    latencies.append(peers[i].got[b] - t0)
            # the mesh sends nothing but the origin's N-1 copies (broadcast_nowait's count)
            frames = sum(after["frames"]) - sum(before["frames"]) if mode == "tree" else mesh_sent
            nbytes = sum(after["bytes"]) - sum(before["bytes"]) if mode == "tree" else mesh_sent * len(payload)
            origin_sends.append(after["frames"][origin] - before["frames"][origin] if mode == "tree" else mesh_sent)
            origin_payload_sends.append(after["gossip"][origin] - before["gossip"][origin] if mode == "tree"
                                        else mesh_sent)
            payload_frames = sum(after["gossip"]) - sum(before["gossip"]) if mode == "tree" else mesh_sent
            per_broadcast.append({"frames": frames, "bytes": nbytes, "payload_frames": payload_frames,
                                  # copies beyond the first at the honest receivers (a silent peer's PRUNE is
                                  # dropped with the rest of its sends, so its duplicates never stop)
                                  "dups": sum(after["dups"][i] - before["dups"][i] for i in honest),
                                  "dups_all": sum(after["dups"]) - sum(before["dups"]),
                                  "delivered": sum(1 for i in targets if b in peers[i].got),
                                  "max_s": max((peers[i].got[b] - t0 for i in targets if b in peers[i].got),
                                               default=float("nan"))})
        end = _counters(peers)
        deliveries = max(1, delivered)
        out.update({
            "payload_bytes": len(payload),
            "p50_ms": round(1000 * _pct(latencies, 0.5), 2),
            "p99_ms": round(1000 * _pct(latencies, 0.99), 2),
            "max_ms": round(1000 * max(latencies), 2) if latencies else None,
            "frames_per_node": round(statistics.fmean(x["frames"] for x in per_broadcast) / n, 3),
            "payload_frames_per_node": round(statistics.fmean(x["payload_frames"] for x in per_broadcast) / n, 3),
            "bytes_per_node": round(statistics.fmean(x["bytes"] for x in per_broadcast) / n, 1),
            "origin_sends": round(statistics.fmean(origin_sends), 2),
            "origin_payload_sends": round(statistics.fmean(origin_payload_sends), 2),
            "dups_per_delivery": round(sum(x["dups"] for x in per_broadcast) / deliveries, 3),
            "origins": len(set(order)),
            **{f"{name}_broadcasts": sum(1 for r in repeat if r == later) for name, later in
               (("first", False), ("repeat", True))},
            **{f"dups_per_delivery_{name}": round(sum(x["dups"] for x, r in zip(per_broadcast, repeat) if r == later)
                                                  / max(1, sum(x["delivered"] for x, r in zip(per_broadcast, repeat)
                                                               if r == later)), 3)
               for name, later in (("first", False), ("repeat", True))},
            "settled_broadcasts": sum(settled),
            "dups_per_delivery_settled": round(
                sum(x["dups"] for x, r in zip(per_broadcast, settled) if r)
                / max(1, sum(x["delivered"] for x, r in zip(per_broadcast, settled) if r)), 3),
            "max_ms_settled": round(1000 * max((x["max_s"] for x, r in zip(per_broadcast, settled) if r),
                                               default=float("nan")), 2),
            "dups_per_broadcast": [x["dups"] for x in per_broadcast],
            "dups_all_per_delivery": round(sum(x["dups_all"] for x in per_broadcast) / deliveries, 3),
            "dups_all_per_broadcast": [x["dups_all"] for x in per_broadcast],
            "max_ms_repeat": round(1000 * max((x["max_s"] for x, r in zip(per_broadcast, repeat) if r),
                                              default=float("nan")), 2),
            "delivery_ratio": round(delivered / max(1, expected), 4),
            "delivered": delivered, "expected": expected,
            "core": _core_totals(peers, base, end) if mode == "tree" else None,
            "wall_s": round(time.perf_counter() - started, 1),
        })
        nursery.cancel_scope.cancel()
    return out


def _warmup_latency(n: int) -> LatencyConfig:
    """Fast pings and rows for the warm-up, slower for many peers in one process (64 peers ping 4,032 links)."""
    scale = max(1.0, n / 16)
    return LatencyConfig(ping_interval_s=0.5 * scale, row_interval_s=1.0 * scale, min_row_interval_s=0.5 * scale)


def _config(fanout: int) -> BroadcastConfig:
    cfg = replace(BroadcastConfig(), fanout=fanout)
    cfg.validate()
    return cfg


async def _collect(p: _Peer, payloads: dict[bytes, int]) -> None:
    async for _, payload in p.surface.inbound:
        b = payloads.get(payload)
        if b is None:
            continue
        if b in p.got:
            p.copies += 1
        else:
            p.got[b] = trio.current_time()


def _dups(p: _Peer) -> int:
    if p.host is None:
        return p.copies
    stats = p.host.broadcaster.statistics()
    for key in ("duplicates", "dup", "duplicate_payloads", "dups"):
        if key in stats:
            return int(stats[key]) + p.copies
    return p.copies


def _counters(peers: list[_Peer]) -> dict[str, list[int]]:
    frames, nbytes, dups, gossip = [], [], [], []
    for p in peers:
        if p.host is None:
            frames.append(0)
            nbytes.append(0)
            gossip.append(0)
        else:
            s = p.host.broadcast_statistics()
            frames.append(s["frames_sent"])
            nbytes.append(s["frame_bytes_sent"])
            gossip.append(s.get("core_sent_gossip", 0))
        dups.append(_dups(p))
    return {"frames": frames, "bytes": nbytes, "dups": dups, "gossip": gossip}


def _core_totals(peers: list[_Peer], base: dict[str, list[int]], end: dict[str, list[int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for p in peers:
        if p.host is None:
            continue
        for k, v in p.host.broadcaster.statistics().items():
            total[k] = total.get(k, 0) + int(v)
    return total


async def decision_run(mode: str, *, n: int = 8, queries: int = 10, seed: int = 1, fanout: int = 3,
                       timeout_s: float = 60.0) -> dict[str, Any]:
    """``n`` real :class:`~peers.node.Node` s (scripted answers) on loopback with the same plane delays, ``[p2p]
    broadcast = mode``; ``queries`` questions one at a time from entry peers in turn. Returns decision latencies."""
    from multillmn.config import PeerConfig
    from multillmn.genesis import Genesis
    from peers.engine import ScriptedEngine
    from peers.node import Node

    rng = random.Random(seed * 1000 + n)
    keys = [KeyPair.from_seed(rng.randbytes(32)) for _ in range(n)]
    ids = [k.peer_id for k in keys]
    genesis = Genesis.build(CHAIN, [(f"peer{i}", k.public_key, 1) for i, k in enumerate(keys)])
    delays = delay_matrix(n, seed)
    questions = [f"Question {i}: what is the capital of France?" for i in range(queries)]
    table = {q: "Paris" for q in questions}
    cfg = replace(PeerConfig.for_tests(), broadcast=mode, broadcast_fanout=fanout)
    nodes: list[Node] = []
    out: dict[str, Any] = {"n": n, "mode": mode, "queries": queries, "seed": seed,
                           "fanout": fanout if mode == "tree" else None}
    async with trio.open_nursery() as nursery:
        for i, key in enumerate(keys):
            t = Transport(key, ("127.0.0.1", 0), {p: None for p in ids if p != key.peer_id},
                          backoff_initial=0.05, backoff_max=1.0, handshake_timeout=30.0)
            for j, pid in enumerate(ids):
                if j != i:
                    t.shaper.set(pid, delay_s=delays[i][j])
            node = Node(replace(cfg, moniker=f"peer{i}"), key, genesis, ScriptedEngine(table, model_name=f"m{i}"), t)
            if isinstance(node.transport, BroadcastTransport):
                node.transport.probe.config = _warmup_latency(n)
            await nursery.start(t.run)
            await nursery.start(node.run)
            nodes.append(node)
        for node in nodes:
            for other in nodes:
                if other is not node:
                    assert other.transport.listen_port is not None
                    node.transport.set_address(other.key.peer_id, ("127.0.0.1", other.transport.listen_port))
        with trio.fail_after(timeout_s):
            while any(len(node.transport.connected_peers()) < n - 1 for node in nodes):
                await trio.sleep(0.05)
            hosts = [node.transport for node in nodes if isinstance(node.transport, BroadcastTransport)]
            while any(len(h.probe.estimates()) < n - 1 for h in hosts):
                await trio.sleep(0.1)
            if hosts:
                await trio.sleep(2.5)  # two rounds of rows
                for h in hosts:
                    h.pinging = False
                while not all(h.warm for h in hosts):
                    await trio.sleep(0.1)
        total, protocol = [], []
        for k, q in enumerate(questions):
            entry = nodes[k % n]
            t0 = trio.current_time()
            with trio.fail_after(timeout_s):
                d = await entry.submit(q)
            total.append(trio.current_time() - t0)
            protocol.append(d.protocol_ms / 1000)
            await trio.sleep(0.2)
        out.update({
            "decision_p50_ms": round(1000 * _pct(total, 0.5), 1), "decision_max_ms": round(1000 * max(total), 1),
            "decision_mean_ms": round(1000 * statistics.fmean(total), 1),
            "protocol_p50_ms": round(1000 * _pct(protocol, 0.5), 1),
            "heights": min(node.height for node in nodes) - 1,
            "tree": None if not hosts else {k: sum(h.broadcast_statistics().get(k, 0) for h in hosts) for k in
                                           ("broadcasts", "sent_direct", "frames_sent", "delivered",
                                            "core_duplicates", "core_grafts_sent", "core_parent_silent")},
        })
        nursery.cancel_scope.cancel()
    return out


COLUMNS = [("n", "N", 4), ("mode", "mode", 5), ("faults", "faults", 15), ("p50_ms", "p50 ms", 8),
           ("p99_ms", "p99 ms", 8), ("max_ms", "max ms", 8), ("frames_per_node", "frames/node", 12), ("payload_frames_per_node", "payl/node", 10),
           ("bytes_per_node", "bytes/node", 11), ("origin_sends", "origin", 7), ("origin_payload_sends", "orig.payl", 9),
           ("dups_per_delivery", "dups/deliv", 11), ("dups_per_delivery_first", "dups 1st", 9),
           ("dups_per_delivery_repeat", "dups rep.", 10), ("dups_per_delivery_settled", "dups 4th+", 10),
           ("max_ms_settled", "max 4th+", 9),
           ("delivery_ratio", "delivery", 9)]


def table(rows: list[dict[str, Any]]) -> str:
    head = " ".join(f"{title:>{w}}" for _, title, w in COLUMNS)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(" ".join(f"{str(r.get(k)):>{w}}" for k, _, w in COLUMNS))
    return "\n".join(lines)


async def run_all(sizes: list[int], broadcasts: int, *, seed: int, fanout: int, deadline_s: float,
                  settle_s: float, faults: list[str], modes: list[str], origins: int = 0) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        for fault in faults:
            for mode in modes:
                row = await run_network(n, mode, broadcasts=broadcasts, seed=seed, fanout=fanout,
                                        silent_fraction=0.25 if fault == "quarter-silent" else 0.0,
                                        deadline_s=deadline_s, settle_s=settle_s, origins=origins)
                print(table([row]).splitlines()[-1], f"  ({row['wall_s']} s)", flush=True)
                rows.append(row)
    return rows


def _nodes_main(args: argparse.Namespace) -> int:
    rows = []
    for mode in args.modes:
        row = trio.run(lambda: decision_run(mode, n=args.nodes, queries=args.queries, seed=args.seed,
                                            fanout=args.fanout))
        print(json.dumps(row), flush=True)
        rows.append(row)
    if not args.no_json:
        old: dict[str, Any] = json.loads(args.json.read_text()) if args.json.exists() else {}
        old["decisions"] = {"command": " ".join(["nice -n 10 .venv/bin/python bench/broadcast.py", *sys.argv[1:]]),
                            "rows": rows}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(old, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--broadcasts", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--fanout", type=int, default=3)
    ap.add_argument("--deadline", type=float, default=5.0)
    ap.add_argument("--settle", type=float, default=0.3)
    ap.add_argument("--faults", nargs="+", default=["none", "quarter-silent"], choices=["none", "quarter-silent"])
    ap.add_argument("--modes", nargs="+", default=["mesh", "tree"], choices=["mesh", "tree"])
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    ap.add_argument("--no-json", action="store_true")
    ap.add_argument("--nodes", type=int, default=0,
                    help="instead: decision latency of this many real Nodes (scripted answers), mesh and tree")
    ap.add_argument("--queries", type=int, default=10)
    ap.add_argument("--origins", type=int, default=0,
                    help="this many honest peers broadcast in turn (0: a new origin for each broadcast)")
    args = ap.parse_args(argv)
    if args.nodes:
        logging.getLogger("multillmn").setLevel(logging.WARNING)
        return _nodes_main(args)
    logging.getLogger("multillmn.transport").setLevel(logging.ERROR)  # the start's dial storm, not news
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 64 peers hold about 8,000 sockets
    print(table([]).splitlines()[0], flush=True)
    rows = trio.run(lambda: run_all(args.sizes, args.broadcasts, seed=args.seed, fanout=args.fanout,
                                    deadline_s=args.deadline, settle_s=args.settle, faults=args.faults,
                                    modes=args.modes, origins=args.origins))
    print()
    print(table(rows))
    if not args.no_json:
        old: dict[str, Any] = json.loads(args.json.read_text()) if args.json.exists() else {}
        keep = [r for r in old.get("rows", []) if (r["n"], r["mode"], r["faults"]) not in
                {(x["n"], x["mode"], x["faults"]) for x in rows}]
        merged = sorted(keep + rows, key=lambda r: (r["n"], r["faults"], r["mode"]))
        args.json.parent.mkdir(parents=True, exist_ok=True)
        command = " ".join(["nice -n 10 .venv/bin/python bench/broadcast.py", *sys.argv[1:]])
        commands = [c for c in old.get("commands", []) if c != command] + [command]
        doc = {**{k: v for k, v in old.items() if k != "command"}, "bench": "broadcast-loopback",
               "date": datetime.date.today().isoformat(), "commands": commands, "rows": merged}
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
