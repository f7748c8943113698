"""The peer's model at work: the questions the driver asks it to answer, in batches (ADR 0019).

:class:`Answerer` owns the queue of :class:`~consensus.driver.Generate` effects and the task that
feeds them to the engine in worker threads; each answer goes back to the driver as ``Generated``
(or ``GenerationFailed``) through the node's ``handle``, always in the trio thread.

* An engine with ``serve`` (a real model, :meth:`peers.engine.ModelEngine.serve`) batches
  continuously (``[model] batching = "continuous"``, the default): the waiting questions start a
  batch, questions that arrive while it runs join it between two decode steps, up to ``[model]
  max_batch`` rows, each answer leaves as soon as its row ends, and a question decided meanwhile
  leaves the batch unanswered (addendum 5). Its "answered" log record's ``batch`` is the rows
  running once it joined.
* Otherwise the first waiting question and what else waits (without blocking), up to ``max_batch``,
  go to ``answer_batch`` together; questions that arrive meanwhile form the next batch. A batch of
  one, and every question when ``max_batch = 1``, is answered by ``engine.answer`` as before
  batching existed.

Decided or expired questions are skipped; fault-injection (fabricated) replies leave at once;
slowed answers (fault injection) leave ``slowdown - 1`` times their generation time later.
"""

from __future__ import annotations

import collections
import itertools
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import trio

from consensus.driver import DriverInput, Generate, GenerationFailed, Generated
from multillmn.logs import fields
from peers.engine import AnswerEngine, Reply, answer_all
from peers.metrics import NodeMetrics

__all__ = ["Answerer", "GENERATION_QUEUE"]

log = logging.getLogger("multillmn.node")

GENERATION_QUEUE = 256
"""Questions waiting for the model; one more is dropped (and logged), the driver's grace covers it."""


class Answerer:
    """Answers the driver's ``Generate`` effects with ``engine``; see the module docstring.

    ``pending(query_id)`` says whether the query still waits for an answer (its arrival time in ms,
    or None once decided or expired), ``handle`` feeds a result to the driver, ``now`` is the
    node's clock in ms and ``spawn`` starts a task in the node's nursery. ``continuous=False``
    (``[model] batching = "batches"``) uses batches even for an engine that can serve.
    """

    def __init__(self, engine: AnswerEngine, max_batch: int, pending: Callable[[bytes], int | None],
                 handle: Callable[[DriverInput], None], now: Callable[[], int], metrics: NodeMetrics,
                 spawn: Callable[..., None], continuous: bool = True) -> None:
        self._engine = engine
        self._continuous = continuous
        self._max_batch = max(1, int(max_batch))
        self._pending = pending
        self._handle = handle
        self._now = now
        self._metrics = metrics
        self._spawn = spawn
        self._tx, self._rx = trio.open_memory_channel[Generate](GENERATION_QUEUE)
        self.batch_sizes: Counter[int] = Counter()  # questions per model call (or joining at once) -> calls
        self.rows_joined: Counter[int] = Counter()  # continuous batching: rows running once a question joined

    def submit(self, e: Generate) -> None:
        """Queue a question for the model (never blocks; a full queue drops it, logged)."""
        try:
            self._tx.send_nowait(e)
        except trio.WouldBlock:
            log.warning("question dropped: the model's queue is full", extra=fields(query=e.query_id.hex()[:12]))

    def status(self) -> dict[str, Any]:
        """``GET /v1/status``'s ``generation`` object."""
        return {"batches": sum(self.batch_sizes.values()),
                "answered": sum(k * n for k, n in self.batch_sizes.items()),
                "batch_sizes": {str(k): n for k, n in sorted(self.batch_sizes.items())},
                "rows_joined": {str(k): n for k, n in sorted(self.rows_joined.items())}}

    async def run(self) -> None:
        serve = getattr(self._engine, "serve", None) if self._continuous else None
        async for first in self._rx:
            batch = self._waiting(first, self._max_batch)
            if not batch:
                continue
            if serve is not None and self._max_batch > 1:
                await self._serve(serve, batch)
            else:
                await self._answer(batch)

    def _waiting(self, first: Generate | None, room: int) -> list[Generate]:
        """``first`` and the questions already queued (without blocking), at most ``room``: decided or
        expired ones skipped, fabricated replies sent at once."""
        batch: list[Generate] = []
        e = first
        while len(batch) < room:
            if e is None:
                try:
                    e = self._rx.receive_nowait()
                except trio.WouldBlock:
                    break
            if self._pending(e.query_id) is None:
                pass  # decided or expired meanwhile
            elif e.fabricated is not None:
                self._handle(Generated(e.query_id, e.fabricated, 0))
            else:
                batch.append(e)
            e = None
        return batch

    async def _answer(self, batch: list[Generate]) -> None:
        """One ``answer_batch`` (``answer`` for a single question) in a worker thread."""
        started = self._now()
        waited = {g.query_id: started - arrived for g in batch if (arrived := self._pending(g.query_id)) is not None}
        try:
            if len(batch) == 1:
                replies = [await trio.to_thread.run_sync(self._engine.answer, batch[0].question,
                                                         batch[0].max_tokens, abandon_on_cancel=True)]
            else:
                questions, limits = [g.question for g in batch], [g.max_tokens for g in batch]
                replies = await trio.to_thread.run_sync(answer_all, self._engine, questions, limits,
                                                        abandon_on_cancel=True)
        except Exception as exc:  # e.g. a sharded model whose workers are gone: skip them, stay up
            for g in batch:
                self._failed(g, exc)
            return
        self.batch_sizes[len(batch)] += 1  # at most [model] max_batch keys
        done = list(zip(batch, replies, strict=True))
        slowest = max(g.slowdown for g in batch)
        for slowed in (False, True):  # fault injection: slowed answers leave after the others
            if slowed and slowest > 1:
                await trio.sleep((slowest - 1) * max(r.seconds for _, r in done))
            for g, reply in done:
                if (g.slowdown > 1) == slowed:
                    self._answered(g, reply, len(batch), started, waited.get(g.query_id))

    async def _serve(self, serve: Callable[..., None], first: list[Generate]) -> None:
        """Continuous batching: ``engine.serve`` in a worker thread until no question is left running.

        The worker asks for more questions and hands back each answer through the trio thread
        (``trio.from_thread``), so the queue, the driver and this object's tables are only ever
        touched there.
        """
        keys = itertools.count()
        # key -> question, joined at (ms), its wait before joining (ms), rows running once it joined
        running: dict[int, tuple[Generate, int, int | None, int]] = {}
        start: list[Generate] = list(first)
        gone: collections.deque[int] = collections.deque()  # keys of running questions decided meanwhile

        def join(batch: Sequence[Generate]) -> list[tuple[int, str, int]]:  # trio thread
            now, out, rows = self._now(), [], len(running) + len(batch)
            for g in batch:
                key = next(keys)
                arrived = self._pending(g.query_id)
                running[key] = (g, now, None if arrived is None else now - arrived, rows)
                out.append((key, g.question, g.max_tokens))
            if batch:
                self.batch_sizes[len(batch)] += 1
                self.rows_joined[rows] += len(batch)  # at most [model] max_batch keys
            return out

        def more(room: int) -> list[tuple[int, str, int]]:  # worker thread
            def take() -> list[tuple[int, str, int]]:
                for key in [k for k, (g, *_) in running.items() if self._pending(g.query_id) is None]:
                    del running[key]  # decided or expired: its row leaves (before the next step)
                    gone.append(key)
                batch = start[:room] if start else self._waiting(None, room)
                del start[:len(batch)]
                return join(batch)
            return trio.from_thread.run_sync(take)

        def dropped() -> list[int]:  # worker thread; no trio round trip (a deque's pops are atomic)
            out = []
            while gone:
                out.append(gone.popleft())
            return out

        def done(key: int, reply: Reply) -> None:  # worker thread
            def finish() -> None:
                if key not in running:
                    return  # decided while its last step ran
                g, joined, waited, rows = running.pop(key)
                if g.slowdown > 1:  # fault injection: a slowed answer leaves later
                    self._spawn(self._answer_later, g, reply, rows, joined, waited)
                else:
                    self._answered(g, reply, rows, joined, waited)
            trio.from_thread.run_sync(finish)

        try:
            await trio.to_thread.run_sync(serve, more, done, self._max_batch, dropped, abandon_on_cancel=True)
        except Exception as exc:
            for g, *_ in running.values():
                self._failed(g, exc)
            running.clear()

    async def _answer_later(self, g: Generate, reply: Reply, rows: int, started: int, waited: int | None) -> None:
        await trio.sleep((g.slowdown - 1) * reply.seconds)
        self._answered(g, reply, rows, started, waited)

    def _answered(self, g: Generate, reply: Reply, rows: int, started: int, waited: int | None) -> None:
        log.info("answered", extra=fields(query=g.query_id.hex()[:12], text=reply.text,
                                          gen_ms=int(reply.seconds * 1000), batch=rows,
                                          started_ms=started, waited_ms=waited))
        self._metrics.generated(reply.seconds)
        self._handle(Generated(g.query_id, reply.text, int(g.slowdown * reply.seconds * 1000)))

    def _failed(self, g: Generate, exc: Exception) -> None:
        log.warning("could not answer", extra=fields(query=g.query_id.hex()[:12], error=str(exc)))
        self._handle(GenerationFailed(g.query_id, str(exc)))
