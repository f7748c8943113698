"""What a batch's finished rows cost, three ways, in one process (ADR 0019, addenda 3 and 4).

One torch thread, each bundled model: two batches of 16 shipped questions (every 8th from the first
and from the fourth), each answered by
- ``drop``: today's decode, which removes a row from the batch (input, mask, positions, KV cache)
  once it finishes (addendum 4);
- ``ride``: HF ``generate`` on the same batch (``Generator.drop_finished_rows = False``): every row
  runs the whole model until the longest row ends (as before addendum 3);
- ``skip`` (with ``--old COMMIT``): the generator of that commit (e.g. ``8950988``, where finished
  rows skipped only the output head, addendum 3), loaded from ``git show`` into a temporary package
  and run on the same model weights;
in rotating order. Prints the wall and CPU seconds of each, the tokens, the share of the batch's
row-steps that made a token, and whether all gave the same answers.

    flock /tmp/m/heavy.lock nice -n 5 .venv/bin/python bench/head_skip.py --old 8950988 gemma3 smollm2
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def old_generator_class(commit: str, into: Path) -> Any:
    """``peers.llm.generator.Generator`` as of ``commit``, imported as the package ``old_llm``."""
    package = into / "old_llm"
    package.mkdir()
    names = subprocess.run(["git", "ls-tree", "--name-only", commit, "peers/llm/"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    for name in names:
        if name.endswith(".py"):
            text = subprocess.run(["git", "show", f"{commit}:{name}"], cwd=ROOT, check=True,
                                  capture_output=True, text=True).stdout
            (package / Path(name).name).write_text(text)
    sys.path.insert(0, str(into))
    return importlib.import_module("old_llm.generator").Generator


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", default=["gemma3", "smollm2"])
    parser.add_argument("--old", metavar="COMMIT", help="also run the generator of this commit ('skip')")
    parser.add_argument("--tokens", type=int, default=48, help="max new tokens per question (default 48)")
    args = parser.parse_args()

    import torch

    from multillmn.questions import load_questions
    from peers.llm import Generator, default_cache_dir, resolve_model

    questions = [q.question for q in load_questions()]
    with tempfile.TemporaryDirectory() as tmp:
        old_class = old_generator_class(args.old, Path(tmp)) if args.old else None
        for name in args.models:
            gen = Generator.load(resolve_model(name), default_cache_dir(), threads=1)
            ride = Generator(gen.spec, gen.model, gen.tokenizer)
            ride.drop_finished_rows = False
            runners: dict[str, Any] = {"drop": gen, "ride": ride}
            if old_class is not None:
                runners["skip"] = old_class(gen.spec, gen.model, gen.tokenizer)
            for runner in runners.values():
                runner.generate(questions[0], 4)  # each computes its shared prefix once, beforehand
            order = list(runners)
            for rep, batch in enumerate([questions[::8], questions[3::8]]):
                answers = {}
                for mode in order[rep % len(order):] + order[:rep % len(order)]:
                    torch.manual_seed(0)
                    c0, t0 = time.process_time(), time.perf_counter()
                    out = runners[mode].generate_batch(batch, args.tokens)
                    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
                    answers[mode] = [(g.text, g.new_tokens) for g in out]
                    tokens = [g.new_tokens for g in out]
                    print(f"{name} {mode} batch {rep}: {seconds:.2f} s wall, {cpu:.2f} s CPU, {sum(tokens)} tokens, "
                          f"longest {max(tokens)}, row-steps used {sum(tokens) / (len(tokens) * max(tokens)):.2f}",
                          flush=True)
                same = all(a == answers["drop"] for a in answers.values())
                print(f"{name} batch {rep}: same answers {same}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
