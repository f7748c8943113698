r"""Decision latency of tree broadcast against the full mesh on the real multi-process testnet (issue 13).

    # scripted answers (no model: the broadcast's share of decision latency), both testnets at once
    flock /tmp/m/heavy.lock nice -n 5 .venv/bin/python bench/broadcast_testnet.py --engine scripted --queries 24
    # real models (generation dominates), fewer questions; 16 SmolLM2 peers at once left 16.5 GB of 23 free
    flock /tmp/m/heavy.lock nice -n 5 .venv/bin/python bench/broadcast_testnet.py --engine models --queries 6 \
        --models smollm2 --max-new-tokens 16 --label models-together
    # or one testnet after the other (less memory; the machine's load may differ between them)
    flock /tmp/m/heavy.lock nice -n 5 .venv/bin/python bench/broadcast_testnet.py --engine models --queries 8 \
        --models smollm2 --max-new-tokens 16 --sequential
    # the outliers' fixes (issue 13): the recorded runs scripted-4/5/6/7-fixed, each as the code stood then
    flock /tmp/m/heavy.lock nice -n 5 .venv/bin/python bench/broadcast_testnet.py --engine scripted --queries 40 \
        --label scripted-7-fixed

Every command merges its result into ``--json`` (default
``bench/results/broadcast-testnet-<today>.json``) under ``--label`` (default: the engine's name).

**Setup.** Two testnets of ``--peers`` (8) peer processes started by
``testnet.launcher.up`` from one manifest that differs only in
``[testnet] broadcast`` (``tree`` with the shipped fan-out 3, or ``mesh``);
both have ``[testnet] link_plane = { seed = --seed }``: the peers sit at
seeded points of the unit square and every link's one-way delay is 5 ms +
75 ms x distance / sqrt(2) (``testnet/links.py``, the matrix of
``bench/broadcast.py``), applied by each sender's ``LinkShaper`` through
``[p2p] link_delays_ms``. With ``--engine scripted`` every peer is this
script run as the peer command (``--scripted-peer``): the real daemon
(``peers.daemon.run_peer``: transport, broadcast layer, node, ledger, API)
with a :class:`~peers.engine.ScriptedEngine` for a model (answers at once,
or after ``--answer-delay-ms``). With ``--engine models`` the peers are the
real ones with ``--models`` round-robin, ``--threads`` torch threads each.

Both testnets first wait until every tree peer has a latency estimate
towards every other (pings every 5 s, rows every 10 s: the shipped
``LatencyConfig``) and two more row intervals, then take ``--warmup``
questions that are not counted. Then ``--queries`` questions go one at a
time, from entry peers in turn; without ``--sequential`` the two testnets
alternate question by question (the first of each pair swapping), so both
see the machine's load alike.

Reported per mode: client-side decision latency (the entry peer's HTTP
answer, p50 / p90 / max); per (question, peer) the time from the client's
request to the peer's ``decided`` log record (same clock; p50 / p90 /
max, and the spread from the first peer deciding to the last); the time
from the request to the last peer's ``answered`` record (the query has
reached every peer and been answered: the query's spread); whether
every peer decided every question's height; link messages each peer's
transport sent per question (``/v1/status`` ``transport.peers[*].sent``:
every frame, ledger sync and latency probes included) and, for the tree,
the broadcast layer's frames and bytes per question and node and its
duplicates and every other counter of its core that moved (grafts, silent
parents, exclusions; ``tree_host_counters``: trees built, matrices adopted,
the probe's estimate reports and rows taken; the transport counts no bytes, so the mesh has none).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.throughput import log_records, percentile  # noqa: E402

DEFAULT_JSON = ROOT / "bench" / "results" / f"broadcast-testnet-{datetime.date.today().isoformat()}.json"
MODES = ("tree", "mesh")
ROW_INTERVAL_S = 10.0  # peers.latency.LatencyConfig.row_interval_s (shipped)


def scripted_peer(argv: list[str]) -> None:
    """``--scripted-peer [--answer-delay-ms MS] --config PATH``: the real daemon with scripted answers."""
    import trio

    from multillmn.config import PeerConfig
    from peers.daemon import run_peer
    from peers.engine import ScriptedEngine

    ap = argparse.ArgumentParser()
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--answer-delay-ms", type=int, default=0)
    args = ap.parse_args(argv)
    cfg = PeerConfig.load(args.config)
    delay_s = args.answer_delay_ms / 1000
    trio.run(run_peer, cfg, lambda c: ScriptedEngine({}, model_name=c.model, delay_s=delay_s))


@dataclass
class Net:
    """One mode's running testnet and what its questions saw."""

    mode: str
    directory: Path
    peers: list[Any]
    startup_s: float
    asked: list[dict[str, Any]] = field(default_factory=list)  # per question: t0, client latency, height
    load: list[float] = field(default_factory=list)  # the machine's 1-minute load average before and after

    @property
    def urls(self) -> list[str]:
        return [p.api_url for p in self.peers]


def start(mode: str, args: argparse.Namespace, say: Any) -> Net:
    from testnet.launcher import up
    from testnet.links import LinkPlane
    from testnet.manifest import Manifest

    directory = Path(tempfile.mkdtemp(prefix=f"multillmn-bcast-{mode}-"))
    manifest = Manifest.from_args(args.peers, args.models.split(","), max_new_tokens=args.max_new_tokens,
                                  threads_per_peer=args.threads, broadcast=mode, link_plane=LinkPlane(seed=args.seed))
    command = None
    if args.engine == "scripted":
        command = [sys.executable, str(Path(__file__).resolve()), "--scripted-peer",
                   "--answer-delay-ms", str(args.answer_delay_ms)]
    t0 = time.monotonic()
    state = up(manifest, directory, peer_command=command, ready_timeout_s=1200,
               progress=lambda line: say(f"  [{mode}] {line}"))
    net = Net(mode, directory, state.peers, round(time.monotonic() - t0, 1))
    say(f"[{mode}] {len(net.peers)} peers up in {net.startup_s:.0f} s ({directory})")
    return net


def wait_for_estimates(net: Net, timeout_s: float, say: Any) -> float:
    """Until every peer of a tree testnet has a latency estimate towards every other; the seconds it took."""
    from multillmn.client import fetch_status

    t0 = time.monotonic()
    n = len(net.peers)
    while time.monotonic() - t0 < timeout_s:
        counts = [len(((fetch_status(u).get("transport") or {}).get("broadcast") or {}).get("latency_ms") or {})
                  for u in net.urls]
        if min(counts) >= n - 1:
            return round(time.monotonic() - t0, 1)
        time.sleep(1.0)
    say(f"[{net.mode}] latency estimates still incomplete after {timeout_s:.0f} s")
    return round(time.monotonic() - t0, 1)


def counters(net: Net) -> list[dict[str, int]]:
    """Per peer: link messages sent (all kinds) and the broadcast layer's counters (tree only)."""
    from multillmn.client import fetch_status

    out = []
    for u in net.urls:
        t = fetch_status(u).get("transport") or {}
        b = t.get("broadcast") or {}
        row = {"sent": sum(int(p.get("sent", 0)) for p in (t.get("peers") or {}).values())}
        for key in ("frames_sent", "frame_bytes_sent", "latency_frames_sent", "sent_direct", "core_duplicates",
                    "core_delivered", "core_grafts_sent"):
            row[key] = int(b.get(key, 0))
        row.update({k: int(v) for k, v in b.items() if k.startswith(("core_", "rtt_")) and isinstance(v, int)
                    and not isinstance(v, bool)})
        row.update({k: int(b.get(k, 0)) for k in ("trees_computed", "matrices_adopted", "timers_dropped",
                                                   "inbound_dropped")})
        out.append(row)
    return out


def ask_one(net: Net, k: int, question: str, *, count: bool, timeout_s: float) -> dict[str, Any]:
    from multillmn.client import ask

    url = net.urls[k % len(net.urls)]
    t0 = time.time()
    reply = ask(url, question, timeout_s=timeout_s)
    row = {"t0": t0, "client_s": time.time() - t0, "height": int(reply["height"]), "entry": k % len(net.urls),
           "answer": reply["answer"][:60], "protocol_ms": reply["timings"]["protocol_ms"],
           "consensus_ms": reply["timings"]["consensus_ms"], "generation_ms": reply["timings"]["generation_ms"]}
    if count:
        net.asked.append(row)
    return row


def _stats_ms(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p90_ms": None, "max_ms": None}
    return {"p50_ms": round(1000 * (percentile(values, 0.5) or 0), 1),
            "p90_ms": round(1000 * (percentile(values, 0.9) or 0), 1), "max_ms": round(1000 * max(values), 1)}


def summarise(net: Net, before: list[dict[str, int]], after: list[dict[str, int]],
              offsets: dict[str, int]) -> dict[str, Any]:
    """Client and per-peer decision latencies, delivery of every decision, sends per question and node."""
    decided: dict[str, dict[int, float]] = {}
    answered: list[float] = []  # every peer's "answered" records (one question at a time: each is the last asked)
    for p in net.peers:
        records = log_records(Path(p.log), offsets[p.name])
        decided[p.name] = {int(r["height"]): float(r["ts"]) for r in records
                           if r.get("msg") == "decided" and "height" in r}
        answered += [float(r["ts"]) for r in records if r.get("msg") == "answered"]
    per_peer, spread, missing, last_answer = [], [], [], []
    starts = [q["t0"] for q in net.asked] + [float("inf")]
    for k, q in enumerate(net.asked):
        end = min(starts[k + 1], q["t0"] + q["client_s"] + 5.0)  # until this testnet's next question
        mine = [t for t in answered if q["t0"] <= t <= end]
        if mine:
            last_answer.append(max(mine) - q["t0"])
        times = [decided[p.name].get(q["height"]) for p in net.peers]
        missing += [f"{p.name}@{q['height']}" for p, t in zip(net.peers, times) if t is None]
        seen = [t for t in times if t is not None]
        per_peer += [t - q["t0"] for t in seen]
        if seen:
            spread.append(max(seen) - min(seen))
    n, queries = len(net.peers), max(1, len(net.asked))
    delta = {k: sum(a.get(k, 0) - b.get(k, 0) for a, b in zip(after, before)) for k in after[0]}
    heights = sorted(q["height"] for q in net.asked)
    return {
        "mode": net.mode, "peers": n, "queries": len(net.asked), "startup_s": net.startup_s,
        "load_average": [round(x, 2) for x in net.load],
        "client": _stats_ms([q["client_s"] for q in net.asked]),
        "client_mean_ms": round(1000 * statistics.fmean(q["client_s"] for q in net.asked), 1) if net.asked else None,
        "peer_decided": _stats_ms(per_peer), "decided_spread": _stats_ms(spread),
        "last_answer": _stats_ms(last_answer),
        "protocol_p50_ms": percentile([float(q["protocol_ms"]) for q in net.asked], 0.5),
        "generation_p50_ms": percentile([float(q["generation_ms"]) for q in net.asked], 0.5),
        "every_peer_decided_every_query": not missing and len(per_peer) == n * len(net.asked),
        "missing_decisions": missing[:20], "distinct_heights": len(set(heights)) == len(heights),
        "link_msgs_per_node_per_query": round(delta["sent"] / n / queries, 1),
        "tree_frames_per_node_per_query": round(delta["frames_sent"] / n / queries, 1) if net.mode == "tree" else None,
        "tree_bytes_per_node_per_query": round(delta["frame_bytes_sent"] / n / queries) if net.mode == "tree" else None,
        "tree_probe_frames_per_node_per_query": round(delta["latency_frames_sent"] / n / queries, 1)
        if net.mode == "tree" else None,
        "tree_sent_direct": delta["sent_direct"] if net.mode == "tree" else None,
        "tree_dups_per_delivery": round(delta["core_duplicates"] / delta["core_delivered"], 3)
        if net.mode == "tree" and delta["core_delivered"] else None,
        "tree_grafts": delta["core_grafts_sent"] if net.mode == "tree" else None,
        "tree_core_counters": {k.removeprefix("core_"): v for k, v in delta.items() if k.startswith("core_") and v}
        if net.mode == "tree" else None,
        "tree_host_counters": {k: v for k, v in delta.items()
                               if v and k in ("trees_computed", "matrices_adopted", "rtt_reported", "rtt_rows_taken",
                                              "core_matrix_changes", "timers_dropped", "inbound_dropped")}
        if net.mode == "tree" else None,
        "asked": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in q.items() if k != "t0"}
                  for q in net.asked],
    }


def warm(net: Net, args: argparse.Namespace, say: Any) -> None:
    if net.mode == "tree":
        took = wait_for_estimates(net, 120, say)
        say(f"[tree] every peer has n-1 latency estimates after {took} s; two row intervals more")
        time.sleep(2 * ROW_INTERVAL_S + 1)
    for k in range(args.warmup):
        row = ask_one(net, k, f"Warm-up {k}: what is the capital of Italy?", count=False, timeout_s=args.timeout_s)
        say(f"[{net.mode}] warm-up {k}: {1000 * row['client_s']:.0f} ms")


def run(args: argparse.Namespace, say: Any) -> list[dict[str, Any]]:
    from bench.query_latency import QUESTIONS
    from testnet.launcher import down

    questions = [f"{QUESTIONS[k % len(QUESTIONS)]}" if args.engine == "models" else
                 f"Question {k}: what is the capital of France?" for k in range(args.queries)]
    nets: list[Net] = []
    rows = []
    try:
        groups = [[m] for m in args.modes] if args.sequential else [list(args.modes)]
        for group in groups:
            nets = [start(m, args, say) for m in group]
            for net in nets:
                warm(net, args, say)
            offsets = {f"{net.mode}/{p.name}": Path(p.log).stat().st_size for net in nets for p in net.peers}
            before = {net.mode: counters(net) for net in nets}
            for net in nets:
                net.load.append(os.getloadavg()[0])
            for k, q in enumerate(questions):
                for net in (nets if k % 2 == 0 else nets[::-1]):
                    row = ask_one(net, k, q, count=True, timeout_s=args.timeout_s)
                    say(f"[{net.mode}] q{k} entry peer{row['entry']} height {row['height']}: "
                        f"{1000 * row['client_s']:.0f} ms (protocol {row['protocol_ms']} ms) {row['answer'][:30]!r}")
            time.sleep(2.0)  # the last decisions reach every peer's log
            for net in nets:
                net.load.append(os.getloadavg()[0])
            for net in nets:
                mine = {p.name: offsets[f"{net.mode}/{p.name}"] for p in net.peers}
                rows.append(summarise(net, before[net.mode], counters(net), mine))
                r = rows[-1]
                say(f"[{net.mode}] client p50 {r['client']['p50_ms']} max {r['client']['max_ms']} ms; peers decided "
                    f"p50 {r['peer_decided']['p50_ms']} max {r['peer_decided']['max_ms']} ms; all decided: "
                    f"{r['every_peer_decided_every_query']}; link msgs/node/query {r['link_msgs_per_node_per_query']}")
            for net in nets:
                down(net.directory)
            nets = []
    finally:
        for net in nets:
            down(net.directory)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'mode':>5} {'q':>3} {'client p50':>10} {'p90':>7} {'max':>7} {'peers p50':>9} {'p90':>7} {'max':>7} "
            f"{'spread p50':>10} {'last ans p50':>12} {'max':>7} {'all':>4} {'msgs/node/q':>11} {'tree frames':>11} {'tree bytes':>10} {'dups':>5}")
    lines = [head, "-" * len(head)]
    for r in rows:  # load: the machine's 1-minute load average before and after the questions
        c, p, s = r["client"], r["peer_decided"], r["decided_spread"]
        lines.append(f"{r['mode']:>5} {r['queries']:>3} {c['p50_ms']!s:>10} {c['p90_ms']!s:>7} {c['max_ms']!s:>7} "
                     f"{p['p50_ms']!s:>9} {p['p90_ms']!s:>7} {p['max_ms']!s:>7} {s['p50_ms']!s:>10} "
                     f"{r['last_answer']['p50_ms']!s:>12} {r['last_answer']['max_ms']!s:>7} "
                     f"{'yes' if r['every_peer_decided_every_query'] else 'NO':>4} "
                     f"{r['link_msgs_per_node_per_query']!s:>11} {r['tree_frames_per_node_per_query']!s:>11} "
                     f"{r['tree_bytes_per_node_per_query']!s:>10} {r['tree_dups_per_delivery']!s:>5}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--scripted-peer"]:
        scripted_peer(argv[1:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--engine", choices=("scripted", "models"), default="scripted")
    ap.add_argument("--peers", type=int, default=8)
    ap.add_argument("--queries", type=int, default=24)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--seed", type=int, default=1, help="the link plane's seed")
    ap.add_argument("--models", default="smollm2", help="with --engine models: comma-separated, round-robin")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per peer")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--answer-delay-ms", type=int, default=0, help="with --engine scripted: time to answer")
    ap.add_argument("--sequential", action="store_true", help="one testnet after the other (real models: memory)")
    ap.add_argument("--timeout-s", type=float, default=600)
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    ap.add_argument("--label", default="", help="the key of this run in --json (default: the engine's name)")
    ap.add_argument("--no-json", action="store_true")
    args = ap.parse_args(argv)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    rows = run(args, say)
    print(table(rows))
    if not args.no_json:
        old: dict[str, Any] = json.loads(args.json.read_text()) if args.json.exists() else {}
        old[args.label or args.engine] = {"command": " ".join([".venv/bin/python bench/broadcast_testnet.py", *argv]),
                            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                            "rows": rows}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(old, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
