"""The hashgraph ledger with one OS process per peer: ordered tx/s and finality on this machine.

    .venv/bin/python bench/ledger_processes.py [--peers 4 8] [--sync-ms 50 100] [--rates 10000]

``bench/ledger_network.py`` runs N peers in one Python process (one GIL, in
effect one core). Here every peer is its own process, as on a real testnet:
a :class:`peers.ledger.LedgerService` with its own encrypted loopback
:class:`peers.transport.Transport`, SQLite store and the N-key equal-weight
genesis; inbound frames go through ``peers.wire.decode_message`` as in
``Node``. The N processes still share this machine's 2 cores.

Each peer submits its share of the offered rate (``rate / N``) from a common
wall-clock start for ``--duration`` seconds: 82-byte ``weights_tx`` with
unique heights (peer ``i`` uses ``HEIGHT_BASE + i + N*k``). Each peer notes
the wall-clock time at which every transaction is ordered at it; the parent
combines the peers' records:

* **ordered tx/s**: transactions ordered at *every* peer whose last ordering
  falls in the steady window ``[WARMUP_S, duration]``, per second;
* **finality**: submission to ordering at the submitting peer (own) and at the
  last peer (last), p50 / p99 over every transaction ordered everywhere.

Target (issue 4): >= 10,000 tx/s ordered and p50 finality < 1 s.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import socket
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ledger_network import HEIGHT_BASE, PENDING_CAP, TICK_S, WARMUP_S, keys_and_genesis, pct  # noqa: E402

DRAIN_S = 15.0
START_DELAY_S = 3.0  # time for every process to import, bind and connect before the common start


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def peer_main(i: int, n: int, ports: list[int], sync_ms: int, rate: int, duration: float, start: float,
              workdir: str) -> None:
    """One peer: connect, submit its share from ``start``, drain, write ``peer{i}.json``."""
    import trio

    from consensus.messages import VerifiedCache
    from dag import Event, weights_tx
    from peers.ledger import LedgerService
    from peers.transport import Transport
    from peers.wire import decode_message

    logging.getLogger("multillmn").setLevel(logging.CRITICAL)
    keys, genesis = keys_and_genesis(n)
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
        svc = Timed.open(key, genesis, transport, Path(workdir) / f"peer{i}.sqlite", sync_interval_ms=sync_ms)
        submitted: dict[int, float] = {}
        deferred = 0
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
            await trio.sleep(max(0.0, start - time.time()))
            share = rate / n
            k = 0
            while (now := time.time()) - start < duration:
                due = int((now - start) * share) + 1
                while k < due:
                    if len(svc._pending) >= PENDING_CAP:
                        deferred += due - k
                        k = due
                        break
                    height = i + n * k
                    svc.submit(head + struct.pack(">Q", HEIGHT_BASE + height) + tail)
                    submitted[height] = now
                    k += 1
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
        return {"submitted": submitted, "ordered": ordered, "deferred": deferred, "state": str(svc.state_hash())}

    out = trio.run(run)
    (Path(workdir) / f"peer{i}.json").write_text(json.dumps(
        {"submitted": {str(h): t for h, t in out["submitted"].items()},
         "ordered": {str(h): t for h, t in out["ordered"].items()},
         "deferred": out["deferred"], "state": out["state"]}))


def run_one(n: int, sync_ms: int, rate: int, duration: float) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    ports = _free_ports(n)
    with tempfile.TemporaryDirectory(prefix="ledger-procs-") as tmp:
        start = time.time() + START_DELAY_S
        procs = [ctx.Process(target=peer_main, args=(i, n, ports, sync_ms, rate, duration, start, tmp))
                 for i in range(n)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=duration + DRAIN_S + 60)
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
    return {
        "n": n, "sync_ms": sync_ms, "rate": rate, "submitted": len(submitted),
        "deferred": sum(p["deferred"] for p in peers), "ordered_all": len(last),
        "ordered_tx_s": in_window / (duration - WARMUP_S),
        "own_p50": statistics.median(own) if own else float("nan"), "own_p99": pct(own, 0.99),
        "last_p50": statistics.median(last) if last else float("nan"), "last_p99": pct(last, 0.99),
        "same_state": len({p["state"] for p in peers}) == 1,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--sync-ms", type=int, nargs="+", default=[50, 100])
    ap.add_argument("--rates", type=int, nargs="+", default=[10_000], help="offered tx/s over all peers")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds of submission per run")
    args = ap.parse_args()
    print("command: .venv/bin/python " + " ".join(["bench/ledger_processes.py", *sys.argv[1:]]))
    print("setup: one process per LedgerService peer, encrypted loopback links, SQLite, 2 cores shared\n")
    print(f"{'peers':>5} {'sync ms':>7} {'offered/s':>9} {'submitted':>9} {'deferred':>8} {'ordered/s':>9} "
          f"{'own p50':>8} {'own p99':>8} {'last p50':>8} {'last p99':>8} {'state':>5}", flush=True)
    for n in args.peers:
        for sync_ms in args.sync_ms:
            for rate in args.rates:
                r = run_one(n, sync_ms, rate, args.duration)
                print(f"{n:>5} {sync_ms:>7} {rate:>9,} {r['submitted']:>9} {r['deferred']:>8} "
                      f"{r['ordered_tx_s']:>9,.0f} {r['own_p50']:>8.3f} {r['own_p99']:>8.3f} {r['last_p50']:>8.3f} "
                      f"{r['last_p99']:>8.3f} {'same' if r['same_state'] else 'DIFF':>5}", flush=True)


if __name__ == "__main__":
    main()
