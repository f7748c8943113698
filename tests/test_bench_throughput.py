"""Smoke test of bench/throughput.py (issue 14): both modes on a real 4-peer testnet, a few seconds each.

Also the pure parts: the peer wrapper's config overrides and the batch grouping of the peers' logs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import throughput  # noqa: E402


class _Tok:
    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": list(range(len(text.split())))}


def test_batches_are_read_from_the_answered_log_records() -> None:
    records = [
        {"msg": "answered", "batch": 3, "gen_ms": 900, "text": "a b"},
        {"msg": "answered", "batch": 3, "gen_ms": 900, "text": "a b c d"},
        {"msg": "proposal"},
        {"msg": "answered", "batch": 3, "gen_ms": 900, "text": "a"},
        {"msg": "answered", "batch": 3, "gen_ms": 900, "text": "a"},  # the same timing again: a new batch
        {"msg": "answered", "batch": 1, "gen_ms": 300, "text": "a b c d e f"},
    ]
    assert throughput.batches_of(records, _Tok(), max_new_tokens=6) == [[3, 5, 2], [2], [6]]


def test_where_a_querys_time_went_is_read_from_replies_and_logs() -> None:
    reply = {"timings": {"total_ms": 900, "generation_ms": 700, "consensus_ms": 200, "protocol_ms": 50},
             "answers": [{"generation_ms": 650}, {"generation_ms": 400}, {"generation_ms": "x"}]}
    t = throughput.query_timings(reply)
    assert t == {"total": 900, "generation": 700, "consensus": 200, "protocol": 50,
                 "answer_gen_min": 400, "answer_gen_max": 650}
    assert throughput.query_timings({}) == {}
    records = {"peer0": [
        {"msg": "answered", "batch": 2, "gen_ms": 1000, "started_ms": 5, "waited_ms": 100},
        {"msg": "answered", "batch": 2, "gen_ms": 1000, "started_ms": 5, "waited_ms": 300},
        {"msg": "answered", "batch": 1, "gen_ms": 1000, "started_ms": 2000, "waited_ms": 0},
        {"msg": "decided"},
    ]}
    summary = throughput.timing_summary([t, {"total": 1100, "generation": 900}], records, elapsed=4.0)
    assert summary["total_ms_p50"] == 1000 and summary["consensus_ms_p50"] == 200
    assert summary["peers"]["peer0"] == {"waited_ms_p50": 100, "batch_ms_p50": 1000, "busy_share": 0.5}


def test_continuous_batching_answers_overlap_and_are_counted_once() -> None:
    records = {"peer0": [  # rows of one serving run: each answer with its own start and time
        {"msg": "answered", "batch": 1, "gen_ms": 1000, "started_ms": 0, "text": "a b"},
        {"msg": "answered", "batch": 2, "gen_ms": 500, "started_ms": 200, "text": "a"},
        {"msg": "answered", "batch": 2, "gen_ms": 1000, "started_ms": 800, "text": "a b c"},
        {"msg": "answered", "batch": 1, "gen_ms": 500, "started_ms": 3000, "text": "a"},
    ]}
    summary = throughput.timing_summary([], records, elapsed=4.0)
    assert summary["peers"]["peer0"]["busy_share"] == 0.575  # 0-1.8 s and 3-3.5 s of 4 s
    assert throughput.batches_of(records["peer0"], _Tok(), 6, continuous=True) == [[3], [2], [4], [2]]
    before = {"generation": {"rows_joined": {"1": 2, "3": 1}}}
    after = {"generation": {"rows_joined": {"1": 2, "3": 4, "12": 5}}}
    assert throughput.rows_joined(before, after) == {"3": 3, "12": 5}
    assert throughput.rows_joined({}, {}) == {}


def test_cpu_seconds_of_a_process() -> None:
    import os

    before = throughput.cpu_seconds(os.getpid())
    sum(i * i for i in range(2_000_000))
    after = throughput.cpu_seconds(os.getpid())
    assert before is not None and after is not None and after > before
    assert throughput.cpu_seconds(None) is None


def test_overrides_missing_from_the_config_are_reported() -> None:
    ok, missing = throughput.supported_overrides({"model.max_batch": 1, "consensus.no_such_key": 1})
    assert ok == {"model.max_batch": 1} and missing == ["consensus.no_such_key"]


def test_the_peer_wrapper_rewrites_the_config_then_runs_the_peer(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[model]\nname = \"x\"\nmax_batch = 8\n")
    script = ("import sys; print(open(sys.argv[sys.argv.index('--config') + 1]).read())")
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "throughput.py"), "--peer", "model.max_batch=1",
                          "consensus.queries_per_height=1", "--", sys.executable, "-c", script, "--config", str(config)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert "max_batch = 1" in out and "max_batch = 8" not in out and "queries_per_height" not in out
    config.write_text("[model]\nname = \"x\"\nbatching = \"continuous\"\n")
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "throughput.py"), "--peer", "model.batching=batches",
                          "--", sys.executable, "-c", script, "--config", str(config)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert 'batching = "batches"' in out


@pytest.mark.e2e
@pytest.mark.campaign
def test_quick_run_reports_both_modes(tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "throughput.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["memory_bandwidth_bytes_per_s"] > 1e9
    modes = {m["mode"]: m for m in result["modes"]}
    assert set(modes) == {"batched", "off"}
    for mode in modes.values():
        assert [c["clients"] for c in mode["cells"]] == [2]
        for cell in mode["cells"]:
            assert cell["completed"] > 0 and cell["errors"] == 0 and cell["p50_s"] > 0
            assert {p["model"] for p in cell["peers"]} == {"smollm2", "gemma3"}
            assert all(p["tokens_per_s"] > 0 and 0 < p["bw_ratio"] < 10 for p in cell["peers"] if p["answers"])
    # batching off really is one question per model call
    assert all(settings["model.max_batch"] == "1" for settings in modes["off"]["peer_settings"].values())
    assert all(p["max_batch_seen"] <= 1 for c in modes["off"]["cells"] for p in c["peers"])
    assert "| clients |" in proc.stdout
