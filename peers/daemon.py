"""The peer daemon: one trio process with transport, consensus, model and HTTP API.

Start-up order: read and validate config, key and genesis (fail fast with a
clear message); serve the API at once so ``/v1/status`` shows progress;
start the transport so links come up meanwhile; load the model and the
embedder in a worker thread; then open the ledger store (replaying the DAG
to the same order and state as before a crash) and start the node, which
catches its consensus core up from the ledger's certificates.
SIGTERM or SIGINT cancels everything and the process exits 0. SIGUSR1 cuts
every p2p link and refuses new ones, SIGUSR2 restores them
(``multillmn testnet disconnect|reconnect``, :meth:`Transport.disconnect`).
"""

from __future__ import annotations

import logging
import signal
import sys
from functools import partial
from pathlib import Path
from typing import Callable

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from dag import StoreError
from multillmn.config import PeerConfig, parse_hostport
from multillmn.genesis import Genesis
from multillmn.identity import KeyPair
from multillmn.logs import fields, setup_logging
from peers.api import PeerHandle, create_app
from peers.node import PeerCrashed
from peers.engine import AnswerEngine, ModelEngine
from peers.ledger import LedgerService
from peers.node import Node
from peers.transport import LinkCondition, LinkShaper, Transport
from peers.wal import ConsensusWal

__all__ = ["run_peer", "load_identity", "http_config", "link_shaper"]

log = logging.getLogger("multillmn.daemon")

EngineFactory = Callable[[PeerConfig], AnswerEngine]


def load_identity(cfg: PeerConfig) -> tuple[KeyPair, Genesis]:
    """The peer's key and the genesis. A key outside the genesis set may start only where members can
    change (adaptive weights): it follows the network until a join (``multillmn peer join``) takes effect."""
    key = KeyPair.load(cfg.path(cfg.key_file))
    genesis = Genesis.load(cfg.path(cfg.genesis_file))
    if genesis.validators.weight_of(key.peer_id) == 0 and genesis.params.weights != "adaptive":
        raise ValueError(f"peer {key.peer_id} is not a validator in {cfg.path(cfg.genesis_file)}, "
                         "and this network's validator set is fixed (static weights)")
    return key, genesis


def _default_engine(cfg: PeerConfig) -> AnswerEngine:
    """The model here, or split over shard workers when ``[shard] devices_file`` is set (issue 5)."""
    if cfg.shard_devices_file:
        from peers.shard.engine import ShardedEngine

        return ShardedEngine.from_config(cfg)
    return ModelEngine.load(cfg.model, cfg.path(cfg.cache_dir), cfg.threads)


def link_shaper(cfg: PeerConfig) -> LinkShaper:
    """Emulated conditions on the outgoing links (testnets): ``[p2p] link_delays_ms`` towards the peers it names,
    ``link_delay_ms`` towards the others; ``link_loss`` on all."""
    shaper = LinkShaper()
    shaper.default = LinkCondition(cfg.link_delay_ms / 1000, cfg.link_loss)
    for peer, ms in cfg.link_delays_ms:
        shaper.set(peer, delay_s=ms / 1000, loss=cfg.link_loss)
    return shaper


async def run_peer(cfg: PeerConfig, engine_factory: EngineFactory = _default_engine) -> None:
    """Run one peer until SIGTERM/SIGINT."""
    key, genesis = load_identity(cfg)
    setup_logging(cfg.log_level, peer=cfg.moniker)
    handle = PeerHandle(peer_id=key.peer_id, moniker=cfg.moniker, model=cfg.model)
    host, port = parse_hostport(cfg.api_listen, "api.listen")
    http = http_config(host, port)
    shutdown = trio.Event()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, shutdown, nursery.cancel_scope)
        nursery.start_soon(partial(serve, create_app(handle), http, shutdown_trigger=shutdown.wait))
        log.info("starting", extra=fields(peer_id=key.peer_id, api=cfg.api_listen, p2p=cfg.p2p_listen))
        if key.peer_id not in genesis.validators:
            log.info("not a genesis validator: following the network; `multillmn peer join` asks to join it")
        peers = {p.id: parse_hostport(p.address, "p2p.peers") for p in cfg.persistent_peers}
        shaper = link_shaper(cfg)
        transport = Transport(
            key, parse_hostport(cfg.p2p_listen, "p2p.listen"), peers,
            max_frame=cfg.max_frame_bytes, send_queue=cfg.send_queue, send_queue_bytes=cfg.send_queue_bytes,
            inbound_queue=cfg.inbound_queue, inbound_peer_queue=cfg.inbound_peer_queue,
            inbound_peer_bytes=cfg.inbound_peer_bytes, max_handshakes=cfg.max_handshakes,
            handshake_timeout=cfg.handshake_timeout_ms / 1000, shaper=shaper,
        )
        await nursery.start(transport.run)  # links come up while the model loads
        nursery.start_soon(_watch_link_signals, transport)
        handle.phase = "loading-model"
        engine = await trio.to_thread.run_sync(engine_factory, cfg, abandon_on_cancel=True)
        handle.model = engine.model_name
        handle.phase = "replaying-ledger"
        try:
            ledger = LedgerService.open(key, genesis, transport, cfg.path(cfg.ledger_path),
                                        sync_interval_ms=cfg.ledger_sync_interval_ms)
        except StoreError as exc:
            log.error("cannot open the ledger store; move it aside to resync from the peers",
                      extra=fields(path=str(cfg.path(cfg.ledger_path)), error=str(exc)))
            raise
        wal = ConsensusWal(cfg.path(cfg.ledger_path).with_suffix(".wal"))  # next to the ledger
        node = Node(cfg, key, genesis, engine, transport, ledger, wal)
        await nursery.start(node.run)
        handle.node = node
        handle.phase = "ready"
        log.info("ready", extra=fields(model=engine.model_name, height=node.height))


def http_config(host: str, port: int) -> HypercornConfig:
    """hypercorn's settings for the API, with the limits on slow or large clients stated.

    hypercorn bounds a request's head: ``h11_max_incomplete_size`` bytes, sent
    within ``keep_alive_timeout`` (a connection idles that long before its
    first request or between two). It has no bound on the time to send a body:
    its ``read_timeout`` bounds each read, also while a client waits for a
    slow answer, so it would cut queries that take long to decide. The body
    (size, time to receive it, JSON bounds) is bounded by
    :class:`peers.httplimits.RequestLimits`, which :func:`peers.api.create_app` installs.
    """
    http = HypercornConfig()
    http.bind = [f"{host}:{port}"]
    http.accesslog = None
    http.errorlog = logging.getLogger("multillmn.http")
    http.graceful_timeout = 2.0
    http.keep_alive_timeout = 5.0
    http.h11_max_incomplete_size = 16 * 1024
    http.read_timeout = None
    return http


async def _watch_signals(shutdown: trio.Event, scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("shutting down", extra=fields(signal=signal.Signals(signum).name))
            shutdown.set()
            await trio.sleep(0.5)  # let hypercorn finish in-flight responses
            scope.cancel()
            return


async def _watch_link_signals(transport: Transport) -> None:
    """SIGUSR1: cut every link until SIGUSR2 (testnet perturbations; ``main`` ignores both until then)."""
    with trio.open_signal_receiver(signal.SIGUSR1, signal.SIGUSR2) as signals:
        async for signum in signals:
            if signum == signal.SIGUSR1:
                transport.disconnect()
            else:
                transport.reconnect()


CRASH_EXIT_CODE = 3
"""Exit status of a peer told to crash by fault injection (``[byzantine] behaviour = "crash"``)."""


def main(config_path: Path) -> int:
    """Entry point of ``multillmn peer start``; returns the exit status (0 after SIGTERM or SIGINT)."""
    cfg = PeerConfig.load(config_path)
    for sig in (signal.SIGUSR1, signal.SIGUSR2):  # their default would kill a peer still starting
        signal.signal(sig, signal.SIG_IGN)
    status = 0
    try:
        trio.run(run_peer, cfg)
    except* PeerCrashed as group:
        log.error("crashed", extra=fields(reason=str(group.exceptions[0])))
        raise SystemExit(CRASH_EXIT_CODE) from None
    except* StoreError as group:  # logged where it was raised; one line, no traceback
        print(f"error: {group.exceptions[0]}", file=sys.stderr)
        status = 2
    return status
