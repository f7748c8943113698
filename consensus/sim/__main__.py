"""Replay one simulation: ``python -m consensus.sim --seed S --config JSON [--import MODULE]``.

Prints the trace hash, the decisions and every violated invariant; exit 1 if any.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from consensus.sim._config import SimConfig, SimConfigError
from consensus.sim._run import replay


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m consensus.sim", description=__doc__)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--config", default="{}", help="SimConfig as JSON (SimConfig.to_json())")
    parser.add_argument("--import", dest="imports", action="append", default=[],
                        help="module registering extra behaviours (repeatable)")
    args = parser.parse_args(argv)
    for module in args.imports:
        importlib.import_module(module)
    try:
        config = SimConfig.from_json(args.config)
    except SimConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = replay(args.seed, config)
    print(json.dumps({
        "seed": result.seed, "trace_hash": result.trace_hash, "events": result.events,
        "heights_decided": result.heights_decided, "rounds": list(result.rounds),
        "violations": [str(v) for v in result.violations],
    }, indent=2))
    return 1 if result.violations else 0


if __name__ == "__main__":
    sys.exit(main())
