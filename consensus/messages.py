"""Protocol messages: schemas, canonical bodies and signed envelopes.

Every message kind is a strict, frozen pydantic model. A signed message
travels as an :class:`Envelope`: the canonical msgpack ``body`` exactly as it
was signed, and the Ed25519 ``sig`` over ``signing_bytes(kind, body)``.
Bodies are re-validated on every decode; nothing unvalidated reaches a core.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from consensus import merkle
from multillmn import canonical
from multillmn.identity import KeyPair, PeerId, peer_id_of, verify_signature

__all__ = [
    "MessageError",
    "Message",
    "Query",
    "Answer",
    "Verdict",
    "answers_digest",
    "Value",
    "Outcome",
    "ValueHeader",
    "EvidencePair",
    "Proposal",
    "Vote",
    "Join",
    "Leave",
    "Envelope",
    "Signed",
    "KINDS",
    "sign",
    "open_envelope",
    "VerifiedCache",
    "MAX_QUESTION_CHARS",
    "MAX_ANSWER_CHARS",
    "query_id_of",
    "decode_value",
    "decode_outcome",
    "payload_hash",
    "MAX_QUERIES_PER_VALUE",
]

MAX_QUESTION_CHARS = 2000
MAX_ANSWER_CHARS = 4000
MAX_PEERS = 256

PeerIdField = Annotated[str, Field(pattern=r"^[0-9a-f]{40}$")]
Hash32 = Annotated[bytes, Field(min_length=32, max_length=32)]
Height = Annotated[int, Field(ge=1, le=2**62)]
Round = Annotated[int, Field(ge=0, le=2**20)]


class MessageError(ValueError):
    """A message is malformed, of an unknown kind, or badly signed (the sender's fault)."""


class Message(BaseModel):
    """Base of all wire schemas: strict types, immutable, no unknown fields.

    A message is signed by the key of the peer its ``SIGNER`` field names; a
    ``SELF_SIGNED`` one carries that key itself (``public_key``), so a peer that
    is no validator yet can sign it (a join request).
    """

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")
    KIND: ClassVar[str] = ""
    SIGNER: ClassVar[str] = ""
    SELF_SIGNED: ClassVar[bool] = False

    def body(self) -> dict[str, Any]:
        return self.model_dump()

    def canonical(self) -> bytes:
        return canonical.pack(self.body())

    @property
    def signer(self) -> PeerId:
        return str(getattr(self, self.SIGNER))


class Query(Message):
    """A client's question, signed by the peer that received it (the entry peer)."""

    KIND: ClassVar[str] = "query"
    SIGNER: ClassVar[str] = "entry"
    entry: PeerIdField
    question: Annotated[str, Field(min_length=1, max_length=MAX_QUESTION_CHARS)]
    nonce: Annotated[bytes, Field(min_length=16, max_length=16)]
    max_tokens: Annotated[int, Field(ge=1, le=1024)]
    created_ms: Annotated[int, Field(ge=0)]


class Answer(Message):
    """One peer's answer to a query, with the model that produced it."""

    KIND: ClassVar[str] = "answer"
    SIGNER: ClassVar[str] = "peer"
    query_id: Hash32
    peer: PeerIdField
    model: Annotated[str, Field(min_length=1, max_length=128)]
    text: Annotated[str, Field(max_length=MAX_ANSWER_CHARS)]
    gen_ms: Annotated[int, Field(ge=0)]


MAX_VERDICT = 1000
"""A judge's verdict on an answer is per mille in ``[-MAX_VERDICT, MAX_VERDICT]`` (ADR 0022)."""


class Verdict(Message):
    """A judge's per-mille verdicts on the answers to one query outside its own group (ADR 0022).

    ``verdicts`` holds ``(answerer, verdict)`` pairs sorted by answerer, unique,
    never the judge itself; ``answers_digest`` is :func:`answers_digest` of the
    signed answers it rated, in that order, so a verdict applies to exactly
    those answers (an answerer that signed two answers cannot have the verdict
    moved to the other) and stays usable when more answers arrive after it.
    Empty ``verdicts``: the judge abstains (no model to judge with, or no other
    group); it still counts as a judge heard from (:mod:`consensus.grouping`).
    """

    KIND: ClassVar[str] = "verdict"
    SIGNER: ClassVar[str] = "judge"
    judge: PeerIdField
    query_id: Hash32
    answers_digest: Hash32
    verdicts: Annotated[tuple[tuple[PeerIdField, Annotated[int, Field(ge=-MAX_VERDICT, le=MAX_VERDICT)]], ...],
                        Field(max_length=MAX_PEERS)]

    @model_validator(mode="after")
    def _sorted_unique_not_own(self) -> Verdict:
        ids = [p for p, _ in self.verdicts]
        if any(a >= b for a, b in zip(ids, ids[1:])):
            raise ValueError("verdicts must be sorted by answerer without duplicates")
        if self.judge in ids:
            raise ValueError("a judge gives no verdict on its own answer")
        return self

    def of(self, answerer: PeerId) -> int | None:
        """The verdict given to ``answerer``'s answer, ``None`` if it was not rated."""
        return next((v for p, v in self.verdicts if p == answerer), None)


def answers_digest(answers: Sequence[Envelope]) -> bytes:
    """SHA-256 of the canonical list of the signed answers' bodies and signatures, in order."""
    return canonical.digest([[a.body, a.sig] for a in answers])


class Envelope(BaseModel):
    """A signed message as carried inside another: canonical body bytes and signature."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")
    body: Annotated[bytes, Field(max_length=1 << 20)]
    sig: Annotated[bytes, Field(min_length=64, max_length=64)]


class EvidencePair(BaseModel):
    """Two conflicting envelopes signed by one validator, as carried in a value.

    Same body as :mod:`consensus.evidence` (which checks it); ``kind`` is
    ``duplicate_vote`` or ``conflicting_proposal``.
    """

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")
    kind: Literal["duplicate_vote", "conflicting_proposal"]
    first: Envelope
    second: Envelope


MAX_SCORE_VECTORS = 4 * MAX_PEERS
MAX_EVIDENCE = 64
MAX_MEMBERSHIP = 16
MAX_QUERIES_PER_VALUE = 16
"""Queries one value (one height) decides at most."""


ChainId = Annotated[str, Field(max_length=64)]


class Outcome(BaseModel):
    """One query's part of a value: the signed query, the answers that justify the choice, and the choice.

    ``sims`` is the proposer's quantised similarity matrix (upper triangle, row
    major, per-mille) between the answers in order; ``winners`` are the peers
    whose answers form the chosen group and ``answer`` is its representative.
    ``verdicts``: the judges' signed :class:`Verdict` messages, in ascending
    judge order, on a chain whose genesis sets ``verdict_rule = "veto"`` (ADR 0022).
    """

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")
    query: Envelope
    answers: Annotated[tuple[Envelope, ...], Field(min_length=1, max_length=MAX_PEERS)]
    sims: tuple[Annotated[int, Field(ge=-1000, le=1000)], ...]
    winners: Annotated[tuple[PeerIdField, ...], Field(min_length=1, max_length=MAX_PEERS)]
    answer: Annotated[str, Field(max_length=MAX_ANSWER_CHARS)]
    verdicts: Annotated[tuple[Envelope, ...], Field(max_length=MAX_PEERS)] = ()

    def body(self) -> dict[str, Any]:
        return _with_verdicts({"query": self.query.model_dump(), "answers": [a.model_dump() for a in self.answers],
                               "sims": list(self.sims), "winners": list(self.winners), "answer": self.answer},
                              self.verdicts)

    def canonical(self) -> bytes:
        """The bytes a value's Merkle tree hashes as this outcome's leaf."""
        return canonical.pack(self.body())

    def query_id(self) -> bytes:
        return query_id_of(self.query)


def _with_verdicts(body: dict[str, Any], verdicts: tuple[Envelope, ...]) -> dict[str, Any]:
    """``body`` with its signed verdicts (ADR 0022), the key absent when there are none: an outcome without
    verdicts keeps the bytes, leaf hash and value id it had before verdicts existed."""
    if verdicts:
        body["verdicts"] = [v.model_dump() for v in verdicts]
    return body


_OUTCOME_FIELDS = ("query", "answers", "sims", "winners", "answer", "verdicts")


class Value(Message):
    """What a height decides: a query, the answers that justify the choice, and the choice.

    ``sims`` is the proposer's quantised similarity matrix (upper triangle, row
    major, per-mille) between the answers in order; ``winners`` are the peers
    whose answers form the chosen group and ``answer`` is its representative.
    Validators recompute similarities themselves and accept the claimed ones
    within a stated tolerance, so float noise cannot split honest peers.

    The value also commits what the weights of later heights derive from
    (:mod:`consensus.chain`): signed score vectors for earlier heights
    (``scores``) and equivocation ``evidence``; and the validator sets:
    ``validators_hash``, the hash of the set in force at this height (the
    one the quorum is counted in), and ``next_validators_hash``, the hash of
    the set in force at the next height. So every precommit attests the next
    set too, and a client that trusts one height's set can follow the chain
    of sets (:mod:`multillmn.lightclient`).

    A height can decide several queries (ADR 0020): the first one's
    :class:`Outcome` sits in the top-level fields (so a one-query value is
    the value of old), the others in ``more``, in the order the proposer took
    them from its pool. :meth:`outcomes` gives all of them.

    The value id is the hash of a small *header*: the two set hashes and the
    *payload hash* (:meth:`header`), so a light client checks the set
    commitments of a height without the answers. The payload hash commits to
    the outcomes through a Merkle root (:mod:`consensus.merkle`) and to the
    rest of the value through its hash, so a client checks its own query's
    outcome with a proof of ``log2(n)`` hashes, without the others' answers.
    """

    KIND: ClassVar[str] = "value"
    chain_id: ChainId = ""
    query: Envelope
    answers: Annotated[tuple[Envelope, ...], Field(min_length=1, max_length=MAX_PEERS)]
    sims: tuple[Annotated[int, Field(ge=-1000, le=1000)], ...]
    winners: Annotated[tuple[PeerIdField, ...], Field(min_length=1, max_length=MAX_PEERS)]
    answer: Annotated[str, Field(max_length=MAX_ANSWER_CHARS)]
    validators_hash: Annotated[bytes, Field(max_length=32)] = b""
    next_validators_hash: Annotated[bytes, Field(max_length=32)] = b""
    scores: Annotated[tuple[Envelope, ...], Field(max_length=MAX_SCORE_VECTORS)] = ()
    evidence: Annotated[tuple[EvidencePair, ...], Field(max_length=MAX_EVIDENCE)] = ()
    joins: Annotated[tuple[Envelope, ...], Field(max_length=MAX_MEMBERSHIP)] = ()
    leaves: Annotated[tuple[Envelope, ...], Field(max_length=MAX_MEMBERSHIP)] = ()
    last_commit: Annotated[tuple[Envelope, ...], Field(max_length=MAX_PEERS)] = ()
    more: Annotated[tuple[Outcome, ...], Field(max_length=MAX_QUERIES_PER_VALUE - 1)] = ()
    verdicts: Annotated[tuple[Envelope, ...], Field(max_length=MAX_PEERS)] = ()  # the first outcome's

    def body(self) -> dict[str, Any]:
        return _with_verdicts({
            "chain_id": self.chain_id,
            "query": self.query.model_dump(),
            "answers": [a.model_dump() for a in self.answers],
            "sims": list(self.sims),
            "winners": list(self.winners),
            "answer": self.answer,
            "validators_hash": self.validators_hash,
            "next_validators_hash": self.next_validators_hash,
            "scores": [s.model_dump() for s in self.scores],
            "evidence": [e.model_dump() for e in self.evidence],
            "joins": [j.model_dump() for j in self.joins],
            "leaves": [x.model_dump() for x in self.leaves],
            "last_commit": [c.model_dump() for c in self.last_commit],
            "more": [o.body() for o in self.more],
        }, self.verdicts)

    def outcomes(self) -> tuple[Outcome, ...]:
        """Every query this value decides, the first one first."""
        first = Outcome(query=self.query, answers=self.answers, sims=self.sims, winners=self.winners,
                        answer=self.answer, verdicts=self.verdicts)
        return (first, *self.more)

    def rest_hash(self) -> bytes:
        """SHA-256 of the canonical body without the outcomes and the two set hashes."""
        body = self.body()
        for key in (*_OUTCOME_FIELDS, "more", "validators_hash", "next_validators_hash"):
            body.pop(key, None)
        return canonical.digest(body)

    def payload_hash(self) -> bytes:
        """What the header commits to besides the set hashes: the outcomes' Merkle root and the rest's hash."""
        return payload_hash(merkle.root([o.canonical() for o in self.outcomes()]), self.rest_hash())

    def header(self) -> ValueHeader:
        """What the value id commits to: the set hashes and the payload hash."""
        return ValueHeader(validators_hash=self.validators_hash, next_validators_hash=self.next_validators_hash,
                           payload_hash=self.payload_hash())

    def value_id(self) -> bytes:
        return self.header().value_id()

    def query_id(self) -> bytes:
        """The first outcome's query (the one score vectors of this height name)."""
        return query_id_of(self.query)

    def query_ids(self) -> tuple[bytes, ...]:
        return tuple(o.query_id() for o in self.outcomes())


def payload_hash(outcomes_root: bytes, rest_hash: bytes) -> bytes:
    """A value's payload hash from its outcomes' Merkle root and the hash of the rest (see :class:`Value`)."""
    return canonical.digest({"outcomes_root": outcomes_root, "rest": rest_hash})


class ValueHeader(BaseModel):
    """A value's commitments: ``value_id = SHA-256(canonical header)`` (see :class:`Value`)."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")
    validators_hash: Annotated[bytes, Field(max_length=32)]
    next_validators_hash: Annotated[bytes, Field(max_length=32)]
    payload_hash: Hash32

    def value_id(self) -> bytes:
        return canonical.digest(self.model_dump())


class Proposal(Message):
    """The proposer's value for (height, round); ``valid_round`` is -1 or a round with a +2/3 prevote quorum."""

    KIND: ClassVar[str] = "proposal"
    SIGNER: ClassVar[str] = "proposer"
    height: Height
    round: Round
    valid_round: Annotated[int, Field(ge=-1, le=2**20)]
    proposer: PeerIdField
    value: Value

    def body(self) -> dict[str, Any]:
        return {
            "height": self.height,
            "round": self.round,
            "valid_round": self.valid_round,
            "proposer": self.proposer,
            "value": self.value.body(),
        }


class Vote(Message):
    """A prevote or precommit for a value id, or for nil (``value_id`` None), on chain ``chain_id``.

    The chain id is signed, as in CometBFT: a key that validates on two
    chains cannot have its votes of one replayed as the other's (a
    certificate, or duplicate-vote evidence framing an honest validator).
    """

    KIND: ClassVar[str] = "vote"
    SIGNER: ClassVar[str] = "voter"
    chain_id: ChainId = ""
    type: Literal["prevote", "precommit"]
    height: Height
    round: Round
    value_id: Hash32 | None
    voter: PeerIdField


MAX_MONIKER = 64
MAX_ADDRESS = 255
MAX_MODEL = 128


class Join(Message):
    """A peer outside the validator set asks to join it (from the next epoch on); signed by its own key."""

    KIND: ClassVar[str] = "join"
    SIGNER: ClassVar[str] = "peer_id"
    SELF_SIGNED: ClassVar[bool] = True
    chain_id: ChainId
    peer_id: PeerIdField
    public_key: Annotated[bytes, Field(min_length=32, max_length=32)]
    moniker: Annotated[str, Field(min_length=1, max_length=MAX_MONIKER)]
    address: Annotated[str, Field(pattern=r"^[A-Za-z0-9.:\[\]_-]{1,250}:[0-9]{1,5}$")]
    model: Annotated[str, Field(pattern=r"^[A-Za-z0-9._:/+-]{1,128}$")]
    created_ms: Annotated[int, Field(ge=0, le=2**62)]


class Leave(Message):
    """A validator leaves the set (from the next epoch on)."""

    KIND: ClassVar[str] = "leave"
    SIGNER: ClassVar[str] = "peer_id"
    chain_id: ChainId
    peer_id: PeerIdField
    created_ms: Annotated[int, Field(ge=0, le=2**62)]


KINDS: dict[str, type[Message]] = {m.KIND: m for m in (Query, Answer, Verdict, Proposal, Vote, Join, Leave)}

M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class Signed(Generic[M]):
    """A decoded, schema-valid message with the exact body bytes and signature it came with."""

    message: M
    envelope: Envelope

    @property
    def signer(self) -> PeerId:
        return self.message.signer

    @property
    def kind(self) -> str:
        return self.message.KIND


def sign(message: M, key: KeyPair) -> Signed[M]:
    """Sign ``message`` with ``key``; the key must belong to the message's signer field."""
    if key.peer_id != message.signer:
        raise ValueError(f"key {key.peer_id} cannot sign for {message.signer}")
    body = message.canonical()
    return Signed(message, Envelope(body=body, sig=key.sign(message.KIND, body)))


def _from_body(model: type[M], raw: Any) -> M:
    if not isinstance(raw, dict):
        raise MessageError(f"{model.KIND} body is not a map")
    if model is Proposal:
        raw = dict(raw)
        raw["value"] = decode_value(raw.get("value"))
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise MessageError(f"invalid {model.KIND}: {_first_error(exc)}") from exc


def decode_value(raw: Any) -> Value:
    """Validate a decoded (tuple-form) value map into a :class:`Value`."""
    if not isinstance(raw, dict):
        raise MessageError("value is not a map")
    raw = _with_envelopes(raw)
    try:
        more = raw.get("more", ())
        if isinstance(more, tuple):
            raw["more"] = tuple(decode_outcome(o) for o in more)
        scores = raw.get("scores")
        if isinstance(scores, tuple):
            raw["scores"] = tuple(Envelope.model_validate(e) for e in scores)
        evidence = raw.get("evidence")
        if isinstance(evidence, tuple):
            raw["evidence"] = tuple(_evidence_pair(e) for e in evidence)
        return Value.model_validate(raw)
    except ValidationError as exc:
        raise MessageError(f"invalid value: {_first_error(exc)}") from exc


def decode_outcome(raw: Any) -> Outcome:
    """Validate a decoded (tuple-form) outcome map into an :class:`Outcome`."""
    out = _with_envelopes(raw)
    try:
        return Outcome.model_validate(out)
    except ValidationError as exc:
        raise MessageError(f"invalid outcome: {_first_error(exc)}") from exc


def _with_envelopes(raw: Any) -> dict[str, Any]:
    """A value or outcome map with its query and answers as envelopes (pydantic's strict mode takes no maps
    for models); a :class:`MessageError` when they are not well-formed."""
    if not isinstance(raw, dict):
        raise MessageError("an outcome is not a map")
    out: dict[str, Any] = dict(raw)
    try:
        out["query"] = Envelope.model_validate(out.get("query"))
        for key in ("answers", "verdicts"):
            envelopes = out.get(key)
            if isinstance(envelopes, tuple):
                out[key] = tuple(Envelope.model_validate(a) for a in envelopes)
    except ValidationError as exc:
        raise MessageError(f"invalid value: {_first_error(exc)}") from exc
    return out


def _evidence_pair(raw: Any) -> EvidencePair:
    if not isinstance(raw, dict):
        return EvidencePair.model_validate(raw)
    return EvidencePair.model_validate({
        **raw, "first": Envelope.model_validate(raw.get("first")), "second": Envelope.model_validate(raw.get("second")),
    })


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "body"
    return f"{loc}: {err['msg']}"


class VerifiedCache:
    """Envelopes whose signatures already verified, so a message carried again is not re-verified.

    An answer is verified when it arrives, then travels inside proposals and
    certificates; a score vector arrives by gossip, then inside a value, then
    is folded into the weights. Opening each again would cost an Ed25519 check
    and a schema validation every time. Keyed by the exact (kind, body,
    signature), so a hit proves the same bytes verified before; the decoded
    message is kept with it, so a hit skips decoding too. Bounded: the oldest
    entries are forgotten.
    """

    def __init__(self, capacity: int = 8192) -> None:
        self._capacity = capacity
        self._seen: OrderedDict[tuple[str, bytes, bytes], Message | None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, kind: str, envelope: Envelope) -> bool:
        return self.lookup(kind, envelope) is not _MISS

    def lookup(self, kind: str, envelope: Envelope) -> Message | None | object:
        """The decoded message of a verified envelope (``None`` if only its signature is known), else
        the private ``_MISS`` sentinel."""
        key = (kind, envelope.body, envelope.sig)
        if key not in self._seen:
            return _MISS
        self._seen.move_to_end(key)
        return self._seen[key]

    def add(self, kind: str, envelope: Envelope, message: Message | None = None) -> None:
        self._seen[(kind, envelope.body, envelope.sig)] = message
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)


_MISS = object()


def open_envelope(
    model: type[M], envelope: Envelope, public_key_of: Any, cache: VerifiedCache | None = None
) -> Signed[M]:
    """Decode and validate an envelope of a known kind and check its signature.

    ``public_key_of`` maps a peer id to its raw public key or ``None`` when the
    signer is unknown. With a ``cache``, a signature verified before is not
    checked again. Raises :class:`MessageError` with the reason otherwise.
    """
    known = cache.lookup(model.KIND, envelope) if cache is not None else _MISS
    if isinstance(known, model):  # these exact bytes were decoded, validated and verified before
        if not model.SELF_SIGNED and public_key_of(known.signer) is None:
            raise MessageError(f"{model.KIND} signed by unknown peer {known.signer}")
        return Signed(known, envelope)
    try:
        raw = canonical.unpack(envelope.body)
    except canonical.CanonicalError as exc:
        raise MessageError(str(exc)) from exc
    message = _from_body(model, raw)
    if message.canonical() != envelope.body:
        raise MessageError(f"{model.KIND} body is not in canonical form")
    public_key = _self_key(message) if model.SELF_SIGNED else public_key_of(message.signer)
    if public_key is None:
        raise MessageError(f"{model.KIND} signed by unknown peer {message.signer}")
    if known is _MISS and not verify_signature(public_key, model.KIND, envelope.body, envelope.sig):
        raise MessageError(f"bad signature on {model.KIND} from {message.signer}")
    if cache is not None:
        cache.add(model.KIND, envelope, message)
    return Signed(message, envelope)


def _self_key(message: Message) -> bytes | None:
    """The public key a self-signed message carries, if its signer's id is that key's."""
    key = getattr(message, "public_key", None)
    return key if isinstance(key, bytes) and len(key) == 32 and peer_id_of(key) == message.signer else None


def query_id_of(envelope: Envelope) -> bytes:
    """A query's id: SHA-256 of its canonical body (entry peer, question, nonce, ...)."""
    return hashlib.sha256(envelope.body).digest()
