"""Testnet manifest: which peers to run, with which model, weight, faults, links and devices.

A manifest is a TOML file::

    [testnet]
    chain_id = "local-testnet"   # default
    threads_per_peer = 1         # default; torch/OpenMP threads of each peer
    max_new_tokens = 48          # default
    epoch_length = 100           # default (the genesis default); heights per epoch: members change only
                                 # at an epoch's first height; 4-10000
    broadcast = "mesh"           # default; every peer's [p2p] broadcast: mesh | tree (issue 13)
    link_plane = { seed = 1, min_delay_ms = 5, max_delay_ms = 80 }  # optional: per-link delays from seeded
                                 # points on a plane (testnet/links.py)
    verdict_rule = "none"        # default; the genesis verdict_rule: none | veto (judges' verdicts, ADR 0022)
    verdict_margin = 500         # default; the genesis verdict_margin (per mille, 0-2000)

    [[peer]]
    name = "peer0"               # unique, [a-z0-9-]+
    model = "smollm2"            # smollm2 | gemma3 | path to a Hugging Face model dir
    weight = 1                   # default; positive integer voting weight
    byzantine = "none"           # fault injection: none | wrong | junk | copy-late | collude |
                                 # double-vote | conflicting-proposals | withhold | crash | slow
    slow_ms = 2000               # for byzantine = "slow": delay of its votes and proposals
    crash_at_height = 3          # for byzantine = "crash": the height at which it exits
    from_height = 1              # before this height a byzantine peer only answers wrongly
    join_at_height = 6           # not in the genesis: starts with the others and asks to join (via the
                                 # first genesis peer) once the network reaches this height
    leave_at_height = 12         # asks to leave the validator set once the network reaches this height
    network = { delay_ms = 20, loss = 0.01 }   # emulated conditions on every message it sends
    links = { peer3 = 120 }      # one-way delay (ms) of its messages to single peers, over network.delay_ms
                                 # and the plane
    # EdgeShard: split this peer's model over devices, one shard worker process each
    devices = [
      { name = "laptop", threads = 1, memory_mb = 400, delay_ms = 2 },
      { name = "phone", memory_mb = 350, delay_ms = 10, loss = 0.01, bandwidth_kbit = 50000 },
    ]

``network``: ``delay_ms`` (integer, 0-60000) and ``loss`` (probability in
[0, 1)) become the peer's ``[p2p] link_delay_ms`` / ``link_loss``, applied by
its transport's ``LinkShaper`` to every outgoing message; ``links`` and
``[testnet] link_plane`` set delays per destination instead
(:mod:`testnet.links`: they become ``[p2p] link_delays_ms``). ``devices``: the
launcher starts one shard worker per device and writes the peer's device file
and ``[shard]`` section; ``name`` ([a-z0-9-]+, unique in the peer) and
``memory_mb`` (> 0, the memory its shard may use) are required, ``threads``
(default 1), ``delay_ms`` / ``loss`` (the driving peer's ``LinkShaper`` on that
worker's link, both directions; default 0) and ``bandwidth_kbit`` (a ``tc tbf``
rate on a veth pair into a network namespace of its own: needs root; default
unlimited, on loopback) are optional. A peer whose model fits on no split of
its devices (the planner's memory model, as the peer will plan) is rejected.

Membership (ADR 0016): the genesis holds the peers without ``join_at_height``
(at least one); its ``models`` admit smollm2, gemma3 and the manifest's model
directories, so ``multillmn testnet join`` can add any of them. A joiner's
weight is set by the membership rule, so it takes no ``weight``; its model
name must fit a join request (``[A-Za-z0-9._:/+-]``, at most 128
characters). Heights advance only as questions are decided: a join or leave
takes effect at the first epoch boundary at least two heights after it is
committed.

Unknown keys are rejected by name. :meth:`Manifest.from_args` builds the
manifest behind ``multillmn testnet up --peers N --models a,b``.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consensus.membership import MAX_EPOCH_LENGTH
from consensus.verdicts import GENESIS_RULES, MAX_VERDICT
from multillmn.config import BROADCAST_MODES, BYZANTINE_BEHAVIOURS
from peers.shard.planner import Device, Link, Network, NoFeasiblePlan, Problem, plan
from peers.shard.profiles import KNOWN_SHAPES, ModelShape, profile_from_shape
from testnet.links import MAX_LINK_DELAY_MS, LinkError, LinkPlane, check_links, link_delays_ms

__all__ = ["KNOWN_MODELS", "MAX_DEVICES", "MAX_PEERS", "DeviceSpec", "Manifest", "ManifestError", "PeerSpec",
           "check_join_model", "check_model", "is_peer_name"]

KNOWN_MODELS = ("smollm2", "gemma3")
MAX_PEERS = 64
_NAME = re.compile(r"^[a-z0-9-]+$")
_TESTNET_KEYS = ("chain_id", "threads_per_peer", "max_new_tokens", "epoch_length", "broadcast", "link_plane",
                 "verdict_rule", "verdict_margin")
_PEER_KEYS = ("name", "model", "weight", "byzantine", "slow_ms", "crash_at_height", "from_height", "network",
              "links", "devices", "join_at_height", "leave_at_height")
_JOIN_MODEL = re.compile(r"^[A-Za-z0-9._:/+-]{1,128}$")  # consensus.messages.Join.model
MAX_HEIGHT = 2**40
_NETWORK_KEYS = ("delay_ms", "loss")
_DEVICE_KEYS = ("name", "threads", "memory_mb", "delay_ms", "loss", "bandwidth_kbit")
MAX_DEVICES = 8
MIN_EPOCH_LENGTH = 4  # as multillmn.genesis.Params
MAX_DELAY_MS = MAX_LINK_DELAY_MS
SHARD_CONTEXT_TOKENS = 2048  # as peers.shard.engine plans


class ManifestError(ValueError):
    """The manifest (or the equivalent command-line options) is invalid."""


def check_model(value: object, base_dir: Path = Path(".")) -> str:
    """Return a known model name, or the absolute path of a Hugging Face model directory."""
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(f"model: expected a non-empty string, got {value!r}")
    if value in KNOWN_MODELS:
        return value
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    path = path.resolve()
    if not path.is_dir():
        raise ManifestError(f"model {value!r}: expected {' or '.join(KNOWN_MODELS)}, "
                            f"or a path to a Hugging Face model directory ({path} is not a directory)")
    if not (path / "config.json").is_file():
        raise ManifestError(f"model {value!r}: {path} has no config.json, so it is not a Hugging Face model directory")
    return str(path)


def is_peer_name(value: object) -> bool:
    """1-64 characters of [a-z0-9-]: a peer's name (its directory in the testnet)."""
    return isinstance(value, str) and bool(_NAME.match(value)) and len(value) <= 64


def check_join_model(where: str, model: str) -> str:
    """``model`` if a join request can declare it (:class:`consensus.messages.Join`), else :class:`ManifestError`."""
    if not _JOIN_MODEL.match(model):
        raise ManifestError(f"{where}: model {model!r} cannot be declared in a join request (at most 128 characters "
                            "of [A-Za-z0-9._:/+-]); move the model directory to a shorter, plain path")
    return model


def _int(where: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ManifestError(f"{where}: expected an integer, got {value!r}")
    if not low <= value <= high:
        raise ManifestError(f"{where}: {value} is outside [{low}, {high}]")
    return value


def _number(where: str, value: object, low: float, high: float, *, high_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ManifestError(f"{where}: expected a number, got {value!r}")
    if not low <= value <= high or (high_open and value == high):
        raise ManifestError(f"{where}: {value} is outside [{low}, {high}{')' if high_open else ']'}")
    return float(value)


def _links_table(where: str, value: object) -> dict[str, int]:
    """A peer's ``links`` table, types and ranges checked; its names are checked against the manifest later."""
    if not isinstance(value, dict):
        raise ManifestError(f"{where}: links must be a table {{ <peer name> = <delay ms>, ... }}")
    if len(value) >= MAX_PEERS:
        raise ManifestError(f"{where}: links names {len(value)} peers; a testnet has at most {MAX_PEERS}")
    for name, ms in value.items():
        if not is_peer_name(name):
            raise ManifestError(f"{where}: links.{name}: expected a peer name (1-64 characters of [a-z0-9-])")
        _int(f"{where}: links.{name}", ms, 0, MAX_DELAY_MS)
    return dict(value)


def _unknown(where: str, keys: dict[str, Any], allowed: tuple[str, ...]) -> None:
    extra = sorted(set(keys) - set(allowed))
    if extra:
        raise ManifestError(f"{where}: unknown key{'s' if len(extra) > 1 else ''} {', '.join(extra)} "
                            f"(allowed: {', '.join(allowed)})")


@dataclass(frozen=True)
class DeviceSpec:
    """A device holding part of a peer's model: one shard worker process."""

    name: str
    memory_mb: float
    threads: int = 1
    delay_ms: float = 0.0
    loss: float = 0.0
    bandwidth_kbit: int | None = None  # None: unlimited (loopback); else tc tbf in a network namespace

    @classmethod
    def from_dict(cls, where: str, index: int, data: object) -> DeviceSpec:
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: devices[{index}]: expected a table {{ name, memory_mb, ... }}")
        _unknown(f"{where}: devices[{index}]", data, _DEVICE_KEYS)
        for key in ("name", "memory_mb"):
            if key not in data:
                raise ManifestError(f"{where}: devices[{index}]: missing required key {key}")
        name = data["name"]
        if not isinstance(name, str) or not _NAME.match(name) or len(name) > 32:
            raise ManifestError(f"{where}: devices[{index}].name: expected 1-32 characters of [a-z0-9-], got {name!r}")
        at = f"{where}: device {name!r}"
        kbit = data.get("bandwidth_kbit")
        return cls(
            name=name,
            memory_mb=_number(f"{at}: memory_mb", data["memory_mb"], 1, 2**20),
            threads=_int(f"{at}: threads", data.get("threads", 1), 1, 256),
            delay_ms=_number(f"{at}: delay_ms", data.get("delay_ms", 0), 0, MAX_DELAY_MS),
            loss=_number(f"{at}: loss", data.get("loss", 0.0), 0, 1, high_open=True),
            bandwidth_kbit=None if kbit is None else _int(f"{at}: bandwidth_kbit", kbit, 1, 100_000_000),
        )


@dataclass(frozen=True)
class PeerSpec:
    """One peer of the testnet."""

    name: str
    model: str
    weight: int = 1
    byzantine: str = "none"
    slow_ms: int = 2000
    crash_at_height: int = 3
    from_height: int = 1
    link_delay_ms: int = 0
    link_loss: float = 0.0
    devices: tuple[DeviceSpec, ...] = ()
    join_at_height: int = 0  # 0: in the genesis; else it joins once the network reaches this height
    leave_at_height: int = 0  # 0: never asks to leave by itself
    links: tuple[tuple[str, int], ...] = ()  # (other peer's name, one-way delay ms): per-destination delays

    @property
    def in_genesis(self) -> bool:
        return self.join_at_height == 0

    @classmethod
    def from_dict(cls, index: int, data: object, base_dir: Path) -> PeerSpec:
        where = f"peer[{index}]"
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: expected a table")
        _unknown(where, data, _PEER_KEYS)
        for key in ("name", "model"):
            if key not in data:
                raise ManifestError(f"{where}: missing required key {key}")
        name = data["name"]
        if not is_peer_name(name):
            raise ManifestError(f"{where}.name: expected 1-64 characters of [a-z0-9-], got {name!r}")
        where = f"peer {name!r}"
        try:
            model = check_model(data["model"], base_dir)
        except ManifestError as exc:
            raise ManifestError(f"{where}: {exc}") from None
        weight = _int(f"{where}: weight", data.get("weight", 1), 1, 2**40)
        byzantine = data.get("byzantine", "none")
        if byzantine not in BYZANTINE_BEHAVIOURS:
            raise ManifestError(f"{where}: byzantine: expected one of {', '.join(BYZANTINE_BEHAVIOURS)}, "
                                f"got {byzantine!r}")
        for key, needs in (("slow_ms", "slow"), ("crash_at_height", "crash")):
            if key in data and byzantine != needs:
                raise ManifestError(f"{where}: {key} applies only to byzantine = {needs!r}")
        slow_ms = _int(f"{where}: slow_ms", data.get("slow_ms", 2000), 0, 3_600_000)
        crash_at_height = _int(f"{where}: crash_at_height", data.get("crash_at_height", 3), 1, 2**31)
        from_height = _int(f"{where}: from_height", data.get("from_height", 1), 1, 2**31)
        if "from_height" in data and byzantine == "none":
            raise ManifestError(f"{where}: from_height applies only to a byzantine peer")
        network = data.get("network", {})
        if not isinstance(network, dict):
            raise ManifestError(f"{where}: network must be a table {{ delay_ms, loss }}")
        _unknown(f"{where}: network", network, _NETWORK_KEYS)
        delay = _int(f"{where}: network.delay_ms", network.get("delay_ms", 0), 0, MAX_DELAY_MS)
        loss = _number(f"{where}: network.loss", network.get("loss", 0.0), 0, 1, high_open=True)
        raw_devices = data.get("devices", [])
        if not isinstance(raw_devices, list) or len(raw_devices) > MAX_DEVICES:
            raise ManifestError(f"{where}: devices must be an array of at most {MAX_DEVICES} tables")
        devices = tuple(DeviceSpec.from_dict(where, i, d) for i, d in enumerate(raw_devices))
        names = [d.name for d in devices]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ManifestError(f"{where}: duplicate device name {dup!r}")
        join_at = _int(f"{where}: join_at_height", data["join_at_height"], 1, MAX_HEIGHT) \
            if "join_at_height" in data else 0
        leave_at = _int(f"{where}: leave_at_height", data["leave_at_height"], 1, MAX_HEIGHT) \
            if "leave_at_height" in data else 0
        if join_at:
            if "weight" in data:
                raise ManifestError(f"{where}: weight applies only to a genesis peer (a joiner's weight is set by "
                                    "the membership rule); drop weight or join_at_height")
            check_join_model(where, model)
        if join_at and leave_at and leave_at <= join_at:
            raise ManifestError(f"{where}: leave_at_height ({leave_at}) must be above join_at_height ({join_at})")
        spec = cls(name=name, model=model, weight=weight, byzantine=byzantine, slow_ms=slow_ms,
                   crash_at_height=crash_at_height, from_height=from_height, link_delay_ms=delay, link_loss=loss,
                   devices=devices, join_at_height=join_at, leave_at_height=leave_at,
                   links=tuple(sorted(_links_table(where, data.get("links", {})).items())))
        if devices:
            spec.check_devices_fit()
        return spec

    def shard_problem(self) -> Problem:
        """The EdgeShard planning problem of this peer's devices (what its ShardedEngine will solve)."""
        if self.model in KNOWN_SHAPES:
            shape = KNOWN_SHAPES[self.model]
        else:
            try:
                shape = ModelShape.from_hf_config(Path(self.model).name, json.loads(
                    (Path(self.model) / "config.json").read_text(encoding="utf-8")))
            except (OSError, ValueError) as exc:
                raise ManifestError(f"peer {self.name!r}: cannot read the shape of model {self.model}: {exc}") from None
        devices = tuple(Device(d.name, int(d.memory_mb * 2**20), speed=float(d.threads)) for d in self.devices)
        links = {d.name: Link(d.delay_ms, d.bandwidth_kbit * 1000 / 8 if d.bandwidth_kbit else math.inf)
                 for d in self.devices}
        return Problem(profile_from_shape(shape, context_tokens=SHARD_CONTEXT_TOKENS), devices, Network.star(links))

    def check_devices_fit(self) -> None:
        """:class:`ManifestError` if the model fits on no split of the peer's devices (memory)."""
        try:
            plan(self.shard_problem())
        except NoFeasiblePlan as exc:
            raise ManifestError(f"peer {self.name!r}: devices: {exc}") from None


@dataclass(frozen=True)
class Manifest:
    """A validated testnet description."""

    peers: tuple[PeerSpec, ...]
    chain_id: str = "local-testnet"
    threads_per_peer: int = 1
    max_new_tokens: int = 48
    epoch_length: int | None = None  # None: the genesis default (multillmn.genesis.Params)
    broadcast: str = "mesh"  # every peer's [p2p] broadcast
    link_plane: LinkPlane | None = None  # per-link delays from points on a plane (testnet.links)
    verdict_rule: str = "none"  # the genesis verdict_rule (ADR 0022)
    verdict_margin: int = 500  # the genesis verdict_margin

    @property
    def genesis_peers(self) -> tuple[PeerSpec, ...]:
        """The peers in the genesis (without ``join_at_height``), in manifest order."""
        return tuple(p for p in self.peers if p.in_genesis)

    def admitted_models(self) -> tuple[str, ...]:
        """The genesis ``models`` param: the known models and every other model of the manifest that a
        join request can declare."""
        extra = [p.model for p in self.peers if p.model not in KNOWN_MODELS and _JOIN_MODEL.match(p.model)]
        return (*KNOWN_MODELS, *sorted(set(extra)))

    def validate(self) -> Manifest:
        """Raise :class:`ManifestError` for a bad peer count, duplicate names or bad settings."""
        if not 1 <= len(self.peers) <= MAX_PEERS:
            raise ManifestError(f"a testnet needs 1 to {MAX_PEERS} peers, got {len(self.peers)}")
        seen: set[str] = set()
        for p in self.peers:
            if p.name in seen:
                raise ManifestError(f"duplicate peer name {p.name!r}")
            seen.add(p.name)
        if not isinstance(self.chain_id, str) or not self.chain_id or len(self.chain_id) > 64:
            raise ManifestError(f"testnet.chain_id: expected 1-64 characters, got {self.chain_id!r}")
        _int("testnet.threads_per_peer", self.threads_per_peer, 1, 256)
        _int("testnet.max_new_tokens", self.max_new_tokens, 1, 1024)
        if self.epoch_length is not None:
            _int("testnet.epoch_length", self.epoch_length, MIN_EPOCH_LENGTH, MAX_EPOCH_LENGTH)
        founders = self.genesis_peers
        if not founders:
            raise ManifestError("every peer has join_at_height: at least one peer must be in the genesis "
                                "(the joiners ask the first genesis peer)")
        if all(p.leave_at_height for p in self.peers):
            raise ManifestError("every peer has leave_at_height: at least one must stay in the validator set")
        if self.broadcast not in BROADCAST_MODES:
            raise ManifestError(f"testnet.broadcast: expected {' | '.join(BROADCAST_MODES)}, got {self.broadcast!r}")
        if self.verdict_rule not in GENESIS_RULES:
            raise ManifestError(f"testnet.verdict_rule: expected {' | '.join(GENESIS_RULES)}, got {self.verdict_rule!r}")
        _int("testnet.verdict_margin", self.verdict_margin, 0, 2 * MAX_VERDICT)
        try:
            if self.link_plane is not None:
                self.link_plane.validate()
        except LinkError as exc:
            raise ManifestError(str(exc)) from None
        names = [p.name for p in self.peers]
        for p in self.peers:
            try:
                check_links(dict(p.links), names, p.name)
            except LinkError as exc:
                raise ManifestError(f"peer {p.name!r}: {exc}") from None
            if self.link_plane is not None and p.link_delay_ms > 0:
                raise ManifestError(f"peer {p.name!r}: network.delay_ms would apply to no link under "
                                    "[testnet] link_plane (the plane sets every destination's delay); drop one, "
                                    "or name single destinations in links")
        return self

    def link_delays(self) -> dict[str, dict[str, int]]:
        """Each peer's one-way delay (ms) towards the peers its links or the plane name: name -> name -> ms."""
        return link_delays_ms([p.name for p in self.peers], self.link_plane, {p.name: dict(p.links) for p in self.peers})

    @classmethod
    def from_args(cls, peers: int, models: list[str], *, chain_id: str = "local-testnet",
                  threads_per_peer: int = 1, max_new_tokens: int = 48, epoch_length: int | None = None,
                  broadcast: str = "mesh", link_plane: LinkPlane | None = None,
                  verdict_rule: str = "none") -> Manifest:
        """``peers`` peers named peer0.. with ``models`` assigned round-robin."""
        if isinstance(peers, bool) or not isinstance(peers, int) or not 1 <= peers <= MAX_PEERS:
            raise ManifestError(f"--peers: a testnet needs 1 to {MAX_PEERS} peers, got {peers}")
        if not models:
            raise ManifestError("--models: name at least one model")
        checked = [check_model(m) for m in models]
        specs = tuple(PeerSpec(name=f"peer{i}", model=checked[i % len(checked)]) for i in range(peers))
        return cls(specs, chain_id, threads_per_peer, max_new_tokens, epoch_length, broadcast, link_plane,
                   verdict_rule).validate()

    @classmethod
    def from_dict(cls, data: dict[str, Any], base_dir: Path = Path(".")) -> Manifest:
        """Build from parsed TOML; relative model paths resolve against ``base_dir``."""
        _unknown("manifest", data, ("testnet", "peer"))
        section = data.get("testnet", {})
        if not isinstance(section, dict):
            raise ManifestError("[testnet] must be a table")
        _unknown("[testnet]", section, _TESTNET_KEYS)
        raw_peers = data.get("peer", [])
        if not isinstance(raw_peers, list):
            raise ManifestError("peers must be given as [[peer]] tables")
        if not raw_peers:
            raise ManifestError("the manifest defines no [[peer]]")
        peers = tuple(PeerSpec.from_dict(i, p, base_dir) for i, p in enumerate(raw_peers))
        chain_id = section.get("chain_id", "local-testnet")
        if not isinstance(chain_id, str):
            raise ManifestError(f"testnet.chain_id: expected a string, got {chain_id!r}")
        try:
            plane = LinkPlane.from_dict(section["link_plane"]) if "link_plane" in section else None
        except LinkError as exc:
            raise ManifestError(str(exc)) from None
        return cls(peers, chain_id, section.get("threads_per_peer", 1), section.get("max_new_tokens", 48),
                   section.get("epoch_length"), section.get("broadcast", "mesh"), plane,
                   section.get("verdict_rule", "none"), section.get("verdict_margin", 500)).validate()

    @classmethod
    def loads(cls, text: str, base_dir: Path = Path(".")) -> Manifest:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ManifestError(f"not valid TOML: {exc}") from exc
        return cls.from_dict(data, base_dir)

    @classmethod
    def load(cls, path: Path) -> Manifest:
        """Read and validate a manifest file; errors are prefixed with its path."""
        try:
            text = path.read_text()
        except OSError as exc:
            raise ManifestError(f"cannot read manifest {path}: {exc.strerror}") from exc
        try:
            return cls.loads(text, path.resolve().parent)
        except ManifestError as exc:
            raise ManifestError(f"manifest {path}: {exc}") from None
