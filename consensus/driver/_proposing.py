"""Proposing and checking values: the driver's proposer side and its check of others' proposals.

As proposer (the core asked for a value), once the oldest ready query's
grace period is over it computes the similarities of that query's answers
and of the other ready queries whose answers are all in or whose grace is
over too (ADR 0020), and proposes the value the grouping rule builds from
them; a contested query waits for its judges
(:mod:`consensus.driver._judging`). A proposal from another peer is
checked: not decided before, the extras against its own chain, the
grouping rule on its own similarities (an :class:`~consensus.driver.Embed`
round trip); proposals for later heights wait until the chain can judge
them.

Bounds: proposals checked per (height, round): 2 values, at most
:data:`MAX_CHECKING` in flight; proposals for later heights: up to
``_FUTURE_HEIGHTS`` ahead, :data:`MAX_FUTURE_PER_SIGNER` per signer and
height; a value's queries and answers: :data:`VALUE_BUDGET_BYTES`.
"""

from __future__ import annotations

from consensus import grouping
from consensus.driver._base import DriverBase, _Building
from consensus.driver._io import Effect, Embed, GraceTimer, Schedule
from consensus.driver._pool import PendingQuery, PoolFull
from consensus.messages import MAX_QUERIES_PER_VALUE, Answer, MessageError, Proposal, Query, Signed, Value, \
    open_envelope
from consensus.state_machine import ProposalInput, ProposeValue
from multillmn.identity import PeerId

__all__ = ["MAX_CHECKING", "MAX_FUTURE_PER_SIGNER", "VALUE_BUDGET_BYTES", "ProposingMixin"]

MAX_CHECKING = 16
"""Proposals whose similarities are being computed at once."""
MAX_FUTURE_PER_SIGNER = 4
"""Proposals kept per signer and later height, to be checked there."""
VALUE_BUDGET_BYTES = 1 << 20
"""Signed queries and answers a proposer puts into one value at most (a frame holds 2 MiB by default)."""
_FUTURE_HEIGHTS = 4
"""Proposals are kept for heights up to this far ahead of the core, to be checked there."""


class ProposingMixin(DriverBase):
    """The :class:`~consensus.driver.Driver`'s proposing and proposal checking (see the module docstring)."""

    _checking: dict[int, tuple[Signed[Proposal], tuple[tuple[str, ...], ...]]]  # Embed requests of checking
    _future: dict[int, dict[PeerId, list[Signed[Proposal]]]]  # later height -> signer -> its proposals
    deferred_proposals: int  # proposals for a later height, checked once the peer got there

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
