r"""Membership benchmark (issue 12): a joiner's first counted vote, and catch-up time against ledger size.

    # 1. join -> first counted vote: real Nodes on loopback (and the simulator), epochs of 4 and 8 heights
    nice -n 10 .venv/bin/python bench/membership.py join --epochs 4 8 --runs 20 --sim-seeds 50
    nice -n 10 .venv/bin/python bench/membership.py join --epochs 4 8 --runs 3 --sim-seeds 0 \
        --timeouts shipped --pause 2
    # 2. catch-up by certificates over a real loopback Transport, shipped settings
    nice -n 10 .venv/bin/python bench/membership.py catchup --sizes 1000
    nice -n 10 .venv/bin/python bench/membership.py catchup --sizes 1000 10000 --timeouts tests
    # the same with the serving peers' catch-up rate limit off (a diagnostic, not the shipped setting)
    nice -n 10 .venv/bin/python bench/membership.py catchup --sizes 1000 10000 100000 --rate-limit off
    # every command merges its results into --json (default bench/results/membership-2026-11-30.json)

**Join to first counted vote** (``join``): four genesis ``Node``s and one
joiner, each with its own encrypted loopback ``Transport`` and a scripted
engine (answers in 50 ms), in one trio process, as in
``tests/test_node_membership.py``; genesis ``epoch_length`` 4 or 8. Questions
go one at a time round robin through the members, ``--pause`` (0.3 s) after
each decision. Once the members decided height 2, the joiner's signed join is
handed to member 0 (``Node.request``, what ``POST /v1/membership/join`` does):
*t0* and *h0* (the height member 0 works on). Measured on the members' own
decisions: the height whose value carried the join, the boundary it takes
effect at, when the joiner had folded the height before the boundary, and the
joiner's first precommit counted in a certificate: in the precommits a member
decided with, or in a later committed value's ``last_commit`` (what the
stability record counts); the first of the two is *the first counted vote*.
``--timeouts tests`` (the default here) gives every node
``PeerConfig.for_tests()``'s consensus timeouts (driver tick 1 s),
``shipped`` ``PeerConfig()``'s (tick 6 s); a run stops early if the joiner
is removed for missed heights. The same in the deterministic simulator
(``consensus.sim``, 4 peers, one ``Joiner(at_height=3)``, virtual time, fast
signature path): t0 is when the first node decided height 2 and the joiner
sent its join.

**Catch-up against ledger size** (``catchup``): a chain of N decided heights
of a 4-validator genesis (epochs of 100) is generated with real signatures:
every height a query, four answers, score vectors of the height before, the
last commit (four precommits) and a certificate of four precommits; the
newcomer's signed join is committed at height N, so the members know its key
and address (it becomes a member at the next boundary, after the tip). Four
serving ``Node``s (the genesis members) run in a child process, each restored
from a stand-in ledger that holds the N certificates as JSON in memory, as
``dag.Ledger.answers`` does (no hashgraph runs), so ``peers/catchup.py``
serves them as it serves a ledger's. The newcomer is a fresh ``Node`` in this
process (no ledger, no WAL) with the members as persistent peers: from its
start until its chain holds height N, its driver asks by ``catchup_req``,
checks each ``catchup`` certificate against its own chain and folds it; its
weights-and-membership digest must equal the generator's. Reported: seconds,
heights/s, the requests the servers' rate limit dropped, the newcomer's peak
RSS (``getrusage``, this process only) and the server process' peak RSS, the
generation and restore times, the newcomer's height every 10 s, and
(``--fold-check``, on by default) the same certificates folded by a bare
driver with no wire, the speed of the checks alone.
``--timeouts shipped`` gives the newcomer ``PeerConfig()``'s consensus
timeouts (driver tick 6 s, as ``multillmn peer`` and testnets run);
``tests``: ``PeerConfig.for_tests()`` (tick 1 s). ``--rate-limit off`` makes
the servers answer every request (``RateLimit(interval_s=0)``), to show the
speed of the path without the 0.25 s per-peer limit.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from consensus import grouping  # noqa: E402
from consensus.driver import Certified, Decided, Driver, DriverConfig  # noqa: E402
from consensus.messages import Answer, Join, Query, VerifiedCache, Vote, query_id_of, sign  # noqa: E402
from consensus.scores import ScoreVector  # noqa: E402
from consensus.sim import Joiner, SimConfig, Simulation  # noqa: E402
from consensus.state_machine import Timeouts  # noqa: E402
from multillmn import canonical  # noqa: E402
from multillmn.certificate import build_certificate, certificate_precommits  # noqa: E402
from multillmn.config import PeerAddress, PeerConfig  # noqa: E402
from multillmn.genesis import Genesis, Params  # noqa: E402
from multillmn.identity import KeyPair  # noqa: E402
from peers.catchup import RateLimit  # noqa: E402
from peers.engine import ScriptedEngine  # noqa: E402
from peers.ledger import value_of_certificate  # noqa: E402
from peers.node import Node, QueryFailed  # noqa: E402
from peers.transport import Transport  # noqa: E402

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "membership-2026-11-30.json"
Q = "What is the capital of France?"
MODEL = "m"
MEMBER_KEYS = [KeyPair.from_seed(bytes([i + 111]) * 32) for i in range(4)]
NEWCOMER_KEY = KeyPair.from_seed(bytes([119]) * 32)
CATCHUP_EPOCH = 100


def _rss_mib() -> float:
    """Peak resident set size of this process so far (MiB; Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _genesis(epoch_length: int, chain_id: str) -> Genesis:
    return Genesis.build(chain_id, [(f"peer{i}", k.public_key, 1) for i, k in enumerate(MEMBER_KEYS)],
                         Params(epoch_length=epoch_length, models=(MODEL,)))


def _config(timeouts: str, moniker: str, peers: Sequence[PeerAddress] = (), address: str = "") -> PeerConfig:
    base = PeerConfig.for_tests() if timeouts == "tests" else PeerConfig()
    return replace(base, model=MODEL, moniker=moniker, persistent_peers=tuple(peers), external_address=address)


def _voter(env: Any) -> str | None:
    """The voter of a precommit envelope carried in a last commit (decoded, not verified: the chain did)."""
    try:
        body = canonical.unpack(env.body)
    except canonical.CanonicalError:
        return None
    return body.get("voter") if isinstance(body, dict) else None


def _summary(xs: Sequence[float]) -> dict[str, float | None]:
    if not xs:
        return {"median": None, "max": None, "min": None}
    return {"median": round(statistics.median(xs), 3), "max": round(max(xs), 3), "min": round(min(xs), 3)}


# --- 1. join -> first counted vote ------------------------------------------------------------------------

@dataclass
class _Seen:
    """A decision observed at a node."""

    t: float
    node: int
    height: int
    joins: int
    signers: frozenset[str]
    last_commit: frozenset[str]


def _watch(node: Node, index: int, log: list[_Seen]) -> None:
    """Record every decision of ``node`` (its ``_decided`` effect) with the time it happened."""
    original = node._decided

    def decided(e: Decided) -> None:
        log.append(_Seen(trio.current_time(), index, e.height, len(e.value.joins),
                         frozenset(p.signer for p in e.precommits),
                         frozenset(v for v in map(_voter, e.value.last_commit) if v is not None)))
        original(e)

    node._decided = decided  # type: ignore[method-assign]


@asynccontextmanager
async def _join_network(genesis: Genesis, timeouts: str) -> AsyncIterator[list[Node]]:
    """Four genesis Nodes and the joiner (last), every transport knowing the genesis members."""
    keys = MEMBER_KEYS + [NEWCOMER_KEY]
    members = [k.peer_id for k in MEMBER_KEYS]
    nodes: list[Node] = []
    async with trio.open_nursery() as nursery:
        for i, key in enumerate(keys):
            transport = Transport(key, ("127.0.0.1", 0), {p: None for p in members},
                                  backoff_initial=0.05, backoff_max=0.5)
            await nursery.start(transport.run)
            cfg = _config(timeouts, f"peer{i}", address=f"127.0.0.1:{transport.listen_port}")
            engine = ScriptedEngine({Q: "Paris"}, model_name=MODEL, delay_s=0.05)
            node = Node(cfg, key, genesis, engine, transport)
            await nursery.start(node.run)
            nodes.append(node)
        for node in nodes:
            for other in nodes[:4]:
                if other is not node:
                    node.transport.set_address(other.key.peer_id, ("127.0.0.1", other.transport.listen_port))
        yield nodes
        nursery.cancel_scope.cancel()


async def _ask_forever(members: list[Node], pause_s: float) -> None:
    k = 0
    while True:
        with trio.move_on_after(10):
            try:
                await members[k % len(members)].submit(f"{Q} ({k})")
            except QueryFailed:
                pass
        k += 1
        await trio.sleep(pause_s)


async def join_run(epoch_length: int, *, pause_s: float = 0.3, timeout_s: float = 120.0,
                   timeouts: str = "tests") -> dict[str, Any]:
    """One run: hand the joiner's request to a member once height 2 is decided; wait for its first vote counted
    in a certificate (in a member's decision and in a committed last commit). Times in seconds from hand-off."""
    genesis = _genesis(epoch_length, f"bench-join-{epoch_length}")
    me = NEWCOMER_KEY.peer_id
    log: list[_Seen] = []
    out: dict[str, Any] = {"epoch_length": epoch_length, "pause_s": pause_s, "timeouts": timeouts}
    async with _join_network(genesis, timeouts) as nodes:
        members, joiner = nodes[:4], nodes[4]
        for i, node in enumerate(nodes):
            _watch(node, i, log)
        async with trio.open_nursery() as asking:
            asking.start_soon(_ask_forever, members, pause_s)
            with trio.move_on_after(timeout_s) as scope:
                while min(n.height for n in members) <= 2:
                    await trio.sleep(0.01)
                t0, h0 = trio.current_time(), members[0].height
                refused = members[0].request(joiner.join_request())
                if refused is not None:
                    raise RuntimeError(f"the join was refused: {refused}")
                chain = members[0].driver.chain
                assert chain.members is not None and chain.params is not None
                delay = chain.params.delay_heights
                committed = boundary = cert = last = caught = None
                while cert is None or last is None or caught is None:
                    await trio.sleep(0.01)
                    if any(me in t.removed for t in chain.members.transitions):
                        break  # removed for missed heights before it voted: it will not vote any more
                    seen = [s for s in log if s.node < 4]
                    if committed is None:
                        committed = next((s for s in seen if s.joins), None)
                        if committed is not None:
                            boundary = chain.members.params.boundary_for(committed.height, delay)
                    if cert is None:
                        cert = next((s for s in seen if me in s.signers), None)
                    if last is None:
                        last = next((s for s in seen if me in s.last_commit), None)
                    if caught is None and boundary is not None:
                        caught = next((s for s in log if s.node == 4 and s.height >= boundary - 1), None)
            asking.cancel_scope.cancel()
        t_end = trio.current_time()
        out["timed_out"] = scope.cancelled_caught
        transitions = members[0].driver.chain.members.transitions  # type: ignore[union-attr]
        out["removed_at"] = next((t.boundary for t in transitions if me in t.removed), None)
        out["joiner_height_end"] = joiner.driver.chain.height
        out["network_heights_per_s"] = round((members[0].driver.chain.height - h0 + 1) / (t_end - t0), 2)
        out.update(h0=h0, join_committed_height=committed and committed.height, boundary=boundary,
                   join_committed_s=committed and round(committed.t - t0, 3),
                   joiner_caught_up_s=caught and round(caught.t - t0, 3),
                   first_in_certificate_height=cert and cert.height,
                   first_in_certificate_s=cert and round(cert.t - t0, 3),
                   first_in_last_commit_height=last and last.height - 1,  # the height whose commit counted it
                   first_in_last_commit_s=last and round(last.t - t0, 3))
        firsts = ([(cert.t, cert.height)] if cert else []) + ([(last.t, last.height - 1)] if last else [])
        if firsts:
            t, h = min(firsts)
            out.update(first_counted_s=round(t - t0, 3), first_counted_height=h,
                       first_counted_heights_after_h0=h - h0)
        out["heights_decided"] = members[0].height - 1
        out["joiner_member"] = me in members[0].validators
    return out


def join_sim(epoch_length: int, seed: int, at_height: int = 3) -> dict[str, Any]:
    """The same measure in the simulator (virtual time): from the join being sent (when the first node decided
    ``at_height - 1``) to the joiner's first precommit counted in a decision or a committed last commit."""
    heights = min(10_000, at_height + 3 * epoch_length + 2)
    config = SimConfig(peers=4, heights=heights, epoch_length=epoch_length, joiners=(Joiner(at_height=at_height),))
    sim = Simulation(config, seed)
    sim.run()
    me = sim.keys[4].peer_id
    records = sorted((r for i in range(4) for r in sim.decisions[i].values()), key=lambda r: (r.time_us, r.node))
    t0 = min(r.time_us for r in records if r.height == at_height - 1)
    committed = next((r for r in records if r.value is not None and r.value.joins), None)
    cert = next((r for r in records if any(p.signer == me for p in r.precommits)), None)
    last = next((r for r in records if r.value is not None and me in map(_voter, r.value.last_commit)), None)
    firsts = ([(cert.time_us, cert.height)] if cert else []) + ([(last.time_us, last.height - 1)] if last else [])
    out: dict[str, Any] = {"epoch_length": epoch_length, "seed": seed, "h0": at_height,
                           "join_committed_height": committed and committed.height,
                           "first_in_certificate_height": cert and cert.height,
                           "first_in_last_commit_height": last and last.height - 1}
    if committed is not None:
        out["boundary"] = sim.membership.boundary_for(committed.height, 2) if sim.membership else None
    if firsts:
        t, h = min(firsts)
        out.update(first_counted_s=round((t - t0) / 1e6, 3), first_counted_height=h,
                   first_counted_heights_after_h0=h - at_height)
    return out


def summarise_joins(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if r.get("first_counted_s") is not None]
    return {
        "runs": len(runs), "counted": len(ok),
        "first_counted_s": _summary([r["first_counted_s"] for r in ok]),
        "first_counted_heights_after_h0": _summary([r["first_counted_heights_after_h0"] for r in ok]),
        "first_counted_heights_after_boundary": _summary([r["first_counted_height"] - r["boundary"] for r in ok
                                                          if r.get("boundary")]),
        "at_or_after_boundary": sum(1 for r in ok if r.get("boundary") and r["first_counted_height"] >= r["boundary"]),
        "at_boundary": sum(1 for r in ok if r.get("boundary") and r["first_counted_height"] == r["boundary"]),
        "joiner_caught_up_s": _summary([r["joiner_caught_up_s"] for r in runs if r.get("joiner_caught_up_s")
                                        is not None]),
        "removed": sum(1 for r in runs if r.get("removed_at")),
        "network_heights_per_s": _summary([r["network_heights_per_s"] for r in runs if "network_heights_per_s" in r]),
        "join_committed_heights_after_h0": _summary([r["join_committed_height"] - r["h0"] for r in runs
                                                     if r.get("join_committed_height")]),
    }


# --- 2. catch-up against ledger size -----------------------------------------------------------------------

@dataclass
class GeneratedChain:
    """N certificates (JSON bytes by height) of a 4-member genesis, the newcomer's join committed at the tip."""

    genesis: Genesis
    blobs: dict[int, bytes]
    digest: str  # Chain.weights_digest() after the tip
    seconds: float = 0.0

    @property
    def height(self) -> int:
        return len(self.blobs)


def generate_chain(n: int, newcomer_address: str, epoch_length: int = CATCHUP_EPOCH) -> GeneratedChain:
    """Sign ``n`` decided heights as four honest members would (see the module docstring), checking each value
    against the generator's own chain before folding it."""
    if n < 2:
        raise ValueError("a chain of at least 2 heights")
    t0 = time.perf_counter()
    genesis = _genesis(epoch_length, "bench-catchup")
    cache = VerifiedCache()
    chain = genesis.chain(cache)
    keys = sorted(MEMBER_KEYS, key=lambda k: k.peer_id)
    threshold = genesis.params.similarity_threshold
    blobs: dict[int, bytes] = {}
    last_commit: tuple[Any, ...] = ()
    previous: tuple[int, bytes] | None = None
    for h in range(1, n + 1):
        entry = keys[h % len(keys)]
        query = sign(Query(entry=entry.peer_id, question=f"{Q} ({h})", nonce=h.to_bytes(16, "big"), max_tokens=32,
                           created_ms=h), entry)
        qid = query_id_of(query.envelope)
        answers = [sign(Answer(query_id=qid, peer=k.peer_id, model=MODEL, text="Paris", gen_ms=50 + h % 7), k)
                   for k in keys]
        vs = chain.validators_at(h)
        scores: tuple[Any, ...] = ()
        if previous is not None:
            scores = tuple(sign(ScoreVector(scorer=k.peer_id, height=previous[0], query_id=previous[1],
                                            scores=tuple((p.peer_id, 1000) for p in keys)), k).envelope
                           for k in keys)
        joins: tuple[Any, ...] = ()
        if h == n:
            joins = (sign(Join(chain_id=genesis.chain_id, peer_id=NEWCOMER_KEY.peer_id,
                               public_key=NEWCOMER_KEY.public_key, moniker="newcomer", address=newcomer_address,
                               model=MODEL, created_ms=n), NEWCOMER_KEY).envelope,)
        value = grouping.build_value(query.envelope, answers, [1000] * 6, [vs.weight_of(k.peer_id) for k in keys],
                                     threshold, validators_hash=vs.set_hash(),
                                     next_validators_hash=chain.validators_at(h + 1).set_hash(),
                                     chain_id=genesis.chain_id, scores=scores, joins=joins, last_commit=last_commit)
        reason = chain.check_extras(value, h, cache)
        if reason is not None:
            raise RuntimeError(f"generated height {h} is invalid: {reason}")
        vid = value.value_id()
        precommits = tuple(sign(Vote(chain_id=genesis.chain_id, type="precommit", height=h, round=0, value_id=vid,
                                     voter=k.peer_id), k) for k in keys)
        cert = build_certificate(genesis, h, 0, value, precommits, cache, validators=vs)
        blobs[h] = json.dumps(cert, sort_keys=True).encode()
        chain.apply(h, value)
        last_commit = tuple(p.envelope for p in precommits)
        previous = (h, qid)
    digest = chain.weights_digest()
    assert digest is not None
    return GeneratedChain(genesis, blobs, digest.hex(), round(time.perf_counter() - t0, 2))


class HeldLedger:
    """Stand-in for a serving peer's ``LedgerService``: the certificates by height as JSON bytes in memory (as
    ``dag.Ledger.answers`` holds them); ``certificate`` parses one as ``LedgerService.certificate`` does. No
    hashgraph runs, nothing is submitted."""

    def __init__(self, blobs: dict[int, bytes]) -> None:
        self.blobs = blobs
        self.rejects: Any = None
        self.on_certificate: Any = None
        self.on_refused: Any = None
        self.on_evidence: Any = None

    def highest_height(self) -> int:
        return max(self.blobs, default=0)

    def certificate(self, height: int) -> dict[str, Any] | None:
        blob = self.blobs.get(height)
        return None if blob is None else dict(json.loads(blob.decode("utf-8")))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    def submit_certificate(self, height: int, cert: dict[str, Any]) -> None:
        return None

    def submit_evidence(self, evidence: Any) -> None:
        return None

    def submit(self, tx: bytes, *, priority: bool = False) -> None:
        return None

    def handle(self, peer: str, signed: Any) -> None:
        return None

    def set_epoch_validators(self, epoch: int, validators: Any) -> None:
        return None

    def members(self) -> set[str]:
        return set()

    def key_of(self, peer: str) -> bytes | None:
        return None

    def statistics(self) -> dict[str, Any]:
        return {"highest_height": self.highest_height()}


@dataclass
class Servers:
    nodes: list[Node]
    restore_s: float
    addresses: list[PeerAddress] = field(default_factory=list)

    def dropped(self) -> int:
        return sum(n._catchup_limit.dropped for n in self.nodes)


@asynccontextmanager
async def serve(chain: GeneratedChain, servers: int = 4, rate_limit: str = "shipped") -> AsyncIterator[Servers]:
    """``servers`` genesis members, each restored from the chain's certificates (as a restarted peer replays its
    ledger) and serving catch-up requests on its own loopback transport."""
    held = HeldLedger(chain.blobs)
    nodes: list[Node] = []
    restore = 0.0
    async with trio.open_nursery() as nursery:
        for i, key in enumerate(MEMBER_KEYS[:servers]):
            transport = Transport(key, ("127.0.0.1", 0), {}, backoff_initial=0.05, backoff_max=0.5)
            await nursery.start(transport.run)
            t = time.perf_counter()
            node = Node(_config("shipped", f"peer{i}"), key, chain.genesis, ScriptedEngine({}, model_name=MODEL),
                        transport, ledger=held)  # type: ignore[arg-type]
            restore += time.perf_counter() - t
            if node.driver.chain.height != chain.height:
                raise RuntimeError(f"server {i} restored {node.driver.chain.height} of {chain.height} heights")
            if rate_limit == "off":
                node._catchup_limit = RateLimit(interval_s=0.0)
            await nursery.start(node.run)
            nodes.append(node)
        yield Servers(nodes, round(restore, 2), [PeerAddress(n.key.peer_id, f"127.0.0.1:{n.transport.listen_port}")
                                                 for n in nodes])
        nursery.cancel_scope.cancel()


async def newcomer_catch_up(genesis: Genesis, transport: Transport, servers: Sequence[PeerAddress], target: int,
                            digest: str, *, timeouts: str = "shipped", timeout_s: float = 36_000.0,
                            progress: bool = False) -> dict[str, Any]:
    """Start the newcomer's Node on ``transport`` and time it until its chain holds height ``target``."""
    rss0 = _rss_mib()
    cfg = _config(timeouts, "newcomer", servers, address=f"127.0.0.1:{transport.listen_port}")
    node = Node(cfg, NEWCOMER_KEY, genesis, ScriptedEngine({}, model_name=MODEL), transport)
    out: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        await nursery.start(node.run)
        next_report = t0 + 60
        next_sample = t0 + 10
        timeline: list[tuple[float, int]] = []  # (seconds, height) every 10 s
        first: float | None = None  # when the first height was folded (the first request waits for ticks)
        with trio.move_on_after(timeout_s) as scope:
            while node.driver.chain.height < target:
                await trio.sleep(0.005)
                if first is None and node.driver.chain.height >= 1:
                    first = time.perf_counter()
                if time.perf_counter() >= next_sample:
                    next_sample += 10
                    timeline.append((round(time.perf_counter() - t0, 1), node.driver.chain.height))
                if progress and time.perf_counter() >= next_report:
                    next_report += 60
                    h = node.driver.chain.height
                    print(f"    {time.perf_counter() - t0:.0f} s: height {h} ({h / (time.perf_counter() - t0):.1f}/s)",
                          file=sys.stderr, flush=True)
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        nursery.cancel_scope.cancel()
    chain = node.driver.chain
    got = chain.weights_digest()
    if first is not None and chain.height > 1 and t0 + seconds > first:
        out.update(first_height_s=round(first - t0, 2),
                   heights_per_s_after_first=round((chain.height - 1) / (t0 + seconds - first), 2))
    out.update(seconds=round(seconds, 2), heights=chain.height, heights_per_s=round(chain.height / seconds, 2),
               timed_out=scope.cancelled_caught, digest_equal=got is not None and got.hex() == digest,
               newcomer_cpu_s=round(cpu, 2), rss_before_mib=rss0, peak_rss_mib=_rss_mib(),
               rejected=dict(node.driver.rejected), wire_rejects=node.rejects.snapshot(),
               own_join_committed=chain.members is not None and NEWCOMER_KEY.peer_id in chain.members.joins,
               timeline=timeline)
    return out


def fold_check(chain: GeneratedChain) -> dict[str, Any]:
    """The certificates folded by a bare driver (parse, certificate precommits, ``Certified``: quorum, extras and
    grouping checked against its own chain, then applied), no wire: the speed of the checks alone."""
    genesis = chain.genesis
    verified = VerifiedCache()
    driver = Driver(NEWCOMER_KEY, genesis.chain(verified), DriverConfig(
        model=MODEL, chain_id=genesis.chain_id, threshold=genesis.params.similarity_threshold,
        tolerance=genesis.params.similarity_tolerance, timeouts=Timeouts(3000, 1000, 1000, 500)), verified=verified)
    driver.start(0)
    t0 = time.perf_counter()
    for h in range(1, chain.height + 1):
        cert = json.loads(chain.blobs[h].decode("utf-8"))
        value = value_of_certificate(cert)
        assert value is not None
        precommits = tuple(certificate_precommits(cert, driver.chain.key_of, genesis.chain_id))
        driver.handle(Certified(h, int(cert["round"]), value, precommits), h)
    seconds = time.perf_counter() - t0
    got = driver.chain.weights_digest()
    return {"seconds": round(seconds, 2), "heights": driver.chain.height,
            "heights_per_s": round(driver.chain.height / seconds, 1),
            "digest_equal": got is not None and got.hex() == chain.digest, "rejected": dict(driver.rejected)}


async def catchup_in_process(n: int, *, servers: int = 4, rate_limit: str = "shipped", timeouts: str = "tests",
                             timeout_s: float = 600.0) -> dict[str, Any]:
    """Generator, servers and newcomer in this one process (the smoke test's path; the CLI runs the servers in a
    child process)."""
    transport = Transport(NEWCOMER_KEY, ("127.0.0.1", 0), {}, backoff_initial=0.05, backoff_max=0.5)
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        chain = generate_chain(n, f"127.0.0.1:{transport.listen_port}")
        async with serve(chain, servers, rate_limit) as s:
            out = await newcomer_catch_up(chain.genesis, transport, s.addresses, chain.height, chain.digest,
                                          timeouts=timeouts, timeout_s=timeout_s)
            out.update(dropped=s.dropped(), restore_s=s.restore_s, generate_s=chain.seconds)
        nursery.cancel_scope.cancel()
    return out


async def _serve_main(args: argparse.Namespace) -> None:
    """Child process: generate, (fold-check,) restore the servers, print a ready line, serve until stdin closes,
    print the final counters."""
    chain = generate_chain(args.heights, args.newcomer_address)
    ready: dict[str, Any] = {"generate_s": chain.seconds, "digest": chain.digest, "heights": chain.height,
                             "certificate_bytes_mean": round(sum(map(len, chain.blobs.values())) / chain.height)}
    if args.fold_check:
        ready["fold_check"] = fold_check(chain)
    async with serve(chain, args.servers, args.rate_limit) as s:
        ready.update(restore_s=s.restore_s, servers=[asdict(a) for a in s.addresses], rss_mib=_rss_mib())
        print(json.dumps(ready), flush=True)
        await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
        served = {n.key.peer_id[:8]: n.transport.statistics().peers.get(NEWCOMER_KEY.peer_id) for n in s.nodes}
        print(json.dumps({"dropped": s.dropped(), "peak_rss_mib": _rss_mib(),
                          "sent_to_newcomer": sum(p.sent for p in served.values() if p is not None)}), flush=True)
        os._exit(0)  # nothing to clean up; skip tearing down four nodes' tasks


async def catchup_over_processes(n: int, *, servers: int = 4, rate_limit: str = "shipped",
                                 timeouts: str = "shipped", fold: bool = True, timeout_s: float = 36_000.0,
                                 progress: bool = True) -> dict[str, Any]:
    """The servers in a child process, the newcomer here: one catch-up of ``n`` heights."""
    transport = Transport(NEWCOMER_KEY, ("127.0.0.1", 0), {}, backoff_initial=0.05, backoff_max=0.5)
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        cmd = [sys.executable, str(Path(__file__).resolve()), "_serve", "--heights", str(n), "--servers", str(servers),
               "--rate-limit", rate_limit, "--newcomer-address", f"127.0.0.1:{transport.listen_port}"]
        if fold:
            cmd.append("--fold-check")
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdin is not None
        try:
            line = await trio.to_thread.run_sync(proc.stdout.readline)
            if not line:
                raise RuntimeError(f"the server process exited ({proc.wait()}) before it was ready")
            ready = json.loads(line)
            if progress:
                print(f"  servers ready: generated {n} heights in {ready['generate_s']} s, restored in "
                      f"{ready['restore_s']} s; the newcomer starts", file=sys.stderr, flush=True)
            genesis = _genesis(CATCHUP_EPOCH, "bench-catchup")
            addresses = [PeerAddress(**a) for a in ready["servers"]]
            out = await newcomer_catch_up(genesis, transport, addresses, n, ready["digest"], timeouts=timeouts,
                                          timeout_s=timeout_s, progress=progress)
            proc.stdin.close()
            final = json.loads(await trio.to_thread.run_sync(proc.stdout.readline) or "{}")
            await trio.to_thread.run_sync(proc.wait, 60)
        finally:
            if proc.poll() is None:  # the child this call started, by its own handle
                proc.kill()
                proc.wait()
        nursery.cancel_scope.cancel()
    out.update(servers=servers, rate_limit=rate_limit, timeouts=timeouts, dropped=final.get("dropped"),
               server_peak_rss_mib=final.get("peak_rss_mib"), sent_to_newcomer=final.get("sent_to_newcomer"),
               generate_s=ready["generate_s"], restore_s=ready["restore_s"],
               certificate_bytes_mean=ready["certificate_bytes_mean"], fold_check=ready.get("fold_check"))
    return out


# --- CLI ---------------------------------------------------------------------------------------------------

def _commit() -> str:
    """The tree measured: HEAD's commit, with ``+dirty`` if tracked files differ from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _merge(path: Path, section: str, key: str, value: Any) -> None:
    """Put ``value`` at ``[section][key]`` of the JSON file at ``path`` (other entries are kept)."""
    value = {"commit": _commit(), "load_average": [round(x, 2) for x in os.getloadavg()], **value}
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault("machine", {"python": sys.version.split()[0], "cpus": os.cpu_count()})
    data.setdefault(section, {})[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _command() -> str:
    return " ".join(["nice -n 10 .venv/bin/python", "bench/membership.py", *sys.argv[1:]])


def main_join(args: argparse.Namespace) -> None:
    for epoch in args.epochs:
        runs = []
        for k in range(args.runs):
            r = trio.run(functools.partial(join_run, epoch, pause_s=args.pause, timeout_s=args.timeout,
                                           timeouts=args.timeouts))
            runs.append(r)
            print(f"  epoch {epoch} run {k + 1}: h0 {r['h0']}, join committed at {r['join_committed_height']}, "
                  f"boundary {r['boundary']}, first counted vote at height {r.get('first_counted_height')} after "
                  f"{r.get('first_counted_s')} s (certificate {r['first_in_certificate_height']} / last commit "
                  f"{r['first_in_last_commit_height']}), joiner caught up after {r['joiner_caught_up_s']} s, "
                  f"network {r['network_heights_per_s']} heights/s, joiner removed at {r['removed_at']}", flush=True)
        summary = summarise_joins(runs)
        print(f"epoch {epoch}, nodes: {summary}")
        result: dict[str, Any] = {"command": _command(), "summary": summary, "runs": runs}
        if args.sim_seeds:
            sims = [join_sim(epoch, seed) for seed in range(args.sim_seeds)]
            result["sim"] = {"summary": summarise_joins(sims), "runs": sims}
            print(f"epoch {epoch}, simulator: {result['sim']['summary']}")
        if args.json:
            _merge(args.json, "join", f"epoch-{epoch}-pause-{args.pause:g}-{args.timeouts}", result)


def main_catchup(args: argparse.Namespace) -> None:
    for n in args.sizes:
        print(f"catch-up of {n} heights (servers {args.servers}, rate limit {args.rate_limit}, timeouts "
              f"{args.timeouts})", flush=True)
        r = trio.run(functools.partial(catchup_over_processes, n, servers=args.servers, rate_limit=args.rate_limit,
                                       timeouts=args.timeouts, fold=args.fold_check, timeout_s=args.timeout))
        r["command"] = _command()
        print(f"  {r['heights']} heights in {r['seconds']} s = {r['heights_per_s']} heights/s, digest equal "
              f"{r['digest_equal']}, requests dropped by the rate limit {r['dropped']}, newcomer peak RSS "
              f"{r['peak_rss_mib']} MiB (before {r['rss_before_mib']}), servers' {r['server_peak_rss_mib']} MiB; "
              f"fold check {r['fold_check']}", flush=True)
        if args.json:
            key = f"{n}-timeouts-{args.timeouts}-limit-{args.rate_limit}-servers-{args.servers}"
            _merge(args.json, "catchup", key, r)


def main() -> int:
    logging.getLogger("multillmn.transport").setLevel(logging.ERROR)  # links refused while peers start: expected
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    j = sub.add_parser("join", help="join -> first counted vote")
    j.add_argument("--epochs", type=int, nargs="+", default=[4, 8])
    j.add_argument("--runs", type=int, default=5)
    j.add_argument("--pause", type=float, default=0.3, help="seconds between a decision and the next question")
    j.add_argument("--timeouts", choices=("tests", "shipped"), default="tests")
    j.add_argument("--timeout", type=float, default=120.0, help="give up a run after this many seconds")
    j.add_argument("--sim-seeds", type=int, default=20, help="simulator runs per epoch length (0: none)")
    j.add_argument("--json", type=Path, default=DEFAULT_JSON)
    c = sub.add_parser("catchup", help="catch-up time against ledger size")
    c.add_argument("--sizes", type=int, nargs="+", default=[1000])
    c.add_argument("--servers", type=int, default=4, choices=range(1, 5))
    c.add_argument("--rate-limit", choices=("shipped", "off"), default="shipped")
    c.add_argument("--timeouts", choices=("tests", "shipped"), default="shipped")
    c.add_argument("--no-fold-check", dest="fold_check", action="store_false")
    c.add_argument("--timeout", type=float, default=36_000.0)
    c.add_argument("--json", type=Path, default=DEFAULT_JSON)
    s = sub.add_parser("_serve", help=argparse.SUPPRESS)
    s.add_argument("--heights", type=int, required=True)
    s.add_argument("--servers", type=int, default=4)
    s.add_argument("--rate-limit", default="shipped")
    s.add_argument("--newcomer-address", required=True)
    s.add_argument("--fold-check", action="store_true")
    args = parser.parse_args()
    if args.what == "join":
        main_join(args)
    elif args.what == "catchup":
        main_catchup(args)
    else:
        trio.run(_serve_main, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
