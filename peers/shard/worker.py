"""A shard worker: one process ("device") serving a layer range over authenticated links.

Run as ``python -m peers.shard.worker --model-dir DIR --key KEY.pem --allow PEER_ID`` (or
``--model smollm2`` to use the peer's model cache);
it prints ``READY <port> <peer_id>`` on stdout once it listens. Only the allowed
driving peers pass the handshake (:func:`peers.secure.handshake`). Per
connection three tasks run: the reader validates requests
(:mod:`peers.shard.protocol`), one compute task per worker runs them in order
in a thread (the device is busy with one shard step at a time), and the sender
replies. Sessions (one KV cache per sequence) live until ``reset``, a new
``load`` or eviction of the oldest beyond ``max_sessions``.

Emulating a slower device or link (for :mod:`bench.shard_latency`):
``slowdown`` keeps the device busy (sleeping, device held) until ``slowdown x``
the CPU time of each step has passed; ``send_delay_ms`` and ``bandwidth_mbps`` delay
each reply on the send path: the link is busy for ``bytes / bandwidth`` and
the reply arrives ``send_delay_ms`` later.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import select
import signal
import subprocess
import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import trio

from multillmn.identity import KeyPair, PeerId, is_peer_id
from peers.llm.head import limit_blas_threads
from peers.secure import HandshakeError, SecureChannel, handshake
from peers.shard.model import ShardError, ShardRunner
from peers.shard.protocol import (
    MAX_FRAME,
    MAX_REPLY_TENSOR,
    ProtocolError,
    Request,
    Response,
    pack_response,
    unpack_request,
)
from peers.wire import RemoteProtocolError

__all__ = ["WorkerConfig", "ShardWorker", "WorkerProcess", "spawn_worker", "wait_ready", "reap", "main"]

log = logging.getLogger("multillmn.shard.worker")


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker serves and how it emulates its device and link."""

    model_dir: Path
    key: KeyPair
    allowed: frozenset[PeerId]
    host: str = "127.0.0.1"
    port: int = 0
    threads: int = 1
    layers: tuple[int, int] | None = None  # load this range at start
    max_sessions: int = 16
    slowdown: float = 1.0
    send_delay_ms: float = 0.0
    bandwidth_mbps: float = 0.0  # 0 = unlimited

    def validate(self) -> None:
        if not self.allowed:
            raise ValueError("a worker needs at least one allowed driver peer id (--allow)")
        if self.threads < 1 or self.max_sessions < 1:
            raise ValueError("threads and max_sessions must be >= 1")
        if not self.slowdown >= 1.0:
            raise ValueError(f"slowdown must be >= 1, got {self.slowdown}")
        if not self.send_delay_ms >= 0 or not self.bandwidth_mbps >= 0:
            raise ValueError("send_delay_ms and bandwidth_mbps must be >= 0")


@dataclass
class _Job:
    req: Request
    reply: trio.MemorySendChannel[bytes]


@dataclass
class ShardWorker:
    """The serving state of one worker: its runner, sessions and request queue."""

    config: WorkerConfig
    runner: ShardRunner | None = None
    sessions: OrderedDict[str, Any] = field(default_factory=OrderedDict)
    served: int = 0

    def __post_init__(self) -> None:
        self._jobs_send, self._jobs_recv = trio.open_memory_channel[_Job](math.inf)
        self._n_layers, self._model_type = _read_config(self.config.model_dir)

    # --- compute (in a thread) ---------------------------------------------------

    def _load(self, start: int, stop: int) -> int:
        t0 = time.perf_counter()
        self.runner = None
        self.sessions.clear()
        self.runner = ShardRunner(self.config.model_dir, (start, stop))
        return max(1, round((time.perf_counter() - t0) * 1000))

    def _step(self, req: Request) -> Response:
        runner = self.runner
        if runner is None:
            return Response(req.id, False, error="no layers loaded: send load first")
        if req.op == "prefill" or req.session not in self.sessions:
            if req.op == "decode":
                return Response(req.id, False, error=f"unknown session {req.session!r}: prefill first")
            self.sessions[req.session] = runner.new_state()
            while len(self.sessions) > self.config.max_sessions:
                self.sessions.popitem(last=False)
        self.sessions.move_to_end(req.session)
        state = self.sessions[req.session]
        if req.want != "hidden" and not runner.is_last:
            return Response(req.id, False, error=f"shard {runner.layer_range} is not the last: it returns hidden states")
        if req.want == "hidden" and runner.is_last:
            return Response(req.id, False, error=f"shard {runner.layer_range} is the last: ask for token or logits")
        assert req.x is not None
        t0 = time.perf_counter()
        out = runner.forward(req.x, req.pos, last_only=runner.is_last, state=state, mask=req.mask)
        if req.want == "token":
            out = out[:, -1, :].argmax(dim=-1).to(torch.int64)
        elif req.want == "logits":
            out = out[:, -1, :].contiguous()
        size = out.numel() * out.element_size()
        if size > MAX_REPLY_TENSOR:
            self.sessions.pop(req.session, None)  # its cache now holds a step the driver never saw
            return Response(req.id, False, error=f"a reply of {size} bytes exceeds the frame limit: send fewer rows")
        return Response(req.id, True, x=out, compute_us=round((time.perf_counter() - t0) * 1e6))

    def _handle(self, req: Request) -> Response:
        try:
            if req.op == "info":
                rng = None if self.runner is None else self.runner.layer_range
                return Response(req.id, True, range=rng, n_layers=self._n_layers, model_type=self._model_type)
            if req.op == "load":
                if req.stop > self._n_layers:
                    return Response(req.id, False, error=f"load [{req.start}:{req.stop}) beyond {self._n_layers} layers")
                ms = self._load(req.start, req.stop)
                return Response(req.id, True, range=(req.start, req.stop), load_ms=ms)
            if req.op == "reset":
                self.sessions.pop(req.session, None)
                return Response(req.id, True)
            return self._step(req)
        except ShardError as exc:
            return Response(req.id, False, error=str(exc))
        except Exception as exc:  # never let one request kill the device
            log.exception("request %s failed", req.op)
            return Response(req.id, False, error=f"{req.op} failed: {type(exc).__name__}: {exc}")

    # --- I/O -------------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled; ``task_status.started(port)``."""
        cfg = self.config
        cfg.validate()
        if cfg.layers is not None:
            await trio.to_thread.run_sync(self._load, *cfg.layers)
        listeners = await trio.open_tcp_listeners(cfg.port, host=cfg.host)
        port = int(listeners[0].socket.getsockname()[1])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._compute_loop)
            await nursery.start(trio.serve_listeners, self._serve, listeners)
            task_status.started(port)

    async def _compute_loop(self) -> None:
        async for job in self._jobs_recv:
            t0, cpu0 = time.perf_counter(), time.process_time()
            resp = await trio.to_thread.run_sync(self._handle, job.req)
            if job.req.op in ("prefill", "decode") and resp.ok:
                if self.config.slowdown > 1.0:
                    # emulate a device `slowdown` times slower: busy for slowdown x the CPU time
                    # the step needed (CPU time, not wall time, so waiting for a shared core
                    # is not amplified)
                    cpu = (time.process_time() - cpu0) / self.config.threads
                    await trio.sleep(max(0.0, self.config.slowdown * cpu - (time.perf_counter() - t0)))
                # report the whole time the device was busy (with the emulated slowdown)
                resp = replace(resp, compute_us=round((time.perf_counter() - t0) * 1e6))
            self.served += 1
            try:
                job.reply.send_nowait(pack_response(resp))
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass  # the connection went away meanwhile

    async def _serve(self, stream: trio.SocketStream) -> None:
        try:
            chan = await handshake(stream, self.config.key, None, allowed=self.config.allowed, max_frame=MAX_FRAME)
        except HandshakeError as exc:
            log.warning("refused a connection: %s", exc)
            return
        replies_send, replies_recv = trio.open_memory_channel[bytes](math.inf)
        deliver_send, deliver_recv = trio.open_memory_channel[tuple[float, bytes]](math.inf)
        try:
            async with chan, trio.open_nursery() as nursery:
                nursery.start_soon(self._send_loop, replies_recv, deliver_send)
                nursery.start_soon(self._deliver_loop, chan, deliver_recv, nursery.cancel_scope)
                try:
                    await self._read_loop(chan, replies_send)
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            replies_recv.close()  # replies still being computed for this link are dropped

    async def _read_loop(self, chan: SecureChannel, replies: trio.MemorySendChannel[bytes]) -> None:
        while True:
            try:
                data = await chan.receive()
            except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError):
                return
            except RemoteProtocolError as exc:
                log.warning("dropping driver %s: %s", chan.remote_peer_id[:8], exc)
                return
            try:
                req = unpack_request(data)
            except ProtocolError as exc:
                log.warning("dropping driver %s: %s", chan.remote_peer_id[:8], exc)
                return
            self._jobs_send.send_nowait(_Job(req, replies))

    async def _send_loop(
        self, replies: trio.MemoryReceiveChannel[bytes], deliver: trio.MemorySendChannel[tuple[float, bytes]]
    ) -> None:
        cfg = self.config
        async for payload in replies:
            if cfg.bandwidth_mbps > 0:
                await trio.sleep(len(payload) * 8 / (cfg.bandwidth_mbps * 1e6))  # the link is busy
            deliver.send_nowait((trio.current_time() + cfg.send_delay_ms / 1000, payload))

    async def _deliver_loop(
        self, chan: SecureChannel, deliver: trio.MemoryReceiveChannel[tuple[float, bytes]], scope: trio.CancelScope
    ) -> None:
        async for deadline, payload in deliver:
            await trio.sleep_until(deadline)
            try:
                await chan.send(payload)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                scope.cancel()
                return


def _read_config(model_dir: Path) -> tuple[int, str]:
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
        return int(cfg["num_hidden_layers"]), str(cfg["model_type"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{model_dir} is not a Hugging Face model directory: {exc}") from exc


# --- process entry point and spawner ---------------------------------------------------


def _layers(text: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:STOP, got {text!r}") from None
    if not 0 <= a < b:
        raise argparse.ArgumentTypeError(f"expected 0 <= START < STOP, got {text!r}")
    return (a, b)


def _peer_id(text: str) -> PeerId:
    if not is_peer_id(text):
        raise argparse.ArgumentTypeError(f"not a peer id (40 hex characters): {text!r}")
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m peers.shard.worker", description="serve a layer range of a model")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model-dir", type=Path, help="Hugging Face model directory")
    which.add_argument("--model", help="a peer's model: smollm2 | gemma3 | a GGUF file or model directory "
                                       "(converted through the model cache, as a peer does)")
    p.add_argument("--cache-dir", type=Path, help="model cache for --model (default: the peer default)")
    p.add_argument("--key", type=Path, required=True, help="this worker's Ed25519 key (PEM, mode 0600)")
    p.add_argument("--allow", type=_peer_id, action="append", required=True, help="driver peer id allowed to connect")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--layers", type=_layers, help="load START:STOP at start")
    p.add_argument("--slowdown", type=float, default=1.0, help="emulate a device this many times slower")
    p.add_argument("--send-delay-ms", type=float, default=0.0, help="emulated one-way delay of replies")
    p.add_argument("--bandwidth-mbps", type=float, default=0.0, help="emulated reply bandwidth (0 = unlimited)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s worker %(levelname)s %(message)s")
    torch.set_num_threads(max(1, args.threads))
    limit_blas_threads(args.threads)
    key = KeyPair.load(args.key)
    model_dir: Path = args.model_dir
    if model_dir is None:
        from peers.llm.cache import default_cache_dir, load_or_convert
        from peers.llm.models import ModelError, resolve_model

        try:
            model_dir = load_or_convert(resolve_model(args.model), (args.cache_dir or default_cache_dir()).expanduser())
        except ModelError as exc:
            p.error(str(exc))
    cfg = WorkerConfig(
        model_dir=model_dir, key=key, allowed=frozenset(args.allow), host=args.host, port=args.port,
        threads=args.threads, layers=args.layers, slowdown=args.slowdown,
        send_delay_ms=args.send_delay_ms, bandwidth_mbps=args.bandwidth_mbps,
    )
    cfg.validate()
    worker = ShardWorker(cfg)

    async def serve() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                port = await nursery.start(worker.run)
                print(f"READY {port} {key.peer_id}", flush=True)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(serve)
    return 0


class WorkerProcess:
    """A worker child process (see :func:`spawn_worker`)."""

    def __init__(self, proc: subprocess.Popen[str], peer_id: PeerId, port: int, host: str) -> None:
        self.proc, self.peer_id, self.port, self.host = proc, peer_id, port, host

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        reap(self.proc, kill=True)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        reap(self.proc, kill=False, timeout=timeout)


def reap(proc: subprocess.Popen[str], *, kill: bool, timeout: float = 5.0) -> None:
    if proc.poll() is None:
        if kill:
            proc.kill()
        else:
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def spawn_worker(
    model_dir: Path,
    key_file: Path,
    allow: PeerId,
    *,
    threads: int = 1,
    layers: tuple[int, int] | None = None,
    slowdown: float = 1.0,
    send_delay_ms: float = 0.0,
    bandwidth_mbps: float = 0.0,
    stderr: Any = None,
    env: dict[str, str] | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    prefix: Sequence[str] = (),
) -> subprocess.Popen[str]:
    """Start ``python -m peers.shard.worker``; call :func:`wait_ready` to get its port.

    ``env`` adds environment variables (e.g. ``OMP_WAIT_POLICY=PASSIVE`` so that idle OpenMP
    threads of several workers sharing one machine do not spin on each other's cores).
    ``prefix`` goes before the command (e.g. ``ip netns exec NAME`` to run it in a network namespace).
    """
    cmd = [
        *prefix, sys.executable, "-m", "peers.shard.worker", "--model-dir", str(model_dir), "--key", str(key_file),
        "--allow", allow, "--threads", str(threads), "--slowdown", str(slowdown),
        "--send-delay-ms", str(send_delay_ms), "--bandwidth-mbps", str(bandwidth_mbps),
        "--host", host, "--port", str(port),
    ]
    if layers is not None:
        cmd += ["--layers", f"{layers[0]}:{layers[1]}"]
    full_env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1", **(env or {})}
    root = str(Path(__file__).resolve().parents[2])
    full_env["PYTHONPATH"] = root + (os.pathsep + full_env["PYTHONPATH"] if full_env.get("PYTHONPATH") else "")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=full_env, cwd=root)


def wait_ready(proc: subprocess.Popen[str], timeout: float = 120.0, host: str = "127.0.0.1") -> WorkerProcess:
    """Wait for the ``READY`` line of a spawned worker (kills it on timeout or early exit)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            reap(proc, kill=True)
            raise RuntimeError(f"shard worker did not become ready (exit code {proc.returncode})")
        ready, _, _ = select.select([proc.stdout], [], [], min(left, 0.5))
        if ready:
            line = proc.stdout.readline()
            if line.startswith("READY "):
                _, port, peer_id = line.split()
                return WorkerProcess(proc, peer_id, int(port), host)


if __name__ == "__main__":
    sys.exit(main())
