"""Consensus overhead per decision at n peers, against this machine's signature floor.

Runs n full peer runners in one trio process over real authenticated,
encrypted loopback links, with a scripted answer engine, so everything a
decision costs except the model is measured: query and answer spreading,
proposal checks, prevotes, precommits, signatures, encryption, msgpack.

The floor is what a weighted round must cost in signature checks alone:
each peer verifies about 2n votes (n prevotes, n precommits) per decision,
at the Ed25519 verify cost measured in the same run.

    .venv/bin/python bench/consensus_overhead.py --peers 4 --decisions 200
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from multillmn.identity import KeyPair  # noqa: E402
from peers.engine import ScriptedEngine  # noqa: E402
from tests.conftest import make_net  # noqa: E402
from tests.test_node import running  # noqa: E402


def verify_cost_us(samples: int = 3000) -> float:
    key = KeyPair.generate()
    sig = key.sign("vote", b"x" * 120)
    from multillmn.identity import verify_signature

    start = time.perf_counter()
    for _ in range(samples):
        verify_signature(key.public_key, "vote", b"x" * 120, sig)
    return (time.perf_counter() - start) / samples * 1e6


async def measure(peers: int, decisions: int) -> dict[str, float]:
    net = make_net([1] * peers)
    q = "What is the capital of France?"
    engines = [ScriptedEngine({q: "Paris"}) for _ in range(peers)]
    latencies = []
    async with running(net, engines) as nodes:
        await nodes[0].submit(q)  # warm-up: links up, caches filled
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for i in range(decisions):
            d = await nodes[i % peers].submit(q)
            latencies.append(d.consensus_ms)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {
        "cpu_ms_per_decision_per_peer": cpu / decisions / peers * 1000,
        "wall_ms_per_decision": wall / decisions * 1000,
        "consensus_ms_p50": statistics.median(latencies),
        "consensus_ms_p99": sorted(latencies)[int(0.99 * (len(latencies) - 1))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, nargs="+", default=[4])
    parser.add_argument("--decisions", type=int, default=200)
    args = parser.parse_args()
    verify_us = verify_cost_us()
    print(f"Ed25519 verify on this machine: {verify_us:.0f} us")
    print(f"{'peers':>5} {'floor ms/peer':>14} {'cpu ms/peer':>12} {'ratio':>6} {'wall ms':>8} "
          f"{'p50 ms':>7} {'p99 ms':>7}")
    for n in args.peers:
        r = trio.run(measure, n, args.decisions)
        floor = 2 * n * verify_us / 1000
        print(f"{n:>5} {floor:>14.2f} {r['cpu_ms_per_decision_per_peer']:>12.2f} "
              f"{r['cpu_ms_per_decision_per_peer'] / floor:>6.1f} {r['wall_ms_per_decision']:>8.1f} "
              f"{r['consensus_ms_p50']:>7.0f} {r['consensus_ms_p99']:>7.0f}")


if __name__ == "__main__":
    main()
