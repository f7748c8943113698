"""Throughput of a real 4-peer testnet under concurrent clients, batching on and off (issue 14).

Starts two testnets of 2 x SmolLM2 + 2 x Gemma-3 peers (``testnet.launcher.up``), one with the
shipped settings ("batched": ``[model] max_batch`` and ``[consensus] queries_per_height`` at their
defaults) and one with batching off ("off": ``max_batch = 1``, ``queries_per_height = 1``,
today's behaviour before issue 14). Both run at once (an idle testnet costs next to nothing) and
their cells alternate, so both see the shared machine's changing load alike. The overrides are written into each peer's config by this
script, run as the peer command's wrapper (``--peer KEY=VALUE ... -- CMD``); a key the config
does not have (yet) is left out and reported. For each mode, 1, 4, 16 and 32 clients each ask the
shipped questions (``multillmn.questions``) in a closed loop, round-robin over the peers, for a
fixed time; queries started before the end are waited for (up to ``--drain-s``). Reported per
cell: queries/s (completed / time until the last one), client-side p50 / p99 latency, 429
rejections (retried after ``Retry-After``), decided heights and queries per height, and per peer
the batch sizes its model ran and its generated tokens/s against the memory-bandwidth limit. Where
a query's time went (``timing``): the replies' timings (arrival to answer quorum, then to the
decision) and per peer its questions' wait before their batch, its batch time and busy share (from
its log); and the peers' CPU seconds per completed query against the machine's cores (``/proc``).

Batch sizes and tokens come from the peers' JSON logs ("answered" records carry ``batch`` and the
answer text; one batch is a run of records with the same ``batch`` and ``gen_ms``); tokens are the
answer re-tokenised plus its stop token (an estimate, within a token or two). If ``/v1/status``
has a ``generation`` object (``batches``, ``batch_sizes``), it is recorded as well.

Memory bandwidth: a large numpy copy (as ``bench/generation_batch.py``). A decode step of one
peer reads every weight once (``weight_bytes_per_step``: 0.54 GB SmolLM2, 1.07 GB Gemma-3, fp32);
``bw_ratio`` = bytes per step x steps/s / bandwidth (the fraction of the machine's bandwidth the
peer's decode steps stream), ``token_ratio`` = tokens/s over the one-stream bound bandwidth /
bytes per step (above 1 only by batching).

    nice -n 5 .venv/bin/python bench/throughput.py            # about 10 minutes
    .venv/bin/python bench/throughput.py --quick --out /tmp/t.json   # smoke test (2 clients, 5 s)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES: dict[str, dict[str, int | str]] = {
    "batched": {},  # the shipped defaults (batches, many queries per height, the prompt prefix's KV cache)
    "off": {"model.max_batch": 1, "consensus.queries_per_height": 1, "env.MULTILLMN_PREFIX_CACHE": 0},
    "nocache": {"env.MULTILLMN_PREFIX_CACHE": 0},  # batched as before the prefix cache (not run by default)
    "batches": {"model.batching": "batches"},  # batches without continuous batching (not run by default)
}
MODELS = ("smollm2", "gemma3")


# --- the peer wrapper: apply config overrides, then exec the real peer command ------------------

def peer_wrapper(argv: list[str]) -> NoReturn:
    """``--peer SECTION.KEY=VALUE ... -- CMD ... --config PATH``: set the keys in PATH, then exec CMD.

    A key is set where the rendered config has its line (``key = value``); a key it lacks is skipped.
    ``env.NAME=VALUE`` sets an environment variable of the peer process instead.
    """
    split = argv.index("--")
    overrides, command = argv[:split], argv[split + 1:]
    path = Path(command[command.index("--config") + 1])
    lines = path.read_text().splitlines()
    for item in overrides:
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        if section == "env":
            os.environ[name] = value
            continue
        literal = value if value.lstrip("-").isdigit() else json.dumps(value)  # a number, else a TOML string
        lines = [f"{name} = {literal}" if line.split("=", 1)[0].strip() == name else line for line in lines]
    path.write_text("\n".join(lines) + "\n")
    os.execvp(command[0], command)


def supported_overrides(overrides: dict[str, int | str]) -> tuple[dict[str, int | str], list[str]]:
    """The overrides whose key ``multillmn.config.PeerConfig`` has, and the names of those it lacks."""
    from multillmn.config import PeerConfig

    cfg = PeerConfig()
    ok = {k: v for k, v in overrides.items() if k.startswith("env.") or hasattr(cfg, k.split(".", 1)[1])}
    return ok, sorted(set(overrides) - set(ok))


# --- measurements -----------------------------------------------------------------------------

def memory_bandwidth() -> float:
    """Bytes per second of a large numpy copy: ``bench/generation_batch.py``'s measurement."""
    sys.path.insert(0, str(ROOT / "bench"))
    from generation_batch import memory_bandwidth as measure

    return float(measure())


@dataclass
class ModelInfo:
    name: str
    weight_bytes_per_step: int
    tokenizer: Any


def model_info(name: str) -> ModelInfo:
    """Weight bytes a decode step reads (parameters counted on the meta device) and the tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from peers.llm import default_cache_dir, resolve_model
    from peers.llm.cache import load_or_convert, offline

    offline()
    directory = load_or_convert(resolve_model(name), default_cache_dir())
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(directory), dtype=torch.float32)
    sys.path.insert(0, str(ROOT / "bench"))
    from generation_batch import weight_bytes_per_step

    return ModelInfo(name, weight_bytes_per_step(model), AutoTokenizer.from_pretrained(directory))


@dataclass
class Loop:
    """What the clients of one cell saw."""

    latencies: list[float] = field(default_factory=list)
    answers: dict[str, str] = field(default_factory=dict)
    peer_answers: dict[str, dict[str, str]] = field(default_factory=dict)  # question -> moniker -> text
    timings: list[dict[str, int]] = field(default_factory=list)  # per query: the reply's timings (ms)
    errors: list[str] = field(default_factory=list)
    rejected: int = 0
    unfinished: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def closed_loop(urls: list[str], questions: list[str], clients: int, seconds: float, drain_s: float,
                timeout_s: float) -> tuple[Loop, float]:
    """``clients`` threads each ask, wait, ask again until ``seconds`` have passed; returns what they saw
    and the elapsed time until the last query started in time was answered (or ``drain_s`` more)."""
    import httpx

    out = Loop()
    start = time.monotonic()
    deadline = start + seconds
    hard = deadline + drain_s

    def client(i: int) -> None:
        k = 0
        with httpx.Client(timeout=timeout_s) as http:
            while time.monotonic() < deadline:
                q = questions[(i * 37 + k) % len(questions)]
                url = urls[(i + k) % len(urls)]
                k += 1
                t0 = time.monotonic()
                while True:
                    left = hard - time.monotonic()
                    if left <= 0:
                        with out.lock:
                            out.unfinished += 1
                        return
                    try:
                        r = http.post(url + "/v1/query", json={"question": q}, timeout=min(timeout_s, left))
                    except httpx.TimeoutException:
                        with out.lock:
                            out.unfinished += 1
                        return
                    except httpx.HTTPError as exc:
                        with out.lock:
                            out.errors.append(f"{type(exc).__name__}: {exc}")
                        break
                    if r.status_code == 429:  # admission: wait as told, then ask again
                        with out.lock:
                            out.rejected += 1
                        time.sleep(min(2.0, float(r.headers.get("retry-after", "1"))))
                        continue
                    if r.status_code != 200:
                        with out.lock:
                            out.errors.append(f"{r.status_code}: {r.text[:200]}")
                        break
                    reply = r.json()
                    with out.lock:
                        out.latencies.append(time.monotonic() - t0)
                        out.timings.append(query_timings(reply))
                        out.answers.setdefault(q, str(reply.get("answer", "")))
                        for a in reply.get("answers", []):
                            out.peer_answers.setdefault(q, {}).setdefault(str(a.get("moniker")), str(a.get("text")))
                    break

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.0, hard - time.monotonic()) + timeout_s)
    return out, time.monotonic() - start


def query_timings(reply: dict[str, Any]) -> dict[str, int]:
    """Where one query's time went at the peer that answered the client (ms): ``generation`` from its
    arrival to a quorum of answers, ``consensus`` from then to the decision (``protocol`` from the
    height's first proposal), ``total``; and the peers' own answers' ``gen_ms`` (their batch's wall time)."""
    t = reply.get("timings") or {}
    out = {k: int(t[f"{k}_ms"]) for k in ("total", "generation", "consensus", "protocol")
           if isinstance(t.get(f"{k}_ms"), int)}
    gens = sorted(int(a["generation_ms"]) for a in reply.get("answers", []) if isinstance(a.get("generation_ms"), int))
    if gens:
        out["answer_gen_min"], out["answer_gen_max"] = gens[0], gens[-1]
    return out


def timing_summary(timings: list[dict[str, int]], records: dict[str, list[dict[str, Any]]],
                   elapsed: float) -> dict[str, Any]:
    """Medians of the queries' timings (ms) and, per peer from its "answered" log records, the median wait
    of a question before its batch started (``waited_ms``, if logged), the median batch wall time and the
    share of the cell the peer's model was busy."""
    def median(values: list[int]) -> int | None:
        return int(statistics.median(values)) if values else None

    keys = sorted({k for t in timings for k in t})
    out: dict[str, Any] = {f"{k}_ms_p50": median([t[k] for t in timings if k in t]) for k in keys}
    peers = {}
    for name, recs in records.items():
        answered = [r for r in recs if r.get("msg") == "answered"]
        # the union of the answers' [started, started + gen_ms] intervals (continuous batching overlaps them)
        spans = sorted((int(r["started_ms"]), int(r["started_ms"]) + int(r.get("gen_ms") or 0)) for r in answered
                       if isinstance(r.get("started_ms"), int))
        busy_ms, end = 0, None
        for a, b in spans:
            if end is None or a > end:
                busy_ms, end = busy_ms + b - a, b
            elif b > end:
                busy_ms, end = busy_ms + b - end, b
        busy = busy_ms / 1000
        peers[name] = {"waited_ms_p50": median([int(r["waited_ms"]) for r in answered if isinstance(r.get("waited_ms"), int)]),
                       "batch_ms_p50": median([int(r["gen_ms"]) for r in answered if isinstance(r.get("gen_ms"), int)]),
                       "busy_share": round(busy / elapsed, 3) if elapsed else None}
    out["peers"] = peers
    return out


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds a process has used so far (``/proc``), or None."""
    try:
        fields_ = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields_[11]) + int(fields_[12])) / os.sysconf("SC_CLK_TCK")


def log_records(path: Path, offset: int) -> list[dict[str, Any]]:
    """JSON log records written to ``path`` from ``offset`` on."""
    out = []
    with path.open("rb") as f:
        f.seek(offset)
        for line in f.read().decode("utf-8", "replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out


def rows_joined(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    """A peer's ``generation.rows_joined`` counts over a cell (continuous batching; empty without it)."""
    a = (after.get("generation") or {}).get("rows_joined") or {}
    b = (before.get("generation") or {}).get("rows_joined") or {}
    return {k: n - int(b.get(k, 0)) for k, n in sorted(a.items(), key=lambda kv: int(kv[0])) if n - int(b.get(k, 0))}


def batches_of(records: list[dict[str, Any]], tokenizer: Any, max_new_tokens: int,
               continuous: bool = False) -> list[list[int]]:
    """Estimated generated tokens of each answer, grouped by batch (runs of "answered" records with one
    ``batch`` and ``gen_ms``). With continuous batching each answer has its own ``gen_ms`` and
    ``batch`` is the rows running as it joined, so every answer is its own group (the cell's
    ``rows_joined`` shows the batch sizes instead)."""
    out: list[list[int]] = []
    key: tuple[Any, Any] | None = None
    left = 0
    for rec in records:
        if rec.get("msg") != "answered":
            continue
        size, gen_ms = rec.get("batch", 1), rec.get("gen_ms")
        tokens = min(max_new_tokens, len(tokenizer(str(rec.get("text", "")), add_special_tokens=False)["input_ids"]) + 1)
        if key == (size, gen_ms) and left > 0 and not continuous:
            out[-1].append(tokens)
        else:
            out.append([tokens])
            key, left = (size, gen_ms), int(size) if isinstance(size, int) else 1
        left -= 1
    return out


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# --- one mode: a testnet, then every client count ---------------------------------------------

@dataclass
class Net:
    """One mode's running testnet."""

    mode: str
    overrides: dict[str, int | str]
    directory: Path
    peers: list[Any]
    startup_s: float
    settings: dict[str, dict[str, str | None]]
    cells: list[dict[str, Any]] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [p.api_url for p in self.peers]


def start_net(mode: str, overrides: dict[str, int | str], max_new_tokens: int, say: Any) -> Net:
    """A 4-peer testnet whose peers run with ``overrides`` (through this script as their wrapper)."""
    from testnet.launcher import DEFAULT_PEER_COMMAND, load_state, up
    from testnet.manifest import Manifest

    directory = Path(tempfile.mkdtemp(prefix=f"multillmn-throughput-{mode}-"))
    wrapper = [sys.executable, str(Path(__file__).resolve()), "--peer",
               *(f"{k}={v}" for k, v in overrides.items()), "--", *DEFAULT_PEER_COMMAND]
    t0 = time.monotonic()
    up(Manifest.from_args(4, list(MODELS), max_new_tokens=max_new_tokens), directory, peer_command=wrapper,
       progress=lambda line: say(f"  [{mode}] {line}"))
    peers = load_state(directory).peers
    settings = {}
    for p in peers:
        lines = Path(p.config).read_text().splitlines()
        settings[p.name] = {k: next((line.split("=", 1)[1].strip() for line in lines
                                     if line.split("=", 1)[0].strip() == k.split(".", 1)[1]), None)
                            for k in (*MODES["off"], "model.batching") if not k.startswith("env.")}
    net = Net(mode, overrides, directory, peers, round(time.monotonic() - t0, 1), settings)
    say(f"[{mode}] testnet up in {net.startup_s:.0f} s; peer settings {settings[peers[0].name]}")
    return net


def run_cell(net: Net, clients: int, seconds: float, drain_s: float, questions: list[str],
             infos: dict[str, ModelInfo], bandwidth: float, max_new_tokens: int, say: Any) -> dict[str, Any]:
    """``clients`` closed-loop clients on ``net`` for ``seconds``; what they saw and what the peers did."""
    from multillmn.client import fetch_status

    peers, urls = net.peers, net.urls
    offsets = {p.name: Path(p.log).stat().st_size for p in peers}
    statuses0 = [fetch_status(u) for u in urls]
    heights0 = [s.get("decided_heights", 0) for s in statuses0]
    load = os.getloadavg()[0]
    cpu0 = {p.name: cpu_seconds(p.pid) for p in peers}
    loop, elapsed = closed_loop(urls, questions, clients, seconds, drain_s, timeout_s=300)
    cpu = {p.name: (c1 - c0) if (c0 := cpu0[p.name]) is not None and (c1 := cpu_seconds(p.pid)) is not None else None
           for p in peers}
    statuses = [fetch_status(u) for u in urls]
    heights = max(int(s.get("decided_heights", 0) or 0) for s in statuses) - max(int(h or 0) for h in heights0)
    per_peer = []
    records = {p.name: log_records(Path(p.log), offsets[p.name]) for p in peers}
    for p, st, st0 in zip(peers, statuses, statuses0):
        info = infos[p.model]
        joined = rows_joined(st0, st)
        groups = batches_of(records[p.name], info.tokenizer, max_new_tokens, continuous=bool(joined))
        tokens = sum(sum(g) for g in groups)
        steps = sum(max(g) for g in groups)
        limit = bandwidth / info.weight_bytes_per_step
        per_peer.append({
            "peer": p.name, "model": p.model,
            "batches": len(groups), "answers": sum(len(g) for g in groups),
            "tokens": tokens, "row_steps": sum(len(g) * max(g) for g in groups),
            "batch_sizes": dict(sorted(Counter(len(g) for g in groups).items())),
            "max_batch_seen": max((int(k) for k in joined), default=0) if joined else max((len(g) for g in groups), default=0),
            "tokens_per_s": round(tokens / elapsed, 2), "steps_per_s": round(steps / elapsed, 2),
            "bandwidth_limit_tokens_per_s": round(limit, 1),
            "bw_ratio": round(info.weight_bytes_per_step * steps / elapsed / bandwidth, 3),
            "token_ratio": round(tokens / elapsed / limit, 3),
            "status_generation": st.get("generation"),
            # continuous batching: rows running when a question joined, this cell's questions (else empty)
            "rows_joined": joined,
            "cpu_s": None if cpu[p.name] is None else round(cpu[p.name] or 0.0, 1),
        })
    done = len(loop.latencies)
    timing = timing_summary(loop.timings, records, elapsed)
    cell: dict[str, Any] = {
        "mode": net.mode, "clients": clients, "seconds": round(elapsed, 1), "load_average_at_start": load,
        "completed": done, "queries_per_s": round(done / elapsed, 3),
        "p50_s": None if not done else round(statistics.median(loop.latencies), 2),
        "p99_s": None if not done else round(percentile(loop.latencies, 0.99) or 0, 2),
        "max_s": None if not done else round(max(loop.latencies), 2),
        "rejected_429": loop.rejected, "errors": len(loop.errors), "error_examples": loop.errors[:3],
        "unfinished": loop.unfinished, "decided_heights": heights,
        "queries_per_height": round(done / heights, 2) if heights else None,
        "timing": timing,
        # the compute a query cost: the peers' CPU seconds over the cell per completed query, against the
        # core-seconds the machine had (cores x elapsed)
        "peer_cpu_s_per_query": round(sum(c or 0.0 for c in cpu.values()) / done, 2) if done else None,
        "peer_cpu_share_of_machine": round(sum(c or 0.0 for c in cpu.values()) / ((os.cpu_count() or 1) * elapsed), 3),
        "peers": per_peer, "answers": loop.answers, "peer_answers": loop.peer_answers,
    }
    net.cells.append(cell)
    sizes = " ".join(f"{x['peer']}:{x['max_batch_seen']}" for x in per_peer)
    say(f"[{net.mode}] {clients:>2} clients: {cell['queries_per_s']:.3f} q/s, p50 {cell['p50_s']} s, "
        f"p99 {cell['p99_s']} s, {done} done, {loop.unfinished} unfinished, {loop.rejected} x 429, "
        f"{len(loop.errors)} errors, q/height {cell['queries_per_height']}, max batch {sizes}, load {load:.1f}")
    t = timing
    say(f"[{net.mode}] {clients:>2} clients: peers' CPU {cell['peer_cpu_s_per_query']} s per query, "
        f"{cell['peer_cpu_share_of_machine']} of the machine's cores")
    say(f"[{net.mode}] {clients:>2} clients: p50 ms generation {t.get('generation_ms_p50')} consensus "
        f"{t.get('consensus_ms_p50')} protocol {t.get('protocol_ms_p50')} total {t.get('total_ms_p50')}; per peer "
        + "; ".join(f"{k} wait {v['waited_ms_p50']} batch {v['batch_ms_p50']} busy {v['busy_share']}"
                    for k, v in t["peers"].items()))
    return cell


def step_costs(batches: tuple[int, ...] = (1, 4, 8, 16), steps: int = 12, threads: int = 1) -> dict[str, Any]:
    """What continuous batching could gain (ADR 0019): the time of one decode step and of a prefill
    at each batch size, per model, with one torch thread as a testnet peer runs; and the prefill
    over the shared prompt prefix's KV cache (addendum 2): copying it to the rows and running only
    each prompt's own suffix.

    Continuous batching keeps a batch's slots full; static batching keeps finished rows until
    the longest ends. Its gain is bounded by the decode time spent on finished rows, which
    :func:`slot_use` reads from the throughput run's batches; whether a row is nearly free
    (memory-bound) or costs its share (compute-bound) is what these figures show.
    """
    import torch
    from transformers import DynamicCache

    from multillmn.questions import load_questions
    from peers.llm import Generator, default_cache_dir, resolve_model

    questions = [q.question for q in load_questions()][::5]
    out: dict[str, Any] = {"threads": threads, "steps": steps, "models": {}}
    for name in MODELS:
        gen = Generator.load(resolve_model(name), default_cache_dir(), threads=threads)
        rows = []
        for b in batches:
            prompts = [gen._prompt_ids(q) for q in questions[:b]]
            width = max(len(p) for p in prompts)
            ids = torch.tensor([[gen._pad_id] * (width - len(p)) + p for p in prompts])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
            pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
            with torch.inference_mode():
                cache = DynamicCache(config=gen.model.config)
                t0 = time.perf_counter()
                logits = gen.model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache,
                                   use_cache=True, logits_to_keep=1).logits
                prefill = time.perf_counter() - t0
                nxt = logits[:, -1].argmax(-1, keepdim=True)
                t0 = time.perf_counter()
                for _ in range(steps):
                    mask = torch.cat([mask, mask.new_ones((b, 1))], dim=1)
                    pos = pos[:, -1:] + 1
                    logits = gen.model(input_ids=nxt, attention_mask=mask, position_ids=pos, cache=cache,
                                       use_cache=True).logits
                    nxt = logits[:, -1].argmax(-1, keepdim=True)
                step = (time.perf_counter() - t0) / steps
                # Over the shared prefix's KV cache (computed once, outside the timing): the copy for
                # b rows and the prefill of each prompt's own suffix, padded between prefix and suffix.
                pc = gen._prefix
                head = len(pc.ids)
                pc.copy_for(1)
                suffixes = [pc.split(p) or [] for p in prompts]
                sw = max(len(x) for x in suffixes)
                sids = torch.tensor([[gen._pad_id] * (sw - len(x)) + x for x in suffixes])
                smask = torch.tensor([[1] * head + [0] * (sw - len(x)) + [1] * len(x) for x in suffixes])
                spos = (smask.cumsum(-1) - 1)[:, head:]
                t0 = time.perf_counter()
                scache = pc.copy_for(b)
                gen.model(input_ids=sids, attention_mask=smask, position_ids=spos, cache=scache, use_cache=True,
                          logits_to_keep=1)
                cached = time.perf_counter() - t0
            rows.append({"batch": b, "prompt_tokens": width, "prefill_s": round(prefill, 3),
                         "step_s": round(step, 4), "step_s_per_row": round(step / b, 4),
                         "prefix_tokens": head, "suffix_tokens": sw, "prefill_cached_s": round(cached, 3),
                         "prefix_compute_s": pc.statistics(True).compute_s})
            print(f"{name} batch {b:>2}: prefill {prefill:.2f} s ({width} columns), over the cached prefix "
                  f"{cached:.3f} s ({head} + {sw} columns), decode step {step * 1000:.0f} ms "
                  f"({step * 1000 / b:.0f} ms per row)", flush=True)
        out["models"][name] = rows
        del gen
    return out


def slot_use(result: dict[str, Any]) -> dict[str, Any]:
    """Per mode and client count: of the row-steps the batches ran (rows x longest row), the share that
    produced a token of an unfinished row; the rest is what continuous batching would refill."""
    out: dict[str, Any] = {}
    for m in result["modes"]:
        for c in m["cells"]:
            ran = sum(p.get("row_steps", 0) for p in c["peers"])
            used = sum(p.get("tokens", 0) for p in c["peers"])
            out[f"{m['mode']}/{c['clients']}"] = round(used / ran, 3) if ran else None
    return out


def git_state() -> dict[str, Any]:
    def run(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return {"commit": run("rev-parse", "HEAD"), "dirty": run("status", "--porcelain", "--untracked-files=no").split("\n")}


def table(result: dict[str, Any]) -> str:
    """Markdown: one row per client count, the modes side by side."""
    modes = {m["mode"]: {c["clients"]: c for c in m["cells"]} for m in result["modes"]}
    names = list(modes)
    head = "| clients | " + " | ".join(f"{m} q/s | {m} p50 s | {m} p99 s | {m} max batch" for m in names)
    if {"batched", "off"} <= set(names):
        head += " | q/s ratio"
    lines = [head + " |", "|" + "---:|" * (1 + 4 * len(names) + ({"batched", "off"} <= set(names))) ]
    for clients in sorted({c for m in modes.values() for c in m}):
        row = [str(clients)]
        for m in names:
            c = modes[m].get(clients)
            if c is None:
                row += ["-"] * 4
                continue
            top = max((p["max_batch_seen"] for p in c["peers"]), default=0)
            row += [f"{c['queries_per_s']:.2f}", str(c["p50_s"]), str(c["p99_s"]), str(top)]
        if {"batched", "off"} <= set(names):
            a, b = modes["batched"].get(clients), modes["off"].get(clients)
            row.append(f"{a['queries_per_s'] / b['queries_per_s']:.1f}x" if a and b and b["queries_per_s"] else "-")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def peer_table(result: dict[str, Any]) -> str:
    lines = ["| mode | clients | peer | model | batches | sizes | tokens/s | steps/s | bw limit | bw_ratio | token_ratio |",
             "|---|---:|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for m in result["modes"]:
        for c in m["cells"]:
            for p in c["peers"]:
                # continuous batching: rows running once a question joined -> questions ("j" marks it)
                joined = p.get("rows_joined") or {}
                sizes = " ".join(f"j{k}:{v}" for k, v in joined.items()) if joined else \
                    " ".join(f"{k}:{v}" for k, v in p["batch_sizes"].items())
                lines.append(f"| {m['mode']} | {c['clients']} | {p['peer']} | {p['model']} | {p['batches']} | {sizes} | "
                             f"{p['tokens_per_s']} | {p['steps_per_s']} | {p['bandwidth_limit_tokens_per_s']} | "
                             f"{p['bw_ratio']} | {p['token_ratio']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--peer":
        peer_wrapper(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,4,16,32", help="client counts (comma-separated)")
    parser.add_argument("--seconds", type=float, default=40, help="how long the clients keep asking per cell")
    parser.add_argument("--drain-s", type=float, default=150, help="most time to wait for queries in flight")
    parser.add_argument("--modes", default="batched,off", help="batched, off and/or nocache (batched without the prompt prefix's KV cache)")
    parser.add_argument("--mode", action="append", default=[], metavar="NAME:SECTION.KEY=VALUE,...",
                        help="define another mode by its overrides (e.g. batch16:model.max_batch=16), then list it in --modes")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 clients for 5 s")
    parser.add_argument("--out", type=Path, help="JSON output (default bench/results/throughput-DATE.json)")
    parser.add_argument("--step-cost", action="store_true",
                        help="only measure prefill and decode-step time per batch size in-process (continuous batching)")
    args = parser.parse_args(argv)
    if args.step_cost:
        costs = step_costs()
        costs["load_average"] = os.getloadavg()
        out = args.out or ROOT / "bench" / "results" / f"throughput-step-cost-{datetime.now(timezone.utc):%Y-%m-%d}.json"
        out.write_text(json.dumps(costs, indent=1) + "\n")
        print(f"wrote {out}")
        return 0
    if args.quick:
        args.clients, args.seconds, args.drain_s = "2", 5.0, 120.0
    clients_list = [int(c) for c in args.clients.split(",")]
    for spec in args.mode:
        name, _, items = spec.partition(":")
        MODES[name] = {k: int(v) if v.lstrip("-").isdigit() else v
                       for k, v in (item.split("=", 1) for item in items.split(",") if item)}
    modes = args.modes.split(",")
    if set(modes) - set(MODES):
        parser.error(f"modes are {sorted(MODES)}")

    def say(line: str) -> None:
        print(line, flush=True)

    from multillmn.questions import load_questions

    questions = [q.question for q in load_questions()]
    load_before = os.getloadavg()
    bandwidth = memory_bandwidth()
    say(f"memory bandwidth {bandwidth / 1e9:.1f} GB/s (numpy copy); load average {load_before[0]:.2f}")
    infos = {m: model_info(m) for m in MODELS}
    for info in infos.values():
        say(f"{info.name}: {info.weight_bytes_per_step / 1e9:.2f} GB per decode step, one-stream bound "
            f"{bandwidth / info.weight_bytes_per_step:.1f} tokens/s")
    missing_all: set[str] = set()
    t0 = time.monotonic()
    nets: list[Net] = []
    try:
        starting = []
        for mode in modes:  # the testnets start together and run at once; an idle one costs next to nothing
            overrides, missing = supported_overrides(MODES[mode])
            missing_all |= set(missing)
            if missing:
                say(f"[{mode}] config has no {', '.join(missing)}: left out")
            starting.append((mode, overrides))
        with ThreadPoolExecutor(len(starting)) as pool:
            futures = []
            for mode, overrides in starting:  # a few seconds apart: each net's free ports are taken before the next picks
                futures.append(pool.submit(start_net, mode, overrides, args.max_new_tokens, say))
                time.sleep(3)
            failed = [f.exception() for f in futures if f.exception() is not None]
            nets = [f.result() for f in futures if f.exception() is None]
        if failed:
            raise RuntimeError(f"a testnet did not start: {failed[0]}") from failed[0]
        for net in nets:
            closed_loop(net.urls, questions[:4], 4, 0.1, 300, 300)  # warm-up: one query per peer
        for clients in clients_list:  # the modes' cells alternate, so both see the machine's load alike
            for net in nets:
                run_cell(net, clients, args.seconds, args.drain_s, questions, infos, bandwidth,
                         args.max_new_tokens, say)
    finally:
        from testnet.launcher import down

        for net in nets:
            down(net.directory)
    results = [{"mode": n.mode, "overrides": n.overrides, "startup_s": n.startup_s, "peer_settings": n.settings,
                "cells": n.cells} for n in nets]
    # the same question in both modes: each peer's own answer (batched must equal one at a time) and the
    # consensus answer (may differ: the winning group depends on the weights each run's history gave)
    compare: dict[str, Any] = {}
    by_mode = {r["mode"]: r for r in results}
    if {"batched", "off"} <= set(by_mode):
        def merged(key: str, r: dict[str, Any]) -> dict[str, Any]:
            return {q: x for c in r["cells"] for q, x in c[key].items()}

        a, b = merged("answers", by_mode["batched"]), merged("answers", by_mode["off"])
        pa, pb = merged("peer_answers", by_mode["batched"]), merged("peer_answers", by_mode["off"])
        pairs = [(q, peer, pa[q][peer], pb[q][peer]) for q in sorted(set(pa) & set(pb))
                 for peer in sorted(set(pa[q]) & set(pb[q]))]
        both = sorted(set(a) & set(b))
        compare = {"questions_in_both": len(both), "consensus_differing": [(q, a[q], b[q]) for q in both if a[q] != b[q]],
                   "peer_answers_compared": len(pairs),
                   "peer_answers_differing": [p for p in pairs if p[2] != p[3]]}
    result = {
        "command": "bench/throughput.py " + " ".join(argv),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpus": os.cpu_count(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "memory_bandwidth_bytes_per_s": round(bandwidth),
        "weight_bytes_per_step": {m: i.weight_bytes_per_step for m, i in infos.items()},
        "seconds_per_cell": args.seconds, "drain_s": args.drain_s, "max_new_tokens": args.max_new_tokens,
        "missing_config_keys": sorted(missing_all), "git": git_state(), "wall_s": round(time.monotonic() - t0, 1),
        "answers_batched_vs_off": compare, "modes": results,
    }
    result["slot_use"] = slot_use(result)
    out = args.out or ROOT / "bench" / "results" / f"throughput-{datetime.now(timezone.utc):%Y-%m-%d}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    say("\n" + table(result) + "\n\n" + peer_table(result))
    say(f"\nslot use (tokens / rows x longest row, all peers): {result['slot_use']}")
    if compare:
        say(f"\n{compare['peer_answers_compared']} peer answers to questions asked in both modes: "
            f"{len(compare['peer_answers_differing'])} differ; consensus answers to {compare['questions_in_both']} "
            f"questions: {len(compare['consensus_differing'])} differ")
    say(f"\nwrote {out} ({result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
