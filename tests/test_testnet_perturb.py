"""Perturbations from the CLI (issue 16) against tests/fakepeer.py: kill, pause, resume, disconnect, reconnect;
shard workers in ``testnet status``; ``multillmn ask`` without ``--peer`` finds the local testnet."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from multillmn.cli import build_parser
from multillmn.cli import main as cli_main
from multillmn.genesis import Genesis
from testnet import launcher, processes
from testnet.launcher import TestnetError
from testnet.manifest import Manifest
from tests.test_testnet_launcher import FAKE, SHARDED, _children, _gone, kill_leftovers  # noqa: F401 (a fixture)

FAKE_WORKER = [sys.executable, "-c", (
    "import signal, sys, time\n"
    "from pathlib import Path\nfrom multillmn.identity import KeyPair\n"
    "a = sys.argv\n"
    "print('READY', a[a.index('--port') + 1], KeyPair.load(Path(a[a.index('--key') + 1])).peer_id, flush=True)\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
    "time.sleep(3600)\n")]
"""A shard worker that loads no model: it prints its READY line and waits for SIGTERM."""


@pytest.fixture(autouse=True)
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`testnet up` records the testnet it started under $XDG_STATE_HOME: a test's own, never the user's."""
    home = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(home))
    return home


def _run(*argv: str) -> int:
    args = build_parser().parse_args(["testnet", *argv])
    return int(args.func(args))


def _rows(capsys: pytest.CaptureFixture[str], d: str) -> dict[str, dict[str, Any]]:
    capsys.readouterr()
    assert _run("status", "--dir", d, "--json") == 0
    return {r["name"]: r for r in json.loads(capsys.readouterr().out)}


def test_kill_pause_resume_disconnect_reconnect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(launcher, "DEFAULT_PEER_COMMAND", FAKE)
    d = str(tmp_path / "net")
    assert _run("up", "--peers", "3", "--dir", d, "--timeout", "60") == 0
    try:
        assert _run("pause", "--dir", d, "--peer", "peer1") == 0
        assert "peer1 paused (SIGSTOP" in capsys.readouterr().out
        rows = _rows(capsys, d)
        assert (rows["peer1"]["phase"], rows["peer1"]["alive"], rows["peer1"]["ready"]) == ("paused", True, False)
        assert processes.paused(rows["peer1"]["pid"])
        assert _run("pause", "--dir", d, "--peer", "peer1") == 0
        assert "already paused" in capsys.readouterr().out
        assert _run("disconnect", "--dir", d, "--peer", "peer1") == 2  # a paused daemon cannot act on it
        assert "resume it first" in capsys.readouterr().err
        assert _run("restart", "--dir", d, "--peer", "peer1") == 2
        assert "still running" in capsys.readouterr().err
        assert _run("resume", "--dir", d, "--peer", "peer1") == 0
        assert "peer1 resumed" in capsys.readouterr().out
        assert _rows(capsys, d)["peer1"]["phase"] == "ready"
        assert _run("resume", "--dir", d, "--peer", "peer1") == 0
        assert "not paused" in capsys.readouterr().out

        assert _run("disconnect", "--dir", d, "--peer", "peer2") == 0
        assert "peer2 disconnected" in capsys.readouterr().out
        rows = _rows(capsys, d)
        assert (rows["peer2"]["disconnected"], rows["peer2"]["connected_peers"]) == (True, 0)
        assert (rows["peer0"]["disconnected"], rows["peer0"]["connected_peers"]) == (False, 2)
        assert _run("status", "--dir", d) == 0
        assert [line.split()[-2:] for line in capsys.readouterr().out.splitlines() if line.startswith("peer2")] == [
            ["ready,", "disconnected"]]
        assert _run("disconnect", "--dir", d, "--peer", "peer2") == 0
        assert "already disconnected" in capsys.readouterr().out
        assert _run("reconnect", "--dir", d, "--peer", "peer2") == 0
        assert "peer2 reconnected" in capsys.readouterr().out
        assert _rows(capsys, d)["peer2"]["disconnected"] is False

        pid = _rows(capsys, d)["peer0"]["pid"]
        assert _run("kill", "--dir", d, "--peer", "peer0") == 0
        assert f"peer0 killed (SIGKILL to process group {pid})" in capsys.readouterr().out
        assert _gone(pid)
        rows = _rows(capsys, d)
        assert (rows["peer0"]["phase"], rows["peer0"]["alive"], rows["peer0"]["pid"]) == ("down", False, None)
        for verb in ("kill", "pause", "disconnect"):
            assert _run(verb, "--dir", d, "--peer", "peer0") == 2
            assert "peer0 is not running" in capsys.readouterr().err
        assert _run("restart", "--dir", d, "--peer", "peer0", "--timeout", "60") == 0
        assert _rows(capsys, d)["peer0"]["ready"] is True
        assert _run("kill", "--dir", d, "--peer", "nobody") == 2
        assert "no peer or shard worker named 'nobody'" in capsys.readouterr().err
        assert _run("pause", "--dir", d, "--peer", "peer1") == 0
        capsys.readouterr()
    finally:
        assert _run("down", "--dir", d) == 0
    assert "peer1: stopped (pid" in capsys.readouterr().out  # SIGTERM reached the paused peer: it was continued
    assert _run("kill", "--dir", str(tmp_path / "none"), "--peer", "peer0") == 2


def test_status_lists_each_sharded_peers_workers_with_their_state(tmp_path: Path) -> None:
    from testnet import perturb
    from testnet.cli import format_table

    net = tmp_path / "net"
    state = launcher.up(Manifest.loads(SHARDED.replace("BANDWIDTH", "")), net, peer_command=FAKE,
                        worker_command=FAKE_WORKER, ready_timeout_s=60)
    try:
        edge, plain = launcher.status(net)
        assert plain.workers == ()
        assert [(w.name, w.address, w.process, w.up, w.layers, w.state) for w in edge.workers] == [
            ("edge/laptop", state.workers[0].address, "running", True, 30, "serving 30 layers"),
            ("edge/phone", state.workers[1].address, "running", True, 0, "standby")]
        table = format_table([edge, plain]).splitlines()
        assert table[3] == "" and table[4].split() == ["SHARD", "WORKER", "ADDRESS", "PID", "STATE"]
        assert table[5].split() == ["edge/laptop", state.workers[0].address, str(state.workers[0].pid), "serving",
                                    "30", "layers"]

        assert perturb.pause(net, "edge/phone").startswith("edge/phone paused")
        assert perturb.kill(net, "edge/laptop").startswith("edge/laptop killed")
        with pytest.raises(TestnetError, match="edge/phone is a shard worker"):
            perturb.disconnect(net, "edge/phone")
        edge = launcher.status(net)[0]
        assert [(w.name, w.state, w.pid) for w in edge.workers] == [
            ("edge/laptop", "exited", None), ("edge/phone", "paused", state.workers[1].pid)]
        perturb.resume(net, "edge/phone")
        assert [w.state for w in launcher.status(net)[0].workers] == ["exited", "standby"]
    finally:
        report = launcher.down(net, timeout_s=10)
    assert "edge/phone: stopped" in report[-1]  # SIGTERM reached it (a paused one is continued first)
    assert _children() == []


def _reply(question: str) -> dict[str, Any]:
    return {"question": question, "answer": "Paris", "height": 1, "round": 0, "agreed_weight": 1, "total_weight": 1,
            "agreed_share": 1.0, "answers": [], "timings": {"total_ms": 1, "generation_ms": 1, "consensus_ms": 0},
            "certificate": {}}


def test_ask_without_peer_asks_the_local_testnet_and_pins_its_genesis(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from multillmn import client
    from multillmn.certificate import CertificateError

    asked: list[str] = []
    pinned: list[Genesis | None] = []

    def ask(url: str, question: str, **_: Any) -> dict[str, Any]:
        asked.append(url)
        return _reply(question)

    def check(result: dict[str, Any], trusted: Genesis | None) -> Any:
        pinned.append(trusted)
        raise CertificateError("stub: not a certificate")

    monkeypatch.setattr(client, "ask", ask)
    monkeypatch.setattr(client, "check", check)
    monkeypatch.setattr(launcher, "DEFAULT_PEER_COMMAND", FAKE)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    assert cli_main(["ask", "Q?"]) == 2  # nothing started yet
    err = capsys.readouterr().err
    assert "no --peer given and no local testnet found" in err and "multillmn testnet up" in err

    d = tmp_path / "net"
    assert _run("up", "--peers", "2", "--dir", str(d), "--timeout", "60") == 0
    try:
        assert launcher.pointer_path().read_text().strip() == str(d.resolve())
        state = launcher.load_state(d)
        assert cli_main(["ask", "Q?"]) == 1  # asked, and the stub check refused the certificate
        out = capsys.readouterr()
        assert asked == [state.peers[0].api_url]
        assert pinned[0] is not None and pinned[0].digest() == Genesis.load(d / "genesis.json").digest()
        assert f"asking peer0 of the local testnet in {d.resolve()}" in out.err and "INVALID" in out.out

        genesis = tmp_path / "other-genesis.json"
        genesis.write_text((d / "genesis.json").read_text())
        assert cli_main(["ask", "--genesis", str(genesis), "Q?"]) == 1  # an explicit --genesis wins
        assert str(genesis) in capsys.readouterr().err

        os.makedirs(elsewhere / ".testnet")  # an empty ./.testnet is no testnet: the recorded one is asked
        assert cli_main(["ask", "Q?"]) == 1 and asked[-1] == state.peers[0].api_url
        capsys.readouterr()
        _run("kill", "--dir", str(d), "--peer", "peer0")
        assert cli_main(["ask", "--testnet", str(d), "Q?"]) == 1 and asked[-1] == state.peers[1].api_url
        capsys.readouterr()
    finally:
        _run("down", "--dir", str(d))
    assert cli_main(["ask", "Q?"]) == 2
    assert "answers as a ready member" in capsys.readouterr().err
    assert len(asked) == 4
