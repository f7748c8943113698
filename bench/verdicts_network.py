"""Why the veto gains less on the real testnet than offline (issue 15, ADR 0022): question by question.

Lines up, for the 128 shipped questions, the offline record (``bench/verdicts.py``'s ``run`` with ADR 0022's
mean likelihood gap from ``bench/verdict_tokens.py``'s record, as ``bench/verdict_signals.py`` computes it;
veto, margin 500; the 2+2 committee with equal weights, adaptive weights over all 128 questions, and
adaptive weights reset at questions 25 and 65 as the three testnet runs were) against the testnet runs of
``bench/accuracy_verdicts.py`` (``none`` and ``veto``). For every question where any of them differ it
reports: whether each family's answer in the network is the recorded one, the verdicts the decided value
carried (per judge family) against the offline judge's on the same texts, the network's weights at that
height against the offline adaptive run's, and which side each rule decided.

The testnet results name answers by peer but verdicts by peer id prefix: the value's answers are in peer
id order, so sorting the ids seen in verdicts maps them onto the answer order (checked: no judge rates its
own family).

    .venv/bin/python bench/verdicts_network.py --json bench/results/verdicts-network-2026-11-30.json  # ~1 s
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import verdict_signals as vs  # noqa: E402
import verdicts as vb  # noqa: E402
from verdicts import MODELS, Calibration, Mechanism, peers_of  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = ("accuracy-verdicts-2026-11-30.json", "accuracy-verdicts-q25-64-2026-11-30.json",
        "accuracy-verdicts-q65-128-2026-11-30.json")
RERUN = "accuracy-verdicts-veto-q19-24-2026-11-30.json"  # the q1-24 run did not record carried verdicts
SEGMENTS = ((0, 24), (24, 64), (64, 128))  # each testnet run started at genesis (equal weights)
FAMILY = {"peer0": "smollm2", "peer1": "gemma3", "peer2": "smollm2", "peer3": "gemma3"}  # bench/accuracy.py


def network(rule: str) -> list[dict[str, Any]]:
    """The heights of the three runs of ``rule`` in question order, each with ``texts`` (per family), and
    ``carried`` (judge family -> {judged family: verdict}) where the run recorded them."""
    heights: list[dict[str, Any]] = []
    for name in RUNS:
        heights += next(r for r in json.loads((RESULTS / name).read_text()) if r["rule"] == rule)["heights"]
    if rule == "veto":
        rerun = {h["question"]: h for h in json.loads((RESULTS / RERUN).read_text())[0]["heights"]}
        for h in heights:
            if not h.get("verdicts") and h["question"] in rerun:
                h["verdicts"], h["rerun"] = rerun[h["question"]]["verdicts"], rerun[h["question"]]
    for h in heights:
        texts: dict[str, set[str]] = {m: set() for m in MODELS}
        for a in h["answers"]:
            texts[FAMILY[a["peer"]]].add(a["text"])
        assert all(len(t) == 1 for t in texts.values()), h["question"]  # a family answers alike (greedy)
        h["texts"] = {m: t.pop() for m, t in texts.items()}
        h["carried"] = carried(h.get("rerun", h))
    return heights


def carried(h: dict[str, Any]) -> dict[str, dict[str, list[int]]]:
    """Judge family -> judged family -> the carried verdicts (one per judge)."""
    if not h.get("verdicts"):
        return {}
    order = [FAMILY[a["peer"]] for a in h["answers"]]  # the value's order, which is peer-id order
    ids = sorted({v[0] for v in h["verdicts"]} | {p for v in h["verdicts"] for p, _ in v[1]})
    if len(ids) != len(order):
        return {"unmapped": {}}
    fam = dict(zip(ids, order, strict=True))
    out: dict[str, dict[str, list[int]]] = {}
    for judge, rated in h["verdicts"]:
        for answerer, v in rated:
            assert fam[answerer] != fam[judge], "a judge rated its own family: the id mapping is wrong"
            out.setdefault(fam[judge], {}).setdefault(fam[answerer], []).append(v)
    return out


def coverage(rows: list[dict[str, Any]], heights: list[dict[str, Any]]) -> dict[str, Any]:
    """Over the veto run's heights that carried verdicts: how many carried all 4 judges, each rating both
    answers of the other family, and how far each carried verdict is from the offline judge's on that text."""
    fn = vs.verdict_fn("mean")
    out: dict[str, Any] = {"heights": 0, "all judges, full": 0, "judge missing": [], "partial verdict": [],
                           "verdicts": 0, "max |carried - offline|": 0}
    for r, h in zip(rows, heights, strict=True):
        if not h["carried"]:
            continue
        out["heights"] += 1
        judges = {a["peer"] for a in (h.get("rerun", h))["answers"]}
        rated = [v for by in h["carried"].values() for vals in by.values() for v in vals]
        n_judges = len((h.get("rerun", h))["verdicts"])
        if n_judges < len(judges):
            out["judge missing"].append(r["id"])
        elif len(rated) < 2 * len(judges):
            out["partial verdict"].append(r["id"])
        else:
            out["all judges, full"] += 1
        for j, by in h["carried"].items():
            for o, vals in by.items():
                if h["texts"][o] != r["answers"][o]["text"] or h["texts"][j] != r["answers"][j]["text"]:
                    out.setdefault("not in the record", []).append(r["id"])  # no offline verdict on that text
                    continue
                off = fn(r, j, h["texts"][o])
                out["verdicts"] += len(vals)
                out["max |carried - offline|"] = max(out["max |carried - offline|"], *(abs(v - off) for v in vals))
    return out


def redecide(row: dict[str, Any], h: dict[str, Any], complete: bool) -> str:
    """Re-run ``consensus.verdicts.decide`` on one veto height as the network had it (value order, weights,
    the carried verdicts, the record's SmolLM2-Gemma-3 similarity); with ``complete``, every judge's verdict
    on every answer of the other family (the offline judge's value where the network carried none)."""
    from consensus.verdicts import decide

    src = h.get("rerun", h)
    fams = [FAMILY[a["peer"]] for a in src["answers"]]
    n = len(fams)
    cross = row["sims"][0]
    sims = [1000 if fams[i] == fams[j] else cross for i in range(n) for j in range(i + 1, n)]
    weights = [src["weights"][a["peer"]] for a in src["answers"]]
    ids = sorted({v[0] for v in src["verdicts"]} | {p for v in src["verdicts"] for p, _ in v[1]})
    at = {p: k for k, p in enumerate(ids)}
    matrix: list[list[int | None]] = [[None] * n for _ in range(n)]
    for judge, rated in src["verdicts"]:
        for answerer, v in rated:
            matrix[at[judge]][at[answerer]] = v
    if complete:
        fn = vs.verdict_fn("mean")
        for j in range(n):
            for k in range(n):
                if fams[j] != fams[k] and matrix[j][k] is None:
                    matrix[j][k] = fn(row, fams[j], row["answers"][fams[k]]["text"])
    d = decide(weights, sims, 800, verdicts=matrix, rule="veto", margin=500, total_weight=sum(weights))
    return f"{fams[d.group.representative]} ({d.reason})"


def offline(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Right ids and per-height weights of the offline 2+2 runs."""
    fn = vs.verdict_fn("mean")
    veto = Mechanism("signal", judge="custom", rule="veto", margin=500)
    peers = peers_of(2, 2)
    out: dict[str, Any] = {}
    for label, mech in (("none", Mechanism("WBFT today")), ("veto", veto)):
        def right(part: list[dict[str, Any]], adaptive: bool, mech: Mechanism = mech) -> set[str]:
            return set(vb.run(part, peers, mech, Calibration([]), adaptive=adaptive, verdict=fn)["right_ids"])

        out[f"{label} equal"] = right(rows, False)
        out[f"{label} adaptive"] = right(rows, True)
        out[f"{label} adaptive, reset"] = set().union(*(right(rows[a:b], True) for a, b in SEGMENTS))
    return out


def line_up(rows: list[dict[str, Any]]) -> dict[str, Any]:
    nets = {rule: network(rule) for rule in ("none", "veto")}
    off = offline(rows)
    fn = vs.verdict_fn("mean")
    columns = [*off, "net none", "net veto"]
    right: dict[str, set[str]] = {**off}
    for rule, hs in nets.items():
        right[f"net {rule}"] = {r["id"] for r, h in zip(rows, hs, strict=True) if h["correct"]}
    differ = []
    for k, (r, hn, hv) in enumerate(zip(rows, nets["none"], nets["veto"], strict=True)):
        marks = {c: r["id"] in right[c] for c in columns}
        if len(set(marks.values())) == 1:
            continue
        rec = {m: r["answers"][m]["text"] for m in MODELS}
        same = {m: hv["texts"][m] == rec[m] for m in MODELS}
        off_v = {j: {o: fn(r, j, rec[o]) for o in MODELS if o != j} for j in MODELS} if rec[MODELS[0]] != rec[
            MODELS[1]] else {}
        differ.append({
            "id": r["id"], "k": k + 1, "question": r["question"], **{c: marks[c] for c in columns},
            "recorded": {m: [rec[m], r["answers"][m]["correct"]] for m in MODELS},
            "network veto texts same as record": same, "network none texts same as record":
                {m: hn["texts"][m] == rec[m] for m in MODELS},
            "network veto texts": {m: hv["texts"][m] for m in MODELS if not same[m]},
            "offline verdicts": off_v, "carried": hv["carried"],
            "weights veto": [hv["weights"]["peer0"], hv["weights"]["peer1"]],
            "weights none": [hn["weights"]["peer0"], hn["weights"]["peer1"]],
            "decided veto": hv["decided"], "decided none": hn["decided"],
            "redecided, carried": redecide(r, hv, False) if hv["carried"] else None,
            "redecided, completed": redecide(r, hv, True) if hv["carried"] else None})
    return {"right": {c: len(right[c]) for c in columns}, "coverage": coverage(rows, nets["veto"]), "differ": differ,
            "texts differ": {rule: [r["id"] for r, h in zip(rows, hs, strict=True)
                                    if any(h["texts"][m] != r["answers"][m]["text"] for m in MODELS)]
                             for rule, hs in nets.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the line-up here")
    args = parser.parse_args()
    result = line_up(vs.load(*vs.SHIPPED))
    print(json.dumps(result["right"]))
    print("veto run, carried verdicts:", json.dumps(result["coverage"]))
    print("texts differing from the record:", json.dumps(result["texts differ"]))
    for d in result["differ"]:
        cols = " ".join(f"{c}={'Y' if d[c] else '.'}" for c in result["right"])
        print(f"{d['id']} {d['question']}\n  {cols}\n  rec {d['recorded']}\n"
              f"  same {d['network veto texts same as record']} {d['network veto texts']}\n"
              f"  off {d['offline verdicts']}\n  net {d['carried']}\n"
              f"  w veto {d['weights veto']} none {d['weights none']}\n  veto -> {d['decided veto']!r}\n"
              f"  re-decided: carried {d['redecided, carried']}, completed {d['redecided, completed']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
