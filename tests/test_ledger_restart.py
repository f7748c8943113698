"""Real processes: a peer killed with SIGKILL restarts from its SQLite ledger and catches up.

4 x SmolLM2 peers via ``testnet.launcher.up`` in a temporary directory; two
questions; ``kill -9`` of one peer's process group; a third question decided
by the other three; ``launcher.restart`` of the killed peer. Its ledger state
hash and its consensus height must converge to the others' within a minute.
The testnet is always torn down.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from multillmn.client import ask
from testnet import launcher
from testnet.manifest import Manifest

pytestmark = pytest.mark.e2e

QUESTIONS = ["What is the capital of France?", "What is two plus two?", "What colour is the sky?"]


@pytest.fixture
def testnet(tmp_path: Path) -> Iterator[Path]:
    try:
        launcher.up(Manifest.from_args(4, ["smollm2"], chain_id="restart", max_new_tokens=6), tmp_path,
                    ready_timeout_s=240)
        yield tmp_path
    finally:
        launcher.down(tmp_path)


def _get(url: str, path: str) -> Any:
    try:
        r = httpx.get(url + path, timeout=5.0, trust_env=False)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


def _views(urls: list[str]) -> list[tuple[Any, Any]]:
    out = []
    for url in urls:
        state, status = _get(url, "/v1/ledger/state"), _get(url, "/v1/status")
        out.append((state and state["state_hash"], status and status["height"]))
    return out


def _wait_converged(urls: list[str], heights: list[int], timeout_s: float) -> list[tuple[Any, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        views = _views(urls)
        states = [_get(u, "/v1/ledger/state") for u in urls]
        if (len(set(views)) == 1 and views[0][0] is not None
                and all(s is not None and s["certified_heights"] == heights for s in states)):
            return views
        if time.monotonic() > deadline:
            raise AssertionError(f"peers did not converge within {timeout_s} s: {views}")
        time.sleep(0.5)


def test_killed_peer_restarts_from_its_ledger_and_catches_up(testnet: Path) -> None:
    state = launcher.load_state(testnet)
    urls = [p.api_url for p in state.peers]
    for i, question in enumerate(QUESTIONS[:2]):
        assert ask(urls[i], question, timeout_s=120)["height"] == i + 1
    _wait_converged(urls, [1, 2], 30)

    victim = state.peer("peer3")
    assert victim.pid is not None
    os.killpg(victim.pid, signal.SIGKILL)
    os.waitpid(victim.pid, 0)
    assert ask(urls[0], QUESTIONS[2], timeout_s=120)["height"] == 3
    _wait_converged(urls[:3], [1, 2, 3], 30)

    launcher.restart(testnet, "peer3", ready_timeout_s=120)
    views = _wait_converged(urls, [1, 2, 3], 60)
    assert views[0][1] == 4  # every core, the restarted one too, is at height 4
    cert = _get(urls[3], "/v1/certificates/3")
    assert cert is not None and cert["height"] == 3
    page = _get(urls[3], "/v1/ledger?offset=0&limit=500")
    assert [e["height"] for e in page["entries"] if e["type"] == "certificate"] == [1, 2, 3]
