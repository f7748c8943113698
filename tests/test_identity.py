"""Identity, key files, domain-separated signatures and canonical bytes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from multillmn import canonical
from multillmn.identity import KeyFileError, KeyPair, is_peer_id, peer_id_of, verify_signature


def test_key_file_is_owner_only_and_round_trips(tmp_path: Path) -> None:
    key = KeyPair.generate()
    path = tmp_path / "k" / "peer_key.pem"
    key.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert KeyPair.load(path).peer_id == key.peer_id


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "peer_key.pem"
    KeyPair.generate().save(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        KeyPair.load(path)


def test_garbage_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "peer_key.pem"
    path.write_bytes(b"not a key")
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError, match="not a PEM"):
        KeyPair.load(path)


def test_peer_id_derives_from_public_key() -> None:
    key = KeyPair.from_seed(b"\x07" * 32)
    assert key.peer_id == peer_id_of(key.public_key)
    assert is_peer_id(key.peer_id) and not is_peer_id(key.peer_id.upper())


def test_signature_is_bound_to_its_kind() -> None:
    key = KeyPair.generate()
    sig = key.sign("vote", b"payload")
    assert verify_signature(key.public_key, "vote", b"payload", sig)
    assert not verify_signature(key.public_key, "proposal", b"payload", sig)
    assert not verify_signature(key.public_key, "vote", b"payload!", sig)
    assert not verify_signature(KeyPair.generate().public_key, "vote", b"payload", sig)


values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def _tuples(v: object) -> object:
    if isinstance(v, list):
        return tuple(_tuples(x) for x in v)
    if isinstance(v, dict):
        return {k: _tuples(x) for k, x in v.items()}
    return v


@given(values)
def test_canonical_round_trip(value: object) -> None:
    assert canonical.unpack(canonical.pack(value)) == _tuples(value)


@given(st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**64 - 1), min_size=2, max_size=6))
def test_canonical_bytes_ignore_insertion_order(d: dict[str, int]) -> None:
    reversed_d = dict(reversed(list(d.items())))
    assert canonical.pack(d) == canonical.pack(reversed_d)


def test_canonical_rejects_floats_trailing_bytes_and_non_string_keys() -> None:
    import msgpack

    with pytest.raises(canonical.CanonicalError):
        canonical.unpack(msgpack.packb(1.5))
    with pytest.raises(canonical.CanonicalError):
        canonical.unpack(canonical.pack(1) + b"\x01")
    with pytest.raises(canonical.CanonicalError):
        canonical.unpack(msgpack.packb({1: 2}))
    with pytest.raises(canonical.CanonicalError):
        canonical.pack({"x": 1.0})
    with pytest.raises(canonical.CanonicalError, match="64 bits"):
        canonical.pack([2**64])
