"""Would trust per topic decide honest splits better (issue 15's "trust that knows the question")? Offline.

From the offline record of both bundled models' answers and likelihoods
(``bench/results/verdicts-answers.json``, ``bench/verdicts.py``), the 2+2
committee (two SmolLM2 peers, two Gemma-3 peers) at equal weights decides
each of the shipped questions the models split on (one family right) by
``consensus.verdicts.decide``'s veto (ADR 0022: each judge's verdict is its
likelihood gap, margin 500), once with SmolLM2's peers first and once with
Gemma-3's: where both orders agree the veto decided; where they differ, a
tie was left to the weights. Such a tie is then given, in turn, to

* the heavier family as adaptive weights make it on this set (SmolLM2);
* the family right on more of the topic's splits, in sample (an upper
  bound: it has seen the answer);
* the same, leave-one-out (the question's own split not counted): what a
  committed per-topic reputation could learn at best from the others.

And without the veto, the per-topic choice alone decides every split.

    .venv/bin/python bench/topic_trust.py --json bench/results/topic-trust-2026-11-30.json   # < 1 s
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from consensus.verdicts import decide  # noqa: E402

RECORD = ROOT / "bench" / "results" / "verdicts-answers.json"
MARGIN = 500
THRESHOLD = 800  # grouping threshold; the two families' answers differ (similarity 0), each family agrees (1000)


def verdict(gap_nats: float) -> int:
    return max(-1000, min(1000, round(1000 * gap_nats)))


def veto_winner(row: dict[str, Any], smol_first: bool) -> str:
    """The family the 2+2 committee decides for, with one family's two peers listed first."""
    families = ["smollm2", "gemma3"] if smol_first else ["gemma3", "smollm2"]
    peers = [families[0], families[0], families[1], families[1]]
    texts = {m: row["answers"][m]["text"] for m in families}
    lp = row["lp"]
    sims = [1000 if peers[i] == peers[j] else 0 for i in range(4) for j in range(i + 1, 4)]
    verdicts: list[list[int | None]] = [
        [None if peers[k] == judge else verdict(lp[judge][texts[peers[k]]] - lp[judge][texts[judge]])
         for k in range(4)] for judge in peers]
    group = decide([1] * 4, sims, THRESHOLD, verdicts=verdicts, rule="veto", margin=MARGIN, total_weight=4).group
    return peers[group.representative]


def analyse(rows: list[dict[str, Any]]) -> dict[str, Any]:
    splits = [r for r in rows if r["answers"]["smollm2"]["correct"] != r["answers"]["gemma3"]["correct"]]
    right_family = {r["id"]: "smollm2" if r["answers"]["smollm2"]["correct"] else "gemma3" for r in splits}
    by_topic: dict[str, Counter[str]] = defaultdict(Counter)
    for r in splits:
        by_topic[r["topic"]][right_family[r["id"]]] += 1

    def topic_pick(r: dict[str, Any], leave_out: bool) -> str:
        counts = by_topic[r["topic"]].copy()
        if leave_out:
            counts[right_family[r["id"]]] -= 1
        return "smollm2" if counts["smollm2"] >= counts["gemma3"] else "gemma3"

    tally: Counter[str] = Counter()
    for r in splits:
        truth = right_family[r["id"]]
        first, second = veto_winner(r, True), veto_winner(r, False)
        if first == second:
            tally["veto decides, right" if first == truth else "veto decides, wrong"] += 1
            continue
        tally["tie"] += 1
        for name, pick in (("heavier family (SmolLM2)", "smollm2"), ("topic, in sample", topic_pick(r, False)),
                           ("topic, leave-one-out", topic_pick(r, True))):
            tally[f"tie to {name}, right"] += pick == truth
    for r in splits:
        for name, leave in (("in sample", False), ("leave-one-out", True)):
            tally[f"topic alone ({name}), right"] += topic_pick(r, leave) == right_family[r["id"]]
    both = sum(1 for r in rows if r["answers"]["smollm2"]["correct"] and r["answers"]["gemma3"]["correct"])
    decided = tally["veto decides, right"]
    return {
        "questions": len(rows), "both_right": both, "splits": len(splits), "reachable": both + len(splits),
        "splits_by_topic": {t: dict(c) for t, c in sorted(by_topic.items())},
        "tally": dict(sorted(tally.items())),
        "right_of_reachable": {
            "veto, ties to the heavier family": both + decided + tally["tie to heavier family (SmolLM2), right"],
            "veto, ties by topic in sample": both + decided + tally["tie to topic, in sample, right"],
            "veto, ties by topic leave-one-out": both + decided + tally["tie to topic, leave-one-out, right"],
            "topic alone, in sample": both + tally["topic alone (in sample), right"],
            "topic alone, leave-one-out": both + tally["topic alone (leave-one-out), right"],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", type=Path, default=RECORD)
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args()
    result = analyse(json.loads(args.record.read_text())["questions"])
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
