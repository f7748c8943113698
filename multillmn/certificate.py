"""Commit certificates: everything a client needs to check a decision offline, from the genesis alone.

A *commit certificate* is JSON (version 3) and carries the whole decided value::

    {"version": 3, "chain_id", "height", "round",
     "value": base64 canonical msgpack, "value_id": hex,
     "precommits": [{"body", "sig"}], "validators": [the set in force at height],
     "genesis": {...}, "summary": {question, answer, winners, answers} (of the value's first query),
     "trust_path": [light blocks from the genesis (or a later trusted height) to height - 1]}

A height may decide several queries (ADR 0020). A client gets the *query
certificate* of its own query (version 4, :func:`query_certificate`): the
value's header instead of the value, that query's outcome, and the Merkle
proof that the header's payload hash commits to it, so it needs none of the
other queries' answers::

    {"version": 4, "chain_id", "height", "round",
     "header": {validators_hash, next_validators_hash, payload_hash},
     "outcome": base64 canonical msgpack, "proof": {index, count, path: [hex], rest_hash: hex},
     "precommits", "validators", "genesis", "summary", "trust_path"}

Their authoritative parts are the decided value (or header, outcome and
proof), the signed precommits and the validator set; ``summary`` repeats
the question and answers in plain text and is checked against the signed
data. ``trust_path`` holds the
intermediate decided heights (value header, precommits, set) a client
needs to trust the height's set (:mod:`consensus.lightclient`): usually
none, since more than 1/3 of the genesis weight signs most heights.

:func:`verify` checks, with no network and no model, from a trusted
genesis (or a later :class:`~consensus.lightclient.TrustedState`): every
block of the trust path and then the certificate's own height by the
light-client rule (adjacent set hash, or more than 1/3 of the trusted
set's weight signing); the precommits carry more than 2/3 of the height's
set; the value decodes (or the outcome proves under the header) and every
answer and the query are signed by members of that set; the answers carry more than 2/3 of its weight and the
chosen group and answer follow from the claimed similarities by the
grouping rule; the summary matches. Without a trusted genesis, the one in
the certificate is used, which proves only self-consistency.

Peers check certificates from the ledger or catch-up with
:func:`verify_commit` instead, against the validator set their own chain
computed for that height.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consensus import grouping, merkle
from consensus.lightclient import (
    LightBlock,
    LightClientError,
    TrustedState,
    commit_signers,
    verify_block,
    verify_path,
)
from consensus.messages import (
    Answer,
    Envelope,
    MAX_QUERIES_PER_VALUE,
    MessageError,
    Outcome,
    Query,
    Signed,
    Value,
    ValueHeader,
    VerifiedCache,
    Vote,
    decode_outcome,
    decode_value,
    open_envelope,
    payload_hash,
)
from consensus.validators import ValidatorSet
from multillmn import canonical, jsonsafe
from multillmn.genesis import Genesis, GenesisError

if TYPE_CHECKING:
    from consensus.chain import Chain

__all__ = [
    "Certificate", "CertificateError", "build_certificate", "certificate_precommits", "light_block_of",
    "query_certificate", "trusted_state_from_json",
    "trusted_state_json", "verify", "verify_commit", "verify_file", "with_trust_path",
]

VERSION = 3
QUERY_VERSION = 4
_KEYS = {"version", "chain_id", "height", "round", "value", "value_id", "precommits", "genesis", "validators",
         "summary", "trust_path"}
_QUERY_KEYS = {"version", "chain_id", "height", "round", "header", "outcome", "proof", "precommits", "genesis",
               "validators", "summary", "trust_path"}
_MAX_HEIGHT = 2**62


class CertificateError(ValueError):
    """A certificate is malformed or does not prove what it claims; the message says why."""


@dataclass(frozen=True)
class Certificate:
    """A verified certificate's meaning, and the client's trusted state after accepting it."""

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
    trusted: TrustedState
    path_length: int = 0
    queries: int = 1  # queries decided at this height (one query certificate proves only its own)


# --- JSON pieces ----------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise CertificateError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        raise CertificateError(f"{what} is not valid base64") from None


def _unhex(text: Any, what: str, size: int) -> bytes:
    if not isinstance(text, str) or len(text) != 2 * size:
        raise CertificateError(f"{what} must be {2 * size} hex characters")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise CertificateError(f"{what} is not hex") from None


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


def _precommits_from_json(data: Any, what: str) -> tuple[Envelope, ...]:
    if not isinstance(data, list) or len(data) > 1024:
        raise CertificateError(f"{what} must be a list of at most 1024 precommits")
    return tuple(_envelope_from_json(raw, f"{what}[{i}]") for i, raw in enumerate(data))


def _validators_json(vs: ValidatorSet) -> list[dict[str, Any]]:
    return [{"peer_id": v.peer_id, "public_key": v.public_key.hex(), "weight": v.weight, "moniker": v.moniker}
            for v in vs.validators]


def _validators_from_json(raw: Any, chain_id: str, what: str) -> ValidatorSet:
    try:
        return Genesis.from_json({"chain_id": chain_id, "validators": raw}).validators
    except GenesisError as exc:
        raise CertificateError(f"{what}: {exc}") from None


def _header_json(header: ValueHeader) -> dict[str, str]:
    return {"validators_hash": header.validators_hash.hex(), "next_validators_hash": header.next_validators_hash.hex(),
            "payload_hash": header.payload_hash.hex()}


def _header_from_json(raw: Any, what: str) -> ValueHeader:
    if not isinstance(raw, dict) or set(raw) != {"validators_hash", "next_validators_hash", "payload_hash"}:
        raise CertificateError(f"{what} must hold validators_hash, next_validators_hash and payload_hash")
    return ValueHeader(validators_hash=_unhex(raw["validators_hash"], f"{what}.validators_hash", 32),
                       next_validators_hash=_unhex(raw["next_validators_hash"], f"{what}.next_validators_hash", 32),
                       payload_hash=_unhex(raw["payload_hash"], f"{what}.payload_hash", 32))


def _int(value: Any, what: str, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value < _MAX_HEIGHT:
        raise CertificateError(f"{what} must be an integer >= {low}")
    return value


def light_block_json(block: LightBlock) -> dict[str, Any]:
    return {"height": block.height, "round": block.round, "header": _header_json(block.header),
            "precommits": [_envelope_json(e) for e in block.precommits],
            "validators": _validators_json(block.validators)}


def _light_block_from_json(raw: Any, chain_id: str, what: str) -> LightBlock:
    if not isinstance(raw, dict) or set(raw) != {"height", "round", "header", "precommits", "validators"}:
        raise CertificateError(f"{what} must hold height, round, header, precommits and validators")
    return LightBlock(height=_int(raw["height"], f"{what}.height", 1), round=_int(raw["round"], f"{what}.round", 0),
                      header=_header_from_json(raw["header"], f"{what}.header"),
                      precommits=_precommits_from_json(raw["precommits"], f"{what}.precommits"),
                      validators=_validators_from_json(raw["validators"], chain_id, f"{what}.validators"))


# --- building ----------------------------------------------------------------------


def build_certificate(
    genesis: Genesis, height: int, round_: int, value: Value, precommits: tuple[Signed[Vote], ...],
    cache: VerifiedCache | None = None, validators: ValidatorSet | None = None,
) -> dict[str, Any]:
    """The JSON certificate of a decision, without a trust path (:func:`with_trust_path` adds one).

    ``validators`` is the set in force at ``height`` (default: the genesis set).
    """
    vs = validators if validators is not None else genesis.validators
    first = value.outcomes()[0]
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
        "summary": _summary(first, vs, cache),
        "trust_path": [],
    }


def query_certificate(cert: dict[str, Any], query_id: bytes) -> dict[str, Any]:
    """The query certificate (version 4) of one query a commit certificate decided: the header, the query's
    outcome and its Merkle proof, with the commit's precommits, sets and trust path."""
    value = _decode_value(_unb64(cert.get("value"), "value"))
    outcomes = value.outcomes()
    ids = [o.query_id() for o in outcomes]
    if query_id not in ids:
        raise CertificateError("the certificate does not decide that query")
    index = ids.index(query_id)
    leaves = [o.canonical() for o in outcomes]
    vs = _validators_from_json(cert.get("validators"), str(cert.get("chain_id")), "validators")
    return {
        "version": QUERY_VERSION,
        "chain_id": cert["chain_id"],
        "height": cert["height"],
        "round": cert["round"],
        "header": _header_json(value.header()),
        "outcome": _b64(leaves[index]),
        "proof": {"index": index, "count": len(leaves), "path": [h.hex() for h in merkle.proof(leaves, index)],
                  "rest_hash": value.rest_hash().hex()},
        "precommits": cert["precommits"],
        "genesis": cert["genesis"],
        "validators": cert["validators"],
        "summary": _summary(outcomes[index], vs),
        "trust_path": cert.get("trust_path", []),
    }


def with_trust_path(cert: dict[str, Any], path: list[LightBlock]) -> dict[str, Any]:
    """``cert`` carrying ``path`` (the blocks from the genesis to its height, as :func:`plan_path` gives them)."""
    return {**cert, "trust_path": [light_block_json(b) for b in path]}


def light_block_of(cert: dict[str, Any]) -> LightBlock:
    """The light block of a certificate this peer already holds (parsed, not verified)."""
    value = _decode_value(_unb64(cert.get("value"), "value"))
    return LightBlock(height=_int(cert.get("height"), "height", 1), round=_int(cert.get("round"), "round", 0),
                      header=value.header(), precommits=_precommits_from_json(cert.get("precommits"), "precommits"),
                      validators=_validators_from_json(cert.get("validators"), str(cert.get("chain_id")),
                                                       "validators"))


def certificate_precommits(cert: Any, public_key_of: Callable[[str], bytes | None],
                           chain_id: str | None = None) -> list[Signed[Vote]]:
    """The validly signed precommits a certificate carries (for ``chain_id``, if given), whatever else is wrong
    with it."""
    raw = cert.get("precommits") if isinstance(cert, dict) else None
    out: list[Signed[Vote]] = []
    for item in raw[:1024] if isinstance(raw, list) else []:
        try:
            vote = open_envelope(Vote, _envelope_from_json(item, "precommit"), public_key_of)
        except (CertificateError, MessageError):
            continue
        if vote.message.type == "precommit" and chain_id in (None, vote.message.chain_id):
            out.append(vote)
    return out


def _summary(outcome: Outcome, vs: ValidatorSet, cache: VerifiedCache | None = None) -> dict[str, Any]:
    """One query's question, answers and choice in plain text (raises :class:`MessageError` if they do not open)."""
    query = open_envelope(Query, outcome.query, vs.public_key_of, cache).message
    answers = [open_envelope(Answer, env, vs.public_key_of, cache).message for env in outcome.answers]
    return {
        "question": query.question,
        "answer": outcome.answer,
        "winners": list(outcome.winners),
        "answers": [{"peer_id": a.peer, "model": a.model, "text": a.text} for a in answers],
    }


# --- verifying ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Parsed:
    genesis: Genesis
    height: int
    round: int
    value: Value | None  # a commit certificate's value; None for a query certificate
    outcome: Outcome  # the query the certificate is read for (a commit certificate's first)
    queries: int
    block: LightBlock
    path: list[LightBlock]


def _parse(cert: Any, trusted: Genesis | None) -> _Parsed:
    if not isinstance(cert, dict):
        raise CertificateError("a certificate is a JSON object")
    version = cert.get("version")
    if version not in (VERSION, QUERY_VERSION) or isinstance(version, bool):
        raise CertificateError(f"unsupported certificate version {version!r} (this client reads {VERSION} and "
                               f"{QUERY_VERSION})")
    keys = _QUERY_KEYS if version == QUERY_VERSION else _KEYS
    if set(cert) != keys:
        missing, extra = keys - set(cert), set(cert) - keys
        raise CertificateError(f"unexpected fields: missing {sorted(missing)}, unknown {sorted(extra)}")
    try:
        genesis = Genesis.from_json(cert["genesis"])
    except GenesisError as exc:
        raise CertificateError(f"genesis: {exc}") from None
    if trusted is not None and genesis.digest() != trusted.digest():
        raise CertificateError("the certificate's genesis is not the trusted genesis")
    if genesis.chain_id != cert["chain_id"]:
        raise CertificateError("chain_id does not match the genesis")
    height, round_ = _int(cert["height"], "height", 1), _int(cert["round"], "round", 0)
    value: Value | None = None
    if version == VERSION:
        value = _decode_value(_unb64(cert["value"], "value"))
        if cert["value_id"] != value.value_id().hex():
            raise CertificateError("value_id does not match the value")
        header, outcome, queries = value.header(), value.outcomes()[0], len(value.outcomes())
    else:
        header = _header_from_json(cert["header"], "header")
        outcome, queries = _proven_outcome(cert["outcome"], cert["proof"], header)
    block = LightBlock(height, round_, header, _precommits_from_json(cert["precommits"], "precommits"),
                       _validators_from_json(cert["validators"], genesis.chain_id, "validators"))
    raw_path = cert["trust_path"]
    if not isinstance(raw_path, list) or len(raw_path) > 64:
        raise CertificateError("trust_path must be a list of at most 64 blocks")
    path = [_light_block_from_json(b, genesis.chain_id, f"trust_path[{i}]") for i, b in enumerate(raw_path)]
    if any(b.height >= height for b in path) or any(a.height >= b.height for a, b in zip(path, path[1:])):
        raise CertificateError("trust_path must hold ascending heights below the certificate's")
    return _Parsed(genesis, height, round_, value, outcome, queries, block, path)


def _proven_outcome(raw_outcome: Any, raw_proof: Any, header: ValueHeader) -> tuple[Outcome, int]:
    """A query certificate's outcome, once its Merkle proof shows the header commits to it; and the count."""
    data = _unb64(raw_outcome, "outcome")
    try:
        outcome = decode_outcome(canonical.unpack(data))
    except (canonical.CanonicalError, MessageError) as exc:
        raise CertificateError(f"outcome: {exc}") from None
    if outcome.canonical() != data:
        raise CertificateError("outcome is not in canonical form")
    if not isinstance(raw_proof, dict) or set(raw_proof) != {"index", "count", "path", "rest_hash"}:
        raise CertificateError("proof must hold index, count, path and rest_hash")
    count = raw_proof["count"]
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_QUERIES_PER_VALUE:
        raise CertificateError(f"proof.count must be an integer from 1 to {MAX_QUERIES_PER_VALUE}")
    index = raw_proof["index"]
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
        raise CertificateError("proof.index must be an integer below proof.count")
    path = raw_proof["path"]
    if not isinstance(path, list) or len(path) > 16:
        raise CertificateError("proof.path must be a list of at most 16 hashes")
    hashes = [_unhex(h, f"proof.path[{i}]", 32) for i, h in enumerate(path)]
    try:
        root = merkle.root_from_proof(data, index, count, hashes)
    except merkle.MerkleError as exc:
        raise CertificateError(f"proof: {exc}") from None
    if payload_hash(root, _unhex(raw_proof["rest_hash"], "proof.rest_hash", 32)) != header.payload_hash:
        raise CertificateError("the outcome's Merkle proof does not lead to the header's payload hash")
    return outcome, count


def verify(cert: Any, trusted: Genesis | None = None, *, state: TrustedState | None = None) -> Certificate:
    """Check a certificate (parsed JSON) offline; raise :class:`CertificateError` with the reason.

    Trust starts at ``state`` when it is below the certificate's height,
    else at the genesis (``trusted``, or the certificate's own without it).
    """
    p = _parse(cert, trusted)
    anchor = state if state is not None and state.height < p.height else TrustedState.genesis(
        p.genesis.chain_id, p.genesis.validators)
    if anchor.chain_id != p.genesis.chain_id:
        raise CertificateError(f"the trusted state is for chain {anchor.chain_id!r}, not {p.genesis.chain_id!r}")
    verified = VerifiedCache()  # each signature is checked once, though the value is read twice
    try:
        at = verify_path(anchor, p.path, cache=verified)
        after = verify_block(at, p.block, cache=verified)
    except LightClientError as exc:
        raise CertificateError(str(exc)) from None
    vs = p.block.validators
    threshold, tolerance = p.genesis.params.similarity_threshold, p.genesis.params.similarity_tolerance
    rule = p.genesis.params.verdicts()  # the carried verdicts decide again by the genesis' rule (ADR 0022)
    if p.value is not None:
        reason = grouping.validate_value(p.value, validators=vs, local_sims=None, threshold=threshold,
                                         tolerance=tolerance, cache=verified, chain_id=p.genesis.chain_id,
                                         verdict_rule=rule)
    else:
        reason = grouping.validate_outcome(p.outcome, validators=vs, local_sims=None, threshold=threshold,
                                           tolerance=tolerance, cache=verified, verdict_rule=rule)
    if reason is not None:
        raise CertificateError(f"invalid value: {reason}")
    o = p.outcome
    answers = tuple(open_envelope(Answer, env, vs.public_key_of, verified).message for env in o.answers)
    query = open_envelope(Query, o.query, vs.public_key_of, verified).message
    if cert["summary"] != _summary(o, vs, verified):
        raise CertificateError("the summary does not match the signed value")
    voters = {v.signer for v in commit_signers(p.block, p.genesis.chain_id, verified)}
    return Certificate(
        chain_id=p.genesis.chain_id, height=p.height, round=p.round, question=query.question,
        answer=o.answer, winners=o.winners, agreed_weight=vs.weight_of_set(o.winners),
        precommit_weight=vs.weight_of_set(voters), total_weight=vs.total, answers=answers, trusted=after,
        path_length=len(p.path), queries=p.queries,
    )


def verify_commit(cert: Any, chain: Chain, *, threshold: int, tolerance: int,
                  cache: VerifiedCache | None = None) -> Value:
    """A certificate for the chain's next height checked against the set *this peer's chain* computed.

    For the ledger and catch-up: the precommits must carry a quorum of
    ``chain.validators_at(height)`` (whatever set the certificate claims),
    the value's set hashes, score vectors and evidence must be the ones the
    chain admits at that height, and the value must be valid by the
    grouping rule. Returns the decided value; raises :class:`CertificateError`.
    """
    if not isinstance(cert, dict) or not {"height", "round", "value", "precommits"} <= set(cert):
        raise CertificateError("a certificate is an object with height, round, value and precommits")
    height, round_ = _int(cert["height"], "height", 1), _int(cert["round"], "round", 0)
    if chain.adaptive and height != chain.height + 1:
        raise CertificateError(f"height {height} is not the chain's next height {chain.height + 1}")
    value = _decode_value(_unb64(cert["value"], "value"))
    vs = chain.validators_at(height)
    block = LightBlock(height, round_, value.header(), _precommits_from_json(cert["precommits"], "precommits"), vs)
    try:
        commit_signers(block, chain.chain_id, cache)
    except LightClientError as exc:
        raise CertificateError(f"against this peer's validator set: {exc}") from None
    reason = chain.check_extras(value, height, cache) or grouping.validate_value(
        value, validators=vs, local_sims=None, threshold=threshold, tolerance=tolerance, cache=cache,
        chain_id=chain.chain_id, verdict_rule=chain.verdict_rule)
    if reason is not None:
        raise CertificateError(f"invalid value at height {height}: {reason}")
    return value


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


# --- files and trusted states ----------------------------------------------------------


def trusted_state_json(genesis: Genesis, state: TrustedState) -> dict[str, Any]:
    """A client's trusted state as a file holds it (with the genesis it started from)."""
    return {"genesis": genesis.to_json(), "height": state.height, "validators": _validators_json(state.validators),
            "next_hash": state.next_hash.hex()}


def trusted_state_from_json(raw: Any) -> tuple[Genesis, TrustedState]:
    if not isinstance(raw, dict) or set(raw) != {"genesis", "height", "validators", "next_hash"}:
        raise CertificateError("a trusted state holds genesis, height, validators and next_hash")
    try:
        genesis = Genesis.from_json(raw["genesis"])
    except GenesisError as exc:
        raise CertificateError(f"trusted state: genesis: {exc}") from None
    height = _int(raw["height"], "trusted state height", 0)
    vs = _validators_from_json(raw["validators"], genesis.chain_id, "trusted state validators")
    return genesis, TrustedState(genesis.chain_id, height, vs, _unhex(raw["next_hash"], "trusted state next_hash", 32))


MAX_FILE_BYTES = 64 << 20
"""Largest certificate, genesis or trusted-state file :func:`verify_file` reads."""


def _read_json(path: Path, what: str) -> Any:
    """The JSON in ``path``, within :func:`multillmn.jsonsafe.loads`'s bounds, else :class:`CertificateError`."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise CertificateError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        return jsonsafe.loads(data, max_bytes=MAX_FILE_BYTES)
    except jsonsafe.JsonError as exc:
        raise CertificateError(f"{what} {path} is not JSON within bounds: {exc}") from None


def verify_file(path: Path, trusted_genesis: Path | None = None, trusted_state: Path | None = None) -> Certificate:
    """Verify the certificate in ``path`` from a trusted genesis file and/or a trusted-state file.

    With ``trusted_state``, trust starts at the state it holds (if it exists)
    and the file is updated to the certificate's height after a success; a
    state that cannot be written is a :class:`CertificateError` too (the
    client would otherwise lose what it verified without knowing).
    """
    data = _read_json(path, "certificate")
    genesis: Genesis | None = None
    if trusted_genesis is not None:
        try:
            genesis = Genesis.from_json(_read_json(trusted_genesis, "trusted genesis"))
        except GenesisError as exc:
            raise CertificateError(f"trusted genesis: {exc}") from None
    state: TrustedState | None = None
    try:
        held = trusted_state is not None and trusted_state.exists()
    except OSError as exc:  # exists() raises for a path it may not look at (EACCES)
        raise CertificateError(f"cannot read trusted state {trusted_state}: {exc.strerror or exc}") from None
    if trusted_state is not None and held:
        held_genesis, state = trusted_state_from_json(_read_json(trusted_state, "trusted state"))
        if genesis is not None and held_genesis.digest() != genesis.digest():
            raise CertificateError(f"{trusted_state} was started from another genesis")
        genesis = held_genesis
    result = verify(data, genesis, state=state)
    if trusted_state is not None and genesis is not None and (state is None or result.height > state.height):
        try:
            trusted_state.write_text(json.dumps(trusted_state_json(genesis, result.trusted), indent=2) + "\n")
        except OSError as exc:
            raise CertificateError(f"the certificate verified, but the trusted state {trusted_state} cannot be "
                                   f"written: {exc.strerror or exc}") from None
    return result
