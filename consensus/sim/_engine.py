"""The discrete-event engine: a seeded virtual-time queue driving many simulated peers (``_host.py``).

Time is an integer number of virtual microseconds; nothing reads the wall
clock (an optional CPU clock only *measures*). Every random choice comes from
a stream derived from the seed, and every processed event is hashed into the
trace hash, so ``(config, seed)`` determines a run and its hash exactly.

The engine also keeps what the invariants and reports need about weights:
the validator set in force at each height reached (from honest decisions
and cores), each node's weight-state digest after each folded height, and
so whether the run stayed inside the fault model (faulty weight below 1/3
at every height, from ``attack_from_height`` on when that is set).

Membership: nodes ``0 .. peers - 1`` are the genesis members, nodes
``peers ..`` the joiners (:class:`~consensus.sim.Joiner`), which start at
their time or height. A leaver (:class:`~consensus.sim.Leaver`) stops once
its chain leaves it out of the set; it is then no longer required to
decide (:meth:`Simulation.required`). The sets in force, and so the fault
model, come from the honest nodes' chains.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fractions import Fraction

from consensus.chain import Chain
from consensus.verdicts import VerdictRule
from consensus.driver import Decided
from consensus.driver.behaviours import Behaviour, BehaviourParams, make_behaviour
from consensus.evidence import DuplicateVoteEvidence, Evidence
from consensus.membership import MembershipParams
from consensus.messages import Proposal, Signed, Value, VerifiedCache, Vote, open_envelope
from consensus.sim._config import SimConfig
from consensus.sim._host import SIM_CHAIN_ID, DriverNode, MajorityPeer, SimNode
from consensus.sim._packets import Packet, PacketKind
from consensus.sim._world import Question, answer_table, derive_rng, joiner_keys, normalise, sim_keys
from consensus.validators import Validator, ValidatorSet
from consensus.weights import WeightParams

__all__ = ["Simulation", "DecisionRecord", "EquivocationRecord", "validator_set", "proposer_of"]

R = TypeVar("R")
_Event = tuple[int, int, int, int, Callable[[Any], None], Any, str]


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """One node's decision for one height (majority baseline: one adopted answer per question)."""

    node: int
    height: int
    round: int
    value: Value | None
    answer: str
    query_index: int
    time_us: int
    precommits: tuple[Signed[Vote], ...] = ()
    validators: ValidatorSet | None = None  # the set the decision was counted in (None: genesis)


@dataclass(frozen=True, slots=True)
class EquivocationRecord:
    """An ``Equivocation`` output: who reported whom, for which (height, round, kind)."""

    reporter: int
    signer: int
    height: int
    round: int
    kind: str


@dataclass
class _Counters:
    sent: int = 0
    lost: int = 0
    queued: int = 0
    events: int = 0
    cpu_ns: dict[str, int] = field(default_factory=dict)
    cpu_calls: dict[str, int] = field(default_factory=dict)


class Simulation:
    """One run of one config under one seed; :meth:`run` it once."""

    def __init__(self, config: SimConfig, seed: int, *, cpu_clock: Callable[[], int] | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.config = config.validate()
        self.log = log
        self.seed = seed
        self.peers = config.peers  # genesis members: nodes 0 .. peers - 1
        self.n = config.nodes  # every node: the genesis members, then the joiners
        self.keys = sim_keys(self.peers) + joiner_keys(len(config.joiners))
        self.validators = validator_set(config)
        self.membership = None if config.epoch_length is None else MembershipParams(epoch_length=config.epoch_length)
        self.directory = {k.peer_id: k.public_key for k in self.keys}  # instrumentation only (not the protocol)
        self.weight_params: WeightParams | None = None
        if config.adaptive:
            self.weight_params = WeightParams.for_tests() if config.weight_params == "tests" else WeightParams()
        self.index_of = {k.peer_id: i for i, k in enumerate(self.keys)}
        self.questions: tuple[Question, ...] = answer_table(seed, config.heights)
        self.query_index: dict[bytes, int] = {}
        self.behaviour_names: list[str] = []
        self.behaviours = self._assign_behaviours()
        self.colluders = frozenset(i for i, name in enumerate(self.behaviour_names) if name == "collude")
        self.permanently_down = {c.node for c in config.crashes if c.restart_ms is None}
        self.honest = tuple(i for i, b in enumerate(self.behaviours)
                            if not b.faulty and i not in self.permanently_down)
        self.sets: dict[int, ValidatorSet] = {}  # the set in force per height reached (after run())
        self.within_model = self._within_model({1: self.validators})
        self.digests: list[dict[int, bytes]] = [{} for _ in range(self.n)]  # weight-state digest per folded height
        self.digest_conflicts: list[str] = []  # a node that recomputed a different digest (after a restart)
        self._shared_verified = VerifiedCache(1 << 16)  # the fast path's signature cache, shared by all peers
        self.cpu_clock = cpu_clock
        self.counters = _Counters()
        self.rejected = 0
        self.now = 0
        self._net = derive_rng(seed, "net")
        self._heap: list[_Event] = []
        self._seq = 0
        self._trace = hashlib.sha256()
        self._value_ids: dict[int, tuple[Value, bytes]] = {}
        self._link_queue: dict[tuple[int, int, int], int] = {}
        self.decisions: list[dict[int, DecisionRecord]] = [{} for _ in range(self.n)]
        self.equivocations: list[EquivocationRecord] = []
        self.expected_detections: dict[tuple[int, int, int, int, str], None] = {}
        self.exhausted = False
        self.left_at: dict[int, int] = {}
        self._reissued: set[bytes] = set()  # a leaver that stopped -> the first height it was no member of
        self._remaining = len(self.honest) * config.heights
        self._joiner_at_height: dict[int, list[int]] = {}  # height -> joiners that start once it is worked on
        self._leaver_at_height: dict[int, int] = {}  # leaver -> the height it asks to leave at
        peer_cls: type[SimNode] = MajorityPeer if config.baseline == "majority" else DriverNode
        self.nodes: list[SimNode] = [peer_cls(self, i, self.behaviours[i]) for i in range(self.n)]
        self.deadline_us = 1000 * self._deadline_ms()

    # --- set-up ---------------------------------------------------------------
    def _assign_behaviours(self) -> list[Behaviour]:
        names = ["none"] * self.peers + [j.behaviour for j in self.config.joiners]
        for node, name in self.config.byzantine:
            names[node] = name
        free = [i for i in range(self.peers) if names[i] == "none"]
        pick = derive_rng(self.seed, "pick")
        for name, node in zip(self.config.byzantine_pick, pick.sample(free, len(self.config.byzantine_pick))):
            names[node] = name
        self.behaviour_names = names
        params = BehaviourParams(slow_ms=self.config.slow_ms, crash_at_height=10**9,  # crashes are timed events
                                 from_height=self.config.attack_from_height or 1,
                                 copy_wait_ms=3 * int(self.config.gen_ms) + self.config.answer_grace_ms // 2)
        return [make_behaviour(name, self.keys[i].peer_id, params) for i, name in enumerate(names)]

    def _crash_time_ms(self, i: int) -> int | None:
        """When a ``crash`` node stops for good: ``config.crash_at_ms``, else drawn from the seed."""
        if self.behaviour_names[i] != "crash":
            return None
        if self.config.crash_at_ms is not None:
            return self.config.crash_at_ms
        horizon = self.config.heights * max(self.config.query_interval_ms, int(self.config.gen_ms)) + 2000
        return derive_rng(self.seed, "crash", i).randrange(0, horizon)

    def _deadline_ms(self) -> int:
        """The termination bound: stabilisation plus a budget per height.

        Stabilisation is the last partition heal, honest restart or query. The
        budget covers answering (three mean generation times, slowness
        included), the answer grace period, ``faulty weight + 3`` rounds of
        timeouts (weighted round robin lets at most that many faulty proposers
        follow each other), gossip ticks and latency tails; loss stretches it.
        """
        cfg = self.config
        stable = max([p.heal_ms for p in cfg.partitions]
                     + [c.restart_ms for c in cfg.crashes if c.restart_ms is not None]
                     + [j.at_ms for j in cfg.joiners if j.at_ms is not None]
                     + [x.at_ms for x in cfg.leaves if x.at_ms is not None]
                     + [(cfg.heights - 1) * cfg.query_interval_ms])
        if cfg.height_budget_ms is not None:
            return stable + cfg.heights * cfg.height_budget_ms
        slow = max([f for i, f in cfg.slowness if i in self.honest] + [1.0])
        weights = self.config.weight_list()
        faulty = sum(weights[i] for i in range(self.peers) if i not in self.honest)
        rounds = min(faulty, 4 * self.peers) + 3
        p, pv, pc, delta = cfg.timeouts_ms
        round_ms = sum(p + pv + pc + 3 * r * delta for r in range(rounds))
        tick = cfg.gossip_ms or 1000
        latency = cfg.latency_ms * math.exp(3 * cfg.latency_sigma)
        budget = (3 * cfg.gen_ms * slow + cfg.answer_grace_ms + round_ms + (rounds + 2) * tick
                  + 20 * latency + 1000)
        if cfg.loss:
            budget *= 1 + 10 * cfg.loss
        return int(stable + cfg.heights * budget)

    # --- the event queue --------------------------------------------------------
    def schedule(self, delay_us: int, node: SimNode, fn: Callable[[Any], None], arg: Any, *, label: str) -> None:
        """Run ``fn(arg)`` after ``delay_us`` unless ``node`` crashes first."""
        self._push(self.now + delay_us, node.index, node.epoch, fn, arg, f"{node.index} {label}")

    def _push(self, at: int, node: int, epoch: int, fn: Callable[[Any], None], arg: Any, label: str) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, node, epoch, fn, arg, label))

    def run(self) -> None:
        """Process events until every honest node decided every height, or the deadline."""
        cfg = self.config
        for node in self.nodes[:self.peers]:
            node.start()
        for k, j in enumerate(cfg.joiners):
            if j.at_ms is not None:
                self._push(j.at_ms * 1000, -1, 0, self._join, self.peers + k, f"join {self.peers + k}")
            else:
                assert j.at_height is not None
                self._joiner_at_height.setdefault(j.at_height, []).append(self.peers + k)
        for x in cfg.leaves:
            if x.at_ms is not None:
                self._push(x.at_ms * 1000, -1, 0, self._leave, x.node, f"leave {x.node}")
            else:
                assert x.at_height is not None
                self._leaver_at_height[x.node] = x.at_height
        for i in self._joiner_at_height.pop(1, []):
            self._push(0, -1, 0, self._join, i, f"join {i}")
        for i, h in list(self._leaver_at_height.items()):
            if h == 1:
                del self._leaver_at_height[i]
                self._push(0, -1, 0, self._leave, i, f"leave {i}")
        for h in range(cfg.heights):
            self._push(h * cfg.query_interval_ms * 1000, -1, 0, self._issue, h, f"issue {h}")
        for c in cfg.crashes:
            self._push(c.at_ms * 1000, -1, 0, self._crash, c.node, f"crash {c.node}")
            if c.restart_ms is not None:
                self._push(c.restart_ms * 1000, -1, 0, self._restart, c.node, f"restart {c.node}")
        for i in range(self.n):
            at = self._crash_time_ms(i)
            if at is not None:
                self._push(at * 1000, -1, 0, self._crash, i, f"crash {i}")
        heap, nodes, trace, counters = self._heap, self.nodes, self._trace, self.counters
        while heap and self._remaining > 0:
            at, _, idx, epoch, fn, arg, label = heap[0]
            if at > self.deadline_us:
                break
            heapq.heappop(heap)
            if idx >= 0 and (nodes[idx].epoch != epoch or nodes[idx].down):
                continue
            self.now = at
            counters.events += 1
            trace.update(f"{at} {label}\n".encode())
            if self.log is not None:
                self.log(f"{at / 1000:10.3f} {label}")
            fn(arg)
            if counters.events >= cfg.max_events:
                self.exhausted = True
                break
        self.sets = self._sets_by_height()
        self.within_model = self._within_model(self.sets)

    # --- weights and the fault model -------------------------------------------------
    def new_chain(self, verified: VerifiedCache | None = None) -> Chain:
        """A fresh chain at genesis: adaptive under ``wbft`` with ``adaptive_weights``, else static;
        ``verified``: the peer's signature cache, as the runner shares its own."""
        return Chain(self.validators, self.weight_params, verified, SIM_CHAIN_ID, membership=self.membership,
                     verdict_rule=VerdictRule() if self.config.verdict_rule == "veto" else None)

    def verified_for(self, index: int) -> VerifiedCache:
        """A peer's signature cache: its own with real signatures, else one shared by all (each signature is
        checked about once per run)."""
        node = self.nodes[index] if len(getattr(self, "nodes", ())) > index else None
        if self.config.real_signatures:
            if node is not None and isinstance(node, DriverNode):
                return node.driver.verified
            return VerifiedCache()
        return self._shared_verified

    def faulty_weight(self, vs: ValidatorSet) -> int:
        """The weight in ``vs`` of every node that is not honest (faulty or down for good)."""
        honest = {self.keys[i].peer_id for i in self.honest}
        return sum(v.weight for v in vs if v.peer_id not in honest)

    def faulty_share(self, vs: ValidatorSet) -> Fraction:
        return Fraction(self.faulty_weight(vs), vs.total)

    def _sets_by_height(self) -> dict[int, ValidatorSet]:
        """The set in force at every height some honest node decided or works on."""
        out: dict[int, ValidatorSet] = {}
        for i in self.honest:
            for h, rec in self.decisions[i].items():
                if 1 <= h <= self.config.heights:
                    out.setdefault(h, rec.validators or self.validators)
            node = self.nodes[i]
            if node.height <= self.config.heights:
                out.setdefault(node.height, node.validators)
        for h in range(1, max(out, default=1) + 1):
            out.setdefault(h, self.validators)  # not reached by a record: only possible with static weights
        return dict(sorted(out.items()))

    def _within_model(self, sets: dict[int, ValidatorSet]) -> bool:
        """Faulty weight below 1/3 at every height (from ``attack_from_height`` on, when set: before it
        faulty peers only answer wrong, which the protocol tolerates at any weight)."""
        start = self.config.attack_from_height or 1
        return all(3 * self.faulty_weight(vs) < vs.total for h, vs in sets.items() if h >= start)

    @property
    def trace_hash(self) -> str:
        return self._trace.hexdigest()

    # --- the network --------------------------------------------------------------
    def packet(self, kind: PacketKind, signed: Signed[Any]) -> Packet:
        """Wrap a signed message, with a short label for the trace."""
        m = signed.message
        who = self.index_of.get(m.signer, -1)
        if kind == "vote":
            vid = m.value_id.hex()[:6] if m.value_id is not None else "nil"
            label = f"{m.type[:4]} {m.height}.{m.round} {vid} by {who}"
        elif kind == "proposal":
            label = f"prop {m.height}.{m.round} {self.value_id(m.value).hex()[:6]} by {who}"
        elif kind == "answer":
            label = f"ans q{self.query_index.get(m.query_id, -1)} by {who} {m.text[:12]!r}"
        elif kind == "scores":
            label = f"scores h{m.height} by {who}"
        elif kind in ("join", "leave"):
            label = f"{kind} by {who}"
        else:
            label = f"query by {who}"
        return Packet(kind, signed, label=label)

    def send(self, src: int, packet: Packet, dsts: tuple[int, ...], delay_us: int = 0) -> None:
        """Send with seeded latency and loss; across a partition, queue until it heals."""
        cfg = self.config
        rng = self._net
        for dst in dsts:
            if dst == src:
                continue
            self.counters.sent += 1
            if cfg.loss and rng.random() < cfg.loss:
                self.counters.lost += 1
                continue
            at = self.now + delay_us
            for k, part in enumerate(cfg.partitions):
                if 1000 * part.start_ms <= at < 1000 * part.heal_ms and _group(part.groups, src) != _group(
                        part.groups, dst):
                    key = (k, src, dst)
                    queued = self._link_queue.get(key, 0)
                    if queued >= part.queue_limit:
                        self.counters.lost += 1
                        at = -1
                        break
                    self._link_queue[key] = queued + 1
                    self.counters.queued += 1
                    at = 1000 * part.heal_ms
            if at < 0:
                continue
            if cfg.latency_ms > 0:
                sigma = cfg.latency_sigma
                mu = math.log(cfg.latency_ms * 1000) - sigma * sigma / 2
                at += int(rng.lognormvariate(mu, sigma))
            self._push(at, -1, 0, self._deliver, (dst, src, packet), f"{dst}<{src} {packet.label}")

    def _deliver(self, arg: tuple[int, int, Packet]) -> None:
        dst, src, packet = arg
        node = self.nodes[dst]
        if not node.down:
            node.deliver(src, packet)

    # --- workload and faults ---------------------------------------------------------
    def _issue(self, h: int) -> None:
        """A client asks question ``h`` at an honest, running entry peer that is a member at its height
        (rotating)."""
        candidates = [i for i in range(self.n) if not self.behaviours[i].faulty] or list(range(self.n))
        for k in range(len(candidates)):
            i = candidates[(h + k) % len(candidates)]
            node = self.nodes[i]
            if not node.down and node.started and node.peer_id in node.validators \
                    and getattr(node, "leave", None) is None:
                node.submit(h)
                return

    def query_expired(self, qid: bytes) -> None:
        """A peer dropped a pending query (its entry peer left the set, or too few answered in time): its
        client asks again at another entry peer, once per query."""
        if qid in self._reissued or qid not in self.query_index:
            return
        self._reissued.add(qid)
        index = self.query_index[qid]
        self._push(self.now, -1, 0, self._issue, index, f"reissue {index}")

    def _crash(self, i: int) -> None:
        if not self.nodes[i].down:
            self.nodes[i].crash()

    def crash_node(self, i: int) -> None:
        """A node's own fault injection stops it for good."""
        self.permanently_down.add(i)
        self._crash(i)

    def _restart(self, i: int) -> None:
        if self.nodes[i].down and self.nodes[i].started and i not in self.left_at:
            self.nodes[i].restart()

    def _join(self, i: int) -> None:
        """Joiner ``i`` starts from the genesis and sends its signed Join to a member."""
        node = self.nodes[i]
        if not node.started:
            node.begin_join()

    def _leave(self, i: int) -> None:
        """Member ``i`` asks to leave (at its own peer, which relays the request)."""
        self.nodes[i].begin_leave()

    def depart(self, i: int) -> None:
        """Leaver ``i`` is out of the set at its chain's height: it stops for good and is no longer required."""
        node = self.nodes[i]
        if i in self.left_at:
            return
        self.left_at[i] = node.height
        node.down = True
        node.epoch += 1
        if i in self.honest:
            self._remaining -= sum(1 for h in range(node.height, self.config.heights + 1)
                                   if h not in self.decisions[i])

    def required(self, i: int, height: int) -> bool:
        """Whether honest node ``i`` must decide ``height``: every height, but a leaver only those before it
        stopped (the heights it was a member of)."""
        return height < self.left_at.get(i, self.config.heights + 1)

    # --- services for peers ---------------------------------------------------------------
    def timed(self, category: str, fn: Callable[..., R], *args: Any) -> R:
        """Call ``fn(*args)``, adding its CPU time to ``category`` when a CPU clock was given."""
        clock = self.cpu_clock
        if clock is None:
            return fn(*args)
        t0 = clock()
        try:
            return fn(*args)
        finally:
            cpu = self.counters.cpu_ns
            cpu[category] = cpu.get(category, 0) + clock() - t0
            calls = self.counters.cpu_calls
            calls[category] = calls.get(category, 0) + 1

    def value_id(self, value: Value) -> bytes:
        """``value.value_id()``, memoised per value object."""
        hit = self._value_ids.get(id(value))
        if hit is None:
            hit = self._value_ids[id(value)] = (value, value.value_id())
        return hit[1]

    def register_query(self, qid: bytes, index: int) -> None:
        self.query_index[qid] = index

    def question_of(self, qid: bytes) -> Question:
        index = self.query_index.get(qid)
        return self.questions[index] if index is not None else Question(-1, "an unknown question", "0")

    # --- records -------------------------------------------------------------------------
    def _count(self, node: int, key: int, record: DecisionRecord) -> None:
        mine = self.decisions[node]
        if key in mine:
            return
        mine[key] = record
        if node in self.honest and 1 <= key <= self.config.heights and self.required(node, key):
            self._remaining -= 1

    def record_decision(self, node: int, d: Decided) -> None:
        qidx = self.query_index.get(d.value.query_id(), -1)
        self._count(node, d.height, DecisionRecord(node, d.height, d.round, d.value, d.value.answer, qidx,
                                                   self.now, d.precommits, d.validators))
        for i in self._joiner_at_height.pop(d.height + 1, []):  # the network works on the joiner's height
            self._push(self.now, -1, 0, self._join, i, f"join {i}")
        if self._leaver_at_height.get(node) == d.height + 1:
            del self._leaver_at_height[node]
            self._push(self.now, -1, 0, self._leave, node, f"leave {node}")

    def record_digest(self, node: int, height: int, digest: bytes) -> None:
        """Node ``node`` folded ``height`` into a weight state with this digest."""
        seen = self.digests[node].setdefault(height, digest)
        if seen != digest:
            self.digest_conflicts.append(f"node {node} recomputed another weight state for height {height}")

    def record_majority(self, node: int, qid: bytes, answer: str) -> None:
        qidx = self.query_index.get(qid, -1)
        self._count(node, qidx + 1, DecisionRecord(node, qidx + 1, 0, None, answer, qidx, self.now))

    def record_equivocation(self, node: int, evidence: Evidence) -> None:
        model: type[Vote] | type[Proposal] = Vote if isinstance(evidence, DuplicateVoteEvidence) else Proposal
        m = open_envelope(model, evidence.first, self.directory.get, self._shared_verified).message
        kind = m.type if isinstance(m, Vote) else "proposal"
        self.equivocations.append(EquivocationRecord(node, self.index_of.get(m.signer, -1), m.height, m.round, kind))

    def expect_detection(self, node: int, key: tuple[str, int, int, str]) -> None:
        voter, height, round_, type_ = key
        self.expected_detections[(node, self.index_of.get(voter, -1), height, round_, type_)] = None

    def correct(self, record: DecisionRecord) -> bool:
        """Whether a decided answer is the right one for its question."""
        if record.query_index < 0:
            return False
        return normalise(record.answer) == normalise(self.questions[record.query_index].correct)


def validator_set(config: SimConfig) -> ValidatorSet:
    """The validator set of a config: node ``i`` holds ``sim_keys(n)[i]`` and weight ``weight_list()[i]``."""
    keys = sim_keys(config.peers)
    return ValidatorSet(Validator(k.peer_id, k.public_key, w, f"n{i}")
                        for i, (k, w) in enumerate(zip(keys, config.weight_list())))


def proposer_of(config: SimConfig, height: int, round_: int) -> int:
    """The node index proposing at (``height``, ``round_``) under ``config``."""
    vs = validator_set(config)
    return vs.ids.index(vs.proposer(height, round_))


def _group(groups: tuple[tuple[int, ...], ...], node: int) -> int:
    for k, g in enumerate(groups):
        if node in g:
            return k
    return -1
