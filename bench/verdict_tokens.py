"""Per-token log-probabilities for the judge signals of issue 15 (phase 2): record once, measure offline.

ADR 0022's likelihood-gap judge uses each text's *mean* token
log-probability under the judge's answering prompt. To try other signals
within the same verdict shape without a model pass each (content tokens
only, sum, minimum, pointwise mutual information with the question, another
prompt), this records every token's log-probability, for every text of a
question (both models' answers, the first accepted alias ``gold`` and the
known-wrong ``other``), under three conditions per model:

* ``answer``: the model's own answer prompt for the question (chat template
  or few-shot, exactly :meth:`peers.llm.Generator.answer_logprobs`'s input;
  the mean over its tokens equals that method within float rounding);
* ``null``: the same prompt for the content-free question ``NULL_QUESTION``
  (what the model says whatever the question: the baseline of a PMI signal);
* ``plain``: ``Question: ...\\nAnswer:`` with no examples and no template
  (a verification-style framing).

It also answers a question file with both models, as peers do, for a
second, held-out set (``--questions``): the answers go to a record in the
format of ``bench/verdicts.py``'s (texts, grading, MiniLM similarities and
relevance, ``lp`` the mean of the ``answer`` condition), so its tables run
on it unchanged.

    # the shipped set's texts (answers from bench/results/verdicts-answers.json)
    flock /tmp/m/heavy.lock nice -n 5 .venv/bin/python bench/verdict_tokens.py \\
        --out bench/results/verdicts-tokens-2026-11-30.json
    # the held-out set: answers, then tokens, then the record
    flock /tmp/m/heavy.lock nice -n 5 .venv/bin/python bench/verdict_tokens.py \\
        --questions bench/data/verdicts-heldout-questions.json \\
        --answers bench/results/verdicts-heldout-answers-2026-11-30.json \\
        --out bench/results/verdicts-heldout-tokens-2026-11-30.json

Each model runs in its own process with one torch thread; the two run in
parallel (2 cores).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from multillmn.questions import Question, is_correct  # noqa: E402

MODELS = ("smollm2", "gemma3")
CONDITIONS = ("answer", "null", "plain")
NULL_QUESTION = "What is it?"
MAX_NEW_TOKENS = 48
SHIPPED_RECORD = Path(__file__).resolve().parent / "results" / "verdicts-answers.json"


def read_questions(path: Path | None) -> list[Question]:
    """The questions of ``path`` (the shipped set's format), or the shipped set."""
    if path is None:
        from multillmn.questions import load_questions

        return load_questions()
    raw = json.loads(path.read_text(encoding="utf-8"))
    return [Question(q["id"], q["question"], tuple(q["answers"]), q["topic"]) for q in raw]


def other_answer(q: Question, questions: list[Question]) -> str:
    """As ``bench/verdicts.py``: the first alias of another question of the same topic, by the question's id."""
    others = sorted({o.answers[0] for o in questions if o.topic == q.topic and q.answers[0] != o.answers[0]
                     and not is_correct(q, o.answers[0])})
    return random.Random(q.id).choice(others)


def texts_of(q: Question, answers: dict[str, str], questions: list[Question]) -> list[str]:
    return list(dict.fromkeys([*(answers[m] for m in MODELS), q.answers[0], other_answer(q, questions)]))


def token_logprobs(g: Any, prompt: list[int], answers: list[str]) -> list[list[tuple[str, float]]]:
    """Every token of each answer with its log-probability after ``prompt``, in one left-padded pass that
    computes the vocabulary head only at the answers' positions."""
    import torch

    conts = [g._continuation(a) for a in answers]
    rows = [prompt + c for c in conts]
    width = max(len(r) for r in rows)
    keep = max(len(c) for c in conts) + 1
    ids = torch.tensor([[g._pad_id] * (width - len(r)) + r for r in rows], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        logits = g.model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
    out = []
    for r, cont in enumerate(conts):
        k = len(cont)
        step = logits[r, keep - 1 - k:keep - 1].float()
        lp = torch.log_softmax(step, dim=-1)[torch.arange(k), torch.tensor(cont)]
        out.append([(g.tokenizer.decode([t]), round(float(v), 5)) for t, v in zip(cont, lp.tolist(), strict=True)])
    return out


def prompt_ids(g: Any, condition: str, question: str) -> list[int]:
    if condition == "answer":
        return list(g._judge_prompt(question))
    if condition == "null":
        return list(g._judge_prompt(NULL_QUESTION))
    text = f"Question: {' '.join(question.split())}\nAnswer:"
    return list(g.tokenizer(text, add_special_tokens=True)["input_ids"])


def _part(out: Path, model: str, stage: str) -> Path:
    return out.with_name(f"{out.stem}.{model}.{stage}.json")


def stage_answers(questions: list[Question], model: str, out: Path) -> None:
    """The model's greedy answers as a peer gives them (batches of 8, 48 new tokens)."""
    from peers.llm import Generator, default_cache_dir, resolve_model

    g = Generator.load(resolve_model(model), default_cache_dir(), threads=1)
    g.generate("What is 1 + 1?", 2)
    answers: dict[str, dict[str, Any]] = {}
    for i in range(0, len(questions), 8):
        batch = questions[i:i + 8]
        for q, gen in zip(batch, g.generate_batch([q.question for q in batch], MAX_NEW_TOKENS), strict=True):
            answers[q.id] = {"text": gen.text, "correct": is_correct(q, gen.text), "tokens": gen.new_tokens}
            print(f"{model} {q.id} {'ok ' if answers[q.id]['correct'] else 'BAD'} {gen.text!r}", file=sys.stderr,
                  flush=True)
    _part(out, model, "answers").write_text(json.dumps(answers, ensure_ascii=False) + "\n")


def stage_tokens(questions: list[Question], answers: dict[str, dict[str, str]], model: str, out: Path) -> None:
    """Every text's token log-probabilities under each condition; checks the ``answer`` condition's mean
    against :meth:`Generator.answer_logprobs` on every 16th question."""
    from peers.llm import Generator, default_cache_dir, resolve_model

    g = Generator.load(resolve_model(model), default_cache_dir(), threads=1)
    part = _part(out, model, "tokens")
    done: dict[str, Any] = json.loads(part.read_text()) if part.exists() else {}
    t_all = time.monotonic()
    for k, q in enumerate(questions):
        if q.id in done:
            continue
        texts = texts_of(q, answers[q.id], questions)
        row: dict[str, Any] = {}
        for cond in CONDITIONS:
            toks = token_logprobs(g, prompt_ids(g, cond, q.question), texts)
            row[cond] = dict(zip(texts, toks, strict=True))
        if k % 16 == 0:
            ref = g.answer_logprobs(q.question, texts)
            for t, r in zip(texts, ref, strict=True):
                mean = sum(v for _, v in row["answer"][t]) / len(row["answer"][t])
                assert abs(mean - r) < 2e-3, (model, q.id, t, mean, r)
        done[q.id] = row
        part.write_text(json.dumps(done, ensure_ascii=False) + "\n")
        print(f"{model} tokens {q.id} ({time.monotonic() - t_all:.0f} s)", file=sys.stderr, flush=True)


def _stage(name: str, args: argparse.Namespace) -> None:
    procs = [subprocess.Popen([sys.executable, __file__, "--stage", name, "--model", m, "--out", str(args.out),
                               *(["--questions", str(args.questions)] if args.questions else []),
                               *(["--answers", str(args.answers)] if args.answers else [])]) for m in MODELS]
    if any(p.wait() != 0 for p in procs):
        raise SystemExit(f"stage {name} failed")


def answers_of(args: argparse.Namespace, questions: list[Question]) -> dict[str, dict[str, str]]:
    """{question id: {model: answer text}}: from the shipped record, or from this run's answer stage."""
    if args.questions is None:
        rows = json.loads(SHIPPED_RECORD.read_text())["questions"]
        return {r["id"]: {m: r["answers"][m]["text"] for m in MODELS} for r in rows}
    parts = {m: json.loads(_part(args.out, m, "answers").read_text()) for m in MODELS}
    return {q.id: {m: parts[m][q.id]["text"] for m in MODELS} for q in questions}


def merge(args: argparse.Namespace, questions: list[Question]) -> None:
    tokens = {m: json.loads(_part(args.out, m, "tokens").read_text()) for m in MODELS}
    out = {"models": list(MODELS), "conditions": list(CONDITIONS), "null_question": NULL_QUESTION,
           "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "questions": {q.id: {m: tokens[m][q.id] for m in MODELS} for q in questions}}
    args.out.write_text(json.dumps(out, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    if args.answers is not None:
        write_answer_record(args, questions)


def write_answer_record(args: argparse.Namespace, questions: list[Question]) -> None:
    """A record in ``bench/verdicts.py``'s format for a new question set (no yes/no judge pass)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from verdicts import add_similarities

    from peers.embedder import Embedder

    parts = {m: json.loads(_part(args.out, m, "answers").read_text()) for m in MODELS}
    tokens = json.loads(args.out.read_text())["questions"]
    rows: list[dict[str, Any]] = []
    embedder = Embedder.load()
    for q in questions:
        other = other_answer(q, questions)
        row: dict[str, Any] = {"id": q.id, "question": q.question, "topic": q.topic, "gold": q.answers[0],
                               "other": other, "answers": {m: dict(parts[m][q.id]) for m in MODELS}}
        row["lp"] = {m: {t: round(sum(v for _, v in toks) / len(toks), 5)
                         for t, toks in tokens[q.id][m]["answer"].items()} for m in MODELS}
        for m in MODELS:
            row["answers"][m]["logprob"] = row["lp"][m][row["answers"][m]["text"]]
        texts = list(dict.fromkeys([*(row["answers"][m]["text"] for m in MODELS), row["gold"], other]))
        emb = embedder.embed([q.question, *texts])
        row["relevance"] = {t: round(float(c), 4) for t, c in zip(texts, (emb[1:] @ emb[0]).tolist(), strict=True)}
        rows.append(row)
    add_similarities(rows)
    data = {"models": list(MODELS), "max_new_tokens": MAX_NEW_TOKENS, "times": {},
            "questions_file": str(args.questions), "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "questions": rows}
    args.answers.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.answers}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=Path, help="a question file (default: the shipped set)")
    parser.add_argument("--answers", type=Path, help="with --questions: write the answer record here")
    parser.add_argument("--out", type=Path, required=True, help="the token record")
    parser.add_argument("--stage", choices=("answers", "tokens"), help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=MODELS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    questions = read_questions(args.questions)
    if args.stage == "answers":
        stage_answers(questions, args.model, args.out)
        return
    if args.stage == "tokens":
        stage_tokens(questions, answers_of(args, questions), args.model, args.out)
        return
    if args.questions is not None and not all(_part(args.out, m, "answers").exists() for m in MODELS):
        _stage("answers", args)
    _stage("tokens", args)
    merge(args, questions)


if __name__ == "__main__":
    main()
