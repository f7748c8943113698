"""The chain: weights folded from decided values, what a value may carry, incremental proposers."""

from __future__ import annotations

import pytest

from consensus import grouping
from consensus.chain import SCORE_WINDOW, Chain
from consensus.evidence import DuplicateVoteEvidence
from consensus.messages import Answer, EvidencePair, Signed, Value, VerifiedCache, Vote, open_envelope, sign
from consensus.scores import ScoreVector
from consensus.weights import WeightParams
from tests.conftest import Net, make_net

PARAMS = WeightParams.for_tests()


def value_at(net: Net, chain: Chain, height: int, texts: list[str], *, scores: tuple[Signed[ScoreVector], ...] = (),
             evidence: tuple[EvidencePair, ...] = ()) -> Value:
    """A value for ``height`` over answers ``texts`` (peer i answers texts[i]) carrying the given extras."""
    query = net.query(f"question {height}?")
    answers = [net.answer(query, i, t) for i, t in enumerate(texts)]
    n = len(texts)
    sims = [1000 if texts[i] == texts[j] else 0 for i in range(n) for j in range(i + 1, n)]
    vs = chain.validators_at(height)
    return grouping.build_value(query.envelope, answers, sims, [vs.weight_of(a.signer) for a in answers],
                                800, validators_hash=vs.set_hash(),
                                next_validators_hash=chain.validators_at(height + 1).set_hash(),
                                scores=[s.envelope for s in scores],
                                evidence=evidence, last_commit=net.last_commit(chain, height))


def score(net: Net, scorer: int, height: int, value: Value, given: list[int]) -> Signed[ScoreVector]:
    ids = [k.peer_id for k in net.keys]
    return sign(ScoreVector(scorer=ids[scorer], height=height, query_id=value.query_id(),
                            scores=tuple(sorted(zip(ids, given)))), net.keys[scorer])


def double_vote(net: Net, i: int, height: int) -> EvidencePair:
    k = net.keys[i]
    a = sign(Vote(type="prevote", height=height, round=0, value_id=None, voter=k.peer_id), k)
    b = sign(Vote(type="prevote", height=height, round=0, value_id=b"\x01" * 32, voter=k.peer_id), k)
    ev = DuplicateVoteEvidence(first=a.envelope, second=b.envelope)
    return EvidencePair(kind=ev.KIND, first=ev.first, second=ev.second)


def run(net: Net, chains: list[Chain], heights: int, wrong: int) -> None:
    """Decide ``heights`` values; peer ``wrong`` answers wrongly and everyone scores it 0."""
    pending: list[Signed[ScoreVector]] = []
    for h in range(1, heights + 1):
        texts = ["Paris" if i != wrong else "Lyon" for i in range(len(net.keys))]
        scores, _ = chains[0].includable(pending, [], h)
        value = value_at(net, chains[0], h, texts, scores=tuple(s for s in pending if s.envelope in scores))
        for chain in chains:
            assert chain.check_extras(value, h) is None
            chain.apply(h, value)
        pending = [score(net, i, h, value, [0 if j == wrong else 1000 for j in range(len(net.keys))])
                   for i in range(len(net.keys))]


def test_committed_scores_move_weights_identically_on_every_replica() -> None:
    net = make_net([1, 1, 1, 1])
    chains = [Chain(net.genesis.validators, PARAMS) for _ in range(3)]
    run(net, chains, 12, wrong=3)
    digests = {c.weights_digest() for c in chains}
    assert len(digests) == 1 and None not in digests
    final = chains[0].validators_at(13)
    wrong_id = net.keys[3].peer_id
    assert 3 * final.weight_of(wrong_id) < final.total  # the liar is far below a third
    assert all(final.weight_of(k.peer_id) > final.weight_of(wrong_id) for k in net.keys[:3])
    # delay: the vectors of height 1 are committed at 2, and weights change from 2 + 2
    fresh = Chain(net.genesis.validators, PARAMS)
    run(net, [fresh], 2, wrong=3)
    assert fresh.validators_at(3) == net.genesis.validators != fresh.validators_at(4)


def test_proposer_is_incremental_and_equals_the_replay_for_unchanged_weights() -> None:
    net = make_net([3, 1, 2, 1])
    chain = Chain(net.genesis.validators, PARAMS)
    for h in range(1, 40):
        for r in (0, 1, 3):
            assert chain.proposer(h, r) == net.genesis.validators.proposer(h, r), (h, r)
        chain.apply(h, value_at(net, chain, h, ["a", "a", "a", "a"]))
    with pytest.raises(ValueError, match="height 40 only"):
        chain.proposer(42, 0)


def test_values_carrying_bad_extras_are_refused_with_the_reason() -> None:
    net = make_net([1, 1, 1, 1])
    chain = Chain(net.genesis.validators, PARAMS)
    v1 = value_at(net, chain, 1, ["a"] * 4)
    chain.apply(1, v1)
    good = score(net, 0, 1, v1, [1000] * 4)
    assert chain.check_extras(value_at(net, chain, 2, ["a"] * 4, scores=(good,)), 2) is None
    cases = {
        "the set in force": value_at(net, chain, 2, ["a"] * 4).model_copy(update={"validators_hash": b"\0" * 32}),
        "at height 3": value_at(net, chain, 2, ["a"] * 4).model_copy(update={"next_validators_hash": b"\0" * 32}),
        "window": value_at(net, chain, 2, ["a"] * 4, scores=(score(net, 0, 2, v1, [1000] * 4),)),
        "not the query decided": value_at(net, chain, 2, ["a"] * 4,
                                          scores=(score(net, 0, 1, value_at(net, chain, 2, ["b"] * 4), [1] * 4),)),
        "second vector": value_at(net, chain, 2, ["a"] * 4, scores=(good, score(net, 0, 1, v1, [999] * 4))),
        "signature": value_at(net, chain, 2, ["a"] * 4, scores=(good,)).model_copy(
            update={"scores": (good.envelope.model_copy(update={"sig": b"\0" * 64}),)}),
    }
    for reason, value in cases.items():
        assert reason in (chain.check_extras(value, 2) or ""), reason
    chain.apply(2, value_at(net, chain, 2, ["a"] * 4, scores=(good,)))
    assert "already committed" in (chain.check_extras(value_at(net, chain, 3, ["a"] * 4, scores=(good,)), 3) or "")


def test_evidence_in_a_value_cuts_the_offender_once() -> None:
    net = make_net([1, 1, 1, 1])
    chain = Chain(net.genesis.validators, PARAMS)
    chain.apply(1, value_at(net, chain, 1, ["a"] * 4))
    ev = double_vote(net, 2, 1)
    v2 = value_at(net, chain, 2, ["a"] * 4, evidence=(ev,))
    assert chain.check_extras(v2, 2) is None
    assert "included twice" in (chain.check_extras(value_at(net, chain, 2, ["a"] * 4, evidence=(ev, ev)), 2) or "")
    chain.apply(2, v2)
    after = chain.validators_at(4)
    # trust 0 and quality 0: it falls as fast as the other three may grow (ADR 0012: 2500 -> 2656 each)
    assert after.weight_of(net.keys[2].peer_id) == after.total - 3 * (2500 * 17 // 16) == 2032 < min(
        after.weight_of(k.peer_id) for k in net.keys if k is not net.keys[2])
    assert "already applied" in (chain.check_extras(value_at(net, chain, 3, ["a"] * 4, evidence=(ev,)), 3) or "")
    scores, evidence = chain.includable([], [DuplicateVoteEvidence(first=ev.first, second=ev.second)], 3)
    assert scores == () and evidence == ()


def test_static_chain_refuses_extras_and_keeps_genesis_weights() -> None:
    net = make_net([1, 1, 1, 1])
    chain = Chain(net.genesis.validators, None)
    v1 = value_at(net, chain, 1, ["a"] * 4)
    chain.apply(1, v1)
    with_scores = value_at(net, chain, 2, ["a"] * 4, scores=(score(net, 0, 1, v1, [1000] * 4),))
    assert "static" in (chain.check_extras(with_scores, 2) or "")
    chain.apply(5, v1)  # a static chain may skip heights (catch-up by certificate)
    assert chain.validators_at(9) == net.genesis.validators


def test_the_chain_hands_the_core_each_heights_committee() -> None:
    net = make_net([1, 1, 1, 1])
    chain = Chain(net.genesis.validators, PARAMS)
    committee = chain.committee(1)
    assert committee.validators == chain.validators_at(1)
    assert [committee.proposer(r) for r in range(3)] == [chain.proposer(1, r) for r in range(3)]
    with pytest.raises(ValueError, match="knows the committee of 1 only"):
        chain.committee(2)
    v1 = value_at(net, chain, 1, ["a"] * 4)
    chain.apply(1, v1)
    v2 = value_at(net, chain, 2, ["a", "a", "a", "b"], scores=(score(net, 0, 1, v1, [1000, 1000, 1000, 0]),
                                                               score(net, 1, 1, v1, [1000, 1000, 1000, 0]),
                                                               score(net, 2, 1, v1, [1000, 1000, 1000, 0])))
    assert chain.check_extras(v2, 2) is None
    chain.apply(2, v2)
    assert chain.committee(3).validators == chain.validators_at(3)
    assert chain.validators_at(4).weight_of(net.keys[3].peer_id) < chain.validators_at(4).weight_of(
        net.keys[0].peer_id)
    assert SCORE_WINDOW >= 2


def test_a_chain_sharing_the_signature_cache_does_not_verify_a_checked_vector_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import consensus.messages as messages

    net = make_net([1, 1, 1, 1])
    cache = VerifiedCache()
    shared, alone = Chain(net.genesis.validators, PARAMS, cache), Chain(net.genesis.validators, PARAMS)
    first = value_at(net, shared, 1, ["Paris"] * 4)
    for chain in (shared, alone):
        chain.apply(1, first)
    vectors = tuple(score(net, i, 1, first, [1000] * 4) for i in range(4))
    second = value_at(net, shared, 2, ["Paris"] * 4, scores=vectors)
    assert shared.check_extras(second, 2, cache) is None  # verifies the four vectors, once
    for env in second.answers:  # as the driver did when it checked the proposal
        open_envelope(Answer, env, shared.validators_at(2).public_key_of, cache)
    calls: list[int] = []
    real = messages.verify_signature
    monkeypatch.setattr(messages, "verify_signature", lambda *a: calls.append(1) or real(*a))
    shared.apply(2, second)
    assert calls == []
    alone.apply(2, second)
    assert len(calls) == 12 and shared.weights_digest() == alone.weights_digest()  # 4 vectors, answers, precommits
