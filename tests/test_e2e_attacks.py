"""End to end under attack: a real 4-peer testnet (SmolLM2) where two peers play issue 10's attacks.

``trudy`` (``byzantine = "forge-certificate"``) posts, after every decision,
certificates for the next and the decided height signed by itself alone,
with weights of its choosing; ``mallory`` (``"deep-nesting"``) sends every
peer frames nested about 1,000 deep and a ledger event carrying such a
transaction. Both otherwise answer and vote honestly. Honest peers must keep
deciding, never crash, never commit or serve a forgery, agree on one ledger,
and restart cleanly; a client must refuse the forgery from the genesis.
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

from multillmn.certificate import CertificateError, verify
from multillmn.client import ask, check
from multillmn.genesis import Genesis
from multillmn.identity import KeyPair
from peers.attacks import forged_certificate
from testnet import launcher, perturb
from testnet.manifest import Manifest

pytestmark = pytest.mark.e2e

MANIFEST = """
[testnet]
chain_id = "under-attack"
max_new_tokens = 12

[[peer]]
name = "alice"
model = "smollm2"

[[peer]]
name = "bob"
model = "smollm2"

[[peer]]
name = "mallory"
model = "smollm2"
byzantine = "deep-nesting"

[[peer]]
name = "trudy"
model = "smollm2"
byzantine = "forge-certificate"
"""
QUESTIONS = ["What is the capital of France?", "What is two plus two?", "What colour is the sky?"]


def _get(url: str, path: str) -> Any:
    return httpx.get(url + path, timeout=10, trust_env=False).json()


@pytest.fixture(scope="module")
def attacked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str], list[dict[str, Any]]]]:
    directory = tmp_path_factory.mktemp("attacked")
    try:
        state = launcher.up(Manifest.loads(MANIFEST), directory, ready_timeout_s=900)
        urls = {p.name: p.api_url for p in state.peers}
        results = [ask(urls["alice" if k % 2 == 0 else "bob"], q, timeout_s=300) for k, q in enumerate(QUESTIONS)]
        yield directory, urls, results
    finally:
        launcher.down(directory)


def _settled(urls: dict[str, str], heights: list[int], timeout: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        states = [_get(u, "/v1/ledger/state") for u in urls.values()]
        if all(s["certified_heights"][:len(heights)] == heights for s in states) and \
                len({s["state_hash"] for s in states}) == 1:
            return states
        if time.monotonic() > deadline:
            raise AssertionError(f"ledgers did not settle: {[(s['certified_heights'], s['state_hash']) for s in states]}")
        time.sleep(0.5)


def test_honest_peers_keep_deciding_and_no_peer_crashes(attacked: tuple[Path, dict[str, str], list[Any]]) -> None:
    directory, urls, results = attacked
    genesis = Genesis.load(directory / "genesis.json")
    assert [r["height"] for r in results] == [1, 2, 3]
    for r in results:
        check(r, genesis)  # each verifies from the genesis alone
    rows = launcher.status(directory)
    assert all(r.alive and r.ready for r in rows), [(r.name, r.phase) for r in rows]
    for name in ("alice", "bob", "trudy"):  # the deep frames reached them and were refused, counted
        rejected = _get(urls[name], "/v1/status")["rejected_messages"]
        assert sum(rejected.values()) > 0, (name, rejected)


def test_no_peer_commits_or_serves_a_forgery_and_the_ledgers_agree(
        attacked: tuple[Path, dict[str, str], list[Any]]) -> None:
    directory, urls, results = attacked
    genesis = Genesis.load(directory / "genesis.json")
    states = _settled(urls, [1, 2, 3])
    assert any("unverified certificate" in s["ignored"] or "conflicting certificate" in s["ignored"] for s in states)
    for h, r in enumerate(results, start=1):
        served = [_get(u, f"/v1/certificates/{h}") for u in urls.values()]
        assert {c["value_id"] for c in served} == {r["certificate"]["value_id"]}
        assert all(verify(c, genesis).answer == r["answer"] for c in served)


def test_a_client_refuses_the_forgery_from_the_genesis(attacked: tuple[Path, dict[str, str], list[Any]],
                                                       tmp_path: Path) -> None:
    directory, _, _ = attacked
    genesis = Genesis.load(directory / "genesis.json")
    forged = forged_certificate(KeyPair.load(directory / "trudy" / "peer_key.pem"), genesis, 1,
                                question="Who wrote Hamlet?", answer="Hamlet was written by Mallory.")
    with pytest.raises(CertificateError, match="not the one height 0 committed to"):
        verify(forged, genesis)  # height 1: its set must be the genesis set (adjacent)
    ahead = forged_certificate(KeyPair.load(directory / "trudy" / "peer_key.pem"), genesis, 62)
    with pytest.raises(CertificateError, match="more than 1/3 is needed"):
        verify(ahead, genesis)  # height 62: one signer of four cannot vouch for a skip
    path = tmp_path / "forged.json"
    path.write_text(json.dumps(forged))
    out = subprocess.run([sys.executable, "-m", "multillmn", "verify", str(path), "--genesis",
                          str(directory / "genesis.json")], capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr.startswith("INVALID:") and "Traceback" not in out.stderr


def test_a_killed_honest_peer_restarts_from_its_ledger(attacked: tuple[Path, dict[str, str], list[Any]]) -> None:
    directory, urls, _ = attacked
    bob = launcher.load_state(directory).peer("bob")
    assert bob.pid is not None
    assert "killed" in perturb.kill(directory, "bob")  # `multillmn testnet kill`: SIGKILL, then reaped
    launcher.restart(directory, "bob", ready_timeout_s=300)  # its store holds no poisoned event
    result = ask(urls["bob"], "What is the capital of Italy?", timeout_s=300)
    assert result["height"] == 4
    _settled(urls, [1, 2, 3, 4])
