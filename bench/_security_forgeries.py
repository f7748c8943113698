"""Security bench, attack classes 1-2: forged certificates verified by a client, posted to the ledger."""

from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path
from typing import Any

from bench._security_peers import ATTACKER, CROSS_CHAIN_POST, Peers, Row, _ledger_of, decide, settle
from consensus.driver.behaviours import forge_decision
from consensus.lightclient import TrustedState, plan_path
from consensus.messages import Vote, decode_value, sign
from dag import certificate_tx
from multillmn import canonical
from multillmn.certificate import (
    CertificateError,
    build_certificate,
    light_block_of,
    verify,
    verify_file,
    with_trust_path,
)
from multillmn.genesis import Genesis
from peers.attacks import forged_certificate
from peers.node import Node
from tests import test_certificate as tc
from tests.conftest import Net, make_net


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
