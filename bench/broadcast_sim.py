"""By simulation at 1,000 nodes: tree broadcast (the shipping core) against mesh and flooding (issue 13).

    .venv/bin/python bench/broadcast_sim.py                      # 1,000 nodes, the run in bench/results
    .venv/bin/python bench/broadcast_sim.py --nodes 200 --origins 4 --rounds 2 --flood-broadcasts 1 --json /tmp/b.json

Peers are random points on a unit square (seeded); a frame's one-way latency
is ``2 ms + distance * 100 ms`` stretched by a seeded jitter in ``[1, 1.1)``,
after the sender's upload queue (``--bandwidth`` bytes/s, default 10 Mbit/s)
has sent it. Every core knows the un-jittered latency matrix.

* **tree**: :class:`peers.broadcast.Broadcaster` on every node in
  :class:`peers.broadcast._simnet.SimNet` (per-origin trees, fan-out 3,
  Plumtree repair, scoring). ``--origins`` peers broadcast in turn, one
  broadcast at a time run to quiet, for ``--rounds`` rounds: round 1 is cold
  (trees first used, repair at work), the last round is settled.
* **mesh**: the origin sends the payload to every other peer (its upload
  queue serialises the n-1 copies), nobody relays.
* **flooding**: every peer relays the first copy it gets to every other
  peer (n-1 copies each): the duplicates baseline (``--flood-broadcasts``
  broadcasts per scenario, about n^2 frames each).

Each in two scenarios: all honest, and a quarter of the peers (never an
origin) dropping everything they should send. Reported per broadcast:
p50 and max delivery latency over the honest peers, delivery ratio,
frames and bytes sent per node (mean; max over nodes), the origin's frames,
duplicates per delivered message, and for the tree the ratio of its max
latency to the offline tree's (the same heuristic with full knowledge, on
the un-jittered matrix, no queueing; with droppers, the tree that avoids
them as relays from the start) and of that tree to the lower bound (the
farthest peer's direct latency). ``origin copies``: full copies of the
payload the origin sent (its other frames are digests).
"""

from __future__ import annotations

import argparse
import datetime
import heapq
import json
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from peers.broadcast import BroadcastConfig, Gossip, build_tree, encode, max_latency  # noqa: E402
from peers.broadcast._simnet import SimNet, make_payload  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _summary(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = rows[0].keys()
    return {k: (max(r[k] for r in rows) if k.startswith("max_") else statistics.fmean(r[k] for r in rows))
            for k in keys}


def run_tree(args: argparse.Namespace, droppers: set[str], body: bytes) -> dict[str, Any]:
    config = BroadcastConfig()
    net = SimNet(args.nodes, seed=args.seed, config=config, bandwidth=args.bandwidth)
    net.behaviours = dict.fromkeys(droppers, "drop")
    honest = [p for p in net.ids if p not in droppers]
    origins = honest[:args.origins]
    n = len(net.ids)
    rounds: list[list[dict[str, float]]] = []
    for r in range(args.rounds):
        rows = []
        for o in origins:
            frames0, bytes0 = sum(net.frames_sent.values()), sum(net.bytes_sent.values())
            kinds0 = Counter(net.kind_frames)
            origin0 = net.frames_sent[o]
            copies0 = net.nodes[o].statistics().get("sent_gossip", 0)
            sent0 = dict(net.frames_sent)
            dup0 = net.total("duplicates")
            t0 = time.perf_counter()
            msg = net.broadcast(o, body + f"|{r}".encode())
            net.run()
            record = net.records[msg]
            lat = [t - record.start for p, t in record.delivered.items() if p in honest and p != o]
            delivered = len(record.delivered) - 1
            kinds = net.kind_frames - kinds0
            offline = max_latency(net.nodes[o].base_tree(o), o, net.latency)
            if droppers:  # the best offline tree knows who drops and routes around them from the start
                offline = max_latency(build_tree(o, net.ids, net.latency, config.fanout, avoid=droppers), o,
                                      net.latency)
            lower = max(net.latency(o, p) for p in net.ids if p != o)
            rows.append({
                "p50_latency_s": _pct(lat, 0.5), "max_latency_s": max(lat),
                "delivery_ratio": len(set(record.delivered) & set(honest)) / len(honest),
                "frames_per_node": (sum(net.frames_sent.values()) - frames0) / n,
                "bytes_per_node": (sum(net.bytes_sent.values()) - bytes0) / n,
                "max_frames_one_node": max(net.frames_sent[p] - sent0.get(p, 0) for p in net.ids),
                "gossip_frames_per_node": kinds["gossip"] / n,
                "control_frames_per_node": (kinds["ihave"] + kinds["graft"] + kinds["prune"] + kinds["suspect"]
                                            + kinds["exclude"]) / n,
                "exclude_frames_per_node": kinds["exclude"] / n,
                "origin_frames": net.frames_sent[o] - origin0,
                "origin_gossip_frames": net.nodes[o].statistics().get("sent_gossip", 0) - copies0,
                "duplicates_per_delivery": (net.total("duplicates") - dup0) / max(1, delivered),
                "grafts": kinds["graft"],
                "vs_offline_tree": max(lat) / offline, "offline_vs_lower_bound": offline / lower,
                "cpu_s": time.perf_counter() - t0,
            })
        rounds.append(rows)
        print(f"  tree round {r + 1}/{args.rounds}: max latency {max(x['max_latency_s'] for x in rows):.3f} s, "
              f"grafts {sum(x['grafts'] for x in rows)}", file=sys.stderr)
    return {"cold": _summary(rounds[0]), "settled": _summary(rounds[-1]),
            "per_round": [_summary(r) for r in rounds]}


def _direct(net: SimNet, rng: random.Random, a: str, b: str) -> float:
    return net.latency(a, b) * (1.0 + net.jitter * rng.random())


def run_mesh(args: argparse.Namespace, droppers: set[str], frame_len: int) -> dict[str, Any]:
    net = SimNet(args.nodes, seed=args.seed, bandwidth=args.bandwidth)
    rng = random.Random(args.seed + 1)
    honest = [p for p in net.ids if p not in droppers]
    rows = []
    for o in honest[:args.origins]:
        order = [p for p in net.ids if p != o]
        rng.shuffle(order)
        per = frame_len / args.bandwidth
        lat = [(k + 1) * per + _direct(net, rng, o, p) for k, p in enumerate(order) if p in honest]
        n = len(net.ids)
        rows.append({
            "p50_latency_s": _pct(lat, 0.5), "max_latency_s": max(lat), "delivery_ratio": 1.0,
            "frames_per_node": (n - 1) / n, "bytes_per_node": (n - 1) * frame_len / n,
            "max_frames_one_node": n - 1, "origin_frames": n - 1, "origin_gossip_frames": n - 1,
            "duplicates_per_delivery": 0.0,
        })
    return {"settled": _summary(rows)}


def run_flood(args: argparse.Namespace, droppers: set[str], frame_len: int) -> dict[str, Any]:
    """Every peer relays its first copy to all others, serialised on its upload; droppers relay nothing."""
    net = SimNet(args.nodes, seed=args.seed, bandwidth=args.bandwidth)
    rng = random.Random(args.seed + 2)
    honest = [p for p in net.ids if p not in droppers]
    per = frame_len / args.bandwidth
    rows = []
    for o in honest[:args.flood_broadcasts]:
        first: dict[str, float] = {}
        received = 0
        sent: Counter[str] = Counter()
        heap: list[tuple[float, str, str]] = [(0.0, o, "")]
        while heap:
            at, node, sender = heapq.heappop(heap)
            if sender:
                received += 1
            if node in first:
                continue
            first[node] = at
            if node in droppers:
                continue
            order = [p for p in net.ids if p != node and p != sender]
            rng.shuffle(order)
            for k, p in enumerate(order):
                heapq.heappush(heap, (at + (k + 1) * per + _direct(net, rng, node, p), p, node))
            sent[node] = len(order)
        lat = [t for p, t in first.items() if p in honest and p != o]
        n = len(net.ids)
        delivered = len(first) - 1
        rows.append({
            "p50_latency_s": _pct(lat, 0.5), "max_latency_s": max(lat),
            "delivery_ratio": len(set(first) & set(honest)) / len(honest),
            "frames_per_node": sum(sent.values()) / n, "bytes_per_node": sum(sent.values()) * frame_len / n,
            "max_frames_one_node": max(sent.values()), "origin_frames": sent[o], "origin_gossip_frames": sent[o],
            "duplicates_per_delivery": (received - delivered) / delivered,
        })
    return {"settled": _summary(rows)}


COLUMNS = [("p50_latency_s", "p50 s", "{:.3f}"), ("max_latency_s", "max s", "{:.3f}"),
           ("delivery_ratio", "deliv", "{:.3f}"), ("frames_per_node", "frames/node", "{:.1f}"),
           ("bytes_per_node", "bytes/node", "{:.0f}"), ("max_frames_one_node", "max frames 1 node", "{:.0f}"),
           ("origin_frames", "origin frames", "{:.1f}"), ("origin_gossip_frames", "origin copies", "{:.1f}"), ("duplicates_per_delivery", "dups/deliv", "{:.3f}"),
           ("vs_offline_tree", "vs offline", "{:.2f}")]


def table(results: dict[str, Any]) -> str:
    head = f"{'scenario':<10} {'protocol':<16}" + "".join(f" {h:>{max(len(h), 8)}}" for _, h, _ in COLUMNS)
    lines = [head, "-" * len(head)]
    for scenario, protocols in results.items():
        for name, phases in protocols.items():
            for phase in ("cold", "settled"):
                if phase not in phases:
                    continue
                row = phases[phase]
                label = f"{name} ({phase})" if name == "tree" else name
                cells = "".join(f" {fmt.format(row[k]) if k in row else '-':>{max(len(h), 8)}}"
                                for k, h, fmt in COLUMNS)
                lines.append(f"{scenario:<10} {label:<16}{cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--origins", type=int, default=10, help="peers that broadcast, in turn, each round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--flood-broadcasts", type=int, default=2)
    parser.add_argument("--payload", type=int, default=1024, help="payload bytes")
    parser.add_argument("--bandwidth", type=float, default=1.25e6, help="upload bytes per second per peer")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scenarios", nargs="+", choices=["honest", "drop-25%"], default=["honest", "drop-25%"])
    parser.add_argument("--protocols", nargs="+", choices=["tree", "mesh", "flooding"],
                        default=["tree", "mesh", "flooding"])
    parser.add_argument("--json", type=Path,
                        default=RESULTS / f"broadcast-sim-{datetime.date.today().isoformat()}.json")
    args = parser.parse_args(argv)
    body = bytes(random.Random(args.seed).randrange(256) for _ in range(args.payload - 32))
    frame_len = len(encode(Gossip("p0000", make_payload("p0000", body + b"|0"), 1)))
    ids = [f"p{i:0{max(3, len(str(args.nodes - 1)))}d}" for i in range(args.nodes)]
    droppers = set(random.Random(args.seed).sample(ids[args.origins:], args.nodes // 4))
    started = time.perf_counter()
    results: dict[str, Any] = {}
    for scenario, bad in (("honest", set()), ("drop-25%", droppers)):
        if scenario not in args.scenarios:
            continue
        print(f"{scenario}:", file=sys.stderr)
        runs = {"tree": lambda: run_tree(args, bad, body), "mesh": lambda: run_mesh(args, bad, frame_len),
                "flooding": lambda: run_flood(args, bad, frame_len)}
        results[scenario] = {name: run() for name, run in runs.items() if name in args.protocols}
    elapsed = time.perf_counter() - started
    print(table(results))
    print(f"\n{args.nodes} nodes, fan-out {BroadcastConfig().fanout}, {args.origins} origins x {args.rounds} rounds "
          f"(tree), {args.flood_broadcasts} flooding broadcasts per scenario, payload {args.payload} B "
          f"(frame {frame_len} B), upload {args.bandwidth:.0f} B/s; {elapsed:.0f} s")
    report = {
        "command": "python bench/broadcast_sim.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "nodes": args.nodes, "fanout": BroadcastConfig().fanout, "lazy_degree": BroadcastConfig().lazy_degree,
        "origins": args.origins, "rounds": args.rounds, "flood_broadcasts": args.flood_broadcasts,
        "payload_bytes": args.payload, "frame_bytes": frame_len, "bandwidth_Bps": args.bandwidth,
        "seed": args.seed, "droppers": len(droppers), "elapsed_s": round(elapsed, 1), "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
