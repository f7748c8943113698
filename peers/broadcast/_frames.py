"""Broadcast frames: schema and codec (canonical msgpack, bounded decode).

A frame is ``pack([kind, ...])``:

=========  ==============================================  ==========================================
kind       fields                                          meaning
=========  ==============================================  ==========================================
1 GOSSIP   origin: str, payload: bytes, hops: int          the full message, pushed eagerly
2 IHAVE    [[origin: str, msg_id: bytes(16)], ...]         digests of messages the sender holds
3 GRAFT    origin: str, [msg_id: bytes(16), ...]           send me these; push ``origin``'s to me
4 PRUNE    origin: str                                     stop pushing ``origin``'s messages to me
5 SUSPECT  relay: str                                      to an origin: my parent in your tree, ``relay``,
                                                           did not forward your message to me
6 EXCLUDE  epoch: int, [relay: str, ...]                   from an origin, directly to every member: the
                                                           relays its tree no longer uses (sorted)
=========  ==============================================  ==========================================

Frames are not signed: the payload inside a GOSSIP is (by its origin), and
its message id is always recomputed by the receiver (:func:`message_id`),
never read from a frame. An EXCLUDE speaks only for the tree of the peer
that sent it (the authenticated link says who), so it needs no signature
either. :func:`decode` raises :class:`FrameError`, and
nothing else, for any input.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Final

from multillmn.canonical import CanonicalError, pack, unpack

__all__ = [
    "EXCLUDE", "FRAME_OVERHEAD", "GOSSIP", "GRAFT", "IHAVE", "MAX_EXCLUDED", "MAX_GRAFT_IDS", "MAX_HOPS",
    "MAX_CONTROL_FRAME", "MAX_IHAVE_IDS", "MAX_PEER_ID_LEN", "MSG_ID_LEN", "PRUNE", "SUSPECT", "Exclude", "Frame",
    "FrameError", "Gossip", "Graft", "IHave", "Prune", "Suspect", "decode", "encode",
    "kind_name", "max_frame_len", "message_id",
]

GOSSIP: Final = 1
IHAVE: Final = 2
GRAFT: Final = 3
PRUNE: Final = 4
SUSPECT: Final = 5
EXCLUDE: Final = 6


MSG_ID_LEN: Final = 16
"""Message ids are BLAKE2b-128 of the payload."""
MAX_IHAVE_IDS: Final = 256
"""Digests in one IHAVE frame (a sender splits longer lists)."""
MAX_GRAFT_IDS: Final = 64
"""Message ids in one GRAFT frame."""
MAX_EXCLUDED: Final = 256
"""Relays in one EXCLUDE frame (one origin's list)."""
MAX_EPOCH: Final = (1 << 32) - 1
"""Largest EXCLUDE epoch."""
MAX_HOPS: Final = 255
"""Hop count a GOSSIP frame may carry (a tree over 2^16 peers with fan-out 2 is 16 deep)."""
MAX_PEER_ID_LEN: Final = 128
"""Characters of an origin peer id in a frame."""
FRAME_OVERHEAD: Final = 64
"""Bytes of a GOSSIP frame besides its payload, at most (kind, origin id, hop count, msgpack headers): a frame
of a payload at the size limit is at most ``limit + FRAME_OVERHEAD + MAX_PEER_ID_LEN`` bytes."""
MAX_CONTROL_FRAME: Final = 40_000
"""Bytes of the largest IHAVE frame (:data:`MAX_IHAVE_IDS` digests with origin ids of
:data:`MAX_PEER_ID_LEN` characters: 38,152 bytes) with room to spare."""
_MAX_DEPTH: Final = 3


def max_frame_len(max_payload: int) -> int:
    """The longest frame :func:`decode` accepts with this payload limit."""
    return max(max_payload + FRAME_OVERHEAD + MAX_PEER_ID_LEN, MAX_CONTROL_FRAME)


class FrameError(ValueError):
    """Bytes that are not a well-formed broadcast frame (the remote's fault)."""


def message_id(payload: bytes) -> bytes:
    """The id of a payload: BLAKE2b with a 16-byte digest, computed locally."""
    return hashlib.blake2b(payload, digest_size=MSG_ID_LEN).digest()


@dataclass(frozen=True)
class Gossip:
    origin: str
    payload: bytes
    hops: int = 0


@dataclass(frozen=True)
class IHave:
    entries: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class Graft:
    origin: str
    ids: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class Prune:
    origin: str


@dataclass(frozen=True)
class Suspect:
    relay: str


@dataclass(frozen=True)
class Exclude:
    epoch: int
    relays: tuple[str, ...]


Frame = Gossip | IHave | Graft | Prune | Suspect | Exclude


def kind_name(frame: Frame) -> str:
    """``gossip``, ``ihave``, ``graft``, ``prune``, ``suspect`` or ``exclude``."""
    if isinstance(frame, Gossip):
        return "gossip"
    if isinstance(frame, IHave):
        return "ihave"
    if isinstance(frame, Graft):
        return "graft"
    if isinstance(frame, Suspect):
        return "suspect"
    if isinstance(frame, Exclude):
        return "exclude"
    return "prune"


def encode(frame: Frame) -> bytes:
    """Canonical bytes of ``frame`` (no checks beyond the types: a local frame is trusted)."""
    if isinstance(frame, Gossip):
        return pack([GOSSIP, frame.origin, frame.payload, frame.hops])
    if isinstance(frame, IHave):
        return pack([IHAVE, [[o, i] for o, i in frame.entries]])
    if isinstance(frame, Graft):
        return pack([GRAFT, frame.origin, list(frame.ids)])
    if isinstance(frame, Suspect):
        return pack([SUSPECT, frame.relay])
    if isinstance(frame, Exclude):
        return pack([EXCLUDE, frame.epoch, list(frame.relays)])
    return pack([PRUNE, frame.origin])


def _origin(value: Any) -> str:
    if type(value) is not str or not 0 < len(value) <= MAX_PEER_ID_LEN:
        raise FrameError("origin must be a peer id string")
    return value


def _msg_id(value: Any) -> bytes:
    if type(value) is not bytes or len(value) != MSG_ID_LEN:
        raise FrameError(f"a message id is {MSG_ID_LEN} bytes")
    return value


def decode(data: bytes, *, max_payload: int) -> Frame:
    """The frame in ``data``; :class:`FrameError` for anything malformed or over the limits.

    ``max_payload``: the largest GOSSIP payload accepted (the whole frame may
    be at most :func:`max_frame_len` bytes).
    """
    try:
        value = unpack(data, max_len=max_frame_len(max_payload), max_depth=_MAX_DEPTH,
                       max_array_len=max(MAX_IHAVE_IDS, MAX_GRAFT_IDS, MAX_EXCLUDED, 4))
    except CanonicalError as exc:
        raise FrameError(str(exc)) from None
    if type(value) is not tuple or not value or type(value[0]) is not int:
        raise FrameError("a frame is an array starting with its kind")
    kind, fields = value[0], value[1:]
    if kind == GOSSIP:
        if len(fields) != 3:
            raise FrameError("GOSSIP has origin, payload, hops")
        origin, payload, hops = fields
        if type(payload) is not bytes or len(payload) > max_payload:
            raise FrameError("GOSSIP payload must be bytes within the size limit")
        if type(hops) is not int or not 0 <= hops <= MAX_HOPS:
            raise FrameError("GOSSIP hop count out of range")
        return Gossip(_origin(origin), payload, hops)
    if kind == IHAVE:
        if len(fields) != 1 or type(fields[0]) is not tuple or len(fields[0]) > MAX_IHAVE_IDS:
            raise FrameError(f"IHAVE has one list of at most {MAX_IHAVE_IDS} digests")
        entries: list[tuple[str, bytes]] = []
        for entry in fields[0]:
            if type(entry) is not tuple or len(entry) != 2:
                raise FrameError("an IHAVE digest is [origin, msg_id]")
            entries.append((_origin(entry[0]), _msg_id(entry[1])))
        return IHave(tuple(entries))
    if kind == GRAFT:
        if len(fields) != 2 or type(fields[1]) is not tuple or len(fields[1]) > MAX_GRAFT_IDS:
            raise FrameError(f"GRAFT has an origin and a list of at most {MAX_GRAFT_IDS} ids")
        return Graft(_origin(fields[0]), tuple(_msg_id(i) for i in fields[1]))
    if kind == PRUNE:
        if len(fields) != 1:
            raise FrameError("PRUNE has an origin")
        return Prune(_origin(fields[0]))
    if kind == SUSPECT:
        if len(fields) != 1:
            raise FrameError("SUSPECT has a relay")
        return Suspect(_origin(fields[0]))
    if kind == EXCLUDE:
        if (len(fields) != 2 or type(fields[0]) is not int or not 0 <= fields[0] <= MAX_EPOCH
                or type(fields[1]) is not tuple or len(fields[1]) > MAX_EXCLUDED):
            raise FrameError(f"EXCLUDE has an epoch and a list of at most {MAX_EXCLUDED} relays")
        relays = tuple(_origin(r) for r in fields[1])
        if list(relays) != sorted(set(relays)):
            raise FrameError("EXCLUDE relays must be sorted and distinct")
        return Exclude(fields[0], relays)
    raise FrameError(f"unknown frame kind {kind}")
