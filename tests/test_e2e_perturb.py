"""End to end (issue 16): a real 4-peer SmolLM2 testnet perturbed from the CLI, as CometBFT's e2e runner does.

One peer at a time is disconnected, paused or killed with ``multillmn testnet ...``; the other three still
decide (the victim's answer is not in the decision), and after ``reconnect``, ``resume`` or ``restart`` the
victim catches up. ``/metrics`` of the peers shows the decisions and the cut links; ``multillmn ask`` without
``--peer`` asks this testnet and checks the certificate against its genesis.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from multillmn.client import ask, check
from multillmn.genesis import Genesis
from testnet.launcher import PeerRecord, down, load_state, up
from testnet.manifest import Manifest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def testnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[PeerRecord]]]:
    directory = tmp_path_factory.mktemp("perturbed")
    try:
        up(Manifest.from_args(4, ["smollm2"]), directory, ready_timeout_s=900)
        yield directory, load_state(directory).peers
    finally:
        down(directory)


def _cli(directory: Path, *argv: str) -> str:
    done = subprocess.run([sys.executable, "-m", "multillmn", "testnet", argv[0], "--dir", str(directory),
                           *argv[1:]], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _status(url: str) -> dict[str, Any]:
    return httpx.get(url + "/v1/status", timeout=10).json()  # type: ignore[no-any-return]


def _metrics(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


def _reaches(url: str, height: int, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while (h := _status(url)["height"]) < height:
        assert time.monotonic() < deadline, f"{url} stuck at height {h}, expected {height}"
        time.sleep(0.5)


def _decided_without(url: str, question: str, victim: PeerRecord, genesis: Genesis) -> int:
    result = ask(url, question, timeout_s=600)
    check(result, genesis)
    assert victim.peer_id not in {a["peer_id"] for a in result["answers"]}
    return int(result["height"])


def test_the_others_decide_while_one_peer_is_cut_off_and_it_catches_up(
        testnet: tuple[Path, list[PeerRecord]]) -> None:
    directory, peers = testnet
    genesis = Genesis.load(directory / "genesis.json")
    entry, urls = peers[0].api_url, [p.api_url for p in peers]
    assert "paris" in ask(entry, "What is the capital of France?", timeout_s=600)["answer"].lower()
    m = _metrics(entry)
    assert (m["multillmn_height"], m["multillmn_decision_latency_seconds_count"]) == (2, 1)
    assert m["multillmn_connected_peers"] == 3

    victim = peers[3]  # disconnected: links cut both ways, its API still answers
    assert "peer3 disconnected" in _cli(directory, "disconnect", "--peer", victim.name)
    assert (_metrics(victim.api_url)["multillmn_p2p_disconnected"], _status(victim.api_url)["connected_peers"]) \
        == (1, [])
    assert _decided_without(entry, "What is the capital of Italy?", victim, genesis) == 2
    assert _status(victim.api_url)["height"] == 2  # it could not decide alone
    _cli(directory, "reconnect", "--peer", victim.name)
    _reaches(victim.api_url, 3)

    victim = peers[2]  # paused: SIGSTOP, its sockets open but silent
    _cli(directory, "pause", "--peer", victim.name)
    assert [line.split()[-1] for line in _cli(directory, "status").splitlines() if line.startswith("peer2")] \
        == ["paused"]
    assert _decided_without(entry, "What is the capital of Spain?", victim, genesis) == 3
    _cli(directory, "resume", "--peer", victim.name)
    _reaches(victim.api_url, 4)

    victim = peers[1]  # killed: SIGKILL, then restarted from its key and ledger
    _cli(directory, "kill", "--peer", victim.name)
    asked = subprocess.run([sys.executable, "-m", "multillmn", "ask", "--testnet", str(directory),
                            "What is the capital of Japan?"], capture_output=True, text=True, timeout=900)
    assert asked.returncode == 0, asked.stderr + asked.stdout  # found peer0, the certificate pinned to the genesis
    assert "checked against the trusted genesis" in asked.stdout and "at height 4" in asked.stdout
    _cli(directory, "restart", "--peer", victim.name, "--timeout", "600")
    _reaches(victim.api_url, 5)
    assert {_status(u)["height"] for u in urls} == {5}
    assert _metrics(entry)["multillmn_decision_latency_seconds_count"] == 4
