"""Security table (issue 10): every attack of the issue against four in-process peers, one command.

    .venv/bin/python bench/security.py [--json FILE] [--quick] [--verbose]

Four peer runners (``peers.node.Node``: transport, SQLite ledger, driver)
with scripted engines run on loopback in one process, as in
``tests/test_ledger_integration.py``; peer3's key is the attacker's (one
validator of four). After two honest decisions, each attack class runs in
turn against the same peers:

* **forged certificates, client**: each forgery (the issue's weight forgeries,
  a forged next set, tampered trust paths, replays, another chain's
  certificate, and every tampering ``tests/test_certificate.py`` covers) is
  verified from the genesis with :func:`multillmn.certificate.verify`, and
  hostile files through ``multillmn verify``; refused = ``CertificateError``;
* **forged certificates, ledger**: forgeries posted as ledger transactions by
  the attacker; refused = no honest ledger accepts it, no peer serves it, no
  honest core moves past it (then the real certificate of the height is
  still decided and served);
* **deep msgpack** 1,010 and 100,000 deep: as a wire frame to each peer,
  inside a proposal's score and evidence envelopes, as a DAG event's
  transaction (refused = counted by the receiver, or the receiver's chain
  refuses the value, and the peer runs on), and in a peer's store followed
  by a restart (refused = the peer restarts, quarantines and converges);
* **malformed HTTP requests** against a peer's API (FastAPI app through
  httpx's ASGI transport): refused = a 4xx; **slow bodies** against a real
  hypercorn server (``body_timeout_s = 1``): refused = closed (408) in time;
* **handshake attacks** on a peer's transport port: refused = the listener
  closes the connection without accepting a link (before its deadline);
* **floods from one validator** (far-future and far-round proposals and
  votes, conflicting votes, orphan answers): refused = every table of
  ``Driver.statistics()`` (and the core's buffer) stays within its stated
  bound while the flood lasts;
* **availability**: 50 concurrent queries through the API, every reply and
  certificate checked as ``multillmn ask`` does; one peer of four stopped
  mid-query (its cancel scope), the rest deciding, then restarted from its
  store (refused column: queries answered).

Per class: tried, refused, peers crashed (a peer task that raised or could
not restart), data lost (a certificate served before the class missing or
changed after it, on any running peer) and seconds. After each class the
peers settle and one more query must be decided. Exit status 1 if any
attack outside :data:`KNOWN_OPEN` was not refused, a peer crashed or data
was lost.

The peers and rows are in ``bench/_security_peers.py``, the attack classes in
``bench/_security_forgeries.py`` (1-2), ``_security_wire.py`` (3, 5) and ``_security_load.py`` (4, 6, 7).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import trio  # noqa: E402

from bench._security_forgeries import (  # noqa: E402
    attack_client_forgeries,
    attack_hostile_files,
    attack_ledger_forgeries,
)
from bench._security_load import (  # noqa: E402
    attack_concurrent_queries,
    attack_floods,
    attack_http,
    attack_kill_mid_query,
    attack_slow_bodies,
)
from bench._security_peers import KNOWN_OPEN, Peers, Row, decide, lost, peers, served, settle  # noqa: E402
from bench._security_wire import attack_deep_nesting, attack_handshakes  # noqa: E402

__all__ = ["KNOWN_OPEN", "Row", "classes", "failures", "main", "run"]


# --- the run ------------------------------------------------------------------------------------


def classes(quick: bool = False) -> list[tuple[str, Callable[[Peers, Row], Awaitable[None]]]]:
    """The attack classes in the order they run (``quick``: fewer slow connections, flood messages, queries)."""
    return [
        ("Forged certificates, verified by a client from the genesis", attack_client_forgeries),
        ("`multillmn verify` on hostile files", attack_hostile_files),
        ("Forged certificates posted to the ledger", attack_ledger_forgeries),
        ("msgpack 1,010 and 100,000 deep (wire, proposal envelopes, DAG event, store)", attack_deep_nesting),
        ("Malformed HTTP requests", attack_http),
        ("Slow HTTP bodies (stalled or dripping)", lambda c, r: attack_slow_bodies(c, r, 10 if quick else 100)),
        ("Handshake attacks on the transport", attack_handshakes),
        ("Floods from one validator", lambda c, r: attack_floods(c, r, 100 if quick else 1000)),
        ("Concurrent queries", lambda c, r: attack_concurrent_queries(c, r, 6 if quick else 50)),
        ("One peer of four stopped mid-query, then restarted", attack_kill_mid_query),
    ]


async def run(quick: bool = False) -> tuple[list[Row], list[str]]:
    """Every attack class against the same four peers; the rows and every crash record."""
    import tests.test_ledger_integration as cluster_module
    from dataclasses import replace

    saved = cluster_module.CFG  # queries wait for up to 50 heights before theirs: give them time
    cluster_module.CFG = replace(saved, query_timeout_s=600.0)
    try:
        return await _run(quick)
    finally:
        cluster_module.CFG = saved


async def _run(quick: bool) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with peers(Path(tmp)) as c:
            for entry in (0, 1):
                if not await decide(c, entry):
                    raise RuntimeError("the honest peers did not decide before the attacks")
            await settle(c)
            for name, attack in classes(quick):
                row, before, crashes = Row(name), served(c), len(c.crashes)
                start = time.perf_counter()
                print(f"{name} ...", file=sys.stderr, flush=True)
                try:
                    await attack(c, row)
                except Exception as exc:  # the bench's own failure: shown, never hidden
                    row.not_refused.append({"attack": "the attack itself", "why": f"{type(exc).__name__}: {exc}"})
                if not await settle(c):
                    row.notes.append("the peers did not settle within 30 s")
                row.seconds = time.perf_counter() - start
                row.crashed = len(c.crashes) - crashes
                for i in range(4):  # a crashed peer comes back, so the next class starts from four
                    if i not in c.alive():
                        if i in c.running:
                            await c.stop(i)
                        await c.restart(i)
                        await settle(c)
                row.lost = lost(before, c)
                if not await decide(c, 0):
                    row.not_refused.append({"attack": "liveness", "why": "no decision after this class"})
                await settle(c)
                rows.append(row)
            records = list(c.crashes)
    return rows, records


def failures(rows: list[Row]) -> list[str]:
    out = []
    for r in rows:
        out += [f"{r.name}: {x['attack']}: {x['why']}" for x in r.not_refused if x["attack"] not in KNOWN_OPEN]
        if r.crashed:
            out.append(f"{r.name}: {r.crashed} peer(s) crashed")
        if r.lost:
            out.append(f"{r.name}: {r.lost} certificate(s) lost")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--quick", action="store_true", help="fewer slow connections, flood messages and queries")
    ap.add_argument("--verbose", action="store_true", help="the peers' log lines too")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.CRITICAL)
    wall = time.perf_counter()
    rows, crashes = trio.run(run, args.quick)
    wall = time.perf_counter() - wall
    print(f"\n| attack class | tried | refused | peers crashed | data lost | time |\n|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r.name} | {r.tried} | {r.refused} | {r.crashed} | {r.lost} | {r.seconds:.1f} s |")
    total = Row("total", sum(r.tried for r in rows), sum(r.refused for r in rows), sum(r.crashed for r in rows),
                sum(r.lost for r in rows), wall)
    print(f"| **all** | **{total.tried}** | **{total.refused}** | **{total.crashed}** | **{total.lost}** | "
          f"{wall:.0f} s |")
    for r in rows:
        for note in r.notes:
            print(f"  {r.name}: {note}")
        for x in r.not_refused:
            known = " (known open)" if x["attack"] in KNOWN_OPEN else ""
            print(f"  NOT REFUSED{known} {r.name}: {x['attack']}: {x['why']}")
    for crash in crashes:
        print(f"  CRASH {crash}")
    bad = failures(rows)
    if args.json is not None:
        args.json.write_text(json.dumps({
            "command": "bench/security.py" + (" --quick" if args.quick else ""), "wall_s": round(wall, 1),
            "rows": [{**asdict(r), "seconds": round(r.seconds, 1)} for r in rows], "crashes": crashes,
            "known_open": sorted(KNOWN_OPEN), "failures": bad}, indent=2) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
