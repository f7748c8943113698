"""``shard plan``: device files, validation errors, output; the helper stays free of torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from peers.shard.cli import DeviceFileError, load_devices, main

EXAMPLE = Path(__file__).resolve().parents[1] / "peers" / "shard" / "examples" / "devices.toml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "devices.toml"
    path.write_text(text)
    return path


def test_example_plan_beats_the_baselines(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["shard", "plan", "--devices", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "dp-latency" in out and "single" in out and "even" in out and "memory" in out
    assert main(["shard", "plan", "--devices", str(EXAMPLE), "--json", "--objective", "throughput",
                 "--context", "512"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["objective"] == "throughput" and result["model"] == "smollm2"
    shards = result["plan"]["shards"]
    assert shards[0][1] == 0 and shards[-1][2] == 30 and len(shards) > 1
    for other in result["baselines"].values():
        if other is not None:
            assert other["bottleneck_ms"] >= result["plan"]["bottleneck_ms"] - 1e-9


def test_load_devices(tmp_path: Path) -> None:
    devices, links = load_devices(_write(tmp_path, """
[[device]]
name = "a"
threads = 2
memory_mb = 100
link_ms = 1.5
bandwidth_mbps = 8
[[device]]
name = "b"
speed = 0.5
memory_mb = 50.5
link_ms = 0
"""))
    assert [(d.name, d.speed, d.memory_bytes) for d in devices] == [("a", 2.0, 100 * 2**20), ("b", 0.5, int(50.5 * 2**20))]
    assert links["a"].latency_ms == 1.5 and links["a"].bandwidth_bps == 1e6 and links["b"].transfer_ms(10**9) == 0


@pytest.mark.parametrize("text, message", [
    ("", "no \\[\\[device\\]\\] tables"),
    ("[[device]]\nname = 'a'\nthreads = 1\nmemory_mb = 1\nlink_ms = 1\ncolour = 'red'", "unknown keys \\['colour'\\]"),
    ("[[device]]\nname = 'a'\nthreads = 1\nspeed = 2.0\nmemory_mb = 1\nlink_ms = 1", "exactly one of threads or speed"),
    ("[[device]]\nname = 'a'\nthreads = 0\nmemory_mb = 1\nlink_ms = 1", "threads must be a positive integer"),
    ("[[device]]\nname = 'a'\nspeed = -1\nmemory_mb = 1\nlink_ms = 1", "speed must be > 0"),
    ("[[device]]\nname = 'a'\nthreads = 1\nmemory_mb = '1GB'\nlink_ms = 1", "memory_mb must be a number"),
    ("[[device]]\nname = 'a'\nthreads = 1\nlink_ms = 1", "missing memory_mb"),
    ("[[device]]\nname = 'a'\nthreads = 1\nmemory_mb = 1\nlink_ms = 1\n"
     "[[device]]\nname = 'a'\nthreads = 1\nmemory_mb = 1\nlink_ms = 1", "duplicate name"),
    ("[[device]]\nname = ''\nthreads = 1\nmemory_mb = 1\nlink_ms = 1", "name must be a non-empty string"),
    ("[[device]]\nname = 'a'\nthreads = 1\nmemory_mb = 1\nlink_ms = 1\nbandwidth_mbps = 0", "bandwidth_mbps must be > 0"),
    ("[device]\nname = 'a'", "no \\[\\[device\\]\\] tables"),
    ("devices = 3", "unknown top-level keys"),
    ("[[device]\n", "not valid TOML"),
])
def test_bad_device_files_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DeviceFileError, match=message):
        load_devices(_write(tmp_path, text))


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["shard", "plan", "--devices", str(tmp_path / "missing.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err
    tiny = _write(tmp_path, "[[device]]\nname = 'a'\nthreads = 1\nmemory_mb = 10\nlink_ms = 1\n")
    assert main(["shard", "plan", "--devices", str(tiny)]) == 1
    assert "fits on no split" in capsys.readouterr().err
    assert main(["shard", "plan", "--devices", str(EXAMPLE), "--model", "gemma3"]) == 1
    assert "gemma3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["shard", "plan", "--devices", str(tiny), "--objective", "speed"])


def test_the_cli_helper_does_not_import_torch() -> None:
    code = "import sys, peers.shard.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=EXAMPLE.parents[3]).returncode == 0
