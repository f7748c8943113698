"""``GET /metrics``: a peer's state in the Prometheus text format (``prometheus_client``).

Each node has its own :class:`NodeMetrics` with its own ``CollectorRegistry``
(never the process-wide default: tests run many nodes in one process). Most
families are read from the node at scrape time by :class:`NodeCollector`
(``Node.status()``, the transport's counters, the ledger, a sharded engine's
driver); only what needs events is fed by the node as they happen, as
histograms: the rounds each height took, decision latency (per query: it
reached this peer -> its height decided) and generation latency (this
peer's model, per answer).

Names follow the Prometheus conventions: ``multillmn_`` prefix, base units in
the name (``_seconds``), ``_total`` for counters only, ``_info`` for the
constant-1 families whose labels carry text. Labels are low-cardinality: a
rejection reason (a fixed set of categories, capped at :data:`MAX_REASONS`),
a validator (the committee is bounded, ``transport.MAX_PEERS``), a shard
worker (a peer's device file).

Families (``multillmn_`` omitted): ``peer_info``, ``peer_ready``, ``height``,
``decided_heights``, ``last_decided_round``, ``rounds_per_height``,
``decision_latency_seconds``, ``generation_latency_seconds``,
``pending_queries``, ``validator_weight``, ``validator_set_weight``,
``weights_digest_info``, ``member``, ``connected_peers``, ``known_peers``,
``p2p_disconnected``, ``p2p_messages_total``, ``p2p_dropped_messages_total``,
``rejected_messages_total``, ``ledger_entries``, ``ledger_events``,
``ledger_unordered_events``, ``ledger_ordering_lag_heights``,
``ledger_pending_transactions``, ``ledger_evidence``, ``evidence_pending``;
for a sharded peer, per worker ``shard_worker_up``, ``shard_worker_layers``,
``shard_worker_token_compute_seconds`` (quantiles of its recent steps), and
``shard_replans_total``, ``shard_replayed_tokens_total``.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from peers.node import Node
    from peers.shard.driver import DriverStats
    from peers.shard.planner import Plan

__all__ = ["CONTENT_TYPE", "MAX_REASONS", "NodeCollector", "NodeMetrics", "PhaseSource", "render"]

log = logging.getLogger("multillmn.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text format's media type."""

MAX_REASONS = 64
"""Rejection reasons exported as labels; any beyond (there are about 20 categories) are summed as "other"."""

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
"""Seconds: a scripted engine answers in milliseconds, a CPU model in seconds to minutes."""

ROUND_BUCKETS = (1, 2, 3, 4, 6, 10)
"""Rounds a height took (1: decided in round 0)."""

QUANTILES = (0.5, 0.9)


class NodeMetrics:
    """One node's registry: the event-fed histograms, and (once :meth:`watch` is called) its collector."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.rounds = Histogram("multillmn_rounds_per_height", "Rounds each decided height took here (1: round 0)",
                                buckets=ROUND_BUCKETS, registry=self.registry)
        self.decision_latency = Histogram(
            "multillmn_decision_latency_seconds", "From a query reaching this peer to its height being decided here",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.generation_latency = Histogram(
            "multillmn_generation_latency_seconds", "This peer's model answering one question (a batch's wall time)",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.last_round: int | None = None
        self._collector: NodeCollector | None = None

    def watch(self, node: Node) -> None:
        """Collect ``node``'s state at every scrape (idempotent)."""
        if self._collector is None:
            self._collector = NodeCollector(node, self)
            self.registry.register(self._collector)

    def height_decided(self, round_: int) -> None:
        """A height was decided here (or caught up) in ``round_``."""
        self.last_round = round_
        self.rounds.observe(round_ + 1)

    def query_decided(self, latency_s: float | None) -> None:
        """One query of a decided height, ``latency_s`` after it reached this peer (None: unknown, a catch-up)."""
        if latency_s is not None:
            self.decision_latency.observe(max(0.0, latency_s))

    def generated(self, seconds: float) -> None:
        """This peer's model produced one answer in ``seconds``."""
        self.generation_latency.observe(max(0.0, seconds))


class _Sharded(Protocol):
    """What the collector reads of a :class:`peers.shard.engine.ShardedEngine` (not imported: it needs torch)."""

    @property
    def plan(self) -> Plan | None: ...

    @property
    def stats(self) -> DriverStats: ...


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


class NodeCollector(Collector):
    """Reads a node's state when scraped; every family is computed from one ``Node.status()``."""

    def __init__(self, node: Node, events: NodeMetrics) -> None:
        self.node = node
        self.events = events
        self._workers = self._device_names()

    def _device_names(self) -> tuple[str, ...]:
        """The shard workers of the peer's device file (none if it is not sharded or the file is gone)."""
        cfg = self.node.cfg
        if not cfg.shard_devices_file:
            return ()
        from peers.shard.devices import DeviceFileError, load_device_file

        try:
            return tuple(e.name for e in load_device_file(cfg.path(cfg.shard_devices_file)))
        except DeviceFileError:
            return ()

    def collect(self) -> Iterable[Metric]:
        node = self.node
        s = node.status()
        yield InfoMetricFamily("multillmn_peer", "This peer's identity", value={
            "peer_id": str(s["peer_id"]), "moniker": str(s["moniker"]), "model": str(s["model"]),
            "chain_id": str(s["chain_id"])})
        yield _gauge("multillmn_height", "The height this peer is deciding (decided heights + 1)", s["height"])
        yield _gauge("multillmn_decided_heights", "Heights this run of the peer decided (catch-up included)",
                     _int(s.get("decided_heights")))
        if self.events.last_round is not None:
            yield _gauge("multillmn_last_decided_round", "The round in which the last height was decided here",
                         self.events.last_round)
        yield _gauge("multillmn_pending_queries", "Queries in this peer's pool, not decided yet", s["pending_queries"])
        yield from self._weights(s)
        yield from self._transport(s)
        yield from self._rejections(s.get("rejected_messages") or {})
        yield from self._ledger()
        yield _gauge("multillmn_evidence_pending", "Evidence this peer holds and its next values will carry",
                     _int((s.get("driver") or {}).get("evidence")))
        yield from self._shards()

    def _weights(self, s: dict[str, Any]) -> Iterator[Metric]:
        w = GaugeMetricFamily("multillmn_validator_weight", "Each validator's weight in the set in force here",
                              labels=["peer_id", "moniker"])
        for v in s.get("validators") or []:
            w.add_metric([str(v["peer_id"]), str(v.get("moniker", ""))], v["weight"])
        yield w
        yield _gauge("multillmn_validator_set_weight", "Total weight of the validator set in force here",
                     s["total_weight"])
        yield InfoMetricFamily("multillmn_weights_digest", "Digest of the weight state (equal on every honest peer)",
                               value={"digest": str(s.get("weights_digest", ""))})
        yield _gauge("multillmn_member", "1 if this peer is in the validator set in force", int(bool(s.get("member"))))

    def _transport(self, s: dict[str, Any]) -> Iterator[Metric]:
        t = s.get("transport") or {}
        peers: dict[str, dict[str, Any]] = t.get("peers") or {}
        yield _gauge("multillmn_connected_peers", "Peers whose outbound link is up", len(s.get("connected_peers") or []))
        yield _gauge("multillmn_known_peers", "Peers the transport keeps links to", len(peers))
        yield _gauge("multillmn_p2p_disconnected", "1 while the peer's links are cut (testnet disconnect)",
                     int(bool(t.get("disconnected"))))
        m = CounterMetricFamily("multillmn_p2p_messages", "Messages over the peer links", labels=["direction"])
        m.add_metric(["sent"], sum(_int(p.get("sent")) for p in peers.values()))
        m.add_metric(["received"], sum(_int(p.get("received")) for p in peers.values()))
        yield m
        d = CounterMetricFamily("multillmn_p2p_dropped_messages", "Messages dropped on the peer links",
                                labels=["reason"])
        for reason, key in (("send-queue-full", "dropped"), ("inbound-queue-full", "inbound_dropped"),
                            ("link-shaper", "lost")):
            d.add_metric([reason], sum(_int(p.get(key)) for p in peers.values()))
        yield d

    def _rejections(self, counts: dict[str, int]) -> Iterator[Metric]:
        r = CounterMetricFamily("multillmn_rejected_messages", "Inputs refused before or by the driver, by reason",
                                labels=["reason"])
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        for reason, n in ranked[:MAX_REASONS]:
            r.add_metric([reason], n)
        if len(ranked) > MAX_REASONS:
            r.add_metric(["other"], sum(n for _, n in ranked[MAX_REASONS:]))
        yield r

    def _ledger(self) -> Iterator[Metric]:
        ledger = self.node.ledger
        if ledger is None:
            return
        st = ledger.statistics()
        events, ordered = _int(st.get("events")), _int(st.get("ordered_events"))
        yield _gauge("multillmn_ledger_entries", "Ordered entries in the ledger", _int(st.get("entries")))
        yield _gauge("multillmn_ledger_events", "Hashgraph events held (current segments)", events)
        yield _gauge("multillmn_ledger_unordered_events", "Events received but not yet in the consensus order",
                     max(0, events - ordered))
        yield _gauge("multillmn_ledger_ordering_lag_heights",
                     "Heights decided here whose certificate the ledger has not ordered yet",
                     max(0, self.node.height - 1 - ledger.highest_height()))
        yield _gauge("multillmn_ledger_pending_transactions", "This peer's transactions waiting for its next events",
                     _int(st.get("pending_transactions")))
        yield _gauge("multillmn_ledger_evidence", "Evidence entries in the ledger state", len(ledger.ledger.evidence))

    def _shards(self) -> Iterator[Metric]:
        engine = self.node.engine
        if not self.node.cfg.shard_devices_file or not hasattr(engine, "stats"):
            return
        sharded: _Sharded = engine  # type: ignore[assignment]  # a ShardedEngine (duck-typed: no torch import)
        try:
            stats, plan = sharded.stats, sharded.plan
            failures = dict(stats.failures)
            compute = {k: list(v) for k, v in dict(stats.compute_ms).items()}
        except (AssertionError, RuntimeError) as exc:  # the driver stopped, or changed while we copied
            log.debug("shard statistics unavailable", extra={"error": str(exc)})
            return
        layers = {s.device: s.stop - s.start for s in plan.shards} if plan is not None else {}
        names = sorted({*self._workers, *failures, *compute, *layers})
        up = GaugeMetricFamily("multillmn_shard_worker_up", "1 unless the shard driver marked the worker failed",
                               labels=["worker"])
        held = GaugeMetricFamily("multillmn_shard_worker_layers", "Layers the worker runs in the current plan",
                                 labels=["worker"])
        token = GaugeMetricFamily("multillmn_shard_worker_token_compute_seconds",
                                  "The worker's compute time per step (one token) over its recent steps",
                                  labels=["worker", "quantile"])
        for name in names:
            up.add_metric([name], 0 if name in failures else 1)
            held.add_metric([name], layers.get(name, 0))
            for q, v in _quantiles(compute.get(name, [])):
                token.add_metric([name, str(q)], v / 1000)
        yield up
        yield held
        yield token
        yield CounterMetricFamily("multillmn_shard_replans", "Re-plans after a worker failed", value=stats.replans)
        yield CounterMetricFamily("multillmn_shard_replayed_tokens", "Tokens replayed on a new plan",
                                  value=stats.replayed_tokens)


def _quantiles(values: Sequence[float]) -> list[tuple[float, float]]:
    if not values:
        return []
    if len(values) == 1:
        return [(q, values[0]) for q in QUANTILES]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return [(q, cuts[int(q * 100) - 1]) for q in QUANTILES]


class PhaseSource(Protocol):
    """What :func:`render` needs of the API's peer handle (``peers.api.PeerHandle``)."""

    phase: str

    @property
    def node(self) -> Node | None: ...


def render(peer: PhaseSource) -> bytes:
    """The text exposition of ``peer``: its readiness, then (once it runs) everything its node's registry holds."""
    head = CollectorRegistry(auto_describe=False)
    head.register(_PhaseCollector(peer.phase))
    node = peer.node
    if node is None:
        return generate_latest(head)
    node.metrics.watch(node)
    return generate_latest(head) + generate_latest(node.metrics.registry)


class _PhaseCollector(Collector):
    def __init__(self, phase: str) -> None:
        self.phase = phase

    def collect(self) -> Iterable[Metric]:
        yield _gauge("multillmn_peer_ready", "1 once the peer serves queries (phase ready)", int(self.phase == "ready"))
        yield InfoMetricFamily("multillmn_peer_phase", "The peer's start-up phase", value={"phase": self.phase})
