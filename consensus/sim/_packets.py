"""What travels between simulated peers: packets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from consensus.messages import Signed, Value, Vote

__all__ = ["PacketKind", "CatchUpItem", "Packet"]

PacketKind = Literal["query", "answer", "proposal", "vote", "scores", "join", "leave", "verdict", "catchup-req",
                     "catchup", "raw"]


@dataclass(frozen=True, slots=True)
class CatchUpItem:
    """One decided height as a peer serves it: the value and the precommits for it."""

    height: int
    round: int
    value: Value
    precommits: tuple[Signed[Vote], ...]


@dataclass(frozen=True, slots=True)
class Packet:
    """A message on a link: a signed protocol message, a catch-up request or reply, or raw (hostile) bytes.

    With real signatures the receiver trusts only ``signed.envelope`` and
    re-opens it; on the fast path it uses ``signed.message`` directly.
    """

    kind: PacketKind
    signed: Signed[Any] | None = None
    height: int = 0  # catchup-req: the first height wanted
    items: tuple[CatchUpItem, ...] = ()
    raw: bytes = b""
    label: str = ""  # for the event trace
