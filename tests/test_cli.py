"""The command line: peer init, start-up errors, ask against an unreachable peer, flag validation."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from multillmn.cli import main
from multillmn.config import PeerConfig
from multillmn.genesis import Genesis
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


def test_peer_start_rejects_a_key_outside_the_validator_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["peer", "init", "--dir", str(tmp_path)])
    Genesis.build("other", [("x", KeyPair.generate().public_key, 1)]).save(tmp_path / "genesis.json")
    assert main(["peer", "start", "--config", str(tmp_path / "config.toml")]) == 2
    assert "is not a validator" in capsys.readouterr().err


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
    ],
)
def test_bad_flags_exit_2_with_a_message(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err
