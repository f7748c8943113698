"""How often each bundled model, as a judge, picks the correct of two answers.

For the first ``--questions`` questions of the shipped set, the first alias
is pitted against the first alias of another question of the same topic
(a plausible wrong answer), in both orders, by two methods:

* ``likelihood`` (what peers use, :class:`peers.judge.LLMJudge`): the answer
  with the higher mean token log-probability as the model's reply wins;
  the MT-Bench rule over both orders gives correct / tie / wrong;
* ``ab-prompt`` (rejected, ADR 0009): a few-shot "Answer A / Answer B,
  Correct answer:" prompt; the logit gap between "A" and "B" is averaged
  over both orders, which cancels a constant position bias.

    .venv/bin/python bench/judge_accuracy.py --questions 40
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from multillmn.questions import load_questions  # noqa: E402
from peers.judge import LLMJudge, judge_pair  # noqa: E402
from peers.llm import Generator, default_cache_dir, resolve_model  # noqa: E402

EXAMPLES = (
    ("What is the capital of Italy?", "Rome", "Milan", "A"),
    ("How many legs does a dog have?", "three", "four", "B"),
    ("Who wrote Pride and Prejudice?", "Charles Dickens", "Jane Austen", "B"),
    ("What is the chemical symbol for silver?", "Ag", "Si", "A"),
)


def ab_prompt(question: str, first: str, second: str) -> str:
    def block(q: str, a: str, b: str) -> str:
        return f"Question: {q}\nAnswer A: {a}\nAnswer B: {b}\nCorrect answer:"

    return "".join(f"{block(q, a, b)} {label}\n\n" for q, a, b, label in EXAMPLES) + block(question, first, second)


def ab_gap(g: Generator, prompt: str) -> float:
    """logit("A") - logit("B") for the next token, best spelling of each (with or without a space)."""
    ids = g.tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        logits = g.model(input_ids=ids).logits[0, -1]

    def best(label: str) -> float:
        return max(float(logits[g.tokenizer.encode(f, add_special_tokens=False)[0]]) for f in (label, " " + label))

    return best("A") - best("B")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=40)
    parser.add_argument("--models", default="smollm2,gemma3")
    args = parser.parse_args()
    questions = load_questions()[: args.questions]
    rng = random.Random(1)
    pairs = []
    for q in questions:
        others = [o.answers[0] for o in load_questions() if o.topic == q.topic and o.answers[0] != q.answers[0]]
        pairs.append((q.question, q.answers[0], rng.choice(others)))
    rows = []
    for name in args.models.split(","):
        g = Generator.load(resolve_model(name), default_cache_dir(), threads=2)
        judge = LLMJudge(g)
        t0 = time.monotonic()
        tally = {"correct": 0, "tie": 0, "wrong": 0}
        for question, right, wrong in pairs:
            winner = judge_pair(judge, question, "right", right, "wrong", wrong).winner()
            tally["correct" if winner == "right" else "tie" if winner is None else "wrong"] += 1
        likelihood_s = time.monotonic() - t0
        ab = {"correct": 0, "wrong": 0}
        for question, right, wrong in pairs:
            gap = (ab_gap(g, ab_prompt(question, right, wrong)) - ab_gap(g, ab_prompt(question, wrong, right))) / 2
            ab["correct" if gap > 0 else "wrong"] += 1
        rows.append({"model": name, "pairs": len(pairs), "likelihood": tally,
                     "likelihood_ms_per_pair": round(1000 * likelihood_s / len(pairs)), "ab_prompt_debiased": ab})
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
