"""``bench/security.py --quick`` in the suite: every attack class of issue 10 runs against four in-process peers,
no peer crashes, nothing is lost, and every attack is refused except the ones the bench lists as known open."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import security  # noqa: E402


@pytest.mark.campaign
async def test_the_security_bench_s_quick_mode_refuses_everything_but_the_known_open() -> None:
    rows, crashes = await security.run(quick=True)
    assert crashes == []
    assert [r.name for r in rows] == [name for name, _ in security.classes(quick=True)]
    for row in rows:
        assert row.tried > 0 and row.crashed == 0 and row.lost == 0, row
        assert row.refused + len(row.not_refused) >= row.tried, row
    assert security.failures(rows) == []
    open_names = {x["attack"] for r in rows for x in r.not_refused}
    assert open_names <= security.KNOWN_OPEN == set()  # every attack refused
    by_name = {r.name: r for r in rows}
    assert by_name["Malformed HTTP requests"].refused == by_name["Malformed HTTP requests"].tried
