"""Network namespaces, veth pairs and ``tc tbf`` rate limits, for emulated link bandwidth.

This kernel has no ``netem`` (delay and loss are emulated in user space by
:class:`peers.transport.LinkShaper`), but it has ``tbf``, a token bucket that
limits a device's egress rate. To give a link a bandwidth, its far end runs in
its own network namespace joined to the near end by a veth pair, with a
``tbf`` qdisc on the egress of *both* veth ends (one per direction)::

    namespace A (or this one)              namespace B
    dev_a  addr_a/30  ──── veth pair ────  dev_b  addr_b/30
    tbf rate R (A → B)                      tbf rate R (B → A)

Several namespaces can also share one LAN: a bridge (a switch) in a namespace of
its own, and each namespace plugged into it by a veth pair (:func:`add_bridge`,
:func:`add_bridge_port`), as machines on one Ethernet segment::

    host A  eth0 10.0.0.1/24 ──┐
    host B  eth0 10.0.0.2/24 ──┼── br0 (switch namespace)
    host C  eth0 10.0.0.3/24 ──┘

Needs root (``CAP_NET_ADMIN`` and mounts under ``/run/netns``);
:func:`unavailable_reason` says whether this process may do it. Every
command goes through ``ip`` / ``tc``; a failure raises :class:`NetnsError` with
the command and its stderr. Names: namespaces are free-form (we use
``mlln-…``), device names at most 15 characters (``IFNAMSIZ``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass

__all__ = ["NetnsError", "VethLink", "unavailable_reason", "add_namespace", "delete_namespace", "namespaces",
           "pids", "add_veth", "add_device_link", "delete_link", "set_rate", "clear_rate", "exec_prefix", "free_subnet", "short_name",
           "tbf_burst_bytes", "add_bridge", "add_bridge_port"]

_POOL = ipaddress.IPv4Network("10.213.0.0/16")  # /30 subnets for veth pairs are picked from here
MAX_IFNAME = 15


class NetnsError(RuntimeError):
    """An ``ip`` or ``tc`` command failed (the message holds the command and its error output)."""


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"{' '.join(argv)}: {exc}") from None
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {proc.stderr.strip() or f'exit status {proc.returncode}'}")
    return proc


def _in(ns: str | None, *argv: str) -> list[str]:
    return [*exec_prefix(ns), *argv]


def exec_prefix(ns: str | None) -> list[str]:
    """argv prefix that runs a command inside namespace ``ns`` (``[]`` for this process's namespace)."""
    return [] if ns is None else ["ip", "netns", "exec", ns]


def short_name(*parts: str, prefix: str = "mlln") -> str:
    """A stable name from ``parts``: ``prefix`` + 8 hex digits (fits a device name with a suffix)."""
    return prefix + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:8]


def unavailable_reason() -> str | None:
    """``None`` if this process can create namespaces, veth pairs and tbf qdiscs; else why not."""
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"the {tool!r} command (iproute2) is not installed"
    probe = short_name("probe", str(os.getpid()), prefix="mlln-probe-")
    try:
        add_namespace(probe)
    except NetnsError as exc:
        return f"cannot create a network namespace ({exc}); run as root"
    try:
        _run(*_in(probe, "ip", "link", "set", "lo", "up"))
        _run(*_in(probe, "tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "1mbit", "burst", "16kb",
                  "latency", "50ms"))
    except NetnsError as exc:
        return f"cannot add a tbf qdisc ({exc})"
    finally:
        delete_namespace(probe)
    return None


def namespaces() -> list[str]:
    """Names of the named network namespaces (``ip netns list``)."""
    out = _run("ip", "netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def add_namespace(name: str) -> None:
    _run("ip", "netns", "add", name)
    _run(*_in(name, "ip", "link", "set", "lo", "up"))


def pids(name: str) -> list[int]:
    """Processes running inside namespace ``name`` (``ip netns pids``; empty if it does not exist)."""
    proc = _run("ip", "netns", "pids", name, check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()] if proc.returncode == 0 else []


def delete_namespace(name: str, *, kill: bool = False) -> bool:
    """Delete a namespace (and with it its end of any veth pair); False if it did not exist.

    With ``kill``, first SIGKILL whatever still runs inside (else the namespace lives on, unnamed,
    until those processes exit).
    """
    if name not in namespaces():
        return False
    if kill:
        for pid in pids(name):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    _run("ip", "netns", "del", name)
    return True


def delete_link(dev: str, ns: str | None = None) -> bool:
    """Delete a device (a veth end takes its peer with it); False if it did not exist."""
    return _run(*_in(ns, "ip", "link", "del", dev), check=False).returncode == 0


def free_subnet(seed: str) -> ipaddress.IPv4Network:
    """A /30 from 10.213.0.0/16 not used by any address of this namespace, starting at ``seed``'s hash."""
    used: set[ipaddress.IPv4Network] = set()
    for line in _run("ip", "-o", "-4", "addr", "show").stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            used.add(ipaddress.IPv4Interface(fields[fields.index("inet") + 1]).network)
    subnets = list(_POOL.subnets(new_prefix=30))
    start = int(hashlib.sha256(seed.encode()).hexdigest(), 16) % len(subnets)
    for i in range(len(subnets)):
        net = subnets[(start + i) % len(subnets)]
        if not any(net.overlaps(u) for u in used):
            return net
    raise NetnsError(f"no free /30 left in {_POOL}")


@dataclass(frozen=True)
class VethLink:
    """Both ends of a veth pair: namespace (``None`` = ours), device name and IPv4 address."""

    ns_a: str | None
    dev_a: str
    addr_a: str
    ns_b: str | None
    dev_b: str
    addr_b: str


def add_veth(ns_a: str | None, dev_a: str, ns_b: str | None, dev_b: str, subnet: ipaddress.IPv4Network) -> VethLink:
    """Create a veth pair ``dev_a`` (in ``ns_a``) ↔ ``dev_b`` (in ``ns_b``) with the two hosts of ``subnet``."""
    for dev in (dev_a, dev_b):
        if not 1 <= len(dev) <= MAX_IFNAME:
            raise NetnsError(f"device name {dev!r} must have 1 to {MAX_IFNAME} characters")
    hosts = [str(h) for h in subnet.hosts()][:2]
    _run("ip", "link", "add", dev_a, "type", "veth", "peer", "name", dev_b)
    try:
        for ns, dev, addr in ((ns_a, dev_a, hosts[0]), (ns_b, dev_b, hosts[1])):
            if ns is not None:
                _run("ip", "link", "set", dev, "netns", ns)
            _run(*_in(ns, "ip", "addr", "add", f"{addr}/{subnet.prefixlen}", "dev", dev))
            _run(*_in(ns, "ip", "link", "set", dev, "up"))
    except NetnsError:
        delete_link(dev_a, ns_a) or delete_link(dev_a)
        raise
    return VethLink(ns_a, dev_a, hosts[0], ns_b, dev_b, hosts[1])


def add_device_link(ns: str, root_dev: str, ns_dev: str, kbit: int | None, seed: str) -> VethLink:
    """A new namespace ``ns`` joined to ours by a veth pair (ours: ``root_dev``), rate-limited both ways.

    For a shard worker with an emulated bandwidth: it listens on ``addr_b`` inside ``ns``; the
    driving peer, in our namespace, reaches it over the veth. On failure nothing is left behind.
    """
    add_namespace(ns)
    try:
        link = add_veth(None, root_dev, ns, ns_dev, free_subnet(seed))
        if kbit:
            set_rate(root_dev, kbit)
            set_rate(ns_dev, kbit, ns)
        return link
    except NetnsError:
        delete_link(root_dev)
        delete_namespace(ns, kill=True)
        raise


def tbf_burst_bytes(kbit: int) -> int:
    """Bucket size: 10 ms at the rate, at least a few full-size frames (tbf needs >= one MTU)."""
    return max(8 * 1514, kbit * 1000 // 8 // 100)


def set_rate(dev: str, kbit: int, ns: str | None = None, *, latency_ms: int = 400) -> None:
    """Limit ``dev``'s egress to ``kbit`` kbit/s with a ``tbf`` qdisc (replacing any root qdisc).

    ``latency_ms`` bounds the queue (packets waiting longer are dropped, as on a real link).
    """
    if kbit < 1:
        raise NetnsError(f"rate must be >= 1 kbit/s, got {kbit}")
    _run(*_in(ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{kbit}kbit",
              "burst", str(tbf_burst_bytes(kbit)), "latency", f"{latency_ms}ms"))


def clear_rate(dev: str, ns: str | None = None) -> None:
    """Remove the root qdisc of ``dev`` (no rate limit); no error if there is none."""
    _run(*_in(ns, "tc", "qdisc", "del", "dev", dev, "root"), check=False)


def add_bridge(ns: str | None, bridge: str = "br0") -> None:
    """A bridge device ``bridge`` (a switch) in namespace ``ns``, up; delete the namespace to remove it."""
    if not 1 <= len(bridge) <= MAX_IFNAME:
        raise NetnsError(f"device name {bridge!r} must have 1 to {MAX_IFNAME} characters")
    _run(*_in(ns, "ip", "link", "add", bridge, "type", "bridge"))
    _run(*_in(ns, "ip", "link", "set", bridge, "up"))


def add_bridge_port(bridge_ns: str | None, bridge: str, port: str, ns: str, dev: str, address: str) -> None:
    """Plug namespace ``ns`` into ``bridge`` (in ``bridge_ns``) with a veth pair: ``port`` is enslaved to the
    bridge, ``dev`` lies in ``ns`` with ``address`` (``"10.0.0.1/24"``). Both are created inside their
    namespaces, so the names need only be unique there; deleting either namespace removes the pair.
    """
    for name in (port, dev):
        if not 1 <= len(name) <= MAX_IFNAME:
            raise NetnsError(f"device name {name!r} must have 1 to {MAX_IFNAME} characters")
    ipaddress.IPv4Interface(address)  # a ValueError names a malformed address before anything is made
    _run(*_in(bridge_ns, "ip", "link", "add", port, "type", "veth", "peer", "name", dev, "netns", ns))
    try:
        _run(*_in(bridge_ns, "ip", "link", "set", port, "master", bridge))
        _run(*_in(bridge_ns, "ip", "link", "set", port, "up"))
        _run(*_in(ns, "ip", "addr", "add", address, "dev", dev))
        _run(*_in(ns, "ip", "link", "set", dev, "up"))
    except NetnsError:
        delete_link(port, bridge_ns)
        raise
