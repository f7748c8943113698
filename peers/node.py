"""The peer runner: the trio edge around the pure consensus core.

Tasks, all in one nursery (the transport runs beside it, started by the
daemon before the model loads so links are up by the time the node is):

* ``_receive_loop``: decodes and verifies every inbound frame, rejects bad
  ones (counted, logged), and routes queries, answers, proposals and votes;
* ``_answer_loop``: answers queries one at a time with the peer's model, in a
  worker thread, then signs and broadcasts the answer;
* ``_consensus_loop``: the single owner of the :class:`~consensus.Core`. It
  reads every core input from one channel and carries out the core's outputs:
  sign and broadcast votes and proposals (feeding them back as inputs), run
  timers, build values on request, and record decisions as certificates.

A height starts (``Start``) once some pending query has answers carrying more
than 2/3 of the weight, so an idle network does not spin through rounds.

With a :class:`~peers.ledger.LedgerService`, decisions' certificates and
equivocation evidence become ledger transactions, ``dag_*`` messages go to
the ledger, and a certificate the ledger orders for a height the core has
not reached fast-forwards the core (``Commit``): that is how a restarted or
partitioned peer catches up.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from consensus import grouping
from consensus.evidence import from_equivocation
from consensus.messages import (
    MAX_ANSWER_CHARS,
    Answer,
    Envelope,
    EvidencePair,
    Proposal,
    Query,
    Signed,
    Value,
    VerifiedCache,
    Vote,
    open_envelope,
    query_id_of,
    sign,
)
from consensus.validators import ValidatorSet
from consensus.scores import ScoreVector
from consensus.state_machine import (
    BroadcastProposal,
    BroadcastVote,
    Commit,
    Core,
    Decide,
    Equivocation,
    ProposalInput,
    ProposeValue,
    RequestValue,
    ScheduleTimeout,
    Start,
    TimeoutInput,
    Timeouts,
    VoteInput,
)
from dag.messages import DagEvents, DagSync, DagWant
from multillmn.certificate import build_certificate, certificate_precommits
from multillmn.config import PeerConfig
from multillmn.genesis import Genesis
from multillmn.identity import KeyPair
from multillmn.logs import fields
from peers.byzantine import PeerCrashed, make_behaviour
from peers.certificates import CertificateStore
from peers.engine import AnswerEngine, Reply
from peers.pool import PendingQuery, PoolFull, QueryPool
from peers.outbox import Outbox
from peers.scoring import Scoring
from peers.transport import Transport
from peers.wal import ConsensusWal, own_signer
from peers.wire import RejectStats, decode_message, encode_message

if TYPE_CHECKING:
    from peers.ledger import LedgerService

__all__ = ["Node", "Decision", "QueryFailed"]

log = logging.getLogger("multillmn.node")


class QueryFailed(Exception):
    """A query could not be decided (not enough answers in time, or the pool is full)."""


@dataclass
class Decision:
    """A decided query as the API reports it."""

    height: int
    round: int
    value: Value
    certificate: dict[str, Any]
    answers: list[Answer]
    generation_ms: int
    consensus_ms: int
    protocol_ms: int = 0  # from the first proposal of the height at this peer to the decision
    validators: ValidatorSet | None = None  # the set in force at ``height``


@dataclass
class _Waiter:
    event: trio.Event = field(default_factory=trio.Event)
    decision: Decision | None = None
    error: str | None = None


class Node:
    """One peer: transport, answer engine and consensus core wired together."""

    def __init__(
        self, cfg: PeerConfig, key: KeyPair, genesis: Genesis, engine: AnswerEngine, transport: Transport,
        ledger: LedgerService | None = None, wal: ConsensusWal | None = None,
    ) -> None:
        self.cfg = cfg
        self.key = key
        self.genesis = genesis
        self.engine = engine
        self.transport = transport
        timeouts = Timeouts(
            propose_ms=cfg.timeout_propose_ms, prevote_ms=cfg.timeout_prevote_ms,
            precommit_ms=cfg.timeout_precommit_ms, delta_ms=cfg.timeout_delta_ms,
        )
        self._verified = VerifiedCache()
        self.core = Core(genesis.chain(self._verified), key.peer_id, timeouts=timeouts)
        self.pool = QueryPool(self.validators)
        self.rejects = RejectStats()
        self.behaviour = make_behaviour(key.peer_id, cfg)
        self.scoring = Scoring(key, engine, self.behaviour, threshold=genesis.params.similarity_threshold,
                               judge_band=cfg.judge_band, verified=self._verified)
        self.certificates = CertificateStore(genesis, ledger)
        self._waiters: dict[bytes, _Waiter] = {}
        self._inputs_tx, self._inputs_rx = trio.open_memory_channel[Any](math.inf)
        self._answers_tx, self._answers_rx = trio.open_memory_channel[Signed[Query]](256)
        self._pool_changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._future_proposals: dict[int, list[Signed[Proposal]]] = {}
        self._ledger_values: dict[int, Value] = {}
        self._proposals: dict[tuple[int, int], Signed[Proposal]] = {}  # first seen per (height, round)
        self._exposed: set[tuple[int, int, str]] = set()
        self._proposal_at: dict[int, float] = {}  # when the first proposal of a height reached this peer
        self._warming: set[bytes] = set()  # queries whose answers are being embedded ahead of a proposal
        self.ledger = ledger
        if ledger is not None:
            ledger.rejects = self.rejects
            ledger.on_certificate = self._on_ledger_certificate
            ledger.on_evidence = self.scoring.add_evidence
            ledger.on_refused = self._on_refused_certificate
            self._replay_ledger(ledger)
        self.wal = wal
        self.outbox = Outbox(key, transport, self.behaviour, wal, lambda: self.validators,
                             genesis.params.similarity_threshold, self._verified)
        self._replayed: list[Any] = []  # outputs of the WAL replay to carry out once running
        if wal is not None:
            self._replay_wal(wal)

    def _replay_ledger(self, ledger: LedgerService) -> None:
        """Restarted: fold every certified height into the core, so its weights match everyone's."""
        from peers.ledger import value_of_certificate

        for height in range(1, ledger.highest_height() + 1):
            cert = ledger.certificate(height)
            value = None if cert is None else value_of_certificate(cert)
            if value is None:
                log.warning("ledger lacks a certificate; resuming before it", extra=fields(height=height))
                break
            self.pool.mark_decided(value.query_id())
            self.core.step(Commit(height, value))
        self.pool.set_validators(self.validators, 0.0)

    def _replay_wal(self, wal: ConsensusWal) -> None:
        """Restarted mid-height: step the core through its logged inputs again (same locks, same votes)."""
        height = self.core.height
        records = [inp for h, inp in wal.records(self.genesis.validators.public_key_of) if h == height]
        for inp in records:
            if own_signer(inp, self.key.peer_id):
                assert isinstance(inp, (VoteInput, ProposalInput))
                self.outbox.remember(height, encode_message(inp.signed))
            for output in self.behaviour.outputs(self.core.step(inp)):
                if not isinstance(output, (BroadcastVote, BroadcastProposal)):  # those were sent before the crash
                    self._replayed.append(output)
        if records:
            log.info("replayed the consensus WAL", extra=fields(height=height, inputs=len(records),
                                                                  round=self.core.round))

    def _log(self, inp: Any) -> None:
        if self.wal is not None and not isinstance(inp, (_PoolChanged, Commit)):
            self.wal.append(self.core.height, inp)

    @property
    def validators(self) -> ValidatorSet:
        """The validator set in force at the core's height."""
        return self.core.validators

    # -- public -------------------------------------------------------------

    @property
    def height(self) -> int:
        return self.core.height

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the node's tasks; the caller runs the transport (it starts before the model loads)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._receive_loop)
            nursery.start_soon(self._answer_loop)
            nursery.start_soon(self._consensus_loop)
            nursery.start_soon(self._expire_loop)
            nursery.start_soon(self._regossip_loop)
            for output in self._replayed:
                self._execute(output)
            self._replayed = []
            if self.ledger is not None:
                nursery.start_soon(self.ledger.run)
            task_status.started()

    async def submit(self, question: str, max_tokens: int | None = None) -> Decision:
        """Sign a client's question, spread it, answer it and wait for the decision."""
        query = sign(
            Query(entry=self.key.peer_id, question=question, nonce=os.urandom(16),
                  max_tokens=max_tokens or self.cfg.max_new_tokens, created_ms=int(time.time() * 1000)),
            self.key,
        )
        try:
            entry = self.pool.add_query(query, trio.current_time())
        except PoolFull as exc:
            raise QueryFailed(f"too many pending queries ({exc}); try again later") from None
        assert entry is not None  # a fresh nonce makes the query new
        self._verified.add(Query.KIND, query.envelope)
        try:
            self._answers_tx.send_nowait(query)
        except trio.WouldBlock:
            self.pool.discard(entry.query_id)
            raise QueryFailed("this peer has too many questions waiting for its model; try again later") from None
        waiter = self._waiters[entry.query_id] = _Waiter()
        self.transport.broadcast_nowait(encode_message(query))
        try:
            with trio.fail_after(self.cfg.query_timeout_s):
                await waiter.event.wait()
        except trio.TooSlowError:
            raise QueryFailed(f"no decision within {self.cfg.query_timeout_s:g} s") from None
        finally:
            self._waiters.pop(entry.query_id, None)
        if waiter.error is not None:
            raise QueryFailed(waiter.error)
        assert waiter.decision is not None
        return waiter.decision

    def certificate(self, height: int) -> dict[str, Any] | None:
        """The certificate decided at ``height`` (this run's decision, else the ledger's), with a trust path."""
        return self.certificates.serve(height)

    def status(self) -> dict[str, Any]:
        return {
            "peer_id": self.key.peer_id,
            "moniker": self.cfg.moniker,
            "model": self.engine.model_name,
            "chain_id": self.genesis.chain_id,
            "height": self.core.height,
            "decided_heights": self.certificates.decided,
            "pending_queries": len(self.pool),
            "connected_peers": self.transport.connected_peers(),
            "validators": [
                {"peer_id": v.peer_id, "moniker": v.moniker, "weight": v.weight}
                for v in self.validators.validators
            ],
            "total_weight": self.validators.total,
            "weights_digest": (self.core.chain.weights_digest() or b"").hex(),
            "rejected_messages": self.rejects.snapshot(),
            "ledger": None if self.ledger is None else {
                k: v for k, v in self.ledger.statistics().items() if k != "certified_heights"},
        }

    # -- inbound ------------------------------------------------------------

    async def _receive_loop(self) -> None:
        async for peer, payload in self.transport.inbound:
            try:
                signed = decode_message(payload, self.validators.public_key_of, cache=self._verified)
            except Exception as exc:  # MessageError; anything else is also the sender's fault
                self.rejects.record_exception(exc, peer)
                continue
            message = signed.message
            now = trio.current_time()
            if isinstance(message, Query):
                try:
                    if self.pool.add_query(signed, now) is not None:
                        self._answers_tx.send_nowait(signed)
                        self._notify_pool()
                except (PoolFull, trio.WouldBlock):
                    log.warning("query dropped: pool full", extra=fields(peer=peer))
            elif isinstance(message, Answer):
                if self.pool.add_answer(signed, now):
                    self._notify_pool()
                    self._warm(message.query_id)
            elif isinstance(message, Proposal):
                assert self._nursery is not None
                self._nursery.start_soon(self._check_proposal, signed)
            elif isinstance(message, Vote):
                self._inputs_tx.send_nowait(VoteInput(signed))
                self._expose_conflict(signed)
            elif isinstance(message, ScoreVector):
                self.scoring.add_vector(signed, self.core.height)
            elif isinstance(message, (DagSync, DagEvents, DagWant)) and self.ledger is not None:
                self.ledger.handle(peer, signed)

    def _expose_conflict(self, vote: Signed[Vote]) -> None:
        """A vote for another value than the proposal we hold for its round: show the voter our proposal.

        A proposer that sends different values to different peers is caught
        this way: the voter then holds both signed proposals (evidence),
        while an honest network relays no proposal at all.
        """
        v = vote.message
        held = self._proposals.get((v.height, v.round))
        if v.value_id is None or held is None or held.message.value.value_id() == v.value_id:
            return
        if (v.height, v.round, v.voter) not in self._exposed:
            self._exposed.add((v.height, v.round, v.voter))
            self.transport.send_nowait(v.voter, encode_message(held))

    async def _check_proposal(self, signed: Signed[Proposal]) -> None:
        """Judge a proposal's value, then hand it to the core.

        Signatures and the grouping rule are checked here, in the trio thread
        (which owns the verified-signature cache); only the embeddings run in a
        worker thread.
        """
        height = signed.message.height
        self._proposals.setdefault((height, signed.message.round), signed)
        self._proposal_at.setdefault(height, trio.current_time())
        if height > self.core.height:  # the chain cannot judge its extras yet: judge it at that height
            if height <= self.core.height + self.core.future_heights:
                self._future_proposals.setdefault(height, []).append(signed)
            return
        if height < self.core.height:
            return
        value = signed.message.value
        reason = self._precheck(value) or self.core.chain.check_extras(value, height, self._verified)
        if reason is None:
            keys = self.validators.public_key_of
            question = open_envelope(Query, value.query, keys, self._verified).message.question
            texts = [open_envelope(Answer, e, keys, self._verified).message.text for e in value.answers]
            local_sims = await trio.to_thread.run_sync(self.engine.similarities, question, texts)
            self.scoring.remember_sims(value.value_id(), local_sims)
            params = self.genesis.params
            reason = grouping.validate_value(
                value, validators=self.validators, local_sims=local_sims,
                threshold=params.similarity_threshold, tolerance=params.similarity_tolerance,
                cache=self._verified,
            )
        if reason is not None:
            log.warning("invalid proposal", extra=fields(
                height=signed.message.height, round=signed.message.round,
                proposer=signed.signer, reason=reason))
        self._inputs_tx.send_nowait(ProposalInput(signed, valid=reason is None))

    def _precheck(self, value: Value) -> str | None:
        """Reasons to reject a value before computing any embedding."""
        if self.pool.is_decided(value.query_id()):
            return "the query was decided at an earlier height"
        try:
            open_envelope(Query, value.query, self.validators.public_key_of, self._verified)
            for envelope in value.answers:
                open_envelope(Answer, envelope, self.validators.public_key_of, self._verified)
        except Exception as exc:
            return f"query or answer does not open: {exc}"
        return None

    # -- answering ------------------------------------------------------------

    async def _answer_loop(self) -> None:
        async for query in self._answers_rx:
            entry = self.pool.get(query_id := query_id_of(query.envelope))
            if entry is None:
                continue  # decided or expired meanwhile
            try:
                reply = await self._reply(query, entry)
            except Exception as exc:  # e.g. a sharded model whose workers are gone: skip this query, stay up
                log.warning("could not answer", extra=fields(query=query_id.hex()[:12], error=str(exc)))
                continue
            answer = sign(
                Answer(query_id=query_id, peer=self.key.peer_id, model=self.engine.model_name,
                       text=reply.text[:MAX_ANSWER_CHARS], gen_ms=int(reply.seconds * 1000)),
                self.key,
            )
            log.info("answered", extra=fields(query=query_id.hex()[:12], text=answer.message.text,
                                                gen_ms=answer.message.gen_ms))
            self._verified.add(Answer.KIND, answer.envelope)
            self.outbox.send_answer(query_id, answer)
            if self.pool.add_answer(answer, trio.current_time()):
                self._notify_pool()
                self._warm(query_id)

    async def _reply(self, query: Signed[Query], entry: PendingQuery) -> Reply:
        """This peer's reply: its model's, unless a fault-injection behaviour says otherwise."""
        question = query.message.question
        max_tokens = min(query.message.max_tokens, self.cfg.max_new_tokens)

        async def honest() -> Reply:
            return await trio.to_thread.run_sync(self.engine.answer, question, max_tokens, abandon_on_cancel=True)

        async def others() -> list[str]:
            """The others' answers once they carry half the weight or all are in (bounded wait)."""
            vs = self.validators
            with trio.move_on_after(self.cfg.answer_wait_ms / 4000):
                while not (2 * vs.weight_of_set(entry.answers) >= vs.total
                           or len(entry.answers) >= len(vs) - 1):
                    await self._pool_changed.wait()
            return [a.message.text for p, a in entry.answers.items() if p != self.key.peer_id]

        return await self.behaviour.answer(question, honest, others)

    def _warm(self, query_id: bytes) -> None:
        if query_id not in self._warming:
            assert self._nursery is not None
            self._warming.add(query_id)
            self._nursery.start_soon(self._warm_similarities, query_id)

    async def _warm_similarities(self, query_id: bytes) -> None:
        """Embed a pending query's answers as they arrive, so judging its proposal later is cheap.

        The engine caches embeddings by text; this takes them off the
        critical path between the proposal and this peer's prevote.
        """
        try:
            done = 0
            while (entry := self.pool.get(query_id)) is not None and len(entry.answers) > done:
                texts = [a.message.text for a in entry.answers.values()]
                done = len(texts)
                await trio.to_thread.run_sync(self.engine.similarities, entry.query.message.question, texts)
        finally:
            self._warming.discard(query_id)

    def _notify_pool(self) -> None:
        self._pool_changed.set()
        self._pool_changed = trio.Event()
        self._inputs_tx.send_nowait(_PoolChanged())

    async def _expire_loop(self) -> None:
        """Fail queries that never gathered an answer quorum within ``answer_wait_ms``."""
        while True:
            await trio.sleep(1.0)
            for entry in self.pool.expired(trio.current_time(), self.cfg.answer_wait_ms / 1000):
                weight = self.pool.answer_weight(entry)
                waiter = self._waiters.get(entry.query_id)
                if waiter is not None:
                    waiter.error = (f"only {weight} of {self.validators.total} weight answered within "
                                    f"{self.cfg.answer_wait_ms} ms; more than 2/3 is needed")
                    waiter.event.set()

    # -- consensus ------------------------------------------------------------

    async def _consensus_loop(self) -> None:
        async for item in self._inputs_rx:
            height = self.core.height
            if not isinstance(item, _PoolChanged):
                if not own_signer(item, self.key.peer_id):  # our own were logged before they were sent
                    self._log(item)
                for output in self.behaviour.outputs(self.core.step(item)):
                    self._execute(output)
            if self.core.height != height:
                self._entered_height()
            self._maybe_start()

    def _entered_height(self) -> None:
        """The core moved on: new weights for the pool, judge deferred proposals, feed ordered catch-up."""
        assert self._nursery is not None
        height = self.core.height
        self.behaviour.height = height
        crash_at = self.behaviour.crashes_at()
        if crash_at is not None and height >= crash_at:
            raise PeerCrashed(f"fault injection: crashing at height {height}")
        self.pool.set_validators(self.validators, trio.current_time())
        for h in [h for h in self._future_proposals if h < height]:
            del self._future_proposals[h]
        for signed in self._future_proposals.pop(height, []):
            self._nursery.start_soon(self._check_proposal, signed)
        for h in [h for h in self._ledger_values if h < height]:
            del self._ledger_values[h]
        self._proposals = {k: p for k, p in self._proposals.items() if k[0] >= height - 1}
        self._proposal_at = {h: t for h, t in self._proposal_at.items() if h >= height}
        self.outbox.entered(height)
        self._exposed = {k for k in self._exposed if k[0] >= height - 1}
        value = self._ledger_values.pop(height, None)
        if value is not None:
            self._inputs_tx.send_nowait(Commit(height, value))
        self.scoring.entered(height)

    def _maybe_start(self) -> None:
        if self.core.started or self.pool.next_ready() is None:
            return
        self._log(Start())
        for output in self.behaviour.outputs(self.core.step(Start())):
            self._execute(output)

    def _execute(self, output: Any) -> None:
        assert self._nursery is not None
        if isinstance(output, BroadcastVote):
            signed_vote = sign(output.vote, self.key)
            self._verified.add(Vote.KIND, signed_vote.envelope)
            own_vote = VoteInput(signed_vote)
            self.outbox.send_own(self._nursery, signed_vote, own_vote)  # logged, then sent ...
            self._inputs_tx.send_nowait(own_vote)  # ... then counted like anyone's
        elif isinstance(output, BroadcastProposal):
            signed_prop = sign(output.proposal, self.key)
            own_proposal = ProposalInput(signed_prop, valid=True)
            self.outbox.send_own(self._nursery, signed_prop, own_proposal)
            self._inputs_tx.send_nowait(own_proposal)
        elif isinstance(output, ScheduleTimeout):
            self._nursery.start_soon(self._timer, output)
        elif isinstance(output, RequestValue):
            self._nursery.start_soon(self._propose_when_ready, output.height, output.round)
        elif isinstance(output, Decide):
            self._on_decide(output)
        elif isinstance(output, Equivocation):
            log.warning("equivocation", extra=fields(evidence=repr(output)))
            self.scoring.add_evidence(from_equivocation(output))
            if self.ledger is not None:
                self.ledger.submit_equivocation(output)

    async def _regossip_loop(self) -> None:
        """If the height has not moved for a while, re-send our answers to pending queries and our own
        votes and proposal of the height.

        Links are TCP, but a peer that reconnects (or a lossy link shaper)
        loses what was queued; without this, a vote lost at the wrong moment
        could stall a height until the ledger catches it up.
        """
        interval = max(1.0, 2 * self.cfg.timeout_propose_ms / 1000)
        last: tuple[int, int, str] | None = None
        while True:
            await trio.sleep(interval)
            now = (self.core.height, self.core.round, self.core.step_name)
            if now == last:
                count = self.outbox.resend(self.core.height, self.core.started,
                                           lambda query_id: self.pool.get(query_id) is not None)
                if count:
                    log.info("re-sent own messages", extra=fields(height=now[0], round=now[1], count=count))
            last = now

    async def _timer(self, timeout: ScheduleTimeout) -> None:
        await trio.sleep(timeout.duration_ms / 1000)
        self._inputs_tx.send_nowait(TimeoutInput(timeout.height, timeout.round, timeout.step))

    async def _propose_when_ready(self, height: int, round_: int) -> None:
        """Build a value from the oldest query with an answer quorum and hand it to the core."""
        while (entry := self.pool.next_ready()) is None:
            if self.core.height != height:
                return
            await self._pool_changed.wait()
        # Give the remaining peers a moment so every answer is weighed, not just the fastest 2/3.
        assert entry.quorum_at is not None
        with trio.move_on_at(entry.quorum_at + self.cfg.answer_grace_ms / 1000):
            while len(entry.answers) < len(self.validators):
                await self._pool_changed.wait()
        if self.core.height != height:
            return
        vs = self.validators
        scores, evidence = self.scoring.includable(self.core.chain, height)
        next_hash = self.core.chain.validators_at(height + 1).set_hash()
        value, sims = await trio.to_thread.run_sync(self._build_value, entry, vs, next_hash, scores, evidence)
        self.scoring.remember_sims(value.value_id(), sims)
        self._proposal_at.setdefault(height, trio.current_time())
        self._inputs_tx.send_nowait(ProposeValue(height, round_, value))

    def _build_value(self, entry: PendingQuery, vs: ValidatorSet, next_hash: bytes, scores: tuple[Envelope, ...],
                     evidence: tuple[EvidencePair, ...]) -> tuple[Value, list[int]]:
        """The value and this peer's similarities in its answer order (answers sorted by peer id)."""
        answers = sorted(entry.answers.values(), key=lambda a: a.signer)
        sims = self.engine.similarities(entry.query.message.question, [a.message.text for a in answers])
        value = grouping.build_value(
            entry.query.envelope, answers, sims, [vs.weight_of(a.signer) for a in answers],
            self.genesis.params.similarity_threshold,
            validators_hash=vs.set_hash(), next_validators_hash=next_hash, scores=scores, evidence=evidence,
        )
        return value, list(sims)

    def _on_decide(self, decision: Decide) -> None:
        now = trio.current_time()
        value = decision.value
        cert = build_certificate(self.genesis, decision.height, decision.round, value, decision.precommits,
                                 self._verified, validators=decision.validators)
        self.certificates.add(decision.height, cert)
        if self.ledger is not None:
            self.ledger.submit_certificate(decision.height, cert)
        entry = self.pool.mark_decided(value.query_id())
        answers = [open_envelope(Answer, e, self.validators.public_key_of, self._verified).message
                   for e in value.answers]
        quorum_at = entry.quorum_at if entry and entry.quorum_at is not None else now
        arrived = entry.arrived if entry else now
        record = Decision(
            height=decision.height, round=decision.round, value=value,
            certificate=self.certificates.with_path(cert), answers=answers,
            generation_ms=int((quorum_at - arrived) * 1000), consensus_ms=int((now - quorum_at) * 1000),
            protocol_ms=int((now - self._proposal_at.pop(decision.height, now)) * 1000),
            validators=decision.validators,
        )
        log.info("decided", extra=fields(height=decision.height, round=decision.round, answer=value.answer,
                                           consensus_ms=record.consensus_ms))
        waiter = self._waiters.get(value.query_id())
        if waiter is not None:
            waiter.decision = record
            waiter.event.set()
        self.scoring.committed(value)
        if self.core.chain.adaptive and decision.validators is not None:
            assert self._nursery is not None
            self._nursery.start_soon(self._score, decision.height, value, decision.validators)

    async def _score(self, height: int, value: Value, vs: ValidatorSet) -> None:
        vector = await self.scoring.score(height, value, vs)
        self.transport.broadcast_nowait(encode_message(vector))

    def _on_refused_certificate(self, height: int, cert: dict[str, Any]) -> None:
        """The ledger refused a certificate: show its validly signed precommits of this or a later height to
        the core, which reports an equivocation if a signer also precommits another value in that round."""
        if height < self.core.height:
            return
        for vote in certificate_precommits(cert, self.validators.public_key_of)[:len(self.validators)]:
            try:
                self._inputs_tx.send_nowait(VoteInput(vote))
            except trio.WouldBlock:
                return

    def _on_ledger_certificate(self, height: int, cert: dict[str, Any]) -> None:
        """The ledger ordered a verified certificate: catch the core up, height by height, if it is behind."""
        if height < self.core.height:
            return
        from peers.ledger import value_of_certificate

        value = value_of_certificate(cert)
        if value is None:
            return
        self.pool.mark_decided(value.query_id())
        log.info("catching up from the ledger", extra=fields(height=height, core_height=self.core.height))
        if height == self.core.height:
            self._inputs_tx.send_nowait(Commit(height, value))
        else:
            self._ledger_values[height] = value  # fed once the core reaches it (_entered_height)


@dataclass(frozen=True)
class _PoolChanged:
    """Internal input: the pool changed, so a height may be ready to start."""
