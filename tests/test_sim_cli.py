"""The ``sim`` command: flags, validation (exit 2), summaries, exit codes."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest

import consensus.sim
from consensus.sim import Summary
from multillmn.sim_cli import add_sim_command


def sim(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="multillmn")
    add_sim_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["sim", *argv])
    return int(args.func(args))


def sim_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert sim([*argv, "--json"]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def test_summary_fields(capsys: pytest.CaptureFixture[str]) -> None:
    out = sim_json(["--peers", "4", "--byzantine", "1", "--behaviour", "double-vote", "--heights", "2",
                    "--seeds", "5", "--seed-start", "10"], capsys)
    assert out["runs"] == 5 and out["decisions"] == 10
    assert out["safety_violations"] == 0 and out["termination_failures"] == 0
    assert out["mean_rounds_per_height"] >= 1 and out["accuracy"] == 1.0
    assert out["decisions_per_second"] > 0 and out["first_failing_seed"] is None
    assert out["equivocations_reported"] > 0 and out["seed_start"] == 10


def test_human_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert sim(["--peers", "7", "--byzantine", "2", "--behaviour", "mixed", "--seeds", "3", "--loss", "0.05"]) == 0
    text = capsys.readouterr().out
    for label in ("runs", "decisions", "safety violations", "termination failures", "mean rounds/height",
                  "accuracy", "decisions/s (wall)", "first failing seed"):
        assert label in text


def test_baselines_weights_partition_and_real_signatures(capsys: pytest.CaptureFixture[str]) -> None:
    majority = sim_json(["--baseline", "majority", "--byzantine", "1", "--behaviour", "collude", "--seeds", "3"],
                        capsys)
    assert majority["mean_rounds_per_height"] is None and majority["decisions"] == 9
    weighted = sim_json(["--weights", "1,1,5,1", "--byzantine", "1", "--seeds", "2"], capsys)
    assert weighted["weights"] == [1, 1, 5, 1] and weighted["decisions"] == 6
    equal = sim_json(["--weights", "1,1,5,1", "--baseline", "equal", "--seeds", "1"], capsys)
    assert equal["weights"] == [1, 1, 1, 1]
    cut = sim_json(["--partition", "--seeds", "2", "--heights", "1"], capsys)
    assert cut["decisions"] == 2 and cut["partition"] is True
    real = sim_json(["--real-signatures", "--seeds", "1", "--heights", "1"], capsys)
    assert real["real_signatures"] is True and real["decisions"] == 1


@pytest.mark.parametrize("argv, message", [
    (["--byzantine", "5"], "--byzantine: 5 Byzantine peers but only 4 peers"),
    (["--weights", "1,2"], "--weights: 2 weights given for 4 peers"),
    (["--peers", "300"], "--peers: at most 256"),
    (["--peers", "1", "--partition"], "--partition: cannot cut off"),
])
def test_inconsistent_flags_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert sim(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["--loss", "1.5"], ["--loss", "x"], ["--peers", "0"], ["--seeds", "0"], ["--heights", "-1"],
    ["--behaviour", "evil"], ["--baseline", "pbft"], ["--weights", "1,0,1,1"], ["--weights", "a"],
    ["--latency-ms", "-5"], ["--latency-ms", "nan"], ["--seed-start", "-1"],
    ["--epoch-length", "3"], ["--joiners", "65"], ["--leaves", "-1"],
])
def test_bad_flag_values_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        sim(argv)
    assert exc.value.code == 2
    assert "error: argument" in capsys.readouterr().err


def test_faulty_third_is_noted_and_broken_runs_exit_1(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert sim(["--byzantine", "2", "--behaviour", "withhold", "--seeds", "1", "--heights", "1"]) == 0
    assert "1/3 of the weight or more" in capsys.readouterr().err

    def broken(*args: object, **kwargs: object) -> Summary:
        return Summary(runs=1, broken_runs=1, first_failing_seed=7)

    monkeypatch.setattr(consensus.sim, "summarise", broken)
    assert sim(["--seeds", "1"]) == 1
    assert "first failing seed    7" in capsys.readouterr().out


def test_membership_flags(capsys: pytest.CaptureFixture[str]) -> None:
    out = sim_json(["--peers", "5", "--epoch-length", "4", "--joiners", "2", "--byzantine-joiners", "1",
                    "--behaviour", "wrong", "--leaves", "1", "--heights", "9", "--seeds", "2"], capsys)
    assert out["runs"] == 2 and out["decisions"] == 18 and out["safety_violations"] == 0
    assert out["termination_failures"] == 0 and out["joiners"] == 2 and out["leaves"] == 1
    assert out["faulty_share_by_height"][3] == 0 and out["faulty_share_by_height"][4] > 0  # a joiner from h5
    assert sim(["--epoch-length", "4", "--joiners", "1", "--seeds", "1", "--heights", "6"]) == 0
    assert "1 joiners (0 Byzantine), epochs of 4" in capsys.readouterr().out


def test_churn_flag(capsys: pytest.CaptureFixture[str]) -> None:
    out = sim_json(["--churn", "--peers", "6", "--heights", "9", "--seeds", "3", "--seed-start", "3"], capsys)
    assert out["churn"] is True and out["runs"] == 3 and out["weights"] is None
    assert out["safety_violations"] == 0 and out["decisions"] > 0


@pytest.mark.parametrize("argv, message", [
    (["--churn", "--byzantine", "1"], "--churn: draws the scenario per seed; drop --byzantine"),
    (["--churn", "--peers", "3"], "--churn: needs --peers of at least 4"),
    (["--joiners", "1", "--byzantine-joiners", "2"], "--byzantine-joiners: 2 but only 1 joiners"),
    (["--leaves", "4"], "--leaves: 4 of 4 peers would leave"),
    (["--joiners", "1", "--static-weights"], "joiners: expected baseline wbft with adaptive weights"),
])
def test_inconsistent_membership_flags_exit_2(argv: list[str], message: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert sim(argv) == 2
    assert message in capsys.readouterr().err
