"""n4f1: one validator's key against three honest in-process peers with ledgers (issue 10's reproductions).

The attacker forges a certificate with weights of its choosing, its own
question, answer and precommit, and posts it to the ledger, for the next
height (ahead of the real decision) and for a decided height (rewriting
history). Honest peers must refuse it, never move their core past it, never
serve it, and blame the signer where its signature conflicts with its real
precommit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from dag import certificate_tx
from multillmn.certificate import CertificateError, certificate_precommits, verify
from peers.attacks import forged_certificate
from peers.node import Node
from tests.test_ledger_integration import _ledger, _wait_settled, cluster
from tests.test_node import Q


def _post(node: object, height: int, cert: dict[str, object]) -> None:
    _ledger(node).submit(certificate_tx(height, json.dumps(cert, sort_keys=True).encode()))  # type: ignore[arg-type]


async def _wait_ignored(nodes: list[object], reason: str, count: int = 1) -> None:
    with trio.fail_after(20):
        while not all(_ledger(n).ledger.ignored.get(reason, 0) >= count for n in nodes):  # type: ignore[arg-type]
            await trio.sleep(0.05)


async def test_a_forged_certificate_for_the_next_height_is_refused_and_its_signer_caught(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        attacker, honest = c.nodes[3], c.nodes[:3]
        with trio.fail_after(30):
            await honest[0].submit(Q)
        await _wait_settled(c.nodes, [1])
        forged = forged_certificate(attacker.key, c.net.genesis, 2)
        with pytest.raises(CertificateError, match="more than 1/3 is needed"):
            verify(forged, c.net.genesis)  # a client refuses it too
        _post(attacker, 2, forged)
        await _wait_ignored(c.nodes, "unverified certificate")
        for node in honest:
            assert node.height == 2  # the core did not move past it
            assert node.certificate(2) is None  # and nobody serves it
        with trio.fail_after(30):
            real = await honest[1].submit(Q)
        assert real.height == 2 and real.value.answer == "Paris"
        await _wait_settled(c.nodes, [1, 2])  # the forgery did not stop the real certificate from being posted
        for node in c.nodes:
            served = node.certificate(2)
            assert served is not None and served["value_id"] == real.value.value_id().hex()
            assert verify(served, c.net.genesis).answer == "Paris"
        # the forged precommit (2, 0) and the attacker's real precommit (2, 0) are an equivocation: each honest
        # peer holds the evidence until a value carries it, then the attacker's trust is 0 in every chain
        def caught(n: Node) -> bool:
            state = n.driver.chain.state
            return attacker.key.peer_id in n.driver.scores.evidence or (
                state is not None and dict(state.trust)[attacker.key.peer_id] == 0)

        with trio.fail_after(10):
            while not all(caught(n) for n in honest):
                await trio.sleep(0.05)


async def test_a_forged_certificate_for_a_decided_height_cannot_rewrite_history(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        attacker = c.nodes[3]
        with trio.fail_after(30):
            real = await c.nodes[0].submit(Q)
        await _wait_settled(c.nodes, [1])
        _post(attacker, 1, forged_certificate(attacker.key, c.net.genesis, 1))
        await _wait_ignored(c.nodes, "conflicting certificate")
        accepted = _ledger(c.nodes[0]).certificate(1)
        assert accepted is not None and accepted["value_id"] == real.value.value_id().hex()
        keys = c.net.genesis.validators.public_key_of
        signed_real = attacker.key.peer_id in {v.signer for v in certificate_precommits(accepted, keys)}
        for node in c.nodes:
            ledger = _ledger(node).ledger
            assert node.certificate(1)["value_id"] == real.value.value_id().hex()  # type: ignore[index]
            blamed = [e for e in ledger.evidence if e["kind"] == "duplicate_vote"]
            # evidence exactly when the accepted certificate holds the attacker's own round-0 precommit
            assert [e["peer_id"] for e in blamed] == ([attacker.key.peer_id] if signed_real else [])
        assert len({_ledger(n).state_hash() for n in c.nodes}) == 1
