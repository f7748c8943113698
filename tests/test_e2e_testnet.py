"""End to end: a real 4-peer testnet (2 x SmolLM2-135M, 2 x Gemma-3-270M) on loopback.

One module-scoped testnet (epochs of 4 heights) serves every test here, in
order; it is torn down even when a test fails. The first run converts the
GGUF models (about a minute), later runs load the cache in seconds. After
the questions and the height check, two peers join the running network and
a genesis peer leaves while questions flow (issue 12).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from multillmn.certificate import verify
from multillmn.client import ask, check
from multillmn.genesis import Genesis
from testnet import perturb
from testnet.launcher import PeerStatus, down, join, load_state, restart, status, up
from testnet.manifest import Manifest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def testnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[PeerStatus]]]:
    directory = tmp_path_factory.mktemp("testnet")
    try:
        up(Manifest.from_args(4, ["smollm2", "gemma3"], epoch_length=4), directory, ready_timeout_s=900)
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


def _ledgers_converge(urls: list[str], heights: list[int], timeout_s: float) -> list[dict[str, Any]]:
    """Wait until every peer's ledger certified exactly ``heights`` and all state hashes are equal."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = [httpx.get(u + "/v1/ledger/state", timeout=10).json() for u in urls]
        if all(s["certified_heights"] == heights for s in states) and len({s["state_hash"] for s in states}) == 1:
            return states
        if time.monotonic() > deadline:
            seen = [(s["certified_heights"], s["state_hash"][:12]) for s in states]
            raise AssertionError(f"ledgers did not converge: {seen}")
        time.sleep(0.5)


def test_a_peer_killed_with_sigkill_restarts_from_its_ledger_and_catches_up(
        testnet: tuple[Path, list[PeerStatus]]) -> None:
    """kill -9 of one peer; the other three decide height 3 without it; restarted from its SQLite ledger, it
    serves height 3's certificate and reaches height 4 with everyone's ledger state."""
    directory, peers = testnet
    urls = [p.api_url for p in peers]
    victim = load_state(directory).peer(peers[2].name)
    assert victim.pid is not None
    assert "killed" in perturb.kill(directory, victim.name)  # `multillmn testnet kill`: SIGKILL, then reaped
    assert ask(urls[0], "What is two plus two?", timeout_s=300)["height"] == 3
    _ledgers_converge(urls[:2] + urls[3:], [1, 2, 3], 60)
    restart(directory, victim.name, ready_timeout_s=300)
    _ledgers_converge(urls, [1, 2, 3], 60)
    deadline = time.monotonic() + 30
    while _status(urls[2])["height"] != 4 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _status(urls[2])["height"] == 4  # its core caught up too
    cert = httpx.get(urls[2] + "/v1/certificates/3", timeout=10).json()
    assert cert["height"] == 3
    page = httpx.get(urls[2] + "/v1/ledger?offset=0&limit=500", timeout=10).json()
    assert [e["height"] for e in page["entries"] if e["type"] == "certificate"] == [1, 2, 3]


QUESTIONS = ["What is the capital of Italy?", "What is the capital of Spain?", "What is the capital of Japan?",
             "What is the capital of Germany?", "How many legs does a dog have?", "What colour is the sky?"]
MAX_QUESTIONS = 16


def _status(url: str) -> dict[str, Any]:
    return httpx.get(url + "/v1/status", timeout=10).json()  # type: ignore[no-any-return]


def test_two_peers_join_and_one_leaves_while_questions_flow(testnet: tuple[Path, list[PeerStatus]]) -> None:
    """Two new peers join the running network (`testnet join`) and a genesis peer asks to leave (`peer leave`);
    questions keep flowing through the members that stay. Every answer's certificate verifies from the
    genesis alone, across the epoch boundary; the newcomers' answers count after it and the leaver's no
    longer do; every peer, the leaver and the newcomers included, ends with the same ledger state."""
    directory, peers = testnet
    genesis = Genesis.load(directory / "genesis.json")
    joiners = {join(directory, "smollm2", name=name, ready_timeout_s=600).peer.peer_id for name in ("peer4", "peer5")}
    leaver = peers[3]
    left = subprocess.run([sys.executable, "-m", "multillmn", "peer", "leave", "--config",
                           str(directory / leaver.name / "config.toml"), "--via", leaver.api_url],
                          capture_output=True, text=True)
    assert left.returncode == 0, left.stderr
    entries = [p.api_url for p in peers[:3]]

    results: list[dict[str, Any]] = []
    changed_at = None
    for k in range(MAX_QUESTIONS):
        result = ask(entries[k % len(entries)], QUESTIONS[k % len(QUESTIONS)], timeout_s=600)
        assert check(result, genesis).height == result["height"]  # from the genesis alone, whatever the epoch
        results.append(result)
        validators = {v["peer_id"] for v in _status(entries[0])["validators"]}
        if changed_at is None and joiners <= validators and leaver.peer_id not in validators:
            changed_at = result["height"]
        if changed_at is not None and result["height"] >= changed_at + 2:
            break
    assert changed_at is not None, f"the validator set did not change within {MAX_QUESTIONS} questions"
    heights = [r["height"] for r in results]
    assert heights == list(range(heights[0], heights[0] + len(heights))), heights  # none lost, none skipped
    answered = {a["peer_id"] for a in results[-1]["answers"]}
    assert joiners <= answered and leaver.peer_id not in answered, (results[-1]["height"], answered)

    everyone = load_state(directory).peers
    assert len(everyone) == 6
    deadline = time.monotonic() + 120
    while True:
        states = [httpx.get(p.api_url + "/v1/ledger/state", timeout=10).json() for p in everyone]
        if all(set(heights) <= set(s["certified_heights"]) for s in states) \
                and len({s["state_hash"] for s in states}) == 1:
            break
        if time.monotonic() > deadline:
            seen = [(p.name, s["certified_heights"][-3:], s["state_hash"][:12]) for p, s in zip(everyone, states)]
            raise AssertionError(f"ledgers did not converge: {seen}")
        time.sleep(1.0)
    tops = [_status(p.api_url) for p in everyone]
    top = max(s["height"] for s in tops)
    assert len({s["weights_digest"] for s in tops if s["height"] == top}) == 1  # it covers the membership
    assert [s["member"] for s in tops] == [True, True, True, False, True, True]


def test_sigterm_stops_every_real_peer_cleanly(testnet: tuple[Path, list[PeerStatus]]) -> None:
    """Runs last: SIGTERM shuts each real peer (the two that joined included) down without SIGKILL."""
    directory, _ = testnet
    lines = down(directory)
    assert len(lines) == 6 and all(": stopped (pid" in line for line in lines), lines
