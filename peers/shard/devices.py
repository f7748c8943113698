"""Device files: the devices near a driving peer, for the planner and for a sharded peer. Pure.

A device file (TOML) lists the devices as ``[[device]]`` tables::

    [[device]]
    name = "laptop"             # unique
    threads = 4                 # or: speed = 2.5 (relative to one core of the dev machine)
    memory_mb = 800             # memory the shard may use
    link_ms = 2.0               # one-way latency between this device and the driving peer
    bandwidth_mbps = 100        # link bandwidth, Mbit/s (optional: unlimited)
    # a sharded peer ([shard] devices_file) also needs, per device:
    address = "10.0.0.7:7000"   # where its shard worker listens
    peer_id = "<40 hex>"        # the identity the worker must prove in the handshake
    # testnets only: conditions the driver's LinkShaper adds on this device's link
    shape_delay_ms = 0          # one-way delay added to each request and each reply
    shape_loss = 0.0            # probability a frame is lost (and resent after a TCP-like timeout)

``multillmn shard plan`` reads the planning keys and ignores the others;
:func:`require_workers` checks that every device names its worker.
:func:`render_device_file` writes a file that :func:`load_device_file` reads back.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .planner import Device, Link

__all__ = ["DeviceFileError", "DeviceEntry", "load_device_file", "parse_device_file", "planner_inputs",
           "render_device_file", "require_workers", "split_address"]

_KEYS = {"name", "threads", "speed", "memory_mb", "link_ms", "bandwidth_mbps", "address", "peer_id",
         "shape_delay_ms", "shape_loss"}
MIB = 2**20


class DeviceFileError(ValueError):
    """The device file is missing, not TOML, or has a bad entry (the message names it)."""


@dataclass(frozen=True)
class DeviceEntry:
    """One ``[[device]]`` table, validated."""

    name: str
    memory_mb: float
    link_ms: float
    threads: int | None = None  # exactly one of threads and speed is set
    speed: float | None = None
    bandwidth_mbps: float | None = None  # None: unlimited
    address: str | None = None
    peer_id: str | None = None
    shape_delay_ms: float = 0.0
    shape_loss: float = 0.0

    @property
    def relative_speed(self) -> float:
        """Speed relative to one core of the dev machine (``threads`` scales ideally)."""
        return float(self.threads) if self.threads is not None else float(self.speed or 1.0)


def _number(entry: dict[str, Any], key: str, where: str, *, positive: bool = True) -> float:
    v = entry[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise DeviceFileError(f"{where}: {key} must be a number, got {v!r}")
    if (positive and v <= 0) or v < 0:
        raise DeviceFileError(f"{where}: {key} must be {'> 0' if positive else '>= 0'}, got {v!r}")
    return float(v)


def split_address(value: str, where: str) -> tuple[str, int]:
    """``"host:port"`` → ``(host, port)``; :class:`DeviceFileError` naming ``where`` if malformed."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise DeviceFileError(f"{where}: address must be host:port, got {value!r}")
    return host, int(port)


def _entry(entry: object, i: int, where_file: str, seen: set[str]) -> DeviceEntry:
    where = f"{where_file}: device #{i + 1}"
    if not isinstance(entry, dict):
        raise DeviceFileError(f"{where}: expected a table")
    unknown = set(entry) - _KEYS
    if unknown:
        raise DeviceFileError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_KEYS)}")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise DeviceFileError(f"{where}: name must be a non-empty string")
    where = f"{where_file}: device {name!r}"
    if name in seen:
        raise DeviceFileError(f"{where}: duplicate name")
    seen.add(name)
    for key in ("memory_mb", "link_ms"):
        if key not in entry:
            raise DeviceFileError(f"{where}: missing {key}")
    if ("threads" in entry) == ("speed" in entry):
        raise DeviceFileError(f"{where}: give exactly one of threads or speed")
    threads: int | None = None
    speed: float | None = None
    if "threads" in entry:
        threads = entry["threads"]
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise DeviceFileError(f"{where}: threads must be a positive integer, got {threads!r}")
    else:
        speed = _number(entry, "speed", where)
    address = entry.get("address")
    if address is not None:
        if not isinstance(address, str):
            raise DeviceFileError(f"{where}: address must be a string host:port, got {address!r}")
        split_address(address, where)
    peer_id = entry.get("peer_id")
    if peer_id is not None and not (isinstance(peer_id, str) and len(peer_id) == 40
                                    and all(c in "0123456789abcdef" for c in peer_id)):
        raise DeviceFileError(f"{where}: peer_id must be 40 lowercase hex characters, got {peer_id!r}")
    loss = _number(entry, "shape_loss", where, positive=False) if "shape_loss" in entry else 0.0
    if loss >= 1:
        raise DeviceFileError(f"{where}: shape_loss must be < 1, got {loss!r}")
    return DeviceEntry(
        name=name, memory_mb=_number(entry, "memory_mb", where, positive=False),
        link_ms=_number(entry, "link_ms", where, positive=False), threads=threads, speed=speed,
        bandwidth_mbps=_number(entry, "bandwidth_mbps", where) if "bandwidth_mbps" in entry else None,
        address=address, peer_id=peer_id,
        shape_delay_ms=_number(entry, "shape_delay_ms", where, positive=False) if "shape_delay_ms" in entry else 0.0,
        shape_loss=loss,
    )


def parse_device_file(text: str, where: str = "device file") -> list[DeviceEntry]:
    """Validate the text of a device file; errors start with ``where``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DeviceFileError(f"{where} is not valid TOML: {exc}") from None
    extra = set(data) - {"device"}
    if extra:
        raise DeviceFileError(f"{where}: unknown top-level keys {sorted(extra)}; expected [[device]] tables")
    entries = data.get("device")
    if not isinstance(entries, list) or not entries:
        raise DeviceFileError(f"{where}: no [[device]] tables")
    seen: set[str] = set()
    return [_entry(e, i, where, seen) for i, e in enumerate(entries)]


def load_device_file(path: Path) -> list[DeviceEntry]:
    """Read and validate a device file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DeviceFileError(f"cannot read {path}: {exc.strerror}") from None
    return parse_device_file(text, str(path))


def require_workers(entries: Sequence[DeviceEntry], where: str = "device file") -> None:
    """Every device must name its worker (``address`` and ``peer_id``) for a sharded peer."""
    for e in entries:
        missing = [k for k in ("address", "peer_id") if getattr(e, k) is None]
        if missing:
            raise DeviceFileError(f"{where}: device {e.name!r}: missing {' and '.join(missing)} "
                                  "(a sharded peer must know where each worker listens and who it is)")


def planner_inputs(entries: Sequence[DeviceEntry]) -> tuple[list[Device], dict[str, Link]]:
    """The planner's devices and each one's link to the driving peer."""
    devices = [Device(e.name, int(e.memory_mb * MIB), speed=e.relative_speed) for e in entries]
    links = {e.name: Link(e.link_ms, e.bandwidth_mbps * 1e6 / 8 if e.bandwidth_mbps else math.inf)
             for e in entries}
    return devices, links


def _toml_value(v: object) -> str:
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)


def render_device_file(entries: Sequence[DeviceEntry], header: str = "") -> str:
    """A device file for ``entries`` (unset optional keys are left out)."""
    lines = [f"# {line}" for line in header.splitlines()]
    for e in entries:
        lines += ["", "[[device]]"]
        for key in ("name", "threads", "speed", "memory_mb", "link_ms", "bandwidth_mbps", "address", "peer_id",
                    "shape_delay_ms", "shape_loss"):
            v = getattr(e, key)
            if v is not None and not (key.startswith("shape_") and v == 0):
                lines.append(f"{key} = {_toml_value(v)}")
    return "\n".join(lines).lstrip("\n") + "\n"
