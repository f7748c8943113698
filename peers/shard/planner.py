"""EdgeShard planning: which devices hold which contiguous layers of one model.

Pure: no torch, clock or I/O. A :class:`Problem` holds a :class:`ModelProfile`
(per-layer compute cost and memory, activation bytes at every boundary), the
:class:`Device` list (speed or measured per-layer times, memory budget) and a
:class:`Network` of directed :class:`Link` s between devices and the driving
peer (``driver``), which sends the token in and receives the result.

One token costs, along the pipeline driver → shard 1 → … → shard k → driver::

    latency = tx(driver, d1, O[0]) + c(d1, 0, b1) + tx(d1, d2, O[b1]) + … + tx(dk, driver, O[n])

where ``c(d, a, b)`` is the compute time of layers ``[a, b)`` on ``d`` (plus the
embedding when ``a == 0`` and the head when ``b == n``) and ``tx`` is a link's
latency plus bytes / bandwidth. The pipeline *bottleneck* is the slowest
stage: a shard's compute or a link's serialisation time (bytes / bandwidth;
propagation latency occupies no resource). Throughput is ``1000 / bottleneck``
tokens/s once enough sequences are in flight.

:func:`plan` solves both objectives exactly by dynamic programming over
states ``(layers placed, last device, set of devices used)``: the EdgeShard
recurrence ``D[i][j] = min_k D[i-1][k] + t(i, j) + [k != j] O(i-1)/B(k, j)``
generalised to contiguous shards, with every device used at most once and
every shard within its device's memory. It costs ``O(2^m m^2 n^2)`` for ``m``
devices and ``n`` layers: 30 layers on 6 devices take 0.1 s, on 10 devices 5 s.
The throughput objective breaks ties by latency (a second pass of the latency
DP restricted to stages no slower than the optimal bottleneck).
:func:`brute_force` enumerates every partition and device order to check it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations, permutations
from typing import Literal

__all__ = [
    "DRIVER",
    "Objective",
    "OBJECTIVES",
    "NoFeasiblePlan",
    "Link",
    "Network",
    "Device",
    "ModelProfile",
    "Problem",
    "Shard",
    "Plan",
    "compute_ms",
    "shard_memory",
    "fits",
    "evaluate",
    "plan",
    "brute_force",
    "single_device",
    "even_split",
    "memory_split",
    "baselines",
]

DRIVER = "driver"
"""Default name of the driving peer in a :class:`Network`."""

Objective = Literal["latency", "throughput"]
OBJECTIVES: tuple[Objective, ...] = ("latency", "throughput")


class NoFeasiblePlan(ValueError):
    """No assignment of the layers to the devices fits their memory."""


# --- network -----------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    """A directed link: fixed latency (ms) plus bytes / bandwidth (bytes per second)."""

    latency_ms: float = 0.0
    bandwidth_bps: float = math.inf

    def __post_init__(self) -> None:
        if not self.latency_ms >= 0 or math.isnan(self.latency_ms):
            raise ValueError(f"link latency must be >= 0 ms, got {self.latency_ms}")
        if not self.bandwidth_bps > 0:
            raise ValueError(f"link bandwidth must be > 0 bytes/s, got {self.bandwidth_bps}")

    def serial_ms(self, nbytes: int) -> float:
        """Time the link is busy sending ``nbytes`` (no latency)."""
        if nbytes == 0 or math.isinf(self.bandwidth_bps):
            return 0.0
        return nbytes * 1000.0 / self.bandwidth_bps

    def transfer_ms(self, nbytes: int) -> float:
        """Latency plus serialisation of ``nbytes``."""
        return self.latency_ms + self.serial_ms(nbytes)


_LOCAL = Link()


@dataclass(frozen=True)
class Network:
    """Directed links between named endpoints (devices and the driver).

    A pair missing from ``links`` uses ``default``; without a default it is an
    error. A node always reaches itself for free.
    """

    links: Mapping[tuple[str, str], Link] = field(default_factory=dict)
    default: Link | None = None

    def link(self, src: str, dst: str) -> Link:
        if src == dst:
            return _LOCAL
        found = self.links.get((src, dst), self.default)
        if found is None:
            raise KeyError(f"no link from {src!r} to {dst!r}")
        return found

    @classmethod
    def star(
        cls,
        up: Mapping[str, Link],
        down: Mapping[str, Link] | None = None,
        *,
        driver: str = DRIVER,
        relay: bool = True,
    ) -> Network:
        """Devices that each reach the driver over their own access link.

        ``up[d]`` is ``d → driver``, ``down[d]`` (default: ``up[d]``) is
        ``driver → d``. With ``relay`` (the driver forwards activations, as
        :mod:`peers.shard.worker` does) ``a → b`` is ``up[a]`` then ``down[b]``:
        latencies add and so do the per-byte times.
        """
        down = dict(up) if down is None else dict(down)
        if set(down) != set(up):
            raise ValueError("up and down links must name the same devices")
        links: dict[tuple[str, str], Link] = {}
        for d in up:
            links[(d, driver)] = up[d]
            links[(driver, d)] = down[d]
        if relay:
            for a in up:
                for b in up:
                    if a != b:
                        links[(a, b)] = _series(up[a], down[b])
        return cls(links)


def _series(a: Link, b: Link) -> Link:
    inv = 0.0
    for bw in (a.bandwidth_bps, b.bandwidth_bps):
        if not math.isinf(bw):
            inv += 1.0 / bw
    return Link(a.latency_ms + b.latency_ms, math.inf if inv == 0 else 1.0 / inv)


# --- model and devices ---------------------------------------------------------


@dataclass(frozen=True)
class ModelProfile:
    """Per-token costs of one model.

    ``layer_ms[i]``: compute of layer ``i`` on a speed-1 device; ``layer_bytes[i]``:
    its memory (weights plus KV cache allowance). ``boundary_bytes`` has
    ``n + 1`` entries: ``[0]`` is what the driver sends into the first shard,
    ``[i]`` the activation between layers ``i-1`` and ``i``, ``[n]`` what the
    last shard returns. The first shard also holds the embedding, the last the
    final norm and LM head; with ``tied_head`` a shard holding both pays the
    shared matrix once. ``shard_ms`` is the fixed cost of one shard step
    (masks, rotary tables, framework overhead), paid once per shard.
    """

    name: str
    layer_ms: tuple[float, ...]
    layer_bytes: tuple[int, ...]
    boundary_bytes: tuple[int, ...]
    embed_ms: float = 0.0
    head_ms: float = 0.0
    embed_bytes: int = 0
    head_bytes: int = 0
    tied_head: bool = False
    shard_ms: float = 0.0

    def __post_init__(self) -> None:
        n = len(self.layer_ms)
        if n < 1:
            raise ValueError("a model has at least one layer")
        if len(self.layer_bytes) != n:
            raise ValueError(f"layer_bytes has {len(self.layer_bytes)} entries, expected {n}")
        if len(self.boundary_bytes) != n + 1:
            raise ValueError(f"boundary_bytes has {len(self.boundary_bytes)} entries, expected {n + 1}")
        if any(not x >= 0 for x in (*self.layer_ms, self.embed_ms, self.head_ms, self.shard_ms)):
            raise ValueError("compute times must be >= 0")
        if any(x < 0 for x in (*self.layer_bytes, *self.boundary_bytes, self.embed_bytes, self.head_bytes)):
            raise ValueError("byte counts must be >= 0")

    @property
    def n_layers(self) -> int:
        return len(self.layer_ms)

    def total_bytes(self) -> int:
        """Memory of the whole model on one device."""
        head = 0 if self.tied_head else self.head_bytes
        return sum(self.layer_bytes) + self.embed_bytes + head


@dataclass(frozen=True)
class Device:
    """A device that can hold a shard.

    Compute of layer ``i`` is ``layer_ms[i]`` if given (measured on this
    device), else the model's base cost divided by ``speed``; the same holds
    for ``embed_ms``, ``head_ms`` and ``shard_ms``.
    """

    name: str
    memory_bytes: int
    speed: float = 1.0
    layer_ms: tuple[float, ...] | None = None
    embed_ms: float | None = None
    head_ms: float | None = None
    shard_ms: float | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a device needs a name")
        if self.memory_bytes < 0:
            raise ValueError(f"device {self.name}: memory must be >= 0 bytes")
        if not self.speed > 0 or math.isinf(self.speed):
            raise ValueError(f"device {self.name}: speed must be a positive number, got {self.speed}")


@dataclass(frozen=True)
class Problem:
    """Everything :func:`plan` needs: the model, the candidate devices and the links."""

    model: ModelProfile
    devices: tuple[Device, ...]
    network: Network
    driver: str = DRIVER

    def __post_init__(self) -> None:
        names = [d.name for d in self.devices]
        if len(set(names)) != len(names):
            raise ValueError(f"device names must be unique: {names}")
        n = self.model.n_layers
        for d in self.devices:
            if d.layer_ms is not None and len(d.layer_ms) != n:
                raise ValueError(f"device {d.name}: layer_ms has {len(d.layer_ms)} entries, expected {n}")

    def device(self, name: str) -> Device:
        for d in self.devices:
            if d.name == name:
                return d
        raise KeyError(f"unknown device {name!r}")

    def without(self, names: Iterable[str]) -> Problem:
        """The same problem minus some devices (e.g. ones that failed)."""
        gone = set(names)
        return Problem(self.model, tuple(d for d in self.devices if d.name not in gone), self.network, self.driver)


# --- plans ---------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """Layers ``[start, stop)`` on ``device``."""

    device: str
    start: int
    stop: int

    def __str__(self) -> str:
        return f"{self.device}[{self.start}:{self.stop}]"


@dataclass(frozen=True)
class Plan:
    """An ordered list of shards with its predicted per-token latency and bottleneck stage."""

    shards: tuple[Shard, ...]
    latency_ms: float
    bottleneck_ms: float
    label: str = ""

    @property
    def throughput_tps(self) -> float:
        """Tokens/s with the pipeline full (many sequences in flight)."""
        return math.inf if self.bottleneck_ms == 0 else 1000.0 / self.bottleneck_ms

    def tokens_per_s(self, sequences: int) -> float:
        """Tokens/s with ``sequences`` generating concurrently (each waits for its previous token)."""
        per_seq = math.inf if self.latency_ms == 0 else sequences * 1000.0 / self.latency_ms
        return min(per_seq, self.throughput_tps)

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(s.device for s in self.shards)

    def ranges(self) -> tuple[tuple[int, int], ...]:
        return tuple((s.start, s.stop) for s in self.shards)

    def __str__(self) -> str:
        return " → ".join(str(s) for s in self.shards)


def compute_ms(problem: Problem, device: Device, start: int, stop: int) -> float:
    """Compute time of layers ``[start, stop)`` on ``device`` for one token."""
    m = problem.model
    n = m.n_layers
    if device.layer_ms is not None:
        total = sum(device.layer_ms[start:stop])
    else:
        total = sum(m.layer_ms[start:stop]) / device.speed
    total += device.shard_ms if device.shard_ms is not None else m.shard_ms / device.speed
    if start == 0:
        total += device.embed_ms if device.embed_ms is not None else m.embed_ms / device.speed
    if stop == n:
        total += device.head_ms if device.head_ms is not None else m.head_ms / device.speed
    return total


def shard_memory(model: ModelProfile, start: int, stop: int) -> int:
    """Bytes a device needs to hold layers ``[start, stop)`` (with embedding / head at the ends)."""
    total = sum(model.layer_bytes[start:stop])
    if start == 0:
        total += model.embed_bytes
    if stop == model.n_layers and not (model.tied_head and start == 0):
        total += model.head_bytes
    return total


def _check_shape(problem: Problem, shards: Sequence[Shard]) -> None:
    if not shards:
        raise ValueError("a plan has at least one shard")
    names = [s.device for s in shards]
    if len(set(names)) != len(names):
        raise ValueError(f"a device appears twice in {names}")
    pos = 0
    for s in shards:
        problem.device(s.device)
        if s.start != pos or s.stop <= s.start:
            raise ValueError(f"shards must tile [0, {problem.model.n_layers}) in order; got {s} at layer {pos}")
        pos = s.stop
    if pos != problem.model.n_layers:
        raise ValueError(f"shards end at layer {pos}, the model has {problem.model.n_layers}")


def fits(problem: Problem, shards: Sequence[Shard]) -> bool:
    """True if every shard fits its device's memory."""
    return all(
        shard_memory(problem.model, s.start, s.stop) <= problem.device(s.device).memory_bytes for s in shards
    )


def evaluate(problem: Problem, shards: Sequence[Shard], label: str = "") -> Plan:
    """Predicted latency and bottleneck of ``shards`` (memory is not checked: see :func:`fits`)."""
    _check_shape(problem, shards)
    net, bb = problem.network, problem.model.boundary_bytes
    latency = 0.0
    bottleneck = 0.0
    prev = problem.driver
    for s in shards:
        link = net.link(prev, s.device)
        c = compute_ms(problem, problem.device(s.device), s.start, s.stop)
        latency += link.transfer_ms(bb[s.start])
        latency += c
        bottleneck = max(bottleneck, link.serial_ms(bb[s.start]), c)
        prev = s.device
    out = net.link(prev, problem.driver)
    latency += out.transfer_ms(bb[-1])
    bottleneck = max(bottleneck, out.serial_ms(bb[-1]))
    return Plan(tuple(shards), latency, bottleneck, label)


# --- dynamic programming ---------------------------------------------------------

# A state is (bitmask of devices used, index of the last device, layers placed);
# its value is (cost, back pointer). Index -1 stands for the driver.
_Key = tuple[int, int, int]


def _options(problem: Problem) -> list[list[list[tuple[int, float]]]]:
    """``opts[j][a]``: every ``(stop, compute_ms)`` for a shard starting at ``a`` that fits device ``j``."""
    model = problem.model
    n = model.n_layers
    opts: list[list[list[tuple[int, float]]]] = []
    for dev in problem.devices:
        per_start: list[list[tuple[int, float]]] = []
        for a in range(n):
            row: list[tuple[int, float]] = []
            for b in range(a + 1, n + 1):
                if shard_memory(model, a, b) <= dev.memory_bytes:
                    row.append((b, compute_ms(problem, dev, a, b)))
                elif b < n and sum(model.layer_bytes[a:b]) > dev.memory_bytes:
                    break  # layer memory only grows with b
            per_start.append(row)
        opts.append(per_start)
    return opts


def _search(problem: Problem, bottleneck: bool, cap: float | None) -> tuple[float, tuple[Shard, ...]] | None:
    """Best plan by latency (sum) or bottleneck (max); with ``cap``, stages above it are forbidden."""
    devs = problem.devices
    n, m = problem.model.n_layers, len(devs)
    bb = problem.model.boundary_bytes
    net, drv = problem.network, problem.driver
    names = [d.name for d in devs] + [drv]  # index -1 → driver
    opts = _options(problem)
    links = [[net.link(names[s], names[t]) for t in range(m)] for s in range(-1, m)]  # links[s+1][t]
    back_links = [net.link(names[s], drv) for s in range(m)]
    limit = math.inf if cap is None else cap

    levels: list[dict[_Key, tuple[float, _Key | None, Shard | None]]] = [{} for _ in range(n + 1)]
    levels[0][(0, -1, 0)] = (0.0, None, None)
    final: tuple[float, _Key] | None = None
    for i in range(n):
        for key, (cost, _, _) in levels[i].items():
            mask, j, _ = key
            for t in range(m):
                if mask >> t & 1:
                    continue
                link = links[j + 1][t]
                nbytes = bb[i]
                tx_serial = link.serial_ms(nbytes)
                if tx_serial > limit:
                    continue
                tx = tx_serial if bottleneck else link.transfer_ms(nbytes)
                for stop, comp in opts[t][i]:
                    if comp > limit:
                        continue
                    if bottleneck:
                        new = max(cost, tx, comp)
                    else:
                        new = cost + tx
                        new += comp
                    nkey = (mask | 1 << t, t, stop)
                    if stop == n:
                        out = back_links[t]
                        out_serial = out.serial_ms(bb[n])
                        if out_serial > limit:
                            continue
                        total = max(new, out_serial) if bottleneck else new + out.transfer_ms(bb[n])
                        if final is None or total < final[0]:
                            levels[n][nkey] = (new, key, Shard(names[t], i, stop))
                            final = (total, nkey)
                        continue
                    old = levels[stop].get(nkey)
                    if old is None or new < old[0]:
                        levels[stop][nkey] = (new, key, Shard(names[t], i, stop))
    if final is None:
        return None
    shards: list[Shard] = []
    k: _Key | None = final[1]
    while k is not None:
        _, parent, shard = levels[k[2]][k]
        if shard is not None:
            shards.append(shard)
        k = parent
    return final[0], tuple(reversed(shards))


def _infeasible(problem: Problem) -> NoFeasiblePlan:
    m = problem.model
    need = m.total_bytes()
    split = need + (m.head_bytes if m.tied_head else 0)
    have = sum(d.memory_bytes for d in problem.devices)
    largest = max((d.memory_bytes for d in problem.devices), default=0)
    names = ", ".join(d.name for d in problem.devices) or "none"
    mib = 2**20
    return NoFeasiblePlan(
        f"model {m.name!r} ({m.n_layers} layers) fits on no split over the devices [{names}]: it needs "
        f"{need / mib:.1f} MiB on one device (largest: {largest / mib:.1f} MiB) or at least {split / mib:.1f} MiB "
        f"across several (together: {have / mib:.1f} MiB)"
    )


def plan(problem: Problem, objective: Objective = "latency") -> Plan:
    """The optimal plan for ``objective``; :class:`NoFeasiblePlan` if nothing fits."""
    if objective == "latency":
        found = _search(problem, bottleneck=False, cap=None)
    elif objective == "throughput":
        best = _search(problem, bottleneck=True, cap=None)
        found = None if best is None else _search(problem, bottleneck=False, cap=best[0])
    else:
        raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")
    if found is None:
        raise _infeasible(problem)
    return evaluate(problem, found[1], label=f"dp-{objective}")


# --- brute force and baselines -----------------------------------------------------


def _objective_key(p: Plan, objective: Objective) -> tuple[float, float]:
    return (p.latency_ms, 0.0) if objective == "latency" else (p.bottleneck_ms, p.latency_ms)


def _partitions(n: int, k: int) -> Iterator[tuple[tuple[int, int], ...]]:
    for cuts in combinations(range(1, n), k - 1):
        bounds = (0, *cuts, n)
        yield tuple((bounds[i], bounds[i + 1]) for i in range(k))


def brute_force(problem: Problem, objective: Objective = "latency") -> Plan:
    """Check :func:`plan` by trying every partition and every ordered choice of devices."""
    n = problem.model.n_layers
    best: Plan | None = None
    for k in range(1, min(n, len(problem.devices)) + 1):
        for ranges in _partitions(n, k):
            for devs in permutations(problem.devices, k):
                shards = tuple(Shard(d.name, a, b) for d, (a, b) in zip(devs, ranges))
                if not fits(problem, shards):
                    continue
                p = evaluate(problem, shards, label=f"brute-{objective}")
                if best is None or _objective_key(p, objective) < _objective_key(best, objective):
                    best = p
    if best is None:
        raise _infeasible(problem)
    return best


def single_device(problem: Problem, objective: Objective = "latency") -> Plan | None:
    """Baseline: the best single device that holds the whole model, or None."""
    n = problem.model.n_layers
    cands = [evaluate(problem, (Shard(d.name, 0, n),), label="single") for d in problem.devices]
    cands = [p for p in cands if fits(problem, p.shards)]
    return min(cands, key=lambda p: _objective_key(p, objective), default=None)


def _from_bounds(problem: Problem, bounds: Sequence[int], label: str) -> Plan | None:
    shards = tuple(
        Shard(d.name, a, b) for d, a, b in zip(problem.devices, bounds, bounds[1:]) if b > a
    )
    if not shards or not fits(problem, shards):
        return None
    return evaluate(problem, shards, label=label)


def even_split(problem: Problem) -> Plan | None:
    """Baseline: equal layer counts on every device in the given order (None if a shard does not fit)."""
    n, m = problem.model.n_layers, min(problem.model.n_layers, len(problem.devices))
    if m == 0:
        return None
    bounds = [0]
    for k in range(m):
        bounds.append(bounds[-1] + n // m + (1 if k < n % m else 0))
    return _from_bounds(problem, bounds, "even")


def memory_split(problem: Problem) -> Plan | None:
    """Baseline (as exo does): layers in proportion to device memory, in the given order."""
    n = problem.model.n_layers
    total = sum(d.memory_bytes for d in problem.devices)
    if total == 0:
        return None
    bounds, acc = [0], 0
    for d in problem.devices:
        acc += d.memory_bytes
        bounds.append((2 * n * acc + total) // (2 * total))  # round half up, exact in integers
    return _from_bounds(problem, bounds, "memory")


def baselines(problem: Problem, objective: Objective = "latency") -> dict[str, Plan | None]:
    """The three baselines by name: ``single``, ``even``, ``memory``."""
    return {"single": single_device(problem, objective), "even": even_split(problem), "memory": memory_split(problem)}
