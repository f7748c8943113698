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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from multillmn.config import BYZANTINE_BEHAVIOURS, PeerAddress, PeerConfig, render_toml
from multillmn.genesis import Genesis, GenesisError, Params
from multillmn.identity import KeyPair
from peers.shard.devices import DeviceEntry, render_device_file
from testnet import netns, processes
from testnet.manifest import DeviceSpec, Manifest, ManifestError, check_join_model, check_model, is_peer_name
from testnet.state import (STATE_FILE, PeerRecord, PeerStatus, TestnetError, TestnetState, WorkerRecord, WorkerStatus,
                           fetch_statuses, load_state, status, status_height)

__all__ = ["DEFAULT_PEER_COMMAND", "DEFAULT_WORKER_COMMAND", "JoinResult", "LeaveResult", "LocalTestnet", "PeerRecord",
           "PeerStatus", "TestnetError", "TestnetState", "WorkerRecord", "WorkerStatus",
           "down", "find_local", "is_running", "join", "leave", "load_state", "logs", "pointer_path", "remember",
           "restart", "status", "up"]

DEFAULT_PEER_COMMAND: list[str] = [sys.executable, "-m", "multillmn", "peer", "start"]
"""argv prefix of a peer; ``--config <path>`` is appended."""

DEFAULT_WORKER_COMMAND: list[str] = [sys.executable, "-m", "peers.shard.worker"]
"""argv prefix of a shard worker (``python -m peers.shard.worker``); its options are appended."""

NETNS_WORKER_PORT = 7000  # a worker alone in its network namespace can use a fixed port

_POLL_S = 0.5
_REPORT_EVERY_S = 10.0
_TAIL_LINES = 20


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


# --- the local testnet: `multillmn ask` without --peer ------------------------


def pointer_path() -> Path:
    """Where ``testnet up`` records the directory of the testnet it started last:
    ``$XDG_STATE_HOME/multillmn/testnet`` (default ``~/.local/state/multillmn/testnet``)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "multillmn" / "testnet"


def remember(dir: Path) -> None:
    """Record ``dir`` as the local testnet (for ``multillmn ask`` without ``--peer``); best effort."""
    path = pointer_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(f"{dir.resolve()}\n")
        os.replace(tmp, path)
    except OSError:
        pass


@dataclass(frozen=True)
class LocalTestnet:
    """A running local testnet: its directory, a ready member's API and the genesis to pin certificates to."""

    dir: Path
    peer: str
    api_url: str
    genesis: Path


def find_local(dir: Path | None = None) -> LocalTestnet:
    """The local testnet to ask: ``dir`` if given, else ``./.testnet`` or the one ``testnet up`` started last
    (:func:`pointer_path`), whichever runs; and its first peer that answers as a ready member.
    :class:`TestnetError` saying where it looked and what to do."""
    if dir is not None:
        candidates = [dir]
    else:
        candidates = [Path(".testnet")]
        try:
            recorded = pointer_path().read_text().strip()
        except OSError:
            recorded = ""
        if recorded and Path(recorded).resolve() != candidates[0].resolve():
            candidates.append(Path(recorded))
    found = [c.resolve() for c in candidates if (c / STATE_FILE).is_file()]
    if not found:
        raise TestnetError(f"no --peer given and no local testnet found (looked in "
                           f"{', '.join(str(c) for c in candidates)}); start one with `multillmn testnet up --peers "
                           f"4`, or pass --peer URL")
    for d in found:
        state = load_state(d)
        running = [p for p in state.peers if processes.ours(p.pid)]
        answers = fetch_statuses([p.api_url for p in running])
        for p, s in zip(running, answers):
            if s is not None and s.get("peer_id") == p.peer_id and s.get("ready") is True \
                    and s.get("member") is not False:
                return LocalTestnet(d, p.name, p.api_url, d / "genesis.json")
    raise TestnetError(f"no peer of the local testnet in {', '.join(map(str, found))} answers as a ready member "
                       f"(stopped, or still starting: see `multillmn testnet status --dir {found[0]}`); pass --peer "
                       f"URL to ask another peer")


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
    """Keys, genesis, configs and device files; returns the peer and worker records (no pids yet).

    The genesis holds the peers without ``join_at_height``; they link to each other. A joiner links
    to the genesis peers and hands its join request to the first one's API once that peer reports
    its ``join_at_height`` (``[membership] join_via``)."""
    keys = {p.name: KeyPair.generate() for p in manifest.peers}
    records = []
    for i, p in enumerate(manifest.peers):
        home = dir / p.name
        home.mkdir(exist_ok=True)
        keys[p.name].save(home / "peer_key.pem")
        records.append(PeerRecord(
            name=p.name, peer_id=keys[p.name].peer_id, pid=None, model=p.model, weight=p.weight if p.in_genesis else 0,
            api_url=f"http://127.0.0.1:{ports[2 * i + 1]}", p2p=f"127.0.0.1:{ports[2 * i]}",
            log=str(home / "peer.log"), config=str(home / "config.toml"), genesis=p.in_genesis))
    params = Params(models=manifest.admitted_models(), verdict_rule=manifest.verdict_rule,
                    verdict_margin=manifest.verdict_margin)
    if manifest.epoch_length is not None:
        params = replace(params, epoch_length=manifest.epoch_length)
    try:
        Genesis.build(manifest.chain_id, [(p.name, keys[p.name].public_key, p.weight)
                                          for p in manifest.genesis_peers], params).save(dir / "genesis.json")
    except GenesisError as exc:
        raise TestnetError(f"cannot build the genesis: {exc}") from None
    workers = _device_workers(manifest, dir, iter(ports[2 * len(records):]))
    specs = {p.name: p for p in manifest.peers}
    founders = [r for r in records if r.genesis]
    ids = {r.name: r.peer_id for r in records}
    delays = manifest.link_delays()
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
            persistent_peers=tuple(PeerAddress(o.peer_id, o.p2p) for o in founders if o is not r),
            model=r.model, threads=manifest.threads_per_peer, max_new_tokens=manifest.max_new_tokens,
            behaviour=spec.byzantine, slow_ms=spec.slow_ms, crash_at_height=spec.crash_at_height,
            behaviour_from_height=spec.from_height, link_delay_ms=spec.link_delay_ms, link_loss=spec.link_loss,
            link_delays_ms=tuple(sorted((ids[o], ms) for o, ms in delays[r.name].items())),
            broadcast=manifest.broadcast,
            shard_devices_file="devices.toml" if mine else "", external_address=r.p2p,
            join_via="" if r.genesis else founders[0].api_url, join_at_height=spec.join_at_height,
            leave_at_height=spec.leave_at_height,
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
    _await_ready(state, r, ready_timeout_s, "restart")
    return r


def _await_ready(state: TestnetState, r: PeerRecord, timeout_s: float, what: str) -> None:
    """Wait until peer ``r`` (just spawned) reports ready; :class:`TestnetError` with its log tail if it
    exits, or after stopping it if it is not ready in time (the other peers are left alone)."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert r.pid is not None
        code = processes.reap(r.pid)
        if code is not None or not processes.alive(r.pid):
            r.pid = None
            state.save()
            tail = processes.tail(Path(r.log), _TAIL_LINES)
            raise TestnetError(f"peer {r.name} exited during {what} (exit status {code})\n"
                               f"--- last lines of {r.log} ---\n{tail}")
        s = fetch_statuses([r.api_url], timeout_s=1.0)[0]
        if s is not None and s.get("peer_id") not in (None, r.peer_id):
            processes.stop([r], timeout_s=5)
            r.pid = None
            state.save()
            raise TestnetError(f"{r.api_url} answered as peer {s.get('peer_id')}, expected {r.name} ({r.peer_id}); "
                               "is another process using that port?")
        if s is not None and s.get("peer_id") == r.peer_id and s.get("ready") is True:
            return
        if time.monotonic() > deadline:
            processes.stop([r], timeout_s=5)
            r.pid = None
            state.save()
            raise TestnetError(f"peer {r.name} was not ready within {timeout_s:g}s after {what}; "
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
        answers = fetch_statuses([r.api_url for r in pending.values()], timeout_s=1.0)
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


# --- membership: join and leave a running testnet ----------------------------------------------

_JOIN_SENT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class JoinResult:
    """What ``join`` did: the new peer, the member it asked, and (``wait``) the boundary it joined at."""

    peer: PeerRecord
    via: str  # the member's API its join request went to
    boundary: int | None = None  # the height from which it votes (None: not waited for, or not shown)


@dataclass(frozen=True)
class LeaveResult:
    """What ``leave`` did: the peer, the boundary it left at (if shown) and how its process ended."""

    peer: PeerRecord
    boundary: int | None
    stopped: str | None  # ``processes.stop``'s line, None with ``keep_running`` (or if it was not running)


def _running(state: TestnetState) -> list[PeerRecord]:
    running = [p for p in state.peers if processes.ours(p.pid)]
    if not running:
        raise TestnetError(f"the testnet in {state.dir} is stopped (no peer runs); restart its peers with "
                           f"`multillmn testnet restart --dir {state.dir} --peer NAME`, or start a new one with "
                           f"`multillmn testnet up --dir {state.dir} --reset`")
    return running


def _members(peers: Sequence[PeerRecord]) -> list[tuple[PeerRecord, dict[str, Any]]]:
    """The peers that answer as members of the validator set, furthest ahead first."""
    answers = fetch_statuses([p.api_url for p in peers])
    found = [(p, s) for p, s in zip(peers, answers)
             if s is not None and s.get("peer_id") == p.peer_id and s.get("member") is True]
    return sorted(found, key=lambda ps: -status_height(ps[1]))


def _membership(status: dict[str, Any]) -> dict[str, Any]:
    m = status.get("membership")
    return m if isinstance(m, dict) else {}


def _ids(items: object, key: str = "peer_id") -> set[str]:
    """The ``key`` of every object in a status list (malformed entries skipped)."""
    if not isinstance(items, list):
        return set()
    return {str(i[key]) for i in items if isinstance(i, dict) and key in i}


def _boundary(status: dict[str, Any] | None, peer_id: str, side: str) -> int | None:
    """The boundary of the last transition in ``status`` whose ``side`` ("joined"/"left") names ``peer_id``."""
    found = None
    for t in _membership(status or {}).get("transitions", []) or []:
        if isinstance(t, dict) and isinstance(t.get(side), list) and peer_id in t[side] \
                and isinstance(t.get("boundary"), int):
            found = t["boundary"]
    return found


def _where(status: dict[str, Any] | None) -> str:
    """"network at height 7, next boundary 9" from a member's status."""
    if status is None:
        return "no member answers"
    m = _membership(status)
    nxt = f", next epoch boundary {m['next_boundary']}" if isinstance(m.get("next_boundary"), int) else ""
    return f"network at height {status_height(status)}{nxt}"


_HEIGHTS_HINT = ("heights advance only as questions are decided, and members change only at epoch boundaries: "
                 "keep questions coming (multillmn ask --peer URL ...)")


def _free_name(state: TestnetState) -> str:
    names = {p.name for p in state.peers}
    i = len(state.peers)
    while f"peer{i}" in names or (state.dir / f"peer{i}").exists():
        i += 1
    return f"peer{i}"


def _check_join(state: TestnetState, genesis: Genesis, model: str, name: str | None, byzantine: str
                ) -> tuple[str, str]:
    """The model (checked) and name of a peer to add, else :class:`TestnetError` saying why not."""
    if genesis.params.weights != "adaptive":
        raise TestnetError(f"the genesis of {state.dir} fixes the validator set (static weights): no peer can join")
    try:
        model = check_join_model("--model", check_model(model))
    except ManifestError as exc:
        raise TestnetError(str(exc)) from None
    admitted = genesis.params.models
    if admitted and model not in admitted:
        raise TestnetError(f"--model {model!r}: the genesis of this testnet admits only "
                           f"{', '.join(admitted)}; a join request declaring another model is refused")
    if byzantine not in BYZANTINE_BEHAVIOURS:
        raise TestnetError(f"--byzantine: expected one of {', '.join(BYZANTINE_BEHAVIOURS)}, got {byzantine!r}")
    if name is None:
        name = _free_name(state)
    if not is_peer_name(name):
        raise TestnetError(f"--name: expected 1-64 characters of [a-z0-9-], got {name!r}")
    if any(p.name == name for p in state.peers):
        raise TestnetError(f"--name: the testnet already has a peer named {name!r}")
    if (state.dir / name).exists():
        raise TestnetError(f"--name: {state.dir / name} already exists; choose another name")
    return model, name


def join(dir: Path, model: str, *, name: str | None = None, byzantine: str = "none", wait: bool = False,
         ready_timeout_s: float = 900, member_timeout_s: float = 900,
         progress: Callable[[str], None] | None = None, peer_command: list[str] | None = None) -> JoinResult:
    """Add a peer to the running testnet in ``dir`` and start it; return once it is ready and its join
    request was accepted, or (``wait``) once it is a member of the validator set.

    It gets a new key, the testnet's genesis, the running peers as persistent peers, its p2p address as
    ``[membership] external_address`` and a running member's API as ``join_via``: the peer hands its
    own signed join request there once it runs (ADR 0016: it takes effect at the first epoch boundary
    at least two heights after it is committed). It is recorded in ``testnet.json`` like the others.
    On a failure after it started it is stopped and stays recorded (``testnet restart`` retries);
    with ``wait`` and a timeout it keeps running, following the network.
    """
    say = progress or (lambda _line: None)
    dir = dir.resolve()
    state = load_state(dir)
    running = _running(state)
    try:
        genesis = Genesis.load(dir / "genesis.json")
    except GenesisError as exc:
        raise TestnetError(f"cannot read the testnet's genesis: {exc}") from None
    model, name = _check_join(state, genesis, model, name, byzantine)
    members = _members(running)
    if not members:
        raise TestnetError(f"no running peer of the testnet in {dir} answers as a member of the validator set "
                           f"(running: {', '.join(p.name for p in running)}); check `multillmn testnet status`")
    via = members[0][0]
    base = PeerConfig.load(Path(via.config))
    p2p, api = (f"127.0.0.1:{port}" for port in _free_ports(2))
    home = dir / name
    home.mkdir()
    key = KeyPair.generate()
    key.save(home / "peer_key.pem")
    r = PeerRecord(name=name, peer_id=key.peer_id, pid=None, model=model, api_url=f"http://{api}", p2p=p2p,
                   log=str(home / "peer.log"), config=str(home / "config.toml"), weight=0, genesis=False)
    cfg = PeerConfig(
        moniker=name, key_file="peer_key.pem", genesis_file="../genesis.json", p2p_listen=p2p, api_listen=api,
        persistent_peers=tuple(PeerAddress(o.peer_id, o.p2p) for o in running),
        model=model, threads=base.threads, max_new_tokens=base.max_new_tokens, behaviour=byzantine,
        external_address=p2p, join_via=via.api_url, broadcast=base.broadcast, broadcast_fanout=base.broadcast_fanout,
    ).validate()
    Path(r.config).write_text(render_toml(cfg))
    state.peers.append(r)
    state.save()
    command = list(peer_command if peer_command is not None else DEFAULT_PEER_COMMAND)
    try:
        r.pid = processes.spawn([*command, "--config", r.config], Path(r.log), _peer_env(cfg.threads))
    except OSError as exc:
        raise TestnetError(f"cannot start {name} ({command[0]}: {exc.strerror})") from None
    state.save()
    say(f"{name} started (pid {r.pid}, model {model}, api {r.api_url}); it asks {via.name} ({via.api_url}) to join")
    try:
        try:
            _await_ready(state, r, ready_timeout_s, "start-up")
        except TestnetError as exc:
            raise TestnetError(f"{exc}\n{name} stays in {dir / STATE_FILE}, stopped: once the cause is fixed, "
                               f"start it with `multillmn testnet restart --dir {dir} --peer {name}`") from None
        say(f"{name} ready; {_where(members[0][1])}")
        _await_join_sent(state, r, via, say)
        if not wait:
            return JoinResult(r, via.api_url)
        say(_HEIGHTS_HINT)
        return JoinResult(r, via.api_url, _await_member(state, r, member_timeout_s, say))
    except BaseException as exc:
        if not isinstance(exc, TestnetError):  # interrupted: do not leave a half-started peer behind
            processes.stop([r], timeout_s=5)
            r.pid = None
            state.save()
        raise


def _log_since(path: Path, offset: int) -> list[dict[str, Any]]:
    """The JSON log records written to ``path`` from ``offset`` on (other lines skipped)."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            text = f.read(4 << 20).decode("utf-8", "replace")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def _await_join_sent(state: TestnetState, r: PeerRecord, via: PeerRecord, say: Callable[[str], None]) -> None:
    """Wait (briefly) until the new peer's log says a member accepted its join request; a refusal it logs
    is reported as it comes (it asks again every 10 s). :class:`TestnetError` if none accepted in time."""
    deadline = time.monotonic() + _JOIN_SENT_TIMEOUT_S
    seen: set[str] = set()
    while True:
        for record in _log_since(Path(r.log), 0):
            if record.get("msg") == "asked to join":
                say(f"{via.name} accepted the join request of {r.name}; it takes effect at the first epoch "
                    "boundary at least 2 heights after it is committed")
                return
            if record.get("msg") == "join request not accepted yet":
                error = str(record.get("error", "?"))
                if error not in seen:
                    seen.add(error)
                    say(f"{via.name} has not accepted the join request of {r.name} yet: {error}")
        if not processes.alive(r.pid):
            r.pid = None
            state.save()
            raise TestnetError(f"peer {r.name} exited before its join request was accepted\n"
                               f"--- last lines of {r.log} ---\n{processes.tail(Path(r.log), _TAIL_LINES)}")
        if time.monotonic() > deadline:
            why = f" (last refusal: {sorted(seen)[-1]})" if seen else ""
            raise TestnetError(f"{via.name} did not accept the join request of {r.name} within "
                               f"{_JOIN_SENT_TIMEOUT_S:g}s{why}; {r.name} keeps running and asks again every 10 s "
                               f"(log: {r.log})")
        time.sleep(_POLL_S)


def _await_member(state: TestnetState, r: PeerRecord, timeout_s: float, say: Callable[[str], None]) -> int | None:
    """Wait until ``r`` reports itself a member; the boundary it joined at (if its status shows it)."""
    start = time.monotonic()
    reported = -_REPORT_EVERY_S
    while True:
        if not processes.alive(r.pid):
            r.pid = None
            state.save()
            raise TestnetError(f"peer {r.name} exited before it became a member\n"
                               f"--- last lines of {r.log} ---\n{processes.tail(Path(r.log), _TAIL_LINES)}")
        mine = fetch_statuses([r.api_url], timeout_s=1.0)[0]
        if mine is not None and mine.get("member") is True:
            return _boundary(mine, r.peer_id, "joined")
        elapsed = time.monotonic() - start
        if elapsed - reported >= _REPORT_EVERY_S:
            reported = elapsed
            others = _members([p for p in state.peers if p is not r and processes.ours(p.pid)])
            top = others[0][1] if others else None
            pending = {str(j.get("peer_id")): j for j in _membership(top or {}).get("pending_joins", []) or []
                       if isinstance(j, dict)}
            how = f"its join was committed at height {pending[r.peer_id].get('committed_at')}" \
                if r.peer_id in pending else "its join is not committed yet"
            say(f"{elapsed:>4.0f}s  {r.name} at height {status_height(mine)}, {_where(top)}; {how}")
        if elapsed > timeout_s:
            raise TestnetError(f"{r.name} is not a member after {timeout_s:g}s; it keeps running and following the "
                               f"network. {_HEIGHTS_HINT[0].upper()}{_HEIGHTS_HINT[1:]}; then check "
                               f"`multillmn testnet status --dir {state.dir}`")
        time.sleep(_POLL_S)


def leave(dir: Path, name: str, *, keep_running: bool = False, timeout_s: float = 900,
          progress: Callable[[str], None] | None = None) -> LeaveResult:
    """Take peer ``name`` out of the validator set: sign its leave request with its key (in the testnet
    dir), post it to its own API (or, if that does not answer, to another member's), wait until another
    member no longer lists it among the validators, then stop it (``keep_running``: it stays up, a
    follower of the network). Its config is rewritten so that a restart neither joins nor leaves again.
    """
    from consensus.messages import Leave, sign
    from multillmn.client import ClientError, request_membership

    say = progress or (lambda _line: None)
    dir = dir.resolve()
    state = load_state(dir)
    r = state.peer(name)
    running = _running(state)
    others = _members([p for p in running if p is not r])
    if not others:
        if processes.ours(r.pid) and _members([r]):
            raise TestnetError(f"{name} is the only running member: the network cannot lose its last validator")
        raise TestnetError(f"no other running peer of the testnet in {dir} answers as a member, so nothing can "
                           f"order {name}'s leave; check `multillmn testnet status --dir {dir}`")
    observer, top = others[0]
    m = _membership(top)
    if r.peer_id not in _ids(top.get("validators")):
        if r.peer_id in _ids(m.get("pending_joins")):
            raise TestnetError(f"{name} is not a member yet: its join waits for an epoch boundary ({_where(top)}); "
                               f"it can leave once it is a member (multillmn testnet join --wait shows when)")
        raise TestnetError(f"{name} is not a member of the validator set at height {status_height(top)} "
                           f"(as {observer.name} reports): it left, was removed, or never joined")
    cfg = PeerConfig.load(Path(r.config))
    if r.peer_id in _ids(m.get("pending_leaves")):
        say(f"{name} already asked to leave; waiting for the epoch boundary")
    else:
        try:
            key = KeyPair.load(cfg.path(cfg.key_file))
        except Exception as exc:  # KeyFileError, OSError
            raise TestnetError(f"cannot read the key of {name}: {exc}") from None
        envelope = sign(Leave(chain_id=state.chain_id, peer_id=r.peer_id, created_ms=time.time_ns() // 1_000_000),
                        key).envelope
        targets = ([r] if processes.ours(r.pid) else []) + [p for p, _ in others]  # its own API first
        for i, target in enumerate(targets):
            try:
                request_membership(target.api_url, "leave", envelope)
            except ClientError as exc:
                text = str(exc)
                if "already-requested" in text:
                    say(f"{name} already asked to leave; waiting for the epoch boundary")
                    break
                if (text.startswith("cannot reach") or text.startswith("refused (503)")) and i + 1 < len(targets):
                    continue  # not up (yet): ask the next member
                raise TestnetError(f"{target.name} ({target.api_url}) refused the leave request of {name}: "
                                   f"{text}") from None
            say(f"{target.name} accepted the leave request of {name}; {_where(top)}")
            break
    say(_HEIGHTS_HINT)
    boundary = _await_left(state, r, timeout_s, say)
    Path(r.config).write_text(render_toml(replace(cfg, join_via="", join_at_height=0, leave_at_height=0)))
    stopped = None
    if not keep_running and processes.ours(r.pid):
        stopped = processes.stop([r], timeout_s=15)[0]
        r.pid = None
        state.save()
    return LeaveResult(r, boundary, stopped)


def _await_left(state: TestnetState, r: PeerRecord, timeout_s: float, say: Callable[[str], None]) -> int | None:
    """Wait until a member other than ``r`` no longer lists it; the boundary it left at (if shown)."""
    start = time.monotonic()
    reported = -_REPORT_EVERY_S
    while True:
        others = _members([p for p in state.peers if p is not r and processes.ours(p.pid)])
        top = others[0][1] if others else None
        if top is not None and r.peer_id not in _ids(top.get("validators")):
            return _boundary(top, r.peer_id, "left")
        elapsed = time.monotonic() - start
        pending = r.peer_id in _ids(_membership(top or {}).get("pending_leaves"))
        if elapsed - reported >= _REPORT_EVERY_S:
            reported = elapsed
            say(f"{elapsed:>4.0f}s  {_where(top)}; the leave of {r.name} is "
                f"{'committed' if pending else 'not committed yet'}")
        if elapsed > timeout_s:
            raise TestnetError(f"{r.name} is still a member after {timeout_s:g}s (its leave request is "
                               f"{'committed' if pending else 'not committed yet'}). "
                               f"{_HEIGHTS_HINT[0].upper()}{_HEIGHTS_HINT[1:]}")
        time.sleep(_POLL_S)
