"""WBFT with and without judges' verdicts (ADR 0022) on the real testnet, side by side.

Runs one of ``bench/accuracy.py``'s scenarios (``--scenario``; by default
"4", all honest on 4 peers: 2 SmolLM2 + 2 Gemma-3, equal weights at genesis,
adapting by the weight rule; or any name of ``accuracy.SCENARIOS``, e.g. "0"
for 6 honest peers, "1/3" or "1/2-late" under attack) once per rule on the
same consecutive shipped questions: the manifest's ``[testnet] verdict_rule =
"none"`` (today's rule) and ``"veto"`` (margin 500), which the launcher writes
into the genesis.
Reports per rule: questions decided right (over all and, under attack, over
the heights once the malicious weight share fell below 1/3), reachable ones
(some honest peer right), how many of the reachable were decided right, each
model alone, majority vote, and the p50 / p90 latency of a query as the
client sees it.

    flock /tmp/m/heavy.lock nice -n 5 .venv/bin/python bench/accuracy_verdicts.py --queries 24 \\
        --json bench/results/accuracy-verdicts.json
    flock /tmp/m/heavy.lock nice -n 5 .venv/bin/python bench/accuracy_verdicts.py --scenario 1/2 \\
        --rules veto --queries 128 --json bench/results/accuracy-verdicts-half-adapted.json

Under ``veto``, "1/2-late" halts at height 1: its faulty peers start with 1/2 of the weight and send no
verdicts, so no contested outcome meets the omission rule (all but at most 1/3 of the weight's verdicts
carried); "1/3" (exactly 1/3 non-judging) meets it with every honest verdict (docs/benchmarks.md).
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


# bench/accuracy.py's scenarios plus this bench's default: 4 honest peers, equal weights
SCENARIOS: dict[str, tuple[int, int, int, int]] = {"4": (4, 0, 1, 1), **accuracy.SCENARIOS}


def run(rule: str, queries: int, base: Path, skip: int = 0, scenario: str = "4",
        behaviour: str = "collude") -> dict[str, Any]:
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
    real_scenarios, accuracy.SCENARIOS = accuracy.SCENARIOS, SCENARIOS
    try:
        result = accuracy.run_scenario(scenario, load_questions()[skip:skip + queries], behaviour, base / rule)
    finally:
        accuracy.manifest_text, accuracy.ask = real_text, real_ask  # type: ignore[attr-defined]
        accuracy.SCENARIOS = real_scenarios
    reachable = [h for h in result.heights  # some honest peer right (malicious peers are named "bad...")
                 if any(a["correct"] and not a["peer"].startswith("bad") for a in h["answers"])]
    ordered = sorted(seconds)
    return {
        "rule": rule, "scenario": scenario, "peers": result.peers, "malicious": result.malicious,
        "behaviour": result.behaviour,
        "queries": result.wbft.total, "right": result.wbft.correct, "reachable": len(reachable),
        "right_of_reachable": sum(h["correct"] for h in reachable),
        "after_adaptation": result.wbft_after_adaptation.total,  # heights once the bad share fell below 1/3
        "right_after_adaptation": result.wbft_after_adaptation.correct,
        "majority": result.majority.correct,
        "models": {m: t.correct for m, t in sorted(result.models.items())},  # right answers of its honest peers
        "models_answers": {m: t.total for m, t in sorted(result.models.items())},  # of so many
        "malicious_share": result.malicious_share,
        "p50_s": round(ordered[len(ordered) // 2], 2), "p90_s": round(ordered[(9 * len(ordered)) // 10], 2),
        "verdicts_carried": sum(len(c) for c in carried),
        "heights": [{**h, "verdicts": c} for h, c in zip(result.heights, carried, strict=True)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=24)
    parser.add_argument("--skip", type=int, default=0, help="start after this many shipped questions")
    parser.add_argument("--rules", default="none,veto")
    parser.add_argument("--scenario", default="4", help=f"one of {', '.join(SCENARIOS)} (see bench/accuracy.py)")
    parser.add_argument("--behaviour", default="collude", help="what the malicious peers do (a manifest name)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.scenario not in SCENARIOS:
        parser.error(f"unknown scenario {args.scenario!r}; choose from {list(SCENARIOS)}")
    out = []
    with tempfile.TemporaryDirectory(prefix="accuracy-verdicts-") as tmp:
        for rule in args.rules.split(","):
            r = run(rule, args.queries, Path(tmp), args.skip, args.scenario, args.behaviour)
            out.append(r)
            print(json.dumps({k: v for k, v in r.items() if k not in ("heights", "malicious_share")}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
