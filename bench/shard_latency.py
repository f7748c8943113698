"""Per-token latency of a model split over shard workers, and the EdgeShard DP plan against baselines.

Run from the repository root::

    .venv/bin/python bench/shard_latency.py [--model smollm2] [--tokens 24] [--sessions 3] [--json out.json]

1. calibrate: per-layer, embedding and head decode times of the model in this
   process with 1 and 2 torch threads (forward hooks, median over tokens);
2. unsharded per-token latency (1 and 2 threads);
3. homogeneous workers (1 thread each, no added delay): even split over 2 and 3
   workers; the gap to pure compute gives the per-hop overhead (loopback TCP,
   encryption, msgpack, relay through the driver), used in every prediction;
4. heterogeneous devices, two scenarios: ``cpu`` (different thread counts, one
   device slowed by sleeping) and ``stretched`` (every device slowed mostly by
   sleeping, so three devices really overlap on two cores), each with per-worker
   reply delay / bandwidth (a sleep in the worker's send path). Each device is
   first profiled with the whole model on it (its busy time over the in-process
   calibration gives its speed); then for the DP latency plan, the DP throughput
   plan and the three baselines: predicted vs measured latency (one sequence)
   and throughput (``--sessions`` sequences at once), side by side;
5. a sharded peer end to end (``--engine-questions`` questions, ``--engine-only`` for just this):
   ``ShardedEngine.answer`` (prompt, prefill, greedy decoding until EOS/newline, over 2 and 3
   workers on loopback) against ``ModelEngine.answer`` (the unsharded peer), per answer; the
   answers must be identical.

Only decode tokens count in 1-4 (the first token, which includes the prefill, is left out).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import trio  # noqa: E402

from multillmn.identity import KeyPair  # noqa: E402
from peers.llm.cache import default_cache_dir, load_or_convert  # noqa: E402
from peers.llm.models import resolve_model  # noqa: E402
from peers.shard.driver import ShardDriver, WorkerAddress  # noqa: E402
from peers.shard.model import ShardRunner, load_full_model  # noqa: E402
from peers.shard.planner import (  # noqa: E402
    Device,
    Link,
    ModelProfile,
    Network,
    Plan,
    Problem,
    Shard,
    baselines,
    evaluate,
    even_split,
    plan,
)
from peers.shard.profiles import KNOWN_SHAPES, profile_from_shape  # noqa: E402
from peers.shard.worker import WorkerProcess, spawn_worker, wait_ready  # noqa: E402

PROMPTS = {
    "llama": [504, 3575, 282, 4649, 314, 7042, 30, 378, 3575, 282, 7158, 314],
    "gemma3_text": [2, 818, 5279, 529, 7001, 563, 9079, 236761, 669, 5279, 529, 11702, 563],
}
DRIVER_KEY = KeyPair.from_seed(b"\x42" * 32)
MB = 2**20
REPEATS = 2


@dataclass(frozen=True)
class Calibration:
    threads: int
    layer_ms: tuple[float, ...]
    embed_ms: float
    head_ms: float
    step_ms: float  # one whole decode step in one runner

    @property
    def shard_ms(self) -> float:
        """Fixed cost of a shard step: masks, rotary tables, Python (step minus its parts)."""
        return max(0.0, self.step_ms - sum(self.layer_ms) - self.embed_ms - self.head_ms)


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    threads: int
    slowdown: float
    delay_ms: float
    bandwidth_mbps: float
    memory_share: float  # memory budget as a fraction of the whole model (fp32 weights + KV cache)


SCENARIOS: dict[str, tuple[DeviceSpec, ...]] = {
    # real compute: thread counts and one device slowed by sleeping; three devices share 2 cores
    "cpu": (
        DeviceSpec("fast", threads=2, slowdown=1.0, delay_ms=2.0, bandwidth_mbps=1000.0, memory_share=0.58),
        DeviceSpec("mid", threads=1, slowdown=1.0, delay_ms=8.0, bandwidth_mbps=100.0, memory_share=0.5),
        DeviceSpec("slow", threads=1, slowdown=2.5, delay_ms=1.0, bandwidth_mbps=100.0, memory_share=1.33),
    ),
    # compute mostly emulated by sleeping, so that three devices really run side by side on 2 cores
    # (what pipeline throughput needs); same memory budgets and links
    "stretched": (
        DeviceSpec("fast", threads=1, slowdown=3.0, delay_ms=2.0, bandwidth_mbps=1000.0, memory_share=0.58),
        DeviceSpec("mid", threads=1, slowdown=4.0, delay_ms=8.0, bandwidth_mbps=100.0, memory_share=0.5),
        DeviceSpec("slow", threads=1, slowdown=8.0, delay_ms=1.0, bandwidth_mbps=100.0, memory_share=1.33),
    ),
}


# --- in-process measurements --------------------------------------------------------


def calibrate(model: Any, prompt: list[int], threads: int, tokens: int) -> Calibration:
    """Median decode time of every layer, the embedding and norm + head, via forward hooks."""
    torch.set_num_threads(threads)
    runner = ShardRunner.from_model(model, (0, model.config.num_hidden_layers))
    marks: dict[str, list[float]] = {}
    t_start: dict[str, float] = {}

    def pre(name: str) -> Any:
        return lambda *_: t_start.__setitem__(name, time.perf_counter())

    def post(name: str, start_name: str | None = None) -> Any:
        return lambda *_: marks.setdefault(name, []).append(time.perf_counter() - t_start[start_name or name])

    handles = []
    for i, layer in enumerate(runner.layers):
        handles += [layer.register_forward_pre_hook(pre(f"l{i}")), layer.register_forward_hook(post(f"l{i}"))]
    assert runner.embed is not None and runner.norm is not None and runner.lm_head is not None
    handles += [runner.embed.register_forward_pre_hook(pre("embed")), runner.embed.register_forward_hook(post("embed"))]
    handles += [runner.norm.register_forward_pre_hook(pre("head")), runner.lm_head.register_forward_hook(post("head"))]
    x = torch.tensor([prompt])
    logits = runner.forward(x, last_only=True)
    marks.clear()
    steps = []
    for _ in range(tokens):
        token = torch.tensor([[int(logits[0, -1].argmax())]])
        t0 = time.perf_counter()
        logits = runner.forward(token, last_only=True)
        steps.append(time.perf_counter() - t0)
    for h in handles:
        h.remove()
    med = {k: statistics.median(v) * 1000 for k, v in marks.items()}
    n = len(runner.layers)
    return Calibration(threads, tuple(med[f"l{i}"] for i in range(n)), med["embed"], med["head"],
                       statistics.median(steps) * 1000)


def unsharded_latency(model: Any, prompt: list[int], threads: int, tokens: int) -> float:
    """Median decode ms/token of the plain transformers model with its KV cache."""
    from transformers import DynamicCache

    torch.set_num_threads(threads)
    times = []
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        out = model(torch.tensor([prompt]), cache=cache, use_cache=True).logits
        for _ in range(tokens):
            t0 = time.perf_counter()
            out = model(out[:, -1:].argmax(-1), cache=cache, use_cache=True).logits
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


# --- workers ------------------------------------------------------------------------------


def start_workers(model_dir: Path, specs: list[DeviceSpec], tmp: Path, log: Any) -> dict[str, WorkerProcess]:
    procs = {}
    for i, spec in enumerate(specs):
        key = KeyPair.from_seed(bytes([0x50 + i]) * 32)
        key.save(tmp / f"{spec.name}.pem")
        procs[spec.name] = spawn_worker(
            model_dir, tmp / f"{spec.name}.pem", DRIVER_KEY.peer_id, threads=spec.threads, slowdown=spec.slowdown,
            send_delay_ms=spec.delay_ms, bandwidth_mbps=spec.bandwidth_mbps, stderr=log,
            env={"OMP_WAIT_POLICY": "PASSIVE"},  # separate devices: idle threads must not spin on shared cores
        )
    return {name: wait_ready(p, timeout=300) for name, p in procs.items()}


def make_problem(
    profile: ModelProfile, specs: list[DeviceSpec], calib: Calibration, scale: dict[str, float], hop_ms: float
) -> Problem:
    """Devices whose per-layer times are the calibrated shape times their measured scale."""
    devices = []
    for s in specs:
        k = scale.get(s.name, 1.0)
        devices.append(Device(
            s.name, int(s.memory_share * profile.total_bytes()),
            layer_ms=tuple(ms * k for ms in calib.layer_ms), embed_ms=calib.embed_ms * k, head_ms=calib.head_ms * k,
            shard_ms=calib.shard_ms * k,
        ))
    up = {
        s.name: Link(hop_ms + s.delay_ms, s.bandwidth_mbps * 1e6 / 8 if s.bandwidth_mbps > 0 else math.inf)
        for s in specs
    }
    down = {s.name: Link(hop_ms) for s in specs}
    return Problem(profile, tuple(devices), Network.star(up, down))


@dataclass
class Measured:
    latency_ms: float  # median decode ms/token, one sequence
    compute_ms: float  # of which the workers were busy (sum over shards of the median)
    throughput_tps: float  # decode tokens/s with several sequences at once


async def measure(driver: ShardDriver, the_plan: Plan, prompt: list[int], tokens: int, sessions: int) -> Measured:
    """Latency: median decode ms/token of one sequence. Throughput (``sessions`` > 0): tokens/s of that
    many sequences at once, counted while all of them decode (after the last first token, before the
    first sequence ends)."""
    await driver.adopt(the_plan)
    await driver.generate(prompt, 2)  # warm up
    runs = []
    for _ in range(REPEATS):  # other jobs on this shared machine come and go: keep the quietest run
        driver.stats.compute_ms.clear()
        _, times = await driver.timed_generate(prompt, tokens)
        busy = sum(statistics.median(list(v)[1:]) for v in driver.stats.compute_ms.values())
        runs.append((statistics.median(times[1:]), busy))
    latency, compute = min(runs)
    if sessions < 1:
        return Measured(latency, compute, float("nan"))
    stamps: list[list[float]] = [[] for _ in range(sessions)]

    async def one(i: int) -> None:
        await driver.generate(prompt, tokens, on_token=lambda *_: stamps[i].append(time.perf_counter()))

    async with trio.open_nursery() as nursery:
        for i in range(sessions):
            nursery.start_soon(one, i)
    t_a = max(st[0] for st in stamps)
    t_b = min(st[-1] for st in stamps)
    count = sum(1 for st in stamps for t in st if t_a < t <= t_b)
    return Measured(latency, compute, count / (t_b - t_a) if t_b > t_a else float("nan"))


def _addresses(workers: dict[str, WorkerProcess]) -> list[WorkerAddress]:
    return [WorkerAddress(n, w.host, w.port, w.peer_id) for n, w in workers.items()]


async def homogeneous(
    profile: ModelProfile, calib: Calibration, workers: dict[str, WorkerProcess], specs: list[DeviceSpec],
    prompt: list[int], tokens: int,
) -> list[tuple[int, Plan, Measured]]:
    rows = []
    for k in (2, 3):
        prob = make_problem(profile, specs[:k], calib, {}, hop_ms=0.0)
        even = even_split(prob)
        assert even is not None
        sub = {s.name: workers[s.name] for s in specs[:k]}
        async with ShardDriver.open(DRIVER_KEY, prob, _addresses(sub), request_timeout=60) as driver:
            rows.append((k, even, await measure(driver, even, prompt, tokens, 0)))
    return rows


async def heterogeneous(
    profile: ModelProfile, calib: Calibration, workers: dict[str, WorkerProcess], specs: list[DeviceSpec],
    prompt: list[int], tokens: int, sessions: int, hop_ms: float,
) -> tuple[Problem, dict[str, Plan], dict[str, Measured], dict[str, float]]:
    n = profile.n_layers
    base = calib.step_ms
    scale: dict[str, float] = {}
    prob = make_problem(profile, specs, calib, scale, hop_ms)
    async with ShardDriver.open(DRIVER_KEY, prob, _addresses(workers), request_timeout=60) as driver:
        # profile each device as EdgeShard does: the whole model on it (memory budgets ignored here)
        for s in specs:
            m = await measure(driver, evaluate(prob, (Shard(s.name, 0, n),)), prompt, tokens, 0)
            scale[s.name] = m.compute_ms / base
            print(f"  profiled {s.name:5s}: {m.compute_ms:.1f} ms/token busy = {scale[s.name]:.2f} x calibration "
                  f"(latency {m.latency_ms:.1f} ms)", flush=True)
        prob = make_problem(profile, specs, calib, scale, hop_ms)
        plans: dict[str, Plan] = {"dp-latency": plan(prob, "latency"), "dp-throughput": plan(prob, "throughput")}
        for name, b in baselines(prob, "latency").items():
            if b is not None:
                plans[name] = b
            else:
                print(f"  baseline {name}: does not fit")
        results = {}
        for label, p in plans.items():
            results[label] = await measure(driver, p, prompt, tokens, sessions)
            print(f"  measured {label:13s} {p}: {results[label].latency_ms:.1f} ms/token", flush=True)
    return prob, plans, results, scale


# --- a sharded peer, end to end -------------------------------------------------------------


def uniform_budget_mb(profile: ModelProfile, k: int) -> int:
    """The smallest memory (MiB, +2%) that, given to each of ``k`` devices, lets the model fit on them."""
    from peers.shard.planner import NoFeasiblePlan

    def fits(mb: int) -> bool:
        devices = tuple(Device(f"e{i}", mb * MB) for i in range(k))
        try:
            plan(Problem(profile, devices, Network.star({d.name: Link(0.0) for d in devices})))
            return True
        except NoFeasiblePlan:
            return False

    lo, hi = 1, int(profile.total_bytes() / MB) + 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return int(hi * 1.02) + 1


def engine_latency(model_name: str, model_dir: Path, profile: ModelProfile, questions: list[str], tmp: Path,
                   log: Any, max_new_tokens: int = 48) -> dict[str, Any]:
    """Seconds per answer of ShardedEngine over 2 and 3 workers vs ModelEngine; the answers must agree."""
    from peers.embedder import Embedder
    from peers.engine import ModelEngine
    from peers.llm import Generator
    from peers.shard.devices import DeviceEntry, render_device_file
    from peers.shard.engine import ShardedEngine

    def run(engine: Any) -> tuple[list[str], list[float]]:
        engine.answer(questions[0], 4)  # warm up
        texts, secs = [], []
        for q in questions:
            reply = engine.answer(q, max_new_tokens)
            texts.append(reply.text)
            secs.append(reply.seconds)
        return texts, secs

    embedder = Embedder.load()
    reference, base = run(ModelEngine(Generator.load(resolve_model(model_name), default_cache_dir(), threads=1),
                                      embedder, model_name))
    out: dict[str, Any] = {"questions": questions, "unsharded_s": base, "sharded": {}}
    print(f"  {'unsharded (ModelEngine, 1 thread)':40s} {statistics.median(base):6.2f} s/answer (median)")
    total_mb = profile.total_bytes() / MB
    for k in (2, 3):
        budget = uniform_budget_mb(profile, k)  # so small that fewer devices cannot hold the model
        specs = [DeviceSpec(f"e{i}", 1, 1.0, 0.0, 0.0, budget / total_mb) for i in range(k)]
        workers = start_workers(model_dir, specs, tmp, log)
        try:
            entries = [DeviceEntry(s.name, memory_mb=budget, link_ms=0.0, threads=1,
                                   address=f"{w.host}:{w.port}", peer_id=w.peer_id)
                       for s, w in zip(specs, workers.values())]
            path = tmp / f"devices-{k}.toml"
            path.write_text(render_device_file(entries))
            with ShardedEngine.load(model_name, default_cache_dir(), path, DRIVER_KEY, embedder=embedder,
                                    warm_up=False) as engine:
                texts, secs = run(engine)
                shards = str(engine.plan)
        finally:
            for w in workers.values():
                w.stop()
        same = texts == reference
        ratio = statistics.median(secs) / statistics.median(base)
        print(f"  {f'sharded over {k} workers {shards}':40s} {statistics.median(secs):6.2f} s/answer "
              f"({ratio:.2f}x), identical answers: {same}")
        out["sharded"][k] = {"plan": shards, "seconds": secs, "ratio": ratio, "identical": same}
    return out


# --- main -------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", choices=sorted(KNOWN_SHAPES))
    ap.add_argument("--tokens", type=int, default=24, help="tokens generated per measurement")
    ap.add_argument("--sessions", type=int, default=3, help="concurrent sequences for the throughput runs")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--homogeneous-only", action="store_true", help="skip the heterogeneous-devices part")
    ap.add_argument("--engine-questions", type=int, default=8, help="questions for the sharded-peer part (0: skip)")
    ap.add_argument("--engine-only", action="store_true", help="only the sharded peer vs unsharded peer part")
    args = ap.parse_args()
    if args.engine_only:
        return engine_main(args)

    model_dir = load_or_convert(resolve_model(args.model), default_cache_dir())
    model = load_full_model(model_dir)
    prompt = PROMPTS[model.config.model_type]
    n = int(model.config.num_hidden_layers)
    out: dict[str, Any] = {"model": args.model, "tokens": args.tokens, "sessions": args.sessions}

    print(f"== {args.model}: in-process calibration (decode, median of {args.tokens} tokens)")
    calib = {t: calibrate(model, prompt, t, args.tokens) for t in (1, 2)}
    for t, c in calib.items():
        print(f"  {t} thread(s): layers {sum(c.layer_ms):.2f} ms (mean {sum(c.layer_ms) / n:.3f}/layer), "
              f"embed {c.embed_ms:.3f}, head {c.head_ms:.2f}, fixed per step {c.shard_ms:.2f}, "
              f"whole step {c.step_ms:.2f} ms")
    unsharded = {t: unsharded_latency(model, prompt, t, args.tokens) for t in (1, 2)}
    print(f"  unsharded transformers: {unsharded[1]:.2f} ms/token (1 thread), {unsharded[2]:.2f} (2 threads)")
    out["calibration"] = {t: c.__dict__ for t, c in calib.items()}
    out["unsharded_ms"] = unsharded
    del model
    torch.set_num_threads(1)

    profile = profile_from_shape(KNOWN_SHAPES[args.model], context_tokens=2048)
    with tempfile.TemporaryDirectory() as tmp_name, open(Path(tmp_name) / "workers.log", "w") as log:
        tmp = Path(tmp_name)
        homo = [DeviceSpec(f"w{i}", 1, 1.0, 0.0, 0.0, 10.0) for i in range(3)]
        workers = start_workers(model_dir, homo, tmp, log)
        try:
            homo_rows = trio.run(homogeneous, profile, calib[1], workers, homo, prompt, args.tokens)
        finally:
            for w in workers.values():
                w.stop()
        # a k-worker chain crosses 2k links (driver → w1 → driver → … → driver)
        hop = statistics.mean((m.latency_ms - m.compute_ms) / (2 * k) for k, _, m in homo_rows)
        print("\n== sharded vs unsharded (1 thread per worker, loopback, no added delay)")
        print(f"  {'setup':44s} {'ms/token':>9s} {'vs unsharded':>12s} {'busy':>7s} {'comm':>7s}")
        print(f"  {'unsharded transformers, 1 thread':44s} {unsharded[1]:9.2f} {'1.00x':>12s}")
        for k, p, m in homo_rows:
            print(f"  {f'{k} workers {p}':44s} {m.latency_ms:9.2f} {m.latency_ms / unsharded[1]:11.2f}x "
                  f"{m.compute_ms:7.2f} {m.latency_ms - m.compute_ms:7.2f}")
        print(f"  => overhead per link crossing (TCP + ChaCha20 + msgpack + relay): {hop:.2f} ms")
        out["homogeneous"] = [{"workers": k, "plan": str(p), "latency_ms": m.latency_ms, "busy_ms": m.compute_ms}
                              for k, p, m in homo_rows]
        out["hop_ms"] = hop

        if args.homogeneous_only:
            if args.json:
                args.json.write_text(json.dumps(out, indent=2, default=str))
            return 0
        out["heterogeneous"] = {}
        for scenario, devs in SCENARIOS.items():
            specs = list(devs)
            print(f"\n== heterogeneous devices, scenario {scenario!r}")
            for s in specs:
                print(f"  {s.name:5s} threads={s.threads} slowdown={s.slowdown:g} reply delay={s.delay_ms:g} ms "
                      f"bandwidth={s.bandwidth_mbps:g} Mbit/s memory={s.memory_share:.0%} of the model "
                      f"({s.memory_share * profile.total_bytes() / MB:.0f} MiB)")
            workers = start_workers(model_dir, specs, tmp, log)
            try:
                prob, plans, got, scale = trio.run(
                    heterogeneous, profile, calib[1], workers, specs, prompt, args.tokens, args.sessions, hop
                )
            finally:
                for w in workers.values():
                    w.stop()
            print(f"\n  {'plan':14s} {'shards':40s} {'ms/token pred':>13s} {'meas':>6s} {'(busy)':>7s} "
                  f"{'tok/s pred':>10s} {'meas':>6s}   [tok/s with {args.sessions} sequences at once]")
            rows = []
            for label, p in plans.items():
                m = got[label]
                pred_tps = p.tokens_per_s(args.sessions)
                print(f"  {label:14s} {str(p):40s} {p.latency_ms:13.1f} {m.latency_ms:6.1f} {m.compute_ms:7.1f} "
                      f"{pred_tps:10.1f} {m.throughput_tps:6.1f}")
                rows.append({"plan": label, "shards": str(p), "latency_pred_ms": p.latency_ms,
                             "latency_meas_ms": m.latency_ms, "busy_meas_ms": m.compute_ms, "tps_pred": pred_tps,
                             "tps_meas": m.throughput_tps, "bottleneck_pred_ms": p.bottleneck_ms})
            out["heterogeneous"][scenario] = {"device_scale": scale, "plans": rows}
    if args.engine_questions > 0:
        engine_main(args, out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))
    return 0


def engine_main(args: argparse.Namespace, out: dict[str, Any] | None = None) -> int:
    """Part 5 alone (or appended to ``out``)."""
    from multillmn.questions import load_questions

    model_dir = load_or_convert(resolve_model(args.model), default_cache_dir())
    profile = profile_from_shape(KNOWN_SHAPES[args.model], context_tokens=2048)
    questions = [q.question for q in load_questions()[: max(1, args.engine_questions)]]
    print(f"\n== a sharded peer end to end: {args.model}, {len(questions)} questions, answer latency")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp_name, open(Path(tmp_name) / "workers.log", "w") as log:
        result = engine_latency(args.model, model_dir, profile, questions, Path(tmp_name), log)
    if out is not None:
        out["engine"] = result
    elif args.json:
        args.json.write_text(json.dumps({"model": args.model, "engine": result}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
