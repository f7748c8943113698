"""What skipping the output head for a batch's finished rows saves (ADR 0019, addendum 3).

One process, one torch thread, each bundled model: two batches of 16 shipped questions (every 8th
from the first and from the fourth), each answered with the skip and without it (the model's head
handed to ``generate`` unwrapped), in alternating order; prints the wall times, the tokens, the
share of the batch's row-steps that made a token, and whether both gave the same answers.

    flock /tmp/m/heavy.lock nice -n 5 .venv/bin/python bench/head_skip.py gemma3 smollm2
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(models: list[str]) -> int:
    from multillmn.questions import load_questions
    from peers.llm import Generator, default_cache_dir, resolve_model

    questions = [q.question for q in load_questions()]
    for name in models:
        gen = Generator.load(resolve_model(name), default_cache_dir(), threads=1)
        gen.generate(questions[0], 4)  # the shared prefix, computed once
        head = gen.model.get_output_embeddings
        for rep, batch in enumerate([questions[::8], questions[3::8]]):
            answers = {}
            for skip in ((True, False) if rep == 0 else (False, True)):
                gen.model.get_output_embeddings = head if skip else (lambda: None)  # None: no head swap
                t0 = time.perf_counter()
                out = gen.generate_batch(batch, 48)
                seconds = time.perf_counter() - t0
                answers[skip] = [(g.text, g.new_tokens) for g in out]
                tokens = [g.new_tokens for g in out]
                print(f"{name} {'skip' if skip else 'full'} batch {rep}: {seconds:.2f} s, {sum(tokens)} tokens, "
                      f"longest {max(tokens)}, row-steps used {sum(tokens) / (len(tokens) * max(tokens)):.2f}",
                      flush=True)
            print(f"{name} batch {rep}: same answers {answers[True] == answers[False]}", flush=True)
        gen.model.get_output_embeddings = head
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["gemma3", "smollm2"]))
