"""Shard workers for tests: two real worker processes on loopback, stopped afterwards."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from multillmn.identity import KeyPair, PeerId
from peers.shard.worker import WorkerProcess, reap, spawn_worker, wait_ready


@contextmanager
def shard_workers(model_dir: Path, directory: Path, driver: PeerId, *, seed: int,
                  layers: Mapping[str, tuple[int, int]] | None = None) -> Iterator[dict[str, WorkerProcess]]:
    """Workers ``a`` and ``b`` (keys from ``seed``, ``seed + 1``) that accept ``driver``; their output goes
    to ``directory/workers.log``. ``layers`` preloads a layer range per worker."""
    procs = []
    with open(directory / "workers.log", "w") as log:
        try:
            for i, name in enumerate("ab"):
                KeyPair.from_seed(bytes([seed + i]) * 32).save(directory / f"{name}.pem")
                procs.append(spawn_worker(model_dir, directory / f"{name}.pem", driver,
                                          layers=(layers or {}).get(name), stderr=log))
            yield {name: wait_ready(p, timeout=120) for name, p in zip("ab", procs)}
        finally:
            for p in procs:
                reap(p, kill=True)
