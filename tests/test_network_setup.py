"""A network across machines, as operators set it up: init, export identities, build the genesis, configure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from multillmn.cli import main
from multillmn.config import PeerConfig
from multillmn.genesis import Genesis
from multillmn.identity import KeyPair


def _operators(tmp_path: Path, names: list[str]) -> list[Path]:
    homes = []
    for i, name in enumerate(names):
        home = tmp_path / name
        home.mkdir()
        assert main(["peer", "init", "--dir", str(home), "--moniker", name, "--model", "smollm2"]) == 0
        ident = tmp_path / f"{name}.json"
        assert main(["peer", "export", "--config", str(home / "config.toml"), "--address",
                     f"10.0.0.{i + 1}:26656", "--out", str(ident)]) == 0
        homes.append(home)
    return homes


def test_operators_build_one_genesis_and_every_peer_knows_the_others(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    names = ["alice", "bob", "carol", "dave"]
    homes = _operators(tmp_path, names)
    idents = [str(tmp_path / f"{n}.json") for n in names]
    genesis_path = tmp_path / "genesis.json"
    assert main(["genesis", "build", "--chain-id", "lab", "--weight", "dave=3", "--epoch-length", "20",
                 "--out", str(genesis_path), *idents]) == 0
    genesis = Genesis.load(genesis_path)
    assert genesis.chain_id == "lab" and {v.moniker: v.weight for v in genesis.validators} == {
        "alice": 1, "bob": 1, "carol": 1, "dave": 3}
    assert genesis.params.epoch_length == 20 and genesis.params.models == ("smollm2",)  # what joiners may run
    for i, home in enumerate(homes):
        assert main(["peer", "configure", "--config", str(home / "config.toml"), "--genesis", str(genesis_path),
                     *idents]) == 0
        cfg = PeerConfig.load(home / "config.toml")
        key = KeyPair.load(home / "peer_key.pem")
        assert Genesis.load(cfg.path(cfg.genesis_file)).digest() == genesis.digest()
        assert {p.address for p in cfg.persistent_peers} == {f"10.0.0.{j + 1}:26656" for j in range(4) if j != i}
        assert key.peer_id not in {p.id for p in cfg.persistent_peers}
    assert "4 validators" in capsys.readouterr().out


def test_bad_identities_and_weights_are_refused_with_the_reason(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _operators(tmp_path, ["alice", "bob"])
    alice, bob = tmp_path / "alice.json", tmp_path / "bob.json"
    out = str(tmp_path / "g.json")
    data = json.loads(alice.read_text())
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps({**data, "address": "10.9.9.9:26656"}))  # someone else moved alice's address
    cases = [
        (["genesis", "build", "--chain-id", "x", "--out", out, str(forged), str(bob)], "signature is not by"),
        (["genesis", "build", "--chain-id", "x", "--out", out, str(alice), str(alice)], "given twice"),
        (["genesis", "build", "--chain-id", "x", "--weight", "mallory=2", "--out", out, str(alice)], "not given"),
        (["genesis", "build", "--chain-id", "x", "--weight", "alice=0", "--out", out, str(alice)], "NAME=POSITIVE"),
    ]
    bad_address = tmp_path / "bad.json"
    bad_address.write_text(json.dumps({**data, "address": "nowhere"}))
    cases.append((["genesis", "build", "--chain-id", "x", "--out", out, str(bad_address)], "address"))
    not_json = tmp_path / "x.json"
    not_json.write_bytes(b"\x89PNG\r\n")
    cases.append((["genesis", "build", "--chain-id", "x", "--out", out, str(not_json)], "not JSON"))
    for argv, reason in cases:
        assert main(argv) == 2, argv
        assert reason in capsys.readouterr().err, reason
    assert not Path(out).exists()
    # a peer outside a fixed set cannot be configured for it; one that will ask to join needs a member's address
    assert main(["genesis", "build", "--chain-id", "x", "--weights", "static", "--out", out, str(bob)]) == 0
    assert main(["peer", "configure", "--config", str(tmp_path / "alice" / "config.toml"), "--genesis", out,
                 str(alice)]) == 2
    assert "is not a validator" in capsys.readouterr().err
    assert main(["genesis", "build", "--chain-id", "x", "--out", out, str(bob)]) == 0
    assert main(["peer", "configure", "--config", str(tmp_path / "alice" / "config.toml"), "--genesis", out,
                 str(alice)]) == 2
    assert "at least one validator" in capsys.readouterr().err
    assert main(["peer", "configure", "--config", str(tmp_path / "alice" / "config.toml"), "--genesis", out,
                 str(bob)]) == 0  # a joiner: it reaches bob
    capsys.readouterr()
    assert main(["genesis", "build", "--chain-id", "x", "--out", out, str(alice), str(bob)]) == 0
    assert main(["peer", "configure", "--config", str(tmp_path / "alice" / "config.toml"), "--genesis", out,
                 str(alice)]) == 2
    assert "no identity file for bob" in capsys.readouterr().err


def test_init_sets_the_listen_addresses_and_export_refuses_an_undialable_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """On a machine of a network a peer listens on every interface; others dial the address it exports."""
    home = tmp_path / "alice"
    assert main(["peer", "init", "--dir", str(home), "--moniker", "alice", "--p2p-listen", "0.0.0.0:26656",
                 "--api-listen", "0.0.0.0:8080"]) == 0
    cfg = PeerConfig.load(home / "config.toml")
    assert (cfg.p2p_listen, cfg.api_listen) == ("0.0.0.0:26656", "0.0.0.0:8080")
    ident = tmp_path / "alice.json"
    assert main(["peer", "export", "--config", str(home / "config.toml"), "--out", str(ident)]) == 2
    assert "cannot dial" in capsys.readouterr().err and not ident.exists()
    assert main(["peer", "export", "--config", str(home / "config.toml"), "--address", "10.0.0.1:26656",
                 "--out", str(ident)]) == 0
    assert json.loads(ident.read_text())["address"] == "10.0.0.1:26656"
    # a malformed address is refused before anything is written
    assert main(["peer", "init", "--dir", str(tmp_path / "bob"), "--p2p-listen", "nowhere"]) == 2
    assert "p2p.listen" in capsys.readouterr().err and not (tmp_path / "bob" / "peer_key.pem").exists()
    # the defaults are unchanged: loopback, for one machine
    assert main(["peer", "init", "--dir", str(tmp_path / "carol")]) == 0
    cfg = PeerConfig.load(tmp_path / "carol" / "config.toml")
    assert (cfg.p2p_listen, cfg.api_listen) == (PeerConfig().p2p_listen, PeerConfig().api_listen)
