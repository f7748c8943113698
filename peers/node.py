"""The peer runner: a thin trio host of the pure :class:`~consensus.driver.Driver`.

Everything the protocol decides is the driver's (the same object the
simulator runs); this module only carries out its effects and feeds their
results back:

* inbound frames are decoded and verified by ``peers/wire.py`` (rejections
  counted, never raised) and handed to the driver, or ``dag_*`` ones to the
  ledger;
* ``Send`` goes out on the transport; ``Persist`` is appended to the WAL and
  fsynced before the next effect; ``Schedule`` is a sleeping task;
* ``Generate`` queues the question for the model (:mod:`peers.answering`:
  batches of up to ``[model] max_batch``, continuous for a real model);
  ``Embed``, ``Judge`` and ``Rate`` run in worker threads;
* ``Decided`` becomes a certificate (kept, posted to the ledger, and handed
  to the client waiting for that query).

Every driver call happens in the trio thread and no effect awaits before
the next input, so the driver is owned by one task at a time. The ledger's
ordered certificates reach the driver as ``Committed`` (how a restarted or
partitioned peer catches up), refused ones as ``Certified`` (so the core
can catch a signer who precommitted both).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from consensus.driver import (
    Announce,
    AskCatchUp,
    Certified,
    Committed,
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
    GenerationFailed,
    Generated,
    Judge,
    Judged,
    Persist,
    PoolFull,
    QueryExpired,
    QueryTimes,
    Rate,
    Rated,
    Received,
    Schedule,
    Send,
    SendRaw,
    InjectEvent,
    TimerFired,
)
from consensus.driver.behaviours import BehaviourParams, make_behaviour
from consensus.evidence import Evidence
from consensus.messages import Answer, Join, Leave, Outcome, Signed, VerifiedCache, open_envelope, sign
from consensus.state_machine import Timeouts
from consensus.validators import ValidatorSet
from dag import certificate_tx
from dag.messages import DagEvents, DagSync, DagWant
from multillmn.certificate import build_certificate, certificate_precommits, query_certificate
from multillmn.config import PeerConfig, parse_hostport
from multillmn.genesis import Genesis
from multillmn.identity import KeyPair
from multillmn.logs import fields
from multillmn import jsonsafe
from peers.attacks import poisoned_events_payload
from peers.catchup import BATCH, MAX_CERTIFICATE_BYTES, MIN_INTERVAL_S, CatchUpReply, CatchUpRequest, RateLimit, certificate_bytes
from peers.certificates import CertificateStore
from peers.answering import GENERATION_QUEUE, Answerer
from peers.engine import AnswerEngine
from peers.judge import judge_pairs, rate
from peers.ledger import value_of_certificate
from peers.metrics import NodeMetrics
from peers.transport import Transport
from peers.wal import ConsensusWal
from peers.wire import RejectStats, decode_message, encode_message

if TYPE_CHECKING:
    from peers.broadcast import BroadcastTransport
    from consensus.messages import Value
    from peers.ledger import LedgerService

__all__ = ["Decision", "GENERATION_QUEUE", "Node", "PeerCrashed", "QueryFailed"]

log = logging.getLogger("multillmn.node")


class QueryFailed(Exception):
    """A query could not be decided (not enough answers in time, or the pool is full)."""


class PeerCrashed(Exception):
    """Fault injection: the driver asked the process to die (exit status 3)."""


@dataclass
class Decision:
    """A decided query as the API reports it."""

    height: int
    round: int
    value: Value
    outcome: Outcome  # this query's part of the value
    certificate: dict[str, Any]  # this query's certificate (version 4: the outcome with its Merkle proof)
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
    """One peer: transport, answer engine, ledger and the driver wired together."""

    def __init__(
        self, cfg: PeerConfig, key: KeyPair, genesis: Genesis, engine: AnswerEngine, transport: Transport,
        ledger: LedgerService | None = None, wal: ConsensusWal | None = None,
    ) -> None:
        self.cfg = cfg
        self.key = key
        self.genesis = genesis
        self.engine = engine
        self.transport: Transport | BroadcastTransport = transport
        self.ledger = ledger
        self.wal = wal
        self.verified = VerifiedCache()
        behaviour = make_behaviour(cfg.behaviour, key.peer_id, BehaviourParams(
            slow_ms=cfg.slow_ms, crash_at_height=cfg.crash_at_height, from_height=cfg.behaviour_from_height,
            copy_wait_ms=cfg.answer_wait_ms // 4))
        config = DriverConfig(
            model=engine.model_name, chain_id=genesis.chain_id, threshold=genesis.params.similarity_threshold,
            tolerance=genesis.params.similarity_tolerance,
            timeouts=Timeouts(propose_ms=cfg.timeout_propose_ms, prevote_ms=cfg.timeout_prevote_ms,
                              precommit_ms=cfg.timeout_precommit_ms, delta_ms=cfg.timeout_delta_ms),
            answer_wait_ms=cfg.answer_wait_ms, answer_grace_ms=cfg.answer_grace_ms,
            max_new_tokens=cfg.max_new_tokens, judge=engine.judge is not None, judge_band=cfg.judge_band,
            tick_ms=max(1000, 2 * cfg.timeout_propose_ms), queries_per_height=cfg.queries_per_height)
        self.driver = Driver(key, genesis.chain(self.verified), config, behaviour=behaviour, verified=self.verified)
        self.rejects = RejectStats()
        self.metrics = NodeMetrics()  # GET /metrics: histograms fed here, the rest read when scraped
        self._tree: BroadcastTransport | None = None
        if cfg.broadcast == "tree":  # [p2p] broadcast: signed messages spread over trees (peers/broadcast)
            from peers.broadcast import tree_transport  # only a tree peer loads the broadcast layer

            self.transport = self._tree = tree_transport(transport, self._key_of, self.verified, self.rejects,
                                                         fanout=cfg.broadcast_fanout)
        self.certificates = CertificateStore(genesis, ledger)
        self._waiters: dict[bytes, _Waiter] = {}
        self.answerer = Answerer(engine, cfg.max_batch, self._arrived, self._handle, self._now, self.metrics,
                                 self._spawn, continuous=cfg.batching == "continuous")
        self._warming: set[bytes] = set()
        self._nursery: trio.Nursery | None = None
        self._later: list[Effect] = []  # effects of the start-up replays, carried out once running
        self._catchup_limit = RateLimit()
        self._catchup_asked: dict[str, tuple[int, float]] = {}  # peer -> (height asked, when); transport peers
        self._catchup_reasking: set[str] = set()  # peers a paced re-ask waits for
        self._leave_sent = False
        if ledger is not None:
            ledger.rejects = self.rejects
            ledger.on_certificate = self._on_ledger_certificate
            ledger.on_refused = self._on_refused_certificate
            ledger.on_evidence = self._on_ledger_evidence
            self._replay_ledger(ledger)
            self._ledger_epochs()
        if wal is not None:
            records = [inp for h, inp in wal.records(self.driver.chain.key_of) if h == self.driver.height]
            self._later += self.driver.replay(records, self._now())
            if records:
                log.info("replayed the consensus WAL", extra=fields(height=self.driver.height, inputs=len(records),
                                                                      round=self.driver.core.round))
        self._sync_peers()

    def _replay_ledger(self, ledger: LedgerService) -> None:
        """Restarted: fold every certified height into the driver's chain, so its weights match everyone's."""
        for height in range(1, ledger.highest_height() + 1):
            value = value_of_certificate(ledger.certificate(height))
            if value is None:
                log.warning("ledger lacks a certificate; resuming before it", extra=fields(height=height))
                break
            self.driver.restore(height, value)

    def _ledger_epochs(self) -> None:
        """Tell the ledger the next epoch's set once the chain knows it (at ``b - delay``), so the ledger opens
        that segment before it seals the current one (it checks the set against its own chain then)."""
        chain = self.driver.chain
        mp = chain.membership_params
        if self.ledger is None or mp is None or chain.params is None or not chain.adaptive or chain.height < 1:
            return
        nxt = mp.epoch_of(chain.height) + 1
        boundary = mp.epoch_start(nxt)
        if chain.height >= boundary - chain.params.delay_heights:
            self.ledger.set_epoch_validators(nxt, chain.validators_at(boundary))

    # -- public -------------------------------------------------------------------------
    @property
    def height(self) -> int:
        return self.driver.height

    @property
    def validators(self) -> ValidatorSet:
        """The validator set in force at the driver's height."""
        return self.driver.validators

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the node's tasks; the caller runs the transport (it starts before the model loads)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._receive_loop)
            nursery.start_soon(self.answerer.run)
            if self._tree is not None:
                nursery.start_soon(self._tree.run_overlay)
            if self.cfg.join_via:
                nursery.start_soon(self._join_loop)
            self._execute(self.driver.start(self._now()) + self._later)
            self._later = []
            known = sorted(self.transport.known_peers())
            if known and self.ledger is None:  # without a ledger to sync, a new or restarted peer learns at
                # once whether it lags, not after two idle ticks
                self._ask_catch_up(known[self.driver.height % len(known)], self.driver.height)
            if self.ledger is not None:
                nursery.start_soon(self.ledger.run)
            task_status.started()

    async def submit(self, question: str, max_tokens: int | None = None) -> Decision:
        """Sign a client's question, spread it, answer it and wait for the decision."""
        try:
            qid, effects = self.driver.submit(question, max_tokens or self.cfg.max_new_tokens, os.urandom(16),
                                              self._now())
        except PoolFull as exc:
            raise QueryFailed(f"too many pending queries ({exc}); try again later") from None
        waiter = self._waiters[qid] = _Waiter()
        self._execute(effects)
        try:
            with trio.fail_after(self.cfg.query_timeout_s):
                await waiter.event.wait()
        except trio.TooSlowError:
            raise QueryFailed(f"no decision within {self.cfg.query_timeout_s:g} s") from None
        finally:
            self._waiters.pop(qid, None)
        if waiter.error is not None:
            raise QueryFailed(waiter.error)
        assert waiter.decision is not None
        return waiter.decision

    def certificate(self, height: int) -> dict[str, Any] | None:
        """The certificate decided at ``height`` (this run's decision, else the ledger's), with a trust path."""
        return self.certificates.serve(height)

    def request(self, signed: Signed[Join] | Signed[Leave]) -> str | None:
        """A client's join or leave request: why it is refused, or ``None`` (relayed; committed in a while)."""
        reason, effects = self.driver.request(signed, self._now())
        self._execute(effects)
        return reason

    def membership(self) -> dict[str, Any]:
        """Epochs, requests waiting for a boundary, refusals, recent changes and every member's stability."""
        d, chain = self.driver, self.driver.chain
        members = chain.members
        if members is None:
            return {"enabled": False, "requests_refused": dict(d.requests_refused)}
        p = members.params
        height = d.height
        epoch = p.epoch_of(height)
        peers = sorted(chain.members_from(height) | set(self.validators.ids))
        return {
            "enabled": True, "epoch": epoch, "epoch_length": p.epoch_length,
            "next_boundary": p.epoch_start(epoch + 1),
            "pending_joins": [{"peer_id": q, "moniker": j.moniker, "model": j.model, "committed_at": h}
                              for q, (h, j) in members.joins.items()],
            "pending_leaves": [{"peer_id": q, "committed_at": h} for q, h in members.leaves.items()],
            "requests_refused": dict(d.requests_refused),
            "requests_waiting": {"joins": len(d._joins), "leaves": len(d._leaves)},
            "transitions": [{"boundary": t.boundary, "joined": [q for q, _ in t.joining], "left": list(t.leaving),
                             "removed": list(t.removed)} for t in members.transitions],
            "stability": members.stability(peers),
        }

    def join_request(self) -> Signed[Join]:
        """This peer's signed request to join (address: ``[membership] external_address`` or the p2p listen)."""
        cfg = self.cfg
        address = cfg.external_address or cfg.p2p_listen
        if parse_hostport(address, "p2p.listen")[0] in ("0.0.0.0", "::", "[::]", ""):
            raise ValueError(f"[p2p] listen {address} cannot be dialled: set [membership] external_address")
        return sign(Join(chain_id=self.genesis.chain_id, peer_id=self.key.peer_id, public_key=self.key.public_key,
                         moniker=cfg.moniker, address=address, model=cfg.model,
                         created_ms=int(time.time() * 1000)), self.key)

    async def _join_loop(self) -> None:
        """``[membership] join_via``: once that member reports ``join_at_height``, hand it this peer's join
        request (again every 10 s until it is accepted or the peer is a member)."""
        from multillmn.client import ClientError, fetch_status, request_membership

        via, me = self.cfg.join_via, self.key.peer_id
        while True:
            chain = self.driver.chain
            if chain.members is None or me in chain.members_from(self.driver.height) or me in chain.members.joins:
                return
            try:
                status = await trio.to_thread.run_sync(fetch_status, via)
                if int(status.get("height", 0)) >= self.cfg.join_at_height:
                    await trio.to_thread.run_sync(request_membership, via, "join", self.join_request().envelope)
                    log.info("asked to join", extra=fields(via=via, height=status.get("height")))
                    return
            except (ClientError, ValueError) as exc:
                if "already-requested" in str(exc) or "already-member" in str(exc):
                    return
                log.warning("join request not accepted yet", extra=fields(via=via, error=str(exc)))
            await trio.sleep(10)

    def _scheduled_requests(self, height: int) -> None:
        """``[membership] leave_at_height``: a member asks to leave once the network got there."""
        cfg, chain = self.cfg, self.driver.chain
        me = self.key.peer_id
        if chain.members is None:
            return
        if cfg.leave_at_height and height >= cfg.leave_at_height and not self._leave_sent \
                and me in self.validators and me not in chain.members.leaves:
            self._leave_sent = True
            reason = self.request(sign(Leave(chain_id=self.genesis.chain_id, peer_id=me,
                                             created_ms=int(time.time() * 1000)), self.key))
            log.info("asked to leave", extra=fields(height=height, refused=reason))

    def _sync_peers(self) -> None:
        """Keep a link to every configured peer, every current or scheduled member, every committed
        joiner and every member of an unsealed ledger segment; forget members that left."""
        chain = self.driver.chain
        wanted: dict[str, tuple[str, int] | None] = {q: None for q in chain.members_from(self.driver.height)}
        if chain.members is not None:
            for q, address in chain.members.addresses().items():
                try:
                    wanted[q] = parse_hostport(address, "join.address")
                except ValueError:
                    continue
        for peer in self.cfg.persistent_peers:
            wanted[peer.id] = parse_hostport(peer.address, "p2p.peers")
        if self.ledger is not None:  # the committees of the unsealed ledger segments, until they seal
            for q in self.ledger.members():
                wanted.setdefault(q, None)
        wanted.pop(self.key.peer_id, None)
        self.transport.set_peers(wanted)
        self._catchup_asked = {p: a for p, a in self._catchup_asked.items() if p in wanted}

    def status(self) -> dict[str, Any]:
        d = self.driver
        return {
            "peer_id": self.key.peer_id,
            "moniker": self.cfg.moniker,
            "model": self.engine.model_name,
            "chain_id": self.genesis.chain_id,
            "height": d.height,
            "decided_heights": self.certificates.decided,
            "pending_queries": len(d.pool),
            "generation": self.answerer.status(),
            "connected_peers": self.transport.connected_peers(),
            "validators": [{"peer_id": v.peer_id, "moniker": v.moniker, "weight": v.weight}
                           for v in self.validators.validators],
            "total_weight": self.validators.total,
            "weights_digest": (d.chain.weights_digest() or b"").hex(),
            "member": self.key.peer_id in self.validators,
            "membership": self.membership(),
            "rejected_messages": {**self.rejects.snapshot(), **d.rejected},
            "driver": d.statistics(),
            "transport": self.transport.status(),
            "ledger": None if self.ledger is None else {
                k: v for k, v in self.ledger.statistics().items() if k != "certified_heights"},
        }

    # -- inputs -------------------------------------------------------------------------
    def _now(self) -> int:
        """The driver's clock (ms): trio's, or 0 before the node runs (a restart's replays need no time)."""
        try:
            return int(trio.current_time() * 1000)
        except RuntimeError:
            return 0

    def _key_of(self, peer: str) -> bytes | None:
        """The key a message from ``peer`` opens with: the chain's (members, scheduled members, committed
        joiners), else that of a member of a ledger segment this peer holds (a peer that left still serves
        the segments it ran; the driver counts only the votes of a height's members), else the genesis set's."""
        key = self.driver.chain.key_of(peer)
        if key is None and self.ledger is not None:
            key = self.ledger.key_of(peer)
        return key or self.genesis.validators.public_key_of(peer)

    def _handle(self, inp: DriverInput) -> None:
        self._execute(self.driver.handle(inp, self._now()))

    async def _receive_loop(self) -> None:
        async for peer, payload in self.transport.inbound:
            try:
                signed = decode_message(payload, self._key_of, cache=self.verified)
            except Exception as exc:  # MessageError; anything else is also the sender's fault
                self.rejects.record_exception(exc, peer)
                continue
            message = signed.message
            if isinstance(message, (DagSync, DagEvents, DagWant)):
                if self.ledger is not None:
                    self.ledger.handle(peer, signed)
                continue
            if isinstance(message, CatchUpRequest):
                self._serve_catch_up(peer, message.height)
                continue
            if isinstance(message, CatchUpReply):
                self._caught_up(peer, message)
                continue
            self._handle(Received(signed, peer))
            if isinstance(message, Answer):
                self._warm(message.query_id)

    def _on_ledger_certificate(self, height: int, cert: dict[str, Any]) -> None:
        """The ledger ordered a certificate it checked against its own chain: catch up with it if behind."""
        value = value_of_certificate(cert)
        if height >= self.driver.height and value is not None:
            log.info("catching up from the ledger", extra=fields(height=height, at=self.driver.height))
            precommits = tuple(certificate_precommits(cert, self.driver.chain.key_of, self.genesis.chain_id))
            self._handle(Committed(height, int(cert.get("round", 0)), value, precommits))

    def _ask_catch_up(self, peer: str, height: int) -> None:
        if peer in self.transport.known_peers():
            self._catchup_asked[peer] = (height, trio.current_time())
            self.transport.send_nowait(peer, encode_message(sign(CatchUpRequest(sender=self.key.peer_id,
                                                                                height=height), self.key)))

    def _serve_catch_up(self, peer: str, height: int) -> None:
        """Send ``peer`` the certificates of ``height`` on (at most :data:`catchup.BATCH`), rate-limited."""
        latest = self.driver.chain.height
        if height > latest or not self._catchup_limit.allow(peer, trio.current_time()):
            return
        for h in range(height, min(latest, height + BATCH - 1) + 1):
            cert = self.certificates.get(h)
            raw = None if cert is None else certificate_bytes(cert)
            if raw is None:
                return
            reply = sign(CatchUpReply(sender=self.key.peer_id, height=h, latest=latest, certificate=raw), self.key)
            if not self.transport.send_nowait(peer, encode_message(reply)):
                return

    def _caught_up(self, peer: str, reply: CatchUpReply) -> None:
        """A certificate from a peer: the driver checks it against its own chain like any catch-up."""
        try:
            cert = jsonsafe.loads(reply.certificate, max_bytes=MAX_CERTIFICATE_BYTES)
        except jsonsafe.JsonError as exc:
            self.rejects.record("malformed", f"catch-up certificate: {exc}", peer)
            return
        value = value_of_certificate(cert if isinstance(cert, dict) else None)
        round_ = cert.get("round") if isinstance(cert, dict) else None
        if value is None or type(round_) is not int or not 0 <= round_ <= 2**20 or cert.get("height") != reply.height:
            self.rejects.record("malformed", "catch-up certificate without a value, round or its height", peer)
            return
        precommits = tuple(certificate_precommits(cert, self.driver.chain.key_of, self.genesis.chain_id))
        self._handle(Certified(reply.height, round_, value, precommits))
        asked = self._catchup_asked.get(peer)
        if asked is not None and reply.height == min(reply.latest, asked[0] + BATCH - 1) \
                and self.driver.height > reply.height and reply.latest >= self.driver.height \
                and peer not in self._catchup_reasking:
            # the batch's last one folded and there is more: ask again as soon as the replier's rate limit allows
            self._catchup_reasking.add(peer)
            self._spawn(self._ask_catch_up_after, peer, asked[1] + MIN_INTERVAL_S - trio.current_time())

    async def _ask_catch_up_after(self, peer: str, delay_s: float) -> None:
        try:
            await trio.sleep(max(0.0, delay_s) + 0.01)
            self._ask_catch_up(peer, self.driver.height)
        finally:
            self._catchup_reasking.discard(peer)

    def _on_ledger_evidence(self, evidence: Evidence) -> None:
        """Evidence the ledger derived (a refused certificate's signer): carried in this peer's next values."""
        self.driver.scores.add_evidence(evidence, self.driver.validators)

    def _on_refused_certificate(self, height: int, cert: dict[str, Any]) -> None:
        """A certificate the ledger refused: the driver shows its precommits to the core (equivocation)."""
        value = value_of_certificate(cert)
        if height >= self.driver.height and value is not None:
            precommits = tuple(certificate_precommits(cert, self.driver.chain.key_of, self.genesis.chain_id))
            self._handle(Certified(height, int(cert.get("round", 0)), value, precommits))

    # -- effects ------------------------------------------------------------------------
    def _execute(self, effects: list[Effect]) -> None:
        """Carry out effects in order (a Persist is durable before anything after it)."""
        for e in effects:
            if isinstance(e, Send):
                self._send(encode_message(e.signed), e.to, e.delay_ms)
            elif isinstance(e, Persist):
                if self.wal is not None:
                    self.wal.append(e.height, e.record)
            elif isinstance(e, Schedule):
                self._spawn(self._timer, e)
            elif isinstance(e, Generate):
                self.answerer.submit(e)
            elif isinstance(e, Embed):
                self._spawn(self._embed, e)
            elif isinstance(e, Judge):
                self._spawn(self._judge, e)
            elif isinstance(e, Rate):
                self._spawn(self._rate, e)
            elif isinstance(e, Decided):
                self._decided(e)
            elif isinstance(e, EvidenceFound):
                log.warning("equivocation", extra=fields(evidence=e.evidence.KIND))
                if self.ledger is not None:
                    self.ledger.submit_evidence(e.evidence)
            elif isinstance(e, QueryExpired):
                waiter = self._waiters.get(e.query_id)
                if waiter is not None:
                    waiter.error = e.reason
                    waiter.event.set()
            elif isinstance(e, Announce):  # fault injection: a forgery posted as a certificate
                if self.ledger is not None:
                    cert = build_certificate(self.genesis, e.height, e.round, e.value, e.precommits, self.verified,
                                             validators=e.validators)
                    self.ledger.submit(certificate_tx(e.height, json.dumps(cert, sort_keys=True).encode()))
            elif isinstance(e, SendRaw):
                self._send(e.payload, e.to, 0)
            elif isinstance(e, InjectEvent):
                self._send(poisoned_events_payload(self.key, e.tx), None, 0)
            elif isinstance(e, Crash):
                raise PeerCrashed(e.reason)
            elif isinstance(e, AskCatchUp):
                self._ask_catch_up(e.peer, e.height)

    def _arrived(self, query_id: bytes) -> int | None:
        """When a pending query arrived (ms), or None once it is decided or expired."""
        entry = self.driver.pool.get(query_id)
        return None if entry is None else int(entry.arrived)

    def _spawn(self, fn: Any, *args: Any) -> None:
        assert self._nursery is not None, "the node is not running"
        self._nursery.start_soon(fn, *args)

    def _send(self, payload: bytes, to: tuple[str, ...] | None, delay_ms: int) -> None:
        if delay_ms > 0:
            self._spawn(self._send_later, payload, to, delay_ms)
        elif to is None:
            self.transport.broadcast_nowait(payload)
        else:
            known = set(self.transport.known_peers())
            for peer in to:
                if peer in known:
                    self.transport.send_nowait(peer, payload)

    async def _send_later(self, payload: bytes, to: tuple[str, ...] | None, delay_ms: int) -> None:
        await trio.sleep(delay_ms / 1000)
        self._send(payload, to, 0)

    async def _timer(self, e: Schedule) -> None:
        await trio.sleep(e.delay_ms / 1000)
        self._handle(TimerFired(e.timer))

    async def _embed(self, e: Embed) -> None:
        def run() -> tuple[tuple[int, ...], ...]:
            return tuple(tuple(self.engine.similarities(question, list(texts))) for question, texts in e.groups)

        try:
            sims = await trio.to_thread.run_sync(run)
        except Exception as exc:
            log.warning("could not compute similarities", extra=fields(error=str(exc)))
            sims = ()
        self._handle(Embedded(e.request, sims))

    async def _judge(self, e: Judge) -> None:
        judge = self.engine.judge
        results = []
        if judge is not None:
            def run() -> list[Any]:  # an LLM judge scores every answer of the pairs in one batched pass
                return judge_pairs(judge, e.question, [(p.a, p.a_text, p.b, p.b_text) for p in e.pairs])
            try:
                results = await trio.to_thread.run_sync(run)
            except Exception as exc:
                log.warning("could not judge", extra=fields(error=str(exc)))
        if results:
            log.info("judged close calls", extra=fields(pairs=len(results), winners=[r.winner() for r in results]))
        self._handle(Judged(e.request, tuple(results)))

    async def _rate(self, e: Rate) -> None:
        """A split query's other answers rated by this peer's judge in one batched pass (ADR 0022)."""
        judge = self.engine.judge
        verdicts: tuple[tuple[str, int], ...] = ()
        if judge is not None:
            def run() -> list[int]:
                return rate(judge, e.question, e.own, [t for _, t in e.answers])
            try:
                verdicts = tuple(zip((p for p, _ in e.answers), await trio.to_thread.run_sync(run), strict=True))
            except Exception as exc:
                log.warning("could not rate", extra=fields(error=str(exc)))
        log.info("rated a split", extra=fields(answers=len(e.answers), verdicts=[v for _, v in verdicts]))
        self._handle(Rated(e.request, verdicts))

    def _warm(self, query_id: bytes) -> None:
        """Embed a pending query's answers as they arrive (the engine caches by text), so checking its
        proposal later costs little: off the critical path between a proposal and this peer's prevote."""
        if query_id in self._warming or self.driver.pool.get(query_id) is None:
            return
        self._warming.add(query_id)
        self._spawn(self._warm_similarities, query_id)

    async def _warm_similarities(self, query_id: bytes) -> None:
        try:
            done = 0
            while (entry := self.driver.pool.get(query_id)) is not None and len(entry.answers) > done:
                texts = [a.message.text for a in entry.answers.values()]
                done = len(texts)
                await trio.to_thread.run_sync(self.engine.similarities, entry.query.message.question, texts)
        except Exception as exc:
            log.debug("warming failed", extra=fields(error=str(exc)))
        finally:
            self._warming.discard(query_id)

    def _decided(self, e: Decided) -> None:
        now = self._now()
        value = e.value
        self._sync_peers()  # links follow the members (cheap: a set difference)
        self._scheduled_requests(e.height)
        self._ledger_epochs()
        cert = self.ledger.certificate(e.height) if self.ledger is not None else None
        if cert is None or cert.get("value_id") != value.value_id().hex():  # not a catch-up from the ledger
            cert = build_certificate(self.genesis, e.height, e.round, value, e.precommits, self.verified,
                                     validators=e.validators)
            self.certificates.add(e.height, cert)
            if self.ledger is not None:
                self.ledger.submit_certificate(e.height, cert)
        outcomes = value.outcomes()
        log.info("decided", extra=fields(height=e.height, round=e.round, queries=len(outcomes), answer=value.answer))
        keys = e.validators.public_key_of
        full = self.certificates.with_path(cert)
        self.metrics.height_decided(e.round)
        for outcome, times in zip(outcomes, e.times or [QueryTimes()] * len(outcomes), strict=True):
            arrived = times.arrived_ms if times.arrived_ms is not None else now
            self.metrics.query_decided(None if times.arrived_ms is None else (now - arrived) / 1000)
            waiter = self._waiters.get(outcome.query_id())
            if waiter is None:
                continue
            answers = [open_envelope(Answer, env, keys, self.verified).message for env in outcome.answers]
            quorum = times.quorum_ms if times.quorum_ms is not None else now
            waiter.decision = Decision(
                height=e.height, round=e.round, value=value, outcome=outcome,
                certificate=full if len(outcomes) == 1 else query_certificate(full, outcome.query_id()),
                answers=answers, generation_ms=max(0, quorum - arrived), consensus_ms=max(0, now - quorum),
                protocol_ms=max(0, now - (e.proposed_ms if e.proposed_ms is not None else now)),
                validators=e.validators)
            waiter.event.set()
