"""Hashgraph ordering throughput and finality, in process, with real Ed25519 signatures.

    .venv/bin/python bench/dag_throughput.py [--quick]

For each (creators, transactions per event):

1. **Gossip run**: a seeded :class:`dag.sim.GossipSim` in which every peer
   signs its events and verifies every event it receives (each peer has its
   own hashgraph). Finality of an event = time from its creation to its
   ordering by its own creator, measured (a) in gossip syncs per peer (global
   sync steps / creators: network-independent), and (b) on the harness wall
   clock. All peers share one core here, so (b) is pessimistic by about the
   number of creators.
2. **One peer's ordering throughput**: the events of that run, as wire bytes,
   decoded, signature-checked and inserted into a fresh hashgraph in arrival
   order; transactions ordered per second of that work. This is what one
   peer must sustain, whatever the network.

Target (issue 4): >= 10,000 transactions ordered per second, p50 finality < 1 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dag import Event, Hashgraph, decode_event, encode_event  # noqa: E402
from dag.sim import GossipSim  # noqa: E402

TX_BYTES = 100


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def gossip(n: int, batch: int, steps: int, seed: int) -> tuple[GossipSim, list[float], list[float], float]:
    created_at: dict[bytes, tuple[float, int]] = {}
    creator_of: dict[str, int] = {}
    lat_s: list[float] = []
    lat_syncs: list[float] = []
    sim: GossipSim | None = None

    def on_order(node: int, events: list[Event]) -> None:
        now = time.perf_counter()
        assert sim is not None
        for e in events:
            if creator_of[e.creator] == node and e.hash in created_at:
                t0, s0 = created_at.pop(e.hash)
                lat_s.append(now - t0)
                lat_syncs.append((sim.steps - s0) / n)

    t0 = time.perf_counter()
    sim = GossipSim([1] * n, seed=seed, tx_per_event=batch, tx_bytes=TX_BYTES, verify=True, observers=[0],
                    on_order=on_order)
    creator_of.update({k.peer_id: i for i, k in enumerate(sim.keys)})
    seen = 0
    for _ in range(steps):
        sim.step()
        now = time.perf_counter()
        for e in sim.created[seen:]:
            created_at[e.hash] = (now, sim.steps)
        seen = len(sim.created)
    return sim, lat_s, lat_syncs, time.perf_counter() - t0


def one_peer(sim: GossipSim) -> tuple[int, int, float, float]:
    """(events, transactions ordered, seconds for decode+verify+insert, seconds for insert only)."""
    wire = [encode_event(e) for e in sim.nodes[0].inserted]
    hg = Hashgraph(sim.validators, verify=True)
    t0 = time.perf_counter()
    txs = 0
    for data in wire:
        for e in hg.insert(decode_event(data)):
            txs += len(e.transactions)
    full = time.perf_counter() - t0
    bare = Hashgraph(sim.validators, verify=False)
    t0 = time.perf_counter()
    for e in sim.nodes[0].inserted:
        bare.insert(e)
    pure = time.perf_counter() - t0
    assert bare.order_hashes() == hg.order_hashes() == [e.hash for e in sim.nodes[0].ordered]
    return len(wire), txs, full, pure


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    print("command: .venv/bin/python bench/dag_throughput.py" + (" --quick" if args.quick else ""))
    print("target: >= 10,000 tx/s ordered by one peer, p50 finality < 1 s\n")
    header = (f"{'creators':>8} {'tx/event':>8} {'events':>7} {'ordered tx':>10} {'peer tx/s':>10} "
              f"{'peer ev/s':>9} {'consensus us/ev':>15} {'p50 syncs':>9} {'p99 syncs':>9} "
              f"{'p50 wall s':>10} {'p99 wall s':>10} {'harness tx/s':>12}")
    print(header)
    for n in (4, 8):
        for batch in (10, 100):
            steps = (150 if args.quick else 500) * n // 2
            sim, lat_s, lat_syncs, wall = gossip(n, batch, steps, args.seed)
            events, txs, full, pure = one_peer(sim)
            harness_tx = sum(len(e.transactions) for e in sim.nodes[0].ordered) / wall
            print(f"{n:>8} {batch:>8} {events:>7} {txs:>10} {txs / full:>10,.0f} {events / full:>9,.0f} "
                  f"{1e6 * pure / events:>15.0f} {statistics.median(lat_syncs):>9.1f} {pct(lat_syncs, 0.99):>9.1f} "
                  f"{statistics.median(lat_s):>10.3f} {pct(lat_s, 0.99):>10.3f} {harness_tx:>12,.0f}")
    print("\npeer tx/s: one peer decoding, verifying and ordering the run's events (wire bytes in arrival order).")
    print("consensus us/ev: insert + virtual voting + ordering per event, signatures already checked.")
    print("syncs: gossip syncs per peer from an event's creation to its ordering by its creator.")
    print("wall s: the same on the harness clock, all peers serial on one core (pessimistic by ~creators).")


if __name__ == "__main__":
    main()
