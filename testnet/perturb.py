"""Perturbations of a running testnet, as CometBFT's e2e runner has them: kill, pause, resume, disconnect.

* ``kill``: SIGKILL the process group of a peer or shard worker (``NAME`` or
  ``PEER/DEVICE``); ``testnet restart`` starts a peer again from its key, config
  and ledger.
* ``pause`` / ``resume``: SIGSTOP / SIGCONT of the group: the process keeps its
  sockets but neither reads nor answers (a frozen machine); its links time out
  at the others only as TCP does.
* ``disconnect`` / ``reconnect``: the peer's daemon cuts every p2p link, both
  ways, and refuses new ones until reconnected (SIGUSR1 / SIGUSR2,
  :meth:`peers.transport.Transport.disconnect`); its API still answers, so
  ``testnet status`` shows it isolated and its height falling behind. Links to
  its own shard workers are not cut.

Every function returns one line saying what it did, or raises
:class:`~testnet.launcher.TestnetError` saying why not.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from testnet import processes
from testnet.state import PeerRecord, TestnetError, TestnetState, WorkerRecord, fetch_statuses, load_state

__all__ = ["disconnect", "kill", "pause", "reconnect", "resume"]

_POLL_S = 0.1


def _find(state: TestnetState, name: str) -> PeerRecord | WorkerRecord:
    for r in state.processes():
        if r.name == name:
            return r
    names = ", ".join(r.name for r in state.processes())
    raise TestnetError(f"no peer or shard worker named {name!r} in {state.dir} (there are: {names})")


def _running(r: PeerRecord | WorkerRecord, what: str) -> int:
    if not processes.ours(r.pid):
        raise TestnetError(f"{r.name} is not running, so it cannot be {what}"
                           + (f"; start it with `multillmn testnet restart --peer {r.name}`"
                              if isinstance(r, PeerRecord) else ""))
    assert r.pid is not None
    return r.pid


def _await(check: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL_S)
    return True


def kill(dir: Path, name: str) -> str:
    """SIGKILL the process group of peer or shard worker ``name`` (a crash: no clean shutdown)."""
    state = load_state(dir.resolve())
    r = _find(state, name)
    pid = _running(r, "killed")
    processes.signal_group(pid, signal.SIGKILL)
    if not _await(lambda: not processes.group_alive(pid), 10):
        raise TestnetError(f"{name} (pid {pid}) survived SIGKILL for 10 s")
    processes.collect(pid, 1.0)
    r.pid = None
    state.save()
    hint = f"; start it again with `multillmn testnet restart --dir {dir} --peer {name}`" \
        if isinstance(r, PeerRecord) else ""
    return f"{name} killed (SIGKILL to process group {pid}){hint}"


def pause(dir: Path, name: str) -> str:
    """SIGSTOP the process group of ``name``: it holds its sockets but does nothing until ``resume``."""
    state = load_state(dir.resolve())
    r = _find(state, name)
    pid = _running(r, "paused")
    if processes.paused(pid):
        return f"{name} is already paused (pid {pid})"
    processes.signal_group(pid, signal.SIGSTOP)
    if not _await(lambda: processes.paused(pid), 5):
        raise TestnetError(f"{name} (pid {pid}) did not stop on SIGSTOP")
    return f"{name} paused (SIGSTOP to process group {pid}); `multillmn testnet resume --peer {name}` continues it"


def resume(dir: Path, name: str) -> str:
    """SIGCONT the process group of a paused ``name``."""
    state = load_state(dir.resolve())
    r = _find(state, name)
    pid = _running(r, "resumed")
    if not processes.paused(pid):
        return f"{name} is not paused (pid {pid})"
    processes.signal_group(pid, signal.SIGCONT)
    if not _await(lambda: not processes.paused(pid), 5):
        raise TestnetError(f"{name} (pid {pid}) did not continue on SIGCONT")
    return f"{name} resumed (SIGCONT to process group {pid})"


def _disconnected(r: PeerRecord) -> bool | None:
    """The peer's own word: are its links cut? None if it does not answer as ready."""
    s = fetch_statuses([r.api_url], timeout_s=2.0)[0]
    if s is None or s.get("peer_id") != r.peer_id or s.get("ready") is not True:
        return None
    transport = s.get("transport")
    return bool(transport.get("disconnected")) if isinstance(transport, dict) else None


def _toggle(dir: Path, name: str, cut: bool, timeout_s: float) -> str:
    state = load_state(dir.resolve())
    r = _find(state, name)
    verb = "disconnected" if cut else "reconnected"
    if not isinstance(r, PeerRecord):
        raise TestnetError(f"{name} is a shard worker: only a peer's links can be {verb} (pause or kill a worker)")
    pid = _running(r, verb)
    if processes.paused(pid):
        raise TestnetError(f"{name} is paused: resume it first (`multillmn testnet resume --peer {name}`)")
    now = _disconnected(r)
    if now is None:
        raise TestnetError(f"{name} does not answer as a ready peer at {r.api_url}; wait until `multillmn testnet "
                           f"status` shows it ready")
    if now == cut:
        return f"{name} is already {verb}"
    os.kill(pid, signal.SIGUSR1 if cut else signal.SIGUSR2)  # the daemon itself, not its group
    if not _await(lambda: _disconnected(r) == cut, timeout_s):
        raise TestnetError(f"{name} did not report its links {verb} within {timeout_s:g}s (log: {r.log})")
    if cut:
        return (f"{name} disconnected: every p2p link cut, new ones refused; `multillmn testnet reconnect --peer "
                f"{name}` restores them")
    return f"{name} reconnected: it dials its peers again and catches up"


def disconnect(dir: Path, name: str, timeout_s: float = 10) -> str:
    """Cut every p2p link of peer ``name`` (both ways) until :func:`reconnect`; it reports it in its status."""
    return _toggle(dir, name, True, timeout_s)


def reconnect(dir: Path, name: str, timeout_s: float = 10) -> str:
    """Restore the links of a peer cut off by :func:`disconnect`."""
    return _toggle(dir, name, False, timeout_s)
