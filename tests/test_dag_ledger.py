"""Ledger state from ordered transactions: validation, counting of ignored ones, hashing, paging, snapshots."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dag import (Event, Ledger, certificate_tx, encode_event, evidence_tx, fork_evidence_tx, membership_tx,
                 sign_event, weights_tx)
from dag.ledger import MAX_PAGE
from dag.sim import GossipSim, keys_for
from multillmn import canonical
from multillmn.certificate import build_certificate, verify
from tests.conftest import make_net

KEY = keys_for(1, seed=40)[0]
P1, P2 = "1" * 40, "2" * 40


def events(*batches: list[bytes]) -> list[Event]:
    out: list[Event] = []
    for i, txs in enumerate(batches):
        sp = out[-1].hash if out else None
        out.append(sign_event(KEY, seq=i, self_parent=sp, other_parent=None, timestamp=i + 1, transactions=txs))
    return out


def cert(height: int, value_id: str = "ab" * 32) -> bytes:
    return json.dumps({"height": height, "value_id": value_id}).encode()


def test_each_type_applies_and_invalid_ones_are_ignored_and_counted() -> None:
    member = keys_for(3, seed=41)[2]
    txs = [
        certificate_tx(1, cert(1)),
        certificate_tx(1, cert(1)),                       # duplicate
        certificate_tx(1, cert(1, "cd" * 32)),            # conflicting
        certificate_tx(2, cert(3)),                       # height mismatch
        certificate_tx(4, b"{not json"),
        weights_tx(2, {P2: 3, P1: 1}),
        weights_tx(2, {P1: 9}),                           # duplicate height
        weights_tx(3, {P1: 0}),
        evidence_tx("equivocation", P1, b"proof"),
        evidence_tx("equivocation", P1, b"proof"),                # duplicate
        membership_tx("join", member.peer_id, member.public_key),
        membership_tx("join", P1, member.public_key),     # id does not match key
        membership_tx("leave", P2, member.public_key),
        canonical.pack({"type": "mint", "amount": 5}),
        canonical.pack({"type": "weights", "height": 1}),
        b"\xc1garbage",
        canonical.pack([1, 2]),
    ]
    led = Ledger()
    batch = events(txs[:6], txs[6:])
    assert led.apply(batch) == 4
    assert led.answers == {1: cert(1)}
    assert led.weights == {2: {P1: 1, P2: 3}} and led.weights_at(5) == {P1: 1, P2: 3}
    assert led.weights_at(1) is None
    assert led.evidence == [{"type": "evidence", "kind": "equivocation", "peer_id": P1, "data": b"proof"}]
    assert led.membership == {member.peer_id: member.public_key}
    assert led.ignored == {
        "duplicate certificate": 1, "conflicting certificate": 1, "bad certificate": 2, "duplicate weights": 1,
        "bad weights": 1, "duplicate evidence": 1, "bad membership": 2, "unknown type": 1, "bad fields": 1,
        "malformed": 2,
    }
    assert led.position == len(txs) and len(led) == 4
    assert [(e.index, e.position, e.type, e.event_hash) for e in led.page(0, 10)] == [
        (0, 0, "certificate", batch[0].hash), (1, 5, "weights", batch[0].hash),
        (2, 8, "evidence", batch[1].hash), (3, 10, "membership", batch[1].hash)]
    assert led.page(1, 1)[0].tx == txs[5]


def test_leave_and_paging() -> None:
    member = keys_for(3, seed=42)[1]
    led = Ledger()
    led.apply(events([membership_tx("join", member.peer_id, member.public_key)] + [
        certificate_tx(h, cert(h)) for h in range(1, 30)], [membership_tx("leave", member.peer_id, member.public_key)]))
    assert led.membership == {} and len(led) == 31
    page = led.page(5, 10)
    assert [e.index for e in page] == list(range(5, 15)) and all(e.type == "certificate" for e in page)
    assert led.page(30, 10)[0].type == "membership" and led.page(31, 10) == []
    assert len(led.page(0, 10**6)) == min(31, MAX_PAGE)
    for bad in ((-1, 1), (0, -1), (True, 1)):
        with pytest.raises(ValueError):
            led.page(*bad)


def test_state_hash_is_deterministic_and_snapshots_round_trip() -> None:
    sim = GossipSim([1, 1, 1], seed=43, observers=[0], tx_per_event=2)  # random bytes: counted as malformed
    sim.run(60)
    ordered = sim.nodes[0].ordered
    assert ordered
    led1, led2 = Ledger(), Ledger()
    batch = events([certificate_tx(1, cert(1)), weights_tx(2, {P1: 2}), evidence_tx("equivocation", P2, b"x")])
    for led in (led1, led2):
        led.apply(batch)
        led.apply(ordered)
    assert led1.state_hash() == led2.state_hash()
    assert led1.ignored == {"malformed": 2 * len(ordered)}
    same = Ledger()  # the same state reached through another order of the same transactions
    same.apply(events([weights_tx(2, {P1: 2}), certificate_tx(1, cert(1)), evidence_tx("equivocation", P2, b"x")]))
    same.apply(ordered)
    assert same.state_hash() == led1.state_hash()
    fewer = Ledger()
    fewer.apply(batch)
    assert fewer.state_hash() != led1.state_hash()
    restored = Ledger.restore(led1.snapshot())
    assert restored.state_hash() == led1.state_hash() and restored.page(0, 100) == led1.page(0, 100)
    restored.apply(events([certificate_tx(1, cert(1))]))  # duplicate detection survives restore
    assert restored.ignored["duplicate certificate"] == 1
    with pytest.raises(ValueError, match="snapshot"):
        Ledger.restore(b"\x93garbage")


def test_certificate_check_verifies_real_certificates() -> None:
    net = make_net([1, 1, 1, 1])
    value = net.value(["Paris", "Paris", "Paris", "Berlin"])
    good = build_certificate(net.genesis, 7, 0, value, tuple(net.precommit(i, 7, 0, value) for i in range(3)))
    weak = build_certificate(net.genesis, 8, 0, value, tuple(net.precommit(i, 8, 0, value) for i in range(2)))

    def check(c: Any) -> None:
        verify(c, net.genesis)

    led = Ledger(certificate_check=check)
    led.apply(events([certificate_tx(7, json.dumps(good).encode()), certificate_tx(8, json.dumps(weak).encode())]))
    assert list(led.answers) == [7] and led.ignored == {"unverified certificate": 1}


def test_fork_evidence_is_checked_and_kept_once_per_fork() -> None:
    sim = GossipSim([1, 1, 1, 1], seed=44, forkers=[2], observers=())
    sim.run(120)
    evidence = sim.nodes[0].graph.fork_evidence
    assert len(evidence) >= 2
    first = evidence[0]
    later = next(e for e in evidence if e.seq != first.seq)
    forged = Event(first.second.creator, first.second.seq, first.second.self_parent, first.second.other_parent,
                   first.second.timestamp + 1, (), bytes(64))
    other_creator = sim.nodes[0].graph.head(sim.keys[0].peer_id)
    assert other_creator is not None
    led = Ledger(public_key_of=sim.validators.public_key_of)
    led.apply(events([
        fork_evidence_tx(first),
        evidence_tx("fork", first.creator, canonical.pack([encode_event(first.second), encode_event(first.first)])),
        fork_evidence_tx(later),
        evidence_tx("fork", first.creator, canonical.pack([encode_event(first.first), encode_event(forged)])),
        evidence_tx("fork", first.creator, canonical.pack([encode_event(first.first)] * 2)),
        evidence_tx("fork", first.creator, canonical.pack([encode_event(first.first), encode_event(other_creator)])),
        evidence_tx("fork", first.creator, b"junk"),
        certificate_tx(1, b"[" * 200_000),
    ]))
    assert [canonical.unpack(e["data"])[0] for e in led.evidence] == [
        sorted((encode_event(x.first), encode_event(x.second)))[0] for x in (first, later)]
    assert led.ignored == {"duplicate evidence": 1, "bad evidence": 4, "bad certificate": 1}
    assert Ledger.restore(led.snapshot()).state_hash() == led.state_hash()


def test_a_ledger_with_a_chain_derives_weights_in_height_order_and_flags_a_wrong_set() -> None:
    from consensus import grouping
    from consensus.chain import Chain
    from consensus.weights import WeightParams
    from consensus.validators import Validator, ValidatorSet

    net = make_net([1, 1, 1, 1])
    vs = net.genesis.validators
    certs = []
    for h in (1, 2, 3):
        value = net.value(["Paris", "Paris", "Paris", "Paris"], net.query(f"q{h}?"))
        certs.append(build_certificate(net.genesis, h, 0, value, tuple(net.precommit(i, h, 0, value) for i in range(3))))
    forged = ValidatorSet(Validator(v.peer_id, v.public_key, w, v.moniker) for v, w in zip(vs, [9, 1, 1, 1]))
    certs[2]["validators"] = [{"peer_id": v.peer_id, "public_key": v.public_key.hex(), "weight": v.weight,
                               "moniker": v.moniker} for v in forged]
    led = Ledger(chain=Chain(vs, WeightParams.for_tests()))
    txs = [certificate_tx(c["height"], json.dumps(c).encode()) for c in (certs[1], certs[2], certs[0])]
    led.apply(events(txs))
    assert sorted(led.answers) == [1, 2, 3]  # ordered 2, 3, 1: folded 1, 2, 3
    assert led.weights_at(3) == {v.peer_id: v.weight for v in vs}
    assert led.ignored == {"certificate set differs": 1}
    assert led.apply(events([weights_tx(5, {vs.ids[0]: 7})])) == 0  # weights are derived, never declared
    assert led.ignored["derived weights"] == 1
    restored = Ledger.restore(led.snapshot(), chain=Chain(vs, WeightParams.for_tests()))
    assert restored.state_hash() == led.state_hash()


def test_ordered_vote_evidence_reaches_the_host_so_its_values_carry_it() -> None:
    """Evidence another peer caught and ordered on the ledger is handed to ``on_evidence`` (the node puts it
    in its driver's evidence pool); malformed or other kinds of evidence are kept but not handed on."""
    from consensus.evidence import from_equivocation
    from consensus.state_machine import Equivocation

    net = make_net([1, 1, 1, 1])
    a, b = net.value(["Paris"] * 4), net.value(["Lyon"] * 4)
    ev = from_equivocation(Equivocation(net.precommit(0, 1, 0, a), net.precommit(0, 1, 0, b)))
    led = Ledger()
    handed: list[Any] = []
    led.on_evidence = handed.append
    led.apply(events([evidence_tx(ev.KIND, net.keys[0].peer_id, canonical.pack(ev.body())),
                      evidence_tx(ev.KIND, P1, b"\xc1not msgpack"), evidence_tx("equivocation", P2, b"proof")]))
    assert len(led.evidence) == 3
    assert handed == [ev]
