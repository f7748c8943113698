"""SQLite persistence: restart replays to the same order, appends are atomic, SIGKILL leaves a consistent DB."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dag import Hashgraph, Ledger, Network, NetworkMismatch, Store, StoreError, certificate_tx, replay, sign_event
from dag.sim import GossipSim

ROOT = Path(__file__).resolve().parents[1]


def run_sim(seed: int, steps: int) -> GossipSim:
    sim = GossipSim([1, 2, 1, 1], seed=seed, observers=[0], tx_per_event=2)
    sim.run(steps)
    return sim


def test_restart_replays_to_the_same_order(tmp_path: Path) -> None:
    sim = run_sim(1, 150)
    node = sim.nodes[0]
    with Store.open(tmp_path / "dag.db") as store:
        store.append_events(node.inserted[:200])
        store.append_order([e.hash for e in node.ordered if e in node.inserted[:200]][:50])
        store.append_events(node.inserted[200:])  # "crash" before the rest of the order was written
        led = Ledger()
        led.apply(node.ordered[:50])
        store.save_snapshot(50, led.snapshot())
    with Store.open(tmp_path / "dag.db") as store:
        events, order = store.load()
        assert events == node.inserted and len(order) == 50
        hg = replay(store, sim.validators)
        assert hg.order_hashes() == [e.hash for e in node.ordered]
        assert store.load()[1] == hg.order_hashes()  # replay appended the missing order rows
        assert store.counts() == (len(node.inserted), len(node.ordered))
        snap = store.latest_snapshot()
        assert snap is not None and snap[0] == 50 and Ledger.restore(snap[1]).position == led.position


def test_a_store_is_bound_to_the_first_network_that_opens_it(tmp_path: Path) -> None:
    mine, other = Network("net-a", b"\x01" * 32), Network("net-a", b"\x02" * 32)
    with Store.open(tmp_path / "dag.db") as store:
        assert store.network() is None  # opened without a network: not bound
    with Store.open(tmp_path / "dag.db", mine) as store:
        assert store.network() == mine
    with Store.open(tmp_path / "dag.db", mine) as store:  # the same network opens it again
        assert store.network() == mine
    with pytest.raises(NetworkMismatch, match=r"belongs to chain 'net-a' \(genesis 0101.*not to this peer's "
                                              r"chain 'net-a' \(genesis 0202.*--reset"):
        Store.open(tmp_path / "dag.db", other)
    with pytest.raises(NetworkMismatch, match="chain 'net-a'.*chain 'net-b'"):
        Store.open(tmp_path / "dag.db", Network("net-b", mine.genesis_hash))


def test_appends_enforce_the_invariants(tmp_path: Path) -> None:
    sim = run_sim(2, 40)
    node = sim.nodes[0]
    with Store.open(tmp_path / "dag.db") as store:
        store.append_events(node.inserted[:10])
        store.append_events(node.inserted[:10])  # idempotent
        with pytest.raises(StoreError, match="unknown or already ordered"):
            store.append_order([node.inserted[0].hash, node.inserted[20].hash])
        assert store.counts() == (10, 0)  # the failed append left nothing behind
        store.append_order([node.inserted[0].hash])
        with pytest.raises(StoreError, match="unknown or already ordered"):
            store.append_order([node.inserted[0].hash])
    # A stored order that the events do not produce is refused on replay.
    with Store.open(tmp_path / "dag.db") as store:
        with pytest.raises(StoreError, match="diverges"):
            replay(store, sim.validators)
    bad = tmp_path / "bad.db"
    with Store.open(bad) as store:
        store.append_events(node.inserted[:3])
    with sqlite3.connect(bad) as conn:
        conn.execute("UPDATE events SET body = x'c1' WHERE idx = 2")
    with Store.open(bad) as store:  # a row that does not decode is quarantined, not fatal
        events, _ = store.load()
        assert events == node.inserted[:1] + node.inserted[2:3]
        assert [idx for idx, _ in store.quarantined()] == [2] and store.counts() == (2, 0)
    with sqlite3.connect(bad) as conn:
        conn.execute("UPDATE meta SET value = 99")
    with pytest.raises(StoreError, match="schema version"):
        Store.open(bad)


WRITER = textwrap.dedent("""
    import sys
    from dag import Store
    from dag.sim import GossipSim
    store = Store.open(sys.argv[1])
    sim = GossipSim([1, 2, 1, 1], seed=int(sys.argv[2]), observers=[0], tx_per_event=20, tx_bytes=64)
    node, n_events, n_order = sim.nodes[0], 0, 0
    while True:
        sim.step()
        store.append_events(node.inserted[n_events:])
        n_events = len(node.inserted)
        if len(node.ordered) > n_order:
            store.append_order([e.hash for e in node.ordered[n_order:]])
            if n_order == 0:
                print("ready", flush=True)
            n_order = len(node.ordered)
""")


@pytest.mark.parametrize("seed,delay", [(3, 0.05), (4, 0.3)])
def test_sigkill_mid_write_leaves_a_consistent_database(tmp_path: Path, seed: int, delay: float) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    db = tmp_path / "dag.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, str(script), str(db), str(seed)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == "ready\n", proc.stderr.read() if proc.stderr else line
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    validators = GossipSim([1, 2, 1, 1], seed=seed, observers=()).validators
    with Store.open(db) as store:
        events, order = store.load()  # integrity check, contiguous positions, no order row without its event
        assert len(order) > 0 and len(events) >= len(order)
        hg: Hashgraph = replay(store, validators)  # stored order is a prefix of the replayed one
        assert hg.order_hashes()[:len(order)] == order
        assert store.load()[1] == hg.order_hashes()


# --- issue 10: a malformed stored record never prevents a restart ---------------------------------


def test_a_malformed_stored_event_is_quarantined_and_the_order_derived_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sim = run_sim(5, 150)
    node = sim.nodes[0]
    db = tmp_path / "dag.db"
    with Store.open(db) as store:
        store.append_events(node.inserted)
        store.append_order([e.hash for e in node.ordered])
        store.save_snapshot(len(node.ordered), Ledger().snapshot())
    victim = 40  # an early, ordered event with descendants; idx is 1-based
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE events SET body = ? WHERE idx = ?", (b"\x91" * 1010 + b"\xc0", victim + 1))
    with Store.open(db) as store, caplog.at_level(logging.WARNING, logger="multillmn.store"):
        hg = replay(store, sim.validators)  # does not raise
        quarantined = store.quarantined()
        assert quarantined[0][0] == victim + 1 and "nested deeper" in quarantined[0][1]
        assert len(quarantined) > 1 and all("does not insert" in r for _, r in quarantined[1:])  # descendants
        events, order = store.load()
        assert len(events) == len(node.inserted) - len(quarantined) == len(hg)
        assert order == hg.order_hashes() and len(order) < len(node.ordered)  # derived again, a prefix
        assert store.latest_snapshot() is None  # derived from the old order: dropped
    assert any("event row 41 quarantined" in r.getMessage() for r in caplog.records)
    with Store.open(db) as store:  # the lost events come back from the peers, parents first
        store.append_events(node.inserted)
        assert replay(store, sim.validators).order_hashes() == [e.hash for e in node.ordered]
        assert store.load()[1] == [e.hash for e in node.ordered]


@pytest.mark.parametrize("change", ["body = 'text'", "body = 1000000000", "creator = 'someone'", "seq = seq + 1",
                                    "hash = zeroblob(32)"])
def test_rows_that_do_not_match_their_body_are_quarantined(tmp_path: Path, change: str) -> None:
    sim = run_sim(6, 40)
    node = sim.nodes[0]
    db = tmp_path / "dag.db"
    with Store.open(db) as store:
        store.append_events(node.inserted[:5])
    last = node.inserted[4]
    with sqlite3.connect(db) as conn:
        conn.execute(f"UPDATE events SET {change} WHERE idx = 5")
    with Store.open(db) as store:
        hg = replay(store, sim.validators)
        assert [i for i, _ in store.quarantined()] == [5] and last.hash not in hg and len(hg) == 4


def test_a_peer_restarts_with_a_poisoned_event_in_its_store(tmp_path: Path) -> None:
    """The issue's poisoned event (a transaction nested 1,010 deep), stored before the edge refused it:
    the peer reopens its store, orders it and ignores the transaction."""
    from peers.ledger import LedgerService, network_of
    from tests.conftest import make_net

    net = make_net([1])
    key = net.keys[0]
    events, prev = [], None
    for i in range(6):
        txs = [b"\x91" * 1010 + b"\xc0", certificate_tx(1, b"[" * 5000)] if i == 0 else []
        prev = sign_event(key, seq=i, self_parent=prev.hash if prev else None, other_parent=None,
                          timestamp=i + 1, transactions=txs)
        events.append(prev)
    path = tmp_path / "ledger.sqlite"
    with Store.open(path, network_of(net.genesis)) as store:
        store.append_events(events)
    for _ in range(2):  # and again after the first restart wrote its order
        svc = LedgerService.open(key, net.genesis, None, path)  # type: ignore[arg-type]  # no gossip here
        try:
            assert svc.ledger.position == 2 and svc.ledger.ignored == {"malformed": 1, "bad certificate": 1}
            assert svc.store is not None and svc.store.quarantined() == []
        finally:
            svc.close()
