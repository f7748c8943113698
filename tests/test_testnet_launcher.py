"""Testnet launcher and CLI against tests/fakepeer.py: up, status, logs, crashes, down."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from multillmn.config import PeerConfig
from multillmn.genesis import Genesis
from multillmn.identity import KeyPair
from testnet import cli, launcher, netns
from testnet.launcher import TestnetError
from testnet.manifest import Manifest

FAKE = [sys.executable, str(Path(__file__).with_name("fakepeer.py")), "--ready-after", "0.5"]


def _children() -> list[int]:
    """Pids of our direct children that lead their own process group (spawned peers)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == os.getpid() and int(fields[2]) == int(entry.name):
                out.append(int(entry.name))
    return out


@pytest.fixture(autouse=True)
def kill_leftovers() -> Iterator[None]:
    """Kill (and reap) any peer process group a test left behind."""
    yield
    for pid in _children():
        try:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


@pytest.fixture(autouse=True)
def own_state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`testnet up` records the testnet it started under $XDG_STATE_HOME: a test's own, never the user's."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _pids(dir: Path) -> list[int]:
    return [p["pid"] for p in json.loads((dir / "testnet.json").read_text())["peers"] if p["pid"]]


def test_lifecycle_up_status_logs_crash_down(tmp_path: Path) -> None:
    manifest = Manifest.loads("""
[testnet]
chain_id = "lifecycle"
threads_per_peer = 2
[[peer]]
name = "a"
model = "smollm2"
weight = 1
[[peer]]
name = "b"
model = "gemma3"
weight = 2
[[peer]]
name = "c"
model = "smollm2"
weight = 3
""")
    lines: list[str] = []
    slow = [*FAKE[:-1], "1.5"]  # loading long enough that a status poll (every 0.5 s, on a busy machine) sees it
    state = launcher.up(manifest, tmp_path, progress=lines.append, peer_command=slow, ready_timeout_s=60)
    assert [p.name for p in state.peers] == ["a", "b", "c"]
    assert any("b loading-model" in line for line in lines)
    assert lines[-1].endswith("a ready, b ready, c ready")

    # files: 0600 keys, genesis with manifest weights, configs pointing at all the others
    genesis = Genesis.load(tmp_path / "genesis.json")
    assert genesis.chain_id == "lifecycle"
    assert {v.moniker: v.weight for v in genesis.validators} == {"a": 1, "b": 2, "c": 3}
    for p in state.peers:
        assert stat.S_IMODE((tmp_path / p.name / "peer_key.pem").stat().st_mode) == 0o600
        cfg = PeerConfig.load(Path(p.config))
        assert cfg.moniker == p.name and cfg.model == p.model and cfg.threads == 2
        assert {a.id for a in cfg.persistent_peers} == {o.peer_id for o in state.peers if o is not p}
        assert cfg.api_listen == p.api_url.removeprefix("http://") and cfg.p2p_listen == p.p2p
    assert len({p.api_url for p in state.peers} | {p.p2p for p in state.peers}) == 6
    saved = json.loads((tmp_path / "testnet.json").read_text())
    assert saved["chain_id"] == "lifecycle" and [p["pid"] for p in saved["peers"]] == [p.pid for p in state.peers]

    rows = launcher.status(tmp_path)
    assert [(r.name, r.peer_id, r.model, r.phase, r.ready, r.connected_peers) for r in rows] == [
        (p.name, p.peer_id, p.model, "ready", True, 2) for p in state.peers]
    assert httpx.get(f"{state.peers[0].api_url}/v1/status", trust_env=False).json()["omp_threads"] == "2"

    assert '"msg": "serving"' in launcher.logs(tmp_path, "b", 5)
    assert len(launcher.logs(tmp_path, "b", 1).splitlines()) == 1
    everything = launcher.logs(tmp_path, None, 10)
    assert all(f"==> {n} (" in everything for n in "abc")
    with pytest.raises(TestnetError, match="no peer named 'zz'.*a, b, c"):
        launcher.logs(tmp_path, "zz", 5)

    victim = state.peers[1]
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    time.sleep(0.2)
    rows = launcher.status(tmp_path)
    assert [(r.name, r.alive, r.phase) for r in rows] == [("a", True, "ready"), ("b", False, "down"), ("c", True, "ready")]

    report = launcher.down(tmp_path, timeout_s=10)
    assert report == [f"a: stopped (pid {state.peers[0].pid})", f"b: already exited (pid {victim.pid})",
                      f"c: stopped (pid {state.peers[2].pid})"]
    assert all(p.pid is not None and _gone(p.pid) for p in state.peers)
    saved = json.loads((tmp_path / "testnet.json").read_text())
    assert saved["stopped"] is True and all(p["pid"] is None for p in saved["peers"])
    assert {r.phase for r in launcher.status(tmp_path)} == {"down"}
    assert '"msg": "stopped on SIGTERM"' in launcher.logs(tmp_path, "a", 3)
    assert launcher.down(tmp_path) == ["a: not running", "b: not running", "c: not running"]


def test_peer_exiting_at_startup_fails_with_log_tail_and_stops_all(tmp_path: Path) -> None:
    with pytest.raises(TestnetError) as info:
        launcher.up(Manifest.from_args(3, ["smollm2"]), tmp_path, peer_command=[*FAKE, "--crash", "peer1"],
                    ready_timeout_s=60)
    message = str(info.value)
    assert "peer peer1 exited during start-up (exit code 3)" in message
    assert "cannot load model" in message and str(tmp_path / "peer1" / "peer.log") in message
    state = json.loads((tmp_path / "testnet.json").read_text())
    assert state["stopped"] is True and all(p["pid"] is None for p in state["peers"])
    assert _children() == []


def test_up_refuses_a_dir_with_a_running_testnet(tmp_path: Path) -> None:
    state = launcher.up(Manifest.from_args(1, ["smollm2"]), tmp_path, peer_command=FAKE, ready_timeout_s=60)
    with pytest.raises(TestnetError, match=f"still running in {tmp_path}.*multillmn testnet down --dir"):
        launcher.up(Manifest.from_args(1, ["smollm2"]), tmp_path, peer_command=FAKE)
    assert state.peers[0].pid is not None and not _gone(state.peers[0].pid)
    assert launcher.status(tmp_path)[0].peer_id == state.peers[0].peer_id  # files untouched
    launcher.down(tmp_path)


def test_up_on_a_stopped_testnet_refuses_without_reset_and_starts_clean_with_it(tmp_path: Path) -> None:
    """A stopped testnet's keys, genesis and ledgers are another network's: `up` never mixes them in."""
    first = launcher.up(Manifest.from_args(1, ["smollm2"]), tmp_path, peer_command=FAKE, ready_timeout_s=60)
    launcher.down(tmp_path)
    ledger = tmp_path / "peer0" / "data" / "ledger.sqlite"
    ledger.parent.mkdir(parents=True, exist_ok=True)
    ledger.write_bytes(b"the old network's ledger")
    with pytest.raises(TestnetError, match="holds the keys, genesis and ledgers of testnet 'local-testnet'.*--reset"):
        launcher.up(Manifest.from_args(1, ["smollm2"]), tmp_path, peer_command=FAKE, ready_timeout_s=60)
    assert ledger.exists() and json.loads((tmp_path / "testnet.json").read_text())["peers"][0]["peer_id"] == \
        first.peers[0].peer_id  # refused: nothing touched
    again = launcher.up(Manifest.from_args(1, ["smollm2"]), tmp_path, peer_command=FAKE, ready_timeout_s=60,
                        reset=True)
    assert again.peers[0].peer_id != first.peers[0].peer_id  # a new network: new keys and genesis
    assert not ledger.exists()  # and no old ledger left for a peer to choke on
    assert launcher.logs(tmp_path, "peer0", 100).count('"msg": "starting"') == 1  # a fresh log
    launcher.down(tmp_path)


def test_timeout_stops_everything_and_reports_the_waiting_peers(tmp_path: Path) -> None:
    command = [sys.executable, str(Path(__file__).with_name("fakepeer.py")), "--ready-after", "60"]
    with pytest.raises(TestnetError, match=r"timed out after 1.5s waiting for peer0 \(loading-model\), "
                                           r"peer1 \(loading-model\)(.|\n)*last lines of .*peer1/peer.log"):
        launcher.up(Manifest.from_args(2, ["smollm2"]), tmp_path, peer_command=command, ready_timeout_s=1.5)
    assert _children() == []


def test_down_kills_a_peer_that_ignores_sigterm(tmp_path: Path) -> None:
    state = launcher.up(Manifest.from_args(2, ["smollm2"]), tmp_path,
                        peer_command=[*FAKE, "--ignore-sigterm", "peer0"], ready_timeout_s=60)
    report = launcher.down(tmp_path, timeout_s=1)
    assert report[0] == f"peer0: killed after not stopping within 1s (pid {state.peers[0].pid})"
    assert report[1] == f"peer1: stopped (pid {state.peers[1].pid})"
    assert all(p.pid is not None and _gone(p.pid) for p in state.peers)


def test_missing_peer_executable_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TestnetError, match="cannot start peer0 .*no-such-binary"):
        launcher.up(Manifest.from_args(2, ["smollm2"]), tmp_path, peer_command=["no-such-binary-xyz"])
    assert _children() == []


def test_base_port_sets_ports_and_a_busy_one_is_refused(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        with pytest.raises(TestnetError, match=f"port {port} .* already in use"):
            launcher.up(Manifest.from_args(1, ["smollm2"]), tmp_path / "busy", base_port=port, peer_command=FAKE)
    assert not (tmp_path / "busy" / "testnet.json").exists()
    for attempt in range(5):
        base = 20000 + (os.getpid() * 7 + attempt * 997) % 30000
        try:
            state = launcher.up(Manifest.from_args(2, ["smollm2"]), tmp_path / str(attempt), base_port=base,
                                peer_command=FAKE, ready_timeout_s=60)
        except TestnetError as exc:
            if "already in use" in str(exc):
                continue
            raise
        assert [(p.p2p, p.api_url) for p in state.peers] == [
            (f"127.0.0.1:{base}", f"http://127.0.0.1:{base + 1}"),
            (f"127.0.0.1:{base + 2}", f"http://127.0.0.1:{base + 3}")]
        launcher.down(tmp_path / str(attempt))
        return
    pytest.fail("no free base port found")


def test_dir_errors(tmp_path: Path) -> None:
    for call in (launcher.status, launcher.down, lambda d: launcher.logs(d, None, 5)):
        with pytest.raises(TestnetError, match=f"no testnet in {tmp_path}.*testnet up --dir"):
            call(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(TestnetError, match="is not empty and holds no testnet.json"):
        launcher.up(Manifest.from_args(1, ["smollm2"]), tmp_path, peer_command=FAKE)
    assert (tmp_path / "notes.txt").read_text() == "mine" and not (tmp_path / "genesis.json").exists()
    (tmp_path / "notes.txt").unlink()
    (tmp_path / "testnet.json").write_text("{broken")
    with pytest.raises(TestnetError, match="corrupt"):
        launcher.status(tmp_path)


# --- CLI -----------------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="multillmn")
    cli.add_testnet_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


@pytest.mark.parametrize("argv", [
    ["testnet", "up"],
    ["testnet", "up", "--peers", "2", "--manifest", "m.toml"],
    ["testnet", "up", "--peers", "two"],
    ["testnet", "frobnicate"],
])
def test_cli_rejects_bad_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _parse(argv)
    assert info.value.code == 2 and "error:" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["--peers", "2", "--models", "smollm2,llama"], "model 'llama': expected smollm2 or gemma3"),
    (["--peers", "2", "--models", "smollm2,,gemma3"], "--models: empty entry"),
    (["--peers", "0"], "1 to 64 peers, got 0"),
    (["--manifest", "m.toml", "--models", "gemma3"], "--models applies only with --peers"),
    (["--manifest", "missing.toml"], "cannot read manifest missing.toml"),
    (["--peers", "1", "--timeout", "0"], "--timeout must be positive"),
])
def test_cli_up_reports_bad_input(argv: list[str], message: str, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(["testnet", "up", "--dir", str(tmp_path / "net"), *argv])
    assert args.func(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "net").exists()


def test_cli_lifecycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(launcher, "DEFAULT_PEER_COMMAND", FAKE)
    d = str(tmp_path / "net")

    def run(*argv: str) -> int:
        args = _parse(["testnet", *argv])
        return int(args.func(args))

    assert run("up", "--peers", "3", "--dir", d, "--timeout", "60") == 0
    out = capsys.readouterr()
    assert "peer2 ready" in out.err and f"testnet down --dir {d}" in out.out
    assert run("status", "--dir", d, "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["model"], r["phase"]) for r in rows] == [
        ("peer0", "smollm2", "ready"), ("peer1", "gemma3", "ready"), ("peer2", "smollm2", "ready")]
    assert run("status", "--dir", d) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["NAME", "PEER", "ID", "MODEL", "API", "URL", "HEIGHT", "PEERS", "WEIGHT", "PHASE"]
    assert [r["weight_share"] for r in rows] == [0.3333] * 3 and table[1].split()[-2] == "33.3%"
    assert table[2].split()[:2] == ["peer1", rows[1]["peer_id"][:12]] and table[2].split()[-1] == "ready"
    assert run("logs", "--dir", d, "--peer", "peer0", "-n", "2") == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    assert run("logs", "--dir", d, "--peer", "nope") == 2
    assert "no peer named 'nope'" in capsys.readouterr().err
    assert run("up", "--peers", "1", "--dir", d) == 2
    assert "still running" in capsys.readouterr().err
    assert run("restart", "--dir", d, "--peer", "peer1") == 2  # it is running
    assert "still running" in capsys.readouterr().err
    os.killpg(rows[1]["pid"], signal.SIGKILL)
    os.waitpid(rows[1]["pid"], 0)
    assert run("restart", "--dir", d, "--peer", "peer1", "--timeout", "60") == 0
    assert "peer1 restarted" in capsys.readouterr().out
    assert run("restart", "--dir", d, "--peer", "peer1", "--timeout", "0") == 2
    assert "--timeout must be positive" in capsys.readouterr().err
    assert run("down", "--dir", d) == 0
    assert capsys.readouterr().out.count(": stopped (pid") == 3
    assert all(_gone(r["pid"]) for r in rows)
    assert run("up", "--peers", "1", "--dir", d, "--timeout", "60") == 2  # another network's data
    assert "--reset" in capsys.readouterr().err
    assert run("up", "--peers", "1", "--dir", d, "--timeout", "60", "--reset") == 0
    capsys.readouterr()
    assert run("down", "--dir", d) == 0
    assert run("status", "--dir", str(tmp_path / "none")) == 2


def test_restart_brings_a_killed_peer_back(tmp_path: Path) -> None:
    manifest = Manifest.from_args(2, ["smollm2"], chain_id="restart")
    state = launcher.up(manifest, tmp_path, peer_command=FAKE, ready_timeout_s=60)
    try:
        with pytest.raises(TestnetError, match="still running"):
            launcher.restart(tmp_path, "peer1", peer_command=FAKE)
        old = state.peer("peer1").pid
        assert old is not None
        os.killpg(old, signal.SIGKILL)
        os.waitpid(old, 0)
        assert [r.phase for r in launcher.status(tmp_path)] == ["ready", "down"]
        record = launcher.restart(tmp_path, "peer1", peer_command=FAKE, ready_timeout_s=60)
        assert record.pid not in (None, old)
        assert launcher.load_state(tmp_path).peer("peer1").pid == record.pid
        assert [r.ready for r in launcher.status(tmp_path)] == [True, True]
        with pytest.raises(TestnetError, match="no peer named"):
            launcher.restart(tmp_path, "nobody", peer_command=FAKE)
    finally:
        launcher.down(tmp_path)


def test_byzantine_peers_get_their_behaviour_in_their_config(tmp_path: Path) -> None:
    from multillmn.config import PeerConfig

    manifest_file = tmp_path / "m.toml"
    manifest_file.write_text('[[peer]]\nname = "good"\nmodel = "smollm2"\n\n'
                             '[[peer]]\nname = "bad"\nmodel = "smollm2"\nbyzantine = "slow"\nslow_ms = 250\n')
    state = launcher.up(Manifest.load(manifest_file), tmp_path / "net", peer_command=FAKE, ready_timeout_s=60)
    try:
        good, bad = (PeerConfig.load(Path(p.config)) for p in state.peers)
        assert (good.behaviour, bad.behaviour, bad.slow_ms) == ("none", "slow", 250)
    finally:
        launcher.down(tmp_path / "net")


def test_each_peer_config_gets_its_per_destination_delays_and_the_broadcast_mode(tmp_path: Path) -> None:
    manifest = Manifest.loads('[testnet]\nbroadcast = "tree"\nlink_plane = { seed = 4 }\n'
                              '[[peer]]\nname = "a"\nmodel = "smollm2"\nlinks = { c = 300 }\n'
                              '[[peer]]\nname = "b"\nmodel = "smollm2"\n'
                              '[[peer]]\nname = "c"\nmodel = "gemma3"\nnetwork = { loss = 0.1 }\n')
    state = launcher.up(manifest, tmp_path, peer_command=FAKE, ready_timeout_s=60)
    try:
        names = {p.peer_id: p.name for p in state.peers}
        expected = manifest.link_delays()
        for p in state.peers:
            cfg = PeerConfig.load(Path(p.config))
            assert {names[pid]: ms for pid, ms in cfg.link_delays_ms} == expected[p.name]
            assert (cfg.broadcast, cfg.link_delay_ms, cfg.link_loss) == ("tree", 0, 0.1 if p.name == "c" else 0.0)
        assert expected["a"]["c"] == 300 and len({ms for row in expected.values() for ms in row.values()}) >= 3
    finally:
        launcher.down(tmp_path)
    plain = launcher.up(Manifest.from_args(2, ["smollm2"]), tmp_path / "plain", peer_command=FAKE, ready_timeout_s=60)
    try:
        assert all(PeerConfig.load(Path(p.config)).link_delays_ms == () for p in plain.peers)
        assert all(PeerConfig.load(Path(p.config)).broadcast == "mesh" for p in plain.peers)
    finally:
        launcher.down(tmp_path / "plain")


def test_cli_up_sets_the_broadcast_mode_and_a_link_plane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from testnet.links import LinkPlane

    monkeypatch.setattr(launcher, "DEFAULT_PEER_COMMAND", FAKE)

    def run(*argv: str) -> int:
        args = _parse(["testnet", *argv])
        return int(args.func(args))

    manifest = tmp_path / "m.toml"
    manifest.write_text('[[peer]]\nname = "a"\nmodel = "smollm2"\n[[peer]]\nname = "b"\nmodel = "gemma3"\n')
    for argv, plane in [(["--peers", "3"], LinkPlane(seed=2)), (["--manifest", str(manifest)], LinkPlane(seed=2))]:
        d = tmp_path / argv[0].strip("-")
        assert run("up", *argv, "--dir", str(d), "--broadcast", "tree", "--link-plane", "2", "--timeout", "60") == 0
        try:
            peers = launcher.load_state(d).peers
            names = {p.peer_id: i for i, p in enumerate(peers)}
            grid = plane.delays_ms(len(peers))
            for i, p in enumerate(peers):
                cfg = PeerConfig.load(Path(p.config))
                assert cfg.broadcast == "tree"
                assert {names[pid]: ms for pid, ms in cfg.link_delays_ms} == {j: grid[i][j] for j in range(len(peers))
                                                                              if j != i}
        finally:
            launcher.down(d)
    assert run("up", "--peers", "2", "--dir", str(tmp_path / "bad"), "--link-plane", "-1") == 2
    assert "testnet.link_plane.seed: -1 is outside" in capsys.readouterr().err


# --- sharded peers: shard workers per device ---------------------------------------------

SHARDED = """
[[peer]]
name = "edge"
model = "smollm2"
network = { delay_ms = 15, loss = 0.05 }
devices = [
  { name = "laptop", memory_mb = 400, delay_ms = 2 },
  { name = "phone", memory_mb = 400, threads = 1, loss = 0.01 BANDWIDTH },
]
[[peer]]
name = "plain"
model = "smollm2"
"""


async def _workers_answer(dir: Path, peer: str) -> dict[str, str]:
    """Connect to every worker of ``peer`` with that peer's key, as its ShardedEngine does; the failures."""
    from peers.shard.devices import load_device_file
    from peers.shard.driver import ShardDriver
    from peers.shard.engine import build_problem, worker_addresses
    from peers.shard.profiles import KNOWN_SHAPES

    entries = load_device_file(dir / peer / "devices.toml")
    key = KeyPair.load(dir / peer / "peer_key.pem")
    async with ShardDriver.open(key, build_problem(entries, KNOWN_SHAPES["smollm2"]), worker_addresses(entries),
                                request_timeout=20) as driver:
        await driver.wait_connected(60)
        return driver.stats.failures


@pytest.mark.models  # its shard workers load the model
def test_sharded_peer_gets_its_workers_devices_file_and_down_stops_them(tmp_path: Path) -> None:
    import trio

    from peers.shard.devices import load_device_file

    net = tmp_path / "net"
    state = launcher.up(Manifest.loads(SHARDED.replace("BANDWIDTH", "")), net, peer_command=FAKE, ready_timeout_s=120)
    try:
        assert [(w.name, w.peer) for w in state.workers] == [("edge/laptop", "edge"), ("edge/phone", "edge")]
        edge, plain = (PeerConfig.load(Path(p.config)) for p in state.peers)
        assert (edge.shard_devices_file, edge.link_delay_ms, edge.link_loss) == ("devices.toml", 15, 0.05)
        assert (plain.shard_devices_file, plain.link_delay_ms, plain.link_loss) == ("", 0, 0.0)
        entries = load_device_file(edge.path(edge.shard_devices_file))
        assert [(e.name, e.address, e.peer_id) for e in entries] == [
            ("laptop", state.workers[0].address, state.workers[0].peer_id),
            ("phone", state.workers[1].address, state.workers[1].peer_id)]
        assert [(e.link_ms, e.shape_delay_ms, e.shape_loss) for e in entries] == [(2.0, 2.0, 0.0), (0.0, 0.0, 0.01)]
        assert all(w.address.startswith("127.0.0.1:") and w.netns is None for w in state.workers)
        assert trio.run(_workers_answer, net, "edge") == {}  # both workers serve the peer's key
        assert all(w.pid is not None and not _gone(w.pid) for w in state.workers)
    finally:
        report = launcher.down(net, timeout_s=10)
    assert report[2:] == [f"edge/laptop: stopped (pid {state.workers[0].pid})",
                          f"edge/phone: stopped (pid {state.workers[1].pid})"]
    assert all(p.pid is not None and _gone(p.pid) for p in state.processes())
    assert _children() == []
    saved = json.loads((net / "testnet.json").read_text())
    assert [w["pid"] for w in saved["workers"]] == [None, None]


@pytest.mark.models  # its shard worker loads the model
@pytest.mark.skipif(netns.unavailable_reason() is not None, reason="network namespaces are not permitted here")
def test_a_device_bandwidth_puts_its_worker_in_a_rate_limited_namespace(tmp_path: Path) -> None:
    import trio

    from peers.shard.devices import load_device_file
    from testnet import netns

    net = tmp_path / "net"
    manifest = Manifest.loads('[[peer]]\nname = "edge"\nmodel = "smollm2"\n'
                              'devices = [{ name = "phone", memory_mb = 700, bandwidth_kbit = 8000 }]\n')
    state = launcher.up(manifest, net, peer_command=FAKE, ready_timeout_s=120)
    phone = state.workers[0]
    try:
        assert phone.netns in netns.namespaces() and not phone.address.startswith("127.")
        qdiscs = subprocess.run(["tc", "qdisc", "show", "dev", str(phone.veth)], capture_output=True, text=True)
        assert "tbf" in qdiscs.stdout and "8Mbit" in qdiscs.stdout  # our end (the peer's uplink) ...
        inside = subprocess.run([*netns.exec_prefix(phone.netns), "tc", "qdisc", "show"], capture_output=True,
                                text=True)
        assert "tbf" in inside.stdout and "8Mbit" in inside.stdout  # ... and the worker's end
        assert load_device_file(net / "edge" / "devices.toml")[0].bandwidth_mbps == 8.0
        assert trio.run(_workers_answer, net, "edge") == {}  # the peer reaches it over the veth pair
    finally:
        report = launcher.down(net, timeout_s=10)
    assert report == [f"edge: stopped (pid {state.peers[0].pid})", f"edge/phone: stopped (pid {phone.pid})",
                      f"edge/phone: network namespace {phone.netns} deleted"]
    assert phone.netns not in netns.namespaces() and _children() == []
    assert phone.veth not in subprocess.run(["ip", "link"], capture_output=True, text=True).stdout


def test_a_worker_exiting_at_startup_fails_the_testnet(tmp_path: Path) -> None:
    manifest = Manifest.loads(SHARDED.replace("BANDWIDTH", ""))
    with pytest.raises(TestnetError, match=r"shard worker edge/laptop exited during start-up \(exit code 5\)"
                                           r"(.|\n)*last lines of .*edge/workers/laptop.log(.|\n)*no model here"):
        launcher.up(manifest, tmp_path, peer_command=FAKE, ready_timeout_s=60,
                    worker_command=[sys.executable, "-c", "import sys; print('no model here'); sys.exit(5)"])
    assert _children() == []
    assert all(w["pid"] is None for w in json.loads((tmp_path / "testnet.json").read_text())["workers"])


def test_bandwidth_without_namespaces_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from testnet import netns

    monkeypatch.setattr(netns, "unavailable_reason", lambda: "cannot create a network namespace (permission denied)")
    manifest = Manifest.loads(SHARDED.replace("BANDWIDTH", ", bandwidth_kbit = 8000"))
    with pytest.raises(TestnetError, match=r"devices? edge/phone declare bandwidth_kbit, .* tc tbf .* "
                                           r"\(permission denied\); run as root or drop bandwidth_kbit"):
        launcher.up(manifest, tmp_path, peer_command=FAKE)
    assert not (tmp_path / "testnet.json").exists()


# --- membership: manifest joiners and leavers, `testnet join` and `testnet leave` ------------------------------
#
# The peers are this module run as a script (``_fake_member``): a stand-in that, unlike tests/fakepeer.py,
# also starts with a key outside the genesis. The testnet's peers share one pretend chain in a file next to the
# genesis: its height grows with time (a height every TICK_S), and a join or leave request a peer accepts
# (``POST /v1/membership/join|leave``, signed envelopes opened with the real code) takes effect at the first
# epoch boundary at least 2 heights later, as ADR 0016 says. A peer with ``[membership] join_via`` hands its
# signed join request to that API once it reports ``join_at_height``; one with ``leave_at_height`` asks to leave.

TICK_S = 0.05
FAKE_MEMBER = [sys.executable, __file__, "--ready-after", "0.3"]


def _fake_member(argv: list[str]) -> int:  # noqa: C901 (one small server)
    import base64
    import fcntl
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from consensus.membership import MembershipParams
    from consensus.messages import Envelope, Join, Leave, MessageError, open_envelope, sign
    from multillmn.client import ClientError, fetch_status, request_membership

    ap = argparse.ArgumentParser()
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--ready-after", type=float, default=0.3)
    args = ap.parse_args(argv)
    cfg = PeerConfig.load(args.config)
    key = KeyPair.load(cfg.path(cfg.key_file))
    genesis = Genesis.load(cfg.path(cfg.genesis_file))
    params = MembershipParams(epoch_length=genesis.params.epoch_length)
    chain_file = cfg.path(cfg.genesis_file).parent / "fakechain.json"
    started = time.monotonic()

    def log(msg: str, **fields: object) -> None:
        print(json.dumps({"ts": round(time.time(), 3), "level": "info", "msg": msg, **fields}), file=sys.stderr,
              flush=True)

    def chain(change: object = None) -> dict:  # type: ignore[type-arg]
        """The shared chain, advanced to now (and changed by ``change(data)``), under a file lock."""
        with open(chain_file.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = json.loads(chain_file.read_text()) if chain_file.exists() else {
                "t0": time.time(), "transitions": [], "joins": {}, "leaves": {},
                "members": {v.peer_id: {"moniker": v.moniker, "weight": v.weight, "key": v.public_key.hex()}
                            for v in genesis.validators}}
            data["height"] = height = 1 + int((time.time() - data["t0"]) / TICK_S)
            for b in sorted({r["boundary"] for r in [*data["joins"].values(), *data["leaves"].values()]}):
                if b > height:
                    break
                left = [p for p, r in data["leaves"].items() if r["boundary"] == b]
                joined = [p for p, r in data["joins"].items() if r["boundary"] == b]
                for p in left:
                    data["members"].pop(p, None)
                    del data["leaves"][p]
                for p in joined:
                    r = data["joins"].pop(p)
                    data["members"][p] = {"moniker": r["moniker"], "weight": 1, "key": r["key"]}
                data["transitions"].append({"boundary": b, "joined": joined, "left": left, "removed": []})
            result = change(data) if callable(change) else None
            chain_file.write_text(json.dumps(data))
            return result if result is not None else data

    def request(kind: str, body: dict) -> tuple[int, dict]:  # type: ignore[type-arg]
        env = Envelope(body=base64.b64decode(body["body"]), sig=base64.b64decode(body["sig"]))

        def apply(data: dict) -> tuple[int, dict]:  # type: ignore[type-arg]
            h = data["height"]
            try:
                if kind == "join":
                    j = open_envelope(Join, env, lambda _: None).message
                    if j.peer_id in data["members"]:
                        return 422, {"code": "already-member", "detail": f"already-member: {j.peer_id}"}
                    if j.peer_id in data["joins"]:
                        return 422, {"code": "already-requested", "detail": f"already-requested: {j.peer_id}"}
                    if genesis.params.models and j.model not in genesis.params.models:
                        return 422, {"code": "unknown-model", "detail": f"unknown-model: {j.model!r}"}
                    data["joins"][j.peer_id] = {"moniker": j.moniker, "model": j.model, "key": j.public_key.hex(),
                                                "committed_at": h, "boundary": params.boundary_for(h, 2)}
                    who = j.peer_id
                else:
                    keys = {p: bytes.fromhex(m["key"]) for p, m in data["members"].items()}
                    x = open_envelope(Leave, env, keys.get).message
                    if x.peer_id in data["leaves"]:
                        return 422, {"code": "already-requested", "detail": f"already-requested: {x.peer_id}"}
                    data["leaves"][x.peer_id] = {"committed_at": h, "boundary": params.boundary_for(h, 2)}
                    who = x.peer_id
            except MessageError as exc:
                return 422, {"code": "bad-signature", "detail": str(exc)}
            log("membership request", kind=kind, peer_id=who)
            return 202, {"status": "accepted", "peer_id": who, "note": "fake"}

        return chain(apply)  # type: ignore[no-any-return]

    def status() -> dict:  # type: ignore[type-arg]
        ready = time.monotonic() - started >= args.ready_after
        data = chain()
        h = data["height"]
        return {
            "peer_id": key.peer_id, "moniker": cfg.moniker, "model": cfg.model, "ready": ready,
            "phase": "ready" if ready else "loading-model", "height": h,
            "connected_peers": [p.id for p in cfg.persistent_peers],
            "validators": [{"peer_id": p, "moniker": m["moniker"], "weight": m["weight"]}
                           for p, m in data["members"].items()],
            "member": key.peer_id in data["members"],
            "membership": {
                "enabled": True, "epoch_length": params.epoch_length,
                "next_boundary": params.epoch_start(params.epoch_of(h) + 1),
                "pending_joins": [{"peer_id": p, "moniker": r["moniker"], "model": r["model"],
                                   "committed_at": r["committed_at"]} for p, r in data["joins"].items()],
                "pending_leaves": [{"peer_id": p, "committed_at": r["committed_at"]}
                                   for p, r in data["leaves"].items()],
                "transitions": data["transitions"][-8:]},
        }

    class Handler(BaseHTTPRequestHandler):
        def reply(self, code: int, body: object) -> None:
            raw = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:  # noqa: N802
            if self.path != "/v1/status":
                return self.send_error(404)
            self.reply(200, status())

        def do_POST(self) -> None:  # noqa: N802
            kind = self.path.removeprefix("/v1/membership/")
            if kind not in ("join", "leave"):
                return self.send_error(404)
            if time.monotonic() - started < args.ready_after:
                return self.reply(503, {"detail": "starting"})
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self.reply(*request(kind, body))

        def log_message(self, format: str, *a: object) -> None:  # noqa: A002
            pass

    def joiner() -> None:  # as peers/node.py's _join_loop
        while True:
            try:
                if int(fetch_status(cfg.join_via, timeout_s=2)["height"]) >= cfg.join_at_height:
                    join = Join(chain_id=genesis.chain_id, peer_id=key.peer_id, public_key=key.public_key,
                                moniker=cfg.moniker, address=cfg.external_address, model=cfg.model,
                                created_ms=int(time.time() * 1000))
                    request_membership(cfg.join_via, "join", sign(join, key).envelope)
                    log("asked to join", via=cfg.join_via)
                    return
            except ClientError as exc:
                log("join request not accepted yet", via=cfg.join_via, error=str(exc))
                if "already" in str(exc):
                    return
            time.sleep(0.2)

    def leaver() -> None:  # as peers/node.py's _scheduled_requests
        while chain()["height"] < cfg.leave_at_height:
            time.sleep(TICK_S)
        code, _ = request("leave", {k: base64.b64encode(v).decode() for k, v in sign(Leave(
            chain_id=genesis.chain_id, peer_id=key.peer_id, created_ms=int(time.time() * 1000)), key).envelope
            .model_dump().items()})
        log("asked to leave", code=code)

    log("starting", moniker=cfg.moniker, peer_id=key.peer_id, member=key.peer_id in genesis.validators)
    host, _, port = cfg.api_listen.rpartition(":")
    server = ThreadingHTTPServer((host, int(port)), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    time.sleep(args.ready_after)
    if cfg.join_via:
        threading.Thread(target=joiner, daemon=True).start()
    if cfg.leave_at_height:
        threading.Thread(target=leaver, daemon=True).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    log("serving", api=cfg.api_listen)
    while not stop.wait(0.1):
        pass
    server.shutdown()
    log("stopped on SIGTERM")
    return 0


def _wait_for(what: str, check: object, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _requests_seen(dir: Path, peer: str) -> list[dict[str, object]]:
    """The membership requests a fake member accepted at its API (from its log)."""
    lines = (dir / peer / "peer.log").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["msg"] == "membership request"]


JOINERS = """
[testnet]
chain_id = "members"
epoch_length = 4
[[peer]]
name = "a"
model = "smollm2"
weight = 2
[[peer]]
name = "b"
model = "gemma3"
[[peer]]
name = "c"
model = "smollm2"
leave_at_height = 6
[[peer]]
name = "d"
model = "gemma3"
join_at_height = 3
"""


def test_manifest_joiners_and_leavers(tmp_path: Path) -> None:
    state = launcher.up(Manifest.loads(JOINERS), tmp_path, peer_command=FAKE_MEMBER, ready_timeout_s=60)
    try:
        a, b, c, d = state.peers
        genesis = Genesis.load(tmp_path / "genesis.json")
        assert {v.moniker: v.weight for v in genesis.validators} == {"a": 2, "b": 1, "c": 1}  # not d
        assert genesis.params.epoch_length == 4 and genesis.params.models == ("smollm2", "gemma3")
        assert [(p.genesis, p.weight) for p in state.peers] == [(True, 2), (True, 1), (True, 1), (False, 0)]
        cfgs = {p.name: PeerConfig.load(Path(p.config)) for p in state.peers}
        assert (cfgs["d"].join_via, cfgs["d"].join_at_height, cfgs["d"].external_address) == (a.api_url, 3, d.p2p)
        assert {x.id for x in cfgs["d"].persistent_peers} == {a.peer_id, b.peer_id, c.peer_id}
        assert {x.id for x in cfgs["a"].persistent_peers} == {b.peer_id, c.peer_id}  # the joiner is not a founder
        assert (cfgs["c"].leave_at_height, cfgs["c"].join_via, cfgs["a"].leave_at_height) == (6, "", 0)
        saved = json.loads((tmp_path / "testnet.json").read_text())
        assert [p["genesis"] for p in saved["peers"]] == [True, True, True, False]

        def members() -> dict[str, bool | None]:
            return {r.name: r.member for r in launcher.status(tmp_path)}

        _wait_for("d in, c out", lambda: members() == {"a": True, "b": True, "c": False, "d": True})
        assert [(r["kind"], r["peer_id"]) for r in _requests_seen(tmp_path, "a")] == [("join", d.peer_id)]
        assert [(r["kind"], r["peer_id"]) for r in _requests_seen(tmp_path, "c")] == [("leave", c.peer_id)]
        rows = launcher.status(tmp_path)
        assert [r.weight_share for r in rows] == [0.5, 0.25, None, 0.25]  # of the set the furthest peer shows
        assert all(r.phase == "ready" for r in rows)  # c left, and follows the network
    finally:
        launcher.down(tmp_path)


def test_join_and_leave_a_running_testnet(tmp_path: Path) -> None:
    launcher.up(Manifest.from_args(3, ["smollm2"], epoch_length=4), tmp_path, peer_command=FAKE_MEMBER,
                ready_timeout_s=60)
    lines: list[str] = []
    try:
        joined = launcher.join(tmp_path, "gemma3", wait=True, progress=lines.append, peer_command=FAKE_MEMBER,
                               ready_timeout_s=60, member_timeout_s=30)
        p = joined.peer
        assert (p.name, p.model, p.genesis, p.weight) == ("peer3", "gemma3", False, 0)
        assert joined.boundary is not None and (joined.boundary - 1) % 4 == 0  # an epoch's first height
        # a joiner asks the member furthest ahead (any of the three, as the stub peers' heights go)
        assert any(re.search(r"peer[012] accepted the join request of peer3", line) for line in lines)
        assert any("heights advance only as questions are decided" in line for line in lines)
        state = launcher.load_state(tmp_path)
        assert state.peer("peer3").pid == p.pid and not _gone(p.pid or 0)
        cfg = PeerConfig.load(Path(p.config))
        assert (cfg.join_via, cfg.external_address, cfg.model, cfg.join_at_height) == (
            joined.via, p.p2p, "gemma3", 0)
        assert joined.via in {state.peer(f"peer{i}").api_url for i in range(3)}
        assert {x.id for x in cfg.persistent_peers} == {o.peer_id for o in state.peers[:3]}
        assert cfg.api_listen == p.api_url.removeprefix("http://") and cfg.genesis_file == "../genesis.json"
        assert [(r.name, r.member) for r in launcher.status(tmp_path)] == [
            ("peer0", True), ("peer1", True), ("peer2", True), ("peer3", True)]
        assert '"msg": "asked to join"' in launcher.logs(tmp_path, "peer3", 20)

        named = launcher.join(tmp_path, "smollm2", name="late", byzantine="wrong", peer_command=FAKE_MEMBER,
                              ready_timeout_s=60)  # no --wait: back once its join was accepted
        assert named.boundary is None and PeerConfig.load(Path(named.peer.config)).behaviour == "wrong"

        lines.clear()
        pid = launcher.load_state(tmp_path).peer("peer1").pid
        left = launcher.leave(tmp_path, "peer1", progress=lines.append)
        assert left.boundary is not None and (left.boundary - 1) % 4 == 0
        peer1 = launcher.load_state(tmp_path).peer("peer1")
        assert left.stopped == f"peer1: stopped (pid {pid})" and peer1.pid is None and _gone(pid or 0)
        # its own API got its leave (a join may have gone there too: a joiner asks the member furthest ahead)
        assert [(r["kind"], r["peer_id"]) for r in _requests_seen(tmp_path, "peer1") if r["kind"] == "leave"] == [
            ("leave", peer1.peer_id)]
        assert any("peer1 accepted the leave request of peer1" in line for line in lines)
        cfg = PeerConfig.load(Path(peer1.config))
        assert (cfg.join_via, cfg.leave_at_height) == ("", 0)  # a restart neither joins nor leaves again

        kept = launcher.leave(tmp_path, "peer3", keep_running=True)  # the joiner leaves, and stays up
        assert kept.stopped is None and not _gone(kept.peer.pid or 0)
        rows = {r.name: r for r in launcher.status(tmp_path)}
        assert {n: (r.phase, r.member) for n, r in rows.items()} == {
            "peer0": ("ready", True), "peer1": ("down", None), "peer2": ("ready", True), "peer3": ("ready", False),
            "late": ("ready", True)}
        assert PeerConfig.load(Path(kept.peer.config)).join_via == ""

        with pytest.raises(TestnetError, match=r"peer3 is not a member of the validator set at height \d+ "
                                               r"\(as .* reports\): it left, was removed, or never joined"):
            launcher.leave(tmp_path, "peer3")
        with pytest.raises(TestnetError, match="no peer named 'nobody'"):
            launcher.leave(tmp_path, "nobody")
        assert launcher.restart(tmp_path, "peer1", peer_command=FAKE_MEMBER, ready_timeout_s=60).pid is not None
    finally:
        report = launcher.down(tmp_path)
    assert len(report) == 5 and all(": stopped (pid" in line for line in report), report


def test_a_stopped_peer_leaves_through_another_member(tmp_path: Path) -> None:
    state = launcher.up(Manifest.from_args(3, ["smollm2"], epoch_length=4), tmp_path, peer_command=FAKE_MEMBER,
                        ready_timeout_s=60)
    try:
        victim = state.peer("peer2")
        assert victim.pid is not None
        os.killpg(victim.pid, signal.SIGKILL)
        os.waitpid(victim.pid, 0)
        left = launcher.leave(tmp_path, "peer2")
        assert left.stopped is None and left.boundary is not None
        assert [r["peer_id"] for r in _requests_seen(tmp_path, "peer0")] == [victim.peer_id]
    finally:
        launcher.down(tmp_path)


def test_join_and_leave_refuse_bad_requests(tmp_path: Path) -> None:
    model_dir = tmp_path / "models" / "tiny"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text("{}")
    net = tmp_path / "net"
    launcher.up(Manifest.from_args(2, ["smollm2"], epoch_length=4), net, peer_command=FAKE_MEMBER,
                ready_timeout_s=60)
    try:
        for kwargs, message in [
            ({"model": "llama"}, "model 'llama': expected smollm2 or gemma3"),
            ({"model": str(model_dir)}, f"--model '{model_dir}': the genesis of this testnet admits only "
                                        "smollm2, gemma3"),
            ({"model": "gemma3", "name": "peer0"}, "already has a peer named 'peer0'"),
            ({"model": "gemma3", "name": "Bad_Name"}, "--name: expected 1-64 characters"),
            ({"model": "gemma3", "byzantine": "evil"}, "--byzantine: expected one of none, wrong"),
        ]:
            with pytest.raises(TestnetError, match=re.escape(message)):
                launcher.join(net, peer_command=FAKE_MEMBER, **kwargs)  # type: ignore[arg-type]
        assert [p.name for p in launcher.load_state(net).peers] == ["peer0", "peer1"]  # nothing added
        with pytest.raises(TestnetError, match=r"peer bad exited during start-up \(exit status 3\)(.|\n)*bad stays "
                                               r"in .*testnet.json, stopped(.|\n)*testnet restart --dir .* --peer bad"):
            launcher.join(net, "gemma3", name="bad", peer_command=[sys.executable, "-c", "import sys; sys.exit(3)"])
        bad = launcher.load_state(net).peer("bad")  # recorded, stopped: `testnet restart` can retry it
        assert bad.pid is None and not bad.genesis
        launcher.leave(net, "peer1")
        with pytest.raises(TestnetError, match="peer0 is the only running member: the network cannot lose"):
            launcher.leave(net, "peer0")
    finally:
        launcher.down(net)
    with pytest.raises(TestnetError, match=f"the testnet in {net} is stopped .*testnet restart"):
        launcher.join(net, "gemma3", peer_command=FAKE_MEMBER)
    with pytest.raises(TestnetError, match="is stopped"):
        launcher.leave(net, "peer0")
    with pytest.raises(TestnetError, match="no testnet in"):
        launcher.join(tmp_path / "none", "gemma3")


def test_cli_join_and_leave(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(launcher, "DEFAULT_PEER_COMMAND", FAKE_MEMBER)
    d = str(tmp_path / "net")

    def run(*argv: str) -> int:
        args = _parse(["testnet", *argv])
        return int(args.func(args))

    assert run("up", "--peers", "2", "--dir", d, "--timeout", "60", "--epoch-length", "4") == 0
    assert Genesis.load(Path(d) / "genesis.json").params.epoch_length == 4
    capsys.readouterr()
    assert run("join", "--dir", d, "--model", "gemma3", "--name", "newbie", "--wait", "--timeout", "60") == 0
    out = capsys.readouterr()
    assert re.search(r"newbie \([0-9a-f]{12}, gemma3, api http://127.0.0.1:\d+\) is a member of the validator "
                     r"set from height \d+", out.out), out
    assert "newbie started" in out.err and re.search(r"peer[012] accepted the join request of newbie", out.err)
    assert run("status", "--dir", d, "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["member"]) for r in rows] == [("peer0", True), ("peer1", True), ("newbie", True)]
    assert run("leave", "--dir", d, "--peer", "newbie", "--timeout", "60") == 0
    out = capsys.readouterr()
    assert re.search(r"newbie left the validator set at height \d+\nnewbie: stopped \(pid \d+\)", out.out), out
    assert run("leave", "--dir", d, "--peer", "newbie") == 2
    assert "newbie is not a member of the validator set" in capsys.readouterr().err
    assert run("join", "--dir", d, "--model", "gemma3", "--timeout", "0") == 2
    assert "--timeout must be positive" in capsys.readouterr().err
    assert run("join", "--dir", d, "--model", "gpt5") == 2
    assert "model 'gpt5'" in capsys.readouterr().err
    assert run("up", "--peers", "2", "--dir", str(tmp_path / "x"), "--epoch-length", "3") == 2
    assert "testnet.epoch_length: 3 is outside [4, 10000]" in capsys.readouterr().err
    assert run("down", "--dir", d) == 0
    assert run("join", "--dir", d, "--model", "gemma3") == 2
    assert "is stopped" in capsys.readouterr().err


if __name__ == "__main__":  # a fake member peer (see _fake_member)
    sys.exit(_fake_member(sys.argv[1:]))
