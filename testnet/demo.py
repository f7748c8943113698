"""``make demo``: a 4-peer testnet with real models answers one question.

Starts a new testnet in ``.demo`` every time (new keys, new genesis: the
previous run's are deleted, and a testnet still running there is stopped
first), with two SmolLM2-135M-Instruct peers and two Gemma-3-270M peers on
loopback, asks "What is the capital of France?", prints every peer's signed
answer, the consensus answer with the weight share that agreed, verifies the
certificate against the testnet's genesis, prints the address of the first
peer's live dashboard, and shuts the testnet down (also when something fails
on the way).

``--keep`` (``make demo KEEP=1``) leaves the testnet running after the
question, so a newcomer can open the dashboard, ask more questions there and
watch them being decided; ``multillmn testnet down --dir .demo`` (or ``make
demo-down``) stops it. The testnet is still stopped when the demo fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from multillmn.certificate import CertificateError, verify_file
from multillmn.client import ClientError, ask, check, render
from multillmn.genesis import Genesis
from testnet.launcher import TestnetError, down, remember, status, up
from testnet.manifest import Manifest

QUESTION = "What is the capital of France?"


DEMO_DIR = Path(".demo")


def main(directory: Path = DEMO_DIR, *, keep: bool = False) -> int:
    started = time.monotonic()
    failed = True
    manifest = Manifest.from_args(4, ["smollm2", "gemma3"])
    if any(p.alive for p in _status_or_empty(directory)):
        print(f"stopping the testnet still running in {directory}")
        down(directory)
    try:
        print(f"starting a 4-peer testnet in {directory} (first run converts the GGUF models: about a minute)")
        up(manifest, directory, progress=lambda line: print(f"  {line}", flush=True), reset=True)
        peers = status(directory)
        print(f"testnet ready in {time.monotonic() - started:.0f} s:")
        for p in peers:
            print(f"  {p.name:<6} {p.peer_id[:12]}  {p.model:<8} {p.api_url}")
        print(f"\nasking {peers[0].name}: {QUESTION}\n", flush=True)
        result = ask(peers[0].api_url, QUESTION)
        genesis_path = directory / "genesis.json"
        cert = check(result, Genesis.load(genesis_path))
        print(render(result, cert, None, trusted=True))
        cert_path = directory / "certificate.json"
        cert_path.write_text(json.dumps(result["certificate"], indent=2) + "\n")
        offline = verify_file(cert_path, genesis_path)
        print(f"\nOffline check:    `multillmn verify {cert_path} --genesis {genesis_path}` -> VALID "
              f"(height {offline.height}, answer {offline.answer!r})")
        print(f"\nDashboard:        {peers[0].api_url}/dashboard  (every peer serves one"
              + (")" if keep else "; this testnet stops now, `make demo KEEP=1` keeps it running)"))
        failed = False
        return 0
    except (TestnetError, ClientError, CertificateError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if keep and not failed:
            remember(directory)  # `multillmn ask "..."` with no --peer asks this testnet
            print(f"\nthe testnet keeps running: open the dashboard above, ask it more questions there or with\n"
                  f"`multillmn ask \"...\"`; stop it with: multillmn testnet down --dir {directory}"
                  "   (or: make demo-down)")
        else:
            print("\nshutting the testnet down")
            for line in down(directory):
                print(f"  {line}")
        print(f"demo took {time.monotonic() - started:.0f} s")


def _status_or_empty(directory: Path) -> list:  # type: ignore[type-arg]
    try:
        return status(directory)
    except TestnetError:
        return []


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m testnet.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true",
                        help="leave the testnet running after the question (stop: multillmn testnet down --dir .demo)")
    sys.exit(main(keep=parser.parse_args().keep))
