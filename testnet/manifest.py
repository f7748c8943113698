"""Testnet manifest: which peers to run, with which model and weight.

A manifest is a TOML file::

    [testnet]
    chain_id = "local-testnet"   # default
    threads_per_peer = 1         # default; torch/OpenMP threads of each peer
    max_new_tokens = 48          # default

    [[peer]]
    name = "peer0"               # unique, [a-z0-9-]+
    model = "smollm2"            # smollm2 | gemma3 | path to a Hugging Face model dir
    weight = 1                   # default; positive integer voting weight
    byzantine = "none"           # fault injection: none | wrong | junk | copy-late | collude |
                                 # double-vote | conflicting-proposals | withhold | crash | slow
    slow_ms = 2000               # for byzantine = "slow": delay of its votes and proposals
    crash_at_height = 3          # for byzantine = "crash": the height at which it exits
    from_height = 1              # before this height a byzantine peer only answers wrongly
    # network = {}               # reserved: only an empty table for now

Unknown keys are rejected by name. :meth:`Manifest.from_args` builds the
manifest behind ``multillmn testnet up --peers N --models a,b``.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multillmn.config import BYZANTINE_BEHAVIOURS

__all__ = ["KNOWN_MODELS", "MAX_PEERS", "Manifest", "ManifestError", "PeerSpec", "check_model"]

KNOWN_MODELS = ("smollm2", "gemma3")
MAX_PEERS = 64
_NAME = re.compile(r"^[a-z0-9-]+$")
_TESTNET_KEYS = ("chain_id", "threads_per_peer", "max_new_tokens")
_PEER_KEYS = ("name", "model", "weight", "byzantine", "slow_ms", "crash_at_height", "from_height", "network")


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


def _int(where: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ManifestError(f"{where}: expected an integer, got {value!r}")
    if not low <= value <= high:
        raise ManifestError(f"{where}: {value} is outside [{low}, {high}]")
    return value


def _unknown(where: str, keys: dict[str, Any], allowed: tuple[str, ...]) -> None:
    extra = sorted(set(keys) - set(allowed))
    if extra:
        raise ManifestError(f"{where}: unknown key{'s' if len(extra) > 1 else ''} {', '.join(extra)} "
                            f"(allowed: {', '.join(allowed)})")


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
        if not isinstance(name, str) or not _NAME.match(name) or len(name) > 64:
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
            raise ManifestError(f"{where}: network must be a table")
        if network:
            raise ManifestError(f"{where}: network settings ({', '.join(sorted(network))}) "
                                "are not supported yet (only an empty table)")
        return cls(name=name, model=model, weight=weight, byzantine=byzantine, slow_ms=slow_ms,
                   crash_at_height=crash_at_height, from_height=from_height)


@dataclass(frozen=True)
class Manifest:
    """A validated testnet description."""

    peers: tuple[PeerSpec, ...]
    chain_id: str = "local-testnet"
    threads_per_peer: int = 1
    max_new_tokens: int = 48

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
        return self

    @classmethod
    def from_args(cls, peers: int, models: list[str], *, chain_id: str = "local-testnet",
                  threads_per_peer: int = 1, max_new_tokens: int = 48) -> Manifest:
        """``peers`` peers named peer0.. with ``models`` assigned round-robin."""
        if isinstance(peers, bool) or not isinstance(peers, int) or not 1 <= peers <= MAX_PEERS:
            raise ManifestError(f"--peers: a testnet needs 1 to {MAX_PEERS} peers, got {peers}")
        if not models:
            raise ManifestError("--models: name at least one model")
        checked = [check_model(m) for m in models]
        specs = tuple(PeerSpec(name=f"peer{i}", model=checked[i % len(checked)]) for i in range(peers))
        return cls(specs, chain_id, threads_per_peer, max_new_tokens).validate()

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
        return cls(peers, chain_id, section.get("threads_per_peer", 1),
                   section.get("max_new_tokens", 48)).validate()

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
