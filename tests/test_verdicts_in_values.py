"""Signed judges' verdicts carried in values (ADR 0022): the message, the genesis rule, validation, certificates."""

from __future__ import annotations

import json
from typing import Any

import pytest

from consensus import grouping
from consensus.messages import (
    MAX_PEERS,
    Answer,
    Envelope,
    MessageError,
    Outcome,
    Query,
    Signed,
    Value,
    Verdict,
    answers_digest,
    open_envelope,
    query_id_of,
    sign,
)
from multillmn import canonical
from multillmn.certificate import CertificateError, build_certificate, query_certificate, verify
from multillmn.genesis import Genesis, GenesisError, Params
from multillmn.identity import KeyPair
from peers.wire import decode_message, encode_message
from tests.conftest import Net, make_net

VETO = Params(verdict_rule="veto")


def veto_net(weights: list[int], params: Params = VETO) -> Net:
    net = make_net(weights)
    return Net(net.keys, Genesis.build("test-chain", [(f"peer{i}", k.public_key, w)
                                                      for i, (k, w) in enumerate(zip(net.keys, weights))], params))


def _sims(answers: list[Signed[Answer]]) -> list[int]:
    t = [a.message.text for a in answers]
    return [1000 if t[i] == t[j] else 0 for i in range(len(t)) for j in range(i + 1, len(t))]


def verdict(net: Net, judge: int, query: Signed[Query], answers: list[Signed[Answer]], ratings: dict[int, int],
            key: KeyPair | None = None) -> Signed[Verdict]:
    """Judge ``judge``'s verdict ``ratings[i]`` on peer i's answer, signed (by ``key`` to forge)."""
    rated = sorted((answers[i].signer, v, answers[i].envelope) for i, v in ratings.items())
    msg = Verdict(judge=net.keys[judge].peer_id, query_id=query_id_of(query.envelope),
                  answers_digest=answers_digest([e for _, _, e in rated]), verdicts=tuple((p, v) for p, v, _ in rated))
    if key is None:
        return sign(msg, net.keys[judge])
    body = msg.canonical()
    return Signed(msg, Envelope(body=body, sig=key.sign("verdict", body)))


class Split:
    """Four peers of weight 1: peers 0, 1 answer "Lyon", peers 2, 3 "Paris"; ``wrong`` is the text today's
    rule picks (the tie goes to the lowest peer id's group), ``right`` the other."""

    def __init__(self, params: Params = VETO) -> None:
        self.net = veto_net([1, 1, 1, 1], params)
        self.query = self.net.query()
        texts = ["Lyon", "Lyon", "Paris", "Paris"]
        self.answers = [self.net.answer(self.query, i, t) for i, t in enumerate(texts)]
        self.wrong = self.net.value(texts, self.query).answer
        self.right = "Paris" if self.wrong == "Lyon" else "Lyon"
        self.of = {t: [i for i, x in enumerate(texts) if x == t] for t in ("Lyon", "Paris")}

    def judges(self, text: str, verdicts: dict[str, int]) -> list[Signed[Verdict]]:
        """Every peer answering ``text`` rates the other side's answers."""
        return [verdict(self.net, j, self.query, self.answers,
                        {i: v for t, v in verdicts.items() for i in self.of[t]}) for j in self.of[text]]

    def value(self, verdicts: list[Signed[Verdict]], **kw: Any) -> Value:
        g = self.net.genesis
        return grouping.build_value(self.query.envelope, self.answers, _sims(self.answers), [1, 1, 1, 1], 800,
                                    validators_hash=g.validators.set_hash(),
                                    next_validators_hash=g.validators.set_hash(), chain_id=g.chain_id,
                                    verdicts=verdicts, verdict_rule=g.params.verdicts(), total_weight=4, **kw)

    def check(self, value: Value, rule: Params | None = None) -> str | None:
        params = rule or self.net.genesis.params
        return grouping.validate_value(value, validators=self.net.genesis.validators, local_sims=None,
                                       threshold=800, tolerance=20, chain_id="test-chain",
                                       verdict_rule=params.verdicts())


# --- the message -------------------------------------------------------------------------------


def test_a_verdict_travels_the_wire_and_opens() -> None:
    s = Split()
    v = s.judges(s.right, {s.wrong: -800})[0]
    got = decode_message(encode_message(v), s.net.genesis.validators.public_key_of)
    assert isinstance(got.message, Verdict) and got.message == v.message
    assert got.message.of(s.answers[s.of[s.wrong][0]].signer) == -800


@pytest.mark.parametrize("change, reason", [
    (lambda b, ids: {**b, "verdicts": [[ids[0], 1001]]}, "less than or equal to 1000"),
    (lambda b, ids: {**b, "verdicts": [[ids[0], -1001]]}, "greater than or equal to -1000"),
    (lambda b, ids: {**b, "verdicts": [[ids[1], 5], [ids[0], 5]]}, "sorted by answerer"),
    (lambda b, ids: {**b, "verdicts": [[ids[0], 5], [ids[0], 6]]}, "sorted by answerer"),
    (lambda b, ids: {**b, "verdicts": [[b["judge"], 5]]}, "its own answer"),
    (lambda b, ids: {**b, "verdicts": [[f"{k:040x}", 0] for k in range(MAX_PEERS + 1)]}, "at most 256"),
    (lambda b, ids: {**b, "answers_digest": b"\x00" * 31}, "answers_digest"),
    (lambda b, ids: {**b, "extra": 1}, "extra"),
])
def test_malformed_verdicts_are_refused_at_decoding(change: Any, reason: str) -> None:
    s = Split()
    v = s.judges(s.right, {s.wrong: -800})[0]
    ids = sorted(a.signer for a in s.answers if a.signer != v.signer)
    body = canonical.pack(change(dict(canonical.unpack(v.envelope.body)), ids))
    env = Envelope(body=body, sig=s.net.keys[s.of[s.right][0]].sign("verdict", body))
    with pytest.raises(MessageError, match=reason):
        open_envelope(Verdict, env, s.net.genesis.validators.public_key_of)


# --- the genesis -------------------------------------------------------------------------------


def test_genesis_verdict_params_are_validated_and_written_only_when_set() -> None:
    assert "verdict_rule" not in Params().to_json()  # older genesis files keep their digest
    assert Params().verdicts() is None
    assert Params(verdict_rule="veto", verdict_margin=250).verdicts().margin == 250  # type: ignore[union-attr]
    net = veto_net([1, 1, 1, 1])
    back = Genesis.from_json(json.loads(json.dumps(net.genesis.to_json())))
    assert (back.params.verdict_rule, back.params.verdict_margin, back.digest()) == ("veto", 500, net.genesis.digest())
    for bad in ({"verdict_rule": "mean"}, {"verdict_rule": 1}, {"verdict_margin": -1}, {"verdict_margin": 2001},
                {"verdict_margin": True}):
        with pytest.raises(GenesisError, match="verdict_"):
            Params(**bad).validate()  # type: ignore[arg-type]


# --- validation ------------------------------------------------------------------------------


def test_without_verdicts_the_veto_chain_decides_as_today() -> None:
    s = Split()
    value = s.value([])
    assert value.answer == s.wrong and value.verdicts == ()
    assert value.value_id() == s.net.value(["Lyon", "Lyon", "Paris", "Paris"], s.query).value_id()


def test_the_veto_flips_a_split_to_the_right_side_and_validators_agree() -> None:
    s = Split()
    verdicts = s.judges(s.right, {s.wrong: -800}) + s.judges(s.wrong, {s.right: -100})
    value = s.value(verdicts)
    assert value.answer == s.right and len(value.verdicts) == 4
    assert s.check(value) is None
    # The same value is refused by a chain without a verdict rule, and the old choice by this one.
    assert s.check(value, Params()) == "verdicts in a value of a chain without a verdict rule"
    stale = value.model_copy(update={"answer": s.wrong, "winners": tuple(
        s.answers[i].signer for i in s.of[s.wrong])})
    assert "differ from the computed" in (s.check(stale) or "")


def test_a_verdict_within_the_margin_rejects_nothing() -> None:
    s = Split()
    value = s.value(s.judges(s.right, {s.wrong: -501}) + s.judges(s.wrong, {s.right: -500}))
    assert value.answer == s.right and s.check(value) is None  # -501 rejects, -500 is not below -500
    value = s.value(s.judges(s.right, {s.wrong: -500}) + s.judges(s.wrong, {s.right: -500}))
    assert value.answer == s.wrong and s.check(value) is None


def test_colluders_below_a_third_reject_nothing_alone() -> None:
    s = Split()
    honest = s.judges(s.right, {s.wrong: 0})  # the right side's judges do not object
    colluder = verdict(s.net, s.of[s.wrong][0], s.query, s.answers, {i: -1000 for i in s.of[s.right]})
    other = verdict(s.net, s.of[s.wrong][1], s.query, s.answers, {i: 0 for i in s.of[s.right]})
    value = s.value([*honest, colluder, other])
    assert value.answer == s.wrong and s.check(value) is None  # weight 1 of 4 cannot reject


def _refused(s: Split, verdicts: list[Signed[Verdict]]) -> str:
    """The reason a value carrying exactly ``verdicts`` (and the veto's choice) is refused."""
    value = s.value([]).model_copy(update={"verdicts": tuple(v.envelope for v in verdicts)})
    reason = s.check(value)
    assert reason is not None
    return reason


def test_forged_duplicate_foreign_and_own_group_verdicts_are_refused() -> None:
    s = Split()
    good = s.judges(s.right, {s.wrong: -800}) + s.judges(s.wrong, {s.right: -100})
    good.sort(key=lambda v: v.signer)
    j = s.of[s.right][0]
    forged = verdict(s.net, j, s.query, s.answers, {i: -800 for i in s.of[s.wrong]}, key=s.net.keys[s.of[s.wrong][0]])
    assert "bad signature" in _refused(s, [forged])
    stranger = KeyPair.from_seed(b"\x77" * 32)
    assert "unknown peer" in _refused(s, [sign(forged.message.model_copy(update={"judge": stranger.peer_id}),
                                               stranger)])
    assert "two" in _refused(s, [good[0], good[0], *good[1:]])
    assert "ascending" in _refused(s, list(reversed(good)))
    mate = [i for i in s.of[s.right] if i != j][0]
    assert "its own group" in _refused(s, [verdict(s.net, j, s.query, s.answers, {mate: 1000, s.of[s.wrong][0]: 0})])
    other = s.net.query("What is the capital of Spain?")
    elsewhere = [s.net.answer(other, i, a.message.text) for i, a in enumerate(s.answers)]
    assert "another query" in _refused(s, [verdict(s.net, j, other, elsewhere, {s.of[s.wrong][0]: -900})])
    moved = verdict(s.net, j, s.query, s.answers, {s.of[s.wrong][0]: -900})
    moved = sign(moved.message.model_copy(update={"answers_digest": b"\x01" * 32}), s.net.keys[j])
    assert "other answers" in _refused(s, [moved])


def test_a_judge_who_did_not_answer_is_refused() -> None:
    s = Split()
    answers = s.answers[:3]  # peer 3 did not answer; it still signs a verdict
    value = grouping.build_value(s.query.envelope, answers, _sims(answers), [1, 1, 1], 800,
                                 chain_id="test-chain", verdict_rule=s.net.genesis.params.verdicts(), total_weight=4)
    absent = verdict(s.net, 3, s.query, s.answers, {0: -900})
    value = value.model_copy(update={"verdicts": (absent.envelope,)})
    assert "did not answer" in (s.check(value) or "")
    assert grouping.build_outcome(s.query.envelope, answers, _sims(answers), [1, 1, 1], 800, verdicts=[absent],
                                  verdict_rule=s.net.genesis.params.verdicts(), total_weight=4).verdicts == ()


def test_a_contested_query_must_carry_the_verdicts_of_all_but_at_most_a_third() -> None:
    s = Split()
    every = sorted(s.judges(s.right, {s.wrong: -800}) + s.judges(s.wrong, {s.right: 0}), key=lambda v: v.signer)
    assert s.check(s.value(every[:3])) is None  # missing weight 1 of 4
    assert "contested" in (s.check(s.value(every[:2])) or "")  # missing 2 of 4: could hide a rejection
    assert "contested" in (s.check(s.value([])) or "")
    # A query decided by a quorum of weight needs none.
    q = s.net.query("Two plus two?")
    answers = [s.net.answer(q, i, t) for i, t in enumerate(["4", "4", "4", "5"])]
    quorum = grouping.build_value(q.envelope, answers, _sims(answers), [1, 1, 1, 1], 800, chain_id="test-chain",
                                  validators_hash=s.net.genesis.validators.set_hash(),
                                  next_validators_hash=s.net.genesis.validators.set_hash(),
                                  verdict_rule=s.net.genesis.params.verdicts(), total_weight=4)
    assert s.check(quorum) is None


def test_non_judging_answerers_at_exactly_a_third_leave_a_contested_query_decidable() -> None:
    """Six peers of weight 1: colluders 0, 1 answer "Lyon" and never judge, honest 2..5 answer "Paris" (4 of 6,
    not above 2/3: contested) and reject "Lyon". The four honest verdicts suffice (2 of 6 unheard: exactly
    1/3); three do not."""
    net = veto_net([1] * 6)
    query = net.query()
    texts = ["Lyon", "Lyon", "Paris", "Paris", "Paris", "Paris"]
    answers = [net.answer(query, i, t) for i, t in enumerate(texts)]
    honest = [verdict(net, j, query, answers, {0: -800, 1: -800}) for j in range(2, 6)]
    g = net.genesis

    def value(verdicts: list[Signed[Verdict]]) -> Value:
        return grouping.build_value(query.envelope, answers, _sims(answers), [1] * 6, 800,
                                    validators_hash=g.validators.set_hash(),
                                    next_validators_hash=g.validators.set_hash(), chain_id=g.chain_id,
                                    verdicts=verdicts, verdict_rule=g.params.verdicts(), total_weight=6)

    def check(v: Value) -> str | None:
        return grouping.validate_value(v, validators=g.validators, local_sims=None, threshold=800, tolerance=20,
                                       chain_id="test-chain", verdict_rule=g.params.verdicts())

    decided = value(honest)
    assert (decided.answer, len(decided.verdicts)) == ("Paris", 4) and check(decided) is None
    # A Byzantine proposer may drop verdicts down to exactly 1/3 unheard; it only loses rejections.
    assert check(value(honest[:2] + [verdict(net, j, query, answers, {}) for j in (0, 1)])) is None
    assert "contested" in (check(value(honest[:3])) or "")  # 3 of 6 unheard: above 1/3


def test_an_abstaining_judge_counts_as_heard_and_changes_nothing() -> None:
    s = Split()
    abstain = [verdict(s.net, j, s.query, s.answers, {}) for j in range(4)]
    value = s.value(abstain)
    assert value.answer == s.wrong and len(value.verdicts) == 4 and s.check(value) is None


def test_verdicts_change_the_outcome_bytes_only_when_carried() -> None:
    s = Split()
    value = s.value(s.judges(s.right, {s.wrong: -800}) + s.judges(s.wrong, {s.right: 0}))
    assert "verdicts" in canonical.unpack(value.canonical())
    assert "verdicts" in canonical.unpack(value.outcomes()[0].canonical())
    assert "verdicts" not in canonical.unpack(s.value([]).canonical())
    # An explicit empty list is not canonical: refused where a proposal is opened.
    body = dict(canonical.unpack(s.value([]).canonical()))
    body["verdicts"] = ()
    raw = canonical.pack({"height": 1, "round": 0, "valid_round": -1, "proposer": s.net.keys[0].peer_id,
                          "value": body})
    env = Envelope(body=raw, sig=s.net.keys[0].sign("proposal", raw))
    from consensus.messages import Proposal
    with pytest.raises(MessageError, match="canonical"):
        open_envelope(Proposal, env, s.net.genesis.validators.public_key_of)


# --- certificates ------------------------------------------------------------------------------


def _commit(s: Split, value: Value) -> dict[str, Any]:
    precommits = tuple(s.net.precommit(i, 1, 0, value) for i in range(4))
    return build_certificate(s.net.genesis, 1, 0, value, precommits)


def test_certificates_re_run_the_veto_offline() -> None:
    s = Split()
    value = s.value(s.judges(s.right, {s.wrong: -800}) + s.judges(s.wrong, {s.right: 0}))
    cert = json.loads(json.dumps(_commit(s, value)))
    assert verify(cert, s.net.genesis).answer == s.right
    # Even a quorum that signs the old choice is caught offline: the carried verdicts decide otherwise.
    stale = value.model_copy(update={"answer": s.wrong, "winners": tuple(s.answers[i].signer for i in s.of[s.wrong])})
    with pytest.raises(CertificateError, match="differ from the computed"):
        verify(_commit(s, stale), s.net.genesis)
    # Dropping a rejecting verdict (and re-signing) leaves a contested query without enough judges.
    thin = value.model_copy(update={"verdicts": value.verdicts[:2]})
    with pytest.raises(CertificateError, match="contested"):
        verify(_commit(s, thin), s.net.genesis)


def test_a_query_certificate_proves_an_outcome_with_verdicts() -> None:
    s = Split()
    other = s.net.query("Which city is the capital of France?")
    o_answers = [s.net.answer(other, i, a.message.text) for i, a in enumerate(s.answers)]
    o_verdicts = [verdict(s.net, j, other, o_answers, {i: -800 for i in s.of[s.wrong]}) for j in s.of[s.right]] + \
        [verdict(s.net, j, other, o_answers, {}) for j in s.of[s.wrong]]
    more = grouping.build_outcome(other.envelope, o_answers, _sims(o_answers), [1, 1, 1, 1], 800, verdicts=o_verdicts,
                                  verdict_rule=s.net.genesis.params.verdicts(), total_weight=4)
    value = s.value(s.judges(s.right, {s.wrong: 0}) + s.judges(s.wrong, {s.right: 0}), more=[more])
    assert (value.answer, more.answer) == (s.wrong, s.right)
    cert = query_certificate(_commit(s, value), query_id_of(other.envelope))
    got = verify(json.loads(json.dumps(cert)), s.net.genesis)
    assert (got.answer, got.queries) == (s.right, 2)
    forged: Outcome = more.model_copy(update={"verdicts": more.verdicts[2:]})
    assert "contested" in (grouping.validate_outcome(forged, validators=s.net.genesis.validators, local_sims=None,
                                                     threshold=800, tolerance=20,
                                                     verdict_rule=s.net.genesis.params.verdicts()) or "")


# --- the pool's verdict table and the judge's signal -------------------------------------------------


def test_the_pool_keeps_one_verdict_per_judge_of_pending_queries_only() -> None:
    from consensus.driver import QueryPool

    s = Split()
    pool = QueryPool(s.net.genesis.validators)
    v = s.judges(s.right, {s.wrong: -800})[0]
    assert pool.add_verdict(v) is None  # its query is unknown here: a flood of made-up query ids keeps nothing
    pool.add_query(s.query, 0)
    assert pool.add_verdict(v) is not None
    fewer = verdict(s.net, s.net.keys.index(next(k for k in s.net.keys if k.peer_id == v.signer)), s.query,
                    s.answers, {s.of[s.wrong][0]: 1000})
    assert pool.add_verdict(fewer) is None and pool.add_verdict(v) is None  # not fewer answers, not twice
    stranger = KeyPair.from_seed(b"\x55" * 32)
    assert pool.add_verdict(sign(v.message.model_copy(update={"judge": stranger.peer_id}), stranger)) is None
    pool.mark_decided(query_id_of(s.query.envelope))
    assert pool.add_verdict(v) is None and len(pool) == 0


class _Generator:
    """Mean token log-probabilities from a table, as ``Generator.answer_logprobs`` would give them."""

    def __init__(self, lp: dict[str, float]) -> None:
        self.lp = lp

    def answer_logprob(self, question: str, answer: str) -> float:
        return self.lp[answer]

    def answer_logprobs(self, question: str, answers: list[str]) -> list[float]:
        return [self.lp[a] for a in answers]


def test_the_likelihood_gap_against_the_judges_own_answer_per_mille() -> None:
    from peers.judge import LLMJudge, ScriptedJudge, rate

    judge = LLMJudge(_Generator({"own": -0.5, "close": -0.6, "far": -1.2, "garbage": -9.0, "likelier": -0.2}))
    assert rate(judge, "q", "own", ["close", "far", "garbage", "likelier"]) == [-100, -700, -1000, 300]
    scripted = ScriptedJudge({"q": "Paris"})
    assert rate(scripted, "q", "Paris", ["Lyon", "paris."]) == [-1000, 1000]
    assert rate(scripted, "q", "Lyon", ["Rome", "Paris"]) == [0, 1000]
