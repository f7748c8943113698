"""Broadcast trees (peers/broadcast/_trees.py): the heuristic against brute force, bounds, determinism."""

from __future__ import annotations

import math
import random

import pytest

from peers.broadcast import (
    DEFAULT_LATENCY_S,
    LatencyMatrix,
    arrival_times,
    brute_force_best_tree,
    build_tree,
    check_tree,
    max_latency,
    parents_of,
    reroute,
)
from peers.broadcast._trees import reparent

RATIO_BOUND = 1.25


def _plane(rng: random.Random, n: int) -> tuple[list[str], dict[tuple[str, str], float]]:
    ids = [f"n{i}" for i in range(n)]
    pts = {p: (rng.random(), rng.random()) for p in ids}
    return ids, {(a, b): math.dist(pts[a], pts[b]) for a in ids for b in ids if a != b}


def _arbitrary(rng: random.Random, n: int) -> tuple[list[str], dict[tuple[str, str], float]]:
    """Asymmetric, no triangle inequality: the hard case for a greedy."""
    ids = [f"n{i}" for i in range(n)]
    return ids, {(a, b): rng.uniform(0.001, 0.2) for a in ids for b in ids if a != b}


@pytest.mark.parametrize("kind", ["plane", "arbitrary"])
def test_heuristic_within_bound_of_brute_force(kind: str) -> None:
    rng = random.Random(20261130 if kind == "plane" else 7)
    make = _plane if kind == "plane" else _arbitrary
    ratios = []
    for case in range(100):
        n = rng.randint(2, 7)
        fanout = rng.choice([1, 2, 3])
        ids, lat = make(rng, n)
        tree = build_tree("n0", ids, lat, fanout)
        check_tree(tree, "n0", ids, fanout)
        best_tree, best = brute_force_best_tree("n0", ids, lat, fanout)
        check_tree(best_tree, "n0", ids, fanout)
        assert math.isclose(max_latency(best_tree, "n0", lat), best)
        got = max_latency(tree, "n0", lat)
        assert got >= best - 1e-12, "brute force missed a better tree"
        ratio = got / best if best > 0 else 1.0
        assert ratio <= RATIO_BOUND, f"case {case}: n={n} fanout={fanout} ratio {ratio:.3f}"
        ratios.append(ratio)
    # the report: most cases optimal, the worst within the bound
    assert sum(r <= 1 + 1e-9 for r in ratios) >= len(ratios) * 0.8
    print(f"{kind}: worst ratio {max(ratios):.3f}, mean {sum(ratios) / len(ratios):.4f}, "
          f"optimal in {sum(r <= 1 + 1e-9 for r in ratios)}/{len(ratios)}")


def test_greedy_alone_is_worse_somewhere_so_the_comparison_can_fail() -> None:
    """Without local search the greedy misses the optimum on some matrices: the bound test has teeth."""
    rng = random.Random(8)
    worst = 1.0
    for _ in range(60):
        ids, lat = _arbitrary(rng, rng.randint(4, 7))
        fanout = rng.choice([1, 2])
        greedy = max_latency(build_tree("n0", ids, lat, fanout, improve=False), "n0", lat)
        worst = max(worst, greedy / brute_force_best_tree("n0", ids, lat, fanout)[1])
    assert worst > RATIO_BOUND


def test_trivial_cases_are_optimal() -> None:
    # two nodes
    lat = {("a", "b"): 0.03}
    assert build_tree("a", ["a", "b"], lat, 1) == {"a": ("b",), "b": ()}
    # a lone origin
    assert build_tree("a", [], lat, 2) == {"a": ()}
    # metric and fan-out >= n-1: the star is optimal (max direct latency is a lower bound)
    rng = random.Random(1)
    for _ in range(20):
        ids, plane = _plane(rng, 6)
        tree = build_tree("n0", ids, plane, 5)
        assert max_latency(tree, "n0", plane) == pytest.approx(max(plane[("n0", p)] for p in ids[1:]))
    # uniform latencies: a complete fan-out-ary tree (depth 2 for 7 nodes and fan-out 2)
    ids = [f"n{i}" for i in range(7)]
    uniform = dict.fromkeys(((a, b) for a in ids for b in ids if a != b), 1.0)
    assert max_latency(build_tree("n0", ids, uniform, 2), "n0", uniform) == 2.0
    assert brute_force_best_tree("n0", ids, uniform, 2)[1] == 2.0
    # points on a line, origin at one end, fan-out 1: the path in order
    line = {(a, b): abs(int(a[1:]) - int(b[1:])) * 0.01 for a in ids for b in ids if a != b}
    assert build_tree("n0", ids, line, 1) == {f"n{i}": (f"n{i + 1}",) if i < 6 else () for i in range(7)}


@pytest.mark.parametrize("n,fanout", [(50, 1), (100, 2), (300, 3), (200, 8)])
def test_fanout_respected_and_every_member_reached_once(n: int, fanout: int) -> None:
    rng = random.Random(n * 31 + fanout)
    ids, lat = _plane(rng, n)
    origin = ids[n // 2]
    tree = build_tree(origin, ids, lat, fanout)
    assert set(tree) == set(ids)
    assert all(len(c) <= fanout for c in tree.values())
    parents = parents_of(tree)
    assert set(parents) == set(ids) - {origin}  # every member but the origin has exactly one parent
    assert sorted(c for cs in tree.values() for c in cs) == sorted(set(ids) - {origin})
    check_tree(tree, origin, ids, fanout)


def test_check_tree_rejects_bad_trees() -> None:
    with pytest.raises(ValueError):
        check_tree({"a": ("b", "c"), "b": (), "c": ()}, "a", "abc", 1)  # fan-out
    with pytest.raises(ValueError):
        check_tree({"a": ("b",), "b": ()}, "a", "abc", 2)  # c not reached
    with pytest.raises(ValueError):
        check_tree({"a": ("b", "c"), "b": ("c",), "c": ()}, "a", "abc", 2)  # c twice


def test_tree_over_points_on_a_plane() -> None:
    """400 peers on a plane, fan-out 3: close to the lower bound (the farthest peer's direct latency)."""
    rng = random.Random(5)
    ids, lat = _plane(rng, 400)
    tree = build_tree("n0", ids, lat, 3)
    check_tree(tree, "n0", ids, 3)
    lower = max(lat[("n0", p)] for p in ids[1:])
    got = max_latency(tree, "n0", lat)
    assert lower <= got <= 1.2 * lower
    arrival = arrival_times(tree, "n0", lat)
    # an arrival is never earlier than the direct path (triangle inequality holds on a plane)
    assert all(arrival[p] >= lat[("n0", p)] - 1e-12 for p in ids[1:])


def test_deterministic_whatever_the_member_order() -> None:
    rng = random.Random(3)
    ids, lat = _plane(rng, 40)
    shuffled = list(ids)
    rng.shuffle(shuffled)
    assert build_tree("n3", ids, lat, 3) == build_tree("n3", shuffled, lat, 3)


def test_avoided_nodes_are_leaves() -> None:
    rng = random.Random(11)
    ids, lat = _plane(rng, 30)
    avoid = set(ids[1:8])
    tree = build_tree("n0", ids, lat, 3, avoid=avoid)
    check_tree(tree, "n0", ids, 3)
    assert all(not tree[a] for a in avoid)


def test_reroute_takes_avoided_nodes_out_and_keeps_other_edges() -> None:
    rng = random.Random(12)
    ids, lat = _plane(rng, 60)
    tree = build_tree("n0", ids, lat, 3)
    relays = [n for n in ids if tree[n] and n != "n0"]
    avoid = set(relays[:4])
    view = reroute(tree, "n0", lat, 3, avoid)
    check_tree(view, "n0", ids, 3)
    assert all(not view[a] for a in avoid)
    old, new = parents_of(tree), parents_of(view)
    moved = {c for c in old if old[c] != new[c]}
    orphans = {c for a in avoid for c in tree[a]} - avoid
    assert orphans <= moved <= orphans | avoid  # only the avoided nodes and their children move
    assert reroute(tree, "n0", lat, 3, avoid) == view  # a function of its inputs: every peer gets the same
    assert reroute(tree, "n0", lat, 3, ["n0"]) == tree  # the origin is never avoided


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_reroute_around_a_quarter_of_failed_relays_is_as_good_as_the_offline_tree(seed: int) -> None:
    """Taking the avoided relays out frees their slots for their orphans (keeping them in place as childless
    leaves, as before, was 1.09-1.49x the offline tree on these graphs)."""
    rng = random.Random(seed)
    ids, lat = _plane(rng, 200)
    avoid = set(rng.sample(ids[1:], 50))
    tree = build_tree("n0", ids, lat, 3)
    view = reroute(tree, "n0", lat, 3, avoid)
    check_tree(view, "n0", ids, 3)
    assert all(not view[a] for a in avoid)
    offline = max_latency(build_tree("n0", ids, lat, 3, avoid=avoid), "n0", lat)
    assert max_latency(view, "n0", lat) <= 1.1 * offline


@pytest.mark.parametrize("kind", ["plane", "arbitrary"])
def test_reparent_is_the_best_single_move_by_brute_force(kind: str) -> None:
    """One peer leaving a failed parent: among every move of its subtree under another node that keeps a valid
    tree within the fan-out and avoids the failed nodes, none reaches it earlier."""
    rng = random.Random(31 if kind == "plane" else 32)
    make = _plane if kind == "plane" else _arbitrary
    checked = 0
    while checked < 60:
        n = rng.randint(3, 7)
        fanout = rng.choice([1, 2, 3])
        ids, lat = make(rng, n)
        tree = build_tree("n0", ids, lat, fanout, improve=False)
        parent = parents_of(tree)
        node = rng.choice(ids[1:])
        if parent[node] == "n0":
            continue
        checked += 1
        avoid = {parent[node]}
        arrival = arrival_times(tree, "n0", lat)
        got = reparent(tree, arrival, node, lat, fanout, avoid)
        best = None
        for p in ids:
            if p == parent[node] or p in avoid or p == node:
                continue
            moved = dict(parent)
            moved[node] = p
            children = {m: tuple(c for c, q in moved.items() if q == m) for m in ids}
            try:
                check_tree(children, "n0", ids, fanout)
            except ValueError:
                continue
            t = arrival_times(children, "n0", lat)[node]
            best = t if best is None else min(best, t)
        if best is None:  # no valid move within the fan-out: it still names a parent outside its subtree
            assert got is None or got not in avoid
            continue
        assert got is not None and got not in avoid
        assert math.isclose(arrival[got] + lat[(got, node)], best)


def test_latency_matrix_lookup_and_cache() -> None:
    m = LatencyMatrix()
    assert m.get("a", "b") == DEFAULT_LATENCY_S
    m.set("a", "b", 0.01)
    assert m.get("b", "a") == 0.01  # the reverse pair when not measured
    m.set("b", "a", 0.02)
    assert (m.get("a", "b"), m.get("b", "a")) == (0.01, 0.02)
    with pytest.raises(ValueError):
        m.set("a", "c", float("nan"))
    members = ("a", "b", "c")
    first = m.tree("a", members, 1, b"k")
    assert m.tree("a", members, 1, b"k") is first
    version = m.version
    m.set("a", "c", 0.001)
    assert m.version == version + 1
    assert m.tree("a", members, 1, b"k") == {"a": ("c",), "b": (), "c": ("b",)}
    based = LatencyMatrix(base=lambda a, b: 0.5)
    assert based.get("x", "y") == 0.5
