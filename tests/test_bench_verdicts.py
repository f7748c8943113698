"""``bench/verdicts.py``'s content-gap judge signal and ``bench/verdict_signals.py``'s fast threshold fit (no model)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import verdict_signals  # noqa: E402
import verdicts  # noqa: E402

FRAME = [("The", -0.1), (" capital", -0.2), (" of", -0.01), (" Peru", -0.3), (" is", -0.05)]


def test_content_split_strips_the_shared_frame_and_final_period() -> None:
    own = [*FRAME, (" Lima", -0.5), (".", -0.02)]
    other = [*FRAME, (" Bog", -2.0), ("ota", -0.5), (".", -1.5)]
    a, b = verdicts.content_split(own, other)
    assert a == [(" Lima", -0.5)]
    assert b == [(" Bog", -2.0), ("ota", -0.5)]
    assert verdicts.content_gap(own, other) == pytest.approx(-2.0)
    assert verdicts.content_verdict(own, other) == round(-2000 / verdicts.CONTENT_NATS)  # -333: kept at 500


def test_content_gap_is_zero_for_equal_texts_and_restatements() -> None:
    own = [*FRAME, (" Lima", -0.5), (".", -0.02)]
    assert verdicts.content_gap(own, list(own)) == 0.0
    assert verdicts.content_gap(own, [*FRAME, (" Lima", -0.5)]) == 0.0  # the same without "." has no token of its own
    assert verdicts.content_gap(own, [(" Lima", -3.0)]) == pytest.approx(-3.0 - sum(v for _, v in own))  # no shared run
    assert verdicts.content_gap([], own) == 0.0


def test_content_verdict_rejects_at_three_nats_and_clamps() -> None:
    own = [("A", -0.1), (".", -0.1)]
    assert verdicts.content_verdict(own, [("B", -3.2), (".", -0.1)]) < -500 <= verdicts.content_verdict(
        own, [("B", -2.9), (".", -0.1)])
    assert verdicts.content_verdict(own, [("B", -100.0), (".", -0.1)]) == -1000
    assert verdicts.content_verdict([("B", -100.0), (".", -0.1)], own) == 1000


def test_sum_gap_shared_prefix_cancels() -> None:
    """Shared leading tokens have the same log-probabilities in both texts (same context), so the plain sum gap
    equals the content gap when the texts share no trailing token."""
    own = [*FRAME, (" Lima", -0.5)]
    other = [*FRAME, (" Quito", -4.0), ("!", -1.0)]
    plain = sum(v for _, v in other) - sum(v for _, v in own)
    assert verdicts.content_gap(own, other) == pytest.approx(plain)


def test_fast_threshold_fit_equals_deciding_every_question() -> None:
    rows = verdict_signals.load(*verdict_signals.SHIPPED)[::4]  # every 4th question: seconds
    table = verdict_signals.outcome_table(rows)
    for ts, tg in ((500, 500), (3000, 3000), (4000, 200)):
        fn = verdict_signals.verdict_fn("content-sum", verdict_signals.scale_for({"smollm2": ts, "gemma3": tg}))
        slow = verdict_signals.objective(rows, fn, verdict_signals.MARGIN)
        cells = [cell[(fn(r, "smollm2", r["answers"]["gemma3"]["text"]) < -verdict_signals.MARGIN,
                       fn(r, "gemma3", r["answers"]["smollm2"]["text"]) < -verdict_signals.MARGIN)]
                 for cell, r in zip(table, rows, strict=True)]
        assert slow == (sum(a and b for a, b in cells), sum(a for a, _ in cells))
