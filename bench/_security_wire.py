"""Security bench, attack classes 3 and 5: deep msgpack (wire, envelopes, DAG, store) and handshakes."""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from bench._security_peers import ATTACKER, DEPTHS, Peers, Row, _ledger_of, settle
from consensus.driver.behaviours import forge_decision
from consensus.messages import Envelope, EvidencePair, Proposal
from dag import Store, sign_event
from multillmn import canonical
from multillmn.identity import KeyPair
from peers.attacks import deep_msgpack, deep_payload, poisoned_events_payload
from peers.node import Node


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
