"""A testnet's records and state: ``DIR/testnet.json`` (peers, shard workers, pids, URLs, paths) and what
:func:`status` reads from the running peers' APIs. The launcher (:mod:`testnet.launcher`) writes the state;
this module only reads it and asks the peers."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from testnet import processes

__all__ = ["STATE_FILE", "PeerRecord", "PeerStatus", "TestnetError", "TestnetState", "WorkerRecord", "WorkerStatus",
           "fetch_statuses", "load_state", "status", "status_height"]

STATE_FILE = "testnet.json"


class TestnetError(Exception):
    """A user-facing failure; the message says what went wrong and what to do."""

    __test__ = False  # not a pytest test class


@dataclass
class PeerRecord:
    """One started peer, as stored in ``testnet.json``."""

    name: str
    peer_id: str
    pid: int | None
    model: str
    api_url: str
    p2p: str
    log: str
    config: str
    weight: int = 1  # in the genesis (a joiner's weight is the membership rule's)
    genesis: bool = True  # False: not in the genesis (a manifest joiner, or added by `testnet join`)


@dataclass
class WorkerRecord:
    """One shard worker (a device of a sharded peer), as stored in ``testnet.json``."""

    name: str  # "<peer>/<device>"
    peer: str
    peer_id: str  # the worker's own identity (its peer proves nothing to it but its id)
    pid: int | None
    address: str  # host:port it listens on
    key: str
    log: str
    threads: int = 1
    netns: str | None = None  # its network namespace (bandwidth_kbit), deleted by down
    veth: str | None = None  # our end of its veth pair
    log_offset: int = 0  # where this run's output starts in the (appended) log


@dataclass
class TestnetState:
    """Contents of ``testnet.json``."""

    __test__ = False

    dir: Path
    chain_id: str
    peers: list[PeerRecord]
    stopped: bool = False
    started_at: float = field(default_factory=time.time)
    workers: list[WorkerRecord] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"chain_id": self.chain_id, "stopped": self.stopped, "started_at": self.started_at,
                "peers": [asdict(p) for p in self.peers], "workers": [asdict(w) for w in self.workers]}

    def processes(self) -> list[PeerRecord | WorkerRecord]:
        """Peers, then shard workers."""
        return [*self.peers, *self.workers]

    def save(self) -> None:
        """Write ``testnet.json`` atomically (temp file + rename)."""
        path = self.dir / STATE_FILE
        tmp = path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        os.replace(tmp, path)

    def peer(self, name: str) -> PeerRecord:
        for p in self.peers:
            if p.name == name:
                return p
        raise TestnetError(f"no peer named {name!r} in {self.dir} (peers: {', '.join(p.name for p in self.peers)})")


@dataclass(frozen=True)
class WorkerStatus:
    """A shard worker as ``status`` reports it: its process, and its peer's view of it (from ``/metrics``)."""

    name: str  # "<peer>/<device>"
    address: str
    pid: int | None
    process: str  # "running", "paused" or "exited"
    up: bool | None = None  # False: its peer's shard driver marked it failed; None: the peer does not say
    layers: int | None = None  # layers it runs in the peer's current plan (0: standby)

    @property
    def state(self) -> str:
        """One word or two for a table: "serving 30 layers", "standby", "failed", "paused", "exited"."""
        if self.process != "running":
            return self.process
        if self.up is None:
            return "running"
        if not self.up:
            return "failed"
        return f"serving {self.layers} layers" if self.layers else "standby"


@dataclass(frozen=True)
class PeerStatus:
    """What ``status`` reports for one peer; ``phase`` is "down" when the API does not answer ("paused" when
    it was paused with ``testnet pause``)."""

    name: str
    peer_id: str
    model: str
    api_url: str
    pid: int | None
    alive: bool
    ready: bool
    phase: str
    height: int | None
    connected_peers: int | None
    weight_share: float | None = None  # of the set in force, as the highest reachable peer reports it
    member: bool | None = None  # in the validator set in force at its height (None: it does not answer)
    disconnected: bool | None = None  # its links are cut (``testnet disconnect``); None: it does not say
    workers: tuple[WorkerStatus, ...] = ()  # a sharded peer's shard workers


def load_state(dir: Path) -> TestnetState:
    """Read ``DIR/testnet.json``; :class:`TestnetError` if absent or corrupt."""
    path = dir / STATE_FILE
    try:
        data = json.loads(path.read_text())
        return TestnetState(dir=dir, chain_id=data["chain_id"], stopped=bool(data.get("stopped", False)),
                            started_at=float(data.get("started_at", 0.0)),
                            peers=[PeerRecord(**p) for p in data["peers"]],
                            workers=[WorkerRecord(**w) for w in data.get("workers", [])])
    except FileNotFoundError:
        raise TestnetError(f"no testnet in {dir} (no {STATE_FILE}); start one with: "
                           f"multillmn testnet up --dir {dir}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TestnetError(f"{path} is unreadable or corrupt ({exc}); remove {dir} and start again") from None


# --- status ----------------------------------------------------------------


def _fetch(client: httpx.Client, url: str) -> dict[str, Any] | None:
    """A peer's ``/v1/status`` object; None when it does not answer 200 with a JSON object within bounds
    (at most 4 MiB, read as it streams in; :func:`multillmn.jsonsafe.loads`'s nesting and integer bounds)."""
    from multillmn import jsonsafe
    from multillmn.client import ClientError, read_bounded

    try:
        with client.stream("GET", f"{url}/v1/status") as resp:
            if resp.status_code != 200:
                return None
            data = jsonsafe.loads(read_bounded(resp, 4 << 20), max_bytes=4 << 20)
    except (httpx.HTTPError, ClientError, jsonsafe.JsonError):
        return None
    return data if isinstance(data, dict) else None


def fetch_statuses(urls: list[str], timeout_s: float = 2.0) -> list[dict[str, Any] | None]:
    """GET /v1/status of every URL in parallel; None where it does not answer."""
    with httpx.Client(timeout=timeout_s, trust_env=False) as client, \
            ThreadPoolExecutor(max_workers=min(16, max(1, len(urls)))) as pool:
        return list(pool.map(lambda u: _fetch(client, u), urls))


def status(dir: Path) -> list[PeerStatus]:
    """Each peer's process and API state; unreachable peers have phase "down"."""
    state = load_state(dir)
    alive = [processes.alive(p.pid) for p in state.peers]
    paused = [a and processes.paused(p.pid) for p, a in zip(state.peers, alive)]  # would not answer: not asked
    asked = [a and not z for a, z in zip(alive, paused)]
    answers = fetch_statuses([p.api_url for p, a in zip(state.peers, asked) if a])
    it = iter(answers)
    shares = _weight_shares(_highest(answers))
    out = []
    for p, a, z, q in zip(state.peers, alive, paused, asked):
        s = next(it) if q else None
        connected = s.get("connected_peers") if s else None
        transport = s.get("transport") if s else None
        mine = [w for w in state.workers if w.peer == p.name]
        views = _shard_views(p.api_url) if mine and s is not None else {}
        phase = str(s.get("phase", "?")) if s else "paused" if z else "down"
        out.append(PeerStatus(
            name=p.name, peer_id=p.peer_id, model=p.model, api_url=p.api_url, pid=p.pid, alive=a,
            ready=bool(s and s.get("ready") is True), phase=phase,
            height=s.get("height") if s else None,
            connected_peers=len(connected) if isinstance(connected, list) else None,
            weight_share=shares.get(p.peer_id), member=s.get("member") if s and isinstance(s.get("member"), bool)
            else None,
            disconnected=bool(transport.get("disconnected")) if isinstance(transport, dict) else None,
            workers=tuple(_worker_status(w, views.get(w.name.partition("/")[2], {})) for w in mine)))
    return out


def _worker_status(w: WorkerRecord, view: dict[str, float]) -> WorkerStatus:
    process = "exited" if not processes.alive(w.pid) else "paused" if processes.paused(w.pid) else "running"
    up = view.get("multillmn_shard_worker_up")
    layers = view.get("multillmn_shard_worker_layers")
    return WorkerStatus(name=w.name, address=w.address, pid=w.pid if process != "exited" else None, process=process,
                        up=None if up is None else up == 1, layers=None if layers is None else int(layers))


def _shard_views(api_url: str, timeout_s: float = 2.0) -> dict[str, dict[str, float]]:
    """A sharded peer's view of its workers, from its ``/metrics``: device -> sample name -> value
    (empty if it does not answer, or with anything the Prometheus parser refuses)."""
    from prometheus_client.parser import text_string_to_metric_families

    from multillmn.client import ClientError, read_bounded

    try:
        with httpx.Client(timeout=timeout_s, trust_env=False) as client, \
                client.stream("GET", f"{api_url}/metrics") as resp:
            if resp.status_code != 200:
                return {}
            text = read_bounded(resp, 1 << 20).decode("utf-8", "replace")
        views: dict[str, dict[str, float]] = {}
        for family in text_string_to_metric_families(text):
            if family.name in ("multillmn_shard_worker_up", "multillmn_shard_worker_layers"):
                for sample in family.samples:
                    views.setdefault(sample.labels.get("worker", ""), {})[sample.name] = float(sample.value)
        return views
    except (httpx.HTTPError, ClientError, ValueError, TypeError):
        return {}


def status_height(status: dict[str, Any] | None) -> int:
    h = status.get("height") if status else None
    return h if isinstance(h, int) and not isinstance(h, bool) else -1


def _highest(answers: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The status of the peer furthest ahead (the first of them), or None if none answered: a peer
    that is catching up (a joiner) still shows an older validator set."""
    return max(answers, key=status_height, default=None)


def _weight_shares(status: dict[str, Any] | None) -> dict[str, float]:
    """Each validator's share of the total weight in a peer's ``/v1/status`` (empty if malformed)."""
    try:
        assert status is not None
        weights = {v["peer_id"]: int(v["weight"]) for v in status["validators"]}
        total = sum(weights.values())
        return {p: round(w / total, 4) for p, w in weights.items()} if total > 0 else {}
    except (AssertionError, KeyError, TypeError, ValueError):
        return {}
