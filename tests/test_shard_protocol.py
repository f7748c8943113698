"""Shard wire messages: round trips and strict rejection of malformed frames."""

from __future__ import annotations

import msgpack
import pytest
import torch

from multillmn import canonical
from peers.shard.protocol import (
    ProtocolError,
    Request,
    Response,
    decode_tensor,
    encode_tensor,
    pack_request,
    pack_response,
    unpack_request,
    unpack_response,
)


def test_tensor_round_trip_is_bit_exact() -> None:
    x = torch.randn(1, 3, 5)
    y = decode_tensor(canonical.unpack(canonical.pack(encode_tensor(x))))
    assert y.dtype == torch.float32 and torch.equal(x, y)
    ids = torch.tensor([[1, 2, 2**40]])
    assert torch.equal(decode_tensor(canonical.unpack(canonical.pack(encode_tensor(ids)))), ids)
    assert decode_tensor({"dtype": "f32", "shape": (0, 4), "data": b""}).shape == (0, 4)
    with pytest.raises(ValueError, match="float16"):
        encode_tensor(torch.zeros(2, dtype=torch.float16))


@pytest.mark.parametrize("bad, why", [
    ({"dtype": "f64", "shape": (1,), "data": bytes(8)}, "dtype"),
    ({"dtype": "f32", "shape": (2,), "data": bytes(4)}, "needs 8"),
    ({"dtype": "f32", "shape": (-1,), "data": b""}, "shape"),
    ({"dtype": "f32", "shape": (1, 1, 1, 1, 1), "data": bytes(4)}, "shape"),
    ({"dtype": "f32", "shape": (1,), "data": "abcd"}, "bytes"),
    ({"dtype": "f32", "shape": (1,)}, "keys"),
])
def test_bad_tensors_are_rejected(bad: dict[str, object], why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        decode_tensor(bad)


def test_requests_round_trip() -> None:
    x = torch.randn(1, 2, 4)
    for req in (
        Request(1, "info"),
        Request(2, "load", start=3, stop=9),
        Request(3, "prefill", session="s", pos=0, x=torch.tensor([[5, 6]]), want="hidden"),
        Request(4, "decode", session="s", pos=7, x=x, want="token"),
        Request(5, "reset", session="s"),
    ):
        got = unpack_request(pack_request(req))
        assert (got.id, got.op, got.start, got.stop, got.session, got.pos, got.want) == \
            (req.id, req.op, req.start, req.stop, req.session, req.pos, req.want)
        if req.x is None:
            assert got.x is None
        else:
            assert got.x is not None and torch.equal(got.x, req.x)


def test_responses_round_trip() -> None:
    for resp in (
        Response(1, True, range=None, n_layers=30, model_type="llama"),
        Response(2, True, range=(0, 10), load_ms=1500),
        Response(3, True, x=torch.tensor([42]), compute_us=900),
        Response(4, False, error="no layers loaded"),
        Response(5, True),
    ):
        got = unpack_response(pack_response(resp))
        assert (got.id, got.ok, got.error, got.range, got.n_layers, got.load_ms, got.compute_us) == \
            (resp.id, resp.ok, resp.error, resp.range, resp.n_layers, resp.load_ms, resp.compute_us)


@pytest.mark.parametrize("msg, why", [
    ({"id": 1, "op": "explode"}, "unknown op"),
    ({"id": 1, "op": "info", "extra": 1}, "unexpected keys"),
    ({"id": 1, "op": "load", "start": 3}, "missing keys"),
    ({"id": 1, "op": "load", "start": 3, "stop": 3}, "start < stop"),
    ({"id": -1, "op": "info"}, "non-negative"),
    ({"id": 1, "op": "reset", "session": "x" * 65}, "session"),
    ({"id": 1, "op": "prefill", "session": "s", "pos": 2, "want": "hidden",
      "x": {"dtype": "i64", "shape": [1], "data": bytes(8)}}, "position 0"),
    ({"id": 1, "op": "decode", "session": "s", "pos": 2, "want": "everything",
      "x": {"dtype": "i64", "shape": [1], "data": bytes(8)}}, "want"),
])
def test_malformed_requests_are_rejected(msg: dict[str, object], why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        unpack_request(canonical.pack(msg))


def test_non_canonical_or_non_msgpack_frames_are_rejected() -> None:
    unsorted = msgpack.packb({"op": "info", "id": 1}, use_bin_type=True)
    with pytest.raises(ProtocolError, match="canonical form"):
        unpack_request(unsorted)
    with pytest.raises(ProtocolError, match="msgpack"):
        unpack_request(b"\xc1")
    with pytest.raises(ProtocolError, match="floats"):
        unpack_response(msgpack.packb({"id": 1, "ok": True, "compute_us": 1.5}))
    with pytest.raises(ProtocolError, match="not allowed"):
        unpack_response(canonical.pack({"id": 1, "ok": True, "surprise": 1}))
    with pytest.raises(ProtocolError, match="error response"):
        unpack_response(canonical.pack({"id": 1, "ok": False, "error": "x", "range": None}))
