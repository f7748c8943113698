"""Simulated peers: the runner logic of ``peers/node.py`` around a pure :class:`~consensus.Core`.

What is reproduced from the real runner: a query pool; answering queries one
at a time; ``Start`` once some pending query has answers with more than 2/3 of
the weight; on ``RequestValue``, waiting for the answer grace period and
building the value with :func:`~consensus.grouping.build_value`; judging
proposals with :func:`~consensus.grouping.validate_value` (and "not decided
before"); signing the core's votes and proposals and feeding them back.

Weights (``peers/node.py``'s ``_score``, ``includable``, ``check_extras``):
the core owns a :class:`~consensus.chain.Chain`, adaptive under ``wbft``.
After each decision the peer scores every answer of the decided value on
its own similarities (through the behaviour's ``score_vector`` seam), signs
a :class:`~consensus.scores.ScoreVector` and gossips it; as proposer it
carries ``chain.includable`` vectors and evidence (from ``Equivocation``
outputs) in its value; it rejects values whose ``check_extras`` fails, and
judges a proposal for a later height only once it reaches that height (the
chain knows only the current height's extras). Catch-up and restarts feed
``Commit(height, value)`` in height order, so every peer folds the same
decided values into the same weights. As the runner, a peer shows its
proposal to a voter that voted for another value in that round, so a
proposer that equivocates is caught.

What the real runner does not do yet, and the simulator adds because the
protocol needs it for liveness (each can be turned off in
:class:`~consensus.sim.SimConfig`; the scenario tests show what breaks):

* ``wal``: a write-ahead log of core inputs, replayed on restart, so a
  restarted peer keeps its locks and never signs a second, different vote;
* ``gossip_ms``: when nothing moved for a tick, re-send one's own votes,
  proposal, pending queries and answers (lost messages are otherwise final);
* ``relay``: also relay the others' votes of one's lock / valid round, so a
  peer that missed the proof of lock (e.g. the prevote of a peer that then
  crashed) can accept the re-proposal;
* ``catchup``: when stuck, ask a peer for the decided heights one lacks and
  receive, per height, the decided proposal and its precommit quorum;
* ``apply_commits``: if the core cannot use such a verified package, adopt
  the decision directly and move on, as block sync does.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from consensus import grouping
from consensus.chain import SCORE_WINDOW
from consensus.evidence import Evidence, decode_evidence, evidence_id, from_equivocation
from consensus.messages import Answer, MessageError, Proposal, Signed, Value, Vote, open_envelope
from consensus.scores import ScoreVector, score_answers
from consensus.sim._behaviours import Behaviour
from consensus.sim._packets import CatchUpItem, Packet
from consensus.sim._peer import Peer, _Entry
from consensus.sim._world import similarities
from consensus.state_machine import (
    BroadcastProposal,
    BroadcastVote,
    Commit,
    Core,
    Decide,
    Equivocation,
    Input,
    Output,
    ProposalInput,
    ProposeValue,
    RequestValue,
    ScheduleTimeout,
    Start,
    StepName,
    TimeoutInput,
    Timeouts,
    VoteInput,
)
from consensus.validators import ValidatorSet
from multillmn import canonical
from multillmn.identity import PeerId

if TYPE_CHECKING:
    from consensus.sim._engine import Simulation

__all__ = ["WbftPeer"]

_CATCHUP_BATCH = 8


class WbftPeer(Peer):
    """A peer running the weighted Tendermint core, as ``peers/node.py`` does."""

    def __init__(self, sim: Simulation, index: int, behaviour: Behaviour) -> None:
        super().__init__(sim, index, behaviour)
        t = self.cfg.timeouts_ms
        self.timeouts = Timeouts(propose_ms=t[0], prevote_ms=t[1], precommit_ms=t[2], delta_ms=t[3])
        # durable ("disk"): decisions, catch-up packages, the write-ahead log
        self.decided: dict[int, Decide] = {}
        self.packages: dict[int, CatchUpItem] = {}
        self.wal: list[tuple[int, Input]] = []
        self.core = Core(sim.new_chain(self.verified), self.peer_id, timeouts=self.timeouts)
        self._reset_round_state()

    @property
    def height(self) -> int:
        return self.core.height

    @property
    def validators(self) -> ValidatorSet:
        return self.core.validators

    def _reset_round_state(self) -> None:
        self.request: tuple[int, int] | None = None
        self.grace_armed: int | None = None
        self.proposals_seen: dict[tuple[int, int], list[Signed[Proposal]]] = {}
        self.sent_own: dict[tuple[int, int, str], Signed[Any]] = {}
        self.first_votes: dict[tuple[PeerId, int, int, str], bytes | None] = {}
        self.seen_votes: dict[tuple[int, int], dict[tuple[PeerId, str], Signed[Vote]]] = {}
        self.max_seen = 0
        self.hint: int | None = None
        self.last_progress: tuple[int, int, StepName, bool] | None = None
        self.local: deque[Input] = deque()
        self.feeding = False
        self.future: dict[int, list[Signed[Proposal]]] = {}  # proposals for later heights, judged there
        self.exposed: set[tuple[int, int, PeerId]] = set()
        self.scores: dict[tuple[int, PeerId], Signed[ScoreVector]] = {}  # vectors a value may carry
        self.evidence: dict[bytes, Evidence] = {}  # equivocations not committed yet

    # --- feeding the core -------------------------------------------------------
    def feed(self, inp: Input) -> None:
        """Step the core with ``inp`` and everything it causes locally (own votes fed back)."""
        self.local.append(inp)
        if self.feeding:
            return
        self.feeding = True
        try:
            while self.local:
                self._step(self.local.popleft())
                self._maybe_start()
        finally:
            self.feeding = False

    def _step(self, inp: Input) -> None:
        if self.cfg.wal and not isinstance(inp, Commit):  # a commit is durable as a decision
            self.wal.append((self.core.height, inp))
        height = self.core.height
        outputs = self.sim.timed("core", self.core.step, inp)
        for output in self.behaviour.on_outputs(self, outputs):
            self._execute(output)
        if self.core.height != height:
            self._entered_height()

    def _entered_height(self) -> None:
        """The core moved on: record the weight state, reweigh the pool, judge deferred proposals."""
        chain = self.core.chain
        digest = chain.weights_digest()
        if digest is not None:
            self.sim.record_digest(self.index, chain.height, digest)
        height = self.core.height
        self.pool.reweigh(self.sim.now)
        self.future = {h: props for h, props in self.future.items() if h >= height}
        for signed in self.future.pop(height, []):
            self._feed_proposal(signed)
        stale = height - SCORE_WINDOW - 1
        self.scores = {k: v for k, v in self.scores.items() if k[0] > stale}

    def _maybe_start(self) -> None:
        if not self.core.started and self.pool.next_ready() is not None:
            self._step(Start())

    def _execute(self, output: Output) -> None:
        if isinstance(output, BroadcastVote):
            signed_vote = self.sign(output.vote)
            v = output.vote
            self.sent_own[(v.height, v.round, v.type)] = signed_vote
            self.broadcast(self.sim.packet("vote", signed_vote))
            self.local.append(VoteInput(signed_vote))
        elif isinstance(output, BroadcastProposal):
            signed_prop = self.sign(output.proposal)
            p = output.proposal
            self.sent_own[(p.height, p.round, "proposal")] = signed_prop
            self.proposals_seen.setdefault((p.height, p.round), []).append(signed_prop)
            self.broadcast(self.sim.packet("proposal", signed_prop))
            self.local.append(ProposalInput(signed_prop, valid=True))
        elif isinstance(output, ScheduleTimeout):
            self.sim.schedule(output.duration_ms * 1000, self, self._timeout,
                              (output.height, output.round, output.step), label="timeout")
        elif isinstance(output, RequestValue):
            self.request = (output.height, output.round)
            self._try_propose()
        elif isinstance(output, Decide):
            self._on_decide(output)
        elif isinstance(output, Equivocation):
            self.sim.record_equivocation(self.index, output)
            if self.core.chain.adaptive:
                real = Equivocation(self.sim.really_signed(output.first), self.sim.really_signed(output.second))
                ev = from_equivocation(real)
                self.evidence.setdefault(evidence_id(ev), ev)

    def _timeout(self, key: tuple[int, int, StepName]) -> None:
        self.feed(TimeoutInput(*key))

    # --- proposing ---------------------------------------------------------------
    def pool_changed(self) -> None:
        self._try_propose()
        if not self.feeding:
            self.feed_start()

    def feed_start(self) -> None:
        if not self.core.started and self.pool.next_ready() is not None:
            self.feed(Start())

    def _try_propose(self) -> None:
        req = self.request
        if req is None:
            return
        if req[0] != self.core.height:
            self.request = None
            return
        entry = self.pool.next_ready()
        if entry is None:
            return
        assert entry.quorum_at is not None
        due = entry.quorum_at + 1000 * self.cfg.answer_grace_ms
        if len(entry.answers) < self.sim.n and self.sim.now < due:
            if self.grace_armed != due:
                self.grace_armed = due
                self.sim.schedule(due - self.sim.now, self, self._grace, None, label="grace")
            return
        self.request = None
        inp = ProposeValue(req[0], req[1], self.build_value(list(entry.answers.values()), entry))
        if self.feeding:
            self.local.append(inp)
        else:
            self.feed(inp)

    def _grace(self, _: None) -> None:
        self._try_propose()

    def build_value(self, answers: list[Signed[Answer]], entry: _Entry) -> Value:
        """The value for ``entry`` at the current height, with the score vectors and evidence it may carry."""
        answers = sorted(answers, key=lambda a: a.signer)
        vs = self.core.validators
        scores, evidence = self.core.chain.includable(self.scores.values(), self.evidence.values(), self.core.height)
        return grouping.build_value(entry.query.envelope, answers, similarities([a.message.text for a in answers]),
                                    [vs.weight_of(a.signer) for a in answers], self.cfg.threshold,
                                    validators_hash=vs.set_hash(),
                                    next_validators_hash=self.core.chain.validators_at(self.core.height + 1).set_hash(),
                                    scores=scores, evidence=evidence)

    def alternative_value(self, value: Value) -> Value | None:
        """Another valid value for the same query: our own answer re-signed with other text."""
        entry = self.pool.pending.get(value.query_id())
        own = self.own_answers.get(value.query_id())
        if entry is None or own is None or self.peer_id not in entry.answers:
            return None
        alt = self.sign(own.message.model_copy(update={"text": own.message.text + " (alt)"}))
        answers = [alt if a.signer == self.peer_id else a for a in entry.answers.values()]
        built = self.build_value(answers, entry)
        return built if built.value_id() != value.value_id() else None

    # --- receiving ---------------------------------------------------------------
    def deliver(self, src: int, packet: Packet) -> None:
        kind = packet.kind
        if kind == "vote" and packet.signed is not None:
            vote = self.open(Vote, packet.signed)
            if vote is not None:
                self._on_vote(vote, src)
        elif kind == "proposal" and packet.signed is not None:
            prop = self.open(Proposal, packet.signed)
            if prop is not None:
                self._on_proposal(prop, src)
        elif kind == "scores" and packet.signed is not None:
            vector = self.open(ScoreVector, packet.signed)
            if vector is not None:
                self._add_score(vector)
        elif kind == "catchup-req":
            self._serve_catchup(src, packet.height)
        elif kind == "catchup":
            for item in packet.items:
                self._catch_up(item, src)
        else:
            super().deliver(src, packet)

    def _seen(self, height: int, src: int) -> None:
        if height > self.core.height and height > self.max_seen:
            self.max_seen = height
            self.hint = src

    def _on_vote(self, signed: Signed[Vote], src: int) -> None:
        v = signed.message
        self._seen(v.height, src)
        self._expose_conflict(v)
        if v.height == self.core.height and v.round <= self.core.round + 1:
            key = (v.voter, v.height, v.round, v.type)
            if key not in self.first_votes:
                self.first_votes[key] = v.value_id
            elif self.first_votes[key] != v.value_id:
                self.sim.expect_detection(self.index, key)
        if self.cfg.relay and v.height >= self.core.height:
            self.seen_votes.setdefault((v.height, v.round), {}).setdefault((v.voter, v.type), signed)
        self.feed(VoteInput(signed))

    def _expose_conflict(self, v: Vote) -> None:
        """A vote for another value than the proposal held for its round: show the voter that proposal."""
        held = self.proposals_seen.get((v.height, v.round))
        if v.value_id is None or not held or v.voter == self.peer_id or held[0].signer == self.peer_id:
            return
        key = (v.height, v.round, v.voter)
        if self.sim.value_id(held[0].message.value) != v.value_id and key not in self.exposed:
            self.exposed.add(key)
            self.broadcast(self.sim.packet("proposal", held[0]), (self.sim.index_of[v.voter],))

    def _on_proposal(self, signed: Signed[Proposal], src: int) -> None:
        p = signed.message
        self._seen(p.height, src)
        if p.height > self.core.height:  # the chain cannot judge its extras yet: judge it at that height
            waiting = self.future.setdefault(p.height, [])
            if p.height <= self.core.height + self.core.future_heights and len(waiting) < 4 * self.sim.n:
                waiting.append(signed)
                self.sim.deferred_proposals += 1
        elif p.height == self.core.height:
            self._feed_proposal(signed)

    def _feed_proposal(self, signed: Signed[Proposal]) -> None:
        """Judge a proposal of the current height and feed it, once per (round, value)."""
        p = signed.message
        seen = self.proposals_seen.setdefault((p.height, p.round), [])
        vid = self.sim.value_id(p.value)
        if any(self.sim.value_id(s.message.value) == vid for s in seen):
            return
        seen.append(signed)
        inp = ProposalInput(signed, self._judge(p.value))
        if self.feeding:
            self.local.append(inp)
        else:
            self.feed(inp)

    def _judge(self, value: Value) -> bool:
        """The runner's validity check: not decided before, the extras against our chain, and
        ``validate_value`` with own similarities, at the current height."""
        if value.query_id() in self.pool.decided:
            return False
        return self.sim.judge(value, self)

    def _answers_of(self, value: Value) -> list[tuple[PeerId, str]] | None:
        """(answerer, text) of the value's answers; ``None`` if one does not open."""
        out: list[tuple[PeerId, str]] = []
        for env in value.answers:
            if self.cfg.real_signatures:
                try:
                    a = open_envelope(Answer, env, self.sim.validators.public_key_of, self.verified).message
                except MessageError:
                    return None
                out.append((a.peer, a.text))
            else:
                body = canonical.unpack(env.body)
                out.append((str(body["peer"]), str(body["text"])))
        return out

    def local_sims(self, value: Value) -> list[int] | None:
        """Own similarities of the value's answers; ``None`` if an answer does not open."""
        answers = self._answers_of(value)
        return None if answers is None else similarities([t for _, t in answers])

    # --- weights: scoring decided values ---------------------------------------------
    def _score(self, height: int, value: Value) -> None:
        """Score every answer of the value decided at ``height`` on our own similarities; sign and gossip."""
        answers = self._answers_of(value)
        if answers is None:
            return
        peers = [p for p, _ in answers]
        winners = [peers.index(p) for p in value.winners]
        scores = score_answers(peers, similarities([t for _, t in answers]), winners)
        scores = self.behaviour.score_vector(self, scores)
        vector = self.sign(ScoreVector(scorer=self.peer_id, height=height, query_id=value.query_id(), scores=scores))
        self._add_score(vector)
        self.broadcast(self.sim.packet("scores", vector))

    def _add_score(self, signed: Signed[ScoreVector]) -> None:
        vec = signed.message
        if self.core.height - SCORE_WINDOW - 1 <= vec.height < self.core.height + 4:
            self.scores.setdefault((vec.height, vec.scorer), signed)

    # --- deciding and catching up -----------------------------------------------------
    def _on_decide(self, d: Decide) -> None:
        self.decided[d.height] = d
        for pair in d.value.evidence:  # committed: no need to carry it again
            self.evidence.pop(evidence_id(decode_evidence(pair.model_dump())), None)
        if self.core.chain.adaptive and d.validators is not None:
            self._score(d.height, d.value)
        props = self.proposals_seen.get((d.height, d.round), [])
        prop = next((p for p in props if p.message.value is d.value), None)
        if prop is not None:
            self.packages[d.height] = CatchUpItem(prop, d.precommits)
        self.pool.mark_decided(d.value.query_id())
        self.sim.record_decision(self.index, d)
        h = d.height
        self.proposals_seen = {k: v for k, v in self.proposals_seen.items() if k[0] > h}
        self.sent_own = {k: v for k, v in self.sent_own.items() if k[0] > h}
        self.first_votes = {k: v for k, v in self.first_votes.items() if k[1] > h}
        self.seen_votes = {k: v for k, v in self.seen_votes.items() if k[0] > h}
        self.exposed = {k for k in self.exposed if k[0] > h}
        if self.request is not None and self.request[0] <= h:
            self.request = None
        if self.cfg.wal:
            self.wal = [e for e in self.wal if _wal_height(e) > h]

    def _catch_up(self, item: CatchUpItem, src: int) -> None:
        """Feed a decided height's proposal and precommits; apply it directly if the core cannot use it."""
        prop = self.open(Proposal, item.proposal)
        if prop is None or prop.message.height != self.core.height:
            return
        self._on_proposal(prop, src)
        precommits: list[Signed[Vote]] = []
        for pc in item.precommits:
            vote = self.open(Vote, pc)
            if vote is not None:
                precommits.append(vote)
                self._on_vote(vote, src)
        p = prop.message
        if self.core.height != p.height or not self.cfg.apply_commits or not self._judge(p.value):
            return
        vid = self.sim.value_id(p.value)
        voters = {v.signer for v in precommits
                  if (v.message.type, v.message.height, v.message.round, v.message.value_id)
                  == ("precommit", p.height, p.round, vid)}
        vs = self.core.validators
        if vs.has_quorum(vs.weight_of_set(voters)):
            self._apply_commit(prop, tuple(sorted((v for v in precommits if v.signer in voters),
                                                  key=lambda v: v.signer)))

    def _apply_commit(self, prop: Signed[Proposal], precommits: tuple[Signed[Vote], ...]) -> None:
        """Adopt a verified decision the core did not reach (as block sync does): ``Commit`` it, so the
        chain folds it in, and move to the next height."""
        p = prop.message
        self.sim.applied_commits += 1
        self._on_decide(Decide(p.height, p.round, p.value, precommits, self.core.validators))
        self.feed(Commit(p.height, p.value))
        self.feed_start()

    def _serve_catchup(self, src: int, height: int) -> None:
        items = tuple(self.packages[h] for h in range(height, height + _CATCHUP_BATCH) if h in self.packages)
        if items:
            self.broadcast(Packet("catchup", items=items, label=f"c{height}+{len(items)}"), (src,))

    def _tick(self, _: None) -> None:
        """Every ``gossip_ms``: ask for missed heights; re-send own messages if nothing moved."""
        period = self.cfg.gossip_ms or 1000
        self.sim.schedule(period * 1000, self, self._tick, None, label="tick")
        core = self.core
        progress = (core.height, core.round, core.step_name, core.started)
        stuck = progress == self.last_progress
        self.last_progress = progress
        if self.cfg.catchup and stuck and self.others:
            peers = {self.rng.choice(self.others)}  # status gossip: ask whether we missed a decision
            if self.max_seen > core.height and self.hint is not None:
                peers.add(self.hint)
            self.broadcast(Packet("catchup-req", height=core.height, label=f"r{core.height}"),
                           tuple(sorted(peers)))
        if self.cfg.gossip_ms and stuck:
            self.gossip_answers()
            for (h, scorer), vector in list(self.scores.items()):  # our vectors not committed yet
                if scorer == self.peer_id and self.core.chain.includable([vector], [], core.height)[0]:
                    self.broadcast(self.sim.packet("scores", vector))
            for (h, r, kind), signed in list(self.sent_own.items()):
                if h == core.height and r >= core.round - 1:
                    self.broadcast(self.sim.packet("proposal" if kind == "proposal" else "vote", signed))
            if self.cfg.relay:  # vote gossip: others' votes of the current rounds and of our lock / valid round
                rounds = {core.valid_round, core.locked_round}
                for (h, r), votes in list(self.seen_votes.items()):
                    if h == core.height and r in rounds:
                        for signed in votes.values():
                            if signed.signer != self.peer_id:
                                self.broadcast(self.sim.packet("vote", signed))

    def start(self) -> None:
        if self.cfg.gossip_ms or self.cfg.catchup:
            first = int((self.cfg.gossip_ms or 1000) * 1000 * self.rng.uniform(0.5, 1.5))
            self.sim.schedule(first, self, self._tick, None, label="tick")

    # --- crash and restart ---------------------------------------------------------------
    def crash(self) -> None:
        super().crash()
        self._reset_round_state()

    def restart(self) -> None:
        """Rebuild the chain from the durable decisions (so the weights are everyone's), then resume at the
        next height, replaying the write-ahead log if kept."""
        super().restart()
        core = Core(self.sim.new_chain(self.verified), self.peer_id, timeouts=self.timeouts)
        for h in sorted(self.decided):
            core.step(Commit(h, self.decided[h].value))
            digest = core.chain.weights_digest()
            if digest is not None:
                self.sim.record_digest(self.index, h, digest)
        self.core = core
        self.pool.decided = {d.value.query_id() for d in self.decided.values()}
        log, self.wal = self.wal, []
        timers: dict[str, ScheduleTimeout] = {}
        for _, inp in log:
            if isinstance(inp, ProposeValue) and self.request == (inp.height, inp.round):
                self.request = None
            if isinstance(inp, ProposalInput):
                p = inp.signed.message
                self.proposals_seen.setdefault((p.height, p.round), []).append(inp.signed)
            self.wal.append((self.core.height, inp))
            for out in self.core.step(inp):  # already acted on before the crash: only restore state
                if isinstance(out, ScheduleTimeout):
                    timers[out.step] = out
                elif isinstance(out, RequestValue):
                    self.request = (out.height, out.round)
                elif isinstance(out, BroadcastVote):
                    v = out.vote
                    self.sent_own[(v.height, v.round, v.type)] = self.sign(v)
                elif isinstance(out, BroadcastProposal):
                    p = out.proposal
                    self.sent_own[(p.height, p.round, "proposal")] = self.sign(p)
        for t in timers.values():
            if (t.height, t.round) == (self.core.height, self.core.round):
                self.sim.schedule(t.duration_ms * 1000, self, self._timeout, (t.height, t.round, t.step),
                                  label="timeout")
        self.max_seen = self.core.height + 1  # ask a peer at once whether we missed heights
        self.hint = self.rng.choice(self.others)
        self.last_progress = (self.core.height, self.core.round, self.core.step_name, self.core.started)


def _wal_height(entry: tuple[int, Input]) -> int:
    """The height a WAL entry matters for (messages: their own height)."""
    tag, inp = entry
    if isinstance(inp, (ProposalInput, VoteInput)):
        return inp.signed.message.height
    if isinstance(inp, (TimeoutInput, ProposeValue)):
        return inp.height
    return tag
