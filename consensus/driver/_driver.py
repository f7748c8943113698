"""The peer driver: everything around the consensus core, pure and sans-I/O.

:meth:`Driver.handle` takes one input (a message received, an answer
generated, similarities computed, a judge's verdicts, a timer fired, a
decided height from catch-up or the ledger) and returns the effects it
causes (send, persist, schedule, generate, embed, judge, decided, ...; see
:mod:`consensus.driver._io`), in the order the host must carry them out.
The trio daemon (``peers/node.py``) and the simulator
(``consensus/sim/``) are two hosts of this one driver.

What it owns:

* the :class:`~consensus.Core` (Tendermint rounds) and the
  :class:`~consensus.chain.Chain` (the weight rule), handing the core each
  height's committee;
* the query pool: a height starts once some pending query has answers
  carrying more than 2/3 of the weight; the proposer then waits up to
  ``answer_grace_ms`` for the rest, so every answer is weighed
  (:mod:`consensus.driver._proposing`);
* proposal checking: not decided before, the extras against its own chain,
  the grouping rule on its own similarities (an :class:`Embed` round trip);
  proposals for later heights wait until the chain can judge them
  (:mod:`consensus.driver._proposing`);
* exposure: a voter that prevotes another value than the proposal this
  peer holds for that round is shown it, so an equivocating proposer is
  caught by the peers that saw both;
* judging split queries (ADR 0022, genesis ``verdict_rule = "veto"``): once
  it answered a pending query and others did too, a :class:`Embed` of its
  answers; if they split, a :class:`Rate` of the answers of another meaning
  than its own, signed as a :class:`~consensus.messages.Verdict` and sent
  (an abstaining one without a judge); as proposer, a contested query waits
  for every answerer's verdict until its grace period is over, then for all
  but at most 1/3 of the weight (the omission rule validators apply), but
  not for answerers that sent no verdict for the last ``SILENT_AFTER``
  contested decisions (:mod:`consensus.driver._judging`);
* scoring decided values (:mod:`consensus.driver._scoring_jobs`), and
  score vectors and evidence waiting to be carried
  (:mod:`consensus.driver._scoring`);
* its own messages: WAL records (:class:`Persist`) before its own votes
  leave, and re-sending them (and relaying others' votes of its lock round)
  when a height is stuck;
* catch-up: a decided height from another peer (:class:`Certified`) is
  checked against the set its own chain computed; one from its own ledger
  (:class:`Committed`) is folded as is (:mod:`consensus.driver._catchup`);
* membership requests (:class:`~consensus.messages.Join`,
  :class:`~consensus.messages.Leave`): checked against the chain, relayed
  once to every validator, carried in its proposals until committed; and
  the last commit (the precommits that decided the previous height) that
  its proposals carry.

The parts in other modules are mixins over
:class:`~consensus.driver._base.DriverBase` (the settings, the shared state
and helpers); this module holds the entry points, dispatch, the core's
stepping, answering, votes, timers and membership requests.

Bounds (each enforced at insertion, see :meth:`Driver.statistics`): the
pool's; proposals checked per (height, round): 2 values, at most
:data:`MAX_CHECKING` in flight; proposals for later heights: up to
``FUTURE_HEIGHTS`` ahead, :data:`MAX_FUTURE_PER_SIGNER` per signer and
height; decided heights waiting to be folded: :data:`MAX_CATCHUP_AHEAD`
heights ahead, :data:`MAX_CATCHUP_PER_HEIGHT` values each; relayable
votes and exposures: rounds up to ``round + 1`` of the current height; own
messages re-sent: :data:`RESEND_MESSAGES` and :data:`RESEND_ANSWERS`;
membership requests: :data:`MAX_REQUESTS` joins and as many leaves; judging:
one pass in flight per pending query, requests ``max_pending``, a silence
count per validator.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from consensus import grouping
from consensus.chain import Chain
from consensus.driver._base import DriverConfig, _Height
from consensus.driver._catchup import MAX_CATCHUP_AHEAD, MAX_CATCHUP_PER_HEIGHT, CatchUpMixin
from consensus.driver._io import (
    QueryTimes,
    AskCatchUp,
    Certified,
    Committed,
    CoreTimeout,
    Decided,
    DriverInput,
    Effect,
    Embedded,
    EvidenceFound,
    Generate,
    GenerationFailed,
    Generated,
    GraceTimer,
    Judged,
    Persist,
    QueryExpired,
    Rated,
    Received,
    Schedule,
    Send,
    Tick,
    TimerFired,
)
from consensus.driver._judging import JudgingMixin
from consensus.driver._pool import PoolFull, QueryPool
from consensus.driver._proposing import _FUTURE_HEIGHTS, MAX_CHECKING, MAX_FUTURE_PER_SIGNER, ProposingMixin
from consensus.driver._scoring import ScoreBook
from consensus.driver._scoring_jobs import MAX_SCORING_JOBS, ScoringMixin
from consensus.evidence import from_equivocation
from consensus.membership import reason_code
from consensus.messages import (
    MAX_ANSWER_CHARS,
    Answer,
    Envelope,
    Join,
    Leave,
    Proposal,
    Query,
    Signed,
    Value,
    Verdict,
    VerifiedCache,
    Vote,
    query_id_of,
)
from consensus.scores import ScoreVector
from consensus.state_machine import (
    BroadcastProposal,
    BroadcastVote,
    Core,
    Decide,
    EnterHeight,
    Equivocation,
    Input,
    Output,
    ProposalInput,
    RequestValue,
    ScheduleTimeout,
    Start,
    TimeoutInput,
    VoteInput,
)
from multillmn.identity import KeyPair, PeerId

if TYPE_CHECKING:
    from consensus.driver.behaviours import Behaviour

__all__ = ["Driver", "DriverConfig", "MAX_CATCHUP_AHEAD", "MAX_CATCHUP_PER_HEIGHT", "MAX_CHECKING",
           "MAX_FUTURE_PER_SIGNER", "MAX_REQUESTS", "MAX_SCORING_JOBS", "RESEND_ANSWERS", "RESEND_MESSAGES",
           "_FUTURE_HEIGHTS"]  # MAX_SCORING_JOBS and _FUTURE_HEIGHTS: re-exported for bench/_security_load.py

RESEND_MESSAGES = 32
"""Own votes and proposals of the height re-sent when it is stuck."""
RESEND_ANSWERS = 8
"""Own answers to pending queries, and pending queries, re-sent when the height is stuck (each)."""
MAX_REQUESTS = 64
"""Join requests (and, separately, leave requests) kept until committed."""


class Driver(ProposingMixin, JudgingMixin, ScoringMixin, CatchUpMixin):
    """One peer's protocol logic: see the module docstring."""

    def __init__(self, key: KeyPair, chain: Chain, config: DriverConfig = DriverConfig(), *,
                 behaviour: Behaviour | None = None, verified: VerifiedCache | None = None) -> None:
        from consensus.driver.behaviours import Behaviour as Honest

        self.key = key
        self.me = key.peer_id
        self.chain = chain
        self.config = config
        self.behaviour = behaviour if behaviour is not None else Honest(self.me)
        self.verified = verified if verified is not None else VerifiedCache()
        height = chain.height + 1
        self.core = Core(chain.committee(height), self.me, height, timeouts=config.timeouts, chain_id=config.chain_id)
        self.pool = QueryPool(self.core.validators, max_pending=config.max_pending, max_orphans=config.max_orphans)
        self.scores = ScoreBook(config.chain_id)
        self.now = 0
        self.rejected = {}
        self._h = _Height()
        self._next_request = 0
        self._last_commit = ()
        self._last_commit_round = None
        self._last_commit_votes = {}
        self._joins = {}
        self._leaves = {}
        # the parts' tables (declared, with their meaning, in their mixins)
        self._checking = {}
        self._future = {}
        self.deferred_proposals = 0
        self._judging = {}
        self._judge_requests = {}
        self._silence = {}
        self._scoring = {}
        self._catchup = {}
        # this module's own
        self._own_answers: dict[bytes, Signed[Answer]] = {}
        self._progress: tuple[int, int, str, bool] | None = None
        self._seen_height = 0  # the highest height another peer is working on (a hint that we lag)
        self._seen_from: PeerId | None = None
        self._ticks = 0
        self._asked_at_tick = -1  # the tick in which a vote from two heights ahead last made us ask
        self.requests_refused: dict[str, int] = {}  # by reason code

    # --- views ------------------------------------------------------------------------
    def own_messages(self) -> list[Signed[Any]]:
        """This peer's votes and proposal of the current height (re-sent when it is stuck)."""
        return list(self._h.own)

    def statistics(self) -> dict[str, int]:
        """Sizes of every table the driver keeps (all bounded; see the module docstring)."""
        return {
            **self.pool.statistics(), **self.scores.statistics(),
            "held_proposals": len(self._h.held), "checked_proposals": len(self._h.checked),
            "checking": len(self._checking), "scoring_jobs": len(self._scoring),
            "future_proposals": sum(len(v) for b in self._future.values() for v in b.values()),
            "catchup_waiting": sum(len(b) for b in self._catchup.values()),
            "exposed": len(self._h.exposed), "relayable_votes": len(self._h.votes), "own_messages": len(self._h.own),
            "own_answers": len(self._own_answers), "join_requests": len(self._joins),
            "leave_requests": len(self._leaves), "judge_silence": len(self._silence),
        }

    # --- entry points ---------------------------------------------------------------
    def start(self, now: int) -> list[Effect]:
        """Begin: the periodic tick (and the timers a WAL replay left)."""
        self.now = now
        return [Schedule(Tick(), self.config.tick_ms)]

    def handle(self, inp: DriverInput, now: int) -> list[Effect]:
        """Apply one input at time ``now`` (ms); return the effects, in order."""
        self.now = now
        out: list[Effect] = []
        given = self.behaviour.on_input(self, inp)
        if given is not None:
            self._dispatch(given, out)
        self._maybe_start(out)
        return self.behaviour.on_effects(self, out)

    def submit(self, question: str, max_tokens: int, nonce: bytes, now: int) -> tuple[bytes, list[Effect]]:
        """Sign a client's question as its entry peer; its query id and the effects. Raises :class:`PoolFull`."""
        self.now = now
        query = self._sign(Query(entry=self.me, question=question, nonce=nonce,
                                 max_tokens=min(max_tokens, 1024), created_ms=now))
        qid = query_id_of(query.envelope)
        out: list[Effect] = []
        if self.pool.add_query(query, now) is None:
            raise ValueError("this query (nonce) was seen before")
        out.append(Send(query))
        self._generate(query, out)
        self._maybe_start(out)
        return qid, self.behaviour.on_effects(self, out)

    def request(self, signed: Signed[Join] | Signed[Leave], now: int) -> tuple[str | None, list[Effect]]:
        """A membership request from a client: why it is refused, or ``None`` and the effects (relayed
        to every validator the first time)."""
        self.now = now
        out: list[Effect] = []
        reason = self._request(signed, out)
        return reason, self.behaviour.on_effects(self, out)

    def restore(self, height: int, value: Value, precommits: tuple[Signed[Vote], ...] = ()) -> None:
        """Fold a height decided before a restart (from the peer's own ledger), with no effects."""
        if height != self.core.height:
            raise ValueError(f"restore height {height} while at {self.core.height}")
        for qid in value.query_ids():
            self.pool.mark_decided(qid)
        self._last_commit = self._commit_of(height, None, value, precommits)
        self.chain.apply(height, value)
        self.core.step(EnterHeight(height + 1, self.chain.committee(height + 1)))
        self._entered_height([])

    def replay(self, records: list[Input], now: int) -> list[Effect]:
        """Step the core through the WAL records of its height again (same locks, same own votes).

        Returns the effects still to carry out (timers, value requests), not
        the sends and records that happened before the restart.
        """
        self.now = now
        out: list[Effect] = []
        for record in records:
            if isinstance(record, (VoteInput, ProposalInput)) and record.signed.signer == self.me:
                self._h.own.append(record.signed)
            if isinstance(record, ProposalInput):
                p = record.signed.message
                self._h.held.setdefault(p.round, record.signed)
                self._h.checked.add((p.round, p.value.value_id()))
            queue: deque[Input | EnterHeight] = deque()
            for output in self.core.step(record):
                if not isinstance(output, (BroadcastVote, BroadcastProposal)):  # signed, logged and sent before
                    self._execute(output, queue, out)
            while queue:
                self._step(queue.popleft(), out)
        return out

    # --- dispatch --------------------------------------------------------------------
    def _dispatch(self, inp: DriverInput, out: list[Effect]) -> None:
        if isinstance(inp, Received):
            self._received(inp, out)
        elif isinstance(inp, Generated):
            self._generated(inp, out)
        elif isinstance(inp, GenerationFailed):
            self._count("generation-failed")
        elif isinstance(inp, Embedded):
            self._embedded(inp, out)
        elif isinstance(inp, Judged):
            self._judged(inp, out)
        elif isinstance(inp, Rated):
            self._rated(inp, out)
        elif isinstance(inp, TimerFired):
            self._timer(inp, out)
        elif isinstance(inp, (Certified, Committed)):
            self._catch_up(inp, out)

    def _received(self, inp: Received, out: list[Effect]) -> None:
        signed = inp.signed
        msg = signed.message
        if isinstance(msg, (Join, Leave)):
            self._request(signed, out)
            return
        if isinstance(msg, Vote) and msg.height == self.chain.height:
            self._late_precommit(signed)
            return
        if signed.signer not in self.validators:
            self._count("not-a-validator")
            return
        if isinstance(msg, Query):
            try:
                if self.pool.add_query(signed, self.now) is not None:
                    self._generate(signed, out)
                    self._try_propose(out)
            except PoolFull:
                self._count("pool-full")
        elif isinstance(msg, Answer):
            if self.pool.add_answer(signed, self.now):
                self._judge(msg.query_id, out)
                self._try_propose(out)
        elif isinstance(msg, Verdict):
            self._heard_judge(signed.signer)  # on any query, even a decided one: it judges
            if self.pool.add_verdict(signed) is not None:
                self._try_propose(out)
        elif isinstance(msg, Proposal):
            self._note_height(msg.height, inp.sender, out)
            self._proposal(signed, out)
        elif isinstance(msg, Vote):
            self._note_height(msg.height, inp.sender, out)
            self._vote(signed, out)
        elif isinstance(msg, ScoreVector):
            self.scores.add_vector(signed, self.core.height)
        else:
            self._count("unexpected-kind")

    def _request(self, signed: Signed[Any], out: list[Effect]) -> str | None:
        msg = signed.message
        book: dict[PeerId, Any] = self._joins if isinstance(msg, Join) else self._leaves
        if book.get(msg.peer_id) == signed:
            return None  # known: relayed already
        height = self.core.height
        reason = self.chain.join_reason(msg, height) if isinstance(msg, Join) else self.chain.leave_reason(msg, height)
        if reason is None and msg.peer_id in book:
            reason = "already-requested: another request of this peer waits to be committed"
        if reason is None and len(book) >= MAX_REQUESTS:
            reason = f"queue-full: {MAX_REQUESTS} requests are waiting to be committed here"
        if reason is not None:
            code = reason_code(reason)
            self.requests_refused[code] = self.requests_refused.get(code, 0) + 1
            return reason
        book[msg.peer_id] = signed
        out.append(Send(signed))
        return None

    def _note_height(self, height: int, sender: PeerId | None, out: list[Effect]) -> None:
        """Remember who works ahead of us; two heights ahead means ours is decided: ask that peer at once.

        At most one such ask per tick, so a stream of votes from ahead costs one request
        a tick; without it a newcomer would wait two ticks (12 s shipped) to notice it lags.
        """
        if height > self.core.height and (height > self._seen_height or self._seen_from is None):
            self._seen_height, self._seen_from = height, sender
        if height > self.core.height + 1 and sender is not None and sender != self.me \
                and self._asked_at_tick != self._ticks:
            self._asked_at_tick = self._ticks
            out.append(AskCatchUp(self.core.height, sender))

    # --- answering ----------------------------------------------------------------------
    def _generate(self, query: Signed[Query], out: list[Effect]) -> None:
        q = query.message
        out.append(Generate(query_id_of(query.envelope), q.question, min(q.max_tokens, self.config.max_new_tokens)))

    def _generated(self, inp: Generated, out: list[Effect]) -> None:
        if self.pool.get(inp.query_id) is None:
            return  # decided or expired meanwhile
        answer = self._sign(Answer(query_id=inp.query_id, peer=self.me, model=self.config.model,
                                   text=inp.text[:MAX_ANSWER_CHARS], gen_ms=max(0, inp.gen_ms)))
        self._own_answers[inp.query_id] = answer
        out.append(Send(answer))
        if self.pool.add_answer(answer, self.now):
            self._judge(inp.query_id, out)
            self._try_propose(out)

    # --- the core ---------------------------------------------------------------------
    def _maybe_start(self, out: list[Effect]) -> None:
        if not self.core.started and not self.core.decided and self.pool.next_ready() is not None:
            self._step(Start(), out)

    def _step(self, inp: Input | EnterHeight, out: list[Effect]) -> None:
        """Step the core with ``inp`` and everything it causes here (own messages fed back, next heights)."""
        queue: deque[Input | EnterHeight] = deque([inp])
        while queue:
            item = queue.popleft()
            if isinstance(item, EnterHeight):
                outputs = self.core.step(item)  # the new height's buffered messages: handled after the reset
                self._entered_height(out)
            else:
                if self._persists(item):
                    out.append(Persist(self.core.height, item))
                outputs = self.core.step(item)
            for output in outputs:
                self._execute(output, queue, out)

    def _execute(self, output: Output, queue: deque[Input | EnterHeight], out: list[Effect]) -> None:
        if isinstance(output, BroadcastVote):
            signed = self._sign(output.vote)
            own = VoteInput(signed)
            out.append(Persist(self.core.height, own))
            out.append(Send(signed))
            self._h.own.append(signed)
            queue.append(own)
        elif isinstance(output, BroadcastProposal):
            prop = self._sign(output.proposal)
            own_prop = ProposalInput(prop, valid=True)
            out.append(Persist(self.core.height, own_prop))
            out.append(Send(prop))
            self._h.own.append(prop)
            self._h.held.setdefault(prop.message.round, prop)
            self._h.checked.add((prop.message.round, prop.message.value.value_id()))
            queue.append(own_prop)
        elif isinstance(output, ScheduleTimeout):
            out.append(Schedule(CoreTimeout(output.height, output.round, output.step), output.duration_ms))
        elif isinstance(output, RequestValue):
            self._h.request = (output.height, output.round)
            self._try_propose(out)
        elif isinstance(output, Decide):
            self._decided(output.height, output.round, output.value, output.precommits, out)
            queue.append(self._next_height())
        elif isinstance(output, Equivocation):  # the core reports each (signer, round, kind) once
            evidence = from_equivocation(output)
            self.scores.add_evidence(evidence, self.validators)
            out.append(EvidenceFound(evidence))

    def _next_height(self) -> EnterHeight:
        h = self.chain.height + 1
        return EnterHeight(h, self.chain.committee(h))

    def _decided(self, height: int, round_: int, value: Value, precommits: tuple[Signed[Vote], ...],
                 out: list[Effect]) -> None:
        """``height`` decided ``value`` here or by catch-up: certify, score, fold into the chain."""
        vs = self.validators
        times = []
        for qid in value.query_ids():
            entry = self.pool.mark_decided(qid)
            self._own_answers.pop(qid, None)
            self._judging.pop(qid, None)
            times.append(QueryTimes(None if entry is None else int(entry.arrived),
                                    None if entry is None or entry.quorum_at is None else int(entry.quorum_at)))
        out.append(Decided(height, round_, value, precommits, vs, tuple(times), self._h.proposed_ms))
        self._note_silence(value)
        self.scores.committed(value, vs)
        self._last_commit = self._commit_of(height, round_, value, precommits)
        self.chain.apply(height, value)
        if self.chain.adaptive:
            self._start_scoring(height, value, vs, out)

    def _commit_of(self, height: int, round_: int | None, value: Value,
                   precommits: tuple[Signed[Vote], ...]) -> tuple[Envelope, ...]:
        """The precommits of one round that decided ``value`` at ``height`` (by voter), as a value carries them."""
        self._last_commit_round, self._last_commit_votes = None, {}
        if self.chain.members is None:
            return ()
        vid = value.value_id()
        mine = [p for p in precommits if (p.message.chain_id, p.message.type, p.message.height, p.message.value_id)
                == (self.config.chain_id, "precommit", height, vid)]
        if round_ is None and mine:
            rounds = [p.message.round for p in mine]
            round_ = max(set(rounds), key=lambda r: (rounds.count(r), r))
        by_voter = {p.message.voter: p.envelope for p in mine if p.message.round == round_}
        self._last_commit_round, self._last_commit_votes = round_, by_voter
        return tuple(by_voter[v] for v in sorted(by_voter))

    def _late_precommit(self, signed: Signed[Vote]) -> None:
        """A precommit for the value just decided, of the commit's round, that came after the decision: the
        last commit carries it too (as CometBFT's proposers carry the precommits gathered after the commit), so
        the stability record does not count a member that was merely slower than the quorum as missing."""
        v = signed.message
        chain = self.chain
        if (chain.members is None or chain.last_set is None or v.type != "precommit" or v.value_id is None
                or v.value_id != chain.last_value_id or v.round != self._last_commit_round
                or v.chain_id != self.config.chain_id or v.voter in self._last_commit_votes
                or v.voter not in chain.last_set):
            return
        by_voter = self._last_commit_votes
        by_voter[v.voter] = signed.envelope
        self._last_commit = tuple(by_voter[p] for p in sorted(by_voter))

    def _entered_height(self, out: list[Effect]) -> None:
        """The core moved to a new height: reset its state, reweigh the pool, judge what waited for it."""
        height = self.core.height
        self._joins = {p: s for p, s in self._joins.items() if self.chain.join_reason(s.message, height) is None}
        self._leaves = {p: s for p, s in self._leaves.items() if self.chain.leave_reason(s.message, height) is None}
        self._h = _Height()
        self._checking = {r: c for r, c in self._checking.items() if c[0].message.height >= height}
        for entry in self.pool.set_validators(self.validators, self.now):
            out.append(QueryExpired(entry.query_id, f"its entry peer {entry.query.signer} is no longer a validator"))
        self.scores.entered(height)
        self._forget_former_judges()
        self._future = {h: b for h, b in self._future.items() if h >= height}
        for signed in [p for ps in self._future.pop(height, {}).values() for p in ps]:
            self._proposal(signed, out)
        self._catchup = {h: b for h, b in self._catchup.items() if h >= height}
        for waiting in self._catchup.pop(height, {}).values():
            if self.core.height == height:
                self._catch_up(waiting, out)

    # --- similarities computed: to the part that asked -----------------------------------------
    def _embedded(self, inp: Embedded, out: list[Effect]) -> None:
        def fits(groups: Sequence[Sequence[object]]) -> bool:  # the host returned a well-formed triangle per group
            return len(inp.sims) == len(groups) and all(
                len(s) == grouping.pair_count(len(g)) for s, g in zip(inp.sims, groups, strict=True))

        judged = self._judge_requests.pop(inp.request, None)
        if judged is not None:
            self._judge_sims(judged, inp.request, inp.sims, out)
            return
        checking = self._checking.pop(inp.request, None)
        if checking is not None:
            signed, texts = checking
            if fits(texts):
                self._checked(signed, inp.sims, out)
            return
        b = self._h.building
        if b is not None and b.request == inp.request:
            if fits(b.answers):
                self._build(b, inp.sims, out)
            else:
                self._h.building = None
            return
        job = self._scoring.pop(inp.request, None)
        if job is not None and job.current < len(job.parts):
            part = job.parts[job.current]
            if fits([part.answers]):
                part.sims = inp.sims[0]
                self._score_next(job, out)

    # --- votes ----------------------------------------------------------------------------
    def _vote(self, signed: Signed[Vote], out: list[Effect]) -> None:
        v = signed.message
        if v.height == self.core.height and v.round <= self.core.round + 1 and signed.signer != self.me:
            self._h.votes.setdefault((v.round, v.voter, v.type), signed)
            self._expose(signed, out)
        self._step(VoteInput(signed), out)

    def _expose(self, vote: Signed[Vote], out: list[Effect]) -> None:
        """A vote for another value than the proposal we hold for its round: show the voter our proposal."""
        v = vote.message
        held = self._h.held.get(v.round)
        if v.value_id is None or held is None or held.message.value.value_id() == v.value_id:
            return
        if (v.round, v.voter) not in self._h.exposed:
            self._h.exposed.add((v.round, v.voter))
            out.append(Send(held, (v.voter,)))

    # --- timers ---------------------------------------------------------------------------
    def _timer(self, inp: TimerFired, out: list[Effect]) -> None:
        t = inp.timer
        if isinstance(t, CoreTimeout):
            self._step(TimeoutInput(t.height, t.round, t.step), out)
        elif isinstance(t, GraceTimer):
            if self._h.request == (t.height, t.round):
                self._try_propose(out)
        elif isinstance(t, Tick):
            self._tick(out)

    def _tick(self, out: list[Effect]) -> None:
        """Expire queries; if nothing moved since the last tick, re-send, relay and ask to catch up."""
        out.append(Schedule(Tick(), self.config.tick_ms))
        self._ticks += 1
        for entry in self.pool.expired(self.now, self.config.answer_wait_ms):
            weight = self.pool.answer_weight(entry)
            out.append(QueryExpired(entry.query_id, f"only {weight} of {self.validators.total} weight answered "
                                                    f"within {self.config.answer_wait_ms} ms; more than 2/3 is needed"))
        core = self.core
        progress = (core.height, core.round, core.step_name, core.started)
        stuck, self._progress = progress == self._progress, progress
        if not stuck:
            return
        self._own_answers = {q: a for q, a in self._own_answers.items() if self.pool.get(q) is not None}
        self._judging = {q: j for q, j in self._judging.items() if self.pool.get(q) is not None}
        self._h.own = self._h.own[-RESEND_MESSAGES:]
        pending = [e.query for e in self.pool.pending()]  # a peer that lost a query cannot answer or start
        resend: list[Signed[Any]] = pending[:RESEND_ANSWERS] + list(self._own_answers.values())[-RESEND_ANSWERS:]
        resend += [v for e in self.pool.pending() if (v := e.verdicts.get(self.me)) is not None][-RESEND_ANSWERS:]
        if core.started:
            resend += self._h.own[-RESEND_MESSAGES:]
            rounds = {core.locked_round, core.valid_round, core.round}
            self._h.votes = {k: v for k, v in self._h.votes.items() if k[0] in rounds or k[0] > core.round}
            resend += [v for (r, _, _), v in self._h.votes.items() if r in rounds]
        resend += [v for v in self.scores.own_vectors(self.me)
                   if self.chain.includable([v], [], core.height)[0]]
        out.extend(Send(s) for s in resend)
        others = [p for p in self.validators.ids if p != self.me]
        if others:  # the peer seen ahead, once (it may have crashed since), else the next one in turn
            hint = self._seen_from if self._seen_height > core.height and self._seen_from in others else None
            self._seen_from = None
            out.append(AskCatchUp(core.height, hint or others[self._ticks % len(others)]))

    # --- helpers ------------------------------------------------------------------------------
    def _persists(self, inp: Input) -> bool:
        """Whether the WAL needs ``inp``: the core's inputs of its current height, except this peer's own votes
        and proposals (persisted before they were sent) and messages of other heights (stale, or buffered for a
        height whose log starts afresh)."""
        if isinstance(inp, (VoteInput, ProposalInput)):
            return inp.signed.signer != self.me and inp.signed.message.height == self.core.height \
                and not self.core.decided
        if isinstance(inp, TimeoutInput):
            return inp.height == self.core.height and not self.core.decided
        return True
