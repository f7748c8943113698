"""The simulator itself: exact replay, the invariant checker's teeth, configs, and random scenarios."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from consensus.sim import (
    Behaviour,
    Crash,
    Partition,
    SimConfig,
    SimConfigError,
    SimFailure,
    register,
    replay,
    run,
)
from consensus import grouping
from consensus.driver import Decided, Driver, Effect, Send
from consensus.messages import Vote

ROOT = Path(__file__).resolve().parent.parent
LOSSY = SimConfig(byzantine=((1, "double-vote"),), loss=0.05, partitions=(Partition(300, 2500, ((0,),)),))


@register
class DecideAlone(Behaviour):
    """Test-only broken peer that claims to be honest and 'decides' its own answer without any quorum."""

    name = "test-decide-alone"
    hidden = True

    def on_effects(self, driver: Driver, effects: list[Effect]) -> list[Effect]:
        extra: list[Effect] = []
        for e in effects:
            if isinstance(e, Send) and isinstance(e.signed.message, Vote) and e.signed.message.type == "prevote" \
                    and e.signed.signer == self.peer_id:
                entry = driver.pool.next_ready()
                own = entry.answers.get(self.peer_id) if entry is not None else None
                if entry is not None and own is not None:
                    vs = driver.validators
                    value = grouping.build_value(entry.query.envelope, [own], [], [vs.weight_of(self.peer_id)],
                                                 driver.config.threshold, validators_hash=vs.set_hash())
                    extra.append(Decided(e.signed.message.height, e.signed.message.round, value, (), vs))
        return effects + extra


# --- determinism -----------------------------------------------------------------------
def test_same_seed_same_trace_different_seed_different_trace() -> None:
    first = run(LOSSY, 5)
    assert run(LOSSY, 5).trace_hash == first.trace_hash
    assert replay(5, LOSSY).trace_hash == first.trace_hash
    others = {run(LOSSY, s).trace_hash for s in range(6, 11)}
    assert first.trace_hash not in others and len(others) == 5


def test_signing_mode_does_not_change_the_protocol_trace() -> None:
    fast = run(SimConfig(byzantine=((3, "double-vote"),)), 2)
    real = run(SimConfig(byzantine=((3, "double-vote"),), real_signatures=True), 2)
    assert fast.trace_hash == real.trace_hash
    assert fast.rounds == real.rounds


def test_replay_in_another_process_gives_the_same_hash() -> None:
    expected = run(LOSSY, 7).trace_hash
    for hash_seed in ("1", "2"):  # set iteration order must not leak into the run
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-m", "consensus.sim", "--seed", "7",
                              "--config", LOSSY.to_json()], cwd=ROOT, env=env, capture_output=True, text=True,
                             check=True)
        assert json.loads(out.stdout)["trace_hash"] == expected


# --- the checker can fail ----------------------------------------------------------------
def test_a_peer_deciding_without_quorum_is_a_safety_violation() -> None:
    config = SimConfig(byzantine=((3, "test-decide-alone"),))
    with pytest.raises(SimFailure) as caught:
        run(config, 3)
    message = str(caught.value)
    assert "agreement violated at seed 3" in message
    assert "replay: " in message and "--seed 3" in message and "--import" in message
    kinds = {v.kind for v in caught.value.result.violations}
    assert {"agreement", "validity"} <= kinds
    again = replay(3, config)
    assert again.trace_hash == caught.value.result.trace_hash
    assert again.violations == caught.value.result.violations


def test_failure_message_replays_from_the_shell() -> None:
    config = SimConfig(loss=0.2, gossip_ms=0, catchup=False, height_budget_ms=20000)  # today's runner, lossy
    failure = None
    for seed in range(10):
        try:
            run(config, seed)
        except SimFailure as exc:
            failure = exc
            break
    assert failure is not None, "expected a termination failure without gossip"
    command = str(failure).split("replay: ", 1)[1].strip()
    out = subprocess.run(shlex.split(command), cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 1
    report = json.loads(out.stdout)
    assert report["trace_hash"] == failure.result.trace_hash
    assert report["violations"][0].startswith("termination")


# --- configs -----------------------------------------------------------------------------
def test_config_json_round_trip() -> None:
    config = SimConfig(peers=5, weights=(1, 2, 3, 1, 1), byzantine=((4, "slow"),), byzantine_pick=("junk",),
                       partitions=(Partition(10, 20, ((0, 1), (2,))),), crashes=(Crash(3, 5, None), Crash(2, 1, 9)),
                       slowness=((1, 2.5),), real_signatures=True, timeouts_ms=(500, 200, 200, 100))
    assert SimConfig.from_json(config.to_json()) == config
    assert SimConfig.from_json("{}") == SimConfig()


@pytest.mark.parametrize("kwargs, field", [
    ({"weights": (1, 1)}, "weights"),
    ({"byzantine": ((0, "nonsense"),)}, "byzantine"),
    ({"byzantine": ((9, "wrong"),)}, "byzantine"),
    ({"loss": 1.0}, "loss"),
    ({"partitions": (Partition(5, 5, ((0,),)),)}, "partitions"),
    ({"crashes": (Crash(0, 10, 5),)}, "crashes"),
    ({"byzantine_pick": ("wrong",) * 5}, "byzantine_pick"),
    ({"baseline": "pbft"}, "baseline"),
])
def test_config_errors_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(SimConfigError, match=f"^{field}:"):
        SimConfig(**kwargs).validate()  # type: ignore[arg-type]


def test_from_json_rejects_unknown_fields() -> None:
    with pytest.raises(SimConfigError, match="unknown config fields: bogus"):
        SimConfig.from_json('{"bogus": 1}')
