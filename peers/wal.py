"""The consensus write-ahead log: the core's inputs of the current height, on disk before they act.

As CometBFT's consensus WAL (``spec/consensus/wal.md``), one height deep: the
runner appends every input before the core steps on it, and appends its own
votes and proposals *before sending them*, with an fsync. A restarted peer
replays the records of the height it resumes at, so its core holds the same
locks and its own votes again, and it never signs a second, different vote
for a (height, round, type) it already voted in. When the core moves to a new
height the log is truncated.

Records are length-prefixed canonical msgpack maps; a torn last record (a
crash mid-write) ends the log.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

from consensus.messages import Envelope, MessageError, Proposal, Signed, Vote, decode_value, open_envelope
from consensus.state_machine import Input, ProposalInput, ProposeValue, Start, TimeoutInput, VoteInput
from multillmn import canonical
from multillmn.identity import PeerId

__all__ = ["ConsensusWal", "WalError"]

_LEN = struct.Struct(">I")
_MAX_RECORD = 8 << 20


class WalError(Exception):
    """The write-ahead log cannot be opened or written."""


def _encode(height: int, inp: Input) -> bytes:
    body: dict[str, Any]
    if isinstance(inp, VoteInput):
        body = {"t": "vote", "e": inp.signed.envelope.model_dump()}
    elif isinstance(inp, ProposalInput):
        body = {"t": "proposal", "e": inp.signed.envelope.model_dump(), "valid": inp.valid}
    elif isinstance(inp, TimeoutInput):
        body = {"t": "timeout", "h": inp.height, "r": inp.round, "s": inp.step}
    elif isinstance(inp, Start):
        body = {"t": "start"}
    elif isinstance(inp, ProposeValue):
        body = {"t": "value", "h": inp.height, "r": inp.round, "v": inp.value.canonical()}
    else:
        raise ValueError(f"{type(inp).__name__} is not logged")
    return canonical.pack({"height": height, **body})


def _decode(raw: Any, key_of: Any) -> tuple[int, Input]:
    kind = raw["t"]
    if kind == "vote":
        signed: Signed[Any] = open_envelope(Vote, Envelope.model_validate(dict(raw["e"])), key_of)
        return raw["height"], VoteInput(signed)
    if kind == "proposal":
        prop = open_envelope(Proposal, Envelope.model_validate(dict(raw["e"])), key_of)
        return raw["height"], ProposalInput(prop, bool(raw["valid"]))
    if kind == "timeout":
        return raw["height"], TimeoutInput(raw["h"], raw["r"], raw["s"])
    if kind == "start":
        return raw["height"], Start()
    if kind == "value":
        return raw["height"], ProposeValue(raw["h"], raw["r"], decode_value(canonical.unpack(raw["v"])))
    raise ValueError(f"unknown record {kind!r}")


class ConsensusWal:
    """An append-only file of one height's core inputs."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._file = open(path, "ab")
        except OSError as exc:
            raise WalError(f"cannot open the consensus WAL {path}: {exc.strerror}") from exc
        self.path = path
        self.height = 0

    def records(self, key_of: Any) -> list[tuple[int, Input]]:
        """Every intact record, in order (a torn or unreadable tail ends the list).

        Later appends for the height of the last record continue the log.
        """
        data = self.path.read_bytes()
        out: list[tuple[int, Input]] = []
        pos = 0
        while pos + _LEN.size <= len(data):
            (size,) = _LEN.unpack_from(data, pos)
            end = pos + _LEN.size + size
            if size > _MAX_RECORD or end > len(data):
                break
            try:
                out.append(_decode(canonical.unpack(data[pos + _LEN.size:end]), key_of))
            except (canonical.CanonicalError, MessageError, KeyError, TypeError, ValueError):
                break
            pos = end
        if out:
            self.height = out[-1][0]
        self._file.truncate(pos)  # drop a torn tail so new records follow intact ones
        return out

    def append(self, height: int, inp: Input) -> None:
        """Log ``inp`` durably (write + fsync); a new height truncates the log first."""
        if height != self.height:
            self._file.truncate(0)
            self.height = height
        record = _encode(height, inp)
        self._file.write(_LEN.pack(len(record)) + record)
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def own_signer(inp: Input, me: PeerId) -> bool:
    """True for our own vote or proposal (logged by the runner before it is sent)."""
    return isinstance(inp, (VoteInput, ProposalInput)) and inp.signed.signer == me
