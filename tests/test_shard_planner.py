"""EdgeShard planner: the DP equals brute force; baselines; cost model; validation."""

from __future__ import annotations

import math
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peers.shard.planner import (
    DRIVER,
    OBJECTIVES,
    Device,
    Link,
    ModelProfile,
    Network,
    NoFeasiblePlan,
    Objective,
    Problem,
    Shard,
    baselines,
    brute_force,
    compute_ms,
    even_split,
    evaluate,
    fits,
    memory_split,
    plan,
    shard_memory,
    single_device,
)
from peers.shard.profiles import KNOWN_SHAPES, ModelShape, profile_from_shape


def _model(n: int, ms: float = 1.0, mem: int = 1, act: int = 10, **kw: object) -> ModelProfile:
    return ModelProfile("m", (ms,) * n, (mem,) * n, (act,) * (n + 1), **kw)  # type: ignore[arg-type]


# --- hand-checked cases ------------------------------------------------------------


def test_cost_model_by_hand() -> None:
    model = ModelProfile("m", (1.0, 2.0, 3.0), (10, 20, 30), (1, 100, 200, 2),
                         embed_ms=0.5, head_ms=4.0, embed_bytes=5, head_bytes=7)
    fast = Device("fast", 1000, speed=2.0)
    slow = Device("slow", 1000)
    net = Network({(DRIVER, "fast"): Link(1.0, 1000.0), ("fast", "slow"): Link(2.0, 100_000.0),
                   ("slow", DRIVER): Link(3.0)}, default=Link(50.0))
    prob = Problem(model, (fast, slow), net)
    assert compute_ms(prob, fast, 0, 1) == 0.5 / 2 + 1.0 / 2
    assert compute_ms(prob, slow, 1, 3) == 5.0 + 4.0
    assert shard_memory(model, 0, 1) == 15 and shard_memory(model, 1, 3) == 57 and shard_memory(model, 0, 3) == 72
    p = evaluate(prob, (Shard("fast", 0, 1), Shard("slow", 1, 3)))
    # driver→fast: 1 ms + 1 B at 1000 B/s = 2 ms; compute 0.75; fast→slow: 2 ms + 100 B at 1e5 B/s = 3 ms; 9; 3
    assert p.latency_ms == pytest.approx(2.0 + 0.75 + 3.0 + 9.0 + 3.0)
    assert p.bottleneck_ms == pytest.approx(9.0)
    assert p.throughput_tps == pytest.approx(1000 / 9)
    assert p.tokens_per_s(1) == pytest.approx(1000 / p.latency_ms)
    assert str(p) == "fast[0:1] → slow[1:3]"


def test_fixed_shard_cost_is_paid_once_per_shard() -> None:
    model = _model(4, ms=1.0, act=0, shard_ms=5.0)
    devs = (Device("a", 2), Device("b", 2), Device("c", 9, shard_ms=0.5))
    prob = Problem(model, devs, Network(default=Link()))
    assert compute_ms(prob, devs[0], 0, 2) == 2.0 + 5.0 and compute_ms(prob, devs[2], 0, 2) == 2.5
    assert evaluate(prob, (Shard("a", 0, 2), Shard("b", 2, 4))).latency_ms == 14.0
    assert plan(prob).shards == (Shard("c", 0, 4),)


def test_tied_head_counts_once_on_a_single_device() -> None:
    model = _model(2, embed_bytes=100, head_bytes=101, tied_head=True)
    assert shard_memory(model, 0, 2) == 2 + 100
    assert shard_memory(model, 0, 1) == 1 + 100 and shard_memory(model, 1, 2) == 1 + 101
    assert model.total_bytes() == 102


def test_latency_plan_prefers_the_fast_device_and_avoids_the_slow_link() -> None:
    model = _model(4, ms=10.0, mem=1)
    devs = (Device("a", 10, speed=1.0), Device("b", 10, speed=4.0))
    net = Network(default=Link(1.0))
    p = plan(Problem(model, devs, net), "latency")
    assert p.shards == (Shard("b", 0, 4),)
    assert p.latency_ms == pytest.approx(1 + 10 + 1)


def test_memory_forces_a_split_and_throughput_balances_stages() -> None:
    model = _model(4, ms=10.0, mem=1)
    devs = (Device("a", 3), Device("b", 3))
    prob = Problem(model, devs, Network(default=Link(0.0)))
    lat = plan(prob, "latency")
    assert len(lat.shards) == 2 and lat.latency_ms == pytest.approx(40.0)
    thr = plan(prob, "throughput")
    assert thr.ranges() == ((0, 2), (2, 4)) and thr.bottleneck_ms == pytest.approx(20.0)


def test_infeasible_raises_a_clear_error() -> None:
    prob = Problem(_model(3, mem=10), (Device("a", 15), Device("b", 9)), Network(default=Link()))
    with pytest.raises(NoFeasiblePlan, match=r"fits on no split over the devices \[a, b\]"):
        plan(prob)
    with pytest.raises(NoFeasiblePlan):
        brute_force(prob, "throughput")
    with pytest.raises(NoFeasiblePlan, match=r"\[none\]"):
        plan(Problem(_model(1), (), Network()))


def test_baselines() -> None:
    model = _model(6, ms=6.0, mem=1)
    devs = (Device("a", 6, speed=1.0), Device("b", 2, speed=2.0), Device("c", 4, speed=3.0))
    prob = Problem(model, devs, Network(default=Link(1.0)))
    assert single_device(prob) is not None and single_device(prob).shards == (Shard("a", 0, 6),)  # type: ignore[union-attr]
    assert even_split(prob).ranges() == ((0, 2), (2, 4), (4, 6))  # type: ignore[union-attr]
    # memory 6:2:4 of 12 → cumulative 3, 4, 6 layers
    mem = memory_split(prob)
    assert mem is not None and mem.ranges() == ((0, 3), (3, 4), (4, 6)) and mem.devices == ("a", "b", "c")
    tight = Problem(model, (Device("a", 5), Device("b", 1), Device("c", 1)), Network(default=Link()))
    assert single_device(tight) is None and even_split(tight) is None
    assert set(baselines(prob)) == {"single", "even", "memory"}
    # more devices than layers: even split uses the first n devices
    two = Problem(_model(2), tuple(Device(x, 5) for x in "abc"), Network(default=Link()))
    assert even_split(two).devices == ("a", "b")  # type: ignore[union-attr]
    # every DP plan is at least as good as every feasible baseline
    for objective in OBJECTIVES:
        best = plan(prob, objective)
        for b in baselines(prob, objective).values():
            if b is not None:
                assert best.latency_ms <= b.latency_ms + 1e-9 if objective == "latency" else \
                    best.bottleneck_ms <= b.bottleneck_ms + 1e-9


def test_star_network_relays_through_the_driver() -> None:
    net = Network.star({"a": Link(2.0, 1000.0), "b": Link(3.0, 1000.0)}, {"a": Link(0.5), "b": Link(1.0, 2000.0)})
    assert net.link("a", DRIVER) == Link(2.0, 1000.0)
    assert net.link(DRIVER, "b") == Link(1.0, 2000.0)
    ab = net.link("a", "b")  # up a, then down b
    assert ab.latency_ms == 3.0 and ab.transfer_ms(1000) == pytest.approx(3.0 + 1000.0 + 500.0)
    assert net.link("a", "a").transfer_ms(10**9) == 0.0
    with pytest.raises(KeyError):
        Network.star({"a": Link()}, relay=False).link("a", "x")


def test_validation() -> None:
    with pytest.raises(ValueError, match="boundary_bytes"):
        ModelProfile("m", (1.0,), (1,), (1,))
    with pytest.raises(ValueError, match="unique"):
        Problem(_model(1), (Device("a", 1), Device("a", 2)), Network())
    with pytest.raises(ValueError, match="speed"):
        Device("a", 1, speed=0)
    with pytest.raises(ValueError, match="bandwidth"):
        Link(1.0, 0.0)
    prob = Problem(_model(3), (Device("a", 9), Device("b", 9)), Network(default=Link()))
    with pytest.raises(ValueError, match="tile"):
        evaluate(prob, (Shard("a", 0, 1), Shard("b", 2, 3)))
    with pytest.raises(ValueError, match="twice"):
        evaluate(prob, (Shard("a", 0, 1), Shard("a", 1, 3)))
    with pytest.raises(ValueError, match="objective"):
        plan(prob, "speed")  # type: ignore[arg-type]


def test_profile_from_shape_matches_the_real_models() -> None:
    s = KNOWN_SHAPES["smollm2"]
    params = s.n_layers * s.layer_params() + s.embed_params() + s.hidden
    assert 134_000_000 < params < 135_000_000  # SmolLM2-135M
    g = KNOWN_SHAPES["gemma3"]
    g_params = g.n_layers * g.layer_params() + g.embed_params() + g.hidden
    assert 267_000_000 < g_params < 269_000_000  # Gemma-3-270M
    cfg = {"model_type": "gemma3_text", "num_hidden_layers": 18, "hidden_size": 640, "intermediate_size": 2048,
           "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256, "vocab_size": 262144,
           "tie_word_embeddings": True}
    assert ModelShape.from_hf_config("gemma3", cfg) == g
    with pytest.raises(ValueError, match="hidden_size"):
        ModelShape.from_hf_config("x", {**cfg, "hidden_size": "640"})
    prof = profile_from_shape(s, context_tokens=0)
    assert prof.n_layers == 30 and prof.total_bytes() == params * 4 - s.hidden * 4
    assert prof.boundary_bytes[1] == 576 * 4 + 96


def test_planning_is_fast_for_six_devices_and_thirty_layers() -> None:
    prof = profile_from_shape(KNOWN_SHAPES["smollm2"])
    devs = tuple(Device(f"d{i}", 150 * 2**20, speed=1.0 + i / 2) for i in range(6))
    net = Network.star({d.name: Link(1.0 + i, 12.5e6) for i, d in enumerate(devs)})
    t0 = time.perf_counter()
    for objective in OBJECTIVES:
        p = plan(Problem(prof, devs, net), objective)
        assert fits(Problem(prof, devs, net), p.shards)
    assert time.perf_counter() - t0 < 20


# --- property: DP == brute force ---------------------------------------------------------

_ms = st.integers(0, 9).map(float)
_bytes = st.integers(0, 6)


@st.composite
def problems(draw: st.DrawFn) -> Problem:
    n = draw(st.integers(1, 8))
    m = draw(st.integers(0, 4))
    model = ModelProfile(
        "m",
        tuple(draw(st.lists(_ms, min_size=n, max_size=n))),
        tuple(draw(st.lists(_bytes, min_size=n, max_size=n))),
        tuple(draw(st.lists(_bytes, min_size=n + 1, max_size=n + 1))),
        embed_ms=draw(_ms), head_ms=draw(_ms),
        embed_bytes=draw(_bytes), head_bytes=draw(_bytes), tied_head=draw(st.booleans()),
        shard_ms=draw(st.sampled_from([0.0, 0.0, 1.0, 3.0])),
    )
    devices = []
    for i in range(m):
        explicit = draw(st.booleans())
        devices.append(Device(
            f"d{i}",
            draw(st.integers(0, 30)),
            speed=draw(st.sampled_from([0.5, 1.0, 2.0, 3.0])),
            layer_ms=tuple(draw(st.lists(_ms, min_size=n, max_size=n))) if explicit else None,
            head_ms=draw(_ms) if explicit else None,
            shard_ms=draw(_ms) if explicit else None,
        ))
    nodes = [DRIVER] + [d.name for d in devices]
    links = {
        (a, b): Link(draw(_ms), draw(st.sampled_from([math.inf, 1000.0, 500.0, 250.0])))
        for a in nodes for b in nodes if a != b
    }
    return Problem(model, tuple(devices), Network(links))


@pytest.mark.parametrize("objective", ["latency", "throughput"])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prob=problems())
def test_dp_equals_brute_force(objective: Objective, prob: Problem) -> None:
    try:
        expected = brute_force(prob, objective)
    except NoFeasiblePlan:
        with pytest.raises(NoFeasiblePlan):
            plan(prob, objective)
        return
    got = plan(prob, objective)
    assert fits(prob, got.shards)
    assert len(set(got.devices)) == len(got.devices)
    assert got == evaluate(prob, got.shards, label=got.label)
    if objective == "latency":
        assert math.isclose(got.latency_ms, expected.latency_ms, rel_tol=1e-9, abs_tol=1e-9)
    else:
        assert math.isclose(got.bottleneck_ms, expected.bottleneck_ms, rel_tol=1e-9, abs_tol=1e-9)
        assert math.isclose(got.latency_ms, expected.latency_ms, rel_tol=1e-9, abs_tol=1e-9)
    for b in baselines(prob, objective).values():
        if b is not None:
            assert b.latency_ms >= got.latency_ms - 1e-9 if objective == "latency" else \
                b.bottleneck_ms >= got.bottleneck_ms - 1e-9
