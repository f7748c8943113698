"""Sans-I/O messages between a driving peer and its shard workers.

Every message is one frame of a :class:`~peers.secure.SecureChannel`: a
canonical msgpack map. Requests carry ``id`` (echoed by the response) and
``op``:

=========  =========================================  ==============================
op         request fields                             response fields (``ok`` true)
=========  =========================================  ==============================
info       -                                          ``n_layers``, ``model_type``, ``range``
load       ``start``, ``stop``                        ``range``, ``load_ms``
prefill    ``session``, ``pos`` (0), ``x``, ``want``  ``x``, ``compute_us``
           (``mask``: a padded batch)
decode     ``session``, ``pos``, ``x``, ``want``      ``x``, ``compute_us``
reset      ``session``                                -
=========  =========================================  ==============================

``prefill`` starts the session afresh (a replay after a re-plan is a
prefill of prompt + tokens so far); ``decode`` continues it. ``want`` is
``hidden`` (middle shards), ``token`` (greedy argmax of the last position,
from the last shard) or ``logits`` (last position). ``x``'s first dimension
is the batch: 1 to :data:`MAX_BATCH` rows (ADR 0019); a batch of prompts of
different lengths is left-padded and its prefill carries ``mask``, an i64
``(batch, q)`` tensor of 0s then 1s per row (at least one 1); decodes extend
it by ones. A failed request has
``ok`` false and ``error``. Tensors are ``{"dtype": "f32" | "i64", "shape",
"data"}`` with ``data`` the raw little-endian bytes: floats never appear as
msgpack values. Decoding checks every key and type and raises
:class:`ProtocolError`.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Final, Literal

import torch

from multillmn import canonical
from peers.wire import RemoteProtocolError

__all__ = [
    "MAX_FRAME",
    "MAX_BATCH",
    "MAX_REPLY_TENSOR",
    "OPS",
    "WANTS",
    "ProtocolError",
    "Request",
    "Response",
    "encode_tensor",
    "decode_tensor",
    "pack_request",
    "unpack_request",
    "pack_response",
    "unpack_response",
]

MAX_FRAME: Final = 16 * 2**20
"""Largest plaintext frame either side sends or accepts (a 4096-token Gemma3 prefill is 10 MiB)."""

MAX_REPLY_TENSOR: Final = MAX_FRAME - 2**16
"""Largest tensor a reply carries (the rest of the frame is room for the map around it); a
batch whose hidden states or logits would be larger is refused: the driver sends fewer rows."""

MAX_BATCH: Final = 64
"""Most rows of one prefill or decode (the peer's ``[model] max_batch`` is at most 64 too)."""

Op = Literal["info", "load", "prefill", "decode", "reset"]
Want = Literal["hidden", "token", "logits"]
OPS: tuple[Op, ...] = ("info", "load", "prefill", "decode", "reset")
WANTS: tuple[Want, ...] = ("hidden", "token", "logits")
_DTYPES: dict[str, torch.dtype] = {"f32": torch.float32, "i64": torch.int64}
_NAMES = {v: k for k, v in _DTYPES.items()}
_MAX_SESSION = 64
_MAX_ERROR = 1000

if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
    raise ImportError("peers.shard.protocol assumes a little-endian host")


class ProtocolError(RemoteProtocolError):
    """A shard message is malformed; the link must be closed."""


def encode_tensor(t: torch.Tensor) -> dict[str, Any]:
    """A float32 or int64 tensor as ``{"dtype", "shape", "data"}``."""
    name = _NAMES.get(t.dtype)
    if name is None:
        raise ValueError(f"cannot send a {t.dtype} tensor; only float32 and int64")
    t = t.detach().contiguous()
    return {"dtype": name, "shape": list(t.shape), "data": t.numpy().tobytes()}


def decode_tensor(obj: object) -> torch.Tensor:
    """Inverse of :func:`encode_tensor`; :class:`ProtocolError` on any inconsistency."""
    if not isinstance(obj, dict) or set(obj) != {"dtype", "shape", "data"}:
        raise ProtocolError("a tensor is a map with keys dtype, shape, data")
    dtype = _DTYPES.get(obj["dtype"]) if isinstance(obj["dtype"], str) else None
    shape, data = obj["shape"], obj["data"]
    if dtype is None:
        raise ProtocolError(f"tensor dtype must be one of {sorted(_DTYPES)}")
    if not isinstance(shape, tuple) or not 1 <= len(shape) <= 4 or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ProtocolError("tensor shape must be 1 to 4 non-negative integers")
    if not isinstance(data, bytes):
        raise ProtocolError("tensor data must be bytes")
    itemsize = torch.empty((), dtype=dtype).element_size()
    if len(data) != math.prod(shape) * itemsize:
        raise ProtocolError(f"tensor data has {len(data)} bytes, shape {list(shape)} needs {math.prod(shape) * itemsize}")
    if not data:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=dtype).reshape(shape)


@dataclass(frozen=True)
class Request:
    id: int
    op: Op
    start: int = 0
    stop: int = 0
    session: str = ""
    pos: int = 0
    x: torch.Tensor | None = None
    want: Want = "hidden"
    mask: torch.Tensor | None = None  # prefill of a left-padded batch


@dataclass(frozen=True)
class Response:
    id: int
    ok: bool
    error: str = ""
    x: torch.Tensor | None = None
    range: tuple[int, int] | None = None
    n_layers: int = 0
    model_type: str = ""
    load_ms: int = 0
    compute_us: int = 0


_REQUEST_KEYS: dict[str, set[str]] = {
    "info": set(),
    "load": {"start", "stop"},
    "prefill": {"session", "pos", "x", "want"},
    "decode": {"session", "pos", "x", "want"},
    "reset": {"session"},
}


def _int(msg: dict[str, Any], key: str) -> int:
    v = msg[key]
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ProtocolError(f"{key!r} must be a non-negative integer")
    return v


def _str(msg: dict[str, Any], key: str, limit: int) -> str:
    v = msg[key]
    if not isinstance(v, str) or len(v) > limit:
        raise ProtocolError(f"{key!r} must be a string of at most {limit} characters")
    return v


def _unpack_map(data: bytes) -> dict[str, Any]:
    try:
        msg = canonical.unpack(data, max_len=MAX_FRAME)
    except canonical.CanonicalError as exc:
        raise ProtocolError(f"not canonical msgpack: {exc}") from exc
    if not isinstance(msg, dict):
        raise ProtocolError("a shard message is a map")
    if canonical.pack(msg) != data:
        raise ProtocolError("shard message is not in canonical form")
    return msg


def pack_request(req: Request) -> bytes:
    body: dict[str, Any] = {"id": req.id, "op": req.op}
    if req.op == "load":
        body.update(start=req.start, stop=req.stop)
    elif req.op in ("prefill", "decode"):
        if req.x is None:
            raise ValueError(f"{req.op} needs a tensor")
        body.update(session=req.session, pos=req.pos, x=encode_tensor(req.x), want=req.want)
        if req.mask is not None:
            if req.op != "prefill":
                raise ValueError("only a prefill carries a mask")
            body["mask"] = encode_tensor(req.mask)
    elif req.op == "reset":
        body.update(session=req.session)
    return canonical.pack(body)


def unpack_request(data: bytes) -> Request:
    msg = _unpack_map(data)
    op = msg.get("op")
    if op not in _REQUEST_KEYS:
        raise ProtocolError(f"unknown op {op!r}; expected one of {OPS}")
    extra = set(msg) - {"id", "op"} - _REQUEST_KEYS[op] - ({"mask"} if op == "prefill" else set())
    missing = ({"id"} | _REQUEST_KEYS[op]) - set(msg)
    if extra or missing:
        raise ProtocolError(f"{op} request: unexpected keys {sorted(extra)}, missing keys {sorted(missing)}")
    rid = _int(msg, "id")
    if op == "info":
        return Request(rid, "info")
    if op == "load":
        start, stop = _int(msg, "start"), _int(msg, "stop")
        if stop <= start:
            raise ProtocolError("load needs start < stop")
        return Request(rid, "load", start=start, stop=stop)
    session = _str(msg, "session", _MAX_SESSION)
    if op == "reset":
        return Request(rid, "reset", session=session)
    want = msg["want"]
    if want not in WANTS:
        raise ProtocolError(f"want must be one of {WANTS}")
    pos = _int(msg, "pos")
    if op == "prefill" and pos != 0:
        raise ProtocolError("a prefill starts at position 0")
    x = decode_tensor(msg["x"])
    if x.dim() < 2 or not 1 <= x.shape[0] <= MAX_BATCH or x.shape[1] < 1:
        raise ProtocolError(f"x must be (batch, q, ...) with 1 <= batch <= {MAX_BATCH} and q >= 1")
    mask = _mask(msg["mask"], tuple(x.shape[:2])) if "mask" in msg else None
    return Request(rid, op, session=session, pos=pos, x=x, want=want, mask=mask)


def _mask(obj: object, shape: tuple[int, ...]) -> torch.Tensor:
    """A left-padding mask: i64 of ``shape``, each row 0s then 1s with at least one 1."""
    mask = decode_tensor(obj)
    if mask.dtype != torch.int64 or tuple(mask.shape) != shape:
        raise ProtocolError(f"mask must be an i64 tensor of shape {list(shape)}")
    ones = mask.sum(-1)
    if bool(((mask != 0) & (mask != 1)).any()) or bool((ones < 1).any()) or not torch.equal(
            mask, (torch.arange(shape[1]) >= (shape[1] - ones).unsqueeze(1)).to(torch.int64)):
        raise ProtocolError("mask rows must be 0s then 1s (left padding), each with at least one 1")
    return mask


def pack_response(resp: Response) -> bytes:
    body: dict[str, Any] = {"id": resp.id, "ok": resp.ok}
    if not resp.ok:
        body["error"] = resp.error[:_MAX_ERROR]
        return canonical.pack(body)
    if resp.x is not None:
        body.update(x=encode_tensor(resp.x), compute_us=resp.compute_us)
    if resp.n_layers:
        body.update(n_layers=resp.n_layers, model_type=resp.model_type)
    if resp.n_layers or resp.load_ms:
        body["range"] = None if resp.range is None else list(resp.range)
    if resp.load_ms:
        body["load_ms"] = resp.load_ms
    return canonical.pack(body)


def unpack_response(data: bytes) -> Response:
    msg = _unpack_map(data)
    allowed = {"id", "ok", "error", "x", "compute_us", "n_layers", "model_type", "range", "load_ms"}
    if not {"id", "ok"} <= set(msg) or set(msg) - allowed:
        raise ProtocolError(f"response keys {sorted(msg)} are not allowed")
    rid, ok = _int(msg, "id"), msg["ok"]
    if not isinstance(ok, bool):
        raise ProtocolError("'ok' must be a boolean")
    if not ok:
        if set(msg) != {"id", "ok", "error"}:
            raise ProtocolError("an error response has keys id, ok, error")
        return Response(rid, False, error=_str(msg, "error", _MAX_ERROR))
    rng = msg.get("range")
    if rng is not None and not (
        isinstance(rng, tuple) and len(rng) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in rng)
    ):
        raise ProtocolError("'range' must be [start, stop] or nil")
    return Response(
        rid,
        True,
        x=decode_tensor(msg["x"]) if "x" in msg else None,
        range=None if rng is None else (rng[0], rng[1]),
        n_layers=_int(msg, "n_layers") if "n_layers" in msg else 0,
        model_type=_str(msg, "model_type", 64) if "model_type" in msg else "",
        load_ms=_int(msg, "load_ms") if "load_ms" in msg else 0,
        compute_us=_int(msg, "compute_us") if "compute_us" in msg else 0,
    )
