"""Simulated peers: the shipping :class:`~consensus.driver.Driver` hosted in virtual time.

A :class:`DriverNode` is to the simulator what ``peers/node.py`` is to a
real process: it carries out the driver's effects (sends become packets with
seeded latency, timers become events, the "model" answers from the
scripted answer table after a seeded generation time, similarities are the
world's) and feeds the results back. There is no protocol logic here: the
pool, proposal checking, exposure, scoring, WAL records, re-sending and
catch-up checks are all the driver's.

What the host adds, as the daemon's ledger does for a real peer: it keeps
its decided heights ("disk") and serves them to a peer that asks
(:class:`~consensus.driver.AskCatchUp`), and its write-ahead log, replayed
on restart. Each can be turned off in :class:`~consensus.sim.SimConfig`
(``catchup``, ``wal``) to show what breaks without it.

Membership: a node sends to the peers its own chain knows as members (the
set in force at its height and those scheduled after it), and opens what it
receives with the keys its chain knows. A joiner starts from the genesis as
a non-member, sends its signed Join to a member (again, to another member,
until its chain holds it) and catches up; a leaver hands its Leave to its
own peer and stops once its chain leaves it out of the set.

:class:`MajorityPeer` is the plain-majority baseline (no rounds).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from consensus.driver import (
    Announce,
    AskCatchUp,
    Certified,
    Crash,
    Decided,
    Driver,
    DriverConfig,
    DriverInput,
    Effect,
    Embed,
    Embedded,
    EvidenceFound,
    Generate,
    Generated,
    Judge,
    Judged,
    Rate,
    Rated,
    Persist,
    QueryExpired,
    QueryPool,
    Received,
    Schedule,
    Send,
    SendRaw,
    TimerFired,
)
from consensus.driver.behaviours import Behaviour, CopyLate
from consensus.messages import (
    Answer,
    Join,
    Leave,
    MessageError,
    Proposal,
    Query,
    Signed,
    Verdict,
    Vote,
    open_envelope,
    query_id_of,
    sign,
)
from consensus.scores import ScoreVector
from consensus.sim._packets import CatchUpItem, Packet, PacketKind
from consensus.sim._world import derive_rng, honest_text, normalise, similarities
from consensus.state_machine import Input, Timeouts
from consensus.validators import ValidatorSet
from multillmn import canonical
from multillmn.identity import PeerId

if TYPE_CHECKING:
    from consensus.sim._engine import Simulation

__all__ = ["DriverNode", "MajorityPeer", "SimNode"]

_CATCHUP_BATCH = 8
SIM_CHAIN_ID = "sim"
_KINDS: dict[type[Any], PacketKind] = {Query: "query", Answer: "answer", Proposal: "proposal", Vote: "vote",
                                       ScoreVector: "scores", Join: "join", Leave: "leave", Verdict: "verdict"}


class SimNode:
    """What every simulated peer has: a key, a behaviour, seeded randomness, crash and restart."""

    def __init__(self, sim: Simulation, index: int, behaviour: Behaviour) -> None:
        self.sim = sim
        self.cfg = sim.config
        self.index = index
        self.key = sim.keys[index]
        self.peer_id: PeerId = self.key.peer_id
        self.behaviour = behaviour
        self.rng = derive_rng(sim.seed, "node", index)
        self.error_rate = self.rng.uniform(0.0, self.cfg.error_rate)
        self.slowness = dict(self.cfg.slowness).get(index, 1.0)
        self.epoch = 0
        self.started = index < sim.peers  # joiners start later (Simulation._join)
        self.down = not self.started
        self.others = tuple(i for i in range(sim.n) if i != index)

    @property
    def height(self) -> int:
        return 1

    @property
    def validators(self) -> ValidatorSet:
        return self.sim.validators

    def generation_delay_us(self, slowdown: int = 1) -> int:
        return int(self.cfg.gen_ms * 1000 * self.rng.uniform(0.5, 1.5) * self.slowness * slowdown)

    def _rate(self, e: Rate) -> tuple[tuple[str, int], ...]:
        """A judge that knows the truth (ADR 0022's likelihood gap, idealised): 1000 for a right answer,
        -1000 for a wrong one when its own is right, else 0."""
        right = next((q.correct for q in self.sim.questions if q.text == e.question), None)
        mine = right is not None and normalise(e.own) == right
        return tuple((p, 1000 if normalise(t) == right else -1000 if mine else 0) for p, t in e.answers)

    def answer_text(self, qid: bytes) -> str:
        question = self.sim.question_of(qid)
        fabricated = self.behaviour.answer_text(question.text)
        return fabricated if fabricated is not None else honest_text(question.correct, self.rng, self.error_rate)

    def broadcast(self, packet: Packet, dsts: tuple[int, ...] | None = None, delay_us: int = 0) -> None:
        self.sim.send(self.index, packet, self.others if dsts is None else dsts, delay_us)

    def start(self) -> None:
        """Begin (at time 0, or at a restart)."""

    def submit(self, question_index: int) -> None:
        """Act as the entry peer of a client's question."""

    def deliver(self, src: int, packet: Packet) -> None:
        """A packet from ``src`` arrives."""

    def begin_join(self) -> None:
        """A joiner starts and asks to join (driver hosts only)."""

    def begin_leave(self) -> None:
        """A member asks to leave (driver hosts only)."""

    def crash(self) -> None:
        self.down = True
        self.epoch += 1

    def restart(self) -> None:
        self.down = False
        self.start()


class DriverNode(SimNode):
    """A peer running the shipping driver (WBFT, and the ``equal`` baseline)."""

    def __init__(self, sim: Simulation, index: int, behaviour: Behaviour) -> None:
        super().__init__(sim, index, behaviour)
        t = self.cfg.timeouts_ms
        self.driver_config = DriverConfig(
            model=f"model-{index}", chain_id=SIM_CHAIN_ID, threshold=self.cfg.threshold, tolerance=self.cfg.tolerance,
            timeouts=Timeouts(propose_ms=t[0], prevote_ms=t[1], precommit_ms=t[2], delta_ms=t[3]),
            answer_wait_ms=max(60_000, 40 * int(self.cfg.gen_ms)), answer_grace_ms=self.cfg.answer_grace_ms,
            max_new_tokens=32, judge=self.cfg.verdict_rule == "veto", tick_ms=self.cfg.gossip_ms or 10**9,
            queries_per_height=self.cfg.queries_per_height)
        # durable ("disk"): decided heights (this peer's ledger) and the write-ahead log of the current height
        self.decided: dict[int, CatchUpItem] = {}
        self.wal: list[tuple[int, Input]] = []
        self.driver = self._new_driver()
        self.first_votes: dict[tuple[PeerId, int, int, str], bytes | None] = {}
        self.join: Signed[Join] | None = None  # a joiner's request, once sent
        self.leave: Signed[Leave] | None = None  # a leaver's request, once made
        self._recipients: tuple[tuple[int, int], tuple[int, ...]] | None = None

    def _new_driver(self) -> Driver:
        return Driver(self.key, self.sim.new_chain(self.sim.verified_for(self.index)), self.driver_config,
                      behaviour=self.behaviour, verified=self.sim.verified_for(self.index))

    @property
    def height(self) -> int:
        return self.driver.height

    @property
    def validators(self) -> ValidatorSet:
        return self.driver.validators

    @property
    def now_ms(self) -> int:
        return self.sim.now // 1000

    # --- feeding the driver ---------------------------------------------------------
    def feed(self, inp: DriverInput) -> None:
        if self.down:
            return
        folded = self.driver.chain.height
        self.apply(self.sim.timed("driver", self.driver.handle, inp, self.now_ms))
        self._record_digests(folded)
        self._maybe_depart()

    def members(self) -> tuple[int, ...]:
        """The other nodes this peer's chain knows as members: in the set at its height or scheduled after."""
        d = self.driver
        key = (d.chain.height, d.height)
        if self._recipients is None or self._recipients[0] != key:
            ids = d.chain.members_from(d.height) | set(d.validators.ids)
            index = self.sim.index_of
            self._recipients = (key, tuple(sorted(index[p] for p in ids if p != self.peer_id and p in index)))
        return self._recipients[1]

    def broadcast(self, packet: Packet, dsts: tuple[int, ...] | None = None, delay_us: int = 0) -> None:
        self.sim.send(self.index, packet, self.members() if dsts is None else dsts, delay_us)

    def _record_digests(self, before: int) -> None:
        chain = self.driver.chain
        if chain.height != before and (digest := chain.weights_digest()) is not None:
            self.sim.record_digest(self.index, chain.height, digest)

    def apply(self, effects: list[Effect]) -> None:
        """Carry out the driver's effects in virtual time."""
        for e in effects:
            if self.down:
                return
            if isinstance(e, Send):
                self._send(e)
            elif isinstance(e, Persist):
                if self.cfg.wal:
                    self.wal = [r for r in self.wal if r[0] == e.height] + [(e.height, e.record)]
            elif isinstance(e, Schedule):
                self.sim.schedule(e.delay_ms * 1000, self, self._fire, e.timer, label="timer")
            elif isinstance(e, Generate):
                self.sim.schedule(self.generation_delay_us(e.slowdown), self, self._generated, e, label="gen")
            elif isinstance(e, Embed):
                self.sim.schedule(0, self, self.feed, Embedded(e.request, tuple(tuple(similarities(texts))
                                                                      for _, texts in e.groups)),
                                  label="embed")
            elif isinstance(e, Judge):
                self.sim.schedule(0, self, self.feed, Judged(e.request, ()), label="judge")
            elif isinstance(e, Rate):
                self.sim.schedule(0, self, self.feed, Rated(e.request, self._rate(e)), label="rate")
            elif isinstance(e, Decided):
                self.decided[e.height] = CatchUpItem(e.height, e.round, e.value, e.precommits)
                self.sim.record_decision(self.index, e)
            elif isinstance(e, Announce):  # a forgery: pushed to everyone as catch-up
                item = CatchUpItem(e.height, e.round, e.value, e.precommits)
                self.broadcast(Packet("catchup", items=(item,), label=f"forged c{e.height}"))
            elif isinstance(e, EvidenceFound):
                self.sim.record_equivocation(self.index, e.evidence)
            elif isinstance(e, AskCatchUp):
                if self.cfg.catchup:
                    self.broadcast(Packet("catchup-req", height=e.height, label=f"r{e.height}"),
                                   (self.sim.index_of[e.peer],))
            elif isinstance(e, SendRaw):
                self.broadcast(Packet("raw", raw=e.payload, label="raw"))
            elif isinstance(e, Crash):
                self.sim.crash_node(self.index)
            elif isinstance(e, QueryExpired):
                self.sim.query_expired(e.query_id)

    def _send(self, e: Send) -> None:
        kind = _KINDS.get(type(e.signed.message))
        if kind is None:
            return
        dsts = None if e.to is None else tuple(self.sim.index_of[p] for p in e.to if p in self.sim.index_of)
        self.broadcast(self.sim.packet(kind, e.signed), dsts, e.delay_ms * 1000)

    def _fire(self, timer: Any) -> None:
        self.feed(TimerFired(timer))

    def _generated(self, e: Generate) -> None:
        if e.fabricated is not None:
            text = e.fabricated
        else:
            question = self.sim.question_of(e.query_id)
            text = honest_text(question.correct, self.rng, self.error_rate)
        self.feed(Generated(e.query_id, text[:4000], self.generation_delay_us() // 1000))

    # --- the network -----------------------------------------------------------------
    def submit(self, question_index: int) -> None:
        question = self.sim.questions[question_index]
        nonce = self.rng.randbytes(16)
        qid, effects = self.driver.submit(question.text, 32, nonce, self.now_ms)
        self.sim.register_query(qid, question_index)
        self.apply(effects)

    def deliver(self, src: int, packet: Packet) -> None:
        if packet.kind == "catchup-req":
            items = tuple(self.decided[h] for h in range(packet.height, packet.height + _CATCHUP_BATCH)
                          if h in self.decided)
            if items:
                self.broadcast(Packet("catchup", items=items, label=f"c{packet.height}+{len(items)}"), (src,))
        elif packet.kind == "catchup":
            for item in packet.items:
                precommits = tuple(v for v in (self._open(Vote, p) for p in item.precommits) if v is not None)
                self.feed(Certified(item.height, item.round, item.value, precommits))
        elif packet.kind == "raw":
            try:  # the edge decodes hostile bytes like any other: refused, never fatal
                canonical.unpack(packet.raw)
            except canonical.CanonicalError:
                self.sim.rejected += 1
        elif packet.signed is not None:
            model = type(packet.signed.message)
            if model not in _KINDS:
                return
            signed = self._open(model, packet.signed)
            if signed is None:
                return
            if isinstance(signed.message, Vote):
                self._expect_detection(signed.message)
            self.feed(Received(signed, self.sim.keys[src].peer_id))

    def _open(self, model: type[Any], signed: Signed[Any]) -> Signed[Any] | None:
        """As the wire does (real signatures), or take the sender's decoded message as is (fast path)."""
        if not self.cfg.real_signatures:
            return signed
        try:
            return self.sim.timed(f"{model.KIND}-verify", open_envelope, model, signed.envelope,
                                  self.driver.chain.key_of, self.driver.verified)
        except MessageError:
            self.sim.rejected += 1
            return None

    def _expect_detection(self, v: Vote) -> None:
        """Instrumentation: two conflicting votes the core must count (current height, admitted round)."""
        core = self.driver.core
        if v.height != core.height or core.decided or v.round > core.round + 1:
            return
        key = (v.voter, v.height, v.round, v.type)
        if key not in self.first_votes:
            self.first_votes[key] = v.value_id
        elif self.first_votes[key] != v.value_id:
            self.sim.expect_detection(self.index, key)

    # --- crash and restart -------------------------------------------------------------
    def start(self) -> None:
        self.apply(self.driver.start(self.now_ms))

    def restart(self) -> None:
        """Rebuild from disk: fold the decided heights (same weights as everyone), replay the WAL."""
        self.down = False
        self.driver = self._new_driver()
        for h in sorted(self.decided):
            if h != self.driver.height:
                break
            self.driver.restore(h, self.decided[h].value, self.decided[h].precommits)
            digest = self.driver.chain.weights_digest()
            if digest is not None:
                self.sim.record_digest(self.index, h, digest)
        self.first_votes = {}
        records = [r for h, r in self.wal if h == self.driver.height] if self.cfg.wal else []
        self.apply(self.driver.start(self.now_ms))
        self.apply(self.driver.replay(records, self.now_ms))
        others = [p for p in self.driver.validators.ids if p != self.peer_id]
        if others and self.cfg.catchup:  # ask at once whether we missed heights
            peer = others[self.rng.randrange(len(others))]
            self.broadcast(Packet("catchup-req", height=self.driver.height, label=f"r{self.driver.height}"),
                           (self.sim.index_of[peer],))
        if self.join is not None:
            self._retry_join(None)
        if self.leave is not None:  # the new driver lost its book: hand the request in again
            self._request_leave()
        self._maybe_depart()

    # --- membership ------------------------------------------------------------------
    def begin_join(self) -> None:
        """Start from the genesis as a non-member, sign a Join and send it to a member."""
        self.started, self.down = True, False
        self.start()
        k = self.index - self.sim.peers
        self.join = sign(Join(chain_id=SIM_CHAIN_ID, peer_id=self.peer_id, public_key=self.key.public_key,
                              moniker=f"j{k}", address=f"10.77.{k // 250}.{k % 250 + 1}:26656",
                              model=f"model-{self.index}", created_ms=self.now_ms), self.key)
        via = self.cfg.joiners[k].via
        genesis = self.sim.peers
        self._send_join(via if via is not None else derive_rng(self.sim.seed, "join-via", self.index).randrange(genesis))

    def _send_join(self, dst: int) -> None:
        assert self.join is not None
        self.sim.send(self.index, Packet("join", self.join, label=f"join by {self.index}"), (dst,))
        self.sim.schedule(2 * (self.cfg.gossip_ms or 1000) * 1000, self, self._retry_join, None, label="join-retry")

    def _join_committed(self) -> bool:
        members = self.driver.chain.members
        return members is None or self.peer_id in members.last_request

    def _retry_join(self, _: None) -> None:
        """Until this peer's own chain holds its join, send it to another member of the set it knows."""
        if self._join_committed():
            return
        others = [self.sim.index_of[p] for p in self.driver.validators.ids if p != self.peer_id]
        if others:
            self._send_join(others[self.rng.randrange(len(others))])

    def begin_leave(self) -> None:
        """Sign a Leave and hand it to this peer's own driver, which relays it and proposes it."""
        if self.leave is None:
            self.leave = sign(Leave(chain_id=SIM_CHAIN_ID, peer_id=self.peer_id, created_ms=self.now_ms), self.key)
        if not self.down:
            self._request_leave()
            self._maybe_depart()

    def _request_leave(self) -> None:
        assert self.leave is not None
        members = self.driver.chain.members
        if members is not None and self.peer_id in members.last_request:
            return  # committed already
        _, effects = self.driver.request(self.leave, self.now_ms)
        self.apply(effects)

    def _maybe_depart(self) -> None:
        if self.leave is not None and not self.down and self.peer_id not in self.driver.validators:
            self.sim.depart(self.index)


class MajorityPeer(SimNode):
    """The plain-majority baseline: no rounds; adopt the most common answer once enough are in."""

    def __init__(self, sim: Simulation, index: int, behaviour: Behaviour) -> None:
        super().__init__(sim, index, behaviour)
        self.pool = QueryPool(sim.validators)
        self.done: set[bytes] = set()
        self.own: dict[bytes, Signed[Answer]] = {}

    @property
    def height(self) -> int:
        return len(self.done) + 1

    def start(self) -> None:
        if self.cfg.gossip_ms:
            self.sim.schedule(int(self.cfg.gossip_ms * 1000 * self.rng.uniform(0.5, 1.5)), self, self._tick, None,
                              label="tick")

    def submit(self, question_index: int) -> None:
        question = self.sim.questions[question_index]
        query = sign(Query(entry=self.peer_id, question=question.text, nonce=self.rng.randbytes(16),
                           max_tokens=32, created_ms=self.sim.now // 1000), self.key)
        self.sim.register_query(query_id_of(query.envelope), question_index)
        self.broadcast(self.sim.packet("query", query))
        self._query(query)

    def deliver(self, src: int, packet: Packet) -> None:
        if packet.kind == "query" and packet.signed is not None:
            self._query(packet.signed)
        elif packet.kind == "answer" and packet.signed is not None:
            self._answer(packet.signed)

    def _query(self, query: Signed[Query]) -> None:
        if self.pool.add_query(query, self.sim.now) is not None:
            delay = self.generation_delay_us() * (3 if isinstance(self.behaviour, CopyLate) else 1)
            self.sim.schedule(delay, self, self._answered, query_id_of(query.envelope), label="gen")

    def _answered(self, qid: bytes) -> None:
        entry = self.pool.get(qid)
        if entry is None:
            return
        if isinstance(self.behaviour, CopyLate) and entry.answers:
            counts = Counter(normalise(a.message.text) for a in entry.answers.values())
            text = next(a.message.text for a in entry.answers.values()
                        if counts[normalise(a.message.text)] == max(counts.values()))
        else:
            text = self.answer_text(qid)
        answer = sign(Answer(query_id=qid, peer=self.peer_id, model=f"model-{self.index}", text=text[:4000],
                             gen_ms=0), self.key)
        self.own[qid] = answer
        if self.behaviour.name in ("double-vote", "conflicting-proposals"):  # equivocate answers instead
            other = sign(answer.message.model_copy(update={"text": f"{text} (equivocated)"}), self.key)
            half = len(self.others) // 2
            self.broadcast(self.sim.packet("answer", answer), self.others[:half])
            self.broadcast(self.sim.packet("answer", other), self.others[half:])
        else:
            self.broadcast(self.sim.packet("answer", answer))
        self._answer(answer)

    def _answer(self, answer: Signed[Answer]) -> None:
        if not self.pool.add_answer(answer, self.sim.now):
            return
        entry = self.pool.get(answer.message.query_id)
        if entry is None or entry.quorum_at is None:
            return
        due = int(entry.quorum_at) + 1000 * self.cfg.answer_grace_ms
        if len(entry.answers) >= self.sim.n or self.sim.now >= due:
            self._adopt(entry.query_id)
        else:
            self.sim.schedule(due - self.sim.now, self, self._adopt, entry.query_id, label="grace")

    def _adopt(self, qid: bytes) -> None:
        entry = self.pool.get(qid)
        if entry is None or qid in self.done:
            return
        texts = [a.message.text for a in entry.answers.values()]  # arrival order breaks ties
        counts = Counter(normalise(t) for t in texts)
        choice = next(t for t in texts if counts[normalise(t)] == max(counts.values()))
        self.done.add(qid)
        self.pool.mark_decided(qid)
        self.sim.record_majority(self.index, qid, choice)

    def _tick(self, _: None) -> None:
        self.sim.schedule(self.cfg.gossip_ms * 1000, self, self._tick, None, label="tick")
        for entry in self.pool.pending():
            self.broadcast(self.sim.packet("query", entry.query))
            if entry.query_id in self.own:
                self.broadcast(self.sim.packet("answer", self.own[entry.query_id]))

    def crash(self) -> None:
        super().crash()
        self.pool = QueryPool(self.sim.validators)
        for qid in self.done:
            self.pool.mark_decided(qid)
