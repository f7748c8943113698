"""Which per-judge signal decides honest splits best (issue 15, phase 2): offline, cross-validated, held out.

Every candidate keeps ADR 0022's verdict shape: judge j sends, for each
answer outside its own group, one per-mille integer in [-1000, 1000]
computed from its own model only, and ``consensus.verdicts.decide`` (veto,
margin) decides. The candidates are gaps (nats, per token for the means)
between the judged text and j's own answer, from the per-token log-probabilities
recorded by ``bench/verdict_tokens.py`` (:func:`signal_gap`):

* ``mean``: ADR 0022's signal, mean over all the text's tokens;
* ``sum``: summed instead (penalises length);
* ``content``: mean over the tokens the two texts do not share: the common
  leading and trailing tokens (the "The capital of X is" frame, the final
  period) are stripped from both (:func:`verdicts.content_split`);
* ``content-sum``: summed over those tokens (:func:`verdicts.content_gap`);
* ``min``, ``content-min``: the least likely token instead of the mean;
* ``pmi``, ``content-pmi``: each token's log-probability minus its
  log-probability after the content-free question (what the question adds);
* ``plain``, ``content-plain``: under a ``Question: ...\\nAnswer:`` prompt
  without examples or template instead of the answer prompt;
* ``content+rel``: ``content`` plus ``REL_WEIGHT`` times the MiniLM
  question-answer relevance difference.

Each signal is turned into a verdict by a threshold ``t`` (milli-nats): the
verdict is ``clamp(round(1000 * gap * MARGIN / t))``, so with ADR 0022's
margin 500 a gap below ``-t`` rejects. The threshold is one for both judge
models, or one per model (a per-model calibration), fitted over a grid to
maximise the questions the 2+2 committee at equal weights decides right
*whichever family wins ties* (:func:`robust_ids`: right with SmolLM2 as
peer 0 and with Gemma-3 as peer 0), then those right with SmolLM2 first
(:func:`objective`). Reported (:func:`assess`): the shipped set in sample
and 4-fold cross-validated (fitted on 3/4 by position, the 4th decided), the
held-out set (``bench/data/verdicts-heldout-questions.json``) decided with the
shipped fit, committees with adaptive weights and colluders
(:func:`verdicts.run`, ``consensus.verdicts.decide``), each judge's accuracy
on the splits and the threshold-free AUC.

    .venv/bin/python bench/verdict_signals.py --json bench/results/verdicts-signals-2026-11-30.json   # ~1 min
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import verdicts as vb  # noqa: E402
from verdicts import GEMMA, MODELS, SMOL, Calibration, Mechanism, content_split, peers_of  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SHIPPED = (RESULTS / "verdicts-answers.json", RESULTS / "verdicts-tokens-2026-11-30.json")
HELDOUT = (RESULTS / "verdicts-heldout-answers-2026-11-30.json", RESULTS / "verdicts-heldout-tokens-2026-11-30.json")
REL_WEIGHT = 2.0
SIGNALS = ("mean", "sum", "content", "content-sum", "min", "content-min", "pmi", "content-pmi", "plain", "content-plain",
           "content+rel")
Toks = list[tuple[str, float]]


def load(answers: Path, tokens: Path) -> list[dict[str, Any]]:
    """The answer record's rows, each with ``tok[model][condition][text]``: [(token, log-probability)]."""
    rows: list[dict[str, Any]] = json.loads(answers.read_text())["questions"]
    tok = json.loads(tokens.read_text())["questions"]
    for r in rows:
        r["tok"] = {m: {c: {t: [(s, v) for s, v in lst] for t, lst in by.items()}
                        for c, by in tok[r["id"]][m].items()} for m in MODELS}
    return rows


def _mean(x: list[float]) -> float:
    return sum(x) / len(x)


def _pmi(ans: Toks, null: Toks) -> Toks:
    return [(s, a - b) for (s, a), (_, b) in zip(ans, null, strict=True)]


def signal_gap(kind: str, row: dict[str, Any], model: str, text: str) -> float:
    """Judge ``model``'s gap (nats) between ``text`` and its own answer under signal ``kind``."""
    tok = row["tok"][model]
    own = row["answers"][model]["text"]
    if text == own:
        return 0.0
    cond = "plain" if kind.endswith("plain") else "answer"
    a: Toks = tok[cond][own]
    b: Toks = tok[cond][text]
    if kind == "content-sum":
        return vb.content_gap(a, b)  # the implemented signal itself
    if kind in ("pmi", "content-pmi"):
        a, b = _pmi(a, tok["null"][own]), _pmi(b, tok["null"][text])
    if kind.startswith("content"):
        a, b = content_split(a, b)
        if not a or not b:
            return 0.0
    if kind.endswith("min"):
        return float(min(v for _, v in b) - min(v for _, v in a))
    if kind.endswith("sum"):
        return float(sum(v for _, v in b) - sum(v for _, v in a))
    gap = _mean([v for _, v in b]) - _mean([v for _, v in a])
    if kind == "content+rel":
        gap += REL_WEIGHT * (row["relevance"][text] - row["relevance"][own])
    return gap


def verdict_fn(kind: str, scale: dict[str, float] | None = None) -> Callable[[dict[str, Any], str, str], int]:
    """Per-mille verdicts of signal ``kind``, times a per-model ``scale`` (a calibration) if given."""
    def fn(row: dict[str, Any], model: str, text: str) -> int:
        return vb.clamp(1000 * (scale or {}).get(model, 1.0) * signal_gap(kind, row, model, text))
    return fn


def splits(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["answers"]["smollm2"]["correct"] != r["answers"]["gemma3"]["correct"]]


def judge_table(rows: list[dict[str, Any]], fn: Callable[..., int], margin: int = 500) -> dict[str, Any]:
    """Per judge model, on the splits: the other model's answer accepted (verdict >= -margin) when right,
    rejected when wrong; and the judge's errors (question id, verdict)."""
    out: dict[str, Any] = {}
    for m in MODELS:
        other = MODELS[1 - MODELS.index(m)]
        t: dict[str, Any] = {"right_accepted": 0, "right": 0, "wrong_rejected": 0, "wrong": 0, "errors": []}
        for r in splits(rows):
            ok = r["answers"][other]["correct"]
            v = fn(r, m, r["answers"][other]["text"])
            good = (v >= -margin) if ok else (v < -margin)
            t["right" if ok else "wrong"] += 1
            t["right_accepted" if ok else "wrong_rejected"] += good
            if not good:
                t["errors"].append([r["id"], v])
        t["balanced"] = round((t["right_accepted"] / max(1, t["right"])
                               + t["wrong_rejected"] / max(1, t["wrong"])) / 2, 3)
        out[m] = t
    return out


def auc(rows: list[dict[str, Any]], kind: str) -> dict[str, float]:
    """Per judge model, on the splits: the probability that the other model's right answer gets a higher gap
    than its wrong answer (threshold-free separation)."""
    out = {}
    for m in MODELS:
        other = MODELS[1 - MODELS.index(m)]
        gaps = [(signal_gap(kind, r, m, r["answers"][other]["text"]), r["answers"][other]["correct"])
                for r in splits(rows)]
        pos = [g for g, ok in gaps if ok]
        neg = [g for g, ok in gaps if not ok]
        pairs = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
        out[m] = round(pairs / max(1, len(pos) * len(neg)), 3)
    return out


COMMITTEES = {"2+2": peers_of(2, 2), "3+3": peers_of(3, 3), "2+2+2c": peers_of(2, 2, 2),
              "2+2 Gemma-3 first": [GEMMA, SMOL, GEMMA, SMOL]}
"""Peer 0 wins the last tie-break: SmolLM2 in the first three, so a tie goes to the better model; the last
committee gives ties to Gemma-3."""


def decided(rows: list[dict[str, Any]], fn: Callable[..., int], margin: int, committee: str, adaptive: bool,
            colluder_verdicts: bool = True) -> dict[str, Any]:
    mech = Mechanism("signal", judge="custom", rule="veto", margin=margin)
    res = vb.run(rows, COMMITTEES[committee], mech, Calibration([]), adaptive=adaptive, verdict=fn,
                 judge_colluders=colluder_verdicts)
    return res


def right_ids(rows: list[dict[str, Any]], fn: Callable[..., int], margin: int) -> set[str]:
    """The ids decided right by the 2+2 all-honest committee at equal weights."""
    return set(decided(rows, fn, margin, "2+2", False)["right_ids"])


def robust_ids(rows: list[dict[str, Any]], fn: Callable[..., int], margin: int) -> set[str]:
    """The ids decided right by the 2+2 committee at equal weights whichever family wins ties: right with
    SmolLM2 as peer 0 and with Gemma-3 as peer 0 (not by luck of the tie-break)."""
    return right_ids(rows, fn, margin) & set(decided(rows, fn, margin, "2+2 Gemma-3 first", False)["right_ids"])


def objective(rows: list[dict[str, Any]], fn: Callable[..., int], margin: int) -> tuple[int, int]:
    """What a fit maximises: questions right whichever family wins ties, then right with SmolLM2 first."""
    return len(robust_ids(rows, fn, margin)), len(right_ids(rows, fn, margin))


THRESHOLDS = (100, 200, 300, 400, 500, 600, 800, 1000, 1500, 2000, 3000, 4000, 6000)
"""The thresholds (milli-nats; for the sums, milli-nats in all) a fit may choose from."""
MARGIN = 500
"""The veto margin (ADR 0022); a threshold ``t`` is mapped onto it by the scale ``MARGIN / t``."""


def scale_for(thresholds: dict[str, int]) -> dict[str, float]:
    """The per-model scale mapping each judge model's threshold onto the veto margin."""
    return {m: MARGIN / t for m, t in thresholds.items()}


def outcome_table(rows: list[dict[str, Any]]) -> list[dict[tuple[bool, bool], tuple[bool, bool]]]:
    """Per row, for each (SmolLM2 rejects Gemma-3's answer, Gemma-3 rejects SmolLM2's), whether the 2+2
    committee at equal weights decides right with SmolLM2 first and with Gemma-3 first: the veto only asks
    whether a verdict is below ``-margin``, so these four cases are all a threshold can change."""
    out = []
    for r in rows:
        cell = {}
        for rg in (False, True):
            for rs in (False, True):
                fn = _fixed_verdicts(rg, rs)
                cell[(rg, rs)] = (bool(right_ids([r], fn, MARGIN)),
                                  bool(decided([r], fn, MARGIN, "2+2 Gemma-3 first", False)["right_ids"]))
        out.append(cell)
    return out


def _fixed_verdicts(smol_rejects: bool, gemma_rejects: bool) -> Callable[[dict[str, Any], str, str], int]:
    def fn(row: dict[str, Any], model: str, text: str) -> int:
        if text == row["answers"][model]["text"]:
            return 0
        return -1000 if (smol_rejects if model == "smollm2" else gemma_rejects) else 0
    return fn


def fit_thresholds(rows: list[dict[str, Any]], kind: str, per_model: bool) -> dict[str, int]:
    """The threshold (a gap below ``-t`` rejects), one for both judge models or one per model, maximising
    :func:`objective` on ``rows`` over the grid; the median (in grid order) among ties. Fast: through
    :func:`outcome_table` (equal to deciding every row, ``tests/test_bench_verdicts.py``)."""
    table = outcome_table(rows)
    gaps = [(signal_gap(kind, r, "smollm2", r["answers"]["gemma3"]["text"]),
             signal_gap(kind, r, "gemma3", r["answers"]["smollm2"]["text"])) for r in rows]
    pairs = [(ts, tg) for ts in THRESHOLDS for tg in THRESHOLDS] if per_model else [(t, t) for t in THRESHOLDS]

    def score(ts: int, tg: int) -> tuple[int, int]:
        cells = [cell[(vb.clamp(1000 * MARGIN / ts * gs) < -MARGIN, vb.clamp(1000 * MARGIN / tg * gg) < -MARGIN)]
                 for cell, (gs, gg) in zip(table, gaps, strict=True)]
        return sum(a and b for a, b in cells), sum(a for a, _ in cells)

    scores = {k: score(*k) for k in pairs}
    top = max(scores.values())
    tied = [k for k in pairs if scores[k] == top]
    ts, tg = tied[len(tied) // 2]
    return {"smollm2": ts, "gemma3": tg}


def assess(shipped: list[dict[str, Any]], heldout: list[dict[str, Any]] | None, kind: str, per_model: bool,
           fixed: dict[str, int] | None = None) -> dict[str, Any]:
    """Signal ``kind`` with its threshold(s) fitted on all of ``shipped`` (or ``fixed``): the shipped set in
    sample and 4-fold cross-validated (fitted on 3/4 by position, the 4th decided), and the held-out set
    decided with the shipped fit (and, to see how far that is from its best, with its own fit)."""
    th = fixed or fit_thresholds(shipped, kind, per_model)
    fn = verdict_fn(kind, scale_for(th))
    out: dict[str, Any] = {"signal": kind, "per_model": per_model, "thresholds": th, "auc": auc(shipped, kind),
                           "in_sample": {"right": len(right_ids(shipped, fn, MARGIN)),
                                         "robust": len(robust_ids(shipped, fn, MARGIN))},
                           "committees": committee_table(shipped, fn, MARGIN),
                           "judges": judge_table(shipped, fn),
                           "lost_2p2": lost(shipped, fn)}
    if fixed is None:
        right, robust, chosen = 0, 0, []
        for f in range(4):
            train = [r for k, r in enumerate(shipped) if k % 4 != f]
            test = [r for k, r in enumerate(shipped) if k % 4 == f]
            t = fit_thresholds(train, kind, per_model)
            chosen.append(t)
            right += len(right_ids(test, verdict_fn(kind, scale_for(t)), MARGIN))
            robust += len(robust_ids(test, verdict_fn(kind, scale_for(t)), MARGIN))
        out["cv4"] = {"right": right, "robust": robust, "thresholds": chosen}
    if heldout:
        own = fit_thresholds(heldout, kind, per_model)
        out["heldout"] = {"right": len(right_ids(heldout, fn, MARGIN)),
                          "robust": len(robust_ids(heldout, fn, MARGIN)),
                          "committees": committee_table(heldout, fn, MARGIN),
                          "judges": judge_table(heldout, fn), "auc": auc(heldout, kind),
                          "lost_2p2": lost(heldout, fn),
                          "own_fit": {"thresholds": own,
                                      "right": len(right_ids(heldout, verdict_fn(kind, scale_for(own)), MARGIN))}}
    print(f"{kind} {'per model' if per_model else 'one threshold'} {th}: in-sample {out['in_sample']}, "
          f"cv4 {out.get('cv4', {}).get('right')}/{out.get('cv4', {}).get('robust')}, "
          f"held-out {out.get('heldout', {}).get('right')}/{out.get('heldout', {}).get('robust')}",
          file=sys.stderr, flush=True)
    return out


def lost(rows: list[dict[str, Any]], fn: Callable[..., int]) -> list[str]:
    """The reachable questions the 2+2 committee (equal weights) decides wrong."""
    return sorted({r["id"] for r in rows if reachable_row(r)} - right_ids(rows, fn, MARGIN))


def committee_table(rows: list[dict[str, Any]], fn: Callable[..., int], margin: int) -> dict[str, int]:
    cells = {}
    for c in COMMITTEES:
        for adaptive in (False, True):
            cells[f"{c} {'adaptive' if adaptive else 'equal'}"] = decided(rows, fn, margin, c, adaptive)["right"]
    for adaptive in (False, True):
        cells[f"2+2+2c {'adaptive' if adaptive else 'equal'}, honest silent on colluders"] = decided(
            rows, fn, margin, "2+2+2c", adaptive, colluder_verdicts=False)["right"]
    cells["today 2+2"] = vb.run(rows, COMMITTEES["2+2"], Mechanism("WBFT today"), Calibration([]),
                                adaptive=False)["right"]
    return cells


def reachable_row(r: dict[str, Any]) -> bool:
    return any(r["answers"][m]["correct"] for m in MODELS)


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"questions": len(rows), "alone": {m: sum(r["answers"][m]["correct"] for r in rows) for m in MODELS},
            "reachable": sum(reachable_row(r) for r in rows), "splits": len(splits(rows)),
            "smol_right_in_splits": sum(r["answers"]["smollm2"]["correct"] for r in splits(rows))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--no-heldout", action="store_true")
    parser.add_argument("--signals", default=",".join(SIGNALS))
    args = parser.parse_args()
    shipped = load(*SHIPPED)
    heldout = None if args.no_heldout or not HELDOUT[1].exists() else load(*HELDOUT)
    result: dict[str, Any] = {"shipped": summary(shipped), "heldout": summary(heldout) if heldout else None,
                              "margin": MARGIN, "thresholds_grid": THRESHOLDS, "assessed": []}
    base = assess(shipped, heldout, "mean", False, fixed={"smollm2": 500, "gemma3": 500})
    base["label"] = "ADR 0022 (mean, margin 500)"
    result["assessed"].append(base)
    for kind in args.signals.split(","):
        for per_model in (False, True):
            result["assessed"].append(assess(shipped, heldout, kind, per_model))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
