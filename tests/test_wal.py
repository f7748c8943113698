"""The consensus WAL: records survive a crash, a torn tail is dropped, a restarted runner never re-votes."""

from __future__ import annotations

from pathlib import Path

from consensus.messages import Proposal, Vote, sign
from consensus.driver import CoreTimeout, Send, TimerFired
from consensus.state_machine import BroadcastVote, ProposalInput, ProposeValue, Start, TimeoutInput, VoteInput
from multillmn.config import PeerConfig
from peers.engine import ScriptedEngine
from peers.node import Node
from peers.transport import Transport
from peers.wal import ConsensusWal
from tests.conftest import Net, make_net


def _proposal(net: Net, height: int = 1) -> ProposalInput:
    value = net.value(["Paris"] * 4)
    proposer = net.genesis.validators.proposer(height, 0)
    key = next(k for k in net.keys if k.peer_id == proposer)
    return ProposalInput(sign(Proposal(height=height, round=0, valid_round=-1, value=value, proposer=proposer), key),
                         valid=True)


def test_records_round_trip_and_a_torn_tail_is_dropped(tmp_path: Path) -> None:
    net = make_net([1, 1, 1, 1])
    prop = _proposal(net)
    vote = VoteInput(sign(Vote(type="prevote", height=1, round=0, value_id=prop.signed.message.value.value_id(),
                               voter=net.keys[1].peer_id), net.keys[1]))
    inputs = [Start(), prop, vote, TimeoutInput(1, 0, "prevote"), ProposeValue(1, 1, prop.signed.message.value)]
    wal = ConsensusWal(tmp_path / "c.wal")
    for inp in inputs:
        wal.append(1, inp)
    wal.close()
    with open(tmp_path / "c.wal", "ab") as f:
        f.write(b"\x00\x00\x01\x00torn")  # a crash in the middle of a write
    again = ConsensusWal(tmp_path / "c.wal")
    records = again.records(net.genesis.validators.public_key_of)
    assert [inp for _, inp in records] == inputs and {h for h, _ in records} == {1}
    again.append(1, Start())  # same height: appended after the intact records
    assert len(again.records(net.genesis.validators.public_key_of)) == len(inputs) + 1
    again.append(2, Start())  # a new height truncates
    assert again.records(net.genesis.validators.public_key_of) == [(2, Start())]
    again.close()


def test_a_restarted_runner_resumes_its_height_with_its_votes_and_does_not_vote_again(tmp_path: Path) -> None:
    net = make_net([1, 1, 1, 1])
    me = next(k for k in net.keys if k.peer_id != net.genesis.validators.proposer(1, 0))
    prop = _proposal(net)
    my_prevote = sign(Vote(type="prevote", height=1, round=0, value_id=prop.signed.message.value.value_id(),
                           voter=me.peer_id), me)
    wal = ConsensusWal(tmp_path / "c.wal")
    for inp in (Start(), prop, VoteInput(my_prevote)):
        wal.append(1, inp)
    wal.close()

    def node() -> Node:
        transport = Transport(me, ("127.0.0.1", 0), {k.peer_id: None for k in net.keys})
        return Node(PeerConfig.for_tests(), me, net.genesis, ScriptedEngine({}), transport,
                    wal=ConsensusWal(tmp_path / "c.wal"))

    restarted = node()
    core = restarted.driver.core
    assert (core.height, core.round, core.step_name) == (1, 0, "prevote")
    assert restarted.driver.own_messages() == [my_prevote]  # ready to be sent again if the height is stuck
    # the propose timeout of round 0 fires again after the restart: no second prevote is signed
    effects = restarted.driver.handle(TimerFired(CoreTimeout(1, 0, "propose")), 0)
    assert restarted.wal is not None
    restarted.wal.close()
    assert not [e for e in effects if isinstance(e, Send) and isinstance(e.signed.message, Vote)]
