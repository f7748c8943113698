"""Local multi-process testnet: generate keys, genesis and configs, start, watch and stop peers.

Layout of a testnet directory::

    DIR/testnet.json           state: chain id and, per peer, name, peer id, pid, URLs, paths
    DIR/genesis.json           shared validator set (manifest weights)
    DIR/<name>/peer_key.pem    Ed25519 key, mode 0600
    DIR/<name>/config.toml     peer config (persistent peers = all the others)
    DIR/<name>/peer.log        the peer's stdout and stderr, appended
    DIR/<name>/devices.toml    a sharded peer's device file (manifest ``devices``)
    DIR/<name>/workers/<device>.pem, .log   its shard workers' keys and logs

Each peer and each shard worker runs in its own session (process group =
its pid), so ``down`` also stops anything they spawned. A device with
``bandwidth_kbit`` gets a network namespace of its own, joined to ours by a
rate-limited veth pair (:mod:`testnet.netns`); ``down`` deletes it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from multillmn.config import PeerAddress, PeerConfig, render_toml
from multillmn.genesis import Genesis
from multillmn.identity import KeyPair
from peers.shard.devices import DeviceEntry, render_device_file
from testnet import netns, processes
from testnet.manifest import DeviceSpec, Manifest

__all__ = ["DEFAULT_PEER_COMMAND", "DEFAULT_WORKER_COMMAND", "PeerRecord", "PeerStatus", "TestnetError",
           "TestnetState", "WorkerRecord",
           "down", "is_running", "load_state", "logs", "restart", "status", "up"]

DEFAULT_PEER_COMMAND: list[str] = [sys.executable, "-m", "multillmn", "peer", "start"]
"""argv prefix of a peer; ``--config <path>`` is appended."""

DEFAULT_WORKER_COMMAND: list[str] = [sys.executable, "-m", "peers.shard.worker"]
"""argv prefix of a shard worker (``python -m peers.shard.worker``); its options are appended."""

NETNS_WORKER_PORT = 7000  # a worker alone in its network namespace can use a fixed port

STATE_FILE = "testnet.json"
_POLL_S = 0.5
_REPORT_EVERY_S = 10.0
_TAIL_LINES = 20


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
    weight: int = 1


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
class PeerStatus:
    """What ``status`` reports for one peer; ``phase`` is "down" when the API does not answer."""

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
    weight_share: float | None = None  # of the set in force, as the first reachable peer reports it


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


# --- files and ports -------------------------------------------------------


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (all bound at once, then released)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _fixed_ports(base: int, count: int) -> list[int]:
    if not 1024 <= base <= 65535 - count + 1:
        raise TestnetError(f"--base-port {base}: need {count} ports from it, within 1024..65535")
    ports = list(range(base, base + count))
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                raise TestnetError(f"port {port} (from base port {base}) is already in use on 127.0.0.1; "
                                   "pick another base port or omit it to use free ports") from None
    return ports


def _prepare_dir(dir: Path, reset: bool) -> None:
    """An empty directory for a new testnet; ``reset`` deletes a stopped testnet's keys, genesis and ledgers."""
    if (dir / STATE_FILE).exists():
        state = load_state(dir)
        running = [p.name for p in state.processes() if processes.ours(p.pid)]
        if running:
            raise TestnetError(f"a testnet is still running in {dir} (peers {', '.join(running)}); "
                               f"stop it first with: multillmn testnet down --dir {dir}")
        if not reset:
            raise TestnetError(f"{dir} holds the keys, genesis and ledgers of testnet {state.chain_id!r}; a new "
                               f"testnet there needs --reset (which deletes them), or choose another --dir")
        for child in dir.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    elif dir.exists() and any(dir.iterdir()):
        raise TestnetError(f"{dir} is not empty and holds no {STATE_FILE}; choose another --dir")
    dir.mkdir(parents=True, exist_ok=True)


def is_running(dir: Path) -> bool:
    """True if ``dir`` holds a testnet with at least one live peer."""
    try:
        return any(processes.ours(p.pid) for p in load_state(dir).processes())
    except TestnetError:
        return False


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


def _fetch_all(urls: list[str], timeout_s: float = 2.0) -> list[dict[str, Any] | None]:
    """GET /v1/status of every URL in parallel; None where it does not answer."""
    with httpx.Client(timeout=timeout_s, trust_env=False) as client, \
            ThreadPoolExecutor(max_workers=min(16, max(1, len(urls)))) as pool:
        return list(pool.map(lambda u: _fetch(client, u), urls))


def status(dir: Path) -> list[PeerStatus]:
    """Each peer's process and API state; unreachable peers have phase "down"."""
    state = load_state(dir)
    alive = [processes.alive(p.pid) for p in state.peers]
    answers = _fetch_all([p.api_url for p, a in zip(state.peers, alive) if a])
    it = iter(answers)
    shares = _weight_shares(next((s for s in answers if s), None))
    out = []
    for p, a in zip(state.peers, alive):
        s = next(it) if a else None
        connected = s.get("connected_peers") if s else None
        out.append(PeerStatus(
            name=p.name, peer_id=p.peer_id, model=p.model, api_url=p.api_url, pid=p.pid, alive=a,
            ready=bool(s and s.get("ready") is True), phase=str(s.get("phase", "?")) if s else "down",
            height=s.get("height") if s else None,
            connected_peers=len(connected) if isinstance(connected, list) else None,
            weight_share=shares.get(p.peer_id)))
    return out


def _weight_shares(status: dict[str, Any] | None) -> dict[str, float]:
    """Each validator's share of the total weight in a peer's ``/v1/status`` (empty if malformed)."""
    try:
        assert status is not None
        weights = {v["peer_id"]: int(v["weight"]) for v in status["validators"]}
        total = sum(weights.values())
        return {p: round(w / total, 4) for p, w in weights.items()} if total > 0 else {}
    except (AssertionError, KeyError, TypeError, ValueError):
        return {}


def logs(dir: Path, name: str | None = None, lines: int = 50) -> str:
    """The last ``lines`` lines of one peer's log, or of every peer's under a header each."""
    state = load_state(dir)
    if name is not None:
        return processes.tail(Path(state.peer(name).log), lines)
    return "\n".join(f"==> {p.name} ({p.log}) <==\n{processes.tail(Path(p.log), lines)}\n" for p in state.peers)


def down(dir: Path, timeout_s: float = 15) -> list[str]:
    """Stop every peer and shard worker (SIGTERM, then SIGKILL after ``timeout_s``), delete their
    network namespaces, mark the testnet stopped."""
    state = load_state(dir)
    report = processes.stop(state.processes(), timeout_s)
    report += _delete_namespaces(state.workers)
    for p in state.processes():
        p.pid = None
    state.stopped = True
    state.save()
    return report


def _delete_namespaces(workers: Sequence[WorkerRecord]) -> list[str]:
    """Delete the workers' network namespaces (killing what still runs inside); describe each."""
    done = []
    for w in workers:
        if w.netns is None:
            continue
        try:
            if netns.delete_namespace(w.netns, kill=True):
                done.append(f"{w.name}: network namespace {w.netns} deleted")
            if w.veth is not None:
                netns.delete_link(w.veth)  # normally gone with its peer end already
        except netns.NetnsError as exc:
            done.append(f"{w.name}: cannot delete network namespace {w.netns}: {exc}")
    return done


# --- up --------------------------------------------------------------------


def _device_workers(manifest: Manifest, dir: Path, ports: Iterator[int]) -> list[tuple[WorkerRecord, DeviceSpec]]:
    """Keys, logs and addresses of the shard workers; a network namespace per device with a bandwidth."""
    out: list[tuple[WorkerRecord, DeviceSpec]] = []
    for p in manifest.peers:
        for d in p.devices:
            home = dir / p.name / "workers"
            home.mkdir(parents=True, exist_ok=True)
            key = KeyPair.generate()
            key.save(home / f"{d.name}.pem")
            w = WorkerRecord(name=f"{p.name}/{d.name}", peer=p.name, peer_id=key.peer_id, pid=None, address="",
                             key=str(home / f"{d.name}.pem"), log=str(home / f"{d.name}.log"), threads=d.threads)
            if d.bandwidth_kbit:
                w.netns = netns.short_name(str(dir), w.name, prefix="mlln-")
                w.veth = netns.short_name(str(dir), w.name, prefix="mv") + "r"
                try:
                    link = netns.add_device_link(w.netns, w.veth, w.veth[:-1] + "n", d.bandwidth_kbit, w.netns)
                except netns.NetnsError as exc:
                    _delete_namespaces([o for o, _ in out])
                    raise TestnetError(f"peer {p.name!r}: device {d.name!r}: cannot set up its network namespace "
                                       f"for bandwidth_kbit: {exc}") from None
                w.address = f"{link.addr_b}:{NETNS_WORKER_PORT}"
            else:
                w.address = f"127.0.0.1:{next(ports)}"
            out.append((w, d))
    return out


def _write_peer_files(manifest: Manifest, dir: Path, ports: list[int]
                      ) -> tuple[list[PeerRecord], list[WorkerRecord]]:
    """Keys, genesis, configs and device files; returns the peer and worker records (no pids yet)."""
    keys = {p.name: KeyPair.generate() for p in manifest.peers}
    records = []
    for i, p in enumerate(manifest.peers):
        home = dir / p.name
        home.mkdir(exist_ok=True)
        keys[p.name].save(home / "peer_key.pem")
        records.append(PeerRecord(
            name=p.name, peer_id=keys[p.name].peer_id, pid=None, model=p.model, weight=p.weight,
            api_url=f"http://127.0.0.1:{ports[2 * i + 1]}", p2p=f"127.0.0.1:{ports[2 * i]}",
            log=str(home / "peer.log"), config=str(home / "config.toml")))
    Genesis.build(manifest.chain_id, [(p.name, keys[p.name].public_key, p.weight)
                                      for p in manifest.peers]).save(dir / "genesis.json")
    workers = _device_workers(manifest, dir, iter(ports[2 * len(records):]))
    specs = {p.name: p for p in manifest.peers}
    for r in records:
        spec = specs[r.name]
        mine = [(w, d) for w, d in workers if w.peer == r.name]
        if mine:
            entries = [DeviceEntry(
                name=d.name, memory_mb=d.memory_mb, link_ms=d.delay_ms, threads=d.threads,
                bandwidth_mbps=d.bandwidth_kbit / 1000 if d.bandwidth_kbit else None, address=w.address,
                peer_id=w.peer_id, shape_delay_ms=d.delay_ms, shape_loss=d.loss) for w, d in mine]
            (dir / r.name / "devices.toml").write_text(render_device_file(
                entries, header=f"shard workers of {r.name}, written by `multillmn testnet up`"))
        cfg = PeerConfig(
            moniker=r.name, key_file="peer_key.pem", genesis_file="../genesis.json",
            p2p_listen=r.p2p, api_listen=r.api_url.removeprefix("http://"),
            persistent_peers=tuple(PeerAddress(o.peer_id, o.p2p) for o in records if o is not r),
            model=r.model, threads=manifest.threads_per_peer, max_new_tokens=manifest.max_new_tokens,
            behaviour=spec.byzantine, slow_ms=spec.slow_ms, crash_at_height=spec.crash_at_height,
            behaviour_from_height=spec.from_height, link_delay_ms=spec.link_delay_ms, link_loss=spec.link_loss,
            shard_devices_file="devices.toml" if mine else "",
        ).validate()
        Path(r.config).write_text(render_toml(cfg))
    return records, [w for w, _ in workers]


def _fail(state: TestnetState, message: str, names: list[str]) -> TestnetError:
    """Stop everything and build an error carrying the log tails of ``names`` (peers or workers)."""
    processes.stop(state.processes(), timeout_s=5)
    _delete_namespaces(state.workers)
    for p in state.processes():
        p.pid = None
    state.stopped = True
    state.save()
    logs = {r.name: r.log for r in state.processes()}
    tails = "".join(f"\n--- last lines of {logs[n]} ---\n{processes.tail(Path(logs[n]), _TAIL_LINES)}" for n in names)
    return TestnetError(f"{message}; all peers were stopped{tails}")


def _check_netns(manifest: Manifest) -> None:
    """Devices with ``bandwidth_kbit`` need network namespaces: fail before anything starts if we cannot."""
    shaped = [f"{p.name}/{d.name}" for p in manifest.peers for d in p.devices if d.bandwidth_kbit]
    if shaped:
        reason = netns.unavailable_reason()
        if reason is not None:
            raise TestnetError(f"device{'s' if len(shaped) > 1 else ''} {', '.join(shaped)} declare bandwidth_kbit, "
                               f"which runs each worker in a network namespace behind a tc tbf rate limit, but "
                               f"{reason}; run as root or drop bandwidth_kbit")


def _worker_argv(w: WorkerRecord, state: TestnetState, command: list[str]) -> list[str]:
    owner = state.peer(w.peer)
    host, _, port = w.address.rpartition(":")
    return [*netns.exec_prefix(w.netns), *command, "--model", owner.model, "--cache-dir",
            str(Path(PeerConfig().cache_dir).expanduser()), "--key", w.key, "--allow", owner.peer_id,
            "--threads", str(w.threads), "--host", host, "--port", port]


def up(manifest: Manifest, dir: Path, *, base_port: int | None = None, ready_timeout_s: float = 900,
       progress: Callable[[str], None] | None = None, peer_command: list[str] | None = None,
       worker_command: list[str] | None = None, reset: bool = False) -> TestnetState:
    """Start a new testnet in ``dir`` and return once every peer (and shard worker) reports ready.

    ``dir`` must be empty, or hold a stopped testnet and ``reset`` be set (its
    data is deleted: every run of ``up`` is a new network with new keys).

    Shard workers start first (a sharded peer waits for its workers while it loads). On a peer
    or worker exiting, a wrong peer answering, the timeout or an interrupt, everything is
    stopped first; failures raise :class:`TestnetError` with log tails.
    """
    say = progress or (lambda _line: None)
    dir = dir.resolve()
    manifest.validate()
    _check_netns(manifest)
    _prepare_dir(dir, reset)
    count = 2 * len(manifest.peers) + sum(1 for p in manifest.peers for d in p.devices if not d.bandwidth_kbit)
    ports = _fixed_ports(base_port, count) if base_port is not None else _free_ports(count)
    records, workers = _write_peer_files(manifest, dir, ports)
    state = TestnetState(dir=dir, chain_id=manifest.chain_id, peers=records, workers=workers)
    state.save()
    command = list(peer_command if peer_command is not None else DEFAULT_PEER_COMMAND)
    env = _peer_env(manifest.threads_per_peer)
    cores = os.cpu_count() or 1
    threads = len(records) * manifest.threads_per_peer + sum(w.threads for w in workers)
    if threads > cores:
        extra = f" + {len(workers)} shard workers" if workers else ""
        say(f"note: {len(records)} peers x {manifest.threads_per_peer} thread(s){extra} share {cores} cores; "
            "start-up and answers will be slow")
    try:
        wcommand = list(worker_command if worker_command is not None else DEFAULT_WORKER_COMMAND)
        for w in workers:
            w.log_offset = Path(w.log).stat().st_size if Path(w.log).exists() else 0
            try:
                # separate devices: idle OpenMP threads must not spin on the cores the others share
                w.pid = processes.spawn(_worker_argv(w, state, wcommand), Path(w.log),
                               dict(_peer_env(w.threads), OMP_WAIT_POLICY="PASSIVE"))
            except OSError as exc:
                raise _fail(state, f"cannot start shard worker {w.name} ({wcommand[0]}: {exc.strerror})", []) from None
            state.save()
            say(f"shard worker {w.name} started (pid {w.pid}, {w.address}{', netns ' + w.netns if w.netns else ''})")
        for r in records:
            try:
                r.pid = processes.spawn([*command, "--config", r.config], Path(r.log), env)
            except OSError as exc:
                raise _fail(state, f"cannot start {r.name} ({command[0]}: {exc.strerror})", []) from None
            state.save()
            say(f"{r.name} started (pid {r.pid}, model {r.model}, api {r.api_url})")
        _wait_ready(state, ready_timeout_s, say)
    except BaseException as exc:
        if not isinstance(exc, TestnetError):
            _fail(state, "interrupted", [])
        raise
    return state


def _peer_env(threads: int) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")


def restart(dir: Path, name: str, *, ready_timeout_s: float = 900, peer_command: list[str] | None = None
            ) -> PeerRecord:
    """Start peer ``name`` again (after it crashed or was killed) with its config; wait until ready.

    The peer keeps its key, config and ledger store, so it replays its ledger
    and catches up. Raises :class:`TestnetError` if it still runs, exits
    during start-up (log tail included) or is not ready in time (then it is
    stopped; the other peers are left alone).
    """
    dir = dir.resolve()
    state = load_state(dir)
    r = state.peer(name)
    if processes.ours(r.pid):
        raise TestnetError(f"peer {name} is still running (pid {r.pid}); stop or kill it first")
    threads = PeerConfig.load(Path(r.config)).threads
    command = list(peer_command if peer_command is not None else DEFAULT_PEER_COMMAND)
    try:
        r.pid = processes.spawn([*command, "--config", r.config], Path(r.log), _peer_env(threads))
    except OSError as exc:
        raise TestnetError(f"cannot start {name} ({command[0]}: {exc.strerror})") from None
    state.stopped = False
    state.save()
    deadline = time.monotonic() + ready_timeout_s
    while True:
        code = processes.reap(r.pid)
        if code is not None or not processes.alive(r.pid):
            tail = processes.tail(Path(r.log), _TAIL_LINES)
            raise TestnetError(f"peer {name} exited during restart (exit status {code})\n"
                               f"--- last lines of {r.log} ---\n{tail}")
        s = _fetch_all([r.api_url], timeout_s=1.0)[0]
        if s is not None and s.get("peer_id") == r.peer_id and s.get("ready") is True:
            return r
        if time.monotonic() > deadline:
            processes.stop([r], timeout_s=5)
            r.pid = None
            state.save()
            raise TestnetError(f"peer {name} was not ready within {ready_timeout_s:g}s after restart; "
                               f"it was stopped (log: {r.log})")
        time.sleep(_POLL_S)


def _wait_ready(state: TestnetState, timeout_s: float, say: Callable[[str], None]) -> None:
    start = time.monotonic()
    last: dict[str, tuple[str, float]] = {}
    reported = 0.0
    pending = {r.name: r for r in state.peers}
    starting = {w.name: w for w in state.workers}
    while pending or starting:
        elapsed = time.monotonic() - start
        procs: list[tuple[str, PeerRecord | WorkerRecord]] = [*pending.items(), *starting.items()]
        for name, proc in procs:
            assert proc.pid is not None
            code = processes.reap(proc.pid)
            if code is not None or not processes.alive(proc.pid):
                how = f"exit code {code}" if code is not None and code >= 0 else \
                    f"killed by signal {-code}" if code is not None else "exited"
                what = "shard worker" if name in starting else "peer"
                raise _fail(state, f"{what} {name} exited during start-up ({how})", [name])
        changed = False
        for name, w in list(starting.items()):  # a worker prints "READY <port> <peer id>" once it listens
            if _worker_ready(w):
                del starting[name]
                last[name] = ("ready", elapsed)
                changed = True
        answers = _fetch_all([r.api_url for r in pending.values()], timeout_s=1.0)
        for (name, r), s in zip(list(pending.items()), answers):
            if s is not None and s.get("peer_id") not in (None, r.peer_id):
                raise _fail(state, f"{r.api_url} answered as peer {s.get('peer_id')}, expected {name} "
                                   f"({r.peer_id}); is another process using that port?", [name])
            phase = "ready" if s and s.get("ready") is True else str(s.get("phase", "starting")) if s else "starting"
            changed = changed or name not in last or last[name][0] != phase
            last[name] = (phase, elapsed)
            if phase == "ready":
                del pending[name]
        for name in starting:
            last.setdefault(name, ("starting", elapsed))
        if changed or elapsed - reported >= _REPORT_EVERY_S:
            # one line per change (or every few seconds): "12s  peer0 ready, peer1 loading-model"
            say(f"{elapsed:>4.0f}s  " + ", ".join(f"{n} {last[n][0]}" for n in sorted(last)))
            reported = elapsed
        if not pending and not starting:
            return
        if time.monotonic() - start > timeout_s:
            waiting = ", ".join(f"{n} ({last[n][0]})" for n in [*pending, *starting])
            raise _fail(state, f"timed out after {timeout_s:g}s waiting for {waiting} to be ready",
                        [*pending, *starting])
        time.sleep(_POLL_S)


def _worker_ready(w: WorkerRecord) -> bool:
    """The worker printed ``READY <port> <peer id>`` (with its own id) in this run's part of its log."""
    try:
        with open(w.log, "rb") as f:
            f.seek(w.log_offset)
            text = f.read(1 << 20).decode("utf-8", "replace")
    except OSError:
        return False
    return any(line.startswith("READY ") and line.split()[-1] == w.peer_id for line in text.splitlines())
