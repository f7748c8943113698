"""The hashgraph ledger with one OS process per peer: ordered tx/s, finality and overload on this machine.

    .venv/bin/python bench/ledger_processes.py [--peers 4 8] [--sync-ms 50 100] [--rates 10000]
    .venv/bin/python bench/ledger_processes.py --peers 4 8 --sync-ms 50 \\
        --rates 4:5000,10000,20000,40000 8:2500,5000,10000,20000 --before /tmp/before --json out.json

``bench/ledger_network.py`` runs N peers in one Python process (one GIL, in
effect one core). Here every peer is its own process, as on a real testnet:
a :class:`peers.ledger.LedgerService` with its own encrypted loopback
:class:`peers.transport.Transport`, SQLite store and the N-key equal-weight
genesis; inbound frames go through ``peers.wire.decode_message`` as in
``Node``. The N processes still share this machine's 2 cores.

Each peer submits its share of the offered rate (``rate / N``) from a common
wall-clock start for ``--duration`` seconds, open loop: 82-byte ``weights_tx``
with unique heights (peer ``i`` uses ``HEIGHT_BASE + i + N*k``). A
transaction that ``submit`` refuses (``Admission.FULL``: the ledger is
overloaded) is counted as *refused* and not retried, like a client that gives
up; the rest are *accepted*. Each peer notes the wall-clock time at which
every transaction is ordered at it; the parent combines the peers' records:

* **ordered tx/s**: transactions ordered at *every* peer whose last ordering
  falls in the steady window ``[WARMUP_S, duration]``, per second;
* **finality**: submission to ordering at the submitting peer (own) and at the
  last peer (last), p50 / p99 over every transaction ordered everywhere;
* **left**: accepted transactions not ordered at every peer when the run ends
  (submission, then up to ``DRAIN_S`` to drain): 0 means nothing accepted was
  lost.

``--before DIR`` runs every configuration twice, first with the library code
of ``DIR`` (a ``git worktree`` of an older commit: its ``dag/``, ``peers/``,
``multillmn/`` and ``consensus/``; a ``submit`` that returns nothing counts as
accepted), then with this tree's, and prints them side by side. ``--profile
DIR`` writes a cProfile of every peer process (``DIR/n{N}-r{rate}-{code}/peer{i}.prof``).

Target (issue 4): >= 10,000 tx/s ordered and p50 finality < 1 s. Issue 10:
at twice the saturating load, at least 90% of the peak ordered rate, with
bounded finality.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import multiprocessing
import os
import platform
import resource
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

TICK_S = 0.01
WARMUP_S = 3.0
DRAIN_S = 15.0
HEIGHT_BASE = 2**32  # always packed as a uint64, so the bytes after the 0xcf marker are the height
START_DELAY_S = 0.5  # from every peer being connected to the common start


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _busy_s() -> float:
    """CPU seconds this machine spent busy since boot (all cores, from /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


QUIET_CORES = 0.3


def wait_quiet(max_wait_s: float, busy_cores: float = QUIET_CORES) -> float:
    """Wait (up to ``max_wait_s``) until this machine's other work keeps less than ``busy_cores`` busy over
    3 s, so that a run is not measured beside someone else's; returns the busy cores last seen."""
    deadline = time.time() + max_wait_s
    while True:
        b0, t0 = _busy_s(), time.time()
        time.sleep(3.0)
        busy = (_busy_s() - b0) / (time.time() - t0)
        if busy < busy_cores or time.time() >= deadline:
            return busy
        print(f"  (waiting: {busy:.2f} cores busy with other work)", flush=True)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def peer_main(i: int, n: int, ports: list[int], sync_ms: int, rate: int, duration: float, workdir: str,
              code: str, profile: str, service: dict[str, float]) -> None:
    """One peer: connect, say it is ready, submit its share from the common start, drain, write ``peer{i}.json``."""
    sys.path.insert(0, code)
    prof = cProfile.Profile() if profile else None
    if prof is not None:
        prof.enable()
    try:
        _peer(i, n, ports, sync_ms, rate, duration, workdir, service)
    finally:
        if prof is not None:
            prof.disable()
            Path(profile).mkdir(parents=True, exist_ok=True)
            prof.dump_stats(str(Path(profile) / f"peer{i}.prof"))


def _peer(i: int, n: int, ports: list[int], sync_ms: int, rate: int, duration: float, workdir: str,
          service: dict[str, float]) -> None:
    import trio

    from consensus.messages import VerifiedCache
    from dag import Event, weights_tx
    from multillmn.genesis import Genesis
    from multillmn.identity import KeyPair
    from peers.ledger import LedgerService
    from peers.transport import Transport
    from peers.wire import decode_message

    logging.getLogger("multillmn").setLevel(logging.CRITICAL)
    keys = [KeyPair.from_seed(bytes([100 + j]) * 32) for j in range(n)]
    genesis = Genesis.build("bench-ledger", [(f"peer{j}", k.public_key, 1) for j, k in enumerate(keys)])
    key = keys[i]
    ids = [k.peer_id for k in keys]
    template = weights_tx(HEIGHT_BASE, {key.peer_id: 1})
    h_at = template.index(b"\xcf") + 1
    head, tail = template[:h_at], template[h_at + 8:]
    ordered: dict[int, float] = {}

    class Timed(LedgerService):
        def _ordered(self, events: list[Event]) -> None:
            now = time.time()
            for ev in events:
                for tx in ev.transactions:
                    ordered.setdefault(struct.unpack(">Q", tx[h_at:h_at + 8])[0] - HEIGHT_BASE, now)
            super()._ordered(events)

    async def run() -> dict[str, Any]:
        transport = Transport(key, ("127.0.0.1", ports[i]), {p: None for p in ids}, backoff_initial=0.05,
                              backoff_max=0.3)
        svc = Timed.open(key, genesis, transport, Path(workdir) / f"peer{i}.sqlite", sync_interval_ms=sync_ms,
                          **service)
        submitted: dict[int, float] = {}
        refused = 0
        max_pending = 0
        async with trio.open_nursery() as nursery:
            await nursery.start(transport.run)
            for j, pid in enumerate(ids):
                if j != i:
                    transport.set_address(pid, ("127.0.0.1", ports[j]))

            async def dispatch() -> None:
                cache = VerifiedCache()
                async for peer, payload in transport.inbound:
                    try:
                        signed = decode_message(payload, genesis.validators.public_key_of, cache=cache)
                    except Exception as exc:
                        svc.rejects.record_exception(exc, peer)
                        continue
                    svc.handle(peer, signed)

            nursery.start_soon(dispatch)
            await nursery.start(svc.run)
            with trio.move_on_after(60):
                while len(transport.connected_peers()) < n - 1:
                    await trio.sleep(0.05)
            (Path(workdir) / f"ready{i}").write_text("")
            go = Path(workdir) / "start"
            while not go.exists():  # the parent writes it once every peer is ready
                await trio.sleep(0.01)
            start = float(go.read_text())
            await trio.sleep(max(0.0, start - time.time()))
            share = rate / n
            k = 0
            while (now := time.time()) - start < duration:
                due = int((now - start) * share) + 1
                while k < due:
                    height = i + n * k
                    k += 1
                    result = svc.submit(head + struct.pack(">Q", HEIGHT_BASE + height) + tail)
                    if result is not None and not result.accepted:
                        refused += 1
                        continue
                    submitted[height] = now
                max_pending = max(max_pending, len(svc._pending))
                await trio.sleep(TICK_S)
            (Path(workdir) / f"count{i}").write_text(str(len(submitted)))
            deadline = time.time() + DRAIN_S
            while time.time() < deadline:
                counts = [Path(workdir) / f"count{j}" for j in range(n)]
                if all(c.exists() for c in counts) and len(ordered) >= sum(int(c.read_text()) for c in counts):
                    break
                await trio.sleep(0.05)
            await trio.sleep(0.5)  # let the others finish their drain with us still gossiping
            nursery.cancel_scope.cancel()
        stats = svc.statistics()
        return {"submitted": submitted, "ordered": ordered, "refused": refused, "state": str(svc.state_hash()),
                "max_pending": max_pending, "events": stats["events"], "created": svc.created,
                "sync": stats.get("sync", {}), "admission": stats.get("admission", {}),
                "transport_dropped": sum(p.dropped + p.inbound_dropped
                                         for p in transport.statistics().peers.values())}

    out = trio.run(run)
    (Path(workdir) / f"peer{i}.json").write_text(json.dumps(
        {**out, "submitted": {str(h): t for h, t in out["submitted"].items()},
         "ordered": {str(h): t for h, t in out["ordered"].items()}}))


def run_one(n: int, sync_ms: int, rate: int, duration: float, code: Path, profile: str = "",
            service: dict[str, float] | None = None) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    ports = _free_ports(n)
    with tempfile.TemporaryDirectory(prefix="ledger-procs-") as tmp:
        busy0, kids0, wall0 = _busy_s(), _children_cpu_s(), time.time()
        procs = [ctx.Process(target=peer_main, args=(i, n, ports, sync_ms, rate, duration, tmp, str(code), profile,
                                                     service or {}))
                 for i in range(n)]
        for p in procs:
            p.start()
        deadline = time.time() + 120
        while not all((Path(tmp) / f"ready{i}").exists() for i in range(n)) and time.time() < deadline:
            time.sleep(0.05)
        start = time.time() + START_DELAY_S
        (Path(tmp) / "start.tmp").write_text(repr(start))
        (Path(tmp) / "start.tmp").rename(Path(tmp) / "start")
        for p in procs:
            p.join(timeout=duration + DRAIN_S + 60)
        other_cpu = _busy_s() - busy0 - (_children_cpu_s() - kids0)
        wall = time.time() - wall0
        peers = [json.loads((Path(tmp) / f"peer{i}.json").read_text()) for i in range(n)]
    submitted = {int(h): (i, t) for i, p in enumerate(peers) for h, t in p["submitted"].items()}
    ordered = [{int(h): t for h, t in p["ordered"].items()} for p in peers]
    own, last, in_window = [], [], 0
    for h, (i, t) in submitted.items():
        if h in ordered[i]:
            own.append(ordered[i][h] - t)
        times = [o.get(h) for o in ordered]
        if all(x is not None for x in times):
            end = max(x for x in times if x is not None)
            last.append(end - t)
            in_window += start + WARMUP_S <= end <= start + duration
    sync: dict[str, int] = {}
    for p in peers:
        for key, v in p["sync"].items():
            sync[key] = sync.get(key, 0) + v
    return {
        "n": n, "sync_ms": sync_ms, "rate": rate, "duration_s": duration,
        "offered": sum(int(p["refused"]) for p in peers) + len(submitted),
        "accepted": len(submitted), "refused": sum(int(p["refused"]) for p in peers),
        "ordered_all": len(last), "left": len(submitted) - len(last),
        "ordered_tx_s": in_window / (duration - WARMUP_S),
        "own_p50": statistics.median(own) if own else float("nan"), "own_p99": pct(own, 0.99),
        "last_p50": statistics.median(last) if last else float("nan"), "last_p99": pct(last, 0.99),
        "same_state": len({p["state"] for p in peers}) == 1,
        "max_pending": max(p["max_pending"] for p in peers), "events": max(p["events"] for p in peers),
        "sync": sync, "transport_dropped": sum(p["transport_dropped"] for p in peers),
        "other_cpu_cores": round(other_cpu / wall, 2),  # the machine's busy CPU not spent by this run's peers
    }


def _commit(code: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def _rates(specs: list[str], peers: list[int]) -> dict[int, list[int]]:
    """``10000`` applies to every peer count, ``8:2500,5000`` to 8 peers only."""
    out: dict[int, list[int]] = {n: [] for n in peers}
    for spec in specs:
        if ":" in spec:
            n, _, rates = spec.partition(":")
            out.setdefault(int(n), []).extend(int(r) for r in rates.split(","))
        else:
            for n in peers:
                out[n].extend(int(r) for r in spec.split(","))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--sync-ms", type=int, nargs="+", default=[50, 100])
    ap.add_argument("--rates", nargs="+", default=["10000"],
                    help="offered tx/s over all peers: 10000 (every peer count) or 8:2500,5000 (8 peers)")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds of submission per run")
    ap.add_argument("--before", type=Path, help="also run every configuration with the library code of this "
                    "directory (a git worktree of an older commit), side by side")
    ap.add_argument("--json", type=Path, help="write every row (and the command) to this file")
    ap.add_argument("--profile", default="", help="write a cProfile of every peer process under this directory")
    ap.add_argument("--quiet-wait", type=float, default=0.0, metavar="S",
                    help="before each run, wait up to S seconds for other work on this machine to stop, and run "
                    "again (at most twice) when other work took more than 0.3 cores during it")
    ap.add_argument("--service", nargs="*", default=[], metavar="NAME=VALUE",
                    help="LedgerService keyword arguments for this tree's code (e.g. max_queue_delay_s=0.5)")
    args = ap.parse_args()
    service = {k: (float(v) if "." in v else int(v)) for k, _, v in (kv.partition("=") for kv in args.service)}
    command = ".venv/bin/python " + " ".join(["bench/ledger_processes.py", *sys.argv[1:]])
    codes = [("before", args.before.resolve()), ("after", HERE)] if args.before else [("after", HERE)]
    print("command: " + command)
    print("setup: one process per LedgerService peer, encrypted loopback links, SQLite, 2 cores shared")
    for name, code in codes:
        print(f"code {name}: {code} ({_commit(code)})")
    print(f"\n{'code':>6} {'peers':>5} {'sync':>4} {'offered/s':>9} {'accepted':>8} {'refused':>8} {'ordered/s':>9} "
          f"{'own p50':>7} {'own p99':>7} {'last p50':>8} {'last p99':>8} {'left':>6} {'state':>5} {'other cpu':>9}",
          flush=True)
    rows: list[dict[str, Any]] = []
    for n, rates in _rates(args.rates, args.peers).items():
        for sync_ms in args.sync_ms:
            for rate in rates:
                for name, code in codes:
                    profile = str(Path(args.profile) / f"n{n}-r{rate}-{name}") if args.profile else ""
                    for attempt in range(1, 4):
                        if args.quiet_wait:
                            wait_quiet(args.quiet_wait)
                        r = {"code": name, "commit": _commit(code), "attempt": attempt, **run_one(
                            n, sync_ms, rate, args.duration, code, profile, service if name == "after" else {})}
                        if not args.quiet_wait or r["other_cpu_cores"] < QUIET_CORES:
                            break
                        print(f"  (other work took {r['other_cpu_cores']:.2f} cores during the run: again)", flush=True)
                    rows.append(r)
                    print(f"{name:>6} {n:>5} {sync_ms:>4} {rate:>9,} {r['accepted']:>8} {r['refused']:>8} "
                          f"{r['ordered_tx_s']:>9,.0f} {r['own_p50']:>7.2f} {r['own_p99']:>7.2f} "
                          f"{r['last_p50']:>8.2f} {r['last_p99']:>8.2f} {r['left']:>6} "
                          f"{'same' if r['same_state'] else 'DIFF':>5} {r['other_cpu_cores']:>9.2f}", flush=True)
                    if args.json:
                        args.json.write_text(json.dumps({
                            "command": command, "machine": f"{platform.machine()}, {multiprocessing.cpu_count()} "
                            f"cores, Python {platform.python_version()}", "warmup_s": WARMUP_S, "drain_s": DRAIN_S,
                            "service": service, "rows": rows}, indent=1, default=str))
    print("\npeak ordered/s per code and peer count, and each load's share of it:")
    for (name, n, sync_ms), group in _groups(rows).items():
        peak = max(r["ordered_tx_s"] for r in group)
        shares = ", ".join(f"{r['rate']:,}: {r['ordered_tx_s'] / peak:.0%}" for r in group) if peak else "-"
        print(f"  {name:>6} {n} peers, {sync_ms} ms: peak {peak:,.0f} ({shares})")


def _groups(rows: list[dict[str, Any]]) -> dict[tuple[str, int, int], list[dict[str, Any]]]:
    out: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault((r["code"], r["n"], r["sync_ms"]), []).append(r)
    return out


if __name__ == "__main__":
    main()
