"""Peer config: defaults, commented TOML round trip, and rejection of every kind of bad key."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from multillmn.config import MAX_LINK_DELAYS, ConfigError, PeerAddress, PeerConfig, render_toml


def test_rendered_default_round_trips_and_is_commented(tmp_path: Path) -> None:
    cfg = PeerConfig(persistent_peers=(PeerAddress("ab" * 20, "127.0.0.1:9000"),), model="gemma3")
    path = tmp_path / "config.toml"
    path.write_text(render_toml(cfg))
    text = path.read_text()
    assert text.count("\n# ") >= 15
    loaded = PeerConfig.load(path)
    assert loaded == cfg and loaded.base_dir == tmp_path


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[model]\nthreads = 'two'", "model.threads: expected int"),
        ("[model]\nthreads = 0", r"model.threads: 0 is outside"),
        ("[model]\nthreads = true", "model.threads: expected int"),
        ("[nope]\nx = 1", r"unknown section \[nope\]"),
        ("[api]\ncolour = 1", "unknown key api.colour"),
        ("[api]\nlisten = 'localhost'", "api.listen: expected host:port"),
        ("[p2p]\npeers = [{id = 'xyz', address = '127.0.0.1:1'}]", r"p2p.peers\[0\].id"),
        ("[p2p]\npeers = [{id = '" + "a" * 40 + "'}]", r"p2p.peers\[0\]: expected a table"),
        ("[log]\nlevel = 'loud'", "log.level"),
        ("[consensus]\ntimeout_propose_ms = -5", "consensus.timeout_propose_ms"),
        ("model = 3", r"\[model\] must be a table"),
        ("[ledger]\nsync_interval_ms = 0", "ledger.sync_interval_ms"),
        ("[ledger]\npath = ''", "ledger.path"),
        ("[ledger]\npath = 3", "ledger.path: expected str"),
        ("[p2p]\nmax_handshakes = 0", "p2p.max_handshakes: 0 is outside"),
        ("[p2p]\nhandshake_timeout_ms = 5", "p2p.handshake_timeout_ms: 5 is outside"),
        ("[p2p]\ninbound_peer_bytes = 10", "p2p.inbound_peer_bytes: 10 is outside"),
        ("[p2p]\nsend_queue_bytes = 'lots'", "p2p.send_queue_bytes: expected int"),
        ("[model]\nbatching = 'sometimes'", "model.batching: expected continuous | batches"),
        ("[model]\nbatching = true", "model.batching: expected str"),
    ],
)
def test_bad_config_is_rejected_with_the_key_named(toml: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PeerConfig.from_dict(tomllib.loads(toml))


def test_unreadable_and_invalid_toml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        PeerConfig.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        PeerConfig.load(bad)


def test_relative_paths_resolve_against_the_config_dir(tmp_path: Path) -> None:
    cfg = PeerConfig(base_dir=tmp_path)
    assert cfg.path("peer_key.pem") == tmp_path / "peer_key.pem"
    assert cfg.path("/abs/x") == Path("/abs/x")
    assert cfg.path(cfg.ledger_path) == tmp_path / "data" / "ledger.sqlite"
    loaded = PeerConfig.from_dict(tomllib.loads("[ledger]\npath = 'l.db'\nsync_interval_ms = 150"), tmp_path)
    assert loaded.path(loaded.ledger_path) == tmp_path / "l.db" and loaded.ledger_sync_interval_ms == 150


def test_byzantine_and_judge_keys_are_validated() -> None:
    cfg = PeerConfig.from_dict({"byzantine": {"behaviour": "collude", "slow_ms": 10}, "consensus": {"judge_band": 0}})
    assert (cfg.behaviour, cfg.slow_ms, cfg.judge_band) == ("collude", 10, 0)
    with pytest.raises(ConfigError, match="byzantine.behaviour: expected one of none, wrong"):
        PeerConfig.from_dict({"byzantine": {"behaviour": "evil"}})
    with pytest.raises(ConfigError, match="consensus.judge_band"):
        PeerConfig.from_dict({"consensus": {"judge_band": 1001}})


def test_shard_section_and_link_emulation_keys() -> None:
    cfg = PeerConfig.from_dict({"shard": {"devices_file": "devices.toml", "objective": "throughput",
                                          "request_timeout_s": 5, "startup_timeout_s": 60},
                                "p2p": {"link_delay_ms": 25, "link_loss": 0.1}})
    assert (cfg.shard_devices_file, cfg.shard_objective, cfg.shard_request_timeout_s) == ("devices.toml", "throughput", 5.0)
    assert (cfg.shard_startup_timeout_s, cfg.link_delay_ms, cfg.link_loss) == (60.0, 25, 0.1)
    default = PeerConfig()
    assert (default.shard_devices_file, default.link_delay_ms, default.link_loss) == ("", 0, 0.0)
    assert "[shard]" in render_toml(default) and "devices_file = \"\"" in render_toml(default)
    for data, message in [
        ({"shard": {"objective": "speed"}}, "shard.objective: expected latency | throughput"),
        ({"shard": {"devices_file": 3}}, "shard.devices_file: expected str"),
        ({"shard": {"request_timeout_s": 0}}, r"shard.request_timeout_s: 0.0 is outside"),
        ({"shard": {"startup_timeout_s": -1}}, r"shard.startup_timeout_s: -1.0 is outside"),
        ({"shard": {"workers": []}}, "unknown key shard.workers"),
        ({"p2p": {"link_delay_ms": -1}}, r"p2p.link_delay_ms: -1 is outside \[0, 60000\]"),
        ({"p2p": {"link_delay_ms": 1.5}}, "p2p.link_delay_ms: expected int"),
        ({"p2p": {"link_loss": 1}}, r"p2p.link_loss: 1.0 is outside \[0, 1\)"),
        ({"p2p": {"link_loss": -0.1}}, r"p2p.link_loss: -0.1 is outside"),
        ({"p2p": {"link_loss": "some"}}, "p2p.link_loss: expected float"),
    ]:
        with pytest.raises(ConfigError, match=message):
            PeerConfig.from_dict(data)


def test_per_destination_link_delays_round_trip_and_are_validated(tmp_path: Path) -> None:
    far, near = "ab" * 20, "cd" * 20
    cfg = PeerConfig.from_dict({"p2p": {"link_delay_ms": 10, "link_delays_ms": {near: 5, far: 80}}})
    assert cfg.link_delays_ms == ((far, 80), (near, 5)) and cfg.link_delay_ms == 10
    path = tmp_path / "config.toml"
    path.write_text(render_toml(cfg))
    assert f"link_delays_ms = {{{far} = 80, {near} = 5}}" in path.read_text()
    assert PeerConfig.load(path) == cfg
    path.write_text(render_toml(PeerConfig()))
    assert PeerConfig.load(path).link_delays_ms == ()
    many = {f"{i:040x}": 1 for i in range(MAX_LINK_DELAYS + 1)}
    assert PeerConfig.from_dict({"p2p": {"link_delays_ms": dict(list(many.items())[:-1])}}).link_delays_ms
    for data, message in [
        ({"link_delays_ms": [far]}, r"p2p.link_delays_ms: expected a table"),
        ({"link_delays_ms": {"peer1": 5}}, r"p2p.link_delays_ms: key 'peer1' is not a peer id"),
        ({"link_delays_ms": {far.upper(): 5}}, r"is not a peer id"),
        ({"link_delays_ms": {far: 60_001}}, rf"p2p.link_delays_ms.{far}: 60001 is outside \[0, 60000\]"),
        ({"link_delays_ms": {far: -1}}, r"-1 is outside"),
        ({"link_delays_ms": {far: 2.5}}, rf"p2p.link_delays_ms.{far}: expected int, got float"),
        ({"link_delays_ms": {far: True}}, r"expected int, got bool"),
        ({"link_delays_ms": many}, rf"{MAX_LINK_DELAYS + 1} destinations, at most {MAX_LINK_DELAYS}"),
    ]:
        with pytest.raises(ConfigError, match=message):
            PeerConfig.from_dict({"p2p": data})
    with pytest.raises(ConfigError, match="duplicate peer"):
        replace(PeerConfig(), link_delays_ms=((far, 1), (far, 2))).validate()
