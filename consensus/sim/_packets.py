"""What travels between simulated peers: packets and send orders."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from consensus.messages import Proposal, Signed, Vote

__all__ = ["PacketKind", "CatchUpItem", "Packet", "Send"]

PacketKind = Literal["query", "answer", "proposal", "vote", "scores", "catchup-req", "catchup"]


@dataclass(frozen=True, slots=True)
class CatchUpItem:
    """One decided height as the runner will serve it: the decided proposal and its precommit quorum."""

    proposal: Signed[Proposal]
    precommits: tuple[Signed[Vote], ...]


@dataclass(frozen=True, slots=True)
class Packet:
    """A message on a link: a signed protocol message, or a catch-up request / reply.

    With real signatures the receiver trusts only ``signed.envelope`` and
    re-opens it; on the fast path it uses ``signed.message`` directly.
    """

    kind: PacketKind
    signed: Signed[Any] | None = None
    height: int = 0  # catchup-req: the first height wanted
    items: tuple[CatchUpItem, ...] = ()
    label: str = ""  # for the event trace


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``packet`` to the nodes ``dsts`` after ``delay_us`` of local delay."""

    packet: Packet
    dsts: tuple[int, ...]
    delay_us: int = 0
