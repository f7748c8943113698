"""The simulated peer's common runner parts: the query pool, answering, signing modes, crash/restart.

:class:`Peer` holds what every peer does whatever it agrees by;
:class:`MajorityPeer` is the plain-majority baseline (no rounds).
``consensus.sim._node.WbftPeer`` adds the consensus core.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from consensus.messages import (
    Answer,
    Message,
    MessageError,
    Proposal,
    Query,
    Signed,
    Value,
    Vote,
    VerifiedCache,
    open_envelope,
    query_id_of,
    sign,
)
from consensus.scores import ScoreVector
from consensus.sim._behaviours import Behaviour
from consensus.sim._packets import Packet
from consensus.sim._world import derive_rng, fast_signed, honest_text, normalise
from consensus.validators import ValidatorSet
from multillmn.identity import PeerId

if TYPE_CHECKING:
    from consensus.sim._engine import Simulation

__all__ = ["Peer", "MajorityPeer"]

M = TypeVar("M", bound=Message)


class _Entry:
    """A pending query and the answers gathered for it (first answer per signer wins)."""

    __slots__ = ("query", "qid", "arrived", "answers", "quorum_at")

    def __init__(self, query: Signed[Query], qid: bytes, arrived: int) -> None:
        self.query = query
        self.qid = qid
        self.arrived = arrived
        self.answers: dict[PeerId, Signed[Answer]] = {}
        self.quorum_at: int | None = None


class _Pool:
    """Pending queries in arrival order, answers that overtook their query, and decided query ids."""

    def __init__(self, has_quorum: Callable[[dict[PeerId, Signed[Answer]]], bool]) -> None:
        self.has_quorum = has_quorum
        self.pending: dict[bytes, _Entry] = {}
        self.orphans: dict[bytes, dict[PeerId, Signed[Answer]]] = {}
        self.decided: set[bytes] = set()

    def add_query(self, query: Signed[Query], qid: bytes, now: int) -> _Entry | None:
        if qid in self.pending or qid in self.decided:
            return None
        entry = self.pending[qid] = _Entry(query, qid, now)
        for answer in self.orphans.pop(qid, {}).values():
            self._add_to(entry, answer, now)
        return entry

    def add_answer(self, answer: Signed[Answer], now: int) -> bool:
        qid = answer.message.query_id
        if qid in self.decided:
            return False
        entry = self.pending.get(qid)
        if entry is None:
            bucket = self.orphans.setdefault(qid, {})
            if answer.signer in bucket:
                return False
            bucket[answer.signer] = answer
            return True
        return self._add_to(entry, answer, now)

    def _add_to(self, entry: _Entry, answer: Signed[Answer], now: int) -> bool:
        if answer.signer in entry.answers:
            return False
        entry.answers[answer.signer] = answer
        if entry.quorum_at is None and self.has_quorum(entry.answers):
            entry.quorum_at = now
        return True

    def reweigh(self, now: int) -> None:
        """The weights changed: an entry whose answers now carry a quorum becomes ready (as the runner)."""
        for entry in self.pending.values():
            if entry.quorum_at is None and self.has_quorum(entry.answers):
                entry.quorum_at = now

    def next_ready(self) -> _Entry | None:
        for entry in self.pending.values():
            if entry.quorum_at is not None:
                return entry
        return None

    def mark_decided(self, qid: bytes) -> _Entry | None:
        self.decided.add(qid)
        self.orphans.pop(qid, None)
        return self.pending.pop(qid, None)


class Peer:
    """What every simulated peer does: sign, open, answer queries, gossip answers, crash and restart."""

    def __init__(self, sim: Simulation, index: int, behaviour: Behaviour) -> None:
        self.sim = sim
        self.cfg = sim.config
        # as the runner: a signature verified once is not checked again (fast path: once per run)
        self.verified = VerifiedCache() if self.cfg.real_signatures else sim.shared_verified
        self.index = index
        self.key = sim.keys[index]
        self.peer_id: PeerId = self.key.peer_id
        self.behaviour = behaviour
        self.rng = derive_rng(sim.seed, "node", index)
        self.error_rate = self.rng.uniform(0.0, self.cfg.error_rate)
        self.slowness = dict(self.cfg.slowness).get(index, 1.0)
        self.epoch = 0
        self.down = False
        self.others = tuple(i for i in range(sim.n) if i != index)
        self.own_answers: dict[bytes, Signed[Answer]] = {}  # survives a crash ("disk")
        self._reset_volatile()

    def _reset_volatile(self) -> None:
        self.pool = _Pool(self._answer_quorum)
        self.answer_queue: deque[bytes] = deque()
        self.answering: bytes | None = None

    def _answer_quorum(self, answers: dict[PeerId, Signed[Answer]]) -> bool:
        vs = self.validators
        return vs.has_quorum(vs.weight_of_set(answers))

    @property
    def height(self) -> int:
        """The height (question, for the majority baseline) this peer works on."""
        return 1

    @property
    def validators(self) -> ValidatorSet:
        """The validator set in force where this peer is (genesis unless weights adapt)."""
        return self.sim.validators

    # --- signing and opening ------------------------------------------------
    def sign(self, message: M) -> Signed[M]:
        """Really sign queries, answers and score vectors always (values embed them); votes and proposals
        only with real signatures."""
        if self.cfg.real_signatures:
            return self.sim.timed(_category(message.KIND, "sign"), sign, message, self.key)
        if isinstance(message, (Query, Answer, ScoreVector)):
            return sign(message, self.key)
        return fast_signed(message)  # type: ignore[return-value]

    def open(self, model: type[M], signed: Signed[Any]) -> Signed[M] | None:
        """Open a received message as the wire does (real signatures) or take it as is (fast path)."""
        if not self.cfg.real_signatures:
            return signed
        category = _category(model.KIND, "verify")
        try:
            return self.sim.timed(category, open_envelope, model, signed.envelope,
                                  self.sim.validators.public_key_of, self.verified)
        except MessageError:
            self.sim.rejected += 1
            return None

    def vote_packet(self, vote: Vote) -> Packet:
        """Sign ``vote`` and wrap it for sending (used by behaviours)."""
        return self.sim.packet("vote", self.sign(vote))

    def proposal_packet(self, proposal: Proposal) -> Packet:
        return self.sim.packet("proposal", self.sign(proposal))

    def broadcast(self, packet: Packet, dsts: tuple[int, ...] | None = None) -> None:
        for send in self.behaviour.on_send(self, packet, self.others if dsts is None else dsts):
            self.sim.send(self.index, send)

    # --- queries and answers ------------------------------------------------
    def submit(self, question_index: int) -> None:
        """Act as the entry peer of a client's question."""
        question = self.sim.questions[question_index]
        query = sign(Query(entry=self.peer_id, question=question.text, nonce=self.rng.randbytes(16),
                           max_tokens=32, created_ms=self.sim.now // 1000), self.key)
        self.sim.register_query(query, question_index)
        self.broadcast(self.sim.packet("query", query))
        self.on_query(query)

    def on_query(self, query: Signed[Query]) -> None:
        qid = query_id_of(query.envelope)
        if self.pool.add_query(query, qid, self.sim.now) is None:
            return
        self.answer_queue.append(qid)
        self._answer_next()
        self.pool_changed()

    def _answer_next(self) -> None:
        while self.answering is None and self.answer_queue:
            qid = self.answer_queue.popleft()
            if qid not in self.pool.pending:
                continue
            if qid in self.own_answers:  # answered before a restart: send the same answer again
                self._publish_answer(self.own_answers[qid])
                continue
            self.answering = qid
            base = int(self.cfg.gen_ms * 1000 * self.rng.uniform(0.5, 1.5) * self.slowness)
            self.sim.schedule(self.behaviour.answer_delay(self, base), self, self._answer_done, qid, label="gen")

    def _answer_done(self, qid: bytes) -> None:
        self.answering = None
        entry = self.pool.pending.get(qid)
        if entry is not None:
            question = self.sim.question_of(qid)
            text = self.behaviour.answer_text(self, question, honest_text(question.correct, self.rng,
                                                                          self.error_rate))
            if text is not None:
                gen_ms = (self.sim.now - entry.arrived) // 1000
                answer = self.sign(Answer(query_id=qid, peer=self.peer_id, model=f"model-{self.index}",
                                          text=text[:4000], gen_ms=gen_ms))
                self.own_answers[qid] = answer
                self._publish_answer(answer)
        self._answer_next()

    def _publish_answer(self, answer: Signed[Answer]) -> None:
        self.broadcast(self.sim.packet("answer", answer))
        self.on_answer(answer)

    def on_answer(self, answer: Signed[Answer]) -> None:
        if self.pool.add_answer(answer, self.sim.now):
            self.pool_changed()

    def resign_answer(self, signed: Signed[Any], salt: str) -> Packet:
        """Another answer of ours to the same query (for equivocating behaviours)."""
        a = signed.message
        assert isinstance(a, Answer)
        return self.sim.packet("answer", self.sign(a.model_copy(update={"text": f"{a.text} ({salt})"})))

    def answer_texts(self, question_index: int) -> list[str]:
        """Texts of the other peers' answers held for a question (for ``copy-late``)."""
        for entry in self.pool.pending.values():
            if self.sim.query_index.get(entry.qid) == question_index:
                return [a.message.text for p, a in entry.answers.items() if p != self.peer_id]
        return []

    def gossip_answers(self) -> None:
        """Re-send pending queries and our answers to them (a lossy network needs it)."""
        for entry in list(self.pool.pending.values()):
            self.broadcast(self.sim.packet("query", entry.query))
            own = self.own_answers.get(entry.qid)
            if own is not None:
                self.broadcast(self.sim.packet("answer", own))

    # --- hooks ----------------------------------------------------------------
    def alternative_value(self, value: Value) -> Value | None:
        """Another valid value for the same query, if this peer can make one (equivocating proposers)."""
        return None

    def pool_changed(self) -> None:
        """The pool gained a query or an answer."""

    def deliver(self, src: int, packet: Packet) -> None:
        """A packet from ``src`` arrives."""
        if packet.kind == "query" and packet.signed is not None:
            q = self.open(Query, packet.signed)
            if q is not None:
                self.on_query(q)
        elif packet.kind == "answer" and packet.signed is not None:
            a = self.open(Answer, packet.signed)
            if a is not None:
                self.on_answer(a)

    def start(self) -> None:
        """Begin (at time 0, or at a restart)."""

    def crash(self) -> None:
        self.down = True
        self.epoch += 1
        self._reset_volatile()

    def restart(self) -> None:
        self.down = False
        self.start()


class MajorityPeer(Peer):
    """The plain-majority baseline: no rounds; adopt the most common answer once enough are in."""

    def __init__(self, sim: Simulation, index: int, behaviour: Behaviour) -> None:
        super().__init__(sim, index, behaviour)
        self.done: set[bytes] = set()
        self.timers: set[bytes] = set()

    def _answer_quorum(self, answers: dict[PeerId, Signed[Answer]]) -> bool:
        return 3 * len(answers) > 2 * self.sim.n

    def pool_changed(self) -> None:
        for entry in list(self.pool.pending.values()):
            if entry.quorum_at is None or entry.qid in self.done:
                continue
            due = entry.quorum_at + 1000 * self.cfg.answer_grace_ms
            if len(entry.answers) >= self.sim.n or self.sim.now >= due:
                self._adopt(entry)
            elif entry.qid not in self.timers:
                self.timers.add(entry.qid)
                self.sim.schedule(due - self.sim.now, self, self._grace, entry.qid, label="grace")

    def _grace(self, qid: bytes) -> None:
        self.timers.discard(qid)
        self.pool_changed()

    def _adopt(self, entry: _Entry) -> None:
        texts = [a.message.text for a in entry.answers.values()]  # arrival order breaks ties
        counts: dict[str, int] = {}
        for t in texts:
            counts[normalise(t)] = counts.get(normalise(t), 0) + 1
        best = max(counts.values())
        choice = next(t for t in texts if counts[normalise(t)] == best)
        self.done.add(entry.qid)
        self.pool.mark_decided(entry.qid)
        self.sim.record_majority(self.index, entry.qid, choice)

    @property
    def height(self) -> int:
        return len(self.done) + 1

    def start(self) -> None:
        if self.cfg.gossip_ms:
            first = int(self.cfg.gossip_ms * 1000 * self.rng.uniform(0.5, 1.5))
            self.sim.schedule(first, self, self._tick, None, label="tick")

    def _tick(self, _: None) -> None:
        self.sim.schedule(self.cfg.gossip_ms * 1000, self, self._tick, None, label="tick")
        self.gossip_answers()

    def crash(self) -> None:
        super().crash()
        self.timers = set()

    def restart(self) -> None:
        super().restart()
        self.pool.decided = set(self.done)


def _category(kind: str, op: str) -> str:
    """CPU accounting category: votes and proposals per operation; score vectors; the application."""
    if kind in (Vote.KIND, Proposal.KIND):
        return f"{kind}-{op}"
    return "scores" if kind == ScoreVector.KIND else "answers"
