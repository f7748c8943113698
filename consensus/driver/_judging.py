"""Judging split queries (ADR 0022, genesis ``verdict_rule = "veto"``), the driver's part in the answer grace window.

Once this peer answered a pending query and others did too, an
:class:`~consensus.driver.Embed` of its answers; if they split, a
:class:`~consensus.driver.Rate` of the answers of another meaning than its
own, signed as a :class:`~consensus.messages.Verdict` and sent (an
abstaining one without a judge). As proposer, a contested query waits for
every answerer's verdict until its grace period is over, then for all but
at most 1/3 of the weight (the omission rule validators apply). It does
not wait for answerers that are *silent* (:data:`SILENT_AFTER`): when every
missing judge is silent, the omission rule holds and no rejection is
pending, it is proposed at once (a proposer's heuristic; validity is
unchanged).

Bounds: one pass in flight per pending query (the query's
:class:`_Judging`, dropped with it); requests in flight ``max_pending``;
one silence count per validator (entries of peers that leave the set are
dropped when a height is entered).
"""

from __future__ import annotations

from dataclasses import dataclass

from consensus import grouping
from consensus.driver._base import DriverBase
from consensus.driver._io import Effect, Embed, GraceTimer, Rate, Rated, Schedule, Send
from consensus.driver._pool import PendingQuery
from consensus.messages import Answer, Outcome, Signed, Value, Verdict, answers_digest, open_envelope
from consensus.verdicts import missing_judges_ok, rejection_pending, verdict_matrix
from multillmn.identity import PeerId

__all__ = ["SILENT_AFTER", "JudgingMixin"]

SILENT_AFTER = 3
"""Consecutive decided contested outcomes that carried no verdict from one of their answerers after which
the proposer stops waiting for that answerer's verdicts (it is *silent*) until one of its verdicts arrives.

3, not 1: an honest judge misses a decision only if it sent no verdict in time, and with the grace wait it
rarely does; one lost verdict (a restart, a dropped message, one slow pass) must not cost its voice. Not
more: each contested query before a never-judging answerer is found silent pays the grace period (and
half a grace period more while a rejection is pending), so 3 is what it costs per such peer. A judge
found silent by mistake is waited for again as soon as any of its verdicts arrives (its verdicts still
arrive after the proposals that did not wait for them), so it is silent at most until its next verdict.
"""


@dataclass
class _Judging:
    """Judging one pending query (ADR 0022): the answers of the pass in flight (or of the last one)."""

    seen: int = 0  # answers the last pass considered
    request: int | None = None  # its Embed or Rate in flight
    answers: tuple[Signed[Answer], ...] = ()  # sorted by signer
    rated: tuple[int, ...] = ()  # indices into ``answers`` sent to be rated


class JudgingMixin(DriverBase):
    """The :class:`~consensus.driver.Driver`'s judging of split queries (see the module docstring)."""

    _judging: dict[bytes, _Judging]  # pending queries this peer judges (ADR 0022)
    _judge_requests: dict[int, bytes]  # Embed / Rate requests of judging, by request id
    _silence: dict[PeerId, int]  # validator -> consecutive decided contested outcomes without its verdict

    def _heard_judge(self, judge: PeerId) -> None:
        """A verdict from ``judge`` (a validator) arrived, on any query: wait for its verdicts again."""
        if judge in self._silence:
            self._silence[judge] = 0

    def _note_silence(self, value: Value) -> None:
        """A decided value (under the veto): per contested outcome, each answerer (a validator) whose verdict
        it carries is heard, each other one's silence count grows; uncontested outcomes change nothing."""
        if self.chain.verdict_rule is None:
            return
        vs, keys = self.validators, self.validators.public_key_of
        for outcome in value.outcomes():
            peers = [open_envelope(Answer, e, keys, self.verified).signer for e in outcome.answers]
            if not self._contested([vs.weight_of(p) for p in peers], outcome.sims):
                continue
            judges = {open_envelope(Verdict, v, keys, self.verified).signer for v in outcome.verdicts}
            for p in peers:
                if p in vs:
                    self._silence[p] = 0 if p in judges else self._silence.get(p, 0) + 1

    def _forget_former_judges(self) -> None:
        """Keep silence counts of the current validators only (a height was entered)."""
        self._silence = {p: n for p, n in self._silence.items() if p in self.validators}

    def silent_judges(self) -> list[PeerId]:
        """The validators this peer, as proposer, does not wait for (:data:`SILENT_AFTER`), in id order."""
        return sorted(p for p in self._silence if self._silent(p))

    def _silent(self, peer: PeerId) -> bool:
        return self._silence.get(peer, 0) >= SILENT_AFTER

    def _contested(self, weights: list[int], sims: tuple[int, ...]) -> bool:
        """No group of answers holds more than 2/3 of the answerers' weight: verdicts decide it (ADR 0022)."""
        heaviest = max(g.weight for g in grouping.group_answers(weights, sims, self.config.threshold))
        return 3 * heaviest <= 2 * sum(weights)

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
        once those missing weigh at most 1/3 (the omission rule validators apply) and none of them could
        still reject a contender; half a grace period later, on the omission rule alone. Before the grace
        period ends, on the same two conditions if every answerer not heard is silent (:data:`SILENT_AFTER`)."""
        vs, keys = self.validators, self.validators.public_key_of
        peers = [open_envelope(Answer, e, keys, self.verified).signer for e in outcome.answers]
        carried = [open_envelope(Verdict, v, keys, self.verified).message for v in outcome.verdicts]
        weights = [vs.weight_of(p) for p in peers]
        if not self._contested(weights, outcome.sims) or len(carried) == len(peers):
            return True
        assert entry.quorum_at is not None
        grace_over = int(entry.quorum_at) + self.config.answer_grace_ms
        matrix, judges = verdict_matrix(carried, peers)
        all_silent = all(self._silent(p) for k, p in enumerate(peers) if k not in judges)
        if self.now < grace_over and not all_silent:
            return False
        if not missing_judges_ok(weights, judges, vs.total):
            return False
        rule = self.chain.verdict_rule
        assert rule is not None
        pending = rejection_pending(weights, outcome.sims, self.config.threshold, matrix, rule.margin, vs.total)
        if self.now < grace_over:
            return not pending  # every missing judge is silent: no grace wait, unless a rejection could come
        return self.now >= grace_over + self.config.answer_grace_ms // 2 or not pending

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
