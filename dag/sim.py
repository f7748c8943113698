"""A deterministic gossip simulator over pure hashgraph nodes (tests and benchmarks).

Each node has a key and its own :class:`Hashgraph`. One step: a node ``a``
(random, or given) pulls from a node ``b`` it can reach (``a`` sends its
known-vector, ``b`` answers with the events ``a`` lacks, and missing parents
are fetched as :mod:`dag.sync` describes), then ``a`` creates an event with
self-parent its latest event and other-parent the latest event by ``b`` that
``a`` holds. Time is a simulated nanosecond clock advanced by a seeded
random amount per step.

Byzantine forkers come in two kinds. ``"random"``: now and then a forker
creates a second event on its previous event's self-parent and carries on
from either branch. ``"split"``: a forker keeps two branches from its second
event on, extends both on every step, and shows branch A to even-numbered
peers and branch B to odd-numbered ones (honest peers relay both).
Partitions restrict who can pull from whom. Every run replays from its seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from consensus.validators import Validator, ValidatorSet
from dag.event import Event, sign_event
from dag.hashgraph import DEFAULT_COIN_PERIOD, Hashgraph
from dag.sync import ancestors_missing, events_missing, known_vector, receive
from multillmn.identity import KeyPair

__all__ = ["SimNode", "GossipSim", "keys_for", "validator_set"]


def keys_for(count: int, seed: int = 0) -> list[KeyPair]:
    """Deterministic keys (seeded, for simulations only)."""
    return [KeyPair.from_seed(bytes([(seed * 31 + i + 1) % 256, i % 256]) + bytes(30)) for i in range(count)]


def validator_set(keys: Sequence[KeyPair], weights: Sequence[int]) -> ValidatorSet:
    return ValidatorSet(Validator(k.peer_id, k.public_key, w, f"n{i}") for i, (k, w) in enumerate(zip(keys, weights)))


@dataclass
class SimNode:
    """One simulated peer: its key, its hashgraph, and what it has inserted and ordered."""

    index: int
    key: KeyPair
    graph: Hashgraph
    head: Event | None = None
    inserted: list[Event] = field(default_factory=list)
    ordered: list[Event] = field(default_factory=list)
    forker: str | None = None
    alt_graph: Hashgraph | None = None
    alt_head: Event | None = None

    def graph_for(self, peer: int) -> Hashgraph:
        return self.alt_graph if self.alt_graph is not None and peer % 2 else self.graph


class GossipSim:
    """Seeded pull-gossip among ``len(weights)`` nodes; see the module docstring."""

    def __init__(self, weights: Sequence[int], seed: int = 0, *, coin_period: int = DEFAULT_COIN_PERIOD,
                 tx_per_event: int = 0, tx_bytes: int = 32, forkers: Sequence[int] = (),
                 fork_mode: str = "random", fork_prob: float = 0.3, verify: bool = False,
                 observers: Sequence[int] | None = None,
                 on_order: Callable[[int, list[Event]], None] | None = None) -> None:
        if fork_mode not in ("random", "split"):
            raise ValueError("fork_mode is 'random' or 'split'")
        self.rng = random.Random(seed)
        self.keys = keys_for(len(weights), seed)
        self.validators = validator_set(self.keys, weights)
        self.tx_per_event = tx_per_event
        self.tx_bytes = tx_bytes
        self.fork_prob = fork_prob
        self.clock = 1_000_000
        self.steps = 0
        self.created: list[Event] = []
        self.groups: list[frozenset[int]] | None = None
        self._on_order = on_order
        self._tracked = set(range(len(weights)) if observers is None else observers)

        def graph() -> Hashgraph:
            return Hashgraph(self.validators, coin_period=coin_period, verify=verify)

        self.nodes = [SimNode(i, k, graph(), forker=fork_mode if i in forkers else None,
                              alt_graph=graph() if i in forkers and fork_mode == "split" else None)
                      for i, k in enumerate(self.keys)]
        for node in self.nodes:
            self._create(node, None, None)

    # --- topology -------------------------------------------------------------
    def partition(self, groups: Sequence[Sequence[int]]) -> None:
        """Only nodes in the same group can sync until :meth:`heal`."""
        self.groups = [frozenset(g) for g in groups]

    def heal(self) -> None:
        self.groups = None

    def _peers_of(self, a: int) -> list[int]:
        if self.groups is None:
            return [i for i in range(len(self.nodes)) if i != a]
        group = next(g for g in self.groups if a in g)
        return sorted(i for i in group if i != a)

    # --- steps -----------------------------------------------------------------
    def step(self, a: int | None = None, b: int | None = None) -> None:
        if a is None:
            a = self.rng.randrange(len(self.nodes))
        if b is None:
            peers = self._peers_of(a)
            if not peers:
                return
            b = self.rng.choice(peers)
        self.steps += 1
        self.clock += self.rng.randrange(1_000, 1_000_000)
        self.sync(a, b)
        node, peer = self.nodes[a], self.keys[b].peer_id
        alt = node.alt_graph.head(peer) if node.alt_graph is not None else None
        self._create(node, node.graph.head(peer), alt)

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.step()

    def sync(self, a: int, b: int) -> None:
        """Node ``a`` pulls what it lacks from node ``b``."""
        dst, src = self.nodes[a], self.nodes[b]
        self._pull(dst, dst.graph, src.graph_for(a))
        if dst.alt_graph is not None:
            self._pull(dst, dst.alt_graph, src.graph_for(a + 1))

    def _pull(self, node: SimNode, dst: Hashgraph, src: Hashgraph) -> None:
        res = receive(dst, events_missing(src, known_vector(dst)))
        self._track(node, dst, res.inserted, res.ordered)
        rounds = 0
        while res.missing:
            rounds += 1
            if rounds > len(self.nodes) + 1:
                raise AssertionError(f"sync did not converge: {len(res.pending)} events pending")
            more = ancestors_missing(src, res.missing, known_vector(dst))
            res = receive(dst, more + res.pending)
            self._track(node, dst, res.inserted, res.ordered)
        if res.rejected:
            raise AssertionError(f"honest sync rejected events: {res.rejected[0][1]}")

    def _track(self, node: SimNode, graph: Hashgraph, inserted: list[Event], ordered: list[Event]) -> None:
        if graph is not node.graph:
            return
        if node.index in self._tracked:
            node.inserted.extend(inserted)
            node.ordered.extend(ordered)
        if ordered and self._on_order is not None:
            self._on_order(node.index, ordered)

    def _insert(self, node: SimNode, graph: Hashgraph, ev: Event) -> None:
        self._track(node, graph, [ev], graph.insert(ev))

    def _txs(self) -> list[bytes]:
        return [self.rng.randbytes(self.tx_bytes) for _ in range(self.tx_per_event)]

    def _next(self, node: SimNode, head: Event | None, other: Event | None, bump: int = 0) -> Event:
        if head is None:
            return sign_event(node.key, seq=0, self_parent=None, other_parent=None, timestamp=self.clock,
                              transactions=self._txs())
        op = other.hash if other is not None and other.creator != node.key.peer_id else None
        return sign_event(node.key, seq=head.seq + 1, self_parent=head.hash, other_parent=op,
                          timestamp=max(self.clock, head.timestamp + 1) + bump, transactions=self._txs())

    def _create(self, node: SimNode, other: Event | None, other_alt: Event | None) -> None:
        head = node.head
        ev = self._next(node, head, other)
        if node.alt_graph is not None:  # split forker: extend branch B in its own view too
            alt = ev if head is None else self._next(node, node.alt_head, other_alt, bump=1)
            self.created.append(alt)
            self._insert(node, node.alt_graph, alt)
            node.alt_head = alt
            if alt is not ev:
                self.created.append(ev)
            self._insert(node, node.graph, ev)
            node.head = ev
            return
        if node.forker and head is not None and head.self_parent is not None and self.rng.random() < self.fork_prob:
            sp = node.graph.get(head.self_parent)
            assert sp is not None
            twin = self._next(node, sp, other, bump=1)
            if twin.hash != head.hash:
                self.created.append(twin)
                self._insert(node, node.graph, twin)
                if self.rng.random() < 0.5:
                    node.head = twin
                    return
        self.created.append(ev)
        self._insert(node, node.graph, ev)
        node.head = ev
