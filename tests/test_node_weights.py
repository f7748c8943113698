"""Weights in the running network: score vectors gossiped, carried in values, folded on every peer alike."""

from __future__ import annotations

import trio

from multillmn.certificate import verify
from peers.engine import ScriptedEngine
from peers.ledger import value_of_certificate
from tests.conftest import make_net
from tests.test_node import _wait_height, running

QUESTIONS = [f"What is {i} + {i}?" for i in range(10)]


def engine(i: int, wrong: bool) -> ScriptedEngine:
    return ScriptedEngine({q: ("no idea" if wrong else str(2 * k)) for k, q in enumerate(QUESTIONS)},
                          model_name=f"m{i}")


async def test_a_consistent_liar_loses_weight_identically_on_every_peer() -> None:
    net = make_net([1, 1, 1, 1])
    liar = net.keys[3].peer_id
    async with running(net, [engine(i, wrong=i == 3) for i in range(4)]) as nodes:
        with trio.fail_after(90):
            decisions = [await nodes[k % 3].submit(q) for k, q in enumerate(QUESTIONS)]
            await _wait_height(nodes, len(QUESTIONS) + 1)
        digests = {n.driver.chain.weights_digest() for n in nodes}
        final = nodes[0].validators
    assert all(d.value.answer == str(2 * k) for k, d in enumerate(decisions))
    assert len(digests) == 1  # every peer folded the same committed data into the same weights
    assert 10 * final.weight_of(liar) <= final.total  # from 1/4 to the 1/10 the cap leaves it
    carried = [value_of_certificate(d.certificate) for d in decisions]
    assert sum(len(v.scores) for v in carried if v is not None) >= 3 * (len(QUESTIONS) - 2)  # vectors ride in later values
    last = verify(decisions[-1].certificate, net.genesis)
    assert last.total_weight == final.total != net.genesis.validators.total  # the height's own set
