"""A stand-in peer daemon for launcher tests: serves /v1/status, no model.

Usage: ``python fakepeer.py [options] --config CONFIG``. It loads the config,
key and genesis with the real modules (so the launcher's files are checked),
reports phase "loading-model" for ``--ready-after`` seconds, then "ready",
and exits 0 on SIGTERM. SIGUSR1 / SIGUSR2 mark its links cut / restored in
its status, as the daemon's transport does. A sharded peer (``[shard]
devices_file``) serves ``/metrics`` with its workers: the first serves 30
layers, the others stand by. Options naming a moniker apply only to that peer.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from multillmn.config import PeerConfig  # noqa: E402
from multillmn.genesis import Genesis  # noqa: E402
from multillmn.identity import KeyPair  # noqa: E402


def log(msg: str, **fields: object) -> None:
    print(json.dumps({"ts": round(time.time(), 3), "level": "info", "msg": msg, **fields}),
          file=sys.stderr, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--ready-after", type=float, default=1.0)
    ap.add_argument("--crash", default="", help="moniker that exits with code 3 at start-up")
    ap.add_argument("--ignore-sigterm", default="", help="moniker that ignores SIGTERM")
    args = ap.parse_args()

    cfg = PeerConfig.load(args.config)
    key = KeyPair.load(cfg.path(cfg.key_file))
    genesis = Genesis.load(cfg.path(cfg.genesis_file))
    if key.peer_id not in genesis.validators:
        log("fatal: not a validator", peer_id=key.peer_id)
        return 4
    log("starting", moniker=cfg.moniker, peer_id=key.peer_id, chain_id=genesis.chain_id)
    if cfg.moniker == args.crash:
        time.sleep(0.3)
        log("fatal: cannot load model", model=cfg.model)
        return 3

    started = time.monotonic()
    stop = threading.Event()
    links = {"disconnected": False}
    devices: list[str] = []
    if cfg.shard_devices_file:
        from peers.shard.devices import load_device_file

        devices = [e.name for e in load_device_file(cfg.path(cfg.shard_devices_file))]

    def metrics() -> bytes:
        lines = ["# TYPE multillmn_shard_worker_up gauge", "# TYPE multillmn_shard_worker_layers gauge"]
        for i, d in enumerate(devices):
            lines += [f'multillmn_shard_worker_up{{worker="{d}"}} 1',
                      f'multillmn_shard_worker_layers{{worker="{d}"}} {30 if i == 0 else 0}']
        return ("\n".join(lines) + "\n").encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/metrics" and devices:
                body = metrics()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            if self.path != "/v1/status":
                self.send_error(404)
                return
            ready = time.monotonic() - started >= args.ready_after
            body = json.dumps({
                "peer_id": key.peer_id, "moniker": cfg.moniker, "model": cfg.model, "ready": ready,
                "phase": "ready" if ready else "loading-model", "height": 1 if ready else 0,
                "connected_peers": [p.id for p in cfg.persistent_peers]
                if ready and not links["disconnected"] else [],
                "omp_threads": os.environ.get("OMP_NUM_THREADS"), "pid": os.getpid(),
                "validators": [{"peer_id": v.peer_id, "weight": v.weight} for v in genesis.validators],
                "transport": dict(links),
            }).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *a: object) -> None:  # noqa: A002
            pass

    host, _, port = cfg.api_listen.rpartition(":")
    server = ThreadingHTTPServer((host, int(port)), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    if cfg.moniker == args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: links.update(disconnected=True))
    signal.signal(signal.SIGUSR2, lambda *_: links.update(disconnected=False))
    log("serving", api=cfg.api_listen)
    while not stop.wait(0.2):
        pass
    server.shutdown()
    log("stopped on SIGTERM")
    return 0


if __name__ == "__main__":
    sys.exit(main())
