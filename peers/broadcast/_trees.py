"""Broadcast trees from a latency matrix (DRDST's objective): pure functions.

One tree per origin, spanning the committee, with at most ``fanout`` children
per node (the fan-out stands in for a peer's upload bandwidth). The objective
is the *maximum* delivery latency from the origin: the arrival time of a node
is the sum of the one-way latencies along its path from the origin (relays
forward at once; sending to several children is not serialised here, the
fan-out bound is what keeps a relay's upload small).

* :func:`build_tree`: greedy (Prim-like: repeatedly attach the unattached node
  with the smallest arrival time through any attached node with free
  fan-out), then, up to :data:`IMPROVE_MAX_NODES` nodes, local search (move a
  subtree under another parent or between a node and its child, splice one
  node out and put it back elsewhere, swap two nodes' places) while the
  (max, sum) of arrival times decreases; up to :data:`RESTART_MAX_NODES`
  nodes, restarts from greedy trees of perturbed latencies (a fixed seed).
* :func:`reroute`: the same tree with some nodes taken out as relays (peers
  seen failing): they are detached (freeing their parents' slots), their
  children's subtrees re-attached whole, greedily, and they hang as leaves
  last; every other edge is kept, so peers that avoid the same nodes compute
  the same tree, one close to the original.
* :func:`brute_force_best_tree`: exhaustive, for tests and benchmarks on
  small graphs (at most :data:`BRUTE_FORCE_MAX_NODES` nodes).

Ties break on peer ids, so every peer that knows the same matrix computes
the same tree.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, TypeAlias

__all__ = [
    "BRUTE_FORCE_MAX_NODES", "DEFAULT_LATENCY_S", "IMPROVE_MAX_NODES", "MAX_CACHED_TREES", "MAX_CACHED_VIEWS", "RESTARTS", "RESTART_MAX_NODES", "Latency",
    "LatencyMatrix", "Tree", "arrival_times", "brute_force_best_tree", "build_tree", "check_tree",
    "Routed", "latency_function", "max_latency", "parents_of", "reparent", "reroute",
]

DEFAULT_LATENCY_S: Final = 0.1
"""One-way latency assumed for a pair of peers nobody measured (100 ms: a far peer, so it is a relay of last resort)."""
IMPROVE_MAX_NODES: Final = 16
"""Local search runs after the greedy only up to this many nodes (it is O(n^3) per pass)."""
BRUTE_FORCE_MAX_NODES: Final = 7
"""Largest graph :func:`brute_force_best_tree` accepts ((n-1)^(n-1) parent choices: 46,656 at 7)."""
RESTART_MAX_NODES: Final = 10
"""Up to this many nodes, :func:`build_tree` also restarts its local search from perturbed greedy trees."""
RESTARTS: Final = 12
MAX_CACHED_TREES: Final = 256
"""Trees a :class:`LatencyMatrix` keeps (least recently used evicted)."""
MAX_CACHED_VIEWS: Final = 64
"""Rerouted trees a :class:`LatencyMatrix` keeps (peers that share a matrix, as in the simulator, share them)."""

Tree: TypeAlias = dict[str, tuple[str, ...]]
"""Children by node; every node of the tree is a key (a leaf maps to ``()``)."""


@dataclass(frozen=True)
class Routed:
    """A tree with its parent by node and arrival time by node (see :meth:`LatencyMatrix.view`)."""

    tree: Tree
    parent: dict[str, str]
    arrival: dict[str, float]

Latency: TypeAlias = "Callable[[str, str], float] | Mapping[tuple[str, str], float]"


def latency_function(latency: Latency) -> Callable[[str, str], float]:
    """``latency`` as a function; a mapping falls back to the reverse pair, then :data:`DEFAULT_LATENCY_S`."""
    if isinstance(latency, Mapping):
        table = latency

        def lookup(a: str, b: str) -> float:
            value = table.get((a, b))
            if value is None:
                value = table.get((b, a), DEFAULT_LATENCY_S)
            return float(value)

        return lookup
    return latency


class LatencyMatrix:
    """One-way latency estimates between peers, shared by whoever computes trees from them.

    ``get(a, b)``: the entry set for ``(a, b)``, else for ``(b, a)``, else
    ``base(a, b)`` if a base function was given, else ``default``. Setting an
    entry bumps :attr:`version` and drops the cached trees. Entries are set
    by the host (measurements), never by a remote peer's frame.
    """

    def __init__(self, base: Callable[[str, str], float] | None = None,
                 default: float = DEFAULT_LATENCY_S) -> None:
        if not (math.isfinite(default) and default >= 0):
            raise ValueError("default latency must be finite and >= 0")
        self._base = base
        self._default = default
        self._entries: dict[tuple[str, str], float] = {}
        self._trees: OrderedDict[tuple[str, int, bytes], Tree] = OrderedDict()
        self._views: OrderedDict[tuple[str, int, bytes, frozenset[str]], Routed] = OrderedDict()
        self.version = 0
        self.restarts = RESTARTS  # build_tree's; every peer must use the same (a host sets it before any tree)

    def set(self, a: str, b: str, seconds: float) -> None:
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"latency must be finite and >= 0, not {seconds!r}")
        if self._entries.get((a, b)) == seconds:
            return
        self._entries[(a, b)] = float(seconds)
        self.version += 1
        self._trees.clear()
        self._views.clear()

    def copy(self) -> LatencyMatrix:
        """The same entries, base, default and :attr:`version`, without the cached trees (a snapshot to build on)."""
        other = LatencyMatrix(self._base, self._default)
        other._entries = dict(self._entries)
        other.version = self.version
        other.restarts = self.restarts
        return other

    def get(self, a: str, b: str) -> float:
        value = self._entries.get((a, b))
        if value is None:
            value = self._entries.get((b, a))
        if value is None:
            return self._base(a, b) if self._base is not None else self._default
        return value

    __call__ = get

    def __len__(self) -> int:
        return len(self._entries)

    def tree(self, origin: str, members: tuple[str, ...], fanout: int, members_key: bytes) -> Tree:
        """:func:`build_tree` for ``origin``, cached under (origin, fanout, members_key) until the next :meth:`set`."""
        key = (origin, fanout, members_key)
        tree = self._trees.get(key)
        if tree is None:
            tree = build_tree(origin, members, self.get, fanout, restarts=self.restarts)
            self._trees[key] = tree
            while len(self._trees) > MAX_CACHED_TREES:
                self._trees.popitem(last=False)
        else:
            self._trees.move_to_end(key)
        return tree

    def view(self, origin: str, members: tuple[str, ...], fanout: int, members_key: bytes,
             avoid: frozenset[str]) -> Routed:
        """:func:`reroute` of :meth:`tree` around ``avoid`` with its parents and arrival times, cached (at most
        :data:`MAX_CACHED_VIEWS`; peers that share the matrix share them)."""
        key = (origin, fanout, members_key, avoid)
        view = self._views.get(key)
        if view is None:
            tree = self.tree(origin, members, fanout, members_key)
            if avoid:
                tree = reroute(tree, origin, self.get, fanout, avoid)
            view = Routed(tree, parents_of(tree), arrival_times(tree, origin, self.get))
            self._views[key] = view
            while len(self._views) > MAX_CACHED_VIEWS:
                self._views.popitem(last=False)
        else:
            self._views.move_to_end(key)
        return view


def parents_of(tree: Mapping[str, Iterable[str]]) -> dict[str, str]:
    """Parent by node (the origin has none)."""
    return {child: node for node, children in tree.items() for child in children}


def arrival_times(tree: Mapping[str, Iterable[str]], origin: str, latency: Latency) -> dict[str, float]:
    """Arrival time of every node reached from ``origin`` along the tree."""
    lat = latency_function(latency)
    arrival = {origin: 0.0}
    stack = [origin]
    while stack:
        node = stack.pop()
        for child in tree.get(node, ()):
            if child in arrival:
                raise ValueError(f"{child} is reached twice")
            arrival[child] = arrival[node] + lat(node, child)
            stack.append(child)
    return arrival


def max_latency(tree: Mapping[str, Iterable[str]], origin: str, latency: Latency) -> float:
    """The objective: the latest arrival time over the tree."""
    return max(arrival_times(tree, origin, latency).values())


def check_tree(tree: Mapping[str, Iterable[str]], origin: str, members: Iterable[str], fanout: int) -> None:
    """Raise ``ValueError`` unless ``tree`` spans ``members`` from ``origin``, each once, within ``fanout``."""
    nodes = set(members) | {origin}
    for node, children in tree.items():
        if len(tuple(children)) > fanout:
            raise ValueError(f"{node} has more than {fanout} children")
    reached = arrival_times(tree, origin, lambda a, b: 0.0)
    if set(reached) != nodes:
        raise ValueError(f"tree reaches {sorted(set(reached) ^ nodes)} wrongly")


def _grow(origin: str, attached: dict[str, float], counts: dict[str, int], parent: dict[str, str],
          pending: set[str], lat: Callable[[str, str], float], fanout: int, avoid: Collection[str]) -> None:
    """Attach every node of ``pending`` greedily (smallest arrival first); avoided nodes get no children unless nothing else can."""
    for honour_avoid in (True, False):
        heap: list[tuple[float, str, str]] = []
        for p, t in attached.items():
            if counts[p] < fanout and not (honour_avoid and p in avoid):
                heap.extend((t + lat(p, v), v, p) for v in pending)
        heapq.heapify(heap)
        while heap and pending:
            t, v, p = heapq.heappop(heap)
            if v not in pending or counts[p] >= fanout:
                continue
            pending.discard(v)
            attached[v] = t
            counts[v] = 0
            counts[p] += 1
            parent[v] = p
            if fanout > 0 and not (honour_avoid and v in avoid):
                for w in pending:
                    heapq.heappush(heap, (t + lat(v, w), w, v))
        if not pending:
            return
    raise ValueError("no tree with this fan-out spans the members")


def _tree_from_parents(nodes: Iterable[str], parent: Mapping[str, str]) -> Tree:
    children: dict[str, list[str]] = {n: [] for n in nodes}
    for child, p in parent.items():
        children[p].append(child)
    return {n: tuple(sorted(c)) for n, c in sorted(children.items())}


def _score(parent: Mapping[str, str], origin: str, lat: Callable[[str, str], float],
           order: list[str]) -> tuple[float, float] | None:
    """(max, sum) of arrival times; None if ``parent`` has a cycle. ``order``: every non-origin node."""
    arrival: dict[str, float] = {origin: 0.0}
    for start in order:
        path: list[str] = []
        node = start
        while node not in arrival:
            path.append(node)
            node = parent[node]
            if len(path) > len(order):
                return None
        t = arrival[node]
        for n in reversed(path):
            t += lat(parent[n], n)
            arrival[n] = t
    values = arrival.values()
    return max(values), sum(values)


def _arrivals(parent: Mapping[str, str], origin: str, lat: Callable[[str, str], float],
              order: list[str]) -> dict[str, float]:
    arrival: dict[str, float] = {origin: 0.0}
    for start in order:
        path: list[str] = []
        node = start
        while node not in arrival:
            path.append(node)
            node = parent[node]
        t = arrival[node]
        for n in reversed(path):
            t += lat(parent[n], n)
            arrival[n] = t
    return arrival


def _subtree(kids: Mapping[str, list[str]], root: str) -> set[str]:
    sub = {root}
    stack = [root]
    while stack:
        for c in kids[stack.pop()]:
            sub.add(c)
            stack.append(c)
    return sub


def _improve(origin: str, parent: dict[str, str], lat: Callable[[str, str], float], fanout: int,
             avoid: Collection[str], max_passes: int = 50) -> None:
    """Local search in place: best strictly improving re-parenting or swap, until none is left."""
    order = sorted(parent)
    best = _score(parent, origin, lat, order)
    assert best is not None
    for _ in range(max_passes):
        counts = {n: 0 for n in [origin, *order]}
        for p in parent.values():
            counts[p] += 1
        found: tuple[tuple[float, float], dict[str, str]] | None = None
        candidates: list[dict[str, str]] = []
        for v in order:
            for p in [origin, *order]:
                if p in (v, parent[v]) or counts[p] >= fanout or p in avoid:
                    continue
                trial = dict(parent)
                trial[v] = p
                candidates.append(trial)
        arrival = _arrivals(parent, origin, lat, order)
        kids: dict[str, list[str]] = {n: [] for n in [origin, *order]}
        for c in order:
            kids[parent[c]].append(c)
        for v in order:  # move v's subtree between some p and its child c; c hangs below the subtree
            sub = _subtree(kids, v)
            free = [w for w in sub if counts[w] < fanout and w not in avoid]
            if not free:
                continue
            w = min(free, key=lambda x: (arrival[x], x))  # the whole subtree shifts by one constant
            for c in order:
                if c in sub:
                    continue
                trial = dict(parent)
                trial[v] = parent[c]
                trial[c] = w
                candidates.append(trial)
        for v in order:  # splice v out (its children go to its parent), then put it back elsewhere alone
            up = parent[v]
            below = kids[v]
            if counts[up] - 1 + len(below) > fanout:
                continue
            spliced = dict(parent)
            for c in below:
                spliced[c] = up
            left = dict(counts)
            left[up] += len(below) - 1
            left[v] = 0
            for c in order:
                if c != v and (v not in avoid):
                    trial = dict(spliced)
                    trial[v] = spliced[c]
                    trial[c] = v
                    candidates.append(trial)
            for p in [origin, *order]:
                if p != v and left[p] < fanout and p not in avoid:
                    trial = dict(spliced)
                    trial[v] = p
                    candidates.append(trial)
        for u, v in itertools.combinations(order, 2):
            swap = {u: v, v: u}
            trial = {swap.get(c, c): swap.get(p, p) for c, p in parent.items()}
            if avoid and any(p in avoid for p in trial.values()) and not any(p in avoid for p in parent.values()):
                continue
            candidates.append(trial)
        for trial in candidates:
            score = _score(trial, origin, lat, order)
            if score is None:
                continue
            if score[0] < best[0] - 1e-12 or (score[0] <= best[0] + 1e-12 and score[1] < best[1] - 1e-12):
                if found is None or score < found[0]:
                    found = (score, trial)
        if found is None:
            return
        best = found[0]
        parent.clear()
        parent.update(found[1])


def _perturbed(lat: Callable[[str, str], float],
               noise: Mapping[tuple[str, str], float]) -> Callable[[str, str], float]:
    return lambda a, b: lat(a, b) * noise[(a, b)]


def build_tree(origin: str, members: Iterable[str], latency: Latency, fanout: int, *,
               avoid: Collection[str] = (), improve: bool | None = None, restarts: int = RESTARTS) -> Tree:
    """A fan-out-bounded spanning tree rooted at ``origin`` with a small maximum arrival time.

    ``members`` may include the origin or not. Nodes in ``avoid`` get no
    children unless no tree exists otherwise. ``improve`` (default: at most
    :data:`IMPROVE_MAX_NODES` nodes) runs local search after the greedy; up
    to :data:`RESTART_MAX_NODES` nodes it also restarts the search from
    ``restarts`` (:data:`RESTARTS`) greedy trees of perturbed latencies (a fixed seed:
    the result is a function of the inputs) and keeps the best.
    """
    if fanout < 1:
        raise ValueError("fanout must be at least 1")
    lat = latency_function(latency)
    nodes = sorted(set(members) | {origin})
    avoided = frozenset(avoid) - {origin}
    if improve is None:
        improve = len(nodes) <= IMPROVE_MAX_NODES
    starts: list[Callable[[str, str], float]] = [lat]
    if improve and len(nodes) <= RESTART_MAX_NODES:
        rng = random.Random(0)
        for _ in range(restarts):
            noise = {(a, b): rng.uniform(0.5, 1.5) for a in nodes for b in nodes}
            starts.append(_perturbed(lat, noise))
    best: tuple[tuple[float, float], dict[str, str]] | None = None
    order = [n for n in nodes if n != origin]
    for start in starts:
        attached = {origin: 0.0}
        counts = {origin: 0}
        parent: dict[str, str] = {}
        _grow(origin, attached, counts, parent, set(order), start, fanout, avoided)
        if improve and len(nodes) > 2:
            _improve(origin, parent, lat, fanout, avoided)
        score = _score(parent, origin, lat, order) if order else (0.0, 0.0)
        assert score is not None
        if best is None or score < best[0]:
            best = (score, parent)
    assert best is not None
    return _tree_from_parents(nodes, best[1])


def _attach(kids: dict[str, list[str]], arrival: dict[str, float], pending: set[str],
            lat: Callable[[str, str], float], fanout: int, forbidden: Collection[str]) -> None:
    """Hang every root of ``pending`` (with the subtree ``kids`` gives it) under a reached node, earliest arrival
    first; nodes of ``forbidden`` get no new children unless no other slot is left."""
    for honour in (True, False):
        heap = [(t + lat(p, v), v, p) for p, t in arrival.items()
                if len(kids[p]) < fanout and not (honour and p in forbidden) for v in pending]
        heapq.heapify(heap)
        while heap and pending:
            t, v, p = heapq.heappop(heap)
            if v not in pending or len(kids[p]) >= fanout:
                continue
            pending.discard(v)
            kids[p].append(v)
            for w, tw in arrival_times(kids, v, lat).items():
                arrival[w] = t + tw
                if len(kids[w]) < fanout and not (honour and w in forbidden):
                    for x in pending:
                        heapq.heappush(heap, (arrival[w] + lat(w, x), x, w))
        if not pending:
            return
    raise ValueError("no tree with this fan-out spans the members")


def reroute(tree: Mapping[str, Iterable[str]], origin: str, latency: Latency, fanout: int,
            avoid: Collection[str]) -> Tree:
    """``tree`` with the nodes of ``avoid`` taken out as relays (peers seen failing to forward).

    The avoided nodes are detached, which frees their slots at their parents;
    the subtrees of their children are re-attached whole, greedily (earliest
    arrival first) at free slots of the other nodes; then the avoided nodes
    themselves hang as leaves, last. Every edge not into or out of an avoided
    node is kept, so peers that avoid the same set compute the same tree, one
    close to the original. Cost: about (free slots) x (orphans) heap entries.
    """
    nodes = {n: list(c) for n, c in tree.items()}
    avoided = frozenset(avoid) & nodes.keys() - {origin}
    if not avoided:
        return {n: tuple(c) for n, c in tree.items()}
    lat = latency_function(latency)
    orphans = {c for a in avoided for c in nodes[a]} - avoided
    parent = parents_of(tree)
    for a in avoided:
        nodes[a] = []
        up = parent.get(a)
        if up is not None and a in nodes[up]:
            nodes[up].remove(a)
    arrival = arrival_times(nodes, origin, lat)
    _attach(nodes, arrival, orphans, lat, fanout, avoided)
    _attach(nodes, arrival, set(avoided), lat, fanout, avoided)
    return {n: tuple(sorted(c)) for n, c in sorted(nodes.items())}


def reparent(tree: Mapping[str, Iterable[str]], arrival: Mapping[str, float], node: str, latency: Latency,
             fanout: int, avoid: Collection[str]) -> str | None:
    """The parent that gives ``node`` (and the subtree below it, which moves with it) the earliest arrival:
    not in that subtree, not in ``avoid``, with a free slot if any has one; ties by id. None if none is left.

    This is one peer moving itself away from a parent it saw fail, without
    changing anyone else's place: ``arrival`` is the tree's (by
    :func:`arrival_times`).
    """
    lat = latency_function(latency)
    below = {node}
    stack = [node]
    while stack:
        for child in tree.get(stack.pop(), ()):
            below.add(child)
            stack.append(child)
    for need_slot in (True, False):
        best: tuple[float, str] | None = None
        for p, t in arrival.items():
            if p in below or p in avoid or (need_slot and len(tuple(tree.get(p, ()))) >= fanout):
                continue
            cand = (t + lat(p, node), p)
            if best is None or cand < best:
                best = cand
        if best is not None:
            return best[1]
    return None


def brute_force_best_tree(origin: str, members: Iterable[str], latency: Latency,
                          fanout: int) -> tuple[Tree, float]:
    """The optimum by exhaustive search over every parent choice; (tree, max latency). Small graphs only."""
    lat = latency_function(latency)
    nodes = sorted(set(members) | {origin})
    if len(nodes) > BRUTE_FORCE_MAX_NODES:
        raise ValueError(f"brute force is for at most {BRUTE_FORCE_MAX_NODES} nodes")
    others = [n for n in nodes if n != origin]
    if not others:
        return {origin: ()}, 0.0
    choices = [[p for p in nodes if p != v] for v in others]
    best: tuple[float, dict[str, str]] | None = None
    for combo in itertools.product(*choices):
        counts: dict[str, int] = {}
        ok = True
        for p in combo:
            counts[p] = counts.get(p, 0) + 1
            if counts[p] > fanout:
                ok = False
                break
        if not ok:
            continue
        parent = dict(zip(others, combo))
        score = _score(parent, origin, lat, others)
        if score is not None and (best is None or score[0] < best[0]):
            best = (score[0], parent)
    if best is None:
        raise ValueError("no tree with this fan-out spans the members")
    return _tree_from_parents(nodes, best[1]), best[0]
