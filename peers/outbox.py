"""A peer's own signed messages on their way out: WAL first, the fault-injection seam, re-sending.

Every vote and proposal the peer signs goes through :meth:`Outbox.send_own`:
it is appended to the consensus WAL (fsynced) *before* it leaves, so a
restarted peer never signs a different one; then the peer's
:class:`~peers.byzantine.Behaviour` decides what really goes out (an honest
peer: the message to everyone; a double voter: two; a slow one: later).
The outbox remembers the current height's messages and the answers to
pending queries, and :meth:`resend` sends them again when the height is
stuck: links are TCP, but a peer that reconnects, or a lossy link shaper,
loses what was queued.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from consensus import grouping
from consensus.grouping import pair_index
from consensus.messages import Answer, Proposal, Signed, VerifiedCache, Vote, open_envelope, sign
from consensus.state_machine import ProposalInput, VoteInput
from consensus.validators import ValidatorSet
from multillmn.identity import KeyPair
from peers.transport import Transport
from peers.wire import encode_message

if TYPE_CHECKING:
    from peers.byzantine import Behaviour
    from peers.wal import ConsensusWal

__all__ = ["Outbox", "rival_proposal"]

RESEND_MESSAGES = 32  # own votes and proposals of the height re-sent at most
RESEND_ANSWERS = 8  # own answers to pending queries re-sent at most


class Outbox:
    """Sends this peer's votes, proposals and answers, and re-sends them when asked."""

    def __init__(self, key: KeyPair, transport: Transport, behaviour: Behaviour, wal: ConsensusWal | None,
                 validators: Callable[[], ValidatorSet], threshold: int, verified: VerifiedCache) -> None:
        self.key = key
        self.transport = transport
        self.behaviour = behaviour
        self.wal = wal
        self._validators = validators
        self._threshold = threshold
        self._verified = verified
        self._own: dict[int, list[bytes]] = {}  # our signed votes and proposals, per height
        self._answers: dict[bytes, bytes] = {}  # our signed answers, per query id

    def send_own(self, nursery: trio.Nursery, signed: Signed[Vote] | Signed[Proposal],
                 own_input: VoteInput | ProposalInput) -> None:
        """Log our vote or proposal, then send it as the fault-injection behaviour has it."""
        message = signed.message
        peers = [p for p in self._validators().ids if p != self.key.peer_id]
        self.remember(message.height, encode_message(signed))
        if self.wal is not None:  # durable before it leaves: a restart never signs a different one
            self.wal.append(message.height, own_input)
        for send in self.behaviour.sends(message, peers, self._rival):
            payload = encode_message(signed if send.message is message else sign(send.message, self.key))
            if send.delay_s > 0:
                nursery.start_soon(self._send_later, send.to, payload, send.delay_s)
            else:
                self._deliver(send.to, payload)

    def remember(self, height: int, payload: bytes) -> None:
        """Keep an own message of ``height`` for :meth:`resend` (also used by the WAL replay)."""
        self._own.setdefault(height, []).append(payload)

    def own(self, height: int) -> list[bytes]:
        """Our votes and proposals of ``height`` sent so far (encoded)."""
        return list(self._own.get(height, []))

    def send_answer(self, query_id: bytes, signed: Signed[Answer]) -> None:
        self._answers[query_id] = encode_message(signed)
        self.transport.broadcast_nowait(self._answers[query_id])

    def entered(self, height: int) -> None:
        """The core reached ``height``: older messages are settled."""
        self._own = {h: m for h, m in self._own.items() if h >= height}

    def resend(self, height: int, started: bool, pending: Callable[[bytes], bool]) -> int:
        """Send our messages of ``height`` and our answers to still ``pending`` queries again; how many."""
        messages = self._own.get(height, [])[-RESEND_MESSAGES:] if started else []
        self._answers = {q: a for q, a in self._answers.items() if pending(q)}
        messages += list(self._answers.values())[-RESEND_ANSWERS:]
        for payload in messages:
            self.transport.broadcast_nowait(payload)
        return len(messages)

    def _deliver(self, to: tuple[str, ...] | None, payload: bytes) -> None:
        if to is None:
            self.transport.broadcast_nowait(payload)
        else:
            for peer in to:
                self.transport.send_nowait(peer, payload)

    async def _send_later(self, to: tuple[str, ...] | None, payload: bytes, delay_s: float) -> None:
        await trio.sleep(delay_s)
        self._deliver(to, payload)

    def _rival(self, proposal: Proposal) -> Proposal | None:
        return rival_proposal(proposal, self._validators(), self._threshold, self._verified)


def rival_proposal(proposal: Proposal, validators: ValidatorSet, threshold: int,
                   verified: VerifiedCache | None = None) -> Proposal | None:
    """Another valid-looking value for the same (height, round), for the conflicting-proposals behaviour:
    one score vector fewer, else one answer fewer; ``None`` if neither can be dropped."""
    value = proposal.value
    if value.scores:
        rival = value.model_copy(update={"scores": value.scores[1:]})
    elif len(value.answers) > 1:
        answers = [open_envelope(Answer, e, validators.public_key_of, verified) for e in value.answers[:-1]]
        n, m = len(value.answers), len(answers)
        sims = [value.sims[pair_index(n, i, j)] for i in range(m) for j in range(i + 1, m)]
        rival = grouping.build_value(
            value.query, answers, sims, [validators.weight_of(a.signer) for a in answers], threshold,
            validators_hash=value.validators_hash, next_validators_hash=value.next_validators_hash,
            evidence=value.evidence)
    else:
        return None
    return proposal.model_copy(update={"value": rival})
