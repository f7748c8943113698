"""Simulation configuration: the network, the faults and the workload of one scenario.

A :class:`SimConfig` plus a seed determines a run completely. Configs are
frozen, validated by :meth:`SimConfig.validate` (raising
:class:`SimConfigError` naming the field), and round-trip through JSON so a
failing run can be replayed from one command line.

Weights: ``weights`` are the genesis weights; under ``wbft`` with
``adaptive_weights`` they then follow committed score vectors
(``consensus.weights``, with ``WeightParams.default()`` or, for
``weight_params = "tests"``, ``WeightParams.for_tests()``). With
``attack_from_height`` every faulty peer answers wrong and otherwise follows
the protocol before that height (its working height), then acts out its
behaviour; the fault model (faulty weight below 1/3) is required only from
that height on.

Membership (``wbft`` with adaptive weights only): ``epoch_length`` sets the
genesis epoch length (``None``: the default of
:class:`~consensus.membership.MembershipParams`); ``joiners`` are extra
nodes ``peers, peers + 1, ...`` outside the genesis that start at a time or
height and send their signed Join to a member; ``leaves`` are members that
send a Leave at a time or height and stop once out of the set. Crashes and
partitions may name joiners too.

Verdicts (ADR 0022): ``verdict_rule = "veto"`` gives the chain the veto and
every honest node a judge that knows the truth (1000 for a right answer,
-1000 for a wrong one when its own is right); the ``omit-verdicts``
behaviour is a proposer that leaves out every rejecting verdict.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

__all__ = [
    "SimConfigError",
    "Partition",
    "Crash",
    "Joiner",
    "Leaver",
    "SimConfig",
    "BASELINES",
    "Baseline",
    "WEIGHT_PRESETS",
    "WeightPreset",
]

Baseline = Literal["wbft", "equal", "majority"]
BASELINES: tuple[Baseline, ...] = ("wbft", "equal", "majority")
WeightPreset = Literal["default", "tests"]
WEIGHT_PRESETS: tuple[WeightPreset, ...] = ("default", "tests")


class SimConfigError(ValueError):
    """A simulation config is inconsistent; the message names the field."""


@dataclass(frozen=True)
class Partition:
    """Between ``start_ms`` and ``heal_ms`` nodes in different ``groups`` cannot reach each other.

    Nodes not listed in any group form one more group. As in the real
    transport, a message sent across the cut is queued and goes out when the
    partition heals (the per-link queue holds ``queue_limit`` messages; the rest are lost).
    """

    start_ms: int
    heal_ms: int
    groups: tuple[tuple[int, ...], ...]
    queue_limit: int = 1024


@dataclass(frozen=True)
class Crash:
    """Node ``node`` stops at ``at_ms``; if ``restart_ms`` is set it comes back then."""

    node: int
    at_ms: int
    restart_ms: int | None = None


@dataclass(frozen=True)
class Joiner:
    """A node outside the genesis (node ``peers + k`` for the ``k``-th joiner).

    It starts at ``at_ms``, or when some node decided height ``at_height - 1``
    (the network works on ``at_height``), from the genesis, signs a Join with its
    own key and sends it to member ``via`` (``None``: drawn from the seed),
    then to another member every two gossip periods until its own chain holds
    the join. It catches up by the catch-up path and votes once its chain puts
    it in the set. ``behaviour`` is one of the Byzantine behaviours (or
    ``none``).
    """

    at_ms: int | None = None
    at_height: int | None = None
    behaviour: str = "none"
    via: int | None = None


@dataclass(frozen=True)
class Leaver:
    """Member ``node`` sends a Leave to its own peer at ``at_ms``, or once it decided height
    ``at_height - 1``; it stops once its chain leaves it out of the set in force."""

    node: int
    at_ms: int | None = None
    at_height: int | None = None


@dataclass(frozen=True)
class SimConfig:
    """One scenario. Times are virtual milliseconds; every default is the real runner's where one exists."""

    peers: int = 4
    weights: tuple[int, ...] | None = None  # None: all 1
    byzantine: tuple[tuple[int, str], ...] = ()  # (node index, behaviour name)
    byzantine_pick: tuple[str, ...] = ()  # one behaviour per extra faulty node; the nodes are drawn from the seed
    heights: int = 3
    latency_ms: float = 50.0  # mean one-way latency (log-normal)
    latency_sigma: float = 0.5  # log-normal shape
    loss: float = 0.0  # probability that a message is lost
    partitions: tuple[Partition, ...] = ()
    crashes: tuple[Crash, ...] = ()  # crash / restart of nodes (honest ones restart from their WAL)
    slowness: tuple[tuple[int, float], ...] = ()  # (node, answer-time multiplier) for honest nodes
    gen_ms: float = 500.0  # mean answer generation time
    error_rate: float = 0.0  # per-model error rates are drawn uniformly from [0, error_rate]
    query_interval_ms: int = 1000  # query h is issued at (h-1) * interval
    queries_per_height: int = 1  # queries a value decides at most; scenarios count one query per height
    real_signatures: bool = False
    baseline: Baseline = "wbft"
    adaptive_weights: bool = True  # wbft: weights follow committed score vectors (ADR 0006); else static
    weight_params: WeightPreset = "default"  # WeightParams.default() or .for_tests()
    attack_from_height: int | None = None  # faulty peers answer wrong (and follow the protocol) before this
    timeouts_ms: tuple[int, int, int, int] = (3000, 1000, 1000, 500)  # propose, prevote, precommit, delta
    answer_grace_ms: int = 1500
    gossip_ms: int = 1000  # the driver's tick: when stuck, re-send own messages, relay votes, ask to catch up
    catchup: bool = True  # hosts serve decided heights (value + precommit quorum) to a peer that asks
    wal: bool = True  # restarted honest nodes replay their write-ahead log
    crash_at_ms: int | None = None  # when 'crash' nodes stop; None: drawn from the seed
    slow_ms: int = 2000  # extra delay of every message a 'slow' node sends
    threshold: int = 800  # similarity threshold (per mille)
    tolerance: int = 20  # similarity tolerance (per mille)
    verdict_rule: str = "none"  # the genesis' verdict rule (ADR 0022): none or veto (judges know the truth)
    height_budget_ms: int | None = None  # termination bound per height after stabilisation; None: derived
    max_events: int = 5_000_000
    epoch_length: int | None = None  # membership epochs in heights; None: MembershipParams' default
    joiners: tuple[Joiner, ...] = ()  # nodes outside the genesis that ask to join (indices peers, peers+1, ...)
    leaves: tuple[Leaver, ...] = ()  # members that leave (at most one request each)
    extra: tuple[tuple[str, str], ...] = field(default=())  # free-form labels (ignored by the engine)

    # --- derived ---------------------------------------------------------
    @property
    def adaptive(self) -> bool:
        """Whether validator sets follow committed scores (``wbft`` with ``adaptive_weights``)."""
        return self.baseline == "wbft" and self.adaptive_weights

    @property
    def nodes(self) -> int:
        """Every simulated node: the genesis peers, then the joiners."""
        return self.peers + len(self.joiners)

    def weight_list(self) -> tuple[int, ...]:
        """The validators' weights (all 1 for the ``equal`` and ``majority`` baselines)."""
        if self.baseline != "wbft" or self.weights is None:
            return tuple(1 for _ in range(self.peers))
        return self.weights

    def validate(self) -> SimConfig:
        """Raise :class:`SimConfigError` naming the first bad field; return self when valid."""
        from consensus.driver.behaviours import behaviour_names

        n = self.peers
        _need(isinstance(n, int) and 1 <= n <= 256, "peers", "an integer in [1, 256]", n)
        if self.weights is not None:
            _need(len(self.weights) == n, "weights", f"{n} entries (one per peer)", self.weights)
            for w in self.weights:
                _need(isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= 10**9,
                      "weights", "positive integers", self.weights)
        _need(isinstance(self.heights, int) and 1 <= self.heights <= 10_000, "heights", "an integer in [1, 10000]",
              self.heights)
        _need(isinstance(self.queries_per_height, int) and 1 <= self.queries_per_height <= 16,
              "queries_per_height", "an integer in [1, 16]", self.queries_per_height)
        _need(0.0 <= self.loss < 1.0, "loss", "a probability in [0, 1)", self.loss)
        _need(self.latency_ms >= 0, "latency_ms", ">= 0", self.latency_ms)
        _need(0 <= self.latency_sigma <= 3, "latency_sigma", "in [0, 3]", self.latency_sigma)
        _need(self.gen_ms >= 0, "gen_ms", ">= 0", self.gen_ms)
        _need(0.0 <= self.error_rate <= 1.0, "error_rate", "a probability in [0, 1]", self.error_rate)
        _need(self.query_interval_ms >= 0, "query_interval_ms", ">= 0", self.query_interval_ms)
        _need(self.baseline in BASELINES, "baseline", f"one of {', '.join(BASELINES)}", self.baseline)
        _need(len(self.timeouts_ms) == 4 and all(t >= 1 for t in self.timeouts_ms[:3]) and self.timeouts_ms[3] >= 0,
              "timeouts_ms", "(propose, prevote, precommit >= 1, delta >= 0)", self.timeouts_ms)
        for name in ("answer_grace_ms", "gossip_ms", "slow_ms"):
            _need(getattr(self, name) >= 0, name, ">= 0", getattr(self, name))
        _need(isinstance(self.adaptive_weights, bool), "adaptive_weights", "true or false", self.adaptive_weights)
        _need(self.weight_params in WEIGHT_PRESETS, "weight_params", f"one of {', '.join(WEIGHT_PRESETS)}",
              self.weight_params)
        if self.attack_from_height is not None:
            _need(isinstance(self.attack_from_height, int) and self.attack_from_height >= 1, "attack_from_height",
                  "an integer >= 1", self.attack_from_height)
        _need(0 <= self.threshold <= 1000, "threshold", "in [0, 1000]", self.threshold)
        _need(self.verdict_rule in ("none", "veto"), "verdict_rule", "none or veto", self.verdict_rule)
        _need(0 <= self.tolerance <= 200, "tolerance", "in [0, 200]", self.tolerance)
        known = behaviour_names(include_hidden=True)
        seen: set[int] = set()
        for node, name in self.byzantine:
            _need(0 <= node < n, "byzantine", f"node indices in [0, {n})", node)
            _need(node not in seen, "byzantine", "each node at most once", node)
            _need(name in known, "byzantine", f"a behaviour in {sorted(known)}", name)
            seen.add(node)
        for name in self.byzantine_pick:
            _need(name in known, "byzantine_pick", f"behaviours in {sorted(known)}", name)
        _need(len(self.byzantine) + len(self.byzantine_pick) <= n, "byzantine_pick",
              "no more faulty nodes than peers", len(self.byzantine) + len(self.byzantine_pick))
        if self.epoch_length is not None or self.joiners or self.leaves:
            _need(self.adaptive, "epoch_length" if self.epoch_length is not None else
                  "joiners" if self.joiners else "leaves",
                  "baseline wbft with adaptive weights (members change on an adaptive chain only)",
                  (self.baseline, self.adaptive_weights))
        if self.epoch_length is not None:
            _need(isinstance(self.epoch_length, int) and 4 <= self.epoch_length <= 10_000, "epoch_length",
                  "an integer in [4, 10000]", self.epoch_length)
        _need(len(self.joiners) <= 64, "joiners", "at most 64 joiners", len(self.joiners))
        total = n + len(self.joiners)
        for j in self.joiners:
            _need(isinstance(j, Joiner), "joiners", "Joiner entries", j)
            _need((j.at_ms is None) != (j.at_height is None), "joiners", "exactly one of at_ms and at_height", j)
            _need(j.at_ms is None or j.at_ms >= 0, "joiners", "at_ms >= 0", j)
            _need(j.at_height is None or 1 <= j.at_height, "joiners", "at_height >= 1", j)
            _need(j.behaviour in known, "joiners", f"a behaviour in {sorted(known)}", j.behaviour)
            _need(j.via is None or 0 <= j.via < n, "joiners", f"via: a genesis node index in [0, {n})", j)
        left: set[int] = set()
        for x in self.leaves:
            _need(isinstance(x, Leaver), "leaves", "Leaver entries", x)
            _need(0 <= x.node < n and x.node not in left, "leaves", f"distinct genesis node indices in [0, {n})",
                  x.node)
            _need((x.at_ms is None) != (x.at_height is None), "leaves", "exactly one of at_ms and at_height", x)
            _need(x.at_ms is None or x.at_ms >= 0, "leaves", "at_ms >= 0", x)
            _need(x.at_height is None or 1 <= x.at_height, "leaves", "at_height >= 1", x)
            left.add(x.node)
        for p in self.partitions:
            _need(0 <= p.start_ms < p.heal_ms, "partitions", "0 <= start_ms < heal_ms", p)
            members = [i for g in p.groups for i in g]
            _need(all(0 <= i < total for i in members) and len(set(members)) == len(members), "partitions",
                  "groups of distinct node indices", p.groups)
            _need(p.queue_limit >= 0, "partitions", "queue_limit >= 0", p.queue_limit)
        for c in self.crashes:
            _need(0 <= c.node < total, "crashes", f"node indices in [0, {total})", c.node)
            _need(c.at_ms >= 0 and (c.restart_ms is None or c.restart_ms > c.at_ms), "crashes",
                  "0 <= at_ms < restart_ms", c)
        for node, factor in self.slowness:
            _need(0 <= node < total and factor > 0, "slowness", "(node index, factor > 0)", (node, factor))
        if self.crash_at_ms is not None:
            _need(self.crash_at_ms >= 0, "crash_at_ms", ">= 0", self.crash_at_ms)
        if self.height_budget_ms is not None:
            _need(self.height_budget_ms >= 1, "height_budget_ms", ">= 1", self.height_budget_ms)
        _need(self.max_events >= 1, "max_events", ">= 1", self.max_events)
        return self

    # --- JSON -------------------------------------------------------------
    def to_json(self) -> str:
        """Compact JSON holding only the fields that differ from the defaults."""
        default = SimConfig()
        data = {f.name: _plain(getattr(self, f.name)) for f in fields(self)
                if getattr(self, f.name) != getattr(default, f.name)}
        return json.dumps(data, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SimConfig:
        """Parse :meth:`to_json` output (unknown fields are an error)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SimConfigError(f"config is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise SimConfigError("config JSON must be an object")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise SimConfigError(f"unknown config fields: {', '.join(unknown)}")
        try:
            kw = cls._fields_from_json(data)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise SimConfigError(f"malformed config field: {exc!r}") from None
        return replace(cls(), **kw).validate()

    @staticmethod
    def _fields_from_json(data: dict[str, Any]) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        for key, value in data.items():
            if key == "partitions":
                kw[key] = tuple(Partition(p["start_ms"], p["heal_ms"], tuple(tuple(g) for g in p["groups"]),
                                          p.get("queue_limit", 1024)) for p in value)
            elif key == "crashes":
                kw[key] = tuple(Crash(c["node"], c["at_ms"], c.get("restart_ms")) for c in value)
            elif key == "joiners":
                kw[key] = tuple(Joiner(j.get("at_ms"), j.get("at_height"), j.get("behaviour", "none"), j.get("via"))
                                for j in value)
            elif key == "leaves":
                kw[key] = tuple(Leaver(x["node"], x.get("at_ms"), x.get("at_height")) for x in value)
            elif key in ("byzantine", "slowness", "extra"):
                kw[key] = tuple(tuple(x) for x in value)
            elif isinstance(value, list):
                kw[key] = tuple(value)
            else:
                kw[key] = value
        return kw


def _plain(value: Any) -> Any:
    if isinstance(value, (Partition, Crash, Joiner, Leaver)):
        return asdict(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _need(ok: bool, name: str, what: str, got: object) -> None:
    if not ok:
        raise SimConfigError(f"{name}: expected {what}, got {got!r}")
