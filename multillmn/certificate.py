"""Commit certificates: everything a client needs to check a decision offline.

A certificate is JSON. Its authoritative parts are the decided value as
canonical msgpack (base64), the signed precommits and the validator set; the
``summary`` block repeats the question, answer and answers in plain text for
people and is checked against the signed data, so editing it is caught too.

Verification (``verify``) checks, with no network and no model:
the genesis is well formed (and equals a trusted genesis when given); the
``validators`` of the certificate's height have exactly the genesis members
and keys, and their hash is the one the value commits to (with static
weights they must equal the genesis set);
the value decodes and every answer and the query are signed by validators;
the answers carry more than 2/3 of the weight and the chosen group and answer
follow from the value's claimed similarities by the grouping rule; the
precommits are for this height, round and value id, from distinct validators,
carrying more than 2/3 of the weight of the height's set.

What offline verification cannot check is that the height's weights are the
ones the weight rule produced: that needs the committed history (every
peer's ledger holds every decided value; see ADR 0010).
Every honest precommit attests ``validators_hash``, so a forged set needs a
quorum of that forged set to sign, which the cap on any peer's share (3/10)
makes at least four colluding peers.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consensus import grouping
from consensus.validators import ValidatorSet
from consensus.messages import (
    Answer,
    Envelope,
    MessageError,
    Query,
    Signed,
    Value,
    VerifiedCache,
    Vote,
    decode_value,
    open_envelope,
)
from multillmn import canonical
from multillmn.genesis import Genesis, GenesisError

__all__ = ["Certificate", "CertificateError", "build_certificate", "verify"]

VERSION = 2


class CertificateError(ValueError):
    """A certificate is malformed or does not prove what it claims; the message says why."""


@dataclass(frozen=True)
class Certificate:
    """A verified certificate's meaning."""

    chain_id: str
    height: int
    round: int
    question: str
    answer: str
    winners: tuple[str, ...]
    agreed_weight: int
    precommit_weight: int
    total_weight: int
    answers: tuple[Answer, ...]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise CertificateError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise CertificateError(f"{what} is not valid base64") from None


def _envelope_json(env: Envelope) -> dict[str, str]:
    return {"body": _b64(env.body), "sig": _b64(env.sig)}


def _envelope_from_json(data: Any, what: str) -> Envelope:
    if not isinstance(data, dict) or set(data) != {"body", "sig"}:
        raise CertificateError(f"{what} must be an object with body and sig")
    try:
        return Envelope(body=_unb64(data["body"], f"{what}.body"), sig=_unb64(data["sig"], f"{what}.sig"))
    except ValueError as exc:
        if isinstance(exc, CertificateError):
            raise
        raise CertificateError(f"{what}: {exc}") from None


def _validators_json(vs: ValidatorSet) -> list[dict[str, Any]]:
    return [{"peer_id": v.peer_id, "public_key": v.public_key.hex(), "weight": v.weight, "moniker": v.moniker}
            for v in vs.validators]


def build_certificate(
    genesis: Genesis, height: int, round_: int, value: Value, precommits: tuple[Signed[Vote], ...],
    cache: VerifiedCache | None = None, validators: ValidatorSet | None = None,
) -> dict[str, Any]:
    """The JSON certificate for a decision (the runner calls this on Decide).

    ``validators`` is the set in force at ``height`` (default: the genesis set).
    """
    vs = validators if validators is not None else genesis.validators
    answers = [open_envelope(Answer, env, vs.public_key_of, cache).message for env in value.answers]
    query = open_envelope(Query, value.query, vs.public_key_of, cache).message
    return {
        "version": VERSION,
        "chain_id": genesis.chain_id,
        "height": height,
        "round": round_,
        "value": _b64(value.canonical()),
        "value_id": value.value_id().hex(),
        "precommits": [_envelope_json(p.envelope) for p in precommits],
        "genesis": genesis.to_json(),
        "validators": _validators_json(vs),
        "summary": _summary(query, value, answers),
    }


def _summary(query: Query, value: Value, answers: list[Answer]) -> dict[str, Any]:
    return {
        "question": query.question,
        "answer": value.answer,
        "winners": list(value.winners),
        "answers": [{"peer_id": a.peer, "model": a.model, "text": a.text} for a in answers],
    }


def verify(cert: Any, trusted: Genesis | None = None) -> Certificate:
    """Check a certificate (parsed JSON) offline; raise :class:`CertificateError` with the reason."""
    if not isinstance(cert, dict):
        raise CertificateError("a certificate is a JSON object")
    expected = {"version", "chain_id", "height", "round", "value", "value_id", "precommits", "genesis",
                "validators", "summary"}
    if set(cert) != expected:
        missing, extra = expected - set(cert), set(cert) - expected
        raise CertificateError(f"unexpected fields: missing {sorted(missing)}, unknown {sorted(extra)}")
    if cert["version"] != VERSION:
        raise CertificateError(f"unsupported certificate version {cert['version']!r}")
    try:
        genesis = Genesis.from_json(cert["genesis"])
    except GenesisError as exc:
        raise CertificateError(f"validator set: {exc}") from None
    if trusted is not None and (
        genesis.validators.set_hash() != trusted.validators.set_hash()
        or genesis.chain_id != trusted.chain_id
        or genesis.params != trusted.params
    ):
        raise CertificateError("the validator set or chain differs from the trusted genesis")
    if genesis.chain_id != cert["chain_id"]:
        raise CertificateError("chain_id does not match the genesis")
    height, round_ = cert["height"], cert["round"]
    if not isinstance(height, int) or isinstance(height, bool) or height < 1:
        raise CertificateError("height must be a positive integer")
    if not isinstance(round_, int) or isinstance(round_, bool) or round_ < 0:
        raise CertificateError("round must be a non-negative integer")

    value = _decode_value(_unb64(cert["value"], "value"))
    value_id = value.value_id()
    if cert["value_id"] != value_id.hex():
        raise CertificateError("value_id does not match the value")
    vs = _height_set(cert["validators"], genesis, value)
    verified = VerifiedCache()  # each signature is checked once, though the value is read twice
    reason = grouping.validate_value(
        value, validators=vs, local_sims=None,
        threshold=genesis.params.similarity_threshold, tolerance=genesis.params.similarity_tolerance,
        cache=verified,
    )
    if reason is not None:
        raise CertificateError(f"invalid value: {reason}")

    voters: set[str] = set()
    if not isinstance(cert["precommits"], list):
        raise CertificateError("precommits must be a list")
    for i, raw in enumerate(cert["precommits"]):
        env = _envelope_from_json(raw, f"precommits[{i}]")
        try:
            vote = open_envelope(Vote, env, vs.public_key_of).message
        except MessageError as exc:
            raise CertificateError(f"precommits[{i}]: {exc}") from None
        if vote.type != "precommit" or vote.height != height or vote.round != round_:
            raise CertificateError(f"precommits[{i}] is not a precommit for height {height} round {round_}")
        if vote.value_id != value_id:
            raise CertificateError(f"precommits[{i}] is for another value")
        if vote.voter in voters:
            raise CertificateError(f"precommits[{i}] repeats voter {vote.voter}")
        voters.add(vote.voter)
    precommit_weight = sum(vs.weight_of(v) for v in voters)
    if not vs.has_quorum(precommit_weight):
        raise CertificateError(
            f"precommits carry {precommit_weight} of {vs.total} weight; more than 2/3 is needed"
        )

    answers = tuple(open_envelope(Answer, env, vs.public_key_of, verified).message for env in value.answers)
    query = open_envelope(Query, value.query, vs.public_key_of, verified).message
    if cert["summary"] != _summary(query, value, list(answers)):
        raise CertificateError("the summary does not match the signed value")
    return Certificate(
        chain_id=genesis.chain_id, height=height, round=round_, question=query.question,
        answer=value.answer, winners=value.winners,
        agreed_weight=sum(vs.weight_of(w) for w in value.winners),
        precommit_weight=precommit_weight, total_weight=vs.total, answers=answers,
    )


def _height_set(raw: Any, genesis: Genesis, value: Value) -> ValidatorSet:
    """The certificate's validator set for its height, checked against the genesis and the value."""
    try:
        vs = Genesis.from_json({"chain_id": genesis.chain_id, "validators": raw}).validators
    except GenesisError as exc:
        raise CertificateError(f"validators: {exc}") from None
    members = [(v.peer_id, v.public_key, v.moniker) for v in vs.validators]
    if members != [(v.peer_id, v.public_key, v.moniker) for v in genesis.validators.validators]:
        raise CertificateError("validators: the members or keys differ from the genesis")
    if genesis.params.weights == "static" and vs != genesis.validators:
        raise CertificateError("validators: weights are static but differ from the genesis")
    if value.validators_hash != vs.set_hash() and (value.validators_hash or genesis.params.weights == "adaptive"):
        raise CertificateError("validators: not the set the value commits to (validators_hash)")
    return vs


def _decode_value(data: bytes) -> Value:
    try:
        raw = canonical.unpack(data)
    except canonical.CanonicalError as exc:
        raise CertificateError(f"value: {exc}") from None
    try:
        value = decode_value(raw)
    except MessageError as exc:
        raise CertificateError(str(exc)) from None
    if value.canonical() != data:
        raise CertificateError("value is not in canonical form")
    return value


def verify_file(path: Path, trusted_genesis: Path | None = None) -> Certificate:
    """Read ``path`` (and optionally a trusted genesis file) and verify."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise CertificateError(f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise CertificateError(f"{path} is not JSON: {exc}") from None
    trusted = None
    if trusted_genesis is not None:
        try:
            trusted = Genesis.load(trusted_genesis)
        except GenesisError as exc:
            raise CertificateError(f"trusted genesis: {exc}") from None
    return verify(data, trusted)

