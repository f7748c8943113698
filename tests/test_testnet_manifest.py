"""Testnet manifest: parsing, defaults, round-robin from arguments, and every rejection."""

from __future__ import annotations

from pathlib import Path

import pytest

from peers.shard.planner import plan
from testnet.manifest import DeviceSpec, Manifest, ManifestError, PeerSpec, check_model


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
    (_P + "network = 5\n", "peer 'p0': network must be a table"),
    (_P + "network = { delay = 10 }\n", "peer 'p0': network: unknown key delay"),
    (_P + "network = { delay_ms = -1 }\n", r"peer 'p0': network.delay_ms: -1 is outside \[0, 60000\]"),
    (_P + "network = { delay_ms = 2.5 }\n", "peer 'p0': network.delay_ms: expected an integer"),
    (_P + "network = { loss = 1.0 }\n", r"peer 'p0': network.loss: 1.0 is outside \[0, 1\)"),
    (_P + "network = { loss = 'high' }\n", "peer 'p0': network.loss: expected a number"),
    (_P + "devices = 3\n", "peer 'p0': devices must be an array"),
    (_P + "devices = [3]\n", r"peer 'p0': devices\[0\]: expected a table"),
    (_P + "devices = [{ name = 'a' }]\n", r"peer 'p0': devices\[0\]: missing required key memory_mb"),
    (_P + "devices = [{ memory_mb = 700 }]\n", r"peer 'p0': devices\[0\]: missing required key name"),
    (_P + "devices = [{ name = 'A B', memory_mb = 700 }]\n", r"peer 'p0': devices\[0\].name: expected"),
    (_P + "devices = [{ name = 'a', memory_mb = 700, gpu = 1 }]\n", r"peer 'p0': devices\[0\]: unknown key gpu"),
    (_P + "devices = [{ name = 'a', memory_mb = 0 }]\n", r"peer 'p0': device 'a': memory_mb: 0 is outside"),
    (_P + "devices = [{ name = 'a', memory_mb = 700, threads = 0 }]\n", r"device 'a': threads: 0 is outside"),
    (_P + "devices = [{ name = 'a', memory_mb = 700, delay_ms = -3 }]\n", r"device 'a': delay_ms: -3 is outside"),
    (_P + "devices = [{ name = 'a', memory_mb = 700, loss = 1 }]\n", r"device 'a': loss: 1 is outside \[0, 1\)"),
    (_P + "devices = [{ name = 'a', memory_mb = 700, bandwidth_kbit = 0 }]\n",
     r"peer 'p0': device 'a': bandwidth_kbit: 0 is outside \[1, "),
    (_P + "devices = [{ name = 'a', memory_mb = 700, bandwidth_kbit = 1.5 }]\n",
     "device 'a': bandwidth_kbit: expected an integer"),
    (_P + "devices = [{ name = 'a', memory_mb = 400 }, { name = 'a', memory_mb = 400 }]\n",
     "peer 'p0': duplicate device name 'a'"),
    (_P + "devices = [{ name = 'a', memory_mb = 200 }, { name = 'b', memory_mb = 200 }]\n",
     r"peer 'p0': devices: model 'smollm2' \(30 layers\) fits on no split over the devices \[a, b\]"),
    (_P + "devices = [" + ", ".join(f"{{ name = 'd{i}', memory_mb = 700 }}" for i in range(9)) + "]\n",
     "devices must be an array of at most 8 tables"),
    (_P + '[[peer]]\nname = "p0"\nmodel = "gemma3"\n', "duplicate peer name 'p0'"),
    ("[testnet]\nchain_id = ''\n" + _P, "testnet.chain_id: expected 1-64 characters"),
    ("[testnet]\nchain_id = 5\n" + _P, "testnet.chain_id: expected a string"),
    ("[testnet]\nthreads_per_peer = 0\n" + _P, r"testnet.threads_per_peer: 0 is outside \[1, 256\]"),
    ("[testnet]\nthreads_per_peer = '2'\n" + _P, "testnet.threads_per_peer: expected an integer"),
    ("[testnet]\nmax_new_tokens = 2000\n" + _P, r"testnet.max_new_tokens: 2000 is outside \[1, 1024\]"),
    ("testnet = 3\n" + _P, r"\[testnet\] must be a table"),
    ("peer = 3\n", r"\[\[peer\]\] tables"),
    ("[[peer]\n", "not valid TOML"),
    ("[testnet]\nepoch_length = 3\n" + _P, r"testnet.epoch_length: 3 is outside \[4, 10000\]"),
    ("[testnet]\nepoch_length = 10001\n" + _P, r"testnet.epoch_length: 10001 is outside \[4, 10000\]"),
    ("[testnet]\nepoch_length = 4.5\n" + _P, "testnet.epoch_length: expected an integer"),
    ("[testnet]\nepoch_length = true\n" + _P, "testnet.epoch_length: expected an integer"),
    (_P + "join_at_height = 0\n", r"peer 'p0': join_at_height: 0 is outside \[1, "),
    (_P + "join_at_height = '5'\n", "peer 'p0': join_at_height: expected an integer"),
    (_P + "leave_at_height = -1\n", r"peer 'p0': leave_at_height: -1 is outside \[1, "),
    (_P + "leave_at_height = 2.0\n", "peer 'p0': leave_at_height: expected an integer"),
    (_P + "join_at_height = 5\n", "every peer has join_at_height: at least one peer must be in the genesis"),
    (_P + "leave_at_height = 5\n", "every peer has leave_at_height: at least one must stay"),
    (_P + '[[peer]]\nname = "j"\nmodel = "gemma3"\njoin_at_height = 3\nweight = 2\n',
     "peer 'j': weight applies only to a genesis peer"),
    (_P + '[[peer]]\nname = "j"\nmodel = "gemma3"\njoin_at_height = 8\nleave_at_height = 8\n',
     r"peer 'j': leave_at_height \(8\) must be above join_at_height \(8\)"),
])
def test_bad_manifest_is_rejected(toml: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        Manifest.loads(toml)


def test_network_and_devices_are_parsed() -> None:
    m = Manifest.loads(_P + """network = { delay_ms = 20, loss = 0.01 }
devices = [
  { name = "laptop", threads = 2, memory_mb = 400, delay_ms = 2 },
  { name = "phone", memory_mb = 350.5, delay_ms = 10.5, loss = 0.02, bandwidth_kbit = 50000 },
]
byzantine = "slow"
slow_ms = 300
""")
    (p,) = m.peers
    assert (p.link_delay_ms, p.link_loss, p.byzantine, p.slow_ms) == (20, 0.01, "slow", 300)
    assert p.devices == (DeviceSpec("laptop", 400.0, threads=2, delay_ms=2.0),
                         DeviceSpec("phone", 350.5, threads=1, delay_ms=10.5, loss=0.02, bandwidth_kbit=50000))
    assert set(plan(p.shard_problem()).devices) == {"laptop", "phone"}  # the model fits only on both
    assert Manifest.loads(_P).peers[0].devices == () and Manifest.loads(_P + "network = {}\n").peers[0].link_loss == 0


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    with pytest.raises(ManifestError, match="cannot read manifest"):
        Manifest.load(path)
    path.write_text(_P + "weight = 0\n")
    with pytest.raises(ManifestError, match=f"manifest {path}: peer 'p0': weight"):
        Manifest.load(path)


@pytest.mark.parametrize("name", ["byzantine.toml", "weighted.toml", "sharded.toml"])
def test_example_manifests_are_valid(name: str) -> None:
    m = Manifest.load(Path(__file__).resolve().parents[1] / "testnet" / "examples" / name)
    assert len(m.peers) >= 4
    if name == "sharded.toml":
        edge, far = m.peers[0], m.peers[1]
        assert [d.name for d in edge.devices] == ["laptop", "phone"] and edge.devices[1].bandwidth_kbit == 50000
        assert (far.link_delay_ms, far.link_loss) == (40, 0.02) and m.peers[3].byzantine == "wrong"


def test_membership_keys_are_parsed(tmp_path: Path) -> None:
    m = Manifest.loads("""
[testnet]
epoch_length = 6
[[peer]]
name = "a"
model = "smollm2"
[[peer]]
name = "b"
model = "smollm2"
leave_at_height = 9
[[peer]]
name = "c"
model = "gemma3"
join_at_height = 4
[[peer]]
name = "d"
model = "gemma3"
join_at_height = 4
leave_at_height = 30
""")
    assert m.epoch_length == 6
    assert [(p.name, p.join_at_height, p.leave_at_height, p.in_genesis) for p in m.peers] == [
        ("a", 0, 0, True), ("b", 0, 9, True), ("c", 4, 0, False), ("d", 4, 30, False)]
    assert [p.name for p in m.genesis_peers] == ["a", "b"]
    assert m.admitted_models() == ("smollm2", "gemma3")
    assert Manifest.loads(_P).epoch_length is None  # the genesis default
    assert Manifest.from_args(2, ["smollm2"], epoch_length=5).epoch_length == 5
    with pytest.raises(ManifestError, match=r"testnet.epoch_length: 2 is outside \[4, 10000\]"):
        Manifest.from_args(2, ["smollm2"], epoch_length=2)


def test_joiner_models_must_fit_a_join_request(tmp_path: Path) -> None:
    plain = _hf_dir(tmp_path / "tiny")
    spaced = _hf_dir(tmp_path / "my models" / "tiny")
    m = Manifest.loads(f'{_P}[[peer]]\nname = "j"\nmodel = "{plain}"\njoin_at_height = 2\n'
                       f'[[peer]]\nname = "s"\nmodel = "{spaced}"\n')
    assert m.admitted_models() == ("smollm2", "gemma3", str(plain))  # a genesis peer's odd path is not admitted
    with pytest.raises(ManifestError, match="peer 'j': model .* cannot be declared in a join request"):
        Manifest.loads(f'{_P}[[peer]]\nname = "j"\nmodel = "{spaced}"\njoin_at_height = 2\n')
