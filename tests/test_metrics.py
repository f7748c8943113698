"""``GET /metrics`` (issue 16): scraped over ASGI from in-process nodes and parsed with prometheus_client's parser."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from multillmn.config import PeerConfig
from multillmn.identity import KeyPair
from peers.api import PeerHandle, create_app
from peers.engine import ScriptedEngine
from peers.metrics import CONTENT_TYPE
from peers.node import Node
from peers.shard.devices import DeviceEntry, render_device_file
from peers.shard.planner import Plan, Shard
from peers.transport import Transport
from tests.conftest import make_net
from tests.test_ledger_integration import _ledger, cluster
from tests.test_node import Q

Families = dict[str, list[Sample]]


async def _scrape(handle: PeerHandle) -> Families:
    app = create_app(handle)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://peer") as client:
        r = await client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == CONTENT_TYPE
    families: Families = {}
    for family in text_string_to_metric_families(r.text):
        assert family.name not in families, f"family {family.name} exposed twice"
        families[family.name] = family.samples
    return families


def _value(families: Families, sample: str, **labels: str) -> float:
    found = [s.value for samples in families.values() for s in samples
             if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (sample, labels, found)
    return found[0]


def _labels(families: Families, sample: str) -> list[dict[str, str]]:
    return [s.labels for samples in families.values() for s in samples if s.name == sample]


async def test_metrics_of_a_peer_after_a_few_queries(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        node, other = c.nodes[0], c.nodes[1]
        handle = PeerHandle(node.key.peer_id, "peer0", "m0", phase="ready", node=node)
        before = await _scrape(handle)
        assert _value(before, "multillmn_height") == 1
        assert _value(before, "multillmn_decision_latency_seconds_count") == 0
        assert _value(before, "multillmn_rounds_per_height_count") == 0
        assert "multillmn_last_decided_round" not in before  # nothing decided yet

        # a frame that does not decode, from a validator: counted under its reason
        with trio.fail_after(10):
            while node.key.peer_id not in other.transport.connected_peers():
                await trio.sleep(0.02)
        other.transport.send_nowait(node.key.peer_id, b"\x00 not msgpack")
        with trio.fail_after(30):
            await node.submit(Q)
            async with trio.open_nursery() as nursery:  # two at once: they may share a height
                for _ in range(2):
                    nursery.start_soon(node.submit, Q)
            while _ledger(node).highest_height() < node.height - 1 or node.rejects.snapshot().get("malformed", 0) < 1:
                await trio.sleep(0.05)
        m = await _scrape(handle)
        status = node.status()

    assert _value(m, "multillmn_peer_ready") == 1
    assert _value(m, "multillmn_peer_phase_info", phase="ready") == 1
    info = _labels(m, "multillmn_peer_info")
    assert info == [{"peer_id": node.key.peer_id, "moniker": "peer0", "model": "m0", "chain_id": status["chain_id"]}]
    heights = status["height"] - 1  # 2 or 3: the last two queries may have been decided together
    assert 2 <= heights <= 3 and _value(m, "multillmn_height") == heights + 1
    assert _value(m, "multillmn_decided_heights") == heights
    # one observation of rounds per decided height, one of latency per decided query (this peer was the
    # entry of all three, so every latency is known)
    assert _value(m, "multillmn_rounds_per_height_count") == heights
    assert _value(m, "multillmn_rounds_per_height_sum") >= heights
    assert _value(m, "multillmn_rounds_per_height_bucket", le="+Inf") == heights
    assert _value(m, "multillmn_last_decided_round") >= 0
    assert _value(m, "multillmn_decision_latency_seconds_count") == 3
    assert 0 < _value(m, "multillmn_decision_latency_seconds_sum") < 30
    assert _value(m, "multillmn_generation_latency_seconds_count") == 3  # its own model answered each question
    assert _value(m, "multillmn_pending_queries") == 0

    weights = {s["moniker"]: _value(m, "multillmn_validator_weight", moniker=s["moniker"])
               for s in _labels(m, "multillmn_validator_weight")}
    assert sorted(weights) == sorted(v["moniker"] for v in status["validators"]) and len(weights) == 4
    assert sum(weights.values()) == _value(m, "multillmn_validator_set_weight") == status["total_weight"]
    assert _labels(m, "multillmn_weights_digest_info") == [{"digest": status["weights_digest"]}]
    assert _value(m, "multillmn_member") == 1

    assert _value(m, "multillmn_connected_peers") == 3 and _value(m, "multillmn_known_peers") == 3
    assert _value(m, "multillmn_p2p_disconnected") == 0
    assert _value(m, "multillmn_p2p_messages_total", direction="sent") > 0
    assert _value(m, "multillmn_p2p_messages_total", direction="received") > 0
    assert _value(m, "multillmn_rejected_messages_total", reason="malformed") >= 1

    assert _value(m, "multillmn_ledger_entries") >= 3
    assert _value(m, "multillmn_ledger_ordering_lag_heights") == 0
    assert _value(m, "multillmn_ledger_events") >= _value(m, "multillmn_ledger_unordered_events") >= 0
    assert _value(m, "multillmn_ledger_evidence") == 0 and _value(m, "multillmn_evidence_pending") == 0
    assert not any(name.startswith("multillmn_shard") for name in m)  # not a sharded peer


async def test_a_peer_still_loading_exports_its_phase_only() -> None:
    m = await _scrape(PeerHandle("a" * 40, "peer0", "smollm2", phase="loading-model"))
    assert _value(m, "multillmn_peer_ready") == 0
    assert _value(m, "multillmn_peer_phase_info", phase="loading-model") == 1
    assert "multillmn_height" not in m


@dataclass
class _Stats:  # the fields of peers.shard.driver.DriverStats the collector reads (that module needs torch)
    replans: int = 1
    replayed_tokens: int = 12
    failures: dict[str, str] = field(default_factory=lambda: {"phone": "closed the connection"})
    compute_ms: dict[str, deque[float]] = field(default_factory=dict)


class _ShardedScripted(ScriptedEngine):
    """A scripted engine that shows shard statistics as a ShardedEngine does."""

    def __init__(self) -> None:
        super().__init__({Q: "Paris"})
        self.stats = _Stats(compute_ms={"laptop": deque([10.0, 20.0, 30.0, 40.0]), "phone": deque([5.0])})
        self.plan: Plan | None = Plan((Shard("laptop", 0, 30),), latency_ms=40.0, bottleneck_ms=40.0)


async def test_a_sharded_peer_exports_each_shard_worker(tmp_path: Path) -> None:
    devices = [DeviceEntry(name=n, memory_mb=400, link_ms=1, threads=1, address=f"127.0.0.1:{port}",
                           peer_id=KeyPair.generate().peer_id) for n, port in (("laptop", 7001), ("phone", 7002),
                                                                               ("tablet", 7003))]
    (tmp_path / "devices.toml").write_text(render_device_file(devices))
    net = make_net([1])
    key = net.keys[0]
    cfg = replace(PeerConfig.for_tests(), moniker="edge", shard_devices_file=str(tmp_path / "devices.toml"))
    node = Node(cfg, key, net.genesis, _ShardedScripted(), Transport(key, ("127.0.0.1", 0), {}))
    m = await _scrape(PeerHandle(key.peer_id, "edge", "m", phase="ready", node=node))
    assert {s["worker"]: _value(m, "multillmn_shard_worker_up", worker=s["worker"])
            for s in _labels(m, "multillmn_shard_worker_up")} == {"laptop": 1, "phone": 0, "tablet": 1}
    assert _value(m, "multillmn_shard_worker_layers", worker="laptop") == 30
    assert _value(m, "multillmn_shard_worker_layers", worker="tablet") == 0  # standby: not in the plan
    assert abs(_value(m, "multillmn_shard_worker_token_compute_seconds", worker="laptop", quantile="0.5") - 0.025) \
        < 1e-9
    assert _value(m, "multillmn_shard_worker_token_compute_seconds", worker="phone", quantile="0.9") == 0.005
    assert _labels(m, "multillmn_shard_worker_token_compute_seconds").count({"worker": "tablet", "quantile": "0.5"}) \
        == 0  # no steps yet
    assert _value(m, "multillmn_shard_replans_total") == 1 and _value(m, "multillmn_shard_replayed_tokens_total") == 12
    assert _value(m, "multillmn_height") == 1 and "multillmn_ledger_entries" not in m  # no ledger here


async def test_two_nodes_in_one_process_keep_separate_registries() -> None:
    net = make_net([1, 1])
    nodes = [Node(replace(PeerConfig.for_tests(), moniker=f"p{i}"), k, net.genesis, ScriptedEngine({}),
                  Transport(k, ("127.0.0.1", 0), {})) for i, k in enumerate(net.keys)]
    nodes[0].metrics.generated(0.5)
    first, second = [await _scrape(PeerHandle(n.key.peer_id, n.cfg.moniker, "m", phase="ready", node=n))
                     for n in nodes]
    assert _value(first, "multillmn_generation_latency_seconds_count") == 1
    assert _value(second, "multillmn_generation_latency_seconds_count") == 0


@pytest.mark.models  # two real SmolLM2 shard workers
def test_a_real_sharded_engine_exports_its_workers(tmp_path: Path) -> None:
    from peers.llm import resolve_model
    from peers.llm.cache import default_cache_dir, load_or_convert
    from peers.shard.engine import ShardedEngine
    from tests.shardworkers import shard_workers

    net = make_net([1], seed=91)
    key = net.keys[0]
    with shard_workers(load_or_convert(resolve_model("smollm2"), default_cache_dir()), tmp_path, key.peer_id,
                       seed=0x70) as workers:
        # SmolLM2 needs about 603 MiB: neither device holds it alone, so both serve layers
        devices = [DeviceEntry(name, memory_mb=400, link_ms=0.5, threads=1, address=f"{w.host}:{w.port}",
                               peer_id=w.peer_id) for name, w in workers.items()]
        (tmp_path / "devices.toml").write_text(render_device_file(devices))
        with ShardedEngine.load("smollm2", default_cache_dir(), tmp_path / "devices.toml", key,
                                request_timeout_s=20, startup_timeout_s=60) as engine:  # warms up: a few steps
            cfg = replace(PeerConfig.for_tests(), shard_devices_file=str(tmp_path / "devices.toml"))
            node = Node(cfg, key, net.genesis, engine, Transport(key, ("127.0.0.1", 0), {}))
            m = trio.run(_scrape, PeerHandle(key.peer_id, "edge", "smollm2", phase="ready", node=node))
    assert {w: _value(m, "multillmn_shard_worker_up", worker=w) for w in "ab"} == {"a": 1, "b": 1}
    layers = [_value(m, "multillmn_shard_worker_layers", worker=w) for w in "ab"]
    assert all(n > 0 for n in layers) and sum(layers) == 30  # SmolLM2-135M: 30 layers, split over both
    for w in "ab":
        p50 = _value(m, "multillmn_shard_worker_token_compute_seconds", worker=w, quantile="0.5")
        assert 0 < p50 <= _value(m, "multillmn_shard_worker_token_compute_seconds", worker=w, quantile="0.9") < 30
    assert _value(m, "multillmn_shard_replans_total") == 0
