"""Switching judges' verdicts on (ADR 0022) where a network is set up: `genesis build`, the manifest, `testnet up`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from multillmn.cli import main
from multillmn.genesis import Genesis
from testnet import cli, launcher
from testnet.manifest import Manifest, ManifestError

FAKE = [sys.executable, str(Path(__file__).with_name("fakepeer.py")), "--ready-after", "0.5"]
_PEERS = '[[peer]]\nname = "a"\nmodel = "smollm2"\n[[peer]]\nname = "b"\nmodel = "gemma3"\n'


def _identity(tmp_path: Path, name: str) -> str:
    home = tmp_path / name
    home.mkdir()
    assert main(["peer", "init", "--dir", str(home), "--moniker", name, "--model", "smollm2"]) == 0
    ident = tmp_path / f"{name}.json"
    assert main(["peer", "export", "--config", str(home / "config.toml"), "--address", "10.0.0.1:26656",
                 "--out", str(ident)]) == 0
    return str(ident)


def test_genesis_build_sets_the_verdict_rule_and_margin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ident = _identity(tmp_path, "alice")
    plain, veto = tmp_path / "plain.json", tmp_path / "veto.json"
    assert main(["genesis", "build", "--chain-id", "lab", "--out", str(plain), ident]) == 0
    assert main(["genesis", "build", "--chain-id", "lab", "--verdict-rule", "veto", "--verdict-margin", "250",
                 "--out", str(veto), ident]) == 0
    p, v = Genesis.load(plain).params, Genesis.load(veto).params
    assert (p.verdict_rule, p.verdict_margin) == ("none", 500)
    assert (v.verdict_rule, v.verdict_margin) == ("veto", 250)
    assert Genesis.load(plain).digest() != Genesis.load(veto).digest()
    with pytest.raises(SystemExit):
        main(["genesis", "build", "--chain-id", "lab", "--verdict-rule", "majority", "--out", str(plain), ident])
    with pytest.raises(SystemExit):
        main(["genesis", "build", "--chain-id", "lab", "--verdict-margin", "2001", "--out", str(plain), ident])
    assert "invalid choice: 'majority'" in capsys.readouterr().err


def test_the_manifest_s_verdict_rule_reaches_the_testnet_genesis(tmp_path: Path) -> None:
    manifest = Manifest.loads('[testnet]\nverdict_rule = "veto"\nverdict_margin = 400\n' + _PEERS)
    assert (manifest.verdict_rule, manifest.verdict_margin) == ("veto", 400)
    assert Manifest.loads(_PEERS).verdict_rule == "none"
    state = launcher.up(manifest, tmp_path, peer_command=FAKE, ready_timeout_s=60)
    try:
        params = Genesis.load(tmp_path / "genesis.json").params
        assert (params.verdict_rule, params.verdict_margin) == ("veto", 400)
        assert len(state.peers) == 2
    finally:
        launcher.down(tmp_path)


@pytest.mark.parametrize(("testnet", "message"), [
    ('verdict_rule = "vote"\n', r"testnet.verdict_rule: expected none \| veto, got 'vote'"),
    ("verdict_margin = -1\n", "testnet.verdict_margin"),
    ("verdict_margin = 2001\n", "testnet.verdict_margin"),
    ('verdict_margin = "500"\n', "testnet.verdict_margin"),
])
def test_bad_verdict_settings_in_a_manifest_are_refused(testnet: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        Manifest.loads("[testnet]\n" + testnet + _PEERS)


def test_testnet_up_takes_a_verdict_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launcher, "DEFAULT_PEER_COMMAND", FAKE)
    parser = argparse.ArgumentParser(prog="multillmn")
    cli.add_testnet_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["testnet", "up", "--peers", "2", "--dir", str(tmp_path), "--verdict-rule", "veto",
                              "--timeout", "60"])
    assert args.func(args) == 0
    try:
        assert Genesis.load(tmp_path / "genesis.json").params.verdict_rule == "veto"
    finally:
        launcher.down(tmp_path)
