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
  ``answer_grace_ms`` for the rest, so every answer is weighed;
* proposal checking: not decided before, the extras against its own chain,
  the grouping rule on its own similarities (an :class:`Embed` round trip);
  proposals for later heights wait until the chain can judge them;
* exposure: a voter that prevotes another value than the proposal this
  peer holds for that round is shown it, so an equivocating proposer is
  caught by the peers that saw both;
* judging split queries (ADR 0022, genesis ``verdict_rule = "veto"``): once
  it answered a pending query and others did too, a :class:`Embed` of its
  answers; if they split, a :class:`Rate` of the answers of another meaning
  than its own, signed as a :class:`~consensus.messages.Verdict` and sent
  (an abstaining one without a judge); as proposer, a contested query waits
  for every answerer's verdict until its grace period is over, then for all
  but less than 1/3 of the weight (the omission rule validators apply);
* scoring decided values, and score vectors and evidence waiting to be
  carried (:mod:`consensus.driver._scoring`);
* its own messages: WAL records (:class:`Persist`) before its own votes
  leave, and re-sending them (and relaying others' votes of its lock round)
  when a height is stuck;
* catch-up: a decided height from another peer (:class:`Certified`) is
  checked against the set its own chain computed; one from its own ledger
  (:class:`Committed`) is folded as is;
* membership requests (:class:`~consensus.messages.Join`,
  :class:`~consensus.messages.Leave`): checked against the chain, relayed
  once to every validator, carried in its proposals until committed; and
  the last commit (the precommits that decided the previous height) that
  its proposals carry.

Bounds (each enforced at insertion, see :meth:`Driver.statistics`): the
pool's; proposals checked per (height, round): 2 values, at most
:data:`MAX_CHECKING` in flight; proposals for later heights: up to
``FUTURE_HEIGHTS`` ahead, :data:`MAX_FUTURE_PER_SIGNER` per signer and
height; decided heights waiting to be folded: :data:`MAX_CATCHUP_AHEAD`
heights ahead, :data:`MAX_CATCHUP_PER_HEIGHT` values each; relayable
votes and exposures: rounds up to ``round + 1`` of the current height; own
messages re-sent: :data:`RESEND_MESSAGES` and :data:`RESEND_ANSWERS`;
membership requests: :data:`MAX_REQUESTS` joins and as many leaves; judging:
one pass in flight per pending query, requests ``max_pending``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from consensus import grouping
from consensus.chain import Chain
from consensus.driver._io import (
    QueryTimes,
    AskCatchUp,
    Certified,
    Committed,
    CoreTimeout,
    Decided,
    DriverInput,
    Effect,
    Embed,
    Embedded,
    EvidenceFound,
    Generate,
    GenerationFailed,
    Generated,
    GraceTimer,
    Judge,
    Judged,
    JudgePair,
    Persist,
    QueryExpired,
    Rate,
    Rated,
    Received,
    Schedule,
    Send,
    Tick,
    TimerFired,
)
from consensus.driver._pool import PendingQuery, PoolFull, QueryPool
from consensus.driver._scoring import ScoreBook, judge_pairs
from consensus.evidence import from_equivocation
from consensus.membership import reason_code
from consensus.messages import (
    MAX_ANSWER_CHARS,
    MAX_QUERIES_PER_VALUE,
    Answer,
    Envelope,
    Join,
    Leave,
    Message,
    MessageError,
    Outcome,
    Proposal,
    Query,
    Signed,
    Value,
    Verdict,
    VerifiedCache,
    Vote,
    answers_digest,
    open_envelope,
    query_id_of,
    sign,
)
from consensus.scores import JudgeResult, ScoreVector, score_answers
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
    ProposeValue,
    RequestValue,
    ScheduleTimeout,
    Start,
    TimeoutInput,
    Timeouts,
    VoteInput,
)
from consensus.validators import ValidatorSet
from consensus.verdicts import missing_judges_ok, rejection_pending, verdict_matrix
from multillmn.identity import KeyPair, PeerId

if TYPE_CHECKING:
    from consensus.driver.behaviours import Behaviour

__all__ = ["Driver", "DriverConfig", "MAX_CATCHUP_AHEAD", "MAX_CATCHUP_PER_HEIGHT", "MAX_CHECKING",
           "MAX_FUTURE_PER_SIGNER", "MAX_REQUESTS", "RESEND_ANSWERS", "RESEND_MESSAGES"]

MAX_CHECKING = 16
"""Proposals whose similarities are being computed at once."""
MAX_FUTURE_PER_SIGNER = 4
"""Proposals kept per signer and later height, to be checked there."""
MAX_CATCHUP_AHEAD = 64
"""Decided heights beyond the next one kept to be folded in order."""
MAX_CATCHUP_PER_HEIGHT = 4
"""Distinct values kept per later height from catch-up (only ones whose signers hold 1/3 of the current set)."""
RESEND_MESSAGES = 32
"""Own votes and proposals of the height re-sent when it is stuck."""
RESEND_ANSWERS = 8
"""Own answers to pending queries, and pending queries, re-sent when the height is stuck (each)."""
VALUE_BUDGET_BYTES = 1 << 20
"""Signed queries and answers a proposer puts into one value at most (a frame holds 2 MiB by default)."""
MAX_SCORING_JOBS = 16
"""Decisions being scored at once (waiting for similarities or a judge)."""
MAX_REQUESTS = 64
"""Join requests (and, separately, leave requests) kept until committed."""
_FUTURE_HEIGHTS = 4


@dataclass(frozen=True)
class DriverConfig:
    """The driver's settings: consensus parameters from the genesis, timings from the peer's config."""

    model: str = "model"  # the name this peer's answers carry
    chain_id: str = ""  # the genesis' chain id: signed into every vote and value
    threshold: int = 800
    tolerance: int = 20
    timeouts: Timeouts = Timeouts()
    answer_wait_ms: int = 120_000
    answer_grace_ms: int = 1500
    max_new_tokens: int = 48
    judge: bool = False  # the host can run a judge model
    judge_band: int = 100
    tick_ms: int = 6000
    max_pending: int = 256  # pending queries
    queries_per_height: int = 16  # queries a value of this proposer decides at most (1: one per height)
    max_orphans: int = 1024  # query ids with answers that overtook their query


@dataclass
class _ScoredQuery:
    """One outcome of a decided value being scored: its answers, then its similarities and judged games."""

    question: str
    answers: list[Answer]
    winners: tuple[PeerId, ...]
    sims: tuple[int, ...] | None = None
    judged: list[JudgeResult] | None = None


@dataclass
class _ScoringJob:
    """Scoring a decided value: its outcomes one after another (``current``), then one signed vector."""

    height: int
    value: Value
    validators: ValidatorSet
    parts: list[_ScoredQuery]
    current: int = 0


@dataclass
class _Judging:
    """Judging one pending query (ADR 0022): the answers of the pass in flight (or of the last one)."""

    seen: int = 0  # answers the last pass considered
    request: int | None = None  # its Embed or Rate in flight
    answers: tuple[Signed[Answer], ...] = ()  # sorted by signer
    rated: tuple[int, ...] = ()  # indices into ``answers`` sent to be rated


@dataclass
class _Building:
    height: int
    round: int
    request: int
    entries: list[PendingQuery]
    answers: list[list[Signed[Answer]]]  # per entry, sorted by signer


@dataclass
class _Height:
    """Runner state of the current height (reset when the core enters a new one)."""

    held: dict[int, Signed[Proposal]] = field(default_factory=dict)  # first proposal seen per round
    checked: set[tuple[int, bytes]] = field(default_factory=set)  # (round, value id) checked or in flight
    exposed: set[tuple[int, PeerId]] = field(default_factory=set)
    own: list[Signed[Any]] = field(default_factory=list)  # own votes and proposal, for re-sending
    votes: dict[tuple[int, PeerId, str], Signed[Vote]] = field(default_factory=dict)  # others', for relaying
    request: tuple[int, int] | None = None  # the core asked for a value (height, round)
    building: _Building | None = None
    grace_armed: int | None = None
    proposed_ms: int | None = None  # when the first proposal of the height reached this peer


class Driver:
    """One peer's protocol logic: see the module docstring."""

    def __init__(self, key: KeyPair, chain: Chain, config: DriverConfig = DriverConfig(), *,
                 behaviour: Behaviour | None = None, verified: VerifiedCache | None = None) -> None:
        from consensus.driver.behaviours import Behaviour as Honest

        self.key = key
        self.me: PeerId = key.peer_id
        self.chain = chain
        self.config = config
        self.behaviour = behaviour if behaviour is not None else Honest(self.me)
        self.verified = verified if verified is not None else VerifiedCache()
        height = chain.height + 1
        self.core = Core(chain.committee(height), self.me, height, timeouts=config.timeouts, chain_id=config.chain_id)
        self.pool = QueryPool(self.core.validators, max_pending=config.max_pending, max_orphans=config.max_orphans)
        self.scores = ScoreBook(config.chain_id)
        self.now = 0
        self.rejected: dict[str, int] = {}
        self._h = _Height()
        self._checking: dict[int, tuple[Signed[Proposal], tuple[tuple[str, ...], ...]]] = {}
        self._scoring: dict[int, _ScoringJob] = {}
        self._future: dict[int, dict[PeerId, list[Signed[Proposal]]]] = {}
        self._catchup: dict[int, dict[bytes, Certified | Committed]] = {}
        self._own_answers: dict[bytes, Signed[Answer]] = {}
        self._judging: dict[bytes, _Judging] = {}  # pending queries this peer judges (ADR 0022)
        self._judge_requests: dict[int, bytes] = {}  # Embed / Rate requests of judging, by request id
        self._next_request = 0
        self._progress: tuple[int, int, str, bool] | None = None
        self._seen_height = 0  # the highest height another peer is working on (a hint that we lag)
        self._seen_from: PeerId | None = None
        self._ticks = 0
        self._asked_at_tick = -1  # the tick in which a vote from two heights ahead last made us ask
        self.deferred_proposals = 0  # proposals for a later height, checked once the peer got there
        self._last_commit: tuple[Envelope, ...] = ()  # precommits that decided ``chain.height``
        self._last_commit_round: int | None = None  # their round
        self._last_commit_votes: dict[PeerId, Envelope] = {}  # by voter
        self._joins: dict[PeerId, Signed[Join]] = {}
        self._leaves: dict[PeerId, Signed[Leave]] = {}
        self.requests_refused: dict[str, int] = {}  # by reason code

    # --- views ------------------------------------------------------------------------
    @property
    def height(self) -> int:
        return self.core.height

    @property
    def validators(self) -> ValidatorSet:
        """The set in force at the core's height."""
        return self.core.validators

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
            "leave_requests": len(self._leaves),
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

    def _count(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

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
        self._future = {h: b for h, b in self._future.items() if h >= height}
        for signed in [p for ps in self._future.pop(height, {}).values() for p in ps]:
            self._proposal(signed, out)
        self._catchup = {h: b for h, b in self._catchup.items() if h >= height}
        for waiting in self._catchup.pop(height, {}).values():
            if self.core.height == height:
                self._catch_up(waiting, out)

    # --- proposing ----------------------------------------------------------------------
    def _try_propose(self, out: list[Effect]) -> None:
        """As proposer: once the oldest ready query's grace period is over, compute similarities for it and for
        the other ready queries whose answers are all in or whose grace is over too (ADR 0020)."""
        h = self._h
        if h.request is None or h.building is not None:
            return
        height, round_ = h.request
        if height != self.core.height or self.core.decided:
            h.request = None
            return
        ready = self.pool.ready(max(1, min(self.config.queries_per_height, MAX_QUERIES_PER_VALUE)))
        if not ready:
            return
        first = ready[0]
        if not self._graced(first):
            assert first.quorum_at is not None
            due = int(first.quorum_at) + self.config.answer_grace_ms
            if h.grace_armed != due:
                h.grace_armed = due
                out.append(Schedule(GraceTimer(height, round_), due - self.now))
            return
        entries, budget = [first], VALUE_BUDGET_BYTES
        for entry in ready:
            budget -= sum(len(a.envelope.body) + 64 for a in entry.answers.values()) + len(entry.query.envelope.body)
            if budget < 0:
                break
            if entry is not first and self._graced(entry):
                entries.append(entry)
        answers = [sorted(e.answers.values(), key=lambda a: a.signer) for e in entries]
        request = self._request_id()
        h.building = _Building(height, round_, request, entries, answers)
        out.append(Embed(request, tuple((e.query.message.question, tuple(a.message.text for a in group))
                                        for e, group in zip(entries, answers, strict=True))))

    def _graced(self, entry: PendingQuery) -> bool:
        """A ready query may go into a value: every validator answered it, or its grace period is over."""
        assert entry.quorum_at is not None
        return len(entry.answers) >= len(self.validators) or \
            self.now >= int(entry.quorum_at) + self.config.answer_grace_ms

    def _build(self, b: _Building, sims: tuple[tuple[int, ...], ...], out: list[Effect]) -> None:
        h = self._h
        h.building = None
        if (b.height, b.round) != h.request or b.height != self.core.height:
            return
        vs = self.validators
        rule = self.chain.verdict_rule
        outcomes = []
        for e, a, s in zip(b.entries, b.answers, sims, strict=True):
            outcome = grouping.build_outcome(e.query.envelope, a, s, [vs.weight_of(x.signer) for x in a],
                                             self.config.threshold, verdicts=list(e.verdicts.values()),
                                             verdict_rule=rule, total_weight=vs.total)
            if rule is not None and not self._verdicts_ready(e, outcome):
                if e is b.entries[0]:  # the oldest query waits for its judges; a verdict arriving retries
                    self._wait_for_verdicts(e, out)
                    return
                continue  # a later one waits for the next height
            outcomes.append(outcome)
        first = outcomes[0]
        scores, evidence = self.scores.includable(self.chain, b.height)
        joins, leaves = self.chain.includable_requests(self._joins.values(), self._leaves.values(), b.height)
        value = Value(
            chain_id=self.config.chain_id, query=first.query, answers=first.answers, sims=first.sims,
            winners=first.winners, answer=first.answer, verdicts=first.verdicts, validators_hash=vs.set_hash(),
            next_validators_hash=self.chain.validators_at(b.height + 1).set_hash(), scores=tuple(scores),
            evidence=tuple(evidence), joins=tuple(joins), leaves=tuple(leaves),
            last_commit=self._last_commit if b.height > 1 else (), more=tuple(outcomes[1:]))
        self.scores.remember_sims(value.value_id(), [o.sims for o in value.outcomes()])
        h.request = None
        if h.proposed_ms is None:
            h.proposed_ms = self.now
        self._step(ProposeValue(b.height, b.round, value), out)

    # --- judging split queries (ADR 0022) ------------------------------------------------------
    def _judge(self, query_id: bytes, out: list[Effect]) -> None:
        """Under the veto, once this peer answered a pending query and another answer is in: compute the
        similarities of its answers so far (one pass at a time; again when more came in meanwhile)."""
        entry = self.pool.get(query_id)
        if self.chain.verdict_rule is None or entry is None or self.me not in entry.answers \
                or len(entry.answers) < 2 or not self.behaviour.judges():
            return
        state = self._judging.setdefault(query_id, _Judging())
        if state.request is not None or len(entry.answers) <= state.seen:
            return
        state.answers = tuple(sorted(entry.answers.values(), key=lambda a: a.signer))
        state.seen = len(state.answers)
        state.request = self._request_id()
        self._judge_requests[state.request] = query_id
        while len(self._judge_requests) > self.config.max_pending:  # a host that never answers
            dropped = self._judge_requests.pop(min(self._judge_requests))
            if (stale := self._judging.get(dropped)) is not None:
                stale.request = None
        out.append(Embed(state.request, ((entry.query.message.question,
                                          tuple(a.message.text for a in state.answers)),)))

    def _judge_sims(self, query_id: bytes, request: int, sims: tuple[tuple[int, ...], ...],
                    out: list[Effect]) -> None:
        """The answers split (more than one group, or a similarity near the threshold): rate the answers
        of another meaning than this peer's (similarity below ``threshold - tolerance``, so no validator
        can find one in its group), or abstain without a judge; a query in one group adds nothing."""
        entry, state = self.pool.get(query_id), self._judging.get(query_id)
        if entry is None or state is None or state.request != request:
            return
        state.request = None
        n = len(state.answers)
        if len(sims) != 1 or len(sims[0]) != grouping.pair_count(n):
            return
        peers = [a.signer for a in state.answers]
        me = peers.index(self.me)
        thr, tol = self.config.threshold, self.config.tolerance
        weights = [max(1, self.validators.weight_of(p)) for p in peers]
        split = len(grouping.group_answers(weights, sims[0], thr)) > 1 or any(abs(x - thr) <= tol for x in sims[0])
        if not split:
            self._judge(query_id, out)
            return
        state.rated = tuple(k for k in range(n) if k != me and sims[0][grouping.pair_index(n, me, k)] < thr - tol)
        if not state.rated or not self.config.judge:
            self._publish_verdict(entry, state, (), out)
            return
        state.request = self._request_id()
        self._judge_requests[state.request] = query_id
        out.append(Rate(state.request, entry.query.message.question, state.answers[me].message.text,
                        tuple((peers[k], state.answers[k].message.text) for k in state.rated)))

    def _rated(self, inp: Rated, out: list[Effect]) -> None:
        query_id = self._judge_requests.pop(inp.request, None)
        entry = None if query_id is None else self.pool.get(query_id)
        state = None if query_id is None else self._judging.get(query_id)
        if entry is None or state is None or state.request != inp.request:
            return
        state.request = None
        asked = {state.answers[k].signer for k in state.rated}
        given = {p: max(-1000, min(1000, v)) for p, v in inp.verdicts if p in asked}  # a host's slip stays bounded
        self._publish_verdict(entry, state, tuple(sorted(given.items())), out)

    def _publish_verdict(self, entry: PendingQuery, state: _Judging, verdicts: tuple[tuple[PeerId, int], ...],
                         out: list[Effect]) -> None:
        by_peer = {a.signer: a.envelope for a in state.answers}
        verdict = self._sign(Verdict(judge=self.me, query_id=entry.query_id,
                                     answers_digest=answers_digest([by_peer[p] for p, _ in verdicts]),
                                     verdicts=verdicts))
        self.pool.add_verdict(verdict)
        out.append(Send(verdict))
        self._judge(entry.query_id, out)  # more answers came in meanwhile
        self._try_propose(out)

    def _verdicts_ready(self, entry: PendingQuery, outcome: Outcome) -> bool:
        """A contested outcome may be proposed once every answerer's verdict is in; after the grace period,
        once those missing weigh less than 1/3 (the omission rule validators apply) and none of them could
        still reject a contender; half a grace period later, on the omission rule alone."""
        vs, keys = self.validators, self.validators.public_key_of
        peers = [open_envelope(Answer, e, keys, self.verified).signer for e in outcome.answers]
        carried = [open_envelope(Verdict, v, keys, self.verified).message for v in outcome.verdicts]
        weights = [vs.weight_of(p) for p in peers]
        heaviest = max(g.weight for g in grouping.group_answers(weights, outcome.sims, self.config.threshold))
        if 3 * heaviest > 2 * sum(weights) or len(carried) == len(peers):
            return True
        assert entry.quorum_at is not None
        grace_over = int(entry.quorum_at) + self.config.answer_grace_ms
        if self.now < grace_over:
            return False
        matrix, judges = verdict_matrix(carried, peers)
        if not missing_judges_ok(weights, judges, vs.total):
            return False
        rule = self.chain.verdict_rule
        assert rule is not None
        return self.now >= grace_over + self.config.answer_grace_ms // 2 or not rejection_pending(
            weights, outcome.sims, self.config.threshold, matrix, rule.margin, vs.total)

    def _wait_for_verdicts(self, entry: PendingQuery, out: list[Effect]) -> None:
        """The oldest query's judges are not all heard: try again at the end of its grace period, then
        half a grace period later (meanwhile, each verdict that arrives retries)."""
        h = self._h
        assert entry.quorum_at is not None and h.request is not None
        due = int(entry.quorum_at) + self.config.answer_grace_ms
        if due <= self.now:
            due += self.config.answer_grace_ms // 2
        if due > self.now and h.grace_armed != due:
            h.grace_armed = due
            out.append(Schedule(GraceTimer(*h.request), due - self.now))

    # --- checking proposals ----------------------------------------------------------------
    def _proposal(self, signed: Signed[Proposal], out: list[Effect]) -> None:
        p = signed.message
        height = self.core.height
        if p.height < height:
            return
        if p.height > height:  # the chain cannot judge its extras yet: check it at that height
            if p.height <= height + _FUTURE_HEIGHTS:
                mine = self._future.setdefault(p.height, {}).setdefault(signed.signer, [])
                if len(mine) < MAX_FUTURE_PER_SIGNER:
                    mine.append(signed)
                    self.deferred_proposals += 1
            return
        if not self.core.round - 2 <= p.round <= self.core.round + 1 + self.core.catchup_rounds:
            return
        h = self._h
        if h.proposed_ms is None:
            h.proposed_ms = self.now
        h.held = {r: s for r, s in h.held.items() if r >= self.core.round - 2}
        h.checked = {k for k in h.checked if k[0] >= self.core.round - 2}
        h.held.setdefault(p.round, signed)
        vid = p.value.value_id()
        key = (p.round, vid)
        if key in self._h.checked or sum(1 for r, _ in self._h.checked if r == p.round) >= 2:
            return
        if len(self._checking) >= MAX_CHECKING:
            self._count("checking-full")
            return
        self._h.checked.add(key)
        reason, texts = self._precheck(p.value, p.height)
        if reason is not None:
            self._step(ProposalInput(signed, valid=False), out)
            return
        request = self._request_id()
        self._checking[request] = (signed, texts)
        keys = self.validators.public_key_of
        questions = [open_envelope(Query, o.query, keys, self.verified).message.question for o in p.value.outcomes()]
        out.append(Embed(request, tuple(zip(questions, texts, strict=True))))

    def _precheck(self, value: Value, height: int) -> tuple[str | None, tuple[tuple[str, ...], ...]]:
        """Reasons to refuse a value before computing any similarity; the answer texts per outcome otherwise."""
        if any(self.pool.is_decided(q) for q in value.query_ids()):
            return "a query was decided at an earlier height", ()
        keys = self.validators.public_key_of
        texts = []
        try:
            for o in value.outcomes():
                open_envelope(Query, o.query, keys, self.verified)
                texts.append(tuple(open_envelope(Answer, e, keys, self.verified).message.text for e in o.answers))
        except MessageError as exc:
            return f"query or answer does not open: {exc}", ()
        return self.chain.check_extras(value, height, self.verified), tuple(texts)

    def _checked(self, signed: Signed[Proposal], sims: tuple[tuple[int, ...], ...], out: list[Effect]) -> None:
        p = signed.message
        if p.height != self.core.height:
            return
        reason = grouping.validate_value(p.value, validators=self.validators, local_sims=sims,
                                         threshold=self.config.threshold, tolerance=self.config.tolerance,
                                         cache=self.verified, chain_id=self.config.chain_id,
                                         verdict_rule=self.chain.verdict_rule)
        if reason is None:
            self.scores.remember_sims(p.value.value_id(), sims)
            self._learn(p.value)
        else:
            self._count("invalid-proposal")
        self._step(ProposalInput(signed, valid=reason is None), out)

    def _learn(self, value: Value) -> None:
        """A valid value holds queries and answers with a quorum: a peer that missed them can start the height."""
        keys = self.validators.public_key_of
        for o in value.outcomes():
            try:
                query = open_envelope(Query, o.query, keys, self.verified)
                answers = [open_envelope(Answer, e, keys, self.verified) for e in o.answers]
                self.pool.add_query(query, self.now)
            except (MessageError, PoolFull):
                return
            for answer in answers:
                self.pool.add_answer(answer, self.now)

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

    # --- scoring decided values ---------------------------------------------------------------
    def _start_scoring(self, height: int, value: Value, vs: ValidatorSet, out: list[Effect]) -> None:
        parts: list[_ScoredQuery] = []
        try:
            for o in value.outcomes():
                answers = [open_envelope(Answer, e, vs.public_key_of, self.verified).message for e in o.answers]
                question = open_envelope(Query, o.query, vs.public_key_of, self.verified).message.question
                parts.append(_ScoredQuery(question, answers, o.winners))
        except MessageError:
            return  # a decided value always opens; be defensive anyway
        known = self.scores.sims_of(value.value_id())  # None: decided without this peer checking it (catch-up)
        if known is not None and len(known) == len(parts):
            for part, sims in zip(parts, known, strict=True):
                part.sims = sims
        self._score_next(_ScoringJob(height, value, vs, parts), out)

    def _score_next(self, job: _ScoringJob, out: list[Effect]) -> None:
        """Take the job's outcomes in turn: similarities if missing, then judged games; then sign the vector."""
        while job.current < len(job.parts):
            part = job.parts[job.current]
            if part.sims is None:
                request = self._request_id()
                self._keep_scoring(request, job)
                out.append(Embed(request, ((part.question, tuple(a.text for a in part.answers)),)))
                return
            if part.judged is None:
                pairs = self._judged_pairs(job.validators, part)
                if pairs:
                    request = self._request_id()
                    self._keep_scoring(request, job)
                    a = part.answers
                    out.append(Judge(request, part.question, tuple(
                        JudgePair(a[i].peer, a[i].text, a[j].peer, a[j].text) for i, j in pairs)))
                    return
                part.judged = []
            job.current += 1
        self._finish_scoring(job, out)

    def _judged_pairs(self, vs: ValidatorSet, part: _ScoredQuery) -> list[tuple[int, int]]:
        """The close calls of one outcome this peer's judge should see (none without a judge)."""
        if not (self.config.judge and self.behaviour.judges()):
            return []
        assert part.sims is not None
        peers = [a.peer for a in part.answers]
        winners = [peers.index(p) for p in part.winners if p in peers]
        contested = 3 * vs.weight_of_set(part.winners) <= 2 * vs.weight_of_set(peers)
        own = peers.index(self.me) if self.me in peers else None
        return judge_pairs(len(peers), part.sims, self.config.threshold, self.config.judge_band,
                           contested_winners=winners if contested else (), own=own)

    def _judged(self, inp: Judged, out: list[Effect]) -> None:
        job = self._scoring.pop(inp.request, None)
        if job is not None and job.current < len(job.parts):
            job.parts[job.current].judged = list(inp.results)
            job.current += 1
            self._score_next(job, out)

    def _finish_scoring(self, job: _ScoringJob, out: list[Effect]) -> None:
        """Score every outcome against its decision; a peer's score for the height is the mean over the
        outcomes it answered (floor), so a value of many queries weighs like one of a single query."""
        totals: dict[PeerId, list[int]] = {}
        for part in job.parts:
            assert part.sims is not None
            peers = [a.peer for a in part.answers]
            texts = [a.text for a in part.answers]
            valid = [r for r in part.judged or [] if r.a in peers and r.b in peers and r.a != r.b]
            for peer, score in score_answers(peers, part.sims, [peers.index(p) for p in part.winners],
                                             grouping.eligibility(part.question, texts), valid):
                totals.setdefault(peer, []).append(score)
        scores = tuple((peer, sum(got) // len(got)) for peer, got in sorted(totals.items()))
        first = job.parts[0]
        own = next((a.text for a in first.answers if a.peer == self.me), None)
        scores = self.behaviour.scores(scores, {a.peer: a.text for a in first.answers}, own)
        vector = self._sign(ScoreVector(scorer=self.me, height=job.height, query_id=job.value.query_id(),
                                        scores=scores))
        self.scores.add_vector(vector, self.core.height)
        out.append(Send(vector))

    def _keep_scoring(self, request: int, job: _ScoringJob) -> None:
        self._scoring[request] = job
        while len(self._scoring) > MAX_SCORING_JOBS:  # a host that never answers must not grow this
            del self._scoring[min(self._scoring)]

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

    # --- catch-up -------------------------------------------------------------------------
    def _catch_up(self, inp: Certified | Committed, out: list[Effect]) -> None:
        height = self.core.height
        if inp.height < height:
            return
        if inp.height > height:
            if inp.height <= height + MAX_CATCHUP_AHEAD and (isinstance(inp, Committed) or self._credible(inp)):
                bucket = self._catchup.setdefault(inp.height, {})
                if len(bucket) < MAX_CATCHUP_PER_HEIGHT:
                    bucket.setdefault(inp.value.value_id(), inp)
            return
        if isinstance(inp, Certified):
            reason = self._certify(inp)
            if reason is not None:
                self._count("uncertified-catchup")
                for vote in inp.precommits:  # the core catches a signer that also precommitted the real value
                    if vote.message.height == height and vote.signer in self.validators:
                        self._step(VoteInput(vote), out)
                return
        self._decided(inp.height, inp.round, inp.value, inp.precommits, out)
        self._step(self._next_height(), out)

    def _credible(self, c: Certified) -> bool:
        """A decided later height worth keeping: its signers hold more than 1/3 of the current set."""
        vs = self.validators
        return vs.has_one_third(vs.weight_of_set(
            v.signer for v in c.precommits if v.message.type == "precommit" and v.message.height == c.height
            and v.message.chain_id == self.config.chain_id))

    def _certify(self, c: Certified) -> str | None:
        """Why a decided height from another peer is not the one this peer's own chain admits, or ``None``."""
        vs = self.validators
        vid = c.value.value_id()
        voters = {v.signer for v in c.precommits
                  if (v.message.chain_id, v.message.type, v.message.height, v.message.round, v.message.value_id)
                  == (self.config.chain_id, "precommit", c.height, c.round, vid)}
        if not vs.has_quorum(vs.weight_of_set(voters)):
            return "the precommits carry no quorum of this peer's set"
        if any(self.pool.is_decided(q) for q in c.value.query_ids()):
            return "a query was decided at an earlier height"
        return self.chain.check_extras(c.value, c.height, self.verified) or grouping.validate_value(
            c.value, validators=vs, local_sims=None, threshold=self.config.threshold,
            tolerance=self.config.tolerance, cache=self.verified, chain_id=self.config.chain_id,
            verdict_rule=self.chain.verdict_rule)

    # --- helpers ------------------------------------------------------------------------------
    def _sign(self, message: Any) -> Signed[Any]:
        signed: Signed[Message] = sign(message, self.key)
        self.verified.add(message.KIND, signed.envelope, message)
        return signed

    def _request_id(self) -> int:
        self._next_request += 1
        return self._next_request


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
