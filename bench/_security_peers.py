"""The security bench's peers (four in-process runners, peer3 the attacker) and its result rows."""

from __future__ import annotations

import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from peers.node import Node
from tests.conftest import make_net
from tests.test_ledger_integration import Cluster, _Running
from tests.test_node import Q, honest


DEPTHS = (1010, 100_000)
ATTACKER = 3
CROSS_CHAIN_POST = "another chain's certificate (same keys) for the last height"
KNOWN_OPEN: set[str] = set()
"""Attacks this bench tries that are not refused yet (reported, see docs/benchmarks.md). The cross-chain
replays were, until votes and values signed their chain id."""


@dataclass
class Row:
    """One attack class's result."""

    name: str
    tried: int = 0
    refused: int = 0
    crashed: int = 0
    lost: int = 0
    seconds: float = 0.0
    not_refused: list[dict[str, str]] = field(default_factory=list)  # {"attack", "why"}
    notes: list[str] = field(default_factory=list)

    def attempt(self, name: str, refused: bool, why: str = "") -> None:
        self.tried += 1
        if refused:
            self.refused += 1
        else:
            self.not_refused.append({"attack": name, "why": why})


# --- the peers ---------------------------------------------------------------------------------


def describe(exc: BaseException) -> str:
    """The first leaf of ``exc`` (through exception groups), with where it was raised."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    frames = traceback.extract_tb(exc.__traceback__)[-3:]
    where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))
    return f"{type(exc).__name__}: {exc} at {where}"


class Peers(Cluster):
    """The test cluster, where a peer whose tasks raise is recorded as crashed instead of ending the run."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.crashes: list[str] = []
        self.held: dict[int, int] = {}  # unordered events with transactions a peer keeps for good (never gossiped)

    async def _run(self, run: _Running, transport: Any, *,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        started = False
        try:
            with run.scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(transport.run)
                    await nursery.start(run.node.run)
                    started = True
                    task_status.started()
        except Exception as exc:  # a peer that raises is down: what this bench counts
            self.crashes.append(f"{run.node.cfg.moniker}: {describe(exc)}"[:1200])
            if not started:
                task_status.started()
        finally:
            run.done.set()

    def node(self, i: int) -> Node:
        return self.running[i].node

    def alive(self) -> list[int]:
        return [i for i, r in sorted(self.running.items()) if not r.done.is_set()]

    async def restart(self, i: int) -> bool:
        try:
            await self.start(i)
        except Exception as exc:  # a peer that cannot restart from its store is down
            self.crashes.append(f"peer{i} restart: {describe(exc)}"[:1200])
            return False
        return True


@asynccontextmanager
async def peers(dir: Path) -> AsyncIterator[Peers]:
    net = make_net([1] * 4)
    async with trio.open_nursery() as nursery:
        c = Peers(nursery, net, honest(4), dir)
        for i in range(4):
            await c.start(i)
        yield c
        nursery.cancel_scope.cancel()


def _ledger_of(node: Node) -> Any:
    assert node.ledger is not None
    return node.ledger


def _stats(node: Node) -> dict[str, Any]:
    return dict(_ledger_of(node).statistics())


async def settle(c: Peers, timeout: float = 30) -> bool:
    """Wait until every running ledger has ordered everything and all agree (state hash, heights)."""
    with trio.move_on_after(timeout):
        while True:
            nodes = [c.node(i) for i in c.alive()]
            stats = [_stats(n) for n in nodes]
            if (all(s["pending_transactions"] == 0 and s["unordered_events_with_transactions"] <= c.held.get(i, 0)
                    for i, s in zip(c.alive(), stats))
                    and len({s["state_hash"] for s in stats}) == 1
                    and len({tuple(s["certified_heights"]) for s in stats}) == 1
                    and len({n.height for n in nodes}) == 1):
                return True
            await trio.sleep(0.05)
    return False


async def decide(c: Peers, entry: int, timeout: float = 60) -> bool:
    try:
        with trio.fail_after(timeout):
            await c.node(entry).submit(Q)
    except Exception:  # QueryFailed or TooSlowError: the caller reports it
        return False
    return True


def served(c: Peers) -> dict[tuple[int, int], str | None]:
    """(peer, height) -> the value id each running peer serves for every height any of them decided."""
    top = max(c.node(i).height for i in c.alive())
    out: dict[tuple[int, int], str | None] = {}
    for i in c.alive():
        for h in range(1, top + 1):
            cert = c.node(i).certificate(h)
            out[i, h] = cert.get("value_id") if cert is not None else None
    return out


def lost(before: dict[tuple[int, int], str | None], c: Peers) -> int:
    now = served(c)
    return sum(1 for key, vid in before.items() if vid is not None and key in now and now[key] != vid)
