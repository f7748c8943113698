"""``bench/broadcast.py`` at its smallest: 8 real loopback transports, a few broadcasts, the mesh and the tree with
a quarter of its relays silent; every honest peer gets every broadcast."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import broadcast  # noqa: E402

from peers.latency import LatencyConfig  # noqa: E402


@pytest.mark.campaign
@pytest.mark.parametrize("mode,silent", [("mesh", 0.0), ("tree", 0.25)])
async def test_eight_peers_deliver_every_broadcast(mode: str, silent: float) -> None:
    row = await broadcast.run_network(8, mode, broadcasts=3, silent_fraction=silent, deadline_s=5.0,
                                      latency=LatencyConfig.for_tests())
    assert row["delivery_ratio"] == 1.0 and row["delivered"] == row["expected"] == 3 * (7 - row["silent"])
    assert row["silent"] == (2 if silent else 0)
    assert 5 <= row["p50_ms"] <= row["max_ms"] < 5000
    if mode == "mesh":
        assert row["origin_sends"] == row["origin_payload_sends"] == 7 and row["dups_per_delivery"] == 0
    else:
        assert row["origin_payload_sends"] <= 3 + 3  # fan-out 3, plus peers that grafted on
    assert broadcast.table([row]).count("\n") == 2


def test_the_delay_matrix_is_seeded_symmetric_and_within_5_to_80_ms() -> None:
    m = broadcast.delay_matrix(16, seed=3)
    assert m == broadcast.delay_matrix(16, seed=3) != broadcast.delay_matrix(16, seed=4)
    off = [m[i][j] for i in range(16) for j in range(16) if i != j]
    assert all(0.005 <= d <= 0.080 for d in off) and all(m[i][j] == m[j][i] for i in range(16) for j in range(16))
