"""A network across machines, as operators set it up, with four network namespaces for the machines.

Four namespaces stand in for four hosts, each with its own address on one LAN (a bridge in a fifth
namespace, the switch). Everything goes through the ``multillmn`` command line, as in the README's
"A network across machines": ``peer init`` in four home directories, ``peer export`` with each
host's address, the identity files gathered in one place, ``genesis build``, ``peer configure`` on
each, ``peer start`` inside each host's namespace; then a client on one host asks a peer on another
and ``multillmn verify`` accepts the certificate against the genesis. A tampered identity file is
refused by ``genesis build``.

Peers run a tiny hand-rigged GGUF model (``tests/test_llm.write_tiny_gguf``: every peer answers
"OKOK...") so the network is up in under a minute on two busy cores. The model file is kept in
pytest's cache with a fixed name and mtime, so the peers' conversion cache holds one entry for it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testnet import netns

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
REFUSED = netns.unavailable_reason()
HOSTS = ["alice", "bob", "carol", "dave"]
LAN = "10.250.0"  # host i is LAN.(i+1)/24; the namespaces are isolated, so any private range does
P2P_PORT, API_PORT = 26656, 8080
READY_TIMEOUT_S = 150
TINY_MTIME_NS = 1_700_000_000 * 10**9  # a fixed mtime: the conversion cache keys on name, size and mtime

# Inside a host's namespace: wait until every peer's API (over the LAN) is ready with links to the
# three others; print one line of progress per change, "ready" at the end.
POLLER = """
import sys, time, httpx
urls, deadline, last = sys.argv[2:], time.monotonic() + float(sys.argv[1]), None
with httpx.Client(timeout=2, trust_env=False) as client:
    while time.monotonic() < deadline:
        seen = []
        for url in urls:
            try:
                s = client.get(url + "/v1/status").json()
                seen.append(f"{s['moniker']}:{s['phase']}/{len(s['connected_peers'])}")
            except (httpx.HTTPError, ValueError, KeyError):
                seen.append(f"{url}:unreachable")
        if seen != last:
            print(" ".join(seen), flush=True)
            last = seen
        if all(x.endswith(f"ready/{len(urls) - 1}") for x in seen):
            print("ready", flush=True)
            sys.exit(0)
        time.sleep(0.5)
sys.exit(1)
"""


@dataclass
class Lan:
    switch: str
    hosts: dict[str, str]  # moniker -> namespace
    addresses: dict[str, str]  # moniker -> IPv4 address


def _env() -> dict[str, str]:
    """One torch thread per peer (four peers share two cores), offline, no proxy between hosts."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    return {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def cli(*argv: str, ns: str | None = None, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``multillmn ARGV`` as a subprocess, inside namespace ``ns`` (the host it runs on) if given."""
    proc = subprocess.run([*netns.exec_prefix(ns), sys.executable, "-m", "multillmn", *argv], capture_output=True,
                          text=True, cwd=ROOT, env=_env(), timeout=timeout)
    if check:
        assert proc.returncode == 0, f"multillmn {' '.join(argv)}: exit {proc.returncode}\n{proc.stderr}"
    return proc


@pytest.fixture
def lan() -> Iterator[Lan]:
    """Four host namespaces on one bridge; deleted (with anything still running inside) at the end."""
    tag = f"mlln-mh{os.getpid()}"
    made: list[str] = []
    try:
        switch = f"{tag}-sw"
        netns.add_namespace(switch)
        made.append(switch)
        netns.add_bridge(switch, "br0")
        hosts, addresses = {}, {}
        for i, name in enumerate(HOSTS):
            ns = f"{tag}-{name}"
            netns.add_namespace(ns)
            made.append(ns)
            netns.add_bridge_port(switch, "br0", f"port{i}", ns, "eth0", f"{LAN}.{i + 1}/24")
            hosts[name], addresses[name] = ns, f"{LAN}.{i + 1}"
        yield Lan(switch, hosts, addresses)
    finally:
        for ns in reversed(made):
            netns.delete_namespace(ns, kill=True)
    assert not any(ns.startswith(tag) for ns in netns.namespaces())


def _tiny_model(directory: Path) -> Path:
    """The tiny GGUF, kept in ``directory`` (pytest's cache) under a name from its writer's source (a new file when that
    changes) and a fixed mtime, so the peers' conversion cache, keyed on name, size and mtime, keeps one entry.

    tests/test_llm.py is imported only to write the file: importing it loads torch and transformers (10 s here).
    """
    import ast
    import hashlib

    source = Path(__file__).with_name("test_llm.py").read_text()
    writer = {"write_tiny_gguf", "_byte_tokens", "HIDDEN", "CHAT_TEMPLATE"}
    parts = [ast.get_source_segment(source, node) or "" for node in ast.parse(source).body
             if isinstance(node, ast.FunctionDef) and node.name in writer
             or isinstance(node, ast.Assign) and {getattr(t, "id", "") for t in node.targets} & writer]
    assert len(parts) == len(writer), "tests/test_llm.py no longer defines the tiny model's writer as expected"
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]
    path = directory / f"multillmn-test-tiny-{digest}.gguf"
    if not path.is_file() or path.stat().st_mtime_ns != TINY_MTIME_NS:
        from test_llm import write_tiny_gguf  # tests/ is on sys.path (pytest rootdir-relative import)

        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        write_tiny_gguf(tmp)
        os.utime(tmp, ns=(TINY_MTIME_NS, TINY_MTIME_NS))
        tmp.replace(path)
    return path


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _tail(path: Path, n: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else "(no log)"


@pytest.mark.skipif(REFUSED is not None, reason=f"network namespaces are not available here: {REFUSED}")
def test_four_hosts_set_up_by_their_operators_answer_with_a_verifiable_certificate(
        lan: Lan, tmp_path: Path, pytestconfig: pytest.Config) -> None:
    t0 = time.monotonic()
    cache = pytestconfig.cache  # None with -p no:cacheprovider: then the model is written afresh
    model = _tiny_model(cache.mkdir("multillmn-tiny-gguf") if cache is not None else tmp_path)
    t_model = time.monotonic()
    shared = tmp_path / "shared"  # where the genesis builder gathers the identity files
    shared.mkdir()

    # each operator, on its own host: a key and a config listening on the host's interfaces
    homes = {}
    for name in HOSTS:
        home = tmp_path / "hosts" / name
        cli("peer", "init", "--dir", str(home), "--moniker", name, "--model", str(model),
            "--p2p-listen", f"0.0.0.0:{P2P_PORT}", "--api-listen", f"0.0.0.0:{API_PORT}", ns=lan.hosts[name])
        ident = home / f"{name}.json"
        cli("peer", "export", "--config", str(home / "config.toml"), "--address",
            f"{lan.addresses[name]}:{P2P_PORT}", "--out", str(ident), ns=lan.hosts[name])
        (shared / ident.name).write_bytes(ident.read_bytes())  # sent to the genesis builder
        homes[name] = home
    idents = [str(shared / f"{name}.json") for name in HOSTS]

    # the genesis builder refuses an identity whose address someone changed on the way
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps({**json.loads((shared / "dave.json").read_text()), "address": f"{LAN}.99:26656"}))
    refused = cli("genesis", "build", "--chain-id", "lan", "--out", str(tmp_path / "x.json"), *idents[:3], str(forged),
                  check=False)
    assert refused.returncode == 2 and "signature is not by" in refused.stderr, refused.stderr

    genesis = shared / "genesis.json"
    built = cli("genesis", "build", "--chain-id", "lan", "--out", str(genesis), *idents)
    assert "4 validators" in built.stdout

    # each operator: the genesis and the identity files (the others' addresses), then start the peer
    procs: list[subprocess.Popen[bytes]] = []
    logs = {name: homes[name] / "peer.log" for name in HOSTS}
    try:
        for name in HOSTS:
            cli("peer", "configure", "--config", str(homes[name] / "config.toml"), "--genesis", str(genesis),
                *idents, ns=lan.hosts[name])
        start = time.monotonic()
        for name in HOSTS:
            with open(logs[name], "wb") as log:
                procs.append(subprocess.Popen(
                    [*netns.exec_prefix(lan.hosts[name]), sys.executable, "-m", "multillmn", "peer", "start",
                     "--config", str(homes[name] / "config.toml")],
                    stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=_env(), start_new_session=True))

        # ready: polled over the LAN from dave's host, while watching that no peer exits
        urls = [f"http://{lan.addresses[n]}:{API_PORT}" for n in HOSTS]
        poller = subprocess.Popen([*netns.exec_prefix(lan.hosts["dave"]), sys.executable, "-c", POLLER,
                                   str(READY_TIMEOUT_S), *urls], stdout=subprocess.PIPE, text=True, env=_env())
        try:
            while poller.poll() is None:
                for name, p in zip(HOSTS, procs):
                    if p.poll() is not None:
                        pytest.fail(f"peer {name} exited with status {p.returncode}:\n{_tail(logs[name])}")
                time.sleep(0.5)
        finally:
            if poller.poll() is None:
                poller.kill()
            progress = poller.communicate()[0]
        assert poller.returncode == 0 and progress.endswith("ready\n"), (
            f"not ready within {READY_TIMEOUT_S}s:\n{progress}\n"
            + "\n".join(f"--- {n} ---\n{_tail(logs[n])}" for n in HOSTS))
        ready_s = time.monotonic() - start

        # a client on dave's host asks alice's peer, on another host, and checks against the genesis
        cert = tmp_path / "cert.json"
        asked = cli("ask", "--peer", urls[0], "--genesis", str(genesis), "--json", "--save-cert", str(cert),
                    "--max-tokens", "8", "--timeout", "120", "What is the capital of France?",
                    ns=lan.hosts["dave"], timeout=150)
        result = json.loads(asked.stdout)
        assert result["certificate_valid"] is True, result["certificate_error"]
        assert result["answer"].startswith("OK")
        monikers = [a["moniker"] for a in result["answers"]]
        assert len(monikers) >= 3 and set(monikers) <= set(HOSTS), monikers  # answers from three hosts at least
        assert result["agreed_weight"] * 3 > result["total_weight"] * 2 and result["total_weight"] == 4
        print(f"\nmodel ready in {t_model - t0:.1f}s, operators' commands {start - t_model:.1f}s, peers ready "
              f"{ready_s:.1f}s after start, answered in {result['timings']['total_ms']} ms")
    finally:
        _stop(procs)

    # offline, anywhere: the certificate checks against the genesis alone
    verified = cli("verify", str(cert), "--genesis", str(genesis))
    assert verified.stdout.startswith("VALID: height 1") and "on lan" in verified.stdout
    assert all(p.returncode == 0 for p in procs), {n: _tail(logs[n]) for n, p in zip(HOSTS, procs) if p.returncode}
