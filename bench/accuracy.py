"""Answer accuracy under attack on the real multi-process testnet: single models, majority vote, WBFT.

For each scenario (0, 1/4, 1/3 and 1/2 of the peers malicious by count) a
testnet of real peers (SmolLM2 and Gemma-3 alternating among the honest
ones) is started from a manifest, and the same consecutive questions from
the shipped question set are asked one after another. Every decision's
certificate carries every signed answer, the proposer's similarities and
the validator set of its height, so all four figures come from one run,
side by side:

* each single model: its honest peers' answers;
* majority vote: the largest group of answers with every peer weighing 1
  (the same grouping rule, eligibility and similarities the network used);
* WBFT: the decided answer;

With half of the peers malicious by count, no weight rule can start safe
(they would hold half the weight, and a weighted median follows whoever
holds more than half), so that scenario starts from adapted weights: each
honest peer weighs 3 and each malicious one 1 (a quarter of the weight), the
issue's "once weights have adapted ... (their weight below 1/3)". The extra
scenario ``1/2-late`` starts half of the peers at equal weight as plain
wrong answerers (each its own wrong answer) and has them collude from
height 11: adaptation under way rather than assumed.

and the malicious peers' weight share per height (from the certificates'
validator sets) is plotted to ``docs/img/malicious_weight_share.png`` when
matplotlib is installed (``pip install -e '.[bench]'``).

    .venv/bin/python bench/accuracy.py --queries 30 --json bench-accuracy.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consensus import grouping  # noqa: E402
from multillmn.client import ask  # noqa: E402
from multillmn.questions import Question, is_correct, load_questions  # noqa: E402
from peers.ledger import value_of_certificate  # noqa: E402
from testnet.launcher import down, status, up  # noqa: E402
from testnet.manifest import Manifest  # noqa: E402

# name -> (peers, malicious, genesis weight of an honest peer (malicious peers weigh 1),
#          height from which the malicious peers misbehave; before it they only answer wrongly)
SCENARIOS: dict[str, tuple[int, int, int, int]] = {
    "0": (6, 0, 1, 1), "1/4": (8, 2, 1, 1), "1/3": (6, 2, 1, 1), "1/2": (8, 4, 3, 1), "1/2-late": (8, 4, 1, 11)}
DEFAULT_SCENARIOS = ("0", "1/4", "1/3", "1/2")


@dataclass
class Tally:
    correct: int = 0
    total: int = 0

    def add(self, ok: bool) -> None:
        self.correct += ok
        self.total += 1

    def rate(self) -> float | None:
        return None if self.total == 0 else round(self.correct / self.total, 3)


@dataclass
class Result:
    scenario: str
    peers: int
    malicious: int
    behaviour: str
    wbft: Tally = field(default_factory=Tally)
    majority: Tally = field(default_factory=Tally)
    models: dict[str, Tally] = field(default_factory=dict)
    malicious_share: list[tuple[int, float]] = field(default_factory=list)  # (height, share of total weight)
    wbft_after_adaptation: Tally = field(default_factory=Tally)  # from the first height with share < 1/3
    heights: list[dict[str, Any]] = field(default_factory=list)  # per decision: answers, weights, decided
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario, "peers": self.peers, "malicious": self.malicious,
            "behaviour": self.behaviour, "queries": self.wbft.total,
            "wbft": self.wbft.rate(), "wbft_after_adaptation": self.wbft_after_adaptation.rate(),
            "majority": self.majority.rate(),
            "models": {m: t.rate() for m, t in sorted(self.models.items())},
            "malicious_share": self.malicious_share, "seconds": round(self.seconds, 1),
            "heights": self.heights,
        }


def manifest_text(peers: int, malicious: int, behaviour: str, honest_weight: int = 1, from_height: int = 1) -> str:
    """Malicious peers last; honest ones alternate SmolLM2 and Gemma-3; answers of up to 48 new tokens."""
    # 48 new tokens, the peers' default and ADR 0022's offline record (32 cut three answers: q080 q100 q126)
    lines = ['[testnet]', 'chain_id = "accuracy"', 'threads_per_peer = 1', 'max_new_tokens = 48', '']
    for i in range(peers):
        bad = i >= peers - malicious
        lines += ['[[peer]]', f'name = "{"bad" if bad else "peer"}{i}"',
                  f'model = "{"smollm2" if i % 2 == 0 else "gemma3"}"', f"weight = {1 if bad else honest_weight}"]
        if bad:
            lines.append(f'byzantine = "{behaviour}"')
            if from_height > 1:
                lines.append(f"from_height = {from_height}")
        lines.append('')
    return "\n".join(lines)


def run_scenario(name: str, questions: list[Question], behaviour: str, base: Path) -> Result:
    peers, malicious, honest_weight, from_height = SCENARIOS[name]
    label = behaviour if honest_weight == 1 else f"{behaviour}, honest weigh {honest_weight}"
    result = Result(name, peers, malicious, label if from_height == 1 else f"wrong, {label} from h{from_height}")
    directory = base / f"net-{name.replace('/', '_')}"
    directory.mkdir(parents=True)
    manifest_path = directory / "manifest.toml"
    manifest_path.write_text(manifest_text(peers, malicious, behaviour, honest_weight, from_height))
    up(Manifest.load(manifest_path), directory / "net", progress=lambda line: print("  " + line, file=sys.stderr))
    start = time.monotonic()
    try:
        running = status(directory / "net")
        honest = [p for p in running if not p.name.startswith("bad")]
        bad_ids = {p.peer_id for p in running if p.name.startswith("bad")}
        names = {p.peer_id: p.name for p in running}
        adapted = malicious == 0
        for k, q in enumerate(questions):
            reply = ask(honest[k % len(honest)].api_url, q.question)
            record(result, q, reply["certificate"], bad_ids, names)
            share = result.malicious_share[-1][1]
            adapted = adapted or 3 * share < 1
            if adapted:
                result.wbft_after_adaptation.add(is_correct(q, reply["answer"]))
            print(f"  [{name}] h{result.malicious_share[-1][0]:>3} bad share {share:.3f} "
                  f"{'ok ' if is_correct(q, reply['answer']) else 'BAD'} {q.question} -> {reply['answer']}",
                  file=sys.stderr)
    finally:
        result.seconds = time.monotonic() - start
        down(directory / "net")
    return result


def record(result: Result, q: Question, cert: dict[str, Any], bad_ids: set[str], names: dict[str, str]) -> None:
    """Score one decision: WBFT's answer, majority vote over the same answers, each honest model."""
    value = value_of_certificate(cert)
    assert value is not None, "a verified certificate decodes"
    answers = cert["summary"]["answers"]  # in the value's order, which the similarities follow
    threshold = cert["genesis"]["params"]["similarity_threshold"]
    result.wbft.add(is_correct(q, value.answer))
    eligible = grouping.eligibility(q.question, [a["text"] for a in answers])
    group = grouping.choose([1] * len(answers), value.sims, threshold, eligible)
    result.majority.add(is_correct(q, answers[group.representative]["text"]))
    for a in answers:
        if a["peer_id"] not in bad_ids:
            result.models.setdefault(a["model"], Tally()).add(is_correct(q, a["text"]))
    weights = {v["peer_id"]: v["weight"] for v in cert["validators"]}
    share = sum(w for p, w in weights.items() if p in bad_ids) / sum(weights.values())
    result.malicious_share.append((cert["height"], round(share, 4)))
    result.heights.append({
        "height": cert["height"], "question": q.question, "decided": value.answer,
        "correct": is_correct(q, value.answer), "round": cert["round"],
        "answers": [{"peer": names.get(a["peer_id"], a["peer_id"]), "text": a["text"],
                     "correct": is_correct(q, a["text"])} for a in answers],
        "weights": {names.get(p, p): w for p, w in sorted(weights.items(), key=lambda pw: names.get(pw[0], pw[0]))},
    })


def plot(results: list[dict[str, Any]], path: Path) -> bool:
    """Plot the malicious weight share per height of each scenario's summary (see :meth:`Result.summary`)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install -e '.[bench]')", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        if r["malicious"]:
            ax.plot([h for h, _ in r["malicious_share"]], [s for _, s in r["malicious_share"]], marker=".",
                    label=f"{r['malicious']}/{r['peers']} malicious ({r['behaviour']})")
    ax.axhline(1 / 3, color="grey", linestyle="--", label="1/3 of weight")
    ax.set_xlabel("height")
    ax.set_ylabel("malicious peers' weight share")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("WBFT on the real testnet: malicious weight over heights")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=30, help="consecutive questions per scenario (>= 20)")
    parser.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS),
                        help=f"comma-separated subset of {','.join(SCENARIOS)} (default: the issue's four)")
    parser.add_argument("--behaviour", default="collude", help="what the malicious peers do (a manifest name)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--plot", type=Path, default=Path("docs/img/malicious_weight_share.png"))
    parser.add_argument("--replot", type=Path, help="only redraw the plot from a --json file of an earlier run")
    args = parser.parse_args()
    if args.replot is not None:
        plot(json.loads(args.replot.read_text()), args.plot)
        return
    names = args.scenarios.split(",")
    if unknown := [n for n in names if n not in SCENARIOS]:
        parser.error(f"unknown scenarios {unknown}; choose from {list(SCENARIOS)}")
    if args.queries < 1:
        parser.error("--queries must be positive")
    every = load_questions()
    step = max(1, len(every) // args.queries)  # spread over every topic, not only the first (capitals)
    questions = every[::step][: args.queries]
    base = Path(tempfile.mkdtemp(prefix="multillmn-accuracy-"))
    results = [run_scenario(n, questions, args.behaviour, base) for n in names]
    summaries = [r.summary() for r in results]
    print(json.dumps(summaries, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summaries, indent=1) + "\n")
    if plot(summaries, args.plot):
        print(f"plot: {args.plot}", file=sys.stderr)


if __name__ == "__main__":
    main()
