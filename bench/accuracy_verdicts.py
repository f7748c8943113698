"""WBFT with and without judges' verdicts (ADR 0022) on the real testnet, side by side.

Runs ``bench/accuracy.py``'s all-honest scenario on 4 peers (2 SmolLM2 + 2
Gemma-3, equal weights at genesis, adapting by the weight rule) twice on the
same consecutive shipped questions: the manifest's ``[testnet] verdict_rule =
"none"`` (today's rule) and ``"veto"`` (margin 500), which the launcher writes
into the genesis.
Reports per rule: questions decided right, reachable ones (some peer right),
how many of the reachable were decided right, and the p50 / p90 latency of
a query as the client sees it.

    flock /tmp/m/heavy.lock nice -n 5 .venv/bin/python bench/accuracy_verdicts.py --queries 24 \\
        --json bench/results/accuracy-verdicts.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench.accuracy as accuracy  # noqa: E402
from multillmn import canonical  # noqa: E402
from multillmn.questions import load_questions  # noqa: E402
from peers.ledger import value_of_certificate  # noqa: E402


def run(rule: str, queries: int, base: Path, skip: int = 0) -> dict[str, Any]:
    """One testnet whose genesis has ``verdict_rule = rule``; the scenario's figures and latencies."""
    real_text, real_ask = accuracy.manifest_text, accuracy.ask  # type: ignore[attr-defined]
    seconds: list[float] = []

    def text(*args: Any, **kw: Any) -> str:  # the scenario's manifest, with the manifest's [testnet] verdict_rule
        lines: str = real_text(*args, **kw)
        assert lines.startswith("[testnet]\n")
        return lines.replace("[testnet]\n", f'[testnet]\nverdict_rule = "{rule}"\n', 1)

    carried: list[list[list[Any]]] = []  # per query: the verdicts its outcome carried, [judge, [[answerer, v]]]

    def ask(url: str, question: str) -> dict[str, Any]:
        start = time.monotonic()
        reply: dict[str, Any] = real_ask(url, question)
        seconds.append(time.monotonic() - start)
        value = value_of_certificate(reply["certificate"])
        verdicts = [] if value is None else [canonical.unpack(e.body) for e in value.outcomes()[0].verdicts]
        carried.append([[v["judge"][:8], [[p[:8], x] for p, x in v["verdicts"]]] for v in verdicts])
        return reply

    accuracy.manifest_text = text
    accuracy.ask = ask  # type: ignore[attr-defined,assignment]
    accuracy.SCENARIOS["4"] = (4, 0, 1, 1)
    try:
        result = accuracy.run_scenario("4", load_questions()[skip:skip + queries], "collude", base / rule)
    finally:
        accuracy.manifest_text, accuracy.ask = real_text, real_ask  # type: ignore[attr-defined]
    reachable = [h for h in result.heights if any(a["correct"] for a in h["answers"])]
    ordered = sorted(seconds)
    return {
        "rule": rule, "queries": result.wbft.total, "right": result.wbft.correct, "reachable": len(reachable),
        "right_of_reachable": sum(h["correct"] for h in reachable),
        "models": {m: t.correct for m, t in sorted(result.models.items())},
        "p50_s": round(ordered[len(ordered) // 2], 2), "p90_s": round(ordered[(9 * len(ordered)) // 10], 2),
        "verdicts_carried": sum(len(c) for c in carried),
        "heights": [{**h, "verdicts": c} for h, c in zip(result.heights, carried, strict=True)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=24)
    parser.add_argument("--skip", type=int, default=0, help="start after this many shipped questions")
    parser.add_argument("--rules", default="none,veto")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    out = []
    with tempfile.TemporaryDirectory(prefix="accuracy-verdicts-") as tmp:
        for rule in args.rules.split(","):
            r = run(rule, args.queries, Path(tmp), args.skip)
            out.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "heights"}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
