"""Testnet manifest: parsing, defaults, round-robin from arguments, and every rejection."""

from __future__ import annotations

from pathlib import Path

import pytest

from testnet.manifest import Manifest, ManifestError, PeerSpec, check_model


def _hf_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def test_full_manifest_is_parsed(tmp_path: Path) -> None:
    model_dir = _hf_dir(tmp_path / "models" / "tiny")
    text = """
[testnet]
chain_id = "my-chain"
threads_per_peer = 2
max_new_tokens = 64

[[peer]]
name = "alpha"
model = "smollm2"
weight = 3
byzantine = "none"
network = {}

[[peer]]
name = "beta-2"
model = "models/tiny"
"""
    path = tmp_path / "net.toml"
    path.write_text(text)
    m = Manifest.load(path)
    assert m.chain_id == "my-chain" and m.threads_per_peer == 2 and m.max_new_tokens == 64
    assert m.peers == (PeerSpec("alpha", "smollm2", 3, "none"), PeerSpec("beta-2", str(model_dir.resolve()), 1))


def test_defaults_apply_without_testnet_section() -> None:
    m = Manifest.loads('[[peer]]\nname = "p"\nmodel = "gemma3"\n')
    assert (m.chain_id, m.threads_per_peer, m.max_new_tokens) == ("local-testnet", 1, 48)
    assert m.peers == (PeerSpec("p", "gemma3", weight=1, byzantine="none"),)


def test_from_args_assigns_models_round_robin() -> None:
    m = Manifest.from_args(5, ["smollm2", "gemma3"])
    assert [(p.name, p.model) for p in m.peers] == [
        ("peer0", "smollm2"), ("peer1", "gemma3"), ("peer2", "smollm2"), ("peer3", "gemma3"), ("peer4", "smollm2")]
    assert all(p.weight == 1 for p in m.peers) and m.chain_id == "local-testnet"


def test_from_args_accepts_a_model_directory(tmp_path: Path) -> None:
    model_dir = _hf_dir(tmp_path / "hf")
    m = Manifest.from_args(2, [str(model_dir)])
    assert {p.model for p in m.peers} == {str(model_dir.resolve())}


@pytest.mark.parametrize(("peers", "models", "message"), [
    (0, ["smollm2"], "1 to 64 peers, got 0"),
    (65, ["smollm2"], "1 to 64 peers, got 65"),
    (3, [], "at least one model"),
    (3, ["llama"], "model 'llama': expected smollm2 or gemma3"),
])
def test_from_args_rejections(peers: int, models: list[str], message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        Manifest.from_args(peers, models)


def test_model_directory_without_config_json_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no config.json"):
        check_model(str(tmp_path))


def test_sixty_four_peers_is_the_maximum() -> None:
    assert len(Manifest.from_args(64, ["smollm2"]).peers) == 64
    peers = "".join(f'[[peer]]\nname = "p{i}"\nmodel = "smollm2"\n' for i in range(65))
    with pytest.raises(ManifestError, match="1 to 64 peers, got 65"):
        Manifest.loads(peers)


_P = '[[peer]]\nname = "p0"\nmodel = "smollm2"\n'


@pytest.mark.parametrize(("toml", "message"), [
    ("[testnet]\nchain_id = 'x'\n", "defines no"),
    ("colour = 1\n" + _P, "manifest: unknown key colour"),
    ("[testnet]\nseed = 1\nspeed = 2\n" + _P, r"\[testnet\]: unknown keys seed, speed"),
    ('[[peer]]\nname = "p0"\nmodel = "smollm2"\ncpu = 1\n', r"peer\[0\]: unknown key cpu"),
    ('[[peer]]\nmodel = "smollm2"\n', r"peer\[0\]: missing required key name"),
    ('[[peer]]\nname = "p0"\n', r"peer\[0\]: missing required key model"),
    ('[[peer]]\nname = "Peer_0"\nmodel = "smollm2"\n', r"peer\[0\].name: expected 1-64 characters of \[a-z0-9-\]"),
    ('[[peer]]\nname = ""\nmodel = "smollm2"\n', r"peer\[0\].name"),
    ('[[peer]]\nname = 7\nmodel = "smollm2"\n', r"peer\[0\].name"),
    ('[[peer]]\nname = "p0"\nmodel = "gpt5"\n', "peer 'p0': model 'gpt5': expected smollm2 or gemma3"),
    ('[[peer]]\nname = "p0"\nmodel = 3\n', "peer 'p0': model: expected a non-empty string"),
    (_P + "weight = 0\n", r"peer 'p0': weight: 0 is outside \[1, "),
    (_P + "weight = -2\n", "weight: -2 is outside"),
    (_P + "weight = 1.5\n", "weight: expected an integer"),
    (_P + "weight = true\n", "weight: expected an integer"),
    (_P + 'byzantine = "equivocate"\n', "byzantine: expected one of none, wrong, junk"),
    (_P + 'byzantine = "wrong"\nslow_ms = 5\n', "slow_ms applies only to byzantine = 'slow'"),
    (_P + 'byzantine = "crash"\ncrash_at_height = 0\n', r"crash_at_height: 0 is outside \[1, "),
    (_P + "network = { delay_ms = 10 }\n", r"network settings \(delay_ms\) are not supported yet"),
    (_P + "network = 5\n", "network must be a table"),
    (_P + '[[peer]]\nname = "p0"\nmodel = "gemma3"\n', "duplicate peer name 'p0'"),
    ("[testnet]\nchain_id = ''\n" + _P, "testnet.chain_id: expected 1-64 characters"),
    ("[testnet]\nchain_id = 5\n" + _P, "testnet.chain_id: expected a string"),
    ("[testnet]\nthreads_per_peer = 0\n" + _P, r"testnet.threads_per_peer: 0 is outside \[1, 256\]"),
    ("[testnet]\nthreads_per_peer = '2'\n" + _P, "testnet.threads_per_peer: expected an integer"),
    ("[testnet]\nmax_new_tokens = 2000\n" + _P, r"testnet.max_new_tokens: 2000 is outside \[1, 1024\]"),
    ("testnet = 3\n" + _P, r"\[testnet\] must be a table"),
    ("peer = 3\n", r"\[\[peer\]\] tables"),
    ("[[peer]\n", "not valid TOML"),
])
def test_bad_manifest_is_rejected(toml: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        Manifest.loads(toml)


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    with pytest.raises(ManifestError, match="cannot read manifest"):
        Manifest.load(path)
    path.write_text(_P + "weight = 0\n")
    with pytest.raises(ManifestError, match=f"manifest {path}: peer 'p0': weight"):
        Manifest.load(path)
