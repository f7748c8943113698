"""Consensus overhead per decision on the real multi-process testnet (4 and 7 peers), next to the signature floor.

For each peer count a testnet of SmolLM2 peers is started and the same
questions are asked one after another. ``protocol_ms`` (reported by the
entry peer with every decision) runs from the first proposal of the height
reaching that peer to its decision: proposal validation (signatures, MiniLM
similarities of the answers), prevotes, precommits and the decision, over
real encrypted loopback links between processes that share this machine's
cores. The floor is what the signatures alone cost a peer per decision:
about 2n Ed25519 verifications (n prevotes and n precommits), timed here
with the same library.

    .venv/bin/python bench/testnet_overhead.py --peers 4,7 --queries 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from bench.query_latency import QUESTIONS  # noqa: E402
from multillmn.client import ask  # noqa: E402
from testnet.launcher import down, status, up  # noqa: E402
from testnet.manifest import Manifest  # noqa: E402


def verify_us(samples: int = 2000) -> float:
    """Microseconds per Ed25519 verification of a ~120-byte message on this machine."""
    key = Ed25519PrivateKey.generate()
    message = b"v" * 120
    sig = key.sign(message)
    public = key.public_key()
    start = time.perf_counter()
    for _ in range(samples):
        public.verify(sig, message)
    return (time.perf_counter() - start) / samples * 1e6


def measure(peers: int, questions: list[str]) -> dict[str, float]:
    directory = Path(tempfile.mkdtemp(prefix=f"multillmn-overhead-{peers}-"))
    up(Manifest.from_args(peers, ["smollm2"]), directory, progress=lambda line: print("  " + line, file=sys.stderr))
    try:
        urls = [p.api_url for p in status(directory)]
        ask(urls[0], "Warm-up: what is 1 + 1?")
        protocol, consensus = [], []
        for k, q in enumerate(questions):
            t = ask(urls[k % len(urls)], q)["timings"]
            protocol.append(t["protocol_ms"])
            consensus.append(t["consensus_ms"])
            print(f"  n={peers} protocol {t['protocol_ms']:>5} ms  consensus {t['consensus_ms']:>5} ms  {q}",
                  file=sys.stderr)
    finally:
        down(directory)
    return {"peers": peers, "protocol_ms_p50": statistics.median(protocol), "protocol_ms_max": max(protocol),
            "consensus_ms_p50": statistics.median(consensus)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", default="4,7", help="comma-separated peer counts")
    parser.add_argument("--queries", type=int, default=10)
    args = parser.parse_args()
    counts = [int(c) for c in args.peers.split(",")]
    questions = (QUESTIONS * (1 + args.queries // len(QUESTIONS)))[: args.queries]
    us = verify_us()
    rows = []
    for n in counts:
        row = measure(n, questions)
        floor_ms = 2 * n * us / 1000
        row.update(verify_us=round(us, 1), floor_ms=round(floor_ms, 2),
                   ratio_p50=round(row["protocol_ms_p50"] / floor_ms, 1))
        rows.append(row)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
