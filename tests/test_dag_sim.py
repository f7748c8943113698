"""Simulated gossip networks: agreement, forking creators, partitions and weights.

Every scenario is a seeded :class:`dag.sim.GossipSim`; a failure names its seed.
"""

from __future__ import annotations

import pytest

from dag import verify_event
from dag.sim import GossipSim


def honest(sim: GossipSim) -> list[int]:
    return [n.index for n in sim.nodes if n.forker is None]


def assert_agreement(sim: GossipSim, nodes: list[int] | None = None) -> int:
    """Every pair of the nodes' orders is prefix-consistent; return the shortest order length."""
    orders = [[e.hash for e in sim.nodes[i].ordered] for i in (nodes or honest(sim))]
    shortest = min(len(o) for o in orders)
    longest = max(orders, key=len)
    for o in orders:
        assert o == longest[:len(o)], "orders diverge"
    for i in nodes or honest(sim):  # and each node's order is its graph's order, with no duplicates
        assert [e.hash for e in sim.nodes[i].ordered] == sim.nodes[i].graph.order_hashes()
        assert len(set(sim.nodes[i].graph.order_hashes())) == sim.nodes[i].graph.ordered_count
    return shortest


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("weights", [[1, 1, 1, 1], [5, 1, 1, 1], [3, 1, 2, 1, 2, 1, 1]])
def test_all_nodes_agree_on_the_order_prefix(weights: list[int], seed: int) -> None:
    sim = GossipSim(weights, seed=seed)
    sim.run(60 * len(weights))
    ordered = assert_agreement(sim)
    assert ordered > 20 * len(weights), f"seed {seed}: only {ordered} events ordered"
    # Every ordered event is ordered once; events by every creator get ordered.
    creators = {e.creator for e in sim.nodes[0].ordered}
    assert creators == set(sim.validators.ids)


@pytest.mark.parametrize("mode,weights,forker", [
    ("random", [1, 1, 1, 1], 1),
    ("split", [1, 1, 1, 1], 3),
    ("split", [5, 1, 1, 1], 2),
    ("random", [2, 2, 2, 1, 1, 1], 4),
])
@pytest.mark.parametrize("seed", [11, 12])
def test_forkers_below_one_third_keep_agreement_and_leave_evidence(
        mode: str, weights: list[int], forker: int, seed: int) -> None:
    sim = GossipSim(weights, seed=seed, forkers=[forker], fork_mode=mode, coin_period=4)
    assert 3 * weights[forker] < sum(weights)
    sim.run(350)
    ordered = assert_agreement(sim)
    assert ordered > 100, f"seed {seed}: only {ordered} events ordered"
    forker_id = sim.keys[forker].peer_id
    for i in honest(sim):
        graph = sim.nodes[i].graph
        assert graph.forkers == {forker_id}
        evidence = graph.fork_evidence
        assert evidence
        for ev in evidence:
            assert ev.first.creator == ev.second.creator == forker_id
            assert ev.first.seq == ev.second.seq and ev.first.hash != ev.second.hash
            assert verify_event(ev.first, sim.validators.public_key_of) is None
            assert verify_event(ev.second, sim.validators.public_key_of) is None
        assert graph.take_evidence() == list(evidence) and graph.take_evidence() == []


@pytest.mark.parametrize("weights,groups,ordering_group", [
    ([1, 1, 1, 1], [[0, 1], [2, 3]], None),          # each side 1/2: both stall
    ([5, 1, 1, 1], [[0], [1, 2, 3]], None),          # heavy alone 5/8, the rest 3/8: both stall
    ([5, 1, 1, 1], [[0, 1], [2, 3]], 0),             # 6/8 > 2/3 keeps ordering, 2/8 stalls
    ([1, 1, 1, 1, 1, 1, 1], [[0, 1, 2, 3], [4, 5, 6]], None),  # 4/7 and 3/7
])
def test_partition_with_a_third_or_more_stalls_then_resumes(
        weights: list[int], groups: list[list[int]], ordering_group: int | None) -> None:
    sim = GossipSim(weights, seed=21)
    sim.run(30 * len(weights))
    sim.partition(groups)
    sim.run(40 * len(weights))  # rounds already under way may still finish
    settled = [n.graph.ordered_count for n in sim.nodes]
    sim.run(80 * len(weights))
    after = [n.graph.ordered_count for n in sim.nodes]
    for g, members in enumerate(groups):
        for i in members:
            if g == ordering_group:
                assert after[i] > settled[i] + 50, f"node {i} should keep ordering"
            else:
                assert after[i] == settled[i], f"node {i} ordered while partitioned without a quorum"
    assert_agreement(sim)
    sim.heal()
    sim.run(80 * len(weights))
    healed = [n.graph.ordered_count for n in sim.nodes]
    assert all(h > a + 30 for h, a in zip(healed, after)), (after, healed)
    assert assert_agreement(sim) > max(after)


def test_weights_decide_who_can_order_alone() -> None:
    """With weights 5,1,1,1 the heavy node plus any one other holds more than 2/3: they order alone."""
    sim = GossipSim([5, 1, 1, 1], seed=31)
    sim.partition([[0, 3], [1, 2]])
    sim.run(200)
    assert sim.nodes[0].graph.ordered_count > 50 and sim.nodes[3].graph.ordered_count > 50
    assert sim.nodes[1].graph.ordered_count == sim.nodes[2].graph.ordered_count == 0
    # The three light nodes together (3/8) never leave round 1 among themselves.
    light = GossipSim([5, 1, 1, 1], seed=32)
    light.partition([[0], [1, 2, 3]])
    light.run(200)
    assert all(light.nodes[i].graph.max_round == 1 for i in (1, 2, 3))
    assert_agreement(sim)
