"""Fuzz the decoders with mutated valid frames: nothing may escape its documented error (issue 10).

    .venv/bin/python bench/fuzz.py [--inputs 1000000] [--seed 1] [--json FILE]
    .venv/bin/python bench/fuzz.py --replay INDEX [--seed 1]     # one input again, with its traceback

Inputs are real signed frames (``tests/fuzzcorpus.py``: a precommit, a
proposal whose value carries answers, score vectors and evidence, a score
vector, DAG gossip, DAG events carrying ledger transactions, a certificate's
JSON), each changed by one to three mutations (flips, inserts, deletes, cuts,
planted msgpack or JSON headers, runs of nesting up to 5,000 deep). Input
``i`` depends only on ``(seed, i)``, so any finding replays alone. Targets,
in turn:

* **wire**: the frame through :class:`peers.wire.FrameDecoder` (its length
  header may be mutated too) and :func:`peers.wire.decode_message`; a
  proposal that still decodes goes on to ``Chain.check_extras`` as the
  runner's would; contract: ``RemoteProtocolError`` / ``MessageError``, and
  ``check_extras`` returns a reason or None.
* **event**: :func:`dag.event.decode_event`, then the creator's signature and
  :func:`dag.event.check_transaction` on each transaction; contract: ``EventError``.
* **certificate**: :func:`multillmn.jsonsafe.loads` then
  :func:`multillmn.certificate.verify` against the genesis; contract:
  ``JsonError`` / ``CertificateError``.

Reports inputs per second, the worst time per input (and which input), and
every exception outside the contract (the run fails unless there are 0).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consensus.messages import MessageError, Proposal  # noqa: E402
from dag.event import EventError, check_transaction, decode_event, verify_event  # noqa: E402
from dag.messages import DagEvents  # noqa: E402
from multillmn import jsonsafe  # noqa: E402
from multillmn.certificate import CertificateError, verify  # noqa: E402
from peers.wire import NEED_DATA, FrameDecoder, RemoteProtocolError, decode_message, encode_frame  # noqa: E402
from tests.fuzzcorpus import Corpus, build_corpus, mutate  # noqa: E402

MAX_FRAME = 2 << 20


@dataclass
class Stats:
    """One target's counts and timings."""

    inputs: int = 0
    accepted: int = 0
    seconds: float = 0.0
    worst_s: float = 0.0
    worst_index: int = -1
    escaped: list[tuple[int, str]] = field(default_factory=list)

    def json(self) -> dict[str, object]:
        return {"inputs": self.inputs, "accepted": self.accepted, "rejected": self.inputs - self.accepted
                - len(self.escaped), "outside_contract": len(self.escaped), "seconds": round(self.seconds, 3),
                "inputs_per_s": round(self.inputs / self.seconds) if self.seconds else None,
                "worst_ms": round(self.worst_s * 1000, 3), "worst_index": self.worst_index}


Check = Callable[[bytes], bool]
"""Runs one input; True if it was accepted, False if refused with the documented error; anything else escapes."""


def _targets(corpus: Corpus) -> dict[str, tuple[list[bytes], bool, Check]]:
    keys = corpus.genesis.validators.public_key_of

    def wire(payload: bytes) -> bool:
        frames = FrameDecoder(MAX_FRAME)
        try:
            frames.feed(payload)
            frame = frames.next_frame()
        except RemoteProtocolError:
            return False
        if frame is NEED_DATA or not isinstance(frame, bytes):
            return False
        try:
            signed = decode_message(frame, keys)
        except MessageError:
            return False
        message = signed.message
        if isinstance(message, Proposal):
            reason = corpus.chain.check_extras(message.value, message.height)
            if reason is not None and not isinstance(reason, str):
                raise TypeError(f"check_extras returned {reason!r}")
        elif isinstance(message, DagEvents):
            message.decoded()
        return True

    def event(data: bytes) -> bool:
        try:
            ev = decode_event(data)
        except EventError:
            return False
        verify_event(ev, keys)
        for tx in ev.transactions:
            check_transaction(tx)
        return True

    def certificate(data: bytes) -> bool:
        try:
            verify(jsonsafe.loads(data, max_bytes=64 << 20), corpus.genesis)
        except (jsonsafe.JsonError, CertificateError):
            return False
        return True

    return {
        "wire": ([encode_frame(p) for p in corpus.wire.values()], False, wire),
        "event": (list(corpus.events.values()), False, event),
        "certificate": (list(corpus.certificates.values()), True, certificate),
    }


def _input(targets: dict[str, tuple[list[bytes], bool, Check]], seed: int, index: int) -> tuple[str, bytes]:
    rng = random.Random(seed * 1_000_003 + index)
    name = list(targets)[index % len(targets)]
    valid, json_like, _ = targets[name]
    return name, mutate(rng.choice(valid), rng, json_like=json_like)


def run(n: int, seed: int, progress: bool = True) -> dict[str, Stats]:
    corpus = build_corpus()
    targets = _targets(corpus)
    stats = {name: Stats() for name in targets}
    clock = time.perf_counter
    t_report = clock()
    for i in range(n):
        name, data = _input(targets, seed, i)
        check = targets[name][2]
        s = stats[name]
        t0 = clock()
        try:
            accepted = check(data)
        except Exception as exc:  # outside the contract: what this benchmark looks for
            accepted = False
            s.escaped.append((i, f"{type(exc).__name__}: {exc}"[:300]))
        dt = clock() - t0
        s.inputs += 1
        s.accepted += accepted
        s.seconds += dt
        if dt > s.worst_s:
            s.worst_s, s.worst_index = dt, i
        if progress and clock() - t_report > 10:
            t_report = clock()
            done = sum(x.inputs for x in stats.values())
            print(f"  {done:,} inputs, {sum(len(x.escaped) for x in stats.values())} outside the contract",
                  file=sys.stderr, flush=True)
    return stats


def replay(index: int, seed: int) -> int:
    """Run input ``index`` alone and print what happened (the traceback of an escape)."""
    targets = _targets(build_corpus())
    name, data = _input(targets, seed, index)
    print(f"input {index} (seed {seed}): target {name}, {len(data)} bytes: {data[:120]!r}")
    t0 = time.perf_counter()
    try:
        accepted = targets[name][2](data)
    except Exception:
        traceback.print_exc()
        return 1
    print(f"{'accepted' if accepted else 'refused with the documented error'} in "
          f"{(time.perf_counter() - t0) * 1000:.3f} ms")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", type=int, default=1_000_000, help="how many mutated inputs (default 1,000,000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--replay", type=int, metavar="INDEX", help="run one input again and show its traceback")
    args = ap.parse_args()
    if args.replay is not None:
        return replay(args.replay, args.seed)
    wall = time.perf_counter()
    stats = run(args.inputs, args.seed)
    wall = time.perf_counter() - wall
    total = sum(s.inputs for s in stats.values())
    escaped = sum(len(s.escaped) for s in stats.values())
    print(f"{'target':<12} {'inputs':>10} {'accepted':>9} {'inputs/s':>10} {'worst ms':>9} {'at input':>9} "
          f"{'outside contract':>16}")
    for name, s in stats.items():
        j = s.json()
        print(f"{name:<12} {s.inputs:>10,} {s.accepted:>9,} {j['inputs_per_s'] or 0:>10,} {j['worst_ms']:>9} "
              f"{s.worst_index:>9} {len(s.escaped):>16}")
    worst = max(stats.values(), key=lambda s: s.worst_s)
    print(f"all: {total:,} inputs in {wall:.1f} s = {total / wall:,.0f} inputs/s; worst {worst.worst_s * 1000:.2f} ms "
          f"per input (input {worst.worst_index}); {escaped} outside the contract")
    for name, s in stats.items():
        for index, text in s.escaped[:5]:
            print(f"  {name} input {index}: {text}  (replay: bench/fuzz.py --replay {index} --seed {args.seed})")
    if args.json is not None:
        args.json.write_text(json.dumps({"inputs": total, "seed": args.seed, "wall_s": round(wall, 1),
                                         "inputs_per_s": round(total / wall), "outside_contract": escaped,
                                         "targets": {n: s.json() for n, s in stats.items()}}, indent=2) + "\n")
    return 1 if escaped else 0


if __name__ == "__main__":
    sys.exit(main())
