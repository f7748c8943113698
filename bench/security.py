"""Security table (issue 10): every attack of the issue against four in-process peers, one command.

    .venv/bin/python bench/security.py [--json FILE] [--quick] [--verbose]

Four peer runners (``peers.node.Node``: transport, SQLite ledger, driver)
with scripted engines run on loopback in one process, as in
``tests/test_ledger_integration.py``; peer3's key is the attacker's (one
validator of four). After two honest decisions, each attack class runs in
turn against the same peers:

* **forged certificates, client**: each forgery (the issue's weight forgeries,
  a forged next set, tampered trust paths, replays, another chain's
  certificate, and every tampering ``tests/test_certificate.py`` covers) is
  verified from the genesis with :func:`multillmn.certificate.verify`, and
  hostile files through ``multillmn verify``; refused = ``CertificateError``;
* **forged certificates, ledger**: forgeries posted as ledger transactions by
  the attacker; refused = no honest ledger accepts it, no peer serves it, no
  honest core moves past it (then the real certificate of the height is
  still decided and served);
* **deep msgpack** 1,010 and 100,000 deep: as a wire frame to each peer,
  inside a proposal's score and evidence envelopes, as a DAG event's
  transaction (refused = counted by the receiver, or the receiver's chain
  refuses the value, and the peer runs on), and in a peer's store followed
  by a restart (refused = the peer restarts, quarantines and converges);
* **malformed HTTP requests** against a peer's API (FastAPI app through
  httpx's ASGI transport): refused = a 4xx; **slow bodies** against a real
  hypercorn server (``body_timeout_s = 1``): refused = closed (408) in time;
* **handshake attacks** on a peer's transport port: refused = the listener
  closes the connection without accepting a link (before its deadline);
* **floods from one validator** (far-future and far-round proposals and
  votes, conflicting votes, orphan answers): refused = every table of
  ``Driver.statistics()`` (and the core's buffer) stays within its stated
  bound while the flood lasts;
* **availability**: 50 concurrent queries through the API, every reply and
  certificate checked as ``multillmn ask`` does; one peer of four stopped
  mid-query (its cancel scope), the rest deciding, then restarted from its
  store (refused column: queries answered).

Per class: tried, refused, peers crashed (a peer task that raised or could
not restart), data lost (a certificate served before the class missing or
changed after it, on any running peer) and seconds. After each class the
peers settle and one more query must be decided. Exit status 1 if any
attack outside :data:`KNOWN_OPEN` was not refused, a peer crashed or data
was lost.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import socket
import sqlite3
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import trio  # noqa: E402

from consensus.chain import SCORE_WINDOW  # noqa: E402
from consensus.driver import MAX_CATCHUP_AHEAD, MAX_CATCHUP_PER_HEIGHT, MAX_CHECKING, MAX_FUTURE_PER_SIGNER  # noqa: E402
from consensus.driver import RESEND_MESSAGES  # noqa: E402
from consensus.driver._scoring import FUTURE_HEIGHTS, SIMS_KEPT  # noqa: E402
from consensus.driver.behaviours import forge_decision  # noqa: E402
from consensus.lightclient import TrustedState, plan_path  # noqa: E402
from consensus.messages import Answer, Envelope, EvidencePair, Proposal, Vote, decode_value, sign  # noqa: E402
from dag import Store, certificate_tx, sign_event  # noqa: E402
from multillmn import canonical  # noqa: E402
from multillmn.certificate import (  # noqa: E402
    CertificateError,
    build_certificate,
    light_block_of,
    verify,
    verify_file,
    with_trust_path,
)
from multillmn.client import ClientError, check, check_reply  # noqa: E402
from multillmn.genesis import Genesis  # noqa: E402
from multillmn.identity import KeyPair  # noqa: E402
from peers.api import HttpLimits, PeerHandle, create_app  # noqa: E402
from peers.attacks import deep_msgpack, deep_payload, forged_certificate, poisoned_events_payload  # noqa: E402
from peers.node import Node  # noqa: E402
from tests import test_certificate as tc  # noqa: E402
from tests.conftest import Net, make_net  # noqa: E402
from tests.test_ledger_integration import Cluster, _Running  # noqa: E402
from tests.test_node import Q, honest  # noqa: E402

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


# --- 1. forged certificates, verified by a client ------------------------------------------------


def _value_of(cert: dict[str, Any]) -> Any:
    return decode_value(canonical.unpack(base64.b64decode(cert["value"])))


def _with_value(cert: dict[str, Any], value: Any) -> dict[str, Any]:
    return {**cert, "value": base64.b64encode(value.canonical()).decode(), "value_id": value.value_id().hex()}


def client_forgeries() -> list[tuple[str, Any, Genesis | None]]:
    """(name, certificate, trusted genesis) of every forgery a client must refuse."""
    out: list[tuple[str, Any, Genesis | None]] = []
    net4 = make_net([1] * 4)
    g4 = net4.genesis.validators
    base = tc._cert(net4, [0, 1, 2])
    marks = getattr(tc.test_tampered_certificate_fails_with_reason, "pytestmark")
    mark = next(m for m in marks if m.name == "parametrize")
    for tamper, reason in mark.args[1]:
        out.append((f"tampered ({reason.replace(chr(92), '')})", tamper(base), net4.genesis))
    rehashed = tc._flip_value_answer(base)
    rehashed["value_id"] = canonical.digest(canonical.unpack(base64.b64decode(rehashed["value"]))).hex()
    out.append(("value changed and re-hashed", rehashed, net4.genesis))
    stranger = tc._cert(make_net([1] * 4, seed=100), [0, 1, 2])
    out.append(("another network's keys", stranger, net4.genesis))
    out.append(("another network's keys, our genesis claimed", {**stranger, "genesis": net4.genesis.to_json()},
                net4.genesis))
    net5 = make_net([2, 1, 1, 1, 1])
    out.append(("exactly 2/3 of the weight", tc._cert(net5, [0, 1, 2], ["Paris"] * 5), net5.genesis))
    later = tc._set(net4, [500, 300, 100, 100])
    own = tc._decision(net4, 7, later, later, [0, 1], ["Paris", "Paris", "Lyon", "Lyon"])
    out.append(("height's set re-weighted", tc._mutate(own, "validators.2.weight", 900), net4.genesis))
    out.append(("height's set renamed", tc._mutate(own, "validators.0.moniker", "mallory"), net4.genesis))
    # the issue's forgeries: weights of the forgers' choice, their question, answer and precommits only
    for n, forgers in ((4, 1), (10, 1), (10, 3)):
        net = make_net([1] * n)
        forged = tc._set(net, [10**6 if i < forgers else 1 for i in range(n)])
        cert = tc._decision(net, 62, forged, forged, list(range(forgers)), ["Yes, flat."] * n, "Is the earth flat?")
        out.append((f"{forgers} of {n} with weights of its choosing", cert, net.genesis))
        out.append((f"{forgers} of {n} with weights of its choosing, no --genesis", cert, None))
        first = tc._decision(net, 1, forged, forged, list(range(forgers)), ["Yes, flat."] * n)
        out.append((f"{forgers} of {n} with weights of its choosing, as height 1", first, net.genesis))
    out.append(("peers.attacks.forged_certificate (1 of 4)", forged_certificate(net4.keys[3], net4.genesis, 2),
                net4.genesis))
    # a forged next set hash
    forged4 = tc._set(net4, [1, 1, 1, 10**6])
    real1 = tc._decision(net4, 1, g4, g4, [0, 1, 2])
    value = _value_of(real1).model_copy(update={"next_validators_hash": forged4.set_hash()})
    out.append(("real height 1 with its next set hash forged", _with_value(real1, value), net4.genesis))
    bridge = tc._decision(net4, 1, g4, forged4, [3])
    out.append(("height 1 signed by the forger alone, committing to its set", bridge, net4.genesis))
    out.append(("height 2 trusted through that height 1",
                with_trust_path(tc._decision(net4, 2, forged4, forged4, [3]), [light_block_of(bridge)]),
                net4.genesis))
    # tampered trust paths (weight moved to peers 4-6; height 9 needs the path 4, 6)
    net7 = make_net([1] * 7)
    g7 = net7.genesis.validators
    moved = tc._set(net7, [1, 1, 1, 1, 500, 500, 200])
    chain = {h: tc._decision(net7, h, g7, g7, list(range(7))) for h in range(1, 5)}
    chain.update({5: tc._decision(net7, 5, g7, moved, [0, 1, 2, 3, 4]), 6: tc._decision(net7, 6, moved, moved, [4, 5, 6]),
                  7: tc._decision(net7, 7, moved, moved, [4, 5]), 8: tc._decision(net7, 8, moved, moved, [4, 5])})
    h9 = tc._decision(net7, 9, moved, moved, [4, 5])
    path = plan_path(TrustedState.genesis(net7.genesis.chain_id, g7), light_block_of(h9), lambda h: light_block_of(chain[h]))
    good = with_trust_path(h9, path)
    verify(good, net7.genesis)  # the real path verifies: the tampered ones below must not
    forged6 = tc._decision(net7, 6, tc._set(net7, [1, 1, 1, 1, 1, 900, 900]), moved, [5, 6])
    blocks = good["trust_path"]
    zero = base64.b64encode(bytes(64)).decode()
    for name, tampered in [
        ("trust path through a forged height 6", with_trust_path(h9, [light_block_of(forged6)])),
        ("trust path with height 6's signatures zeroed",
         tc._mutate(good, "trust_path.1.precommits", [{**p, "sig": zero} for p in blocks[1]["precommits"]])),
        ("trust path with height 6's set re-weighted", tc._mutate(good, "trust_path.1.validators.5.weight", 10**6)),
        ("trust path with height 6's next set hash changed",
         tc._mutate(good, "trust_path.1.header.next_validators_hash", "ab" * 32)),
        ("trust path out of order", {**good, "trust_path": blocks[::-1]}),
        ("trust path holding the certificate's own height", with_trust_path(h9, [*path, light_block_of(h9)])),
        ("trust path of 65 blocks", {**good, "trust_path": blocks[:1] * 65}),
        ("trust path skipping to a height signed by 2 of 7", with_trust_path(h9, [path[0], light_block_of(chain[7])])),
    ]:
        out.append((name, tampered, net7.genesis))
    # replays of another height or round
    out.append(("height 1 replayed as height 2", {**real1, "height": 2}, net4.genesis))
    out.append(("round 0 replayed as round 1", {**real1, "round": 1}, net4.genesis))
    # another chain: its own genesis, or sharing our validators' keys
    other = Genesis.build("other-chain", [(v.moniker, v.public_key, v.weight) for v in net4.genesis.validators])
    other_net = Net(net4.keys, other)
    theirs = tc._cert(other_net, [0, 1, 2])
    out.append(("another chain with the same validator keys", theirs, net4.genesis))
    out.append(("another chain with the same validator keys, its genesis and chain_id swapped for ours",
                {**theirs, "genesis": net4.genesis.to_json(), "chain_id": net4.genesis.chain_id}, net4.genesis))
    return out


HOSTILE_FILES = {
    "deep JSON 100,000": b"[" * 100_000 + b"]" * 100_000,
    "deep object 2,000": b'{"a":' * 2000 + b"1" + b"}" * 2000,
    "integer of 100,000 digits": b'{"height": ' + b"9" * 100_000 + b"}",
    "binary": bytes(range(256)) * 8,
    "PNG": b"\x89PNG\r\n\x1a\n" + bytes(64),
    "Latin-1": '{"question": "caf\xe9"}'.encode("latin-1"),
    "lone surrogate": b'{"summary": "\\ud800"}',
    "empty": b"",
    "NaN": b"[NaN]",
}


async def attack_client_forgeries(c: Peers, row: Row) -> None:
    for name, cert, trusted in client_forgeries():
        try:
            verify(cert, trusted)
        except CertificateError:
            row.attempt(name, True)
        except Exception as exc:  # outside the contract
            row.attempt(name, False, f"{type(exc).__name__}: {exc}")
        else:
            row.attempt(name, False, "verified VALID")


async def attack_hostile_files(c: Peers, row: Row) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        genesis = Path(tmp) / "genesis.json"
        c.net.genesis.save(genesis)
        for name, data in HOSTILE_FILES.items():
            path = Path(tmp) / "cert.json"
            path.write_bytes(data)
            for trusted in (None, genesis):
                try:
                    verify_file(path, trusted)
                except CertificateError:
                    row.attempt(f"file: {name}", True)
                except Exception as exc:
                    row.attempt(f"file: {name}", False, f"{type(exc).__name__}: {exc}")
                else:
                    row.attempt(f"file: {name}", False, "verified VALID")
    row.notes.append("9 files, each with and without --genesis")


# --- 2. forged certificates posted to the ledger ---------------------------------------------------


def _post(node: Node, height: int, cert: Any) -> None:
    _ledger_of(node).submit(certificate_tx(height, json.dumps(cert, sort_keys=True).encode()))


async def attack_ledger_forgeries(c: Peers, row: Row) -> None:
    attacker, honest_peers = c.node(ATTACKER), [c.node(i) for i in range(4) if i != ATTACKER]
    g = c.net.genesis
    top = honest_peers[0].height - 1  # the last decided height
    real: dict[int, dict[str, Any]] = {}
    for h in range(1, top + 1):
        cert = honest_peers[0].certificate(h)
        assert cert is not None
        real[h] = cert
    other = Genesis.build("other-chain", [(v.moniker, v.public_key, v.weight) for v in g.validators])
    other_net = Net(c.net.keys, other)
    cross = tc._cert(other_net, [0, 1, 2])
    cross = {**cross, "height": top, "genesis": g.to_json(), "chain_id": g.chain_id}
    value = _value_of(cross)
    precommits = tuple(other_net.precommit(i, top, 0, value) for i in range(3))  # signed on the other chain
    cross = {**cross, "precommits": [{"body": base64.b64encode(p.envelope.body).decode(),
                                      "sig": base64.b64encode(p.envelope.sig).decode()} for p in precommits]}
    chain = attacker.driver.chain
    fvalue, fprecommit, fset = forge_decision(attacker.key, g.validators, top + 1, g.params.similarity_threshold)
    own_set = fvalue.model_copy(update={"validators_hash": chain.validators_at(top + 1).set_hash()})
    next_forged = build_certificate(g, top + 1, 0, own_set, (sign(Vote(
        type="precommit", height=top + 1, round=0, value_id=own_set.value_id(), voter=attacker.key.peer_id),
        attacker.key),), validators=chain.validators_at(top + 1))
    posts: list[tuple[str, int, dict[str, Any]]] = [
        ("1 of 4 rewriting the last decided height", top, forged_certificate(attacker.key, g, top)),
        ("1 of 4 for the next height", top + 1, forged_certificate(attacker.key, g, top + 1)),
        ("1 of 4 two heights ahead (waits, then refused)", top + 2, forged_certificate(attacker.key, g, top + 2)),
        ("1 of 4 a hundred heights ahead", top + 100, forged_certificate(attacker.key, g, top + 100)),
        ("1 of 4 on the real set, its next set hash forged", top + 1, next_forged),
        ("height 1 replayed as the next height", top + 1, {**real[1], "height": top + 1}),
        ("height 1 posted under the next height", top + 1, real[1]),
        ("the last height with its summary tampered", top, tc._mutate(real[top], "summary.answer", "Berlin")),
        ("the last height with 2 of its precommits", top, {**real[top], "precommits": real[top]["precommits"][:2]}),
        (CROSS_CHAIN_POST, top, cross),
    ]
    honest_ids = {n.key.peer_id for n in honest_peers}

    def blamed() -> int:
        return sum(e["peer_id"] in honest_ids for n in honest_peers for e in _ledger_of(n).ledger.evidence)

    framed_before = blamed()
    ignored_before = dict(_ledger_of(honest_peers[0]).ledger.ignored)
    for _, height, cert in posts:
        _post(attacker, height, cert)
    await settle(c)
    moved = [f"peer{i} at height {c.node(i).height}" for i in range(4) if i != ATTACKER and c.node(i).height != top + 1]
    if not await decide(c, 0):
        row.notes.append("the real next height was not decided after the posts")
    await settle(c)
    reference = {**real, top + 1: honest_peers[0].certificate(top + 1)}
    framed = blamed() - framed_before
    ignored = {k: v - ignored_before.get(k, 0) for k, v in _ledger_of(honest_peers[0]).ledger.ignored.items()}
    row.notes.append("peer0's ledger ignored: " + ", ".join(f"{k} {v}" for k, v in sorted(ignored.items()) if v))
    for name, height, _ in posts:
        bad = list(moved)
        if name == CROSS_CHAIN_POST and framed:
            bad.append(f"refused, but {framed} duplicate-vote evidence entries in the honest ledgers now blame "
                       "honest validators")
        want = reference.get(height)
        for i in c.alive():
            got = c.node(i).certificate(height)
            if want is None and got is not None:
                bad.append(f"peer{i} serves a certificate for height {height}")
            elif want is not None and (got is None or got["value_id"] != want["value_id"]
                                       or got["summary"] != want["summary"]):
                bad.append(f"peer{i} does not serve the real certificate of height {height}")
        row.attempt(name, not bad, "; ".join(bad))


# --- 3. deep msgpack -----------------------------------------------------------------------------


def _raw_signed(kind: str, body: bytes, key: KeyPair) -> bytes:
    return canonical.pack({"k": kind, "b": body, "s": key.sign(kind, body)})


def _rejects(node: Node) -> int:
    return sum(node.rejects.snapshot().values()) + sum(node.driver.rejected.values())


async def _wait_rejects(nodes: dict[int, Node], base: dict[int, int], expected: int, timeout: float = 10) -> None:
    with trio.move_on_after(timeout):
        while any(_rejects(n) < base[i] + expected for i, n in nodes.items()):
            await trio.sleep(0.02)


async def attack_deep_nesting(c: Peers, row: Row) -> None:
    attacker = c.node(ATTACKER)
    key = attacker.key
    targets = {i: c.node(i) for i in range(4) if i != ATTACKER}
    reached = 0
    for depth in DEPTHS:
        deep = deep_msgpack(depth)
        payloads = {"frame": deep, "vote, signed body": _raw_signed("vote", deep, key),
                    "proposal, signed body": _raw_signed("proposal", deep, key)}
        payloads.update({f"{k}, unsigned": deep_payload(k, depth) for k in
                         ("vote", "proposal", "query", "answer", "dag_events", "dag_sync", "dag_want")})
        payloads["DAG event transaction"] = poisoned_events_payload(key, deep)
        for name, payload in payloads.items():
            base = {i: _rejects(n) for i, n in targets.items()}
            for n in targets.values():
                attacker.transport.send_nowait(n.key.peer_id, payload)
            await _wait_rejects(targets, base, 1)
            for i, n in targets.items():
                counted = _rejects(n) - base[i]
                row.attempt(f"{depth} deep, {name}, to peer{i}", counted >= 1 and i in c.alive(),
                            f"counted {counted}, alive {i in c.alive()}")
        # inside a proposal's score and evidence envelopes: validly signed by the attacker
        value, _, _ = forge_decision(key, c.net.genesis.validators, 1, 800)
        envelope = Envelope.model_construct(body=deep, sig=bytes(64))
        pair = EvidencePair.model_construct(kind="duplicate_vote", first=envelope, second=envelope)
        for round_, (what, bad) in enumerate([("score", value.model_copy(update={"scores": (envelope,)})),
                                              ("evidence", value.model_copy(update={"evidence": (pair,)}))]):
            for i, n in targets.items():
                h = n.height
                proposal = Proposal.model_construct(height=h, round=round_ + 2 * DEPTHS.index(depth), valid_round=-1,
                                                    proposer=key.peer_id, value=bad.model_copy(update={
                                                        "validators_hash": n.driver.chain.validators_at(h).set_hash(),
                                                        "next_validators_hash":
                                                            n.driver.chain.validators_at(h + 1).set_hash()}))
                body = proposal.canonical()
                attacker.transport.send_nowait(n.key.peer_id, _raw_signed("proposal", body, key))
                await trio.sleep(0.05)
                reached += (proposal.round, proposal.value.value_id()) in n.driver._h.checked
                reason = n.driver.chain.check_extras(proposal.value, h)
                ok = reason is not None and i in c.alive()
                row.attempt(f"{depth} deep {what} envelope in a proposal, to peer{i}", ok, f"check_extras: {reason}")
    row.notes.append(f"{reached} of {4 * len(targets)} proposals with deep envelopes reached the driver's check"
                     + (" (the others were refused at the edge)" if reached < 4 * len(targets) else ""))
    await trio.sleep(0.5)
    for i in targets:  # a peer that went down on any of the above
        if i not in c.alive():
            row.notes.append(f"peer{i} is down after the deep messages")
    await attack_poisoned_store(c, row)


async def attack_poisoned_store(c: Peers, row: Row, victim: int = 2) -> None:
    """Stop the victim, plant deep records in its store, restart it: it must start, quarantine what does not
    decode, keep what the edge would refuse to itself, and converge with the others."""
    await settle(c)
    await c.stop(victim)
    path = c.store(victim)
    with sqlite3.connect(path) as db:
        rows = [r[0] for r in db.execute("SELECT idx FROM events ORDER BY idx")]
        for depth, idx in zip(DEPTHS, (rows[len(rows) // 3], rows[len(rows) // 2])):
            db.execute("UPDATE events SET body = ? WHERE idx = ?", (deep_msgpack(depth), idx))
    # the poisoned event: validly signed by the attacker, its transaction 1,010 deep, stored as received
    poisoned = sign_event(c.node(ATTACKER).key, seq=0, self_parent=None, other_parent=None, timestamp=time.time_ns(),
                          transactions=[deep_msgpack(1010)])
    with Store.open(path) as store:
        store.append_events([poisoned])
    restarted = await c.restart(victim)
    c.held[victim] = 1  # it keeps that event, unordered: no peer takes it
    converged = restarted and await settle(c)
    quarantined = len(_ledger_of(c.node(victim)).store.quarantined()) if restarted else 0
    for depth in DEPTHS:
        row.attempt(f"{depth} deep stored event row, then a restart", converged and quarantined >= 2,
                    f"restarted {restarted}, converged {converged}, quarantined {quarantined}")
    spread = [i for i in c.alive() if i != victim and poisoned.hash in _ledger_of(c.node(i)).hashgraph]
    row.attempt("a signed stored event with a 1,010 deep transaction, then a restart", converged and not spread,
                f"restarted {restarted}, converged {converged}, held by {spread}")
    row.notes.append(f"the restarted peer quarantined {quarantined} rows (the planted ones and their descendants), "
                     "fetched them again from the others and converged; the signed poisoned event stayed with it")


# --- 4. malformed HTTP ------------------------------------------------------------------------------


def _json(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def http_attacks() -> list[tuple[str, str, str, dict[str, Any]]]:
    """(name, method, path, httpx request arguments) of requests that must get a 4xx."""
    q, chat, js = "/v1/query", "/v1/chat/completions", {"content-type": "application/json"}
    user = [{"role": "user", "content": "hi"}]
    bodies: list[tuple[str, str, Any]] = [
        ("question an integer", q, {"question": 1}), ("question null", q, {"question": None}),
        ("question a list", q, {"question": ["a"]}), ("question an object", q, {"question": {"a": 1}}),
        ("question a bool", q, {"question": True}), ("question empty", q, {"question": ""}),
        ("question of 2,001 characters", q, {"question": "x" * 2001}),
        ("max_tokens a string", q, {"question": "ok?", "max_tokens": "5"}),
        ("max_tokens 0", q, {"question": "ok?", "max_tokens": 0}),
        ("max_tokens 1,025", q, {"question": "ok?", "max_tokens": 1025}),
        ("max_tokens -1", q, {"question": "ok?", "max_tokens": -1}),
        ("max_tokens 1.5", q, {"question": "ok?", "max_tokens": 1.5}),
        ("max_tokens a bool", q, {"question": "ok?", "max_tokens": True}),
        ("unknown field", q, {"question": "ok?", "temperature": 0.5}), ("no question", q, {}),
        ("body a list", q, [1]), ("body null", q, None), ("body a string", q, "What?"),
        ("chat without messages", chat, {}), ("chat with no message", chat, {"messages": []}),
        ("chat role unknown", chat, {"messages": [{"role": "robot", "content": "hi"}]}),
        ("chat content an integer", chat, {"messages": [{"role": "user", "content": 5}]}),
        ("chat user without content", chat, {"messages": [{"role": "user"}]}),
        ("chat without a user message", chat, {"messages": [{"role": "system", "content": "hi"}]}),
        ("chat messages a string", chat, {"messages": "hi"}),
        ("chat of 257 messages", chat, {"messages": user * 257}),
        ("chat max_tokens 0", chat, {"messages": user, "max_tokens": 0}),
        ("chat max_completion_tokens 5,000", chat, {"messages": user, "max_completion_tokens": 5000}),
        ("chat stream", chat, {"messages": user, "stream": True}),
        ("chat question of 2,001 characters", chat, {"messages": [{"role": "user", "content": "x" * 2001}]}),
    ]
    out = [(name, "POST", path, {"content": _json(body), "headers": js}) for name, path, body in bodies]
    raw: list[tuple[str, str, bytes]] = [
        ("not JSON", q, b"hello"), ("empty body", q, b""), ("truncated JSON", q, b'{"question": "ok?"'),
        ("JSON 1,000 deep", q, b'{"question": "ok", "max_tokens": ' + b"[" * 1000 + b"]" * 1000 + b"}"),
        ("JSON 100,000 deep, unterminated", q, b'{"question": ' + b"[" * 100_000),
        ("JSON 41 deep in an ignored field", chat, b'{"messages": [{"role": "user", "content": "hi"}], "x": '
         + b'{"a": ' * 40 + b"1" + b"}" * 40 + b"}"),
        ("integer of 5,000 digits", q, b'{"question": "ok?", "max_tokens": ' + b"9" * 5000 + b"}"),
        ("NaN", q, b'{"question": NaN}'), ("not UTF-8", q, b'{"question": "\xff\xfe"}'),
        ("lone surrogate", q, b'{"question": "Is \\ud800 a letter?"}'), ("lone low surrogate", q, b'{"question": "\\udfff"}'),
        ("chat content lone surrogate", chat, b'{"messages": [{"role": "user", "content": "hi \\ud800"}]}'),
        ("chat part lone surrogate", chat,
         b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\udbff!"}]}]}'),
        ("chat model lone surrogate", chat, b'{"model": "m\\ud800", "messages": [{"role": "user", "content": "hi"}]}'),
        ("body of 300 KiB", q, b'{"question": "' + b"x" * (300 << 10) + b'"}'),
        ("body of 4 MiB", chat, b" " * (4 << 20)),
    ]
    out += [(name, "POST", path, {"content": body, "headers": js}) for name, path, body in raw]
    out.append(("question as a form", "POST", q, {"data": {"question": "ok?"}}))
    out += [(f"certificate of height {h}", "GET", f"/v1/certificates/{h}", {})
            for h in ("0", "-1", "x", "1.5", str(2**70), "99999999")]
    out += [(f"ledger {k}={v}", "GET", "/v1/ledger", {"params": {k: v}})
            for k, v in (("limit", 0), ("limit", 501), ("offset", -1), ("limit", "x"), ("offset", 2**70))]
    out += [("unknown path", "GET", "/v1/nothing", {}), ("GET on /v1/query", "GET", q, {}),
            ("POST on /v1/status", "POST", "/v1/status", {"content": b"{}"}),
            ("DELETE a certificate", "DELETE", "/v1/certificates/1", {})]
    return out


async def attack_http(c: Peers, row: Row) -> None:
    node = c.node(0)
    app = create_app(PeerHandle(node.key.peer_id, "peer0", "m0", phase="ready", node=node))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://peer", timeout=30) as client:
        for name, method, path, kwargs in http_attacks():
            try:
                r = await client.request(method, path, **kwargs)
            except Exception as exc:  # the app raised through the transport
                row.attempt(name, False, f"{type(exc).__name__}: {exc}")
                continue
            row.attempt(name, 400 <= r.status_code < 500, f"HTTP {r.status_code}: {r.text[:200]}")


async def _stall(address: tuple[str, int], drip: bool, deadline: float, out: list[tuple[float, bytes]]) -> None:
    """Send a request head and part of its body, then stall (or drip a byte every 0.2 s); record when the
    server closed the connection and what it answered."""
    start = trio.current_time()
    received = b""
    head = (b"POST /v1/query HTTP/1.1\r\nHost: peer\r\nContent-Type: application/json\r\n"
            b"Content-Length: 200\r\n\r\n")
    try:
        async with await trio.open_tcp_stream(*address) as stream:
            await stream.send_all(head + b'{"question": "')
            with trio.move_on_after(deadline):
                while True:
                    with trio.move_on_after(0.2 if drip else deadline):
                        chunk = await stream.receive_some(4096)
                        if not chunk:
                            break
                        received += chunk
                        continue
                    await stream.send_all(b"x")
    except (trio.BrokenResourceError, OSError):
        received = received or b"reset"
    out.append((trio.current_time() - start, received))


async def attack_slow_bodies(c: Peers, row: Row, n: int) -> None:
    from hypercorn.trio import serve

    from peers.daemon import http_config

    node = c.node(0)
    app = create_app(PeerHandle(node.key.peer_id, "peer0", "m0", phase="ready", node=node),
                     HttpLimits(body_timeout_s=1.0))
    bound = 6.0
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, app, http_config("127.0.0.1", 0))
        host, port = binds[0].removeprefix("http://").rsplit(":", 1)
        for drip in (False, True):
            results: list[tuple[float, bytes]] = []
            async with trio.open_nursery() as clients:
                for _ in range(n):
                    clients.start_soon(_stall, (host, int(port)), drip, bound + 4, results)
            for t, answer in results:
                ok = t < bound and (answer.startswith(b"HTTP/1.1 408") or answer == b"reset")
                row.attempt("dripping body" if drip else "stalled body", ok, f"open {t:.1f} s, {answer[:40]!r}")
            row.notes.append(f"{'dripping' if drip else 'stalled'}: {n} connections, the last closed after "
                             f"{max(t for t, _ in results):.1f} s (limit 1 s)")
        nursery.cancel_scope.cancel()


# --- 5. handshake attacks ------------------------------------------------------------------------


async def _closed_within(stream: trio.SocketStream, timeout: float, drip: bool = False) -> float | None:
    """Seconds until the listener closed ``stream`` (reading what it sends), or None after ``timeout``."""
    start = trio.current_time()
    with trio.move_on_after(timeout):
        try:
            while True:
                with trio.move_on_after(0.3 if drip else timeout):
                    if not await stream.receive_some(65536):
                        return trio.current_time() - start
                    continue
                await stream.send_all(b"\x01")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return trio.current_time() - start
    return None


def _eph() -> tuple[Any, bytes]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    k = X25519PrivateKey.generate()
    return k, k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class _Recording(trio.abc.Stream):
    """A stream that keeps what is sent on it (an eavesdropper's copy of a handshake)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner, self.sent = inner, bytearray()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += data
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def attack_handshakes(c: Peers, row: Row) -> None:
    from peers.secure import AUTH_DOMAIN, FrameCipher, HandshakeError, derive_session, handshake, x25519_shared
    from peers.transport import ACCEPT, HANDSHAKE_TIMEOUT, MAX_HANDSHAKES
    from peers.wire import RemoteProtocolError, encode_frame

    target = c.node(0)
    port, me = target.transport.listen_port, target.key.peer_id
    assert port is not None
    limit = HANDSHAKE_TIMEOUT + 3
    attacker, victim = c.node(ATTACKER).key, c.node(1).key

    async def opened() -> trio.SocketStream:
        return await trio.open_tcp_stream("127.0.0.1", port)

    async def raw(opening: bytes, drip: bool = False) -> tuple[bool, str]:
        async with await opened() as s:
            if opening:
                await s.send_all(opening)
            t = await _closed_within(s, limit, drip)
        return t is not None, f"closed after {t:.2f} s" if t is not None else "still open"

    async def as_key(key: KeyPair) -> tuple[bool, str]:
        stream = await opened()
        try:
            channel = await handshake(stream, key, me, timeout=5)
            with trio.move_on_after(3):
                got = await channel.receive()
                return got != ACCEPT, f"listener sent {got[:8]!r}"
            return True, "no ACCEPT"
        except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError, OSError,
                RemoteProtocolError) as exc:
            return True, type(exc).__name__
        finally:
            await stream.aclose()

    async def impersonate() -> tuple[bool, str]:
        async with await opened() as s:
            private, local = _eph()
            await s.send_all(local)
            remote = b""
            while len(remote) < 32:
                chunk = await s.receive_some(32 - len(remote))
                if not chunk:
                    return True, "closed before the key exchange"
                remote += chunk
            keys = derive_session(x25519_shared(private, bytes(remote)), local, bytes(remote))
            claim = canonical.pack({"pub": victim.public_key, "sig": attacker.sign_raw(AUTH_DOMAIN + keys.challenge)})
            await s.send_all(encode_frame(FrameCipher(keys.send_key).seal(claim)))
            t = await _closed_within(s, limit)
        return t is not None and t < 2, f"closed after {t}"

    async def replayed() -> tuple[bool, str]:
        recording = _Recording(await opened())
        channel = await handshake(recording, victim, me, timeout=5)  # an honest handshake, overheard
        await channel.aclose()
        ok, why = await raw(bytes(recording.sent))
        return ok, why

    async def tampered_frame() -> tuple[bool, str]:
        stream = await opened()
        try:
            channel = await handshake(stream, attacker, me, timeout=5)
            if await channel.receive() != ACCEPT:
                return True, "not accepted"
            before = target.transport.statistics().peers[attacker.peer_id].protocol_errors
            await stream.send_all(encode_frame(b"\x00" * 40))  # not sealed with the session key
            t = await _closed_within(stream, limit)
            after = target.transport.statistics().peers[attacker.peer_id].protocol_errors
            return t is not None, f"closed after {t}, protocol errors {before} -> {after}"
        finally:
            await stream.aclose()

    _, eph = _eph()
    attacks: dict[str, Callable[[], Awaitable[tuple[bool, str]]]] = {
        "silent connection": lambda: raw(b""),
        "dripping connection": lambda: raw(b"\x01", drip=True),
        "low-order X25519 key": lambda: raw(bytes(32)),
        "garbage identity frame": lambda: raw(eph + encode_frame(os.urandom(125))),
        "random key and a 4 GiB frame header": lambda: raw(os.urandom(32) + b"\xff" * 300),
        "2 MiB identity frame": lambda: raw(eph + (2 << 20).to_bytes(4, "big") + bytes(1 << 16)),
        "a key outside the validator set": lambda: as_key(KeyPair.from_seed(b"s" * 32)),
        "another validator's identity, the attacker's signature": impersonate,
        "an overheard handshake replayed": replayed,
        "a forged frame after authenticating": tampered_frame,
    }
    results: dict[str, tuple[bool, str]] = {}

    async def one(name: str, fn: Callable[[], Awaitable[tuple[bool, str]]]) -> None:
        try:
            results[name] = await fn()
        except (HandshakeError, RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError,
                trio.EndOfChannel, OSError) as exc:  # the listener closed on us mid-attack: refused
            results[name] = (True, f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # anything else is this bench's failure, not a refusal
            results[name] = (False, f"the attack failed: {type(exc).__name__}: {exc}")

    async with trio.open_nursery() as nursery:
        for name, fn in attacks.items():
            nursery.start_soon(one, name, fn)
    for name, (ok, why) in results.items():
        row.attempt(name, ok, why)
    # 200 connections at once: at most MAX_HANDSHAKES in flight, the rest closed at once, all by the deadline
    stats0 = target.transport.statistics()
    socks = []
    for _ in range(200):
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        socks.append(s)
    peak, start = 0, trio.current_time()
    while trio.current_time() - start < limit:
        peak = max(peak, target.transport.statistics().handshakes_in_flight)
        if all(_sock_closed(s) for s in socks):
            break
        await trio.sleep(0.01)
    closed = sum(_sock_closed(s) for s in socks)
    stats = target.transport.statistics()
    refused_now = stats.refused_connections - stats0.refused_connections
    for s in socks:
        s.close()
    row.attempt("200 connections at once", closed == 200 and peak <= MAX_HANDSHAKES,
                f"{closed} closed, peak {peak} in flight, {refused_now} refused at once")
    row.notes.append(f"200 connections: peak {peak} handshakes in flight (cap {MAX_HANDSHAKES}), {refused_now} "
                     f"closed at once, all closed after {trio.current_time() - start:.1f} s")


def _sock_closed(s: socket.socket) -> bool:
    try:
        while True:
            if not s.recv(4096):
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


# --- 6. floods from one validator ----------------------------------------------------------------


def bounds(node: Node) -> dict[str, int]:
    """Each table of ``Driver.statistics()`` (and the core's buffer) and its bound, as the modules state them."""
    from consensus.driver._driver import MAX_REQUESTS, MAX_SCORING_JOBS, _FUTURE_HEIGHTS

    d = node.driver
    n, r, far = len(d.validators), d.core.round, d.core.catchup_rounds
    window = 4 + far  # rounds round-2 .. round+1+catchup_rounds
    return {
        "pending": d.config.max_pending, "orphan_queries": 1024, "orphan_answers": 1024 * n, "decided_ids": 65_536,
        "score_vectors": (SCORE_WINDOW + 2 + FUTURE_HEIGHTS) * n, "evidence": n, "sims": SIMS_KEPT,
        "held_proposals": window, "checked_proposals": 2 * window, "checking": MAX_CHECKING,
        "scoring_jobs": MAX_SCORING_JOBS, "future_proposals": _FUTURE_HEIGHTS * n * MAX_FUTURE_PER_SIGNER,
        "catchup_waiting": MAX_CATCHUP_AHEAD * MAX_CATCHUP_PER_HEIGHT, "exposed": (r + 2) * n,
        "relayable_votes": 2 * (r + 2) * n, "own_messages": RESEND_MESSAGES + 3 * (r + 1),
        "own_answers": d.config.max_pending, "join_requests": MAX_REQUESTS, "leave_requests": n,
        "core_buffer": d.core.future_heights * n * d.core.buffer_per_signer,
    }


def sizes(node: Node) -> dict[str, int]:
    return {**node.driver.statistics(), "core_buffer": sum(len(v) for v in node.driver.core._buffer.values())}


async def attack_floods(c: Peers, row: Row, n: int) -> None:
    attacker = c.node(ATTACKER)
    key, me = attacker.key, attacker.key.peer_id
    targets = {i: c.node(i) for i in range(4) if i != ATTACKER}
    h = max(t.height for t in targets.values())
    value, _, _ = forge_decision(key, c.net.genesis.validators, h, 800)

    def vote(kind: Any, height: int, round_: int, vid: bytes | None) -> bytes:
        from peers.wire import encode_message

        return encode_message(sign(Vote(type=kind, height=height, round=round_, value_id=vid, voter=me), key))

    def proposal(height: int, round_: int, v: Any = value) -> bytes:
        from peers.wire import encode_message

        return encode_message(sign(Proposal(height=height, round=round_, valid_round=-1, proposer=me, value=v), key))

    def answer(i: int) -> bytes:
        from peers.wire import encode_message

        return encode_message(sign(Answer(query_id=os.urandom(32), peer=me, model="m", text=f"flood {i}", gen_ms=1),
                                   key))

    floods: dict[str, Callable[[], list[bytes]]] = {
        "far-future votes": lambda: [vote(k, h + 1 + i, 0, os.urandom(32)) for i in range(n)
                                     for k in ("prevote", "precommit")],
        "far-round votes at the current height": lambda: [vote(k, h, i, os.urandom(32)) for i in range(n)
                                                          for k in ("prevote", "precommit")],
        "conflicting votes (one round, many values)": lambda: [vote(k, h, 0, os.urandom(32)) for _ in range(n)
                                                               for k in ("prevote", "precommit")],
        "far-future proposals": lambda: [proposal(h + 1 + i // 4, i % 4) for i in range(n // 4)],
        "far-round proposals at the current height": lambda: [proposal(h, i) for i in range(n // 4)],
        "conflicting proposals (one round, many values)":
            lambda: [proposal(h, 0, value.model_copy(update={"answer": f"flood {i}"})) for i in range(n // 4)],
        "orphan answers (queries never sent)": lambda: [answer(i) for i in range(2 * n)],
    }
    worst: dict[str, tuple[int, int]] = {}
    for name, build in floods.items():
        payloads = build()
        over: list[str] = []
        received = {i: t.transport.statistics().peers[me].received for i, t in targets.items()}
        dropped = {i: t.transport.statistics().peers[me].inbound_dropped for i, t in targets.items()}

        def sample() -> None:
            for i, t in targets.items():
                limits = bounds(t)
                for table, size in sizes(t).items():
                    bound = limits.get(table)
                    if bound is None:
                        over.append(f"peer{i} {table}: no stated bound")
                    elif size > bound:
                        over.append(f"peer{i} {table} = {size} > {bound}")
                    if bound is not None and size > worst.get(table, (0, bound))[0]:
                        worst[table] = (size, bound)

        for start in range(0, len(payloads), 256):
            for t in targets.values():
                for payload in payloads[start:start + 256]:
                    attacker.transport.send_nowait(t.key.peer_id, payload)
            with trio.move_on_after(10):
                while any(attacker.transport.statistics().peers[t.key.peer_id].queued
                          or t.transport.statistics().peers[me].inbound_queued for t in targets.values()):
                    sample()
                    await trio.sleep(0.005)
            sample()
        alive = all(i in c.alive() for i in targets)
        row.attempt(name, not over and alive, "; ".join(sorted(set(over))[:5]) + ("" if alive else " (a peer is down)"))
        got = sum(t.transport.statistics().peers[me].received - received[i] for i, t in targets.items())
        lost_in = sum(t.transport.statistics().peers[me].inbound_dropped - dropped[i] for i, t in targets.items())
        row.notes.append(f"{name}: {len(payloads)} messages to each of {len(targets)} peers; they received {got} "
                         f"from the attacker (its gossip included), {lost_in} dropped by full inbound queues")
    row.notes.append("largest tables: " + ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in sorted(worst.items()) if v[0]))


# --- 7. availability ------------------------------------------------------------------------------


async def attack_concurrent_queries(c: Peers, row: Row, n: int) -> None:
    apps = [create_app(PeerHandle(c.node(i).key.peer_id, f"peer{i}", f"m{i}", phase="ready", node=c.node(i)))
            for i in range(4)]
    clients = [httpx.AsyncClient(transport=httpx.ASGITransport(app=a), base_url="http://peer", timeout=600)
               for a in apps]
    results: list[tuple[bool, str]] = []

    async def one(k: int) -> None:
        try:
            r = await clients[k % 4].post("/v1/query", json={"question": Q})
            if r.status_code != 200:
                results.append((False, f"HTTP {r.status_code}: {r.text[:100]}"))
                return
            reply = check_reply(r.json())  # what `multillmn ask` does with a reply
            cert = check(reply, c.net.genesis)
            results.append((cert.answer == "Paris", f"height {cert.height}"))
        except (ClientError, CertificateError) as exc:
            results.append((False, str(exc)))

    try:
        async with trio.open_nursery() as nursery:
            for k in range(n):
                nursery.start_soon(one, k)
    finally:
        for client in clients:
            await client.aclose()
    for k, (ok, why) in enumerate(results):
        row.attempt(f"query {k}", ok, why)
    row.notes.append(f"{n} queries through 4 peers' APIs at once, each reply and certificate checked from the genesis")


async def attack_kill_mid_query(c: Peers, row: Row, n: int = 8, victim: int = 1) -> None:
    results: list[bool] = []

    async def one(entry: int) -> None:
        results.append(await decide(c, entry, timeout=120))

    async with trio.open_nursery() as nursery:
        for k in range(n):
            nursery.start_soon(one, (0, 2)[k % 2])
        with trio.move_on_after(5):  # the victim holds the queries (answering them): now it goes
            while len(c.node(victim).driver.pool) < n // 2:
                await trio.sleep(0.001)
        undecided = n - len(results)
        await c.stop(victim)
    for k, ok in enumerate(results):
        row.attempt(f"query {k} with peer{victim} stopped mid-query", ok)
    restarted = await c.restart(victim)
    converged = restarted and await settle(c, 60)
    row.notes.append(f"peer{victim} stopped with {undecided} of {n} queries undecided; the other 3 decided them; "
                     f"restarted from its store: {'caught up' if converged else 'DID NOT catch up'}")
    if not converged:
        row.not_refused.append({"attack": "restart", "why": f"peer{victim} did not catch up after its restart"})


# --- the run ------------------------------------------------------------------------------------


def classes(quick: bool = False) -> list[tuple[str, Callable[[Peers, Row], Awaitable[None]]]]:
    """The attack classes in the order they run (``quick``: fewer slow connections, flood messages, queries)."""
    return [
        ("Forged certificates, verified by a client from the genesis", attack_client_forgeries),
        ("`multillmn verify` on hostile files", attack_hostile_files),
        ("Forged certificates posted to the ledger", attack_ledger_forgeries),
        ("msgpack 1,010 and 100,000 deep (wire, proposal envelopes, DAG event, store)", attack_deep_nesting),
        ("Malformed HTTP requests", attack_http),
        ("Slow HTTP bodies (stalled or dripping)", lambda c, r: attack_slow_bodies(c, r, 10 if quick else 100)),
        ("Handshake attacks on the transport", attack_handshakes),
        ("Floods from one validator", lambda c, r: attack_floods(c, r, 100 if quick else 1000)),
        ("Concurrent queries", lambda c, r: attack_concurrent_queries(c, r, 6 if quick else 50)),
        ("One peer of four stopped mid-query, then restarted", attack_kill_mid_query),
    ]


async def run(quick: bool = False) -> tuple[list[Row], list[str]]:
    """Every attack class against the same four peers; the rows and every crash record."""
    import tests.test_ledger_integration as cluster_module
    from dataclasses import replace

    saved = cluster_module.CFG  # queries wait for up to 50 heights before theirs: give them time
    cluster_module.CFG = replace(saved, query_timeout_s=600.0)
    try:
        return await _run(quick)
    finally:
        cluster_module.CFG = saved


async def _run(quick: bool) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with peers(Path(tmp)) as c:
            for entry in (0, 1):
                if not await decide(c, entry):
                    raise RuntimeError("the honest peers did not decide before the attacks")
            await settle(c)
            for name, attack in classes(quick):
                row, before, crashes = Row(name), served(c), len(c.crashes)
                start = time.perf_counter()
                print(f"{name} ...", file=sys.stderr, flush=True)
                try:
                    await attack(c, row)
                except Exception as exc:  # the bench's own failure: shown, never hidden
                    row.not_refused.append({"attack": "the attack itself", "why": f"{type(exc).__name__}: {exc}"})
                if not await settle(c):
                    row.notes.append("the peers did not settle within 30 s")
                row.seconds = time.perf_counter() - start
                row.crashed = len(c.crashes) - crashes
                for i in range(4):  # a crashed peer comes back, so the next class starts from four
                    if i not in c.alive():
                        if i in c.running:
                            await c.stop(i)
                        await c.restart(i)
                        await settle(c)
                row.lost = lost(before, c)
                if not await decide(c, 0):
                    row.not_refused.append({"attack": "liveness", "why": "no decision after this class"})
                await settle(c)
                rows.append(row)
            records = list(c.crashes)
    return rows, records


def failures(rows: list[Row]) -> list[str]:
    out = []
    for r in rows:
        out += [f"{r.name}: {x['attack']}: {x['why']}" for x in r.not_refused if x["attack"] not in KNOWN_OPEN]
        if r.crashed:
            out.append(f"{r.name}: {r.crashed} peer(s) crashed")
        if r.lost:
            out.append(f"{r.name}: {r.lost} certificate(s) lost")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--quick", action="store_true", help="fewer slow connections, flood messages and queries")
    ap.add_argument("--verbose", action="store_true", help="the peers' log lines too")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.CRITICAL)
    wall = time.perf_counter()
    rows, crashes = trio.run(run, args.quick)
    wall = time.perf_counter() - wall
    print(f"\n| attack class | tried | refused | peers crashed | data lost | time |\n|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r.name} | {r.tried} | {r.refused} | {r.crashed} | {r.lost} | {r.seconds:.1f} s |")
    total = Row("total", sum(r.tried for r in rows), sum(r.refused for r in rows), sum(r.crashed for r in rows),
                sum(r.lost for r in rows), wall)
    print(f"| **all** | **{total.tried}** | **{total.refused}** | **{total.crashed}** | **{total.lost}** | "
          f"{wall:.0f} s |")
    for r in rows:
        for note in r.notes:
            print(f"  {r.name}: {note}")
        for x in r.not_refused:
            known = " (known open)" if x["attack"] in KNOWN_OPEN else ""
            print(f"  NOT REFUSED{known} {r.name}: {x['attack']}: {x['why']}")
    for crash in crashes:
        print(f"  CRASH {crash}")
    bad = failures(rows)
    if args.json is not None:
        args.json.write_text(json.dumps({
            "command": "bench/security.py" + (" --quick" if args.quick else ""), "wall_s": round(wall, 1),
            "rows": [{**asdict(r), "seconds": round(r.seconds, 1)} for r in rows], "crashes": crashes,
            "known_open": sorted(KNOWN_OPEN), "failures": bad}, indent=2) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
