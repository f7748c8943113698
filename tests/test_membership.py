"""Membership on the chain: epochs, joins, leaves, removal of absent members, the admission cap, the record."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import pytest

from consensus import grouping
from consensus.chain import Chain
from consensus.membership import MembershipParams
from consensus.messages import (
    Answer,
    Envelope,
    Join,
    Leave,
    MessageError,
    Query,
    Signed,
    Value,
    Vote,
    open_envelope,
    query_id_of,
    sign,
)
from consensus.scores import ScoreVector
from consensus.weights import WeightParams
from multillmn.identity import KeyPair
from tests.conftest import make_net

PARAMS = WeightParams.for_tests()
EPOCH = 4
CHAIN = "test-chain"


class Net:
    """A chain with membership and every key that may sign on it (members and would-be members)."""

    def __init__(self, n: int = 4, **membership: object) -> None:
        base = make_net([1] * n)
        self.keys = {k.peer_id: k for k in base.keys}
        self.chain = Chain(base.genesis.validators, PARAMS, chain_id=CHAIN,
                           membership=MembershipParams(epoch_length=EPOCH, **membership))  # type: ignore[arg-type]

    def joiner(self, seed: int, *, model: str = "m", address: str | None = None, created_ms: int = 1) -> Signed[Join]:
        key = KeyPair.from_seed(bytes([200, seed % 256]) * 16)
        self.keys[key.peer_id] = key
        return sign(Join(chain_id=CHAIN, peer_id=key.peer_id, public_key=key.public_key, moniker=f"new{seed}",
                         address=address or f"10.1.{seed // 250}.{seed % 250}:26656", model=model,
                         created_ms=created_ms), key)

    def leave(self, peer: str, created_ms: int = 2) -> Signed[Leave]:
        return sign(Leave(chain_id=CHAIN, peer_id=peer, created_ms=created_ms), self.keys[peer])

    def value(self, height: int, *, joins: Sequence[Signed[Join]] = (), leaves: Sequence[Signed[Leave]] = (),
              absent: Sequence[str] = (), gen_ms: int = 50, scores: Sequence[Envelope] = ()) -> Value:
        """A value for ``height`` answered by every member; ``absent`` members' precommits of the last
        height are missing from its last commit."""
        chain = self.chain
        vs = chain.validators_at(height)
        entry = self.keys[vs.ids[0]]
        query = sign(Query(entry=entry.peer_id, question=f"q{height}?", nonce=height.to_bytes(16, "big"),
                           max_tokens=8, created_ms=0), entry)
        answers = [sign(Answer(query_id=query_id_of(query.envelope), peer=p, model="m", text="Paris",
                               gen_ms=gen_ms + i), self.keys[p]) for i, p in enumerate(vs.ids)]
        commit: tuple[Envelope, ...] = ()
        if height > 1:
            assert chain.last_set is not None
            commit = tuple(sign(Vote(chain_id=CHAIN, type="precommit", height=height - 1, round=0,
                                     value_id=chain.last_value_id, voter=p), self.keys[p]).envelope
                           for p in chain.last_set.ids if p not in absent)
        return grouping.build_value(
            query.envelope, answers, [1000] * grouping.pair_count(len(answers)), [vs.weight_of(p) for p in vs.ids],
            800, validators_hash=vs.set_hash(), next_validators_hash=chain.validators_at(height + 1).set_hash(),
            chain_id=CHAIN, joins=[j.envelope for j in joins], leaves=[x.envelope for x in leaves],
            last_commit=commit, scores=scores)

    def decide(self, height: int, **extras: object) -> Value:
        value = self.value(height, **extras)  # type: ignore[arg-type]
        assert self.chain.check_extras(value, height) is None
        self.chain.apply(height, value)
        return value

    def run(self, heights: range, **extras: object) -> None:
        for h in heights:
            self.decide(h, **extras)


def test_a_join_committed_by_b_minus_delay_takes_effect_at_boundary_b_with_a_capped_median_weight() -> None:
    net = Net()
    j = net.joiner(1)
    net.decide(1, joins=[j])
    net.run(range(2, 5))
    before, after = net.chain.validators_at(4), net.chain.validators_at(5)
    assert j.message.peer_id not in before and j.message.peer_id in after
    assert len(after) == 5 and after.total == PARAMS.scale
    # the median of the staying shares is 1/4; the admission cap (1/10 of the total) binds
    assert after.weight_of(j.message.peer_id) == PARAMS.scale // 10
    assert after.get(j.message.peer_id).moniker == "new1"  # type: ignore[union-attr]
    assert net.chain.state is not None and net.chain.state.trust_of(j.message.peer_id) == PARAMS.initial_trust
    # height 4's value already committed to the new set (its next_validators_hash), as precommits attest
    assert net.value(5).validators_hash == after.set_hash()


def test_a_join_committed_later_than_b_minus_delay_waits_for_the_next_boundary() -> None:
    net = Net()
    net.run(range(1, 4))
    j = net.joiner(2)
    net.decide(4, joins=[j])
    net.run(range(5, 9))
    assert j.message.peer_id not in net.chain.validators_at(8)
    assert j.message.peer_id in net.chain.validators_at(9)


def test_a_flood_of_joiners_gains_at_most_the_admission_share_per_epoch() -> None:
    net = Net()
    sybils = [net.joiner(k) for k in range(30)]
    net.decide(1, joins=sybils[:16])
    net.decide(2, joins=sybils[16:])
    shares = []
    for epoch in range(1, 7):
        net.run(range(max(3, EPOCH * (epoch - 1) + 1), EPOCH * epoch + 1))
        vs = net.chain.validators_at(EPOCH * epoch + 1)
        shares.append(Fraction(vs.weight_of_set(s.message.peer_id for s in sybils if s.message.peer_id in vs),
                               vs.total))
    for k, share in enumerate(shares, start=1):
        assert share <= 1 - Fraction(9, 10) ** k + Fraction(1, 100)  # rounding of the integer weights
    assert shares[2] < Fraction(1, 3) <= shares[3]  # three epochs are not enough to reach a third


def test_a_leave_takes_effect_at_the_boundary_and_a_second_one_is_refused() -> None:
    net = Net()
    leaver = net.chain.validators_at(1).ids[3]
    net.decide(1, leaves=[net.leave(leaver)])
    second = net.value(2, leaves=[net.leave(leaver, created_ms=3)])
    assert "already-requested" in (net.chain.check_extras(second, 2) or "")
    net.run(range(2, 5))
    assert leaver in net.chain.validators_at(4) and leaver not in net.chain.validators_at(5)
    assert len(net.chain.validators_at(5)) == 3 and net.chain.validators_at(5).total == PARAMS.scale


def test_a_member_missing_more_than_max_missed_of_the_epoch_is_removed() -> None:
    net = Net(n=7)
    ids = net.chain.validators_at(1).ids
    absent, sometimes = ids[2], ids[3]
    net.decide(1)
    net.decide(2, absent=[absent])  # height 1: one missed of one known
    net.decide(3, absent=[absent, sometimes])  # height 2
    net.decide(4, absent=[absent])
    vs = net.chain.validators_at(5)  # fixed at height 3: heights 1-2 known, absent missed 2 of 2, sometimes 1 of 2
    assert absent not in vs and sometimes in vs and len(vs) == 6
    record = net.chain.members.stability([absent, sometimes])  # type: ignore[union-attr]
    assert record[absent]["epochs"]["0"]["missed"] == 3 and record[sometimes]["epochs"]["0"]["missed"] == 1


def test_members_never_fall_below_min_validators() -> None:
    net = Net(n=2, min_validators=2)
    a, b = net.chain.validators_at(1).ids
    net.decide(1, leaves=[net.leave(a)])
    net.run(range(2, 6))
    assert set(net.chain.validators_at(5).ids) == {a, b}


@pytest.mark.parametrize("case, reason", [
    ("member", "already-member"), ("twice", "already-requested"), ("model", "unknown-model"),
    ("chain", "wrong-chain"), ("address", "address-taken"),
])
def test_bad_joins_are_refused_with_their_reason(case: str, reason: str) -> None:
    net = Net(models=("m",))
    first = net.joiner(7)
    net.decide(1, joins=[first])
    member = net.chain.validators_at(2).ids[0]
    bad: Signed[Join]
    if case == "member":
        key = net.keys[member]
        bad = sign(Join(chain_id=CHAIN, peer_id=member, public_key=key.public_key, moniker="again",
                        address="10.2.0.1:26656", model="m", created_ms=5), key)
    elif case == "twice":
        bad = net.joiner(7, created_ms=9)
    elif case == "model":
        bad = net.joiner(8, model="gpt-9")
    elif case == "chain":
        j = net.joiner(9)
        bad = sign(j.message.model_copy(update={"chain_id": "other"}), net.keys[j.message.peer_id])
    else:
        bad = net.joiner(10, address=first.message.address)
    assert reason in (net.chain.join_reason(bad.message, 2) or "")
    assert reason in (net.chain.check_extras(net.value(2, joins=[bad]), 2) or "")
    digest = net.chain.weights_digest()
    net.decide(2)  # nothing committed changed
    assert net.chain.members is not None and list(net.chain.members.joins) == [first.message.peer_id]
    assert digest is not None


def test_a_join_with_a_bad_signature_or_a_malformed_address_does_not_open() -> None:
    net = Net()
    j = net.joiner(3)
    forged = Envelope(body=j.envelope.body, sig=bytes(64))
    with pytest.raises(MessageError, match="signature"):
        open_envelope(Join, forged, lambda _: None)
    other = KeyPair.from_seed(b"\x09" * 32)  # carries another key than the one its id names
    mismatched = j.message.model_copy(update={"public_key": other.public_key})
    body = mismatched.canonical()
    with pytest.raises(MessageError, match="unknown peer"):
        open_envelope(Join, Envelope(body=body, sig=other.sign("join", body)), lambda _: None)
    with pytest.raises(ValueError):
        Join(chain_id=CHAIN, peer_id=j.message.peer_id, public_key=j.message.public_key, moniker="x",
             address="not an address", model="m", created_ms=1)
    assert "join 0" in (net.chain.check_extras(net.value(1).model_copy(update={"joins": (forged,)}), 1) or "")


def test_an_old_join_replayed_after_its_peer_left_is_refused() -> None:
    net = Net()
    j = net.joiner(4, created_ms=10)
    net.decide(1, joins=[j])
    net.run(range(2, 6))
    peer = j.message.peer_id
    net.decide(6, leaves=[net.leave(peer, created_ms=20)])
    net.run(range(7, 10))
    assert peer not in net.chain.validators_at(9)
    assert "replayed" in (net.chain.join_reason(j.message, 10) or "")
    assert net.chain.join_reason(net.joiner(4, created_ms=30).message, 10) is None  # a fresh request is fine


def test_the_last_commit_must_be_a_quorum_of_one_round_for_the_decided_value() -> None:
    net = Net()
    net.decide(1)
    ids = net.chain.validators_at(1).ids
    assert "no quorum" in (net.chain.check_extras(net.value(2, absent=ids[:2]), 2) or "")
    good = net.value(2)
    wrong = sign(Vote(chain_id=CHAIN, type="precommit", height=1, round=0, value_id=b"\x02" * 32, voter=ids[0]),
                 net.keys[ids[0]])
    swapped = good.model_copy(update={"last_commit": (wrong.envelope, *good.last_commit[1:])})
    assert "not a precommit" in (net.chain.check_extras(swapped, 2) or "")
    late = sign(Vote(chain_id=CHAIN, type="precommit", height=1, round=1, value_id=net.chain.last_value_id,
                     voter=ids[0]), net.keys[ids[0]])
    mixed = good.model_copy(update={"last_commit": (late.envelope, *good.last_commit[1:])})
    assert "more than one round" in (net.chain.check_extras(mixed, 2) or "")
    assert "height 1 carries no last commit" in (
        Net().chain.check_extras(good.model_copy(update={"validators_hash": good.validators_hash}), 1) or "")


def test_the_stability_record_is_the_same_on_every_replica_and_counts_answers_precommits_latency() -> None:
    nets = [Net(), Net()]
    for net in nets[1:]:
        net.keys = nets[0].keys
    ids = nets[0].chain.validators_at(1).ids
    for h in range(1, 10):
        value = nets[0].value(h, absent=[ids[1]] if h % 2 else [], gen_ms=10 * h)
        for net in nets:
            assert net.chain.check_extras(value, h) is None
            net.chain.apply(h, value)
    digests = {n.chain.weights_digest() for n in nets}
    assert len(digests) == 1
    record = nets[0].chain.members.stability(ids)  # type: ignore[union-attr]
    epoch0 = record[ids[1]]["epochs"]["0"]
    # heights 1-4: answers counted 4; commits of heights 1-4 arrive with values 2-5, ids[1] absent from 3 and 5
    assert epoch0 == {"heights": 4, "precommits": 2, "answers": 4, "missed": 2,
                      "median_latency_ms": 10 * 2 + 1}
    assert record[ids[0]]["uptime_permille"] == 1000 and record[ids[1]]["uptime_permille"] == 500


def test_a_newcomer_does_not_propose_at_once() -> None:
    net = Net()
    j = net.joiner(5)
    net.decide(1, joins=[j])
    net.run(range(2, 5))
    assert net.chain.proposer(5, 0) != j.message.peer_id


def test_weights_keep_following_the_scores_across_a_boundary() -> None:
    net = Net()
    j = net.joiner(6)
    pending: list[Signed[ScoreVector]] = []
    weights = {}
    for h in range(1, 17):
        scores, _ = net.chain.includable(pending, [], h)
        value = net.decide(h, joins=[j] if h == 1 else [], scores=scores)
        vs = net.chain.validators_at(h)
        answerers = sorted(vs.ids)
        pending = [sign(ScoreVector(scorer=p, height=h, query_id=value.query_id(),
                                    scores=tuple((a, 1000) for a in answerers)), net.keys[p]) for p in vs.ids]
        weights[h + 1] = net.chain.validators_at(h + 1)
    newcomer = j.message.peer_id
    assert all(vs.total == PARAMS.scale for h, vs in weights.items() if h > 3)
    assert newcomer not in weights[4] and newcomer in weights[5]
    assert weights[17].weight_of(newcomer) > weights[5].weight_of(newcomer)  # agreed with: it grows
    assert weights[17].weight_of(newcomer) <= weights[5].weight_of(newcomer) * Fraction(17, 16) ** 12 + 1


def test_a_joiner_is_not_removed_for_the_heights_of_its_first_epoch() -> None:
    net = Net(n=7)
    j = net.joiner(11)
    net.decide(1, joins=[j])
    net.run(range(2, 5))
    newcomer = j.message.peer_id
    net.run(range(5, 9), absent=[newcomer])  # catching up: it misses its whole first epoch
    assert newcomer in net.chain.validators_at(9)
    net.run(range(9, 13), absent=[newcomer])  # and the second one too: now it goes
    assert newcomer not in net.chain.validators_at(13)
