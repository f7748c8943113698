"""The command line: peer init, start-up errors, ask against an unreachable peer, flag validation."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from multillmn.cli import main
from multillmn.config import PeerConfig
from multillmn.genesis import Genesis, Params
from multillmn.identity import KeyPair


def test_peer_init_writes_key_config_and_genesis(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "alice"
    home.mkdir()
    assert main(["peer", "init", "--dir", str(home), "--moniker", "alice", "--model", "gemma3"]) == 0
    key = KeyPair.load(home / "peer_key.pem")
    assert stat.S_IMODE((home / "peer_key.pem").stat().st_mode) == 0o600
    cfg = PeerConfig.load(home / "config.toml")
    assert (cfg.moniker, cfg.model) == ("alice", "gemma3")
    assert Genesis.load(home / "genesis.json").validators.weight_of(key.peer_id) == 1
    assert key.peer_id in capsys.readouterr().out
    assert main(["peer", "init", "--dir", str(home)]) == 2  # refuses to overwrite
    assert "already holds a peer" in capsys.readouterr().err


def test_peer_start_rejects_a_bad_config_with_the_key_named(tmp_path: Path) -> None:
    main(["peer", "init", "--dir", str(tmp_path)])
    config = tmp_path / "config.toml"
    config.write_text(config.read_text().replace("threads = 1", "threads = 0"))
    r = subprocess.run([sys.executable, "-m", "multillmn", "peer", "start", "--config", str(config)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "model.threads: 0 is outside" in r.stderr


def test_peer_start_rejects_a_key_outside_a_fixed_validator_set(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    main(["peer", "init", "--dir", str(tmp_path)])
    Genesis.build("other", [("x", KeyPair.generate().public_key, 1)], Params(weights="static")).save(
        tmp_path / "genesis.json")
    assert main(["peer", "start", "--config", str(tmp_path / "config.toml")]) == 2
    assert "is not a validator" in capsys.readouterr().err


def test_a_key_outside_the_genesis_may_start_where_members_change(tmp_path: Path) -> None:
    from peers.daemon import load_identity

    main(["peer", "init", "--dir", str(tmp_path)])
    Genesis.build("other", [("x", KeyPair.generate().public_key, 1)]).save(tmp_path / "genesis.json")
    key, genesis = load_identity(PeerConfig.load(tmp_path / "config.toml"))
    assert key.peer_id not in genesis.validators and genesis.params.weights == "adaptive"


def test_peer_start_refuses_a_ledger_of_another_network_in_one_line(tmp_path: Path) -> None:
    """The second-`make demo` failure: a ledger from an earlier network next to a new genesis."""
    from dag import Store
    from peers.ledger import network_of

    main(["peer", "init", "--dir", str(tmp_path)])
    cfg = PeerConfig.load(tmp_path / "config.toml")
    old = Genesis.build("single-peer", [("old", KeyPair.generate().public_key, 1)])
    ledger = cfg.path(cfg.ledger_path)
    ledger.parent.mkdir(parents=True)
    Store.open(ledger, network_of(old)).close()
    r = subprocess.run([sys.executable, "-m", "multillmn", "peer", "start", "--config", str(tmp_path / "config.toml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert f"belongs to chain 'single-peer' (genesis {old.digest().hex()[:16]})" in r.stderr
    assert f"(genesis {Genesis.load(tmp_path / 'genesis.json').digest().hex()[:16]})" in r.stderr


def test_ask_an_unreachable_peer_fails_clearly(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ask", "--peer", "http://127.0.0.1:9", "--timeout", "2", "hi?"]) == 2
    assert "cannot reach peer" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["ask", "--max-tokens", "0", "hi?"],
        ["ask", "--genesis", "/no/such/file", "hi?"],
        ["verify", "/no/such/cert.json"],
        ["peer", "start", "--config", "/no/such/config.toml"],
        ["peer", "launch"],
        ["ledger", "show", "0"],
        ["ledger", "show", "x"],
        ["ledger", "tail", "-n", "0"],
        ["ledger", "tail", "-n", "501"],
        ["ledger"],
    ],
)
def test_bad_flags_exit_2_with_a_message(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["ledger", "tail"], ["ledger", "show", "3"]])
def test_ledger_commands_against_an_unreachable_peer(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--peer", "http://127.0.0.1:9"]) == 2
    assert "cannot reach peer" in capsys.readouterr().err


def test_ledger_tail_and_show_render_a_peer_s_answers(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import httpx

    from multillmn import ledger_cli
    from tests.conftest import make_net
    from multillmn.certificate import build_certificate

    net = make_net([1, 1, 1, 1])
    value = net.value(["Paris"] * 4)
    cert = build_certificate(net.genesis, 3, 0, value, tuple(net.precommit(i, 3, 0, value) for i in range(3)))
    entry = {"index": 0, "position": 0, "event_hash": "ab" * 32, "type": "certificate", "bytes": 10,
             "height": 3, "value_id": cert["value_id"], "round": 0, "question": "Q?", "answer": "Paris"}
    calls: list[tuple[str, object]] = []

    def fake_get(peer: str, path: str, params: dict[str, int] | None = None) -> httpx.Response:
        calls.append((path, params))
        if path == "/v1/ledger":
            return httpx.Response(200, json={"offset": 0, "limit": 1, "total": 1, "state_hash": "cd" * 32,
                                             "entries": [entry]})
        if path == "/v1/certificates/3":
            return httpx.Response(200, json=cert)
        return httpx.Response(404, json={"detail": "no certificate"})

    monkeypatch.setattr(ledger_cli, "_get", fake_get)
    assert main(["ledger", "tail", "-n", "5"]) == 0
    out = capsys.readouterr().out
    assert "1 entries, state hash " + "cd" * 32 in out and "height 3" in out and "Paris" in out
    assert calls[-1] == ("/v1/ledger", {"offset": 0, "limit": 5})
    assert main(["ledger", "show", "3"]) == 0
    assert "height 3 round 0" in capsys.readouterr().out
    assert main(["ledger", "show", "4"]) == 1
    assert "no certificate for height 4" in capsys.readouterr().err
