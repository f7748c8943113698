"""A query's latency on a real 4-peer testnet, split into generation and consensus.

Starts 2 x SmolLM2 + 2 x Gemma-3 peers (or uses a running testnet with
--dir and --keep), asks a fixed list of factual questions one after another,
and reports per question: total, generation (until answers carrying +2/3 of
weight are in, at the entry peer) and consensus (from there to the decision,
including the proposer's grace wait for the remaining answers).

    .venv/bin/python bench/query_latency.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from multillmn.client import ask  # noqa: E402
from testnet.launcher import down, status, up  # noqa: E402
from testnet.manifest import Manifest  # noqa: E402

QUESTIONS = [
    "What is the capital of France?",
    "What is the largest planet in the solar system?",
    "Who wrote Hamlet?",
    "What is the chemical symbol for gold?",
    "What is the boiling point of water in Celsius?",
    "How many legs does a spider have?",
    "What is the capital of Japan?",
    "Who painted the Mona Lisa?",
    "What is the largest ocean on Earth?",
    "What gas do plants absorb from the air?",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="use the testnet running in this directory")
    args = parser.parse_args()
    directory = args.dir or Path(tempfile.mkdtemp(prefix="multillmn-bench-"))
    if args.dir is None:
        up(Manifest.from_args(4, ["smollm2", "gemma3"]), directory)
    try:
        peers = status(directory)
        rows = []
        print(f"{'question':<50} {'total':>7} {'gen':>7} {'cons':>6}  answer")
        for i, q in enumerate(QUESTIONS):
            r = ask(peers[i % len(peers)].api_url, q)
            t = r["timings"]
            rows.append(t)
            print(f"{q:<50} {t['total_ms']:>7} {t['generation_ms']:>7} {t['consensus_ms']:>6}  {r['answer']}")
        for key in ("total_ms", "generation_ms", "consensus_ms"):
            values = [row[key] for row in rows]
            print(f"{key:<14} p50 {statistics.median(values):>7.0f} ms   max {max(values):>7} ms")
    finally:
        if args.dir is None:
            down(directory)


if __name__ == "__main__":
    main()
