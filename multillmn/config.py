"""Peer configuration: a commented TOML file, validated key by key.

``PeerConfig.default()`` is what ``multillmn peer init`` writes,
``PeerConfig.for_tests()`` shrinks timeouts, and ``PeerConfig.load(path)``
rejects unknown sections or keys, wrong types and out-of-range values with
the offending key named. Relative paths resolve against the config file's
directory.
"""

from __future__ import annotations

import re

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from consensus.messages import MAX_QUERIES_PER_VALUE
from multillmn.identity import is_peer_id

__all__ = ["ConfigError", "PeerConfig", "PeerAddress", "parse_hostport", "render_toml", "BYZANTINE_BEHAVIOURS",
           "SHARD_OBJECTIVES", "BROADCAST_MODES", "MAX_BROADCAST_FANOUT", "MAX_LINK_DELAYS"]

BYZANTINE_BEHAVIOURS = (
    "none", "wrong", "junk", "collude", "copy-late", "double-vote",
    "conflicting-proposals", "withhold", "crash", "slow", "forge-certificate", "deep-nesting",
)
"""Fault-injection behaviours a peer can be told to play (testnets and benchmarks only)."""

SHARD_OBJECTIVES = ("latency", "throughput")
"""What the EdgeShard planner minimises for a sharded peer (``peers.shard.planner.OBJECTIVES``)."""

BROADCAST_MODES = ("mesh", "tree")
BATCHING_MODES = ("continuous", "batches")
"""``[p2p] broadcast``: every message to every peer directly, or over self-repairing trees (issue 13)."""

MAX_BROADCAST_FANOUT = 16
"""Largest ``[p2p] broadcast_fanout``."""

MAX_LINK_DELAYS = 256
"""Most destinations ``[p2p] link_delays_ms`` may name."""


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message names the key."""


def parse_hostport(value: str, key: str) -> tuple[str, int]:
    """Split ``"host:port"``; raise :class:`ConfigError` naming ``key`` if malformed."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key}: expected host:port, got {value!r}")
    return host, int(port)


@dataclass(frozen=True)
class PeerAddress:
    """A persistent peer: its id and p2p address."""

    id: str
    address: str


@dataclass(frozen=True)
class PeerConfig:
    """Everything one peer daemon needs; see :data:`_COMMENTS` for each key's meaning."""

    # [peer]
    moniker: str = "peer"
    key_file: str = "peer_key.pem"
    genesis_file: str = "genesis.json"
    # [p2p]
    p2p_listen: str = "127.0.0.1:26656"
    persistent_peers: tuple[PeerAddress, ...] = ()
    max_frame_bytes: int = 2 * 1024 * 1024
    send_queue: int = 1024
    send_queue_bytes: int = 64 * 1024 * 1024
    inbound_queue: int = 4096
    inbound_peer_queue: int = 1024
    inbound_peer_bytes: int = 64 * 1024 * 1024
    max_handshakes: int = 64
    handshake_timeout_ms: int = 5000
    link_delay_ms: int = 0
    link_loss: float = 0.0
    link_delays_ms: tuple[tuple[str, int], ...] = ()  # (peer id, one-way delay ms), sorted by peer id
    broadcast: str = "mesh"
    broadcast_fanout: int = 3
    # [api]
    api_listen: str = "127.0.0.1:8080"
    query_timeout_s: float = 300.0
    # [model]
    model: str = "smollm2"
    max_new_tokens: int = 48
    threads: int = 1
    max_batch: int = 16  # bench/throughput.py: at 16 clients one batch instead of two (ADR 0019)
    batching: str = "continuous"  # ADR 0019 addendum 5
    cache_dir: str = "~/.cache/multillmn/models"
    # [consensus]
    timeout_propose_ms: int = 3000
    timeout_prevote_ms: int = 1000
    timeout_precommit_ms: int = 1000
    timeout_delta_ms: int = 500
    answer_wait_ms: int = 120000
    answer_grace_ms: int = 1500
    judge_band: int = 100
    queries_per_height: int = 16
    # [membership]
    external_address: str = ""
    join_via: str = ""
    join_at_height: int = 0
    leave_at_height: int = 0
    # [ledger]
    ledger_path: str = "data/ledger.sqlite"
    ledger_sync_interval_ms: int = 200
    # [log]
    log_level: str = "info"
    # [byzantine]
    behaviour: str = "none"
    slow_ms: int = 2000
    crash_at_height: int = 3
    behaviour_from_height: int = 1
    # [shard]
    shard_devices_file: str = ""
    shard_objective: str = "latency"
    shard_request_timeout_s: float = 30.0
    shard_startup_timeout_s: float = 300.0
    # where the file was read from (not a key)
    base_dir: Path = field(default=Path("."), compare=False)

    @classmethod
    def default(cls) -> PeerConfig:
        return cls()

    @classmethod
    def for_tests(cls) -> PeerConfig:
        return cls(timeout_propose_ms=500, timeout_prevote_ms=200, timeout_precommit_ms=200,
                   timeout_delta_ms=100, answer_wait_ms=10000, answer_grace_ms=100, query_timeout_s=60.0,
                   ledger_sync_interval_ms=50)

    def path(self, value: str) -> Path:
        """Resolve a path key against the config file's directory (``~`` expanded)."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def validate(self) -> PeerConfig:
        """Raise :class:`ConfigError` naming the first bad key; return self when valid."""
        parse_hostport(self.p2p_listen, "p2p.listen")
        parse_hostport(self.api_listen, "api.listen")
        seen = set()
        for i, p in enumerate(self.persistent_peers):
            if not is_peer_id(p.id):
                raise ConfigError(f"p2p.peers[{i}].id: expected 40 hex characters, got {p.id!r}")
            if p.id in seen:
                raise ConfigError(f"p2p.peers[{i}].id: duplicate peer {p.id}")
            seen.add(p.id)
            parse_hostport(p.address, f"p2p.peers[{i}].address")
        _check_range("p2p.max_frame_bytes", self.max_frame_bytes, 1024, 64 * 1024 * 1024)
        _check_range("p2p.send_queue", self.send_queue, 1, 1_000_000)
        _check_range("p2p.send_queue_bytes", self.send_queue_bytes, 64 * 1024, 2**34)
        _check_range("p2p.inbound_queue", self.inbound_queue, 1, 1_000_000)
        _check_range("p2p.inbound_peer_queue", self.inbound_peer_queue, 1, 1_000_000)
        _check_range("p2p.inbound_peer_bytes", self.inbound_peer_bytes, 64 * 1024, 2**34)
        _check_range("p2p.max_handshakes", self.max_handshakes, 1, 65_536)
        _check_range("p2p.handshake_timeout_ms", self.handshake_timeout_ms, 100, 600_000)
        _check_range("p2p.link_delay_ms", self.link_delay_ms, 0, 60_000)
        if not 0.0 <= self.link_loss < 1.0:
            raise ConfigError(f"p2p.link_loss: {self.link_loss} is outside [0, 1)")
        _check_link_delays(self.link_delays_ms)
        if self.broadcast not in BROADCAST_MODES:
            raise ConfigError(f"p2p.broadcast: expected {' | '.join(BROADCAST_MODES)}, got {self.broadcast!r}")
        _check_range("p2p.broadcast_fanout", self.broadcast_fanout, 1, MAX_BROADCAST_FANOUT)
        _check_range("api.query_timeout_s", self.query_timeout_s, 1, 86400)
        _check_range("model.max_new_tokens", self.max_new_tokens, 1, 1024)
        _check_range("model.threads", self.threads, 1, 256)
        _check_range("model.max_batch", self.max_batch, 1, 64)
        if self.batching not in BATCHING_MODES:
            raise ConfigError(f"model.batching: expected {' | '.join(BATCHING_MODES)}, got {self.batching!r}")
        for key in ("timeout_propose_ms", "timeout_prevote_ms", "timeout_precommit_ms"):
            _check_range(f"consensus.{key}", getattr(self, key), 1, 3_600_000)
        _check_range("consensus.timeout_delta_ms", self.timeout_delta_ms, 0, 3_600_000)
        _check_range("consensus.answer_wait_ms", self.answer_wait_ms, 1, 3_600_000)
        _check_range("consensus.answer_grace_ms", self.answer_grace_ms, 0, 3_600_000)
        _check_range("consensus.judge_band", self.judge_band, 0, 1000)
        _check_range("consensus.queries_per_height", self.queries_per_height, 1, MAX_QUERIES_PER_VALUE)
        if self.behaviour not in BYZANTINE_BEHAVIOURS:
            raise ConfigError(f"byzantine.behaviour: expected one of {', '.join(BYZANTINE_BEHAVIOURS)}, "
                              f"got {self.behaviour!r}")
        _check_range("byzantine.slow_ms", self.slow_ms, 0, 3_600_000)
        _check_range("byzantine.crash_at_height", self.crash_at_height, 1, 2**31)
        if self.external_address:
            parse_hostport(self.external_address, "membership.external_address")
        if self.join_via and not re.fullmatch(r"https?://[A-Za-z0-9.\[\]:_-]{1,253}:[0-9]{1,5}/?", self.join_via):
            raise ConfigError(f"membership.join_via: expected http://host:port, got {self.join_via!r}")
        _check_range("membership.join_at_height", self.join_at_height, 0, 2**40)
        _check_range("membership.leave_at_height", self.leave_at_height, 0, 2**40)
        _check_range("byzantine.from_height", self.behaviour_from_height, 1, 2**31)
        if not self.ledger_path:
            raise ConfigError("ledger.path: must not be empty")
        _check_range("ledger.sync_interval_ms", self.ledger_sync_interval_ms, 10, 60_000)
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log.level: expected debug|info|warning|error, got {self.log_level!r}")
        if not self.model:
            raise ConfigError("model.name: must not be empty")
        if self.shard_objective not in SHARD_OBJECTIVES:
            raise ConfigError(f"shard.objective: expected {' | '.join(SHARD_OBJECTIVES)}, got {self.shard_objective!r}")
        _check_range("shard.request_timeout_s", self.shard_request_timeout_s, 0.1, 3600)
        _check_range("shard.startup_timeout_s", self.shard_startup_timeout_s, 1, 86400)
        return self

    @classmethod
    def load(cls, path: Path) -> PeerConfig:
        """Read and validate a TOML config file."""
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        return cls.from_dict(data, base_dir=path.resolve().parent)

    @classmethod
    def from_dict(cls, data: dict[str, Any], base_dir: Path = Path(".")) -> PeerConfig:
        """Build from the TOML structure; unknown sections/keys and wrong types are errors."""
        kwargs: dict[str, Any] = {}
        types = {f.name: f.type for f in fields(cls)}
        for section, value in data.items():
            if section not in _KEYS:
                raise ConfigError(f"unknown section [{section}] (expected one of {', '.join(_KEYS)})")
            if not isinstance(value, dict):
                raise ConfigError(f"[{section}] must be a table")
            for key, item in value.items():
                attr = _KEYS[section].get(key)
                if attr is None:
                    raise ConfigError(f"unknown key {section}.{key}")
                if attr == "persistent_peers":
                    kwargs[attr] = _parse_peers(item)
                    continue
                if attr == "link_delays_ms":
                    kwargs[attr] = _parse_link_delays(item)
                    continue
                expected = types[attr]
                kwargs[attr] = _check_type(f"{section}.{key}", item, expected)
        return replace(cls(), **kwargs, base_dir=base_dir).validate()


def _check_type(key: str, value: Any, expected: Any) -> Any:
    name = expected if isinstance(expected, str) else expected.__name__
    if name == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    ok = {"str": str, "int": int, "float": float}.get(name)
    if ok is None or not isinstance(value, ok) or isinstance(value, bool):
        raise ConfigError(f"{key}: expected {name}, got {type(value).__name__} {value!r}")
    return value


def _check_range(key: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{key}: {value} is outside [{low}, {high}]")


def _parse_peers(item: Any) -> tuple[PeerAddress, ...]:
    if not isinstance(item, list):
        raise ConfigError("p2p.peers: expected an array of {id, address} tables")
    out = []
    for i, entry in enumerate(item):
        if not isinstance(entry, dict) or set(entry) != {"id", "address"}:
            raise ConfigError(f"p2p.peers[{i}]: expected a table with exactly id and address")
        if not isinstance(entry["id"], str) or not isinstance(entry["address"], str):
            raise ConfigError(f"p2p.peers[{i}]: id and address must be strings")
        out.append(PeerAddress(entry["id"], entry["address"]))
    return tuple(out)


def _parse_link_delays(item: Any) -> tuple[tuple[str, int], ...]:
    """``{ <peer id> = <ms>, ... }`` as sorted pairs; types here, ids and ranges in :func:`_check_link_delays`."""
    if not isinstance(item, dict):
        raise ConfigError("p2p.link_delays_ms: expected a table { <peer id> = <one-way delay ms>, ... }")
    if len(item) > MAX_LINK_DELAYS:
        raise ConfigError(f"p2p.link_delays_ms: {len(item)} destinations, at most {MAX_LINK_DELAYS}")
    for peer, ms in item.items():
        if isinstance(ms, bool) or not isinstance(ms, int):
            raise ConfigError(f"p2p.link_delays_ms.{peer}: expected int, got {type(ms).__name__} {ms!r}")
    return tuple(sorted(item.items()))


def _check_link_delays(delays: tuple[tuple[str, int], ...]) -> None:
    if len(delays) > MAX_LINK_DELAYS:
        raise ConfigError(f"p2p.link_delays_ms: {len(delays)} destinations, at most {MAX_LINK_DELAYS}")
    seen = set()
    for peer, ms in delays:
        if not is_peer_id(peer):
            raise ConfigError(f"p2p.link_delays_ms: key {peer!r} is not a peer id (40 hex characters)")
        if peer in seen:
            raise ConfigError(f"p2p.link_delays_ms: duplicate peer {peer}")
        seen.add(peer)
        _check_range(f"p2p.link_delays_ms.{peer}", ms, 0, 60_000)


# section -> TOML key -> attribute, and the comment written above each key.
_KEYS: dict[str, dict[str, str]] = {
    "peer": {"moniker": "moniker", "key_file": "key_file", "genesis_file": "genesis_file"},
    "p2p": {"listen": "p2p_listen", "peers": "persistent_peers",
            "max_frame_bytes": "max_frame_bytes", "send_queue": "send_queue", "send_queue_bytes": "send_queue_bytes",
            "inbound_queue": "inbound_queue", "inbound_peer_queue": "inbound_peer_queue",
            "inbound_peer_bytes": "inbound_peer_bytes", "max_handshakes": "max_handshakes",
            "handshake_timeout_ms": "handshake_timeout_ms",
            "link_delay_ms": "link_delay_ms", "link_loss": "link_loss", "link_delays_ms": "link_delays_ms",
            "broadcast": "broadcast", "broadcast_fanout": "broadcast_fanout"},
    "api": {"listen": "api_listen", "query_timeout_s": "query_timeout_s"},
    "model": {"name": "model", "max_new_tokens": "max_new_tokens", "threads": "threads",
              "max_batch": "max_batch", "batching": "batching", "cache_dir": "cache_dir"},
    "consensus": {k: k for k in ("timeout_propose_ms", "timeout_prevote_ms", "timeout_precommit_ms",
                                 "timeout_delta_ms", "answer_wait_ms", "answer_grace_ms", "judge_band",
                                 "queries_per_height")},
    "membership": {"external_address": "external_address", "join_via": "join_via", "join_at_height": "join_at_height",
                   "leave_at_height": "leave_at_height"},
    "ledger": {"path": "ledger_path", "sync_interval_ms": "ledger_sync_interval_ms"},
    "log": {"level": "log_level"},
    "byzantine": {"behaviour": "behaviour", "slow_ms": "slow_ms", "crash_at_height": "crash_at_height",
                  "from_height": "behaviour_from_height"},
    "shard": {"devices_file": "shard_devices_file", "objective": "shard_objective",
              "request_timeout_s": "shard_request_timeout_s", "startup_timeout_s": "shard_startup_timeout_s"},
}

_COMMENTS: dict[str, str] = {
    "moniker": "Human-readable name shown in status and logs.",
    "key_file": "Ed25519 private key (PEM, mode 0600); the peer id derives from it.",
    "genesis_file": "Validator set (peer ids, public keys, weights) shared by all peers.",
    "p2p_listen": "Address for authenticated, encrypted peer links.",
    "persistent_peers": "Peers to keep a link to: [{ id = \"<peer id>\", address = \"host:port\" }].",
    "max_frame_bytes": "Largest frame accepted from a peer; larger ones are refused.",
    "send_queue": "Messages queued per peer before new ones are dropped (and counted).",
    "send_queue_bytes": "Bytes queued per peer before new messages are dropped (and counted).",
    "inbound_queue": "Received messages waiting for this peer, all peers together; more are dropped (and counted).",
    "inbound_peer_queue": "Received messages waiting per peer; one flooding peer cannot take the others' room.",
    "inbound_peer_bytes": "Received bytes waiting per peer.",
    "max_handshakes": "Connections not yet authenticated at once; more are refused at once (and counted).",
    "handshake_timeout_ms": "A connection that has not proved a validator's identity by then is closed.",
    "link_delay_ms": "Testnets: one-way delay added to every message this peer sends (emulated link).",
    "link_loss": "Testnets: probability in [0, 1) that a message this peer sends is lost (emulated link).",
    "link_delays_ms": "Testnets: one-way delay per destination, { <peer id> = <ms>, ... } (at most "
                      f"{MAX_LINK_DELAYS}, 0-60000 ms); replaces link_delay_ms towards those peers.",
    "broadcast": "How this peer's signed messages reach the others: mesh (sent to every peer directly) | tree "
                 "(latency-aware spanning trees that repair themselves around silent relays; peers/broadcast).",
    "broadcast_fanout": "With broadcast = tree: children per peer in a tree (1 to "
                        f"{MAX_BROADCAST_FANOUT}); more means fewer hops and more sends per peer.",
    "api_listen": "Address of the HTTP API (/v1/query, /v1/status, /v1/chat/completions).",
    "query_timeout_s": "How long an HTTP query waits for consensus before answering 504.",
    "model": "smollm2 | gemma3 (bundled GGUF models) or a path to a Hugging Face model directory.",
    "max_new_tokens": "Longest answer, in tokens; decoding is greedy.",
    "threads": "torch threads for this peer (peers of a local testnet share the cores).",
    "max_batch": "Questions answered together in one batched generation (1 to 64; 1: one at a time). On CPU "
                 "a decode step of 16 rows costs 1.5x to 3x one of a single row.",
    "batching": "continuous (a question joins the running batch between two decode steps and its answer leaves "
                "as soon as it ends) | batches (questions that arrive while a batch runs wait for the next one).",
    "cache_dir": "Where converted GGUF weights are cached so restarts load in seconds.",
    "timeout_propose_ms": "Wait for the proposal in round 0; grows by timeout_delta_ms per round.",
    "timeout_prevote_ms": "Wait after +2/3 mixed prevotes before precommitting nil.",
    "timeout_precommit_ms": "Wait after +2/3 mixed precommits before the next round.",
    "timeout_delta_ms": "Added to every timeout per round, so rounds eventually last long enough.",
    "answer_wait_ms": "A query fails if answers carrying +2/3 of weight are not in by then.",
    "answer_grace_ms": "Once +2/3 have answered, how long the proposer waits for the rest (keep below timeout_propose_ms).",
    "external_address": "host:port the other peers dial to reach this one, as a join request declares it "
                        "(\"\": [p2p] listen).",
    "join_via": "A peer outside the validator set hands its join request to this member's API "
                "(http://host:port) by itself; \"\": only when `multillmn peer join` asks.",
    "join_at_height": "With join_via: wait until that member reports this height before asking.",
    "leave_at_height": "A validator asks to leave once the network reaches this height (0: never by itself; "
                       "`multillmn peer leave` asks at once).",
    "ledger_path": "SQLite file of the hashgraph ledger (events, consensus order, snapshots); relative to this file.",
    "ledger_sync_interval_ms": "How often this peer pulls DAG events from the next peer (gossip about gossip).",
    "log_level": "debug | info | warning | error; logs are JSON lines on stderr.",
    "judge_band": "Answer pairs whose similarity is within this many per mille of the grouping threshold "
                  "are judged by this peer's own model, in both orders, when scoring (0: never).",
    "queries_per_height": "Queries one value of this peer (as proposer) decides at most, 1 to "
                          f"{MAX_QUERIES_PER_VALUE}: the ready ones whose answers are all in or whose grace is "
                          "over (1: one query per height).",
    "behaviour": "Fault injection for testnets: none | " + " | ".join(BYZANTINE_BEHAVIOURS[1:])
                 + ". Never set this on a real peer.",
    "slow_ms": "For behaviour = slow: extra delay of every vote and proposal this peer sends.",
    "crash_at_height": "For behaviour = crash: the peer exits (code 3) once it reaches this height.",
    "behaviour_from_height": "Before this height a faulty peer only answers wrongly (behaviour = wrong); "
                             "from it on it plays its behaviour (an attack after the weights adapted).",
    "shard_devices_file": "EdgeShard: device file (TOML [[device]] tables with each shard worker's address and "
                          "peer_id) to split the model over; relative to this file. \"\" = run the model here.",
    "shard_objective": "EdgeShard plan objective: latency (fastest token) | throughput (slowest pipeline stage).",
    "shard_request_timeout_s": "A shard worker that does not answer a step within this time is dropped "
                               "and the model re-planned on the others.",
    "shard_startup_timeout_s": "At start, how long to wait for every shard worker to accept a connection; "
                               "then the model is planned on those that did.",
}


def render_toml(cfg: PeerConfig) -> str:
    """The config as commented TOML (what ``peer init`` writes)."""
    import tomli_w

    lines = ["# multillmn peer configuration. Every key is optional; shown values are the defaults", ""]
    for section, keys in _KEYS.items():
        lines.append(f"[{section}]")
        for key, attr in keys.items():
            lines.append(f"# {_COMMENTS[attr]}")
            value = getattr(cfg, attr)
            if attr == "persistent_peers":
                value = [{"id": p.id, "address": p.address} for p in value]
            if attr == "link_delays_ms":  # an inline table: a [p2p.link_delays_ms] header would end [p2p]
                lines.append(f"{key} = {{{', '.join(f'{peer} = {ms}' for peer, ms in value)}}}")
                continue
            lines.append(tomli_w.dumps({key: value}).strip())
        lines.append("")
    return "\n".join(lines)
