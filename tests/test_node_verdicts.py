"""A split decided by judges' verdicts, end to end in one process (ADR 0022): 4 nodes on loopback, scripted
answers and a scripted judge that knows the right answer."""

from __future__ import annotations

import trio

from consensus.messages import Verdict, open_envelope
from multillmn.certificate import verify
from multillmn.genesis import Genesis, Params
from peers.engine import ScriptedEngine
from peers.judge import ScriptedJudge
from peers.node import Decision
from tests.conftest import Net, make_net
from tests.test_node import Q, running


def _split(params: Params) -> tuple[Net, list[ScriptedEngine], str]:
    """Two peers answer "Lyon", two "Paris"; "Lyon" is given to the side today's tie-break picks (the lowest
    peer id's group), so only the judges can decide for "Paris". Every judge knows "Paris" is right."""
    base = make_net([1, 1, 1, 1])
    net = Net(base.keys, Genesis.build("test-chain", [(f"peer{i}", k.public_key, 1) for i, k in enumerate(base.keys)],
                                       params))
    order = sorted(range(4), key=lambda i: net.keys[i].peer_id)
    lyon = {order[0], order[2]}
    engines = [ScriptedEngine({Q: "Lyon" if i in lyon else "Paris"}, model_name=f"m{i}") for i in range(4)]
    for e in engines:
        e.judge = ScriptedJudge({Q: "Paris"})
    return net, engines, "Lyon"


async def _decide(params: Params) -> tuple[Net, Decision]:
    net, engines, _ = _split(params)
    async with running(net, engines) as nodes:
        with trio.fail_after(30):
            decision = await nodes[1].submit(Q)
    return net, decision


async def test_without_a_verdict_rule_the_tie_break_loses_the_split() -> None:
    _, decision = await _decide(Params())
    assert decision.value.answer == "Lyon" and decision.value.verdicts == ()


async def test_the_veto_decides_the_split_for_the_right_side() -> None:
    net, decision = await _decide(Params(verdict_rule="veto"))
    value = decision.value
    assert value.answer == "Paris"
    keys = net.genesis.validators.public_key_of
    verdicts = [open_envelope(Verdict, v, keys).message for v in value.verdicts]
    assert len(verdicts) >= 3  # the omission rule: all but at most 1/3 of the weight heard
    assert any(v < -500 for x in verdicts for _, v in x.verdicts)
    cert = verify(decision.certificate, net.genesis)
    assert cert.answer == "Paris"
