"""Evidence of equivocation: two conflicting messages signed by one validator.

* :class:`DuplicateVoteEvidence`: two votes by one voter for the same
  (height, round, type) with different value ids (nil counts as a value id).
* :class:`ConflictingProposalEvidence`: two proposals by one proposer for the
  same (height, round) with different value ids.

The pair is stored in canonical order (smaller ``(body, sig)`` first), so one
piece of evidence has one body and one :func:`evidence_id` whichever order it
was observed in. Evidence is self-certifying: anyone holding the validator
set can check it with :func:`verify_evidence`. Punishment is not decided
here: :func:`consensus.weights.update` applies it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from consensus.messages import Envelope, MessageError, Proposal, Vote, open_envelope
from consensus.validators import ValidatorSet
from multillmn import canonical
from multillmn.identity import PeerId

if TYPE_CHECKING:
    from consensus.state_machine import Equivocation

__all__ = [
    "DuplicateVoteEvidence",
    "ConflictingProposalEvidence",
    "Evidence",
    "EVIDENCE_KINDS",
    "verify_evidence",
    "check_evidence",
    "evidence_id",
    "from_equivocation",
    "decode_evidence",
]


def _order_key(env: Any) -> tuple[bytes, bytes] | None:
    if isinstance(env, Envelope):
        return (env.body, env.sig)
    if isinstance(env, dict) and isinstance(env.get("body"), bytes) and isinstance(env.get("sig"), bytes):
        return (env["body"], env["sig"])
    return None


class _Pair(BaseModel):
    """Two signed envelopes of one kind, held in canonical order."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")
    KIND: ClassVar[str] = ""
    first: Envelope
    second: Envelope

    @model_validator(mode="before")
    @classmethod
    def _canonical_order(cls, data: Any) -> Any:
        if isinstance(data, dict):
            a, b = _order_key(data.get("first")), _order_key(data.get("second"))
            if a is not None and b is not None and b < a:
                data = {**data, "first": data["second"], "second": data["first"]}
        return data

    def body(self) -> dict[str, Any]:
        return {"kind": self.KIND, "first": self.first.model_dump(), "second": self.second.model_dump()}


class DuplicateVoteEvidence(_Pair):
    """Two conflicting votes signed by one validator for the same (height, round, type)."""

    KIND: ClassVar[str] = "duplicate_vote"


class ConflictingProposalEvidence(_Pair):
    """Two proposals signed by one proposer for the same (height, round) with different values."""

    KIND: ClassVar[str] = "conflicting_proposal"


Evidence = DuplicateVoteEvidence | ConflictingProposalEvidence
EVIDENCE_KINDS: dict[str, type[DuplicateVoteEvidence] | type[ConflictingProposalEvidence]] = {
    DuplicateVoteEvidence.KIND: DuplicateVoteEvidence,
    ConflictingProposalEvidence.KIND: ConflictingProposalEvidence,
}


def evidence_id(ev: Evidence) -> bytes:
    """SHA-256 of the canonical body; independent of the order the pair was given in."""
    return canonical.digest(ev.body())


def check_evidence(ev: Evidence, validators: ValidatorSet, chain_id: str | None = None) -> tuple[PeerId, int] | str:
    """``(offender, height)`` if ``ev`` is valid against ``validators`` (and, given ``chain_id``, both messages
    are for that chain), else the reason."""
    if ev.first == ev.second:
        return "the two messages are identical"
    try:
        if isinstance(ev, DuplicateVoteEvidence):
            a = open_envelope(Vote, ev.first, validators.public_key_of).message
            b = open_envelope(Vote, ev.second, validators.public_key_of).message
            if chain_id is not None and not a.chain_id == b.chain_id == chain_id:
                return f"votes are not both for chain {chain_id!r}"
            if a.voter != b.voter:
                return "votes are signed by different validators"
            if (a.height, a.round, a.type) != (b.height, b.round, b.type):
                return "votes are for different (height, round, type)"
            if a.value_id == b.value_id:
                return "votes are for the same value"
            return a.voter, a.height
        p = open_envelope(Proposal, ev.first, validators.public_key_of).message
        q = open_envelope(Proposal, ev.second, validators.public_key_of).message
    except MessageError as exc:
        return str(exc)
    if chain_id is not None and not p.value.chain_id == q.value.chain_id == chain_id:
        return f"proposals are not both for chain {chain_id!r}"
    if p.proposer != q.proposer:
        return "proposals are signed by different validators"
    if (p.height, p.round) != (q.height, q.round):
        return "proposals are for different (height, round)"
    if p.value.value_id() == q.value.value_id():
        return "proposals are for the same value"
    return p.proposer, p.height


def verify_evidence(ev: Evidence, validators: ValidatorSet, chain_id: str | None = None) -> str | None:
    """``None`` if ``ev`` proves equivocation by a member of ``validators``, else why not."""
    result = check_evidence(ev, validators, chain_id)
    return result if isinstance(result, str) else None


def from_equivocation(eq: Equivocation) -> Evidence:
    """Evidence from the core's :class:`~consensus.state_machine.Equivocation` output."""
    a, b = eq.first, eq.second
    if isinstance(a.message, Vote) and isinstance(b.message, Vote):
        return DuplicateVoteEvidence(first=a.envelope, second=b.envelope)
    if isinstance(a.message, Proposal) and isinstance(b.message, Proposal):
        return ConflictingProposalEvidence(first=a.envelope, second=b.envelope)
    raise ValueError("an equivocation pairs two votes or two proposals")


def decode_evidence(raw: Any) -> Evidence:
    """Validate a decoded (tuple-form) evidence map; raise :class:`MessageError` if malformed."""
    if not isinstance(raw, dict) or set(raw) != {"kind", "first", "second"}:
        raise MessageError("evidence must be a map with keys kind, first, second")
    model = EVIDENCE_KINDS.get(raw["kind"]) if isinstance(raw["kind"], str) else None
    if model is None:
        raise MessageError(f"unknown evidence kind {raw['kind']!r}")
    try:
        ev = model.model_validate({"first": raw["first"], "second": raw["second"]})
    except ValidationError as exc:
        raise MessageError(f"invalid {model.KIND} evidence: {exc.errors()[0]['msg']}") from exc
    if ev.body() != {"kind": raw["kind"], "first": dict(raw["first"]), "second": dict(raw["second"])}:
        raise MessageError("evidence pair is not in canonical order")
    return ev
