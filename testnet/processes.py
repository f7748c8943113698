"""Process groups of a local testnet: spawn in a new session, check, signal, stop and reap.

Each peer and shard worker is spawned as the leader of its own session
(process group id = its pid), so stopping the group also stops anything it
started. Liveness checks read ``/proc`` and treat zombies as dead; pids are
checked to still lead their group before they are signalled (pid reuse).
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

__all__ = ["Process", "alive", "collect", "group_alive", "ours", "paused", "reap", "signal_group", "spawn", "stop",
           "tail"]


class Process(Protocol):
    """What :func:`stop` needs of a peer or worker record."""

    name: str
    pid: int | None


def reap(pid: int) -> int | None:
    """Collect ``pid`` if it is our exited child; return its exit status (negative = signal)."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if done == 0:
        return None
    return os.waitstatus_to_exitcode(status)


def collect(pid: int, timeout_s: float = 5.0) -> None:
    """Reap our exited child ``pid``, waiting briefly: a thread-group leader already shows as a
    zombie in /proc while its other threads are still exiting, and cannot be reaped until they have."""
    end = time.monotonic() + timeout_s
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done or time.monotonic() > end:
            return
        time.sleep(0.01)


def alive(pid: int | None) -> bool:
    """True if ``pid`` runs (zombies count as dead)."""
    if pid is None:
        return False
    reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def paused(pid: int | None) -> bool:
    """True if ``pid`` is stopped by a signal (SIGSTOP: ``testnet pause``), as ``/proc`` shows it."""
    if pid is None:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "T"
    except (OSError, IndexError):
        return False


def ours(pid: int | None) -> bool:
    """Alive and leading its own process group, as the peers we spawn do (guards against pid reuse)."""
    if not alive(pid):
        return False
    assert pid is not None
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def group_alive(pgid: int) -> bool:
    reap(pgid)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return alive(pgid) or _group_has_live_member(pgid)


def _group_has_live_member(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send ``sig`` to a process group; False if it no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            return False
        raise
    return True


def spawn(argv: list[str], log: Path, env: dict[str, str]) -> int:
    """Start ``argv`` in a new session, stdout+stderr appended to ``log``; return its pid."""
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    return os.posix_spawnp(argv[0], argv, env, file_actions=actions, setsid=True)


def stop(records: Sequence[Process], timeout_s: float) -> list[str]:
    """SIGTERM every process group (peers, workers), wait up to ``timeout_s``, SIGKILL stragglers; describe each."""
    done: list[str] = []
    waiting: dict[str, Process] = {}
    for r in records:
        if r.pid is None:
            done.append(f"{r.name}: not running")
        elif not ours(r.pid) and not group_alive(r.pid):
            done.append(f"{r.name}: already exited (pid {r.pid})")
        elif signal_group(r.pid, signal.SIGTERM):
            signal_group(r.pid, signal.SIGCONT)  # a paused process acts on SIGTERM only once it runs again
            waiting[r.name] = r
        else:
            done.append(f"{r.name}: already exited (pid {r.pid})")
    deadline = time.monotonic() + timeout_s
    while waiting and time.monotonic() < deadline:
        for name, r in list(waiting.items()):
            assert r.pid is not None
            if not group_alive(r.pid):
                collect(r.pid)  # the leader may be a zombie already counted as dead: collect it
                done.append(f"{name}: stopped (pid {r.pid})")
                del waiting[name]
        if waiting:
            time.sleep(0.05)
    for name, r in waiting.items():
        assert r.pid is not None
        signal_group(r.pid, signal.SIGKILL)
        end = time.monotonic() + 5
        while group_alive(r.pid) and time.monotonic() < end:
            time.sleep(0.05)
        collect(r.pid)
        done.append(f"{name}: killed after not stopping within {timeout_s:g}s (pid {r.pid})")
    order = {r.name: i for i, r in enumerate(records)}
    return sorted(done, key=lambda line: order.get(line.split(":")[0], 0))



def tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a file, reading only its end."""
    if lines <= 0:
        return ""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            end = pos = f.tell()
            data = b""
            while pos > 0 and data.count(b"\n") <= lines:
                pos = max(0, pos - 65536)
                f.seek(pos)
                data = f.read(end - pos)
    except OSError as exc:
        return f"(cannot read {path}: {exc.strerror})"
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])
