"""Events: encoding, hashing, signatures, and every way a bad event is rejected with a reason."""

from __future__ import annotations

from typing import Any

import pytest

from dag import (
    MAX_PAYLOAD_BYTES,
    MAX_TRANSACTION_BYTES,
    MAX_TRANSACTIONS,
    Event,
    EventError,
    Hashgraph,
    InsertError,
    MissingParent,
    decode_event,
    encode_event,
    sign_event,
    verify_event,
)
from dag.sim import keys_for, validator_set
from multillmn import canonical

KEYS = keys_for(4, seed=9)
VS = validator_set(KEYS, [1, 1, 1, 1])
A, B = KEYS[0], KEYS[1]


def first(key: Any = A, ts: int = 10, txs: tuple[bytes, ...] = ()) -> Event:
    return sign_event(key, seq=0, self_parent=None, other_parent=None, timestamp=ts, transactions=txs)


def test_encode_decode_round_trip_and_hash_covers_the_signature() -> None:
    e0 = first(txs=(b"tx1", b""))
    e1 = sign_event(A, seq=1, self_parent=e0.hash, other_parent=first(B).hash, timestamp=11)
    for e in (e0, e1):
        assert decode_event(encode_event(e)) == e
        assert decode_event(encode_event(e)).hash == e.hash
        assert verify_event(e, VS.public_key_of) is None
    other_sig = Event(e0.creator, e0.seq, None, None, e0.timestamp, e0.transactions, bytes(64))
    assert other_sig.body == e0.body and other_sig.hash != e0.hash


@pytest.mark.parametrize("change,reason", [
    ({"creator": "ABC"}, "creator"),
    ({"seq": -1}, "seq"),
    ({"seq": True}, "seq"),
    ({"seq": 1}, "self-parent exactly when"),
    ({"self_parent": b"x" * 31, "seq": 1}, "self_parent"),
    ({"other_parent": b"o" * 32}, "first event has no other-parent"),
    ({"seq": 1, "self_parent": b"s" * 32, "other_parent": b"s" * 32}, "must differ"),
    ({"timestamp": -5}, "timestamp"),
    ({"timestamp": 2**63}, "timestamp"),
    ({"timestamp": 1.5}, "timestamp"),
    ({"transactions": "abc"}, "transactions"),
    ({"transactions": ("text",)}, "transaction 0 must be bytes"),
    ({"transactions": (b"x",) * (MAX_TRANSACTIONS + 1)}, "exceed the limit"),
    ({"transactions": (b"x" * (MAX_TRANSACTION_BYTES + 1),)}, "transaction 0 has"),
    ({"transactions": (b"x" * MAX_TRANSACTION_BYTES,) * (MAX_PAYLOAD_BYTES // MAX_TRANSACTION_BYTES + 1)},
     "total"),
    ({"signature": b"short"}, "signature"),
])
def test_bad_fields_are_rejected_with_a_reason(change: dict[str, Any], reason: str) -> None:
    fields: dict[str, Any] = {"creator": A.peer_id, "seq": 0, "self_parent": None, "other_parent": None,
                              "timestamp": 1, "transactions": (), "signature": bytes(64)}
    fields.update(change)
    with pytest.raises(EventError, match=reason):
        Event(**fields)


@pytest.mark.parametrize("data,reason", [
    (b"\xc1", "malformed"),
    (canonical.pack([1, 2]), "exactly 'body' and 'sig'"),
    (canonical.pack({"body": b"\x01", "sig": bytes(64)}), "keys"),
    (canonical.pack({"body": canonical.pack({"creator": "x"}), "sig": bytes(64)}), "keys"),
    (b"\x00" * 5_000_000, "exceeds"),
])
def test_decode_rejects_garbage(data: bytes, reason: str) -> None:
    with pytest.raises(EventError, match=reason):
        decode_event(data)


def test_decode_rejects_non_canonical_bodies() -> None:
    e = first()
    body = canonical.unpack(e.body)
    import msgpack  # unsorted keys: the same map, other bytes
    unsorted = msgpack.packb(dict(reversed(list(body.items()))), use_bin_type=True)
    with pytest.raises(EventError, match="canonical"):
        decode_event(canonical.pack({"body": unsorted, "sig": e.signature}))


def test_insert_rejects_bad_events_with_reasons() -> None:
    hg = Hashgraph(VS)
    a0, b0 = first(A, 10), first(B, 10)
    assert hg.insert(a0) == [] and hg.insert(b0) == [] and hg.insert(a0) == []  # idempotent
    stranger = keys_for(5, seed=77)[4]
    cases: list[tuple[Event, str]] = [
        (first(stranger), "unknown creator"),
        (Event(A.peer_id, 1, a0.hash, b0.hash, 11, (), bytes(64)), "bad signature"),
        (sign_event(A, seq=1, self_parent=b"\x01" * 32, other_parent=None, timestamp=11), "self-parent .* unknown"),
        (sign_event(A, seq=1, self_parent=a0.hash, other_parent=b"\x02" * 32, timestamp=11),
         "other-parent .* unknown"),
        (sign_event(A, seq=1, self_parent=b0.hash, other_parent=None, timestamp=11), "another creator"),
        (sign_event(A, seq=2, self_parent=a0.hash, other_parent=None, timestamp=11), "does not follow"),
        (sign_event(A, seq=1, self_parent=a0.hash, other_parent=None, timestamp=10), "not after"),
    ]
    a1 = sign_event(A, seq=1, self_parent=a0.hash, other_parent=b0.hash, timestamp=11)
    hg.insert(a1)
    cases.append((sign_event(A, seq=2, self_parent=a1.hash, other_parent=a0.hash, timestamp=12), "same creator"))
    for event, reason in cases:
        with pytest.raises(InsertError, match=reason):
            hg.insert(event)
    with pytest.raises(MissingParent) as info:
        hg.insert(cases[2][0])
    assert info.value.missing == b"\x01" * 32
    with pytest.raises(InsertError, match="expected an Event"):
        hg.insert("not an event")  # type: ignore[arg-type]
    assert len(hg) == 3  # nothing half-inserted


def test_verify_event_reasons() -> None:
    e = first()
    assert verify_event(e, lambda _: None) == f"unknown creator {A.peer_id}"
    assert "bad signature" in (verify_event(e, lambda _: B.public_key) or "")


def test_coin_period_must_be_at_least_three() -> None:
    for bad in (2, 0, True, "10"):
        with pytest.raises(ValueError, match="coin_period"):
            Hashgraph(VS, coin_period=bad)  # type: ignore[arg-type]


def test_the_epoch_is_signed_absent_at_epoch_0_and_checked_by_the_hashgraph_and_the_batch() -> None:
    from dag.messages import DagEvents

    e0 = sign_event(A, seq=0, self_parent=None, other_parent=None, timestamp=1)
    e3 = sign_event(A, seq=0, self_parent=None, other_parent=None, timestamp=1, epoch=3)
    assert "epoch" not in canonical.unpack(e0.body) and canonical.unpack(e3.body)["epoch"] == 3
    assert decode_event(encode_event(e3)) == e3 and e3.hash != e0.hash
    assert verify_event(e3, {A.peer_id: A.public_key}.get) is None
    moved = Event(e0.creator, 0, None, None, 1, (), e0.signature, 3)  # epoch 0's signature, epoch 3's body
    assert verify_event(moved, {A.peer_id: A.public_key}.get) is not None
    raw = canonical.unpack(e0.body)
    bad = canonical.pack({"body": canonical.pack({**raw, "epoch": 0}), "sig": e0.signature})
    with pytest.raises(EventError, match="epoch"):
        decode_event(bad)
    with pytest.raises(InsertError, match="epoch 3 in the hashgraph of epoch 0"):
        Hashgraph(VS).insert(e3)
    assert Hashgraph(VS, epoch=3).insert(e3) == []
    with pytest.raises(ValueError, match="epoch"):
        DagEvents(sender=A.peer_id, events=(encode_event(e3),), epoch=0)
