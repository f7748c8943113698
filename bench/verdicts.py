"""Accuracy mechanisms for honest splits (issue 15, phase 1): record once, measure offline.

``--record`` asks each bundled model every shipped question as a peer does
(:meth:`peers.llm.Generator.generate_batch`, the peer's prompt, greedy, 48 new
tokens, batches of 8, which answer as one at a time; every 4th question is
also asked alone, checked equal and timed), grades
each answer with the shipped rule (:func:`multillmn.questions.is_correct`,
as ``bench/accuracy.py`` does), and records the signals every candidate
mechanism needs:

* ``logprob``: the answering model's own mean token log-probability of its
  answer (from ``lp`` below);
* ``relevance``: MiniLM cosine between the question and each text
  (:class:`peers.embedder.Embedder`);
* ``lp``: each model's mean token log-probability of those texts as its own
  reply (the likelihood judge of ADR 0009), with the time of its pass;
* ``yes``: each model's per-mille ``P(yes)`` to "Is the proposed answer
  correct?" (:class:`peers.judge.VerifyingJudge`) for both models' answers,
  the first accepted alias (``gold``), the first alias of another question of
  the same topic (``other``, a known wrong answer) and the question itself as
  an answer (``echo``), with the time of the batched pass over the two
  models' answers (what a judging peer adds to a split query).

Without ``--record`` it reads that JSON and prints the tables of
docs/benchmarks.md ("Accuracy mechanisms (issue 15, phase 1)"): committees
of 4 (2 SmolLM2 + 2 Gemma-3) and 6 (3 + 3) peers and 2 + 2 with 2 colluders,
at equal genesis weights and with the weight rule adapting,
every decision by :func:`consensus.verdicts.decide` (the function the
network will run), against WBFT today (:func:`consensus.grouping.choose`),
each model alone, majority and the ceiling; the judges' own accuracy; the
latency added; and colluders.

:func:`content_verdict` is the content-gap judge signal measured against
this one in ``bench/verdict_signals.py`` (ADR 0022, addendum of 2026-11-30);
:func:`run` also takes any such signal as ``verdict``.

Recording runs each model in its own process (one torch thread): answers,
then judging (the questions the models split on first, then the others;
then the extra texts of every question), then side-by-side timings of every
8th split question; each stage writes ``verdicts-answers.<model>.<stage>.json``
next to the record and judging resumes from it. A record cut short (the
shipped one judged the 45 split questions and 21 more; ``gold``/``other``/
``echo`` were not judged) simply has no verdicts there: a judge gives none,
so colluders' answers are never rejected (the worst case for the rule).

    nice -n 10 .venv/bin/python bench/verdicts.py --record     # 40-90 min on the shared 2 cores
    .venv/bin/python bench/verdicts.py --json bench/results/verdicts-tables.json   # tables, ~8 s
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import sys
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataclasses import dataclass  # noqa: E402

from consensus import grouping  # noqa: E402
from consensus.grouping import pair_index  # noqa: E402
from consensus.scores import ScoreVector, score_answers  # noqa: E402
from consensus.sim import sim_keys  # noqa: E402
from consensus.validators import Validator, ValidatorSet  # noqa: E402
from consensus.verdicts import MAX_VERDICT, RULES, decide  # noqa: E402
from consensus.weights import WeightParams, WeightState, update  # noqa: E402
from multillmn.questions import Question, is_correct, load_questions  # noqa: E402

RECORD = Path(__file__).resolve().parent / "results" / "verdicts-answers.json"
MODELS = ("smollm2", "gemma3")
MAX_NEW_TOKENS = 48  # the peer's default ([model] max_new_tokens)


def other_answer(q: Question, questions: list[Question]) -> str:
    """The first alias of another question of the same topic, chosen by the question's id: a wrong answer."""
    others = sorted({o.answers[0] for o in questions if o.topic == q.topic and q.answers[0] != o.answers[0]
                     and not is_correct(q, o.answers[0])})
    return random.Random(q.id).choice(others)


def _part(path: Path, stage: str, model: str) -> Path:
    return path.with_name(f"{path.stem}.{model}.{stage}.json")


def record_answers(path: Path, model: str, threads: int, limit: int | None) -> None:
    """Stage 1, one process per model: the model's answers (batches of 8, which answer exactly as one at a
    time, tests/test_generation_batch.py) and, on every 4th question, the time of answering it alone."""
    from peers.llm import Generator, default_cache_dir, resolve_model

    questions = load_questions()[:limit]
    g = Generator.load(resolve_model(model), default_cache_dir(), threads=threads)
    g.generate("What is 1 + 1?", 2)  # warm-up, as a peer does
    answers: dict[str, dict[str, Any]] = {}
    for i in range(0, len(questions), 8):
        batch = questions[i:i + 8]
        for q, gen in zip(batch, g.generate_batch([q.question for q in batch], MAX_NEW_TOKENS), strict=True):
            answers[q.id] = {"text": gen.text, "correct": is_correct(q, gen.text), "tokens": gen.new_tokens}
            print(f"{model} {q.id} {'ok ' if answers[q.id]['correct'] else 'BAD'} {gen.text!r}",
                  file=sys.stderr, flush=True)
    for q in questions[::4]:
        alone = g.generate(q.question, MAX_NEW_TOKENS)
        assert alone.text == answers[q.id]["text"], (q.question, alone.text)
        answers[q.id]["gen_s"] = round(alone.seconds, 4)
    _part(path, "answers", model).write_text(json.dumps(answers, ensure_ascii=False) + "\n")


def record_judge(path: Path, model: str, threads: int, limit: int | None) -> None:
    """Stage 2, one process per model (after both stage 1s): ``yes`` and ``lp`` of every text, timed."""
    from peers.judge import VerifyingJudge
    from peers.llm import Generator, default_cache_dir, resolve_model

    questions = load_questions()[:limit]
    every = load_questions()
    answers = {m: json.loads(_part(path, "answers", m).read_text()) for m in MODELS}
    g = Generator.load(resolve_model(model), default_cache_dir(), threads=threads)
    judge = VerifyingJudge(g)
    judge.yes_scores("What is 1 + 1?", ["2"])  # warm-up
    part = _part(path, "judge", model)
    out: dict[str, dict[str, Any]] = json.loads(part.read_text()) if part.exists() else {}
    # First the questions the models split on (one right, one wrong), the ones a verdict decides, and
    # only the two answers (timed: what a judging peer adds); then every question's other texts.
    critical = [q for q in questions if answers[MODELS[0]][q.id]["correct"] != answers[MODELS[1]][q.id]["correct"]]
    rest = [q for q in questions if q not in critical]
    for q, full in [*((q, False) for q in critical), *((q, False) for q in rest), *((q, True) for q in questions)]:
        split = list(dict.fromkeys(answers[m][q.id]["text"] for m in MODELS))
        if q.id not in out:
            t0 = time.monotonic()
            yes = dict(zip(split, judge.yes_scores(q.question, split), strict=True))
            judge_s = time.monotonic() - t0
            t0 = time.monotonic()
            lp = dict(zip(split, g.answer_logprobs(q.question, split), strict=True))
            lp_s = time.monotonic() - t0
            out[q.id] = {"yes": yes, "judge_s": round(judge_s, 4), "lp_s": round(lp_s, 4),
                         "lp": {t: round(v, 5) for t, v in lp.items()}}
        elif full and q.question not in out[q.id]["yes"]:
            texts = [t for t in dict.fromkeys([q.answers[0], other_answer(q, every), q.question]) if t not in split]
            out[q.id]["yes"].update(zip(texts, judge.yes_scores(q.question, texts), strict=True))
            lp_texts = [t for t in texts if t != q.question]
            out[q.id]["lp"].update((t, round(v, 5)) for t, v in
                                   zip(lp_texts, g.answer_logprobs(q.question, lp_texts), strict=True))
        else:
            continue
        part.write_text(json.dumps(out, ensure_ascii=False) + "\n")  # resumable
        print(f"{model} judged {q.id}", file=sys.stderr, flush=True)


def record_times(path: Path, model: str, threads: int, limit: int | None) -> None:
    """Latency, side by side in one process: on every 8th question where the models' answers differ, the
    time to answer it alone, then of the batched yes/no pass and of the likelihood pass over the two answers
    (fresh judges, nothing cached), interleaved so the load of a shared machine falls on all three alike."""
    from peers.judge import VerifyingJudge
    from peers.llm import Generator, default_cache_dir, resolve_model

    questions = load_questions()[:limit]
    answers = {m: json.loads(_part(path, "answers", m).read_text()) for m in MODELS}
    g = Generator.load(resolve_model(model), default_cache_dir(), threads=threads)
    g.generate("What is 1 + 1?", 2)
    VerifyingJudge(g).yes_scores("What is 1 + 1?", ["2"])
    out = []
    for q in [q for q in questions if answers[MODELS[0]][q.id]["text"] != answers[MODELS[1]][q.id]["text"]][::8]:
        split = [answers[m][q.id]["text"] for m in MODELS]
        t0 = time.monotonic()
        g.generate(q.question, MAX_NEW_TOKENS)
        t1 = time.monotonic()
        VerifyingJudge(g).yes_scores(q.question, split)
        t2 = time.monotonic()
        g.answer_logprobs(q.question, split)
        t3 = time.monotonic()
        out.append({"id": q.id, "answer_s": round(t1 - t0, 4), "yes_s": round(t2 - t1, 4), "lp_s": round(t3 - t2, 4)})
        print(f"{model} timed {q.id} {out[-1]}", file=sys.stderr, flush=True)
    _part(path, "times", model).write_text(json.dumps(out) + "\n")


def record_merge(path: Path, limit: int | None) -> None:
    """Stage 3: merge the parts, add MiniLM relevance and similarities, write ``path``."""
    from peers.embedder import Embedder

    questions = load_questions()[:limit]
    every = load_questions()
    answers = {m: json.loads(_part(path, "answers", m).read_text()) for m in MODELS}
    judged = {m: json.loads(_part(path, "judge", m).read_text()) for m in MODELS}
    rows: list[dict[str, Any]] = []
    for q in questions:
        row: dict[str, Any] = {"id": q.id, "question": q.question, "topic": q.topic, "gold": q.answers[0],
                               "other": other_answer(q, every)}
        row["answers"] = {m: answers[m][q.id] for m in MODELS}
        if all(q.id in judged[m] for m in MODELS):  # (a partial record: some questions not judged yet)
            for m in MODELS:
                own = answers[m][q.id]["text"]
                row["answers"][m]["logprob"] = judged[m][q.id]["lp"][own]
            for key in ("yes", "lp", "judge_s", "lp_s"):
                row[key] = {m: judged[m][q.id][key] for m in MODELS}
        rows.append(row)
    embedder = Embedder.load()
    for row in rows:
        texts = list(dict.fromkeys([*(row["answers"][m]["text"] for m in MODELS), row["gold"], row["other"]]))
        emb = embedder.embed([row["question"], *texts])
        cos = (emb[1:] @ emb[0]).tolist()
        row["relevance"] = {t: round(float(c), 4) for t, c in zip(texts, cos, strict=True)}
    add_similarities(rows)
    times = {m: json.loads(_part(path, "times", m).read_text()) for m in MODELS
             if _part(path, "times", m).exists()}
    out = {"models": list(MODELS), "max_new_tokens": MAX_NEW_TOKENS, "times": times,
           "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "questions": rows}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"recorded {len(rows)} questions to {path}", file=sys.stderr)


def record(path: Path, threads: int, limit: int | None) -> None:
    """All three stages, the two models' stages in parallel processes (one torch thread each)."""
    import subprocess

    def stage(name: str) -> list[subprocess.Popen[bytes]]:
        return [subprocess.Popen([sys.executable, __file__, "--stage", name, "--model", m, "--file", str(path),
                                  "--threads", str(threads), *(["--limit", str(limit)] if limit else [])])
                for m in MODELS]

    path.parent.mkdir(parents=True, exist_ok=True)
    for name in ("answers", "judge", "times"):
        if name == "answers" and all(_part(path, name, m).exists() for m in MODELS):
            continue  # resume: answers are recorded, judging resumes where it stopped
        if any(p.wait() != 0 for p in stage(name)):
            raise SystemExit(f"stage {name} failed")
    record_merge(path, limit)


def add_similarities(rows: list[dict[str, Any]]) -> None:
    """Each row's ``texts`` (SmolLM2's, Gemma-3's answers and ``other``) and ``sims`` among them, as
    :meth:`peers.engine.ModelEngine.similarities` computes them (MiniLM cosine and key terms, per mille)."""
    from peers.embedder import Embedder
    from peers.engine import ModelEngine

    engine = ModelEngine.__new__(ModelEngine)
    engine._embedder = Embedder.load()  # similarities need no generator
    for row in rows:
        texts = [row["answers"][m]["text"] for m in MODELS] + [row["other"]]
        row["texts"] = texts
        row["sims"] = engine.similarities(row["question"], texts)


# --- offline measurement ---------------------------------------------------------------------------

SMOL, GEMMA, COLLUDER = 0, 1, 2  # indices into a row's "texts"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def clamp(v: float) -> int:
    return max(-MAX_VERDICT, min(MAX_VERDICT, round(v)))


def complete(row: dict[str, Any]) -> bool:
    """Whether every model judged every text of ``row`` (a partial record judges the answers first)."""
    return "yes" in row and all(row["question"] in row["yes"][m] and row["other"] in row["lp"][m] for m in MODELS)


class Calibration:
    """Per-model yes-thresholds fitted on the other half of the questions (2-fold by position)."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.threshold: dict[tuple[str, int], float] = {}
        for m in MODELS:
            for fold in (0, 1):
                fit = [r for k, r in enumerate(rows) if k % 2 != fold and complete(r)]
                right = [r["yes"][m][r["gold"]] for r in fit]
                wrong = [r["yes"][m][r["other"]] for r in fit]
                self.threshold[(m, fold)] = (statistics.mean(right) + statistics.mean(wrong)) / 2 if fit else 500.0

    def of(self, model: str, index: int) -> float:
        return self.threshold[(model, index % 2)]


def judge_signal(kind: str, row: dict[str, Any], index: int, model: str, text: str, cal: Calibration
                 ) -> int | None:
    """Judge ``model``'s calibrated per-mille verdict on ``text`` by mechanism ``kind`` (``None``: the
    question was not judged, in a partial record)."""
    own = row["answers"][model]["text"]
    if kind == "lp-minus-own":  # (a record without the yes/no pass still has the likelihoods)
        lp = row.get("lp", {}).get(model, {})
        return clamp(1000 * (lp[text] - lp[own])) if text in lp and own in lp else None
    if "yes" not in row:
        return None
    yes = row["yes"][model]
    if text not in yes or (kind == "yes-minus-echo" and row["question"] not in yes):
        return None
    if kind == "yes-raw":
        return clamp(2 * (yes[text] - 500))
    if kind == "yes-model-threshold":
        return clamp(2 * (yes[text] - cal.of(model, index)))
    if kind == "yes-minus-echo":
        return clamp(2 * (yes[text] - yes[row["question"]]) * 10)
    if kind == "yes-minus-own":
        return clamp(2 * (yes[text] - yes[own]) * 10)
    raise ValueError(kind)


def content_split(own: list[tuple[str, float]], text: list[tuple[str, float]]
                  ) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """The tokens of ``own`` and ``text`` (``(token, log-probability)`` under one model) that the two do not
    share: their longest common leading and trailing token runs (by token, e.g. "The capital of X is" and
    the final ".") are removed from both. Either part may be empty (one text is the other plus words)."""
    n = min(len(own), len(text))
    head = 0
    while head < n and own[head][0] == text[head][0]:
        head += 1
    tail = 0
    while tail < n - head and own[-1 - tail][0] == text[-1 - tail][0]:
        tail += 1
    return own[head:len(own) - tail], text[head:len(text) - tail]


def content_gap(own: list[tuple[str, float]], text: list[tuple[str, float]]) -> float:
    """The content likelihood gap (nats) of ``text`` against the judge's ``own`` answer: the summed
    log-probability of ``text``'s tokens not shared with ``own`` minus that of ``own``'s tokens not shared
    with ``text`` (:func:`content_split`), each under the judge's answer prompt; 0 when either has no token
    of its own (one restates the other, or they are equal). The shared leading tokens would cancel anyway
    (same tokens, same context); dropping the shared trailing ones (a final ".") keeps the frame's
    punctuation after a differently styled answer from counting."""
    a, b = content_split(own, text)
    if not a or not b:
        return 0.0
    return sum(v for _, v in b) - sum(v for _, v in a)


CONTENT_NATS = 6.0
"""Nats of content gap per full-scale verdict: -1000 per mille is 6 nats less likely than the judge's own
answer's content, so ADR 0022's margin 500 rejects at 3 nats (fitted on the shipped set, ADR 0022 addendum)."""


def content_verdict(own: list[tuple[str, float]], text: list[tuple[str, float]]) -> int:
    """Judge's per-mille verdict on ``text`` from the content gap: ``clamp(round(1000 * gap / CONTENT_NATS))``."""
    return clamp(1000 * content_gap(own, text) / CONTENT_NATS)


JUDGES = ("yes-raw", "yes-model-threshold", "yes-minus-echo", "yes-minus-own", "lp-minus-own")


@dataclass(frozen=True)
class Mechanism:
    name: str
    judge: str | None = None
    relevance_floor: int | None = None
    confidence: bool = False
    margin: int = 0
    rule: str = "mean"


def peers_of(smol: int, gemma: int, colluders: int = 0) -> list[int]:
    """Which text each peer gives: SmolLM2 and Gemma-3 alternate (as in bench/accuracy.py), colluders last."""
    out = [SMOL if i % 2 == 0 else GEMMA for i in range(2 * min(smol, gemma))]
    out += [SMOL] * (smol - min(smol, gemma)) + [GEMMA] * (gemma - min(smol, gemma)) + [COLLUDER] * colluders
    return out


Verdict = Callable[[dict[str, Any], str, str], int]
"""A custom judge signal: (row, judge model, judged text) -> per-mille verdict."""


def decision_inputs(row: dict[str, Any], index: int, peers: list[int], mech: Mechanism, cal: Calibration,
                    verdict: Verdict | None = None, judge_colluders: bool = True) -> dict[str, Any]:
    texts = [row["texts"][p] for p in peers]
    n = len(peers)
    full = row["sims"]  # among the 3 distinct texts

    def sim(a: int, b: int) -> int:
        return 1000 if a == b else full[pair_index(3, a, b)]

    sims = [sim(peers[i], peers[j]) for i in range(n) for j in range(i + 1, n)]
    kw: dict[str, Any] = {"eligible": grouping.eligibility(row["question"], texts)}
    if mech.relevance_floor is not None:
        kw["relevance"] = [round(1000 * row["relevance"][t]) for t in texts]
        kw["relevance_floor"] = mech.relevance_floor
    if mech.confidence:
        # colluders claim full confidence: the signal is self-reported
        kw["confidence"] = [0 if p == COLLUDER else round(1000 * row["answers"][MODELS[p]].get("logprob", 0))
                            for p in peers]
    if mech.judge is not None:
        verdicts: list[list[int | None]] = []
        for p in peers:
            if p == COLLUDER:
                verdicts.append([None if q == COLLUDER or ("lp" not in row and verdict is None) else -MAX_VERDICT
                                 for q in peers])
            elif verdict is not None:
                verdicts.append([None if q == COLLUDER and not judge_colluders
                                 else verdict(row, MODELS[p], row["texts"][q]) for q in peers])
            else:
                verdicts.append([judge_signal(mech.judge, row, index, MODELS[p], row["texts"][q], cal)
                                 for q in peers])
        kw["verdicts"] = verdicts
        kw["margin"] = mech.margin
        kw["rule"] = mech.rule
    return {"texts": texts, "sims": sims, "kw": kw}


def decide_one(row: dict[str, Any], index: int, peers: list[int], weights: list[int], mech: Mechanism,
               cal: Calibration, threshold: int, verdict: Verdict | None = None, judge_colluders: bool = True
               ) -> tuple[int, Any]:
    """(index of the winning representative, the decision's group) for one question."""
    d = decision_inputs(row, index, peers, mech, cal, verdict, judge_colluders)
    if mech.name == "WBFT today":
        g = grouping.choose(weights, d["sims"], threshold, d["kw"]["eligible"])
    else:
        g = decide(weights, d["sims"], threshold, **d["kw"]).group
    return g.representative, g


def run(rows: list[dict[str, Any]], peers: list[int], mech: Mechanism, cal: Calibration, *, adaptive: bool,
        threshold: int = 800, verdict: Verdict | None = None, judge_colluders: bool = True) -> dict[str, Any]:
    """Decide every question in order; with ``adaptive``, the real weight rule folds every honest
    peer's score vector (and the colluders' 1000-for-us vectors) of height h at h + 1. ``verdict``: a
    custom judge signal (``mech.judge`` is then only a label); ``judge_colluders=False``: honest judges give
    no verdict on the colluders' answer (the worst case for the rule)."""
    n = len(peers)
    keys = sim_keys(n)
    base = ValidatorSet(Validator(k.peer_id, k.public_key, 1, f"p{i}") for i, k in enumerate(keys))
    ids = base.ids
    params = WeightParams.default()
    state = WeightState.genesis(base, params)
    pending: list[ScoreVector] = []
    right = 0
    right_ids: list[str] = []
    shares: list[float] = []
    for h, (k, row) in enumerate(enumerate(rows), start=1):
        vs = state.validator_set(base, h) if adaptive else base
        if adaptive and pending:
            state = update(state, vs, pending, [], height=h, params=params)
            vs = state.validator_set(base, h)
        weights = [vs.weight_of(i) for i in ids]
        total = sum(weights)
        shares.append(sum(w for w, p in zip(weights, peers) if p == COLLUDER) / total)
        rep, group = decide_one(row, k, peers, weights, mech, cal, threshold, verdict, judge_colluders)
        text = row["texts"][peers[rep]]
        ok = text == row["texts"][SMOL] and row["answers"]["smollm2"]["correct"] or \
            text == row["texts"][GEMMA] and row["answers"]["gemma3"]["correct"]
        right += ok
        if ok:
            right_ids.append(row["id"])
        if adaptive:
            d = decision_inputs(row, k, peers, Mechanism("plain"), cal)
            honest = score_answers(ids, d["sims"], group.members, d["kw"]["eligible"])
            qid = hashlib.sha256(row["question"].encode()).digest()
            pending = []
            for i, p in enumerate(peers):
                scores = honest if p != COLLUDER else tuple(
                    (ids[j], 1000 if peers[j] == COLLUDER else 0) for j in range(n))
                pending.append(ScoreVector(scorer=ids[i], height=h, query_id=qid, scores=tuple(sorted(scores))))
    return {"right": right, "right_ids": right_ids, "shares": shares}


MECHANISMS = (
    Mechanism("WBFT today"),
    Mechanism("confidence (tie only)", confidence=True),
    *(Mechanism(f"relevance floor {f}", relevance_floor=f) for f in (200, 300, 400)),
    *(Mechanism(f"judge {j}, {rule}", judge=j, rule=rule) for rule in RULES for j in JUDGES),
    *(Mechanism(f"judge lp-minus-own, veto, margin {m}", judge="lp-minus-own", rule="veto", margin=m)
      for m in (250, 500, 1000)),
    Mechanism("judge lp-minus-own, veto, margin 500 + confidence", judge="lp-minus-own", rule="veto", margin=500,
              confidence=True),
    Mechanism("judge lp-minus-own, veto, margin 500 + relevance 300", judge="lp-minus-own", rule="veto",
              margin=500, relevance_floor=300),
)


def judge_accuracy(rows: list[dict[str, Any]], cal: Calibration) -> list[dict[str, Any]]:
    """Per judge model: on the split questions (exactly one model right), does the calibrated verdict on
    the *other* model's answer (recusal) say right when it is right and wrong when it is wrong; and on
    every question, is the gold alias judged above the known-wrong ``other`` answer."""
    out = []
    splits = [(k, r) for k, r in enumerate(rows)
              if r["answers"]["smollm2"]["correct"] != r["answers"]["gemma3"]["correct"] and ("yes" in r or "lp" in r)]
    judged = [(k, r) for k, r in enumerate(rows) if complete(r)]
    for m in MODELS:
        other_model = MODELS[1 - MODELS.index(m)]
        for kind in JUDGES:
            tally = {True: [0, 0], False: [0, 0]}  # is the other answer right -> [verdicts saying so, cases]
            for k, r in splits:
                v = judge_signal(kind, r, k, m, r["answers"][other_model]["text"], cal)
                ok = r["answers"][other_model]["correct"]
                tally[ok][1] += 1
                tally[ok][0] += v is not None and (v > 0) == ok
            pair = 0
            for k, r in judged:
                gold, other = (judge_signal(kind, r, k, m, r[t], cal) for t in ("gold", "other"))
                pair += gold is not None and other is not None and gold > other
            out.append({"judge": m, "signal": kind, "splits": len(splits),
                        "right_accepted": tally[True][0], "right": tally[True][1],
                        "wrong_rejected": tally[False][0], "wrong": tally[False][1],
                        "gold_over_other": pair, "questions": len(judged)})
    return out


def reachable(rows: list[dict[str, Any]]) -> int:
    return sum(any(r["answers"][m]["correct"] for m in MODELS) for r in rows)


def tables(data: dict[str, Any]) -> dict[str, Any]:
    rows = data["questions"]
    cal = Calibration(rows)
    n = len(rows)
    alone = {m: sum(r["answers"][m]["correct"] for r in rows) for m in MODELS}
    ceiling = sum(any(r["answers"][m]["correct"] for m in MODELS) for r in rows)
    splits = sum(r["answers"]["smollm2"]["correct"] != r["answers"]["gemma3"]["correct"] for r in rows)
    committees = {"4 peers (2+2)": peers_of(2, 2), "6 peers (3+3)": peers_of(3, 3),
                  "6 peers (2+2, 2 colluders)": peers_of(2, 2, 2)}
    # Colluders answer ``other`` (a plausible wrong answer) and give every honest answer -1000; where the
    # record has no honest verdict on ``other`` the judges give none (the worst case for the rule).
    decided = []
    for mech in MECHANISMS:
        for cname, peers in committees.items():
            for adaptive in (False, True):
                on = rows
                res = run(on, peers, mech, cal, adaptive=adaptive)
                decided.append({"mechanism": mech.name, "committee": cname, "questions": len(on),
                                "reachable": reachable(on), "weights": "adaptive" if adaptive else "equal",
                                "right": res["right"], "colluder_share_end": round(res["shares"][-1], 3) if res["shares"] else None})
    majority = {c: run(rows, p, Mechanism("WBFT today"), cal, adaptive=False)["right"]
                for c, p in committees.items()}  # one peer one vote: equal weights, the grouping rule
    return {"questions": n, "alone": alone, "ceiling": ceiling, "splits": splits, "majority": majority,
            "thresholds": {f"{m}/fold{f}": round(t, 1) for (m, f), t in cal.threshold.items()},
            "decided": decided, "judges": judge_accuracy(rows, cal), "latency": latency(data.get("times", {}))}


def latency(times: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Query latency without and with a judging pass, in seconds, from the side-by-side timings.

    A query waits for a quorum of answers, so its time is the slower model's answer; on a question
    where the answers differ every judge scores them in one batched pass, all judges in parallel on their
    own peers, so the added time is the slower judge's pass. Unanimous queries need no judge: the
    figures here are for the split queries, the worst case."""
    if set(times) != set(MODELS):
        return {}
    by_q = {m: {t["id"]: t for t in times[m]} for m in MODELS}
    ids = [i for i in by_q[MODELS[0]] if i in by_q[MODELS[1]]]
    base = [max(by_q[m][i]["answer_s"] for m in MODELS) for i in ids]
    out: dict[str, Any] = {"queries": len(ids), "answer_p50_s": round(percentile(base, 0.5), 3)}
    for key in ("yes_s", "lp_s"):
        added = [max(by_q[m][i][key] for m in MODELS) for i in ids]
        after = [b + a for b, a in zip(base, added)]
        out[key] = {"pass_p50_s": round(percentile(added, 0.5), 3), "query_p50_s": round(percentile(after, 0.5), 3),
                    "p50_growth": round(percentile(after, 0.5) / percentile(base, 0.5) - 1, 3)}
    return out


def markdown(t: dict[str, Any]) -> str:
    n, ceiling = t["questions"], t["ceiling"]
    lines = [f"{n} questions; SmolLM2 alone {t['alone']['smollm2']}, Gemma-3 alone {t['alone']['gemma3']}, "
             f"some honest peer right (ceiling) {ceiling}, the models disagree on correctness in {t['splits']}.",
             "", "Questions decided right (share of the reachable ones, those some honest peer got right):", ""]
    cols = list(dict.fromkeys((d["committee"], d["weights"]) for d in t["decided"]))
    lines += ["| mechanism | " + " | ".join(f"{c}, {w} weights" for c, w in cols) + " |",
              "|---|" + "---:|" * len(cols)]
    reach = {(d["committee"], d["weights"]): d["reachable"] for d in t["decided"]}
    count = {d["committee"]: d["questions"] for d in t["decided"]}
    lines.append("| questions (reachable) | " + " | ".join(f"{count[c]} ({reach[(c, w)]})" for c, w in cols) + " |")
    lines.append("| majority (1 peer = 1 vote) | " + " | ".join(
        f"{t['majority'][c]} ({t['majority'][c] / max(1, reach[(c, w)]):.0%})" if w == "equal" else "" for c, w in cols)
        + " |")
    for mech in dict.fromkeys(d["mechanism"] for d in t["decided"]):
        cells = {(d["committee"], d["weights"]): d["right"] for d in t["decided"] if d["mechanism"] == mech}
        lines.append(f"| {mech} | " + " | ".join(f"{cells[c]} ({cells[c] / max(1, reach[c]):.0%})" for c in cols) + " |")
    lines += ["", "Judges on the split questions, judging the other model's answer (recusal): right answers "
              "accepted (verdict > 0), wrong ones rejected; and the first alias scored above a wrong alias:", "",
              "| judge | signal | right accepted | wrong rejected | balanced | gold over a wrong answer |",
              "|---|---|---:|---:|---:|---:|"]
    for j in t["judges"]:
        bal = (j["right_accepted"] / max(1, j["right"]) + j["wrong_rejected"] / max(1, j["wrong"])) / 2
        lines.append(f"| {j['judge']} | {j['signal']} | {j['right_accepted']} / {j['right']} "
                     f"| {j['wrong_rejected']} / {j['wrong']} | {bal:.0%} | {j['gold_over_other']} / {j['questions']} |")
    lat = t["latency"]
    if lat:
        lines += ["", f"Latency of the split queries ({lat['queries']} timed side by side):", "",
                  "| judge pass | query p50 before | pass p50 | query p50 after | growth |", "|---|---:|---:|---:|---:|"]
        for key, label in (("yes_s", "yes/no verification"), ("lp_s", "answer likelihood")):
            lines.append(f"| {label} | {lat['answer_p50_s']} s | {lat[key]['pass_p50_s']} s "
                         f"| {lat[key]['query_p50_s']} s | {100 * lat[key]['p50_growth']:+.0f}% |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="ask the real models again (slow)")
    parser.add_argument("--file", type=Path, default=RECORD)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per model process")
    parser.add_argument("--stage", choices=("answers", "judge", "times", "merge"), help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=MODELS, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the tables as JSON here")
    parser.add_argument("--resim", action="store_true", help="recompute the recorded answers' similarities")
    parser.add_argument("--limit", type=int, help="only the first N questions (recording)")
    args = parser.parse_args()
    if args.stage == "answers":
        record_answers(args.file, args.model, args.threads, args.limit)
        return
    if args.stage == "judge":
        record_judge(args.file, args.model, args.threads, args.limit)
        return
    if args.stage == "times":
        record_times(args.file, args.model, args.threads, args.limit)
        return
    if args.stage == "merge":
        record_merge(args.file, args.limit)
        return
    if args.record:
        record(args.file, args.threads, args.limit)
        return
    data = json.loads(args.file.read_text())
    if args.resim:
        add_similarities(data["questions"])
        args.file.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    result = tables(data)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
