"""Link bandwidth with ``tc tbf`` between network namespaces: a shard worker behind a rate-limited veth.

Two namespaces joined by a veth pair; a real shard worker in one, a driver (a subprocess speaking
the shard protocol over an authenticated link) in the other. A step that moves a known number
of bytes each way takes what the rate says (within 30 %), and is many times faster without tbf.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from multillmn.identity import KeyPair
from peers.llm.cache import default_cache_dir, load_or_convert
from peers.llm.models import resolve_model
from peers.shard.worker import reap, spawn_worker, wait_ready
from testnet import netns

ROOT = Path(__file__).resolve().parents[1]
DRIVER_KEY = KeyPair.from_seed(b"\x71" * 32)
RATE_KBIT = 4000
TOKENS = 128  # a 128 x 576 float32 hidden state: 295 KB each way, 1.2 s at 4 Mbit/s


REFUSED = netns.unavailable_reason()
pytestmark = pytest.mark.skipif(REFUSED is not None, reason=f"network namespaces are not available here: {REFUSED}")

# The driver side: authenticated link to the worker, load one middle layer, then one prefill of
# TOKENS hidden states per line read from stdin; prints the wall time, the worker's compute time
# and the bytes of the request and the reply.
CLIENT = """
import json, sys, time
import torch, trio
from multillmn.identity import KeyPair
from peers.secure import handshake
from peers.shard.protocol import MAX_FRAME, Request, pack_request, unpack_response

async def main(host, port, peer_id, tokens):
    key = KeyPair.from_seed(b"\\x71" * 32)
    for _ in range(600):  # the worker starts meanwhile
        try:
            stream = await trio.open_tcp_stream(host, port)
            break
        except OSError:
            await trio.sleep(0.1)
    chan = await handshake(stream, key, peer_id, timeout=10, max_frame=MAX_FRAME)
    async def call(req):
        data = pack_request(req)
        t0 = time.perf_counter()
        await chan.send(data)
        reply = await chan.receive()
        return time.perf_counter() - t0, len(data), len(reply), unpack_response(reply)
    _, _, _, r = await call(Request(1, "load", start=1, stop=2))
    assert r.ok, r.error
    x = torch.zeros(1, tokens, 576)
    i = 2
    while await trio.to_thread.run_sync(sys.stdin.readline):
        took, sent, got, r = await call(Request(i, "prefill", session="s", pos=0, x=x, want="hidden"))
        assert r.ok, r.error
        print(json.dumps({"s": took, "compute_s": r.compute_us / 1e6, "bytes": sent + got}), flush=True)
        i += 1

trio.run(main, sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
"""


@pytest.fixture
def link() -> Iterator[netns.VethLink]:
    """Namespaces A (driver) and B (worker) joined by a veth pair; deleted, with anything inside, on exit."""
    a, b = f"mlln-t{os.getpid()}-a", f"mlln-t{os.getpid()}-b"
    tag = netns.short_name("test", str(os.getpid()), prefix="mt")
    try:
        netns.add_namespace(a)
        netns.add_namespace(b)
        yield netns.add_veth(a, f"{tag}a", b, f"{tag}b", netns.free_subnet(tag))
    finally:
        for name in (a, b):
            netns.delete_namespace(name, kill=True)
    assert a not in netns.namespaces() and b not in netns.namespaces()


@pytest.mark.models
def test_tbf_limits_a_shard_link_to_its_rate(link: netns.VethLink, tmp_path: Path) -> None:
    model_dir = load_or_convert(resolve_model("smollm2"), default_cache_dir())
    KeyPair.from_seed(b"\x72" * 32).save(tmp_path / "worker.pem")
    with open(tmp_path / "worker.log", "w") as log:
        proc = spawn_worker(model_dir, tmp_path / "worker.pem", DRIVER_KEY.peer_id, host=link.addr_b, port=7000,
                            prefix=netns.exec_prefix(link.ns_b), stderr=log)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    worker_id = KeyPair.load(tmp_path / "worker.pem").peer_id
    client = subprocess.Popen(  # starts while the worker starts; it dials until the worker listens
        [*netns.exec_prefix(link.ns_a), sys.executable, "-c", CLIENT, link.addr_b, "7000", worker_id,
         str(TOKENS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)

    def step() -> dict[str, float]:
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write("go\n")
        client.stdin.flush()
        line = client.stdout.readline()
        assert line, f"the driver exited (status {client.wait(10)})"
        return dict(json.loads(line))

    try:
        worker = wait_ready(proc, timeout=120, host=link.addr_b)
        step()  # warm up: the first prefill of a fresh shard is slower
        for dev, ns in ((link.dev_a, link.ns_a), (link.dev_b, link.ns_b)):  # both directions
            netns.set_rate(dev, RATE_KBIT, ns)
        shaped = step()
        expected = shaped["bytes"] * 8 / (RATE_KBIT * 1000)
        assert expected > 1.0
        assert abs(shaped["s"] - shaped["compute_s"] - expected) <= 0.3 * expected, (shaped, expected)
        for dev, ns in ((link.dev_a, link.ns_a), (link.dev_b, link.ns_b)):
            netns.clear_rate(dev, ns)
        free = step()
        print(f"shaped {shaped}, expected {expected:.3f} s + compute; without tbf {free}")
        assert free["s"] - free["compute_s"] < expected / 5, (free, expected)
    finally:
        client.kill()
        client.communicate()  # closes its pipes
        reap(proc, kill=True)
    assert not worker.alive()


def test_netns_helpers_name_the_failing_command() -> None:
    with pytest.raises(netns.NetnsError, match="ip netns exec mlln-does-not-exist tc qdisc replace"):
        netns.set_rate("eth0", 100, "mlln-does-not-exist")
    with pytest.raises(netns.NetnsError, match="must have 1 to 15 characters"):
        netns.add_veth(None, "a-very-long-device-name", None, "b", netns.free_subnet("x"))
    with pytest.raises(netns.NetnsError, match="rate must be >= 1"):
        netns.set_rate("lo", 0)
    assert netns.delete_namespace("mlln-does-not-exist") is False
    assert netns.unavailable_reason() is None  # as root here: namespaces and tbf both work
