"""End to end: a real 4-peer testnet (2 x SmolLM2-135M, 2 x Gemma-3-270M) on loopback.

One module-scoped testnet serves every test here; it is torn down even when a
test fails. The first run converts the GGUF models (about a minute), later
runs load the cache in seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from multillmn.certificate import verify
from multillmn.client import ask, check
from multillmn.genesis import Genesis
from testnet.launcher import PeerStatus, down, status, up
from testnet.manifest import Manifest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def testnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[PeerStatus]]]:
    directory = tmp_path_factory.mktemp("testnet")
    try:
        up(Manifest.from_args(4, ["smollm2", "gemma3"]), directory, ready_timeout_s=900)
        yield directory, status(directory)
    finally:
        down(directory)


def test_the_network_agrees_on_paris_with_a_valid_certificate(testnet: tuple[Path, list[PeerStatus]]) -> None:
    directory, peers = testnet
    assert sorted(p.model for p in peers) == ["gemma3", "gemma3", "smollm2", "smollm2"]
    result = ask(peers[2].api_url, "What is the capital of France?")
    assert "paris" in result["answer"].lower()
    assert result["agreed_weight"] * 3 > result["total_weight"] * 2 or len(result["answers"]) >= 3
    genesis = Genesis.load(directory / "genesis.json")
    cert = check(result, genesis)
    assert cert.precommit_weight * 3 > cert.total_weight * 2
    assert {a.model for a in cert.answers} == {"smollm2", "gemma3"}
    # the same certificate checks offline through the CLI, and a tampered one fails
    path = directory / "cert.json"
    path.write_text(json.dumps(result["certificate"]))
    ok = subprocess.run([sys.executable, "-m", "multillmn", "verify", str(path), "--genesis",
                         str(directory / "genesis.json")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    tampered = dict(result["certificate"], summary={**result["certificate"]["summary"], "answer": "Lyon"})
    path.write_text(json.dumps(tampered))
    bad = subprocess.run([sys.executable, "-m", "multillmn", "verify", str(path)], capture_output=True, text=True)
    assert bad.returncode == 1 and "summary does not match" in bad.stderr


def test_openai_client_gets_the_consensus_answer(testnet: tuple[Path, list[PeerStatus]]) -> None:
    from openai import OpenAI

    directory, peers = testnet
    client = OpenAI(base_url=peers[1].api_url + "/v1", api_key="unused", timeout=600, max_retries=0)
    completion = client.chat.completions.create(
        model="multillmn", messages=[{"role": "user", "content": "What is the largest planet in the solar system?"}],
    )
    content = completion.choices[0].message.content or ""
    assert "jupiter" in content.lower()
    certificate = completion.model_extra["certificate"]  # type: ignore[index]
    assert verify(certificate, Genesis.load(directory / "genesis.json")).answer == content


def test_every_peer_reaches_the_same_height(testnet: tuple[Path, list[PeerStatus]]) -> None:
    """After the two questions above, all peers have decided heights 1 and 2."""
    directory, _ = testnet
    deadline = time.monotonic() + 30
    while (heights := {p.height for p in status(directory)}) != {3} and time.monotonic() < deadline:
        time.sleep(0.5)
    assert heights == {3}


def test_sigterm_stops_every_real_peer_cleanly(testnet: tuple[Path, list[PeerStatus]]) -> None:
    """Runs last: SIGTERM shuts each real peer down without the launcher resorting to SIGKILL."""
    directory, peers = testnet
    lines = down(directory)
    assert len(lines) == len(peers) and all(": stopped (pid" in line for line in lines), lines
