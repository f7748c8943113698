"""Tests for the sans-I/O frame and message codec (peers/wire.py)."""

from __future__ import annotations

import logging
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.messages import (
    Answer,
    MessageError,
    Proposal,
    Query,
    Signed,
    Value,
    Vote,
    query_id_of,
    sign,
)
from multillmn import canonical
from multillmn.identity import KeyPair
from peers.wire import (
    NEED_DATA,
    FrameDecoder,
    FrameTooLarge,
    RejectStats,
    RemoteProtocolError,
    classify,
    decode_message,
    encode_frame,
    encode_message,
)

ALICE = KeyPair.from_seed(b"a" * 32)
BOB = KeyPair.from_seed(b"b" * 32)
KEYS = {k.peer_id: k.public_key for k in (ALICE, BOB)}


def lookup(peer: str) -> bytes | None:
    return KEYS.get(peer)


def drain(dec: FrameDecoder) -> list[bytes]:
    out = []
    while (frame := dec.next_frame()) is not NEED_DATA:
        assert isinstance(frame, bytes)
        out.append(frame)
    return out


# --- frames ----------------------------------------------------------------------


@given(
    payloads=st.lists(st.binary(max_size=300), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=12),
)
def test_frames_round_trip_under_any_chunking(payloads: list[bytes], cuts: list[int]) -> None:
    data = b"".join(encode_frame(p) for p in payloads)
    points = sorted({c for c in cuts if c <= len(data)} | {0, len(data)})
    dec = FrameDecoder(max_frame=300)
    got: list[bytes] = []
    for a, b in zip(points, points[1:]):
        dec.feed(data[a:b])
        got.extend(drain(dec))
    assert got == payloads
    assert dec.buffered == 0


def test_frame_header_is_big_endian() -> None:
    assert encode_frame(b"xyz") == b"\x00\x00\x00\x03xyz"
    assert encode_frame(b"") == b"\x00\x00\x00\x00"


def test_partial_frame_needs_data() -> None:
    dec = FrameDecoder(max_frame=10)
    dec.feed(encode_frame(b"hello")[:-1])
    assert dec.next_frame() is NEED_DATA
    dec.feed(b"o")
    assert dec.next_frame() == b"hello"
    assert dec.next_frame() is NEED_DATA


def test_frame_at_limit_is_accepted() -> None:
    dec = FrameDecoder(max_frame=4)
    dec.feed(encode_frame(b"1234"))
    assert dec.next_frame() == b"1234"


def test_oversized_frame_rejected_before_body_is_buffered() -> None:
    dec = FrameDecoder(max_frame=100)
    header = (101).to_bytes(4, "big")
    dec.feed(header[:2])
    assert dec.next_frame() is NEED_DATA
    with pytest.raises(FrameTooLarge):
        dec.feed(header[2:] + b"x" * 101)
    assert dec.buffered == 0
    # The decoder stays failed.
    with pytest.raises(FrameTooLarge):
        dec.next_frame()
    with pytest.raises(FrameTooLarge):
        dec.feed(b"more")
    assert issubclass(FrameTooLarge, RemoteProtocolError)


def test_oversized_frame_after_a_good_one() -> None:
    dec = FrameDecoder(max_frame=10)
    dec.feed(encode_frame(b"ok") + (2**31).to_bytes(4, "big"))
    assert dec.next_frame() == b"ok"
    with pytest.raises(FrameTooLarge):
        dec.next_frame()


# --- messages ----------------------------------------------------------------------


def make_query() -> Signed[Query]:
    q = Query(entry=ALICE.peer_id, question="What is 2+2?", nonce=b"n" * 16, max_tokens=32, created_ms=5)
    return sign(q, ALICE)


def make_answer(key: KeyPair = BOB) -> Signed[Answer]:
    a = Answer(
        query_id=query_id_of(make_query().envelope), peer=key.peer_id, model="m", text="4", gen_ms=7
    )
    return sign(a, key)


def make_vote(value_id: bytes | None = b"v" * 32) -> Signed[Vote]:
    return sign(Vote(type="prevote", height=3, round=1, value_id=value_id, voter=BOB.peer_id), BOB)


def make_proposal() -> Signed[Proposal]:
    value = Value(
        query=make_query().envelope,
        answers=(make_answer(ALICE).envelope, make_answer(BOB).envelope),
        sims=(950,),
        winners=(ALICE.peer_id, BOB.peer_id),
        answer="4",
    )
    p = Proposal(height=1, round=0, valid_round=-1, proposer=ALICE.peer_id, value=value)
    return sign(p, ALICE)


MAKERS = [make_query, make_answer, make_vote, lambda: make_vote(None), make_proposal]


@pytest.mark.parametrize("make", MAKERS)
def test_message_round_trip(make: Any) -> None:
    signed = make()
    payload = encode_message(signed)
    assert canonical.unpack(payload) == {"k": signed.kind, "b": signed.envelope.body, "s": signed.envelope.sig}
    decoded = decode_message(payload, lookup)
    assert decoded.message == signed.message
    assert decoded.envelope == signed.envelope
    assert type(decoded.message) is type(signed.message)


def outer(kind: str, body: bytes, sig: bytes) -> bytes:
    return canonical.pack({"k": kind, "b": body, "s": sig})


def signed_body(kind: str, body: bytes, key: KeyPair = BOB) -> bytes:
    return outer(kind, body, key.sign(kind, body))


def vote_body(**changes: Any) -> dict[str, Any]:
    body = make_vote().message.body()
    body.update(changes)
    return body


def reject_cases() -> list[tuple[str, bytes, str]]:
    vote = make_vote()
    body, sig = vote.envelope.body, vote.envelope.sig
    unsorted = msgpack.packb(dict(reversed(list(vote_body().items()))), use_bin_type=True)
    assert unsorted != body
    unsorted_outer = msgpack.packb({"s": sig, "k": "vote", "b": body}, use_bin_type=True)
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    return [
        ("garbage", b"\xc1\x00", "malformed"),
        ("empty", b"", "malformed"),
        ("trailing", encode_message(vote) + b"\x00", "malformed"),
        ("not-a-map", canonical.pack([1, 2, 3]), "malformed"),
        ("extra-key", canonical.pack({"k": "vote", "b": body, "s": sig, "x": 1}), "malformed"),
        ("missing-key", canonical.pack({"k": "vote", "b": body}), "malformed"),
        ("kind-not-str", canonical.pack({"k": 1, "b": body, "s": sig}), "malformed"),
        ("body-not-bytes", canonical.pack({"k": "vote", "b": "text", "s": sig}), "malformed"),
        ("short-sig", outer("vote", body, sig[:63]), "malformed"),
        ("body-not-msgpack", signed_body("vote", b"\xc1"), "malformed"),
        ("outer-not-canonical", unsorted_outer, "non-canonical"),
        ("unknown-kind", outer("gossip", body, sig), "unknown-kind"),
        ("value-is-not-a-wire-kind", outer("value", body, sig), "unknown-kind"),
        ("wrong-kind", outer("answer", body, sig), "schema"),
        ("missing-field", signed_body("vote", canonical.pack({"type": "prevote"})), "schema"),
        ("bad-field", signed_body("vote", canonical.pack(vote_body(height=0))), "schema"),
        ("extra-field", signed_body("vote", canonical.pack(vote_body(extra=1))), "schema"),
        ("body-not-canonical", signed_body("vote", unsorted), "non-canonical"),
        ("flipped-sig", outer("vote", body, flipped), "bad-signature"),
        ("signed-by-other", signed_body("vote", body, ALICE), "bad-signature"),
        ("wrong-domain", outer("vote", body, BOB.sign("answer", body)), "bad-signature"),
        ("oversized-body", outer("vote", b"\x00" * ((1 << 20) + 1), sig), "oversized"),
        # issue 10: nesting 1,000 deep used to raise RecursionError out of the decoder
        ("deep-outer", b"\x91" * 1010 + b"\xc0", "malformed"),
        ("deep-body", signed_body("vote", b"\x91" * 1010 + b"\xc0"), "malformed"),
        ("body-17-deep", signed_body("vote", canonical.pack({"type": [[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]})),
         "malformed"),
        ("nested-outer", canonical.pack({"k": "vote", "b": body, "s": [sig]}), "malformed"),
        ("float-body", signed_body("vote", msgpack.packb({"height": 1.5})), "malformed"),
    ]


@pytest.mark.parametrize("name,payload,category", reject_cases(), ids=[c[0] for c in reject_cases()])
def test_rejections_raise_message_error_with_category(name: str, payload: bytes, category: str) -> None:
    with pytest.raises(MessageError) as info:
        decode_message(payload, lookup)
    assert classify(info.value) == category, str(info.value)
    assert str(info.value)


def test_unknown_signer() -> None:
    with pytest.raises(MessageError) as info:
        decode_message(encode_message(make_vote()), lambda peer: None)
    assert classify(info.value) == "unknown-signer"
    assert BOB.peer_id in str(info.value)


def test_oversized_payload() -> None:
    with pytest.raises(MessageError) as info:
        decode_message(encode_message(make_vote()), lookup, max_len=10)
    assert classify(info.value) == "oversized"


def test_classify_plain_errors() -> None:
    assert classify(FrameTooLarge("x")) == "oversized"
    assert classify(MessageError("bad signature on vote from x")) == "bad-signature"
    assert classify(MessageError("vote signed by unknown peer x")) == "unknown-signer"
    assert classify(MessageError("invalid vote: height: too small")) == "schema"


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_random_bytes_only_raise_message_error(data: bytes) -> None:
    try:
        decode_message(data, lookup)
    except MessageError as exc:
        assert classify(exc) in {"malformed", "non-canonical", "unknown-kind", "schema", "oversized"}


bodies = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=20) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=20,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["query", "answer", "vote", "proposal", "value", ""]),
    body=bodies,
    sig=st.binary(min_size=64, max_size=64),
    resign=st.booleans(),
)
def test_structured_fuzz_only_raises_message_error(kind: str, body: Any, sig: bytes, resign: bool) -> None:
    try:
        raw = canonical.pack(body)
    except (canonical.CanonicalError, OverflowError):
        raw = b"\xc0"
    if resign and kind:
        sig = BOB.sign(kind, raw)
    with pytest.raises(MessageError):
        decode_message(outer(kind, raw, sig), lookup)


@given(st.data())
def test_any_single_byte_change_is_rejected(data: st.DataObject) -> None:
    payload = bytearray(encode_message(data.draw(st.sampled_from([make_vote(), make_answer()]))))
    i = data.draw(st.integers(0, len(payload) - 1))
    payload[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(MessageError):
        decode_message(bytes(payload), lookup)


def test_reject_stats_counts_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    stats = RejectStats()
    with caplog.at_level(logging.INFO, logger="multillmn.wire"):
        stats.record("malformed", "junk", "peer1")
        stats.record("malformed", "junk again", "peer1")
        try:
            decode_message(outer("gossip", b"", b"s" * 64), lookup)
        except MessageError as exc:
            assert stats.record_exception(exc, "peer2") == "unknown-kind"
    assert stats.snapshot() == {"malformed": 2, "unknown-kind": 1}
    assert stats.by_peer() == {"peer1": 2, "peer2": 1}
    assert any("junk again" in r.getMessage() and "peer1" in r.getMessage() for r in caplog.records)
    assert all(r.name == "multillmn.wire" for r in caplog.records)
