"""Equivocation evidence: verification, canonical pair order, ids and the core's output."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from consensus.evidence import (
    ConflictingProposalEvidence,
    DuplicateVoteEvidence,
    check_evidence,
    decode_evidence,
    evidence_id,
    from_equivocation,
    verify_evidence,
)
from consensus.grouping import build_value, pair_count
from consensus.messages import (
    Answer, Envelope, MessageError, Proposal, Query, Signed, Value, Vote, query_id_of, sign,
)
from consensus.state_machine import Core, Equivocation, ProposalInput, Start, Timeouts, VoteInput
from consensus.validators import Validator, ValidatorSet
from multillmn import canonical
from multillmn.identity import KeyPair

KEYS = sorted((KeyPair.from_seed(bytes([i + 1]) * 32) for i in range(5)), key=lambda k: k.peer_id)
VS = ValidatorSet(Validator(k.peer_id, k.public_key, 1, f"v{i}") for i, k in enumerate(KEYS[:4]))
OUTSIDER = KEYS[4]
A, B = b"\xaa" * 32, b"\xbb" * 32


def vote(i: int, vid: bytes | None, h: int = 3, r: int = 0, t: str = "prevote",
         key: KeyPair | None = None) -> Signed[Vote]:
    k = KEYS[i]
    msg = Vote(type=t, height=h, round=r, value_id=vid, voter=k.peer_id)  # type: ignore[arg-type]
    return sign(msg, key or k)


def dup(a: Signed[Vote], b: Signed[Vote]) -> DuplicateVoteEvidence:
    return DuplicateVoteEvidence(first=a.envelope, second=b.envelope)


def make_value(question: str) -> Value:
    q = sign(Query(entry=KEYS[0].peer_id, question=question, nonce=bytes(16), max_tokens=8,
                   created_ms=0), KEYS[0])
    qid = query_id_of(q.envelope)
    answers = [sign(Answer(query_id=qid, peer=k.peer_id, model="m", text="x", gen_ms=1), k)
               for k in KEYS[:4]]
    return build_value(q.envelope, answers, [1000] * pair_count(4), [1] * 4, 800)


V, W = make_value("q1"), make_value("q2")


def proposal(i: int, value: Value, h: int = 3, r: int = 0, vr: int = -1) -> Signed[Proposal]:
    return sign(Proposal(height=h, round=r, valid_round=vr, proposer=KEYS[i].peer_id, value=value),
                KEYS[i])


def test_real_double_vote_is_accepted() -> None:
    ev = dup(vote(1, A), vote(1, B))
    assert verify_evidence(ev, VS) is None
    assert check_evidence(ev, VS) == (KEYS[1].peer_id, 3)
    # nil and a value conflict too, and precommits are covered.
    assert verify_evidence(dup(vote(2, None, t="precommit"), vote(2, A, t="precommit")), VS) is None


@pytest.mark.parametrize(
    ("desc", "pair", "reason"),
    [
        ("same vote twice", (vote(1, A), vote(1, A)), "identical"),
        ("different heights", (vote(1, A, h=3), vote(1, B, h=4)), "different (height, round, type)"),
        ("different rounds", (vote(1, A, r=0), vote(1, B, r=1)), "different (height, round, type)"),
        ("prevote vs precommit", (vote(1, A), vote(1, B, t="precommit")), "different (height"),
        ("different signers", (vote(1, A), vote(2, B)), "different validators"),
    ],
)
def test_non_conflicting_pairs_are_rejected(
    desc: str, pair: Sequence[Signed[Vote]], reason: str
) -> None:
    got = verify_evidence(dup(pair[0], pair[1]), VS)
    assert got is not None and reason in got, desc


def test_forged_and_foreign_signatures_are_rejected() -> None:
    good = vote(1, A)
    forged = Envelope(body=vote(1, B).envelope.body, sig=bytes(64))
    got = verify_evidence(DuplicateVoteEvidence(first=good.envelope, second=forged), VS)
    assert got is not None and "bad signature" in got
    # Signed by a key that is not the voter's.
    with pytest.raises(ValueError):
        vote(1, B, key=KEYS[2])
    other_key = Envelope(body=vote(1, B).envelope.body, sig=vote(2, B).envelope.sig)
    assert "bad signature" in (verify_evidence(dup(good, good).model_copy(
        update={"second": other_key}), VS) or "")
    # A non-validator's double vote proves nothing about this set.
    out = ValidatorSet([*VS.validators[:3], Validator(OUTSIDER.peer_id, OUTSIDER.public_key, 1, "o")])
    assert "unknown peer" in (verify_evidence(dup(vote(3, A), vote(3, B)), out) or "")


def test_evidence_id_is_order_independent() -> None:
    a, b = vote(1, A), vote(1, B)
    ab, ba = dup(a, b), dup(b, a)
    assert ab == ba and ab.body() == ba.body()
    assert evidence_id(ab) == evidence_id(ba)
    assert (ab.first.body, ab.first.sig) < (ab.second.body, ab.second.sig)
    assert evidence_id(dup(a, vote(1, None))) != evidence_id(ab)


def test_decode_round_trip_and_canonical_order() -> None:
    ev = dup(vote(1, B), vote(1, A))
    raw = canonical.unpack(canonical.pack(ev.body()))
    assert decode_evidence(raw) == ev
    swapped = dict(raw, first=raw["second"], second=raw["first"])
    with pytest.raises(MessageError, match="canonical order"):
        decode_evidence(swapped)
    with pytest.raises(MessageError, match="unknown evidence kind"):
        decode_evidence(dict(raw, kind="nope"))
    with pytest.raises(MessageError):
        decode_evidence({"kind": "duplicate_vote", "first": raw["first"]})


def test_conflicting_proposals() -> None:
    ev = ConflictingProposalEvidence(first=proposal(0, V).envelope, second=proposal(0, W).envelope)
    assert check_evidence(ev, VS) == (KEYS[0].peer_id, 3)
    same = ConflictingProposalEvidence(first=proposal(0, V).envelope,
                                       second=proposal(0, V, r=1, vr=0).envelope)
    assert "different (height, round)" in (verify_evidence(same, VS) or "")
    same_value = ConflictingProposalEvidence(first=proposal(0, V, r=2).envelope,
                                             second=proposal(0, V, r=2, vr=1).envelope)
    assert "same value" in (verify_evidence(same_value, VS) or "")
    two_signers = ConflictingProposalEvidence(first=proposal(0, V).envelope,
                                              second=proposal(1, W).envelope)
    assert "different validators" in (verify_evidence(two_signers, VS) or "")
    # A vote pair is not proposal evidence, nor the other way round.
    assert verify_evidence(ConflictingProposalEvidence(first=vote(1, A).envelope,
                                                       second=vote(1, B).envelope), VS)
    assert verify_evidence(DuplicateVoteEvidence(first=ev.first, second=ev.second), VS)


def test_from_core_equivocation_outputs() -> None:
    core = Core(VS, KEYS[3].peer_id, timeouts=Timeouts(300, 100, 100, 50))
    core.step(Start())
    prop = VS.proposer(1, 0)
    p = KEYS.index(next(k for k in KEYS if k.peer_id == prop))
    a = sign(Proposal(height=1, round=0, valid_round=-1, proposer=prop, value=V), KEYS[p])
    b = sign(Proposal(height=1, round=0, valid_round=-1, proposer=prop, value=W), KEYS[p])
    core.step(ProposalInput(a, True))
    outs = core.step(ProposalInput(b, True))
    eqs = [o for o in outs if isinstance(o, Equivocation)]
    assert len(eqs) == 1
    pev = from_equivocation(eqs[0])
    assert isinstance(pev, ConflictingProposalEvidence) and verify_evidence(pev, VS) is None
    x, y = vote(1, A, h=1), vote(1, B, h=1)
    core.step(VoteInput(x))
    eqs = [o for o in core.step(VoteInput(y)) if isinstance(o, Equivocation)]
    vev = from_equivocation(eqs[0])
    assert vev == dup(x, y) and verify_evidence(vev, VS) is None
    with pytest.raises(ValueError):
        from_equivocation(Equivocation(x, a))


def test_votes_of_two_chains_are_no_evidence_on_either() -> None:
    """An honest validator with one key on two chains votes at the same (height, round) on both: never
    an equivocation on the chain that checks evidence for itself."""
    k = KEYS[1]
    here = sign(Vote(chain_id="here", type="prevote", height=3, round=0, value_id=A, voter=k.peer_id), k)
    there = sign(Vote(chain_id="there", type="prevote", height=3, round=0, value_id=B, voter=k.peer_id), k)
    assert check_evidence(dup(here, there), VS, "here") == "votes are not both for chain 'here'"
    again = sign(Vote(chain_id="here", type="prevote", height=3, round=0, value_id=B, voter=k.peer_id), k)
    assert check_evidence(dup(here, again), VS, "here") == (k.peer_id, 3)  # a real equivocation still is
