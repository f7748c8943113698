"""Decoding that cannot be driven out of its contract (issue 10).

Every decoder of bytes from a peer or a client raises only its documented
error, whatever the bytes: regressions for the reproductions of the issue
(msgpack nested 1,000 deep through every decoder and inside a proposal's
score envelope; a DAG event whose transaction nests that deep; ``multillmn
verify`` on hostile files), then Hypothesis properties on arbitrary and on
mutated valid inputs (``tests/fuzzcorpus.py``; ``bench/fuzz.py`` runs the same
for a million inputs).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from consensus.evidence import decode_evidence
from consensus.messages import (
    KINDS,
    Envelope,
    EvidencePair,
    MessageError,
    Proposal,
    decode_value,
    open_envelope,
    sign,
)
from consensus.scores import ScoreVector
from dag.event import EventError, check_transaction, decode_event, encode_event, sign_event
from dag.ledger import Ledger, certificate_tx, evidence_tx, weights_tx
from dag.messages import DAG_KINDS, DagEvents, DagSync, DagWant
from multillmn import canonical, jsonsafe
from multillmn.certificate import CertificateError, verify
from multillmn.cli import main as cli_main
from peers.ledger import LedgerService
from peers.wire import WireRejection, decode_message, encode_message
from tests.conftest import make_net
from tests.fuzzcorpus import build_corpus, deep_json, deep_msgpack, mutate

CORPUS = build_corpus()
NET = CORPUS.net
KEYS = NET.genesis.validators.public_key_of
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- regressions: nesting about 1,000 deep ---------------------------------------------------

DEPTHS = (17, 1010, 5000, 100_000)


def test_unpack_bounds_depth_exactly_and_without_recursion() -> None:
    assert canonical.unpack(deep_msgpack(16)) is not None
    for depth in DEPTHS:
        with pytest.raises(canonical.CanonicalError, match="nested deeper than 16|malformed msgpack"):
            canonical.unpack(deep_msgpack(depth))
    with pytest.raises(canonical.CanonicalError, match="nested deeper than 2"):
        canonical.unpack(canonical.pack({"a": [[1]]}), max_depth=2)
    assert canonical.unpack(canonical.pack({"a": [1]}), max_depth=2) == {"a": (1,)}
    for bad, reason in ((msgpack.packb({b"k": 1}), "keys must be strings"), (msgpack.packb([1.5]), "floats"),
                        (msgpack.packb([[[{"a": 0.5}]]]), "floats"), (b"\xc7\x01\x05a", "ext"),
                        (b"\xdd\xff\xff\xff\xff", "max_array_len"), ("text", "bytes")):
        with pytest.raises(canonical.CanonicalError, match=reason):
            canonical.unpack(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("depth", DEPTHS)
def test_deep_messages_and_events_raise_their_documented_errors(depth: int) -> None:
    deep = deep_msgpack(depth)
    with pytest.raises(WireRejection) as info:
        decode_message(deep, KEYS)
    assert info.value.category == "malformed"
    body_signed = canonical.pack({"k": "vote", "b": deep, "s": NET.keys[0].sign("vote", deep)})
    with pytest.raises(WireRejection) as info:
        decode_message(body_signed, KEYS)
    assert info.value.category == "malformed"
    with pytest.raises(EventError):
        decode_event(deep)
    with pytest.raises(EventError):
        decode_event(canonical.pack({"body": deep, "sig": bytes(64)}))
    for model in (*KINDS.values(), *DAG_KINDS.values(), ScoreVector):
        with pytest.raises(MessageError):
            open_envelope(model, Envelope(body=deep, sig=bytes(64)), KEYS)
    assert check_transaction(deep) is not None and check_transaction(deep_msgpack(16)) is None


def test_a_deep_score_or_evidence_envelope_in_a_proposal_is_a_reason_not_a_crash() -> None:
    """The issue's proposal: a validly signed proposal whose value carries a 1,010-deep score envelope."""
    proposal = decode_message(CORPUS.wire["proposal"], KEYS).message
    assert isinstance(proposal, Proposal) and CORPUS.chain.check_extras(proposal.value, 2) is None
    deep = Envelope(body=deep_msgpack(1010), sig=bytes(64))
    bad_scores = proposal.value.model_copy(update={"scores": (deep,)})
    assert "score vector 0" in (CORPUS.chain.check_extras(bad_scores, 2) or "")
    pair = EvidencePair(kind="duplicate_vote", first=deep, second=proposal.value.evidence[0].second)
    bad_evidence = proposal.value.model_copy(update={"evidence": (pair,)})
    assert "evidence 0" in (CORPUS.chain.check_extras(bad_evidence, 2) or "")
    # and the same value travels the wire inside a signed proposal, to the same reason
    signed = proposal.model_copy(update={"value": bad_scores})
    body = signed.canonical()
    payload = canonical.pack({"k": "proposal", "b": body, "s": NET.keys[1].sign("proposal", body)})
    received = decode_message(payload, KEYS).message
    assert isinstance(received, Proposal)
    assert "score vector 0" in (CORPUS.chain.check_extras(received.value, 2) or "")


def test_a_dag_event_carrying_a_deep_transaction_is_refused_at_the_edge() -> None:
    poisoned = sign_event(NET.keys[0], seq=0, self_parent=None, other_parent=None, timestamp=1,
                          transactions=[deep_msgpack(1010)])
    assert decode_event(encode_event(poisoned)) == poisoned  # transactions are opaque to the event itself
    with pytest.raises(ValidationError, match="transaction 0"):
        DagEvents(sender=NET.keys[0].peer_id, events=(encode_event(poisoned),))
    body = canonical.pack({"sender": NET.keys[0].peer_id, "events": [encode_event(poisoned)]})
    payload = canonical.pack({"k": "dag_events", "b": body, "s": NET.keys[0].sign("dag_events", body)})
    with pytest.raises(WireRejection, match="transaction 0") as info:
        decode_message(payload, KEYS)
    assert info.value.category == "schema"
    malformed = sign_event(NET.keys[0], seq=0, self_parent=None, other_parent=None, timestamp=1,
                           transactions=[b"\xc1"])
    with pytest.raises(ValidationError, match="transaction 0"):
        DagEvents(sender=NET.keys[0].peer_id, events=(encode_event(malformed),))


def test_the_ledger_ignores_a_deep_transaction_once_ordered() -> None:
    """A poisoned event stored before this check existed still applies: the transaction is ignored, counted."""
    ledger = Ledger(None, KEYS, NET.genesis.chain())
    ev = sign_event(NET.keys[0], seq=0, self_parent=None, other_parent=None, timestamp=1,
                    transactions=[deep_msgpack(1010), certificate_tx(1, deep_json(5000)),
                                  certificate_tx(1, b'{"height": 1, "x": ' + b"9" * 5000 + b"}")])
    assert ledger.apply([ev]) == 0
    assert ledger.ignored == {"malformed": 1, "bad certificate": 2}


HOSTILE_FILES = {
    "deep": deep_json(100_000),
    "deep-object": b'{"a":' * 2000 + b"1" + b"}" * 2000,
    "huge-integer": b'{"height": ' + b"9" * 100_000 + b"}",
    "binary": bytes(range(256)) * 8,
    "png": b"\x89PNG\r\n\x1a\n" + bytes(64),
    "latin-1": '{"question": "caf\xe9"}'.encode("latin-1"),
    "surrogate": b'{"summary": "\\ud800"}',
    "empty": b"",
    "nan": b"[NaN]",
}


@pytest.mark.parametrize("name", HOSTILE_FILES)
def test_verify_cli_says_invalid_for_hostile_files(name: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cert.json"
    path.write_bytes(HOSTILE_FILES[name])
    genesis = tmp_path / "genesis.json"
    genesis.write_text(json.dumps(NET.genesis.to_json()))
    for extra in ([], ["--genesis", str(genesis)]):
        assert cli_main(["verify", str(path), *extra]) == 1
        err = capsys.readouterr().err
        assert err.startswith("INVALID: ") and "Traceback" not in err, err
    good = tmp_path / "good.json"
    good.write_bytes(CORPUS.certificates["certificate"])
    assert cli_main(["verify", str(good), "--genesis", str(path)]) == 1  # the hostile file as the genesis
    err = capsys.readouterr().err
    assert err.startswith("INVALID: trusted genesis") and "Traceback" not in err, err


# --- properties: arbitrary and mutated inputs raise only the documented error ------------------

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**65) | st.floats() | st.text(max_size=12)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=8) | st.binary(max_size=4), inner, max_size=5),
    max_leaves=25,
)


def _packed(value: Any) -> bytes:
    try:
        return bytes(msgpack.packb(value, use_bin_type=True))
    except (ValueError, TypeError, OverflowError):
        return b"\xc1"


@FUZZ
@given(st.binary(max_size=600) | values.map(_packed))
def test_unpack_raises_only_canonical_error(data: bytes) -> None:
    try:
        canonical.unpack(data)
    except canonical.CanonicalError:
        pass


@FUZZ
@given(st.sampled_from(sorted(CORPUS.wire)), st.integers(0, 2**32))
def test_mutated_messages_raise_only_message_error(name: str, seed: int) -> None:
    payload = mutate(CORPUS.wire[name], random.Random(seed))
    try:
        signed = decode_message(payload, KEYS)
    except MessageError:
        return
    if isinstance(signed.message, Proposal):  # what the runner does next with a proposal
        reason = CORPUS.chain.check_extras(signed.message.value, 2)
        assert reason is None or isinstance(reason, str)


@FUZZ
@given(st.sampled_from(sorted(CORPUS.events)), st.integers(0, 2**32))
def test_mutated_events_raise_only_event_error(name: str, seed: int) -> None:
    try:
        decode_event(mutate(CORPUS.events[name], random.Random(seed)))
    except EventError:
        pass


@FUZZ
@given(st.sampled_from(sorted({**KINDS, **DAG_KINDS, "scores": ScoreVector})), values.map(_packed) | st.binary(),
       st.booleans())
def test_open_envelope_raises_only_message_error(kind: str, body: bytes, signed: bool) -> None:
    model = {**KINDS, **DAG_KINDS, "scores": ScoreVector}[kind]
    sig = NET.keys[0].sign(kind, body) if signed else bytes(64)
    try:
        envelope = Envelope(body=body, sig=sig)
    except ValidationError:
        return
    try:
        open_envelope(model, envelope, KEYS)
    except MessageError:
        pass


@FUZZ
@given(values)
def test_decode_value_and_evidence_raise_only_message_error(raw: Any) -> None:
    for decode in (decode_value, decode_evidence):
        try:
            decode(raw)
        except MessageError:
            pass
    if isinstance(raw, dict):
        raw = {"query": {"body": b"", "sig": bytes(64)}, **raw}
        for decode in (decode_value, decode_evidence):
            try:
                decode(raw)
            except MessageError:
                pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=25,
)


@FUZZ
@given(st.binary(max_size=400) | st.text(max_size=200) | json_values.map(json.dumps)
       | st.integers(0, 2**32).map(lambda s: mutate(CORPUS.certificates["certificate"], random.Random(s),
                                                    json_like=True)))
def test_json_loader_raises_only_json_error_and_agrees_with_json(data: bytes | str) -> None:
    try:
        value = jsonsafe.loads(data, max_bytes=1 << 20, max_depth=32, max_int_digits=64)
    except jsonsafe.JsonError:
        return
    assert value == json.loads(data) or value != value  # the same parser within the bounds (NaN aside)


@FUZZ
@given(json_values | st.integers(0, 2**32).map(lambda s: mutate(CORPUS.certificates["certificate"],
                                                                  random.Random(s), json_like=True)))
def test_certificate_verify_raises_only_certificate_error(data: Any) -> None:
    if isinstance(data, bytes):
        try:
            data = jsonsafe.loads(data)
        except jsonsafe.JsonError:
            return
    for trusted in (None, NET.genesis):
        try:
            verify(data, trusted)
        except CertificateError:
            pass


def _hostile_tx(rng: random.Random) -> bytes:
    cert = CORPUS.certificates["certificate"]
    ids = [k.peer_id for k in NET.keys]
    return rng.choice([
        lambda: mutate(certificate_tx(1, cert), rng),
        lambda: certificate_tx(1, mutate(cert, rng, json_like=True)),
        lambda: certificate_tx(rng.choice((1, 2, 2**62)), cert),
        lambda: mutate(weights_tx(2, {ids[0]: 3}), rng),
        lambda: evidence_tx(rng.choice(("fork", "duplicate_vote")), ids[1], mutate(b"\x92\xc4\x01a\xc4\x01b", rng)),
        lambda: mutate(CORPUS.events["event-evidence"], rng),
        lambda: rng.randbytes(rng.randint(0, 64)),
    ])()


@FUZZ
@given(st.integers(0, 2**32))
def test_ledger_apply_never_raises_on_hostile_transactions(seed: int) -> None:
    rng = random.Random(seed)
    ledger = Ledger(None, KEYS, NET.genesis.chain())
    txs = [_hostile_tx(rng) for _ in range(4)]
    ev = sign_event(NET.keys[0], seq=0, self_parent=None, other_parent=None, timestamp=1, transactions=txs)
    ledger.apply([ev])
    assert ledger.position == len(txs)


class _Outbox:
    """The transport as the ledger service sees it: messages it sends are kept, never delivered."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def send_nowait(self, peer: str, payload: bytes) -> None:
        self.sent.append((peer, payload))


SOLO = make_net([1], seed=9)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32))
def test_ledger_service_handles_any_decoded_dag_message_without_raising(seed: int) -> None:
    """Whatever a validator signs, once it decodes, ``handle`` counts or applies it and never raises."""
    rng = random.Random(seed)
    key = SOLO.keys[0]
    svc = LedgerService(key, SOLO.genesis, _Outbox(), None)  # type: ignore[arg-type]
    messages: list[Any] = []
    prev = None
    for i in range(6):
        txs = [tx for tx in (_hostile_tx(rng) for _ in range(3)) if check_transaction(tx) is None]
        prev = sign_event(key, seq=i, self_parent=prev.hash if prev else None, other_parent=None,
                          timestamp=i + 1, transactions=txs)
        messages.append(DagEvents(sender=key.peer_id, events=(encode_event(prev),)))
    messages.insert(rng.randrange(len(messages)), DagSync(sender=key.peer_id,
                                                          vector={key.peer_id: rng.randrange(2**62)}))
    messages.append(DagWant(sender=key.peer_id, wanted=(rng.randbytes(32), prev.hash if prev else bytes(32)),
                            vector={key.peer_id: rng.randrange(3)}))
    for message in messages:
        signed = decode_message(encode_message(sign(message, key)), SOLO.genesis.validators.public_key_of)
        svc.handle(key.peer_id, signed)
    assert svc.ledger.position > 0
