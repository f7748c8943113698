"""The runner's hashgraph ledger over real loopback links: ordered tx/s and finality latency.

    .venv/bin/python bench/ledger_network.py [--quick]

N = 4, then 8 :class:`peers.ledger.LedgerService` instances in ONE trio
process, each with its own real :class:`peers.transport.Transport` on
127.0.0.1 (encrypted, authenticated links), its own SQLite store in a temp
dir and the genesis validator set of N equal-weight keys. Inbound frames go
through ``peers.wire.decode_message`` (schema + signature check) to
``LedgerService.handle``, exactly as ``peers.node.Node`` does.

Transactions: the ledger only applies validated types (certificate, weights,
evidence, membership; anything else is ordered but counted as ignored), so
each transaction is a ``weights_tx`` of 82 bytes with a unique height
(``{type: weights, height: 2**32 + i, weights: {submitter: 1}}``). They are
submitted round robin to all peers at a steady rate, in batches every
``TICK_S``, for ``--duration`` seconds; then submission stops and the run
drains until every peer has ordered everything (or ``DRAIN_S`` passes).

Measured:

* **ordered tx/s**: transactions ordered at *every* peer, counted in the
  steady window ``[WARMUP_S, duration]`` after the first submission, divided
  by its length (a transaction counts when the last peer orders it);
* **finality**: time from submission to ordering at the submitting peer (p50 /
  p99), and to ordering at the last peer (p50 / p99), over all transactions.

All peers share one Python process (one GIL, so in effect one of the
machine's cores) with their transports, AEAD, signatures and SQLite, so these
figures are pessimistic by roughly N for what one peer per machine would do.

Target (issue 4): >= 10,000 tx/s ordered and p50 finality < 1 s
(Hedera: ~10,000 tx/s, 3-5 s finality).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consensus.messages import VerifiedCache  # noqa: E402
from dag import Event, weights_tx  # noqa: E402
from multillmn.genesis import Genesis  # noqa: E402
from multillmn.identity import KeyPair  # noqa: E402
from peers.ledger import LedgerService  # noqa: E402
from peers.transport import Transport  # noqa: E402
from peers.wire import decode_message  # noqa: E402

TICK_S = 0.01
WARMUP_S = 3.0
DRAIN_S = 10.0
HEIGHT_BASE = 2**32  # always packed as a uint64, so the bytes at _H_AT are the height
PENDING_CAP = 4000  # see the note on dag.event.MAX_TRANSACTIONS in main()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


class TimedLedger(LedgerService):
    """A LedgerService that notes when each event carrying transactions is ordered here."""

    ordered_at: dict[bytes, float]

    def _ordered(self, events: list[Event]) -> None:
        now = time.perf_counter()
        at = self.__dict__.setdefault("ordered_at", {})
        for ev in events:
            if ev.transactions:
                at[ev.hash] = now
        super()._ordered(events)


class _ErrorCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0
        self.last = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        self.last = record.getMessage()


def keys_and_genesis(n: int) -> tuple[list[KeyPair], Genesis]:
    keys = [KeyPair.from_seed(bytes([100 + i]) * 32) for i in range(n)]
    return keys, Genesis.build("bench-ledger", [(f"peer{i}", k.public_key, 1) for i, k in enumerate(keys)])


async def _dispatch(svc: LedgerService, transport: Transport, genesis: Genesis) -> None:
    """What Node._receive_loop does for dag_* messages."""
    cache = VerifiedCache()
    key_of = genesis.validators.public_key_of
    async for peer, payload in transport.inbound:
        try:
            signed = decode_message(payload, key_of, cache=cache)
        except Exception as exc:
            svc.rejects.record_exception(exc, peer)
            continue
        svc.handle(peer, signed)


async def run_one(n: int, sync_ms: int, rate: int, duration: float, errors: _ErrorCounter) -> dict[str, Any]:
    keys, genesis = keys_and_genesis(n)
    ids = [k.peer_id for k in keys]
    templates = [weights_tx(HEIGHT_BASE, {pid: 1}) for pid in ids]
    h_at = templates[0].index(b"\xcf") + 1
    assert all(weights_tx(HEIGHT_BASE + 7, {pid: 1}) == t[:h_at] + struct.pack(">Q", HEIGHT_BASE + 7) + t[h_at + 8:]
               for pid, t in zip(ids, templates))
    heads = [t[:h_at] for t in templates]
    tails = [t[h_at + 8:] for t in templates]
    submitted_at: list[float] = []  # index i: height HEIGHT_BASE + i
    submitter: list[int] = []
    deferred = 0
    max_pending = 0
    errors_before = errors.count
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
        transports = [Transport(k, ("127.0.0.1", 0), {p: None for p in ids}, backoff_initial=0.05,
                                backoff_max=0.3) for k in keys]
        svcs = [TimedLedger.open(k, genesis, t, Path(tmp) / f"peer{i}" / "ledger.sqlite", sync_interval_ms=sync_ms)
                for i, (k, t) in enumerate(zip(keys, transports))]
        async with trio.open_nursery() as nursery:
            for t in transports:
                await nursery.start(t.run)
            for t in transports:
                for pid, other in zip(ids, transports):
                    if pid != t.peer_id:
                        t.set_address(pid, ("127.0.0.1", other.listen_port))
            with trio.fail_after(20):
                while any(len(t.connected_peers()) < n - 1 for t in transports):
                    await trio.sleep(0.02)
            for svc, t in zip(svcs, transports):
                nursery.start_soon(_dispatch, svc, t, genesis)
                await nursery.start(svc.run)

            # steady submission, round robin, a batch every TICK_S (catching up if a tick ran late)
            t0 = time.perf_counter()
            nxt = 0
            peer = 0
            while (now := time.perf_counter()) - t0 < duration:
                due = int((now - t0) * rate) + 1
                while nxt < due:
                    if len(svcs[peer]._pending) >= PENDING_CAP:
                        deferred += due - nxt  # this peer is saturated: the offered load is not met
                        nxt = due
                        break
                    svcs[peer].submit(heads[peer] + struct.pack(">Q", HEIGHT_BASE + len(submitted_at)) + tails[peer])
                    submitted_at.append(now)
                    submitter.append(peer)
                    peer = (peer + 1) % n
                    nxt += 1
                max_pending = max(max_pending, max(len(s._pending) for s in svcs))
                await trio.sleep(TICK_S)
            t_end = time.perf_counter()

            # drain: wait until every peer has ordered every transaction
            deadline = t_end + DRAIN_S
            while time.perf_counter() < deadline:
                if all(not s._pending and not s._unordered_tx for s in svcs) and \
                        len({len(s.ledger.weights) for s in svcs}) == 1 and \
                        len(svcs[0].ledger.weights) == len(submitted_at):
                    break
                await trio.sleep(0.05)
            drained = time.perf_counter() - t_end
            nursery.cancel_scope.cancel()

    # which event carried each transaction (from its submitter's own events)
    n_tx = len(submitted_at)
    carried: list[bytes | None] = [None] * n_tx
    for i, svc in enumerate(svcs):
        me = svc.key.peer_id
        for ev in svc.hashgraph:
            if ev.creator == me:
                for tx in ev.transactions:
                    j = struct.unpack(">Q", tx[h_at:h_at + 8])[0] - HEIGHT_BASE
                    if 0 <= j < n_tx:
                        carried[j] = ev.hash
    at = [getattr(s, "ordered_at", {}) for s in svcs]
    lat_own: list[float] = []
    lat_all: list[float] = []
    in_window = 0
    for j in range(n_tx):
        eh = carried[j]
        if eh is None:
            continue
        own = at[submitter[j]].get(eh)
        if own is not None:
            lat_own.append(own - submitted_at[j])
        times = [a.get(eh) for a in at]
        if all(x is not None for x in times):
            last = max(times)  # type: ignore[type-var]
            lat_all.append(last - submitted_at[j])  # type: ignore[operator]
            if t0 + WARMUP_S <= last <= t0 + duration:  # type: ignore[operator]
                in_window += 1
    states = {s.state_hash() for s in svcs}
    return {
        "n": n, "sync_ms": sync_ms, "rate": rate, "duration": duration,
        "submitted": n_tx, "offered_tx_s": n_tx / (t_end - t0), "deferred": deferred,
        "ordered_all": len(lat_all), "ordered_tx_s": in_window / (duration - WARMUP_S),
        "own_p50": statistics.median(lat_own) if lat_own else float("nan"), "own_p99": pct(lat_own, 0.99),
        "all_p50": statistics.median(lat_all) if lat_all else float("nan"), "all_p99": pct(lat_all, 0.99),
        "events": max(len(s.hashgraph) for s in svcs), "max_pending": max_pending, "drain_s": drained,
        "same_state": len(states) == 1, "errors": errors.count - errors_before, "last_error": errors.last,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="5 s runs of one configuration per N (a smoke run)")
    ap.add_argument("--peers", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--sync-ms", type=int, nargs="+", default=[50, 200])
    ap.add_argument("--rates", type=int, nargs="+", default=[10_000], help="offered tx/s over all peers")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds of submission per run")
    args = ap.parse_args()
    if args.quick:
        args.sync_ms, args.duration = args.sync_ms[:1], 6.0
    errors = _ErrorCounter()
    logging.getLogger("multillmn").addHandler(errors)
    logging.getLogger("multillmn").setLevel(logging.ERROR)
    logging.getLogger("multillmn").propagate = False
    print("command: .venv/bin/python " + " ".join(["bench/ledger_network.py", *sys.argv[1:]]))
    print("setup: N LedgerService peers in ONE trio process (one GIL: all peers share ~1 of the 2 cores),")
    print("       real encrypted loopback Transports, SQLite stores, N equal-weight genesis validators;")
    print("       tx = 82-byte weights_tx with a unique height (the ledger applies only validated types)")
    print("target: >= 10,000 tx/s ordered at every peer, p50 finality < 1 s (Hedera: ~10,000 tx/s, 3-5 s)\n")
    header = (f"{'peers':>5} {'sync ms':>7} {'offered/s':>9} {'submitted':>9} {'deferred':>8} {'ordered/s':>9} "
              f"{'own p50 s':>9} {'own p99 s':>9} {'last p50 s':>10} {'last p99 s':>10} {'events':>6} "
              f"{'max pend':>8} {'drain s':>7} {'state':>5}")
    print(header, flush=True)
    rows = []
    for n in args.peers:
        for sync_ms in args.sync_ms:
            for rate in args.rates:
                r = trio.run(run_one, n, sync_ms, rate, args.duration, errors)
                rows.append(r)
                print(f"{n:>5} {sync_ms:>7} {r['offered_tx_s']:>9,.0f} {r['submitted']:>9} {r['deferred']:>8} "
                      f"{r['ordered_tx_s']:>9,.0f} {r['own_p50']:>9.3f} {r['own_p99']:>9.3f} {r['all_p50']:>10.3f} "
                      f"{r['all_p99']:>10.3f} {r['events']:>6} {r['max_pending']:>8} {r['drain_s']:>7.1f} "
                      f"{'same' if r['same_state'] else 'DIFF':>5}", flush=True)
                if r["errors"]:
                    print(f"      {r['errors']} error log(s), last: {r['last_error']}", flush=True)
    print(f"\nordered/s: tx ordered at every peer within [{WARMUP_S:.0f} s, duration] of steady submission.")
    print("own: submission -> ordered at the submitting peer; last: -> ordered at the last peer.")
    print(f"deferred: tx not submitted because a peer already had {PENDING_CAP} pending (offered load not met):")
    print("  LedgerService._maybe_create caps an event's payload by bytes (512 KiB) but not by count, and")
    print("  dag.event.MAX_TRANSACTIONS = 4096, so > 4096 pending small tx make every event creation fail.")
    print("max pend: largest pending queue seen at any peer; state: all peers' ledger state hashes equal.")
    best = max(rows, key=lambda r: r["ordered_tx_s"])
    fastest = min(rows, key=lambda r: r["own_p50"])
    print(f"\nbest ordered/s: {best['ordered_tx_s']:,.0f} (peers {best['n']}, sync {best['sync_ms']} ms); "
          f"best own p50: {fastest['own_p50']:.3f} s (peers {fastest['n']}, sync {fastest['sync_ms']} ms)")
    for n in args.peers:
        sub = [r for r in rows if r["n"] == n]
        b = max(sub, key=lambda r: r["ordered_tx_s"])
        f = min(sub, key=lambda r: r["own_p50"])
        print(f"peers {n}: >= 10,000 tx/s {'MET' if b['ordered_tx_s'] >= 10_000 else 'NOT met'} "
              f"({b['ordered_tx_s']:,.0f}); p50 < 1 s {'MET' if f['own_p50'] < 1 else 'NOT met'} "
              f"({f['own_p50']:.3f} s own, {f['all_p50']:.3f} s last peer)")


if __name__ == "__main__":
    main()
