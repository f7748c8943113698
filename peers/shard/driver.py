"""The driving peer: generate through a chain of shard workers, re-planning when one fails.

The driver plans with :func:`peers.shard.planner.plan`, tells each chosen
worker which layers to ``load``, then for every token relays the activations
worker to worker (token ids in, hidden states along, the next token id back).
Each request has a deadline; a worker that dies (connection reset, EOF),
stalls (timeout) or breaks the protocol is marked failed, the planner runs
again on the remaining devices and the request is replayed as a prefill of
prompt + tokens generated so far, so the new shards rebuild their KV caches
(as Petals does). If no plan fits the survivors the query fails with
:class:`ShardingFailed`, which names the failures and the memory shortfall.

Batches (ADR 0019): :meth:`ShardDriver.generate_batch` answers several prompts
at once, left-padded with an attention mask, in micro-batches that run
through the shards as a pipeline (one micro-batch per shard by default); each
row's greedy tokens equal those it gets alone.

Emulated links (testnets): a :class:`peers.transport.LinkShaper` keyed by worker
peer id delays each request before it is sent and each reply after it arrives
(one-way delay, both directions); a frame it loses is resent after
:data:`RETRANSMIT_S`, as TCP would, so loss costs time, never the connection.
"""

from __future__ import annotations

import logging
import os
from collections import deque
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
import trio

from multillmn.identity import KeyPair, PeerId
from peers.secure import HandshakeError, SecureChannel, handshake
from peers.transport import LinkShaper
from peers.shard.planner import NoFeasiblePlan, Objective, Plan, Problem, Shard
from peers.shard.planner import plan as make_plan
from peers.shard.protocol import (
    MAX_BATCH,
    MAX_FRAME,
    MAX_REPLY_TENSOR,
    Request,
    Response,
    pack_request,
    unpack_response,
)
from peers.wire import RemoteProtocolError

__all__ = ["WorkerAddress", "WorkerFailed", "ShardingFailed", "DriverStats", "ShardDriver", "RETRANSMIT_S",
           "micro_batch_rows"]

log = logging.getLogger("multillmn.shard.driver")

RETRANSMIT_S = 0.2
"""Added per frame the link shaper loses: the frame is sent again after TCP's minimum timeout (Linux)."""


@dataclass(frozen=True)
class WorkerAddress:
    """Where the worker playing device ``name`` listens, and the peer id it must prove."""

    name: str
    host: str
    port: int
    peer_id: PeerId


class WorkerFailed(Exception):
    """A worker is unreachable, died, stalled or broke the protocol: re-plan without it."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"worker {name}: {reason}")
        self.name, self.reason = name, reason


class ShardingFailed(RuntimeError):
    """The query cannot be served: no plan fits the surviving workers, or a worker refused a request."""


class _Refused(Exception):
    """A live worker answered a step with an error (stale after a concurrent re-plan, or a real fault)."""


@dataclass
class DriverStats:
    """What happened so far; ``compute_ms[device]`` holds the recent busy times its worker reported."""

    replans: int = 0
    replayed_tokens: int = 0
    loads: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    failed_at: dict[str, float] = field(default_factory=dict)  # trio clock of each failure
    events: list[str] = field(default_factory=list)
    compute_ms: dict[str, deque[float]] = field(default_factory=dict)
    batches: deque[int] = field(default_factory=lambda: deque(maxlen=256))  # questions per generate_batch

    def record(self, device: str, compute_us: int) -> None:
        self.compute_ms.setdefault(device, deque(maxlen=256)).append(compute_us / 1000)


def micro_batch_rows(lengths: Sequence[int], limits: Sequence[int], parts: int, bytes_per_token: int,
                     max_bytes: int = MAX_REPLY_TENSOR, max_rows: int = MAX_BATCH) -> list[list[int]]:
    """Row indices of each micro-batch: ``parts`` contiguous groups of near-equal size, each cut
    further until ``rows x (longest prompt + largest limit) x bytes_per_token`` fits in ``max_bytes``
    (a replay's prefill is the longest message a group sends) and it has at most ``max_rows`` rows."""
    n = len(lengths)
    if n == 0:
        return []
    parts = max(1, min(parts, n))
    size = -(-n // parts)
    groups = [list(range(i, min(n, i + size))) for i in range(0, n, size)]
    out: list[list[int]] = []
    while groups:
        g = groups.pop(0)
        tokens = max(lengths[i] for i in g) + max(limits[i] for i in g)
        if len(g) > 1 and (len(g) > max_rows or len(g) * tokens * bytes_per_token > max_bytes):
            half = (len(g) + 1) // 2
            groups[:0] = [g[:half], g[half:]]
        else:
            out.append(g)
    return out


def _eos_set(eos_token_id: int | Sequence[int] | None) -> set[int]:
    return {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())


class _Conn:
    """One authenticated link to a worker; concurrent calls are matched to replies by id."""

    def __init__(self, name: str, chan: SecureChannel, shaper: LinkShaper | None = None) -> None:
        self.name, self.chan, self.shaper = name, chan, shaper
        self.pending: dict[int, trio.MemorySendChannel[Response]] = {}
        self.failure: str | None = None
        self.loaded: tuple[int, int] | None = None
        self._next = 0

    async def read_loop(self) -> None:
        try:
            while True:
                resp = unpack_response(await self.chan.receive())
                waiter = self.pending.pop(resp.id, None)
                if waiter is None:
                    raise RemoteProtocolError(f"reply to unknown request {resp.id}")
                waiter.send_nowait(resp)
        except trio.EndOfChannel:
            self.fail("closed the connection")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.fail(f"connection lost ({exc or type(exc).__name__})")
        except RemoteProtocolError as exc:
            self.fail(f"protocol error: {exc}")

    def fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
        for waiter in self.pending.values():
            waiter.close()
        self.pending.clear()

    async def _shape(self) -> None:
        """Emulated link conditions (testnets): the shaper's delay, plus a retransmission per lost frame."""
        if self.shaper is None:
            return
        extra = 0.0
        delay = self.shaper.plan(self.chan.remote_peer_id)
        while delay is None:
            extra += RETRANSMIT_S
            delay = self.shaper.plan(self.chan.remote_peer_id)
        if delay + extra > 0:
            await trio.sleep(delay + extra)

    async def call(self, req: Request, timeout: float) -> Response:
        if self.failure is not None:
            raise WorkerFailed(self.name, self.failure)
        rid = self._next
        self._next += 1
        req = replace(req, id=rid)
        send, recv = trio.open_memory_channel[Response](1)
        self.pending[rid] = send
        try:
            with trio.fail_after(timeout):
                await self._shape()
                await self.chan.send(pack_request(req))
                resp = await recv.receive()
                await self._shape()
                return resp
        except trio.TooSlowError:
            self.fail(f"no reply to {req.op} within {timeout:g} s")
            await trio.aclose_forcefully(self.chan.stream)
            raise WorkerFailed(self.name, self.failure or "timeout") from None
        except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.fail(f"connection lost ({exc or type(exc).__name__})")
            raise WorkerFailed(self.name, self.failure or "connection lost") from None
        finally:
            self.pending.pop(rid, None)


class ShardDriver:
    """Greedy generation through shard workers. Use :meth:`open` (it owns a nursery)."""

    def __init__(
        self,
        key: KeyPair,
        problem: Problem,
        workers: Sequence[WorkerAddress],
        nursery: trio.Nursery,
        *,
        objective: Objective = "latency",
        connect_timeout: float = 10.0,
        request_timeout: float = 30.0,
        load_timeout: float = 180.0,
        shaper: LinkShaper | None = None,
    ) -> None:
        names = {d.name for d in problem.devices}
        self.workers = {w.name: w for w in workers}
        if set(self.workers) != names:
            raise ValueError(f"workers {sorted(self.workers)} must match the problem's devices {sorted(names)}")
        self.key, self.problem, self.objective = key, problem, objective
        self.connect_timeout, self.request_timeout, self.load_timeout = connect_timeout, request_timeout, load_timeout
        self.shaper = shaper  # emulated delay / loss per worker peer id (testnets); None: none
        self.plan: Plan | None = None
        self.epoch = 0
        self.stats = DriverStats()
        self._conns: dict[str, _Conn] = {}
        self._nursery = nursery
        self._replan_lock = trio.Lock()
        self._connect_locks = {name: trio.Lock() for name in self.workers}

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        key: KeyPair,
        problem: Problem,
        workers: Sequence[WorkerAddress],
        *,
        objective: Objective = "latency",
        connect_timeout: float = 10.0,
        request_timeout: float = 30.0,
        load_timeout: float = 180.0,
        shaper: LinkShaper | None = None,
    ) -> AsyncIterator[ShardDriver]:
        """A driver whose connections live in a nursery closed on exit."""
        async with trio.open_nursery() as nursery:
            driver = cls(key, problem, workers, nursery, objective=objective, connect_timeout=connect_timeout,
                         request_timeout=request_timeout, load_timeout=load_timeout, shaper=shaper)
            try:
                yield driver
            finally:
                await driver.aclose()
                nursery.cancel_scope.cancel()

    async def aclose(self) -> None:
        for conn in self._conns.values():
            conn.fail("driver closed")
            await trio.aclose_forcefully(conn.chan.stream)
        self._conns.clear()

    def _event(self, text: str) -> None:
        log.info("%s", text)
        self.stats.events.append(text)

    # --- connections and plans -------------------------------------------------------

    async def _connect(self, name: str) -> _Conn:
        conn = self._conns.get(name)
        if conn is not None and conn.failure is None:
            return conn
        async with self._connect_locks[name]:  # one link per worker, even with concurrent generations
            conn = self._conns.get(name)
            if conn is not None and conn.failure is None:
                return conn
            return await self._dial(name)

    async def _dial(self, name: str) -> _Conn:
        w = self.workers[name]
        try:
            with trio.fail_after(self.connect_timeout):
                stream = await trio.open_tcp_stream(w.host, w.port)
            chan = await handshake(stream, self.key, w.peer_id, timeout=self.connect_timeout, max_frame=MAX_FRAME)
        except (OSError, trio.TooSlowError, HandshakeError) as exc:
            raise WorkerFailed(name, f"cannot connect to {w.host}:{w.port}: {exc or type(exc).__name__}") from None
        conn = _Conn(name, chan, self.shaper)
        self._nursery.start_soon(conn.read_loop)
        info = await conn.call(Request(0, "info"), self.request_timeout)
        n = self.problem.model.n_layers
        if not info.ok or info.n_layers != n:
            await trio.aclose_forcefully(chan.stream)
            raise WorkerFailed(name, f"serves a model of {info.n_layers} layers, the plan needs {n} ({info.error})")
        conn.loaded = info.range
        self._conns[name] = conn
        return conn

    def _mark_failed(self, exc: WorkerFailed) -> None:
        if exc.name not in self.stats.failures:
            self.stats.failures[exc.name] = exc.reason
            self.stats.failed_at[exc.name] = trio.current_time()
            self._event(f"worker {exc.name} failed: {exc.reason}")
        conn = self._conns.pop(exc.name, None)
        if conn is not None:
            conn.fail(exc.reason)
            self._nursery.start_soon(trio.aclose_forcefully, conn.chan.stream)

    async def wait_connected(self, timeout: float, names: Sequence[str] | None = None) -> dict[str, str]:
        """Dial every worker (or ``names``) until each answers ``info``, for at most ``timeout`` seconds.

        For start-up, when workers may still be starting: refused connections are retried. Workers
        still unreachable at the deadline are marked failed (plans leave them out until
        :meth:`revive`); returns them with the last reason.
        """
        async def one(name: str) -> None:
            while True:
                try:
                    await self._connect(name)
                    return
                except WorkerFailed as exc:
                    last[name] = exc.reason
                await trio.sleep(0.2)

        last: dict[str, str] = {}
        wanted = list(names if names is not None else self.workers)
        with trio.move_on_after(timeout):
            async with trio.open_nursery() as nursery:
                for name in wanted:
                    nursery.start_soon(one, name)
        down = {n: f"unreachable for {timeout:g} s: {last.get(n, 'no answer')}" for n in wanted if n not in self._conns}
        for name, reason in down.items():
            self._mark_failed(WorkerFailed(name, reason))
        return down

    def revive(self, older_than: float) -> list[str]:
        """Forget failures older than ``older_than`` seconds so the next plan may use those workers again.

        A worker that is still down fails again at once (connection refused) and is marked anew.
        Returns the revived names; the current plan is dropped if there are any.
        """
        now = trio.current_time()
        names = [n for n, t in self.stats.failed_at.items() if now - t >= older_than]
        for n in names:
            del self.stats.failures[n], self.stats.failed_at[n]
        if names:
            self.plan = None
            self._event(f"retrying workers {', '.join(sorted(names))}")
        return names

    async def ensure_plan(self) -> Plan:
        """Plan on the devices not failed so far and load the chosen layer ranges."""
        async with self._replan_lock:
            while self.plan is None:
                problem = self.problem.without(self.stats.failures)
                try:
                    plan = make_plan(problem, self.objective)
                except NoFeasiblePlan as exc:
                    why = "; ".join(f"{k}: {v}" for k, v in self.stats.failures.items()) or "none"
                    raise ShardingFailed(f"no shard plan fits the remaining workers (failed: {why}): {exc}") from None
                await self._install(plan)
        return self.plan

    async def adopt(self, plan: Plan) -> None:
        """Use ``plan`` (e.g. a baseline) instead of the planner's; :class:`WorkerFailed` if a worker fails."""
        async with self._replan_lock:
            self.plan = None
            failed = await self._install(plan)
            if failed:
                raise failed[0]

    async def _install(self, plan: Plan) -> list[WorkerFailed]:
        failed: list[WorkerFailed] = []
        async with trio.open_nursery() as nursery:  # workers load their shards in parallel
            for shard in plan.shards:
                nursery.start_soon(self._prepare, shard, failed)
        for failure in failed:
            self._mark_failed(failure)
        if not failed:
            self.plan = plan
            self.epoch += 1
            self._event(f"plan {self.epoch}: {plan} (predicted {plan.latency_ms:.1f} ms/token)")
        return failed

    async def _prepare(self, shard: Shard, failed: list[WorkerFailed]) -> None:
        try:
            conn = await self._connect(shard.device)
            if conn.loaded != (shard.start, shard.stop):
                resp = await conn.call(Request(0, "load", start=shard.start, stop=shard.stop), self.load_timeout)
                if not resp.ok:
                    raise WorkerFailed(shard.device, f"cannot load {shard}: {resp.error}")
                conn.loaded = (shard.start, shard.stop)
                self.stats.loads += 1
        except WorkerFailed as exc:
            failed.append(exc)

    # --- generation ----------------------------------------------------------------------

    async def step_rows(self, session: str, x: torch.Tensor, pos: int, plan: Plan,
                        mask: torch.Tensor | None = None) -> list[int]:
        """Run token ids ``x`` ``(rows, q)`` at ``pos`` through ``plan``; each row's next greedy token.

        ``pos`` 0 is a prefill from scratch, with ``mask`` the left padding of a batch (None: none).
        """
        rows, q = int(x.shape[0]), int(x.shape[1])
        op: Literal["prefill", "decode"] = "prefill" if pos == 0 else "decode"
        for i, shard in enumerate(plan.shards):
            last = i == len(plan.shards) - 1
            conn = await self._connect(shard.device)
            req = Request(0, op, session=session, pos=pos, x=x, want="token" if last else "hidden", mask=mask)
            resp = await conn.call(req, self.request_timeout)
            if not resp.ok:
                raise _Refused(f"worker {shard.device} refused {op} at position {pos}: {resp.error}")
            self.stats.record(shard.device, resp.compute_us)
            y = resp.x
            if y is None or (last and (y.dtype != torch.int64 or tuple(y.shape) != (rows,) or int(y.min()) < 0)) or (
                not last and (y.dtype != torch.float32 or y.dim() != 3 or tuple(y.shape[:2]) != (rows, q))
            ):
                got = None if y is None else (tuple(y.shape), y.dtype)
                raise WorkerFailed(shard.device, f"bad {op} output {got}")
            x = y
        return [int(t) for t in x]

    async def generate(
        self,
        prompt: Sequence[int],
        max_new_tokens: int,
        *,
        eos_token_id: int | Sequence[int] | None = None,
        on_token: Callable[[int, int], None] | None = None,
        stop: Callable[[int], bool] | None = None,
    ) -> list[int]:
        """Greedy new tokens for ``prompt``, surviving worker failures by re-planning and replaying.

        Ends after ``max_new_tokens``, an EOS token or a token for which ``stop`` is true (kept).
        ``on_token(i, token)`` is called as the ``i``-th token arrives. A batch of one row.
        """
        if not prompt:
            raise ValueError("empty prompt")
        if max_new_tokens < 1:
            return []
        row_token = None if on_token is None else (lambda _row, i, token: on_token(i, token))
        return (await self._generate_rows([prompt], [max_new_tokens], _eos_set(eos_token_id), stop, 0,
                                          row_token))[0]

    async def generate_batch(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int | Sequence[int],
        *,
        eos_token_id: int | Sequence[int] | None = None,
        stop: Callable[[int], bool] | None = None,
        pad_token_id: int = 0,
        micro_batches: int | None = None,
    ) -> list[list[int]]:
        """Greedy new tokens for each prompt, as :meth:`generate` gives them alone (ADR 0019).

        The prompts are cut into ``micro_batches`` (default: one per shard of the plan) contiguous
        groups, fewer rows each if a group's hidden states would not fit in a frame
        (:func:`micro_batch_rows`). Each group is one left-padded batch (one session, its padding
        mask sent with the prefill, finished rows fed ``pad_token_id``, as ``generate`` does) and the
        groups run concurrently, so while one group's step is on a later shard the next group's is
        on an earlier one: the shards work as a pipeline. A worker failure re-plans and replays the
        group as one padded prefill of its prompts and the columns fed so far.
        """
        n = len(prompts)
        limits = [max_new_tokens] * n if isinstance(max_new_tokens, int) else list(max_new_tokens)
        if len(limits) != n:
            raise ValueError(f"{n} prompts but {len(limits)} token limits")
        if any(not p for p in prompts):
            raise ValueError("empty prompt")
        if n == 0:
            return []
        eos = _eos_set(eos_token_id)
        plan = await self.ensure_plan()
        per_token = max(self.problem.model.boundary_bytes)
        groups = micro_batch_rows([len(p) for p in prompts], limits, micro_batches or len(plan.shards), per_token)
        out: list[list[int]] = [[] for _ in range(n)]
        errors: list[Exception] = []

        async def run(rows: list[int], scope: trio.CancelScope) -> None:
            try:
                got = await self._generate_rows([prompts[i] for i in rows], [max(1, limits[i]) for i in rows],
                                                eos, stop, pad_token_id)
            except Exception as exc:  # one group failing fails the batch: stop the others
                errors.append(exc)
                scope.cancel()
                return
            for i, tokens in zip(rows, got):
                out[i] = tokens

        async with trio.open_nursery() as nursery:
            for rows in groups:
                nursery.start_soon(run, rows, nursery.cancel_scope)
        if errors:
            raise errors[0]
        self.stats.batches.append(n)
        return out

    async def _generate_rows(self, prompts: Sequence[Sequence[int]], limits: Sequence[int], eos: set[int],
                             stop: Callable[[int], bool] | None, pad: int,
                             on_token: Callable[[int, int, int], None] | None = None) -> list[list[int]]:
        """One micro-batch of :meth:`generate_batch` (or :meth:`generate`'s one row): a left-padded batch in
        one session, each row ending at its limit (>= 1), an EOS or a ``stop`` token; ``on_token(row, i,
        token)`` as row ``row``'s ``i``-th token arrives."""
        rows = len(prompts)
        width = max(len(p) for p in prompts)
        padded = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], dtype=torch.int64)
        mask = None if all(len(p) == width for p in prompts) else torch.tensor(
            [[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.int64)
        session = os.urandom(8).hex()
        tokens: list[list[int]] = [[] for _ in range(rows)]
        fed: list[list[int]] = []  # the column fed at each decode step (a finished row gets the pad)
        done = [False] * rows
        fresh = True
        budget = len(self.problem.devices) + 1
        while not all(done):
            plan = await self.ensure_plan()
            epoch = self.epoch
            try:
                if fresh:
                    cols = torch.tensor(fed, dtype=torch.int64).T if fed else torch.empty((rows, 0), dtype=torch.int64)
                    full_mask = None if mask is None else torch.cat(
                        [mask, torch.ones((rows, len(fed)), dtype=torch.int64)], dim=1)
                    nxt = await self.step_rows(session, torch.cat([padded, cols], dim=1), 0, plan, full_mask)
                    if fed:
                        self.stats.replayed_tokens += rows * (width + len(fed))
                    fresh = False
                else:
                    last = torch.tensor([fed[-1]], dtype=torch.int64).T
                    nxt = await self.step_rows(session, last, width + len(fed) - 1, plan)
            except WorkerFailed as exc:
                budget -= 1
                if budget < 0:
                    raise ShardingFailed(f"gave up after {len(self.problem.devices) + 1} re-plans: {exc}") from None
                self._mark_failed(exc)
                async with self._replan_lock:
                    if self.epoch == epoch:
                        self.plan = None
                        self.stats.replans += 1
                fresh = True
                continue
            except _Refused as exc:
                if self.epoch == epoch:
                    raise ShardingFailed(str(exc)) from None
                fresh = True  # another generation re-planned meanwhile: replay on the new plan
                continue
            column = []
            for r, token in enumerate(nxt):
                if done[r]:
                    column.append(pad)
                    continue
                tokens[r].append(token)
                column.append(token)
                if on_token is not None:
                    on_token(r, len(tokens[r]) - 1, token)
                if token in eos or (stop is not None and stop(token)) or len(tokens[r]) >= limits[r]:
                    done[r] = True
            fed.append(column)
        await self._reset(session)
        return tokens

    async def _reset(self, session: str) -> None:
        """Free the session on the current shards (best effort)."""
        if self.plan is None:
            return
        for shard in self.plan.shards:
            conn = self._conns.get(shard.device)
            if conn is not None and conn.failure is None:
                try:
                    await conn.call(Request(0, "reset", session=session), min(self.request_timeout, 5.0))
                except WorkerFailed:
                    pass

    async def timed_generate(self, prompt: Sequence[int], max_new_tokens: int) -> tuple[list[int], list[float]]:
        """Like :meth:`generate`, also returning the wall time of each token in ms (first = prefill)."""
        stamps: list[float] = []
        t0 = time.perf_counter()

        def mark(_i: int, _t: int) -> None:
            stamps.append(time.perf_counter())

        tokens = await self.generate(prompt, max_new_tokens, on_token=mark)
        times = [(b - a) * 1000 for a, b in zip([t0, *stamps], stamps)]
        return tokens, times

