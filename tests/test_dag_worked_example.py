"""A small hashgraph checked by hand against the definitions in dag/hashgraph.py (Baird, TR-2016-02).

Four creators A, B, C, D. Events in creation order, timestamps = position p:

    p1 A0   p2 B0   p3 C0   p4 D0          (no parents)
    p5 A1 = (A0, D0)   p6 B1 = (B0, A1)   p7 C1 = (C0, B1)   p8 D1 = (D0, C1)
    p9 A2 = (A1, D1)   p10 B2 = (B1, A2)  p11 C2 = (C1, B2)  p12 D2 = (D1, C2)
    p13 A3 = (A2, D2)  p14 B3 = (B2, A3)  p15 C3 = (C2, B3)  p16 D3 = (D2, C3)

(self-parent, other-parent). From C1 on, each event's other-parent is the
previous event, so its ancestors are every earlier event; A1 lacks B0, C0 and
B1 lacks C0. "x strongly sees y" then needs creators carrying more than 2/3 of
the weight to have an event at or after y and at or before x (all of x's
ancestors, each seeing y).
"""

from __future__ import annotations

from consensus.validators import Validator, ValidatorSet
from dag import Event, Hashgraph, sign_event
from multillmn.identity import KeyPair

NAMES = "ABCD"
PLAN = [  # (name, other-parent name) in creation order; self-parent is the creator's previous event
    ("A0", None), ("B0", None), ("C0", None), ("D0", None),
    ("A1", "D0"), ("B1", "A1"), ("C1", "B1"), ("D1", "C1"),
    ("A2", "D1"), ("B2", "A2"), ("C2", "B2"), ("D2", "C2"),
    ("A3", "D2"), ("B3", "A3"), ("C3", "B3"), ("D3", "C3"),
]


def build(weights: dict[str, int]) -> tuple[Hashgraph, dict[str, Event], dict[str, list[Event]]]:
    keys = {n: KeyPair.from_seed(bytes([0x40 + i]) * 32) for i, n in enumerate(NAMES)}
    vs = ValidatorSet(Validator(keys[n].peer_id, keys[n].public_key, weights[n], n) for n in NAMES)
    hg = Hashgraph(vs)
    ev: dict[str, Event] = {}
    ordered_after: dict[str, list[Event]] = {}
    for p, (name, other) in enumerate(PLAN, start=1):
        creator, seq = name[0], int(name[1:])
        sp = ev[f"{creator}{seq - 1}"].hash if seq else None
        ev[name] = sign_event(keys[creator], seq=seq, self_parent=sp,
                              other_parent=ev[other].hash if other else None, timestamp=p)
        ordered_after[name] = hg.insert(ev[name])
    return hg, ev, ordered_after


def test_equal_weights_rounds_witnesses_fame_and_order() -> None:
    hg, ev, ordered_after = build({n: 1 for n in NAMES})
    # Rounds. A1: strongly sees A0 only via creator A; nothing -> round 1. B1 strongly sees D0
    # (D0, A1, B1: creators D, A, B = 3 > 8/3) but not A0 (A1, B1: 2) nor B0 -> 1 witness, round 1.
    # C1 strongly sees A0 (A1, B1, C1) and D0 -> 2 witnesses, round 1. D1 strongly sees A0, B0
    # (B1, C1, D1) and D0, not C0 (C1, D1) -> 3 of 4 witnesses -> round 2.
    # Then A2 (parent D1, round 2) strongly sees no round-2 witness, B2 sees only D1, C2 sees D1 and A2:
    # all round 2 and witnesses (their self-parents are round 1); D2 strongly sees D1, A2, B2 -> round 3.
    # The pattern repeats: D_k opens round k+1 and A/B/C_{k+1} join it.
    expected_round = {"A0": 1, "B0": 1, "C0": 1, "D0": 1, "A1": 1, "B1": 1, "C1": 1,
                      "D1": 2, "A2": 2, "B2": 2, "C2": 2, "D2": 3, "A3": 3, "B3": 3, "C3": 3, "D3": 4}
    assert {n: hg.round(e.hash) for n, e in ev.items()} == expected_round
    assert {n for n, e in ev.items() if not hg.is_witness(e.hash)} == {"A1", "B1", "C1"}
    assert [hg.strongly_sees(ev["B1"].hash, ev[w].hash) for w in ("A0", "B0", "C0", "D0")] == [
        False, False, False, True]
    assert [hg.strongly_sees(ev["D1"].hash, ev[w].hash) for w in ("A0", "B0", "C0", "D0")] == [
        True, True, False, True]
    assert [hg.strongly_sees(ev["D2"].hash, ev[w].hash) for w in ("D1", "A2", "B2", "C2")] == [
        True, True, True, False]

    # Fame. Every round-2 witness has all round-1 witnesses as ancestors: votes yes (d = 1). D2 (round 3,
    # d = 2) strongly sees D1, A2, B2, all voting yes: 3 > 8/3 -> all four round-1 witnesses famous,
    # decided on inserting D2. Likewise round 3 votes yes on round 2 and D3 (strongly seeing D2, A3, B3)
    # decides all of round 2 famous. Round 3 has no round-5 voter yet: undecided.
    for w in ("A0", "B0", "C0", "D0", "D1", "A2", "B2", "C2"):
        assert hg.fame(ev[w].hash) is True
    assert hg.fame(ev["D2"].hash) is None and hg.fame(ev["A1"].hash) is None
    assert hg.last_processed_round == 2

    # Round received. Round 1's unique famous witnesses are the four parentless events: none is an
    # ancestor of another, so nothing is received in round 1. Round 2's are D1, A2, B2, C2, whose common
    # ancestors are D1's ancestors: A0, B0, C0, D0, A1, B1, C1, D1 -- ordered when D3 arrives.
    assert all(ordered_after[n] == [] for n, _ in PLAN[:-1])
    got = ordered_after["D3"]
    assert {e.hash for e in got} == {ev[n].hash for n in ("A0", "B0", "C0", "D0", "A1", "B1", "C1", "D1")}
    # Consensus timestamps: for each famous witness, the first event on its creator's chain that has x
    # as an ancestor. E.g. A0: D1(8), A0(1), B1(6), C1(7) -> sorted 1, 6, 7, 8, lower median 6.
    # D0: D0(4), A1(5), B1(6), C1(7) -> 5.  D1: D1(8), A2(9), B2(10), C2(11) -> 9.
    expected_ts = {"A0": 6, "B0": 7, "C0": 8, "D0": 5, "A1": 6, "B1": 7, "C1": 8, "D1": 9}
    assert {n: hg.consensus_timestamp(ev[n].hash) for n in expected_ts} == expected_ts
    assert all(hg.round_received(e.hash) == 2 for e in got)
    # Order: by timestamp, ties by whitened signature (signature XOR the XOR of the famous witnesses').
    mask = 0
    for w in ("D1", "A2", "B2", "C2"):
        mask ^= int.from_bytes(ev[w].signature, "big")

    def key(n: str) -> tuple[int, int]:
        return expected_ts[n], int.from_bytes(ev[n].signature, "big") ^ mask

    assert [e.hash for e in got] == [ev[n].hash for n in sorted(expected_ts, key=key)]
    assert got[0] == ev["D0"] and got[-1] == ev["D1"]


def test_weights_replace_counts() -> None:
    """A carries 5 of 8: a quorum needs 3w > 16, i.e. w >= 6, so A plus one other creator.

    A1: strongly sees D0 (D0, A1: D + A = 6) but A0 only through A (5): witnesses seen weigh 1 -> round 1.
    B1: strongly sees A0 (A1, B1: 6) and D0 (D0, A1, B1: 7), not B0: 5 + 1 = 6 -> round 2 (round 1
        with equal weights). C1 (parent B1, round 2) sees B1 only via B and C: round 2, a witness.
    D1: strongly sees neither B1 (B1, C1, D1: 3) nor C1: round 2, a witness. A2: strongly sees B1, C1, D1,
        three of four witnesses -- more than 2/3 by count, but only 3 of 8 by weight: round 2.
    B2: strongly sees B1, C1, D1 and A2 (A2, B2: A + B = 6): all the weight -> round 3.
    """
    hg, ev, _ = build({"A": 5, "B": 1, "C": 1, "D": 1})
    expected = {"A0": 1, "B0": 1, "C0": 1, "D0": 1, "A1": 1, "B1": 2, "C1": 2, "D1": 2, "A2": 2, "B2": 3}
    assert {n: hg.round(ev[n].hash) for n in expected} == expected
    assert [hg.strongly_sees(ev["A2"].hash, ev[w].hash) for w in ("B1", "C1", "D1")] == [True, True, True]
    assert [hg.is_witness(ev[n].hash) for n in ("A1", "B1", "C1", "D1", "A2", "B2")] == [
        False, True, True, True, True, True]
