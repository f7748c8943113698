"""Certificates: a real decision verifies offline; every kind of tampering fails with its reason."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest

from consensus import grouping
from consensus.lightclient import TrustedState, plan_path
from consensus.validators import Validator, ValidatorSet
from multillmn import canonical
from multillmn.certificate import (
    CertificateError,
    build_certificate,
    light_block_of,
    verify,
    verify_file,
    with_trust_path,
)
from multillmn.cli import main as cli_main
from multillmn.genesis import Genesis
from tests.conftest import Net, make_net


def _cert(net: Net, voters: list[int], texts: list[str] | None = None) -> dict[str, Any]:
    value = net.value(texts or ["Paris", "Paris", "Paris.", "Berlin"])
    precommits = tuple(net.precommit(i, 3, 1, value) for i in voters)
    return build_certificate(net.genesis, 3, 1, value, precommits)


def test_valid_certificate_verifies(net4: Net) -> None:
    cert = verify(_cert(net4, [0, 1, 2]), net4.genesis)
    assert cert.answer == "Paris" and cert.height == 3 and cert.round == 1
    assert cert.agreed_weight == 2 and cert.precommit_weight == 3 and cert.total_weight == 4
    assert cert.question == "What is the capital of France?"


def test_certificate_survives_json_round_trip(net4: Net) -> None:
    data = json.loads(json.dumps(_cert(net4, [0, 1, 2, 3])))
    assert verify(data, net4.genesis).precommit_weight == 4


def _mutate(cert: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(cert)
    node = out
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


def _flip_value_answer(cert: dict[str, Any]) -> dict[str, Any]:
    raw = dict(canonical.unpack(base64.b64decode(cert["value"])))
    raw["answer"] = "Berlin"
    return _mutate(cert, "value", base64.b64encode(canonical.pack(raw)).decode())


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda c: _mutate(c, "summary.answer", "Berlin"), "summary does not match"),
        (lambda c: _mutate(c, "height", 4), "not a precommit for height 4"),
        (lambda c: _mutate(c, "round", 0), "not a precommit for height 3 round 0"),
        (_flip_value_answer, "value_id does not match"),
        (lambda c: _mutate(c, "precommits", c["precommits"][:2]), "carry 2 of 4 weight"),
        (lambda c: _mutate(c, "precommits", c["precommits"][:2] + c["precommits"][:1]), "repeats voter"),
        (lambda c: _mutate(c, "precommits.0.sig", base64.b64encode(b"\x00" * 64).decode()), "bad signature"),
        (lambda c: _mutate(c, "value", "###"), "not valid base64"),
        (lambda c: _mutate(c, "genesis.validators.0.weight", 100), "not the trusted genesis"),
        (lambda c: _mutate(c, "validators.0.weight", 100), "not the one the value commits to"),
        (lambda c: _mutate(c, "trust_path", [{"height": 1}]), r"trust_path\[0\] must hold"),
        (lambda c: {k: v for k, v in c.items() if k != "summary"}, "missing \\['summary'\\]"),
        (lambda c: _mutate(c, "version", 9), "unsupported certificate version"),
    ],
)
def test_tampered_certificate_fails_with_reason(net4: Net, tamper: Any, reason: str) -> None:
    cert = _cert(net4, [0, 1, 2])
    with pytest.raises(CertificateError, match=reason):
        verify(tamper(cert), net4.genesis)


def test_value_id_recomputed_after_tamper_still_fails(net4: Net) -> None:
    """Re-hashing a tampered value does not help: precommits signed the original id."""
    cert = _flip_value_answer(_cert(net4, [0, 1, 2]))
    raw = canonical.unpack(base64.b64decode(cert["value"]))
    cert["value_id"] = canonical.digest(raw).hex()
    with pytest.raises(CertificateError):
        verify(cert, net4.genesis)


def test_forged_validator_set_is_caught_only_with_a_trusted_genesis(net4: Net) -> None:
    forger = make_net([1, 1, 1, 1], seed=100)
    forged = _cert(forger, [0, 1, 2])
    assert verify(forged).answer == "Paris"  # consistent on its own...
    with pytest.raises(CertificateError, match="trusted genesis"):
        verify(forged, net4.genesis)  # ...but not signed by our validators
    swapped = {**forged, "genesis": net4.genesis.to_json()}  # claiming our genesis does not help either
    with pytest.raises(CertificateError, match=r"signers hold 0 of 4 weight in the set trusted at height 0"):
        verify(swapped, net4.genesis)


def test_weighted_quorum_boundary() -> None:
    net = make_net([2, 1, 1, 1, 1])  # total 6: 4 is exactly 2/3, not a quorum
    with pytest.raises(CertificateError, match="carry 4 of 6"):
        verify(_cert(net, [0, 1, 2], ["Paris"] * 5), net.genesis)
    assert verify(_cert(net, [0, 1, 2, 3], ["Paris"] * 5), net.genesis).precommit_weight == 5


def test_cli_verify_exit_codes(net4: Net, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "cert.json"
    good.write_text(json.dumps(_cert(net4, [0, 1, 2])))
    genesis = tmp_path / "genesis.json"
    net4.genesis.save(genesis)
    assert cli_main(["verify", str(good), "--genesis", str(genesis)]) == 0
    assert "VALID" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_mutate(_cert(net4, [0, 1, 2]), "summary.question", "Who?")))
    assert cli_main(["verify", str(bad)]) == 1
    assert "summary does not match" in capsys.readouterr().err
    notjson = tmp_path / "x.json"
    notjson.write_text("{")
    with pytest.raises(CertificateError, match="not JSON"):
        verify_file(notjson)
    assert Genesis.load(genesis).chain_id == "test-chain"


def _set(net: Net, weights: list[int]) -> ValidatorSet:
    """The genesis members with ``weights[i]`` for the holder of key ``i``."""
    by_id = {k.peer_id: w for k, w in zip(net.keys, weights)}
    return ValidatorSet(Validator(v.peer_id, v.public_key, by_id[v.peer_id], v.moniker) for v in net.genesis.validators)


def _decision(net: Net, height: int, vs: ValidatorSet, next_vs: ValidatorSet, signers: list[int],
              texts: list[str] | None = None, question: str = "What is the capital of France?") -> dict[str, Any]:
    """A certificate of ``height`` counted in ``vs`` that commits to ``next_vs``, signed by ``signers``."""
    texts = texts or ["Paris"] * len(net.keys)
    query = net.query(question)
    answers = [net.answer(query, i, t) for i, t in enumerate(texts)]
    n = len(answers)
    sims = [1000 if texts[i] == texts[j] else 0 for i in range(n) for j in range(i + 1, n)]
    value = grouping.build_value(query.envelope, answers, sims, [vs.weight_of(a.signer) for a in answers], 800,
                                 validators_hash=vs.set_hash(), next_validators_hash=next_vs.set_hash(),
                                 chain_id=net.genesis.chain_id)
    precommits = tuple(net.precommit(i, height, 0, value) for i in signers)
    return build_certificate(net.genesis, height, 0, value, precommits, validators=vs)


def test_the_heights_own_set_counts_and_must_be_the_one_the_value_commits_to() -> None:
    net = make_net([1, 1, 1, 1])
    later = _set(net, [500, 300, 100, 100])
    # peers 0 and 1 hold 800 of 1000 in this height's set (a quorum) and half of the genesis weight (> 1/3)
    cert = _decision(net, 7, later, later, [0, 1], ["Paris", "Paris", "Lyon", "Lyon"])
    checked = verify(cert, net.genesis)
    assert (checked.precommit_weight, checked.total_weight, checked.answer) == (800, 1000, "Paris")
    assert checked.trusted.height == 7 and checked.trusted.validators == later
    heavier = _mutate(cert, "validators.2.weight", 900)  # shift weight: the value committed to another set
    with pytest.raises(CertificateError, match="not the one the value commits to"):
        verify(heavier, net.genesis)
    renamed = _mutate(cert, "validators.0.moniker", "mallory")
    with pytest.raises(CertificateError, match="not the one the value commits to"):
        verify(renamed, net.genesis)


@pytest.mark.parametrize(("n", "forgers", "signers_weight"), [(4, 1, 1), (10, 1, 1), (10, 3, 3)])
def test_a_minority_cannot_forge_a_certificate_with_weights_of_its_choosing(
        n: int, forgers: int, signers_weight: int) -> None:
    """Issue 10: the same members and keys, weights giving the forgers the quorum, their own question and
    answer, only their own precommits. Verified from the genesis, it must be refused."""
    net = make_net([1] * n)
    forged_weights = [10**6 if i < forgers else 1 for i in range(n)]
    forged = _set(net, forged_weights)
    cert = _decision(net, 62, forged, forged, list(range(forgers)), ["Yes, flat."] * n, "Is the earth flat?")
    for trusted in (net.genesis, None):  # a quorum of the set it claims, but not trusted from the genesis
        with pytest.raises(CertificateError, match=f"signers hold {signers_weight} of {n} weight in the set "
                                                   "trusted at height 0; more than 1/3 is needed"):
            verify(cert, trusted)
    adjacent = _decision(net, 1, forged, forged, list(range(forgers)), ["Yes, flat."] * n)
    with pytest.raises(CertificateError, match="not the one height 0 committed to"):
        verify(adjacent, net.genesis)  # nor as the first height


def test_a_trust_path_follows_set_changes_that_skipping_cannot_cross() -> None:
    """Weight moved to peers 4-6; height 9's signers hold a quorum there but only 2 of 7 genesis weight."""
    net = make_net([1] * 7)
    genesis = net.genesis.validators
    moved = _set(net, [1, 1, 1, 1, 500, 500, 200])
    h5 = _decision(net, 5, genesis, moved, [0, 1, 2, 3, 4])  # signed by 5 of 7 genesis members: skippable
    h6 = _decision(net, 6, moved, moved, [4, 5, 6])  # 3 of 7 genesis weight > 1/3: skippable too
    h9 = _decision(net, 9, moved, moved, [4, 5])  # 1000 of 1204 in its own set, but 2 of 7 genesis: not
    with pytest.raises(CertificateError, match="signers hold 2 of 7 weight in the set trusted at height 0"):
        verify(h9, net.genesis)
    chain = {h: _decision(net, h, genesis, genesis, list(range(7))) for h in range(1, 5)}
    chain.update({5: h5, 6: h6, 7: _decision(net, 7, moved, moved, [4, 5]), 8: _decision(net, 8, moved, moved, [4, 5])})
    path = plan_path(TrustedState.genesis(net.genesis.chain_id, genesis), light_block_of(h9), lambda h: light_block_of(chain[h]))
    assert [b.height for b in path] == [4, 6]  # bisection: height 6's set (moved) vouches for height 9
    checked = verify(with_trust_path(h9, path), net.genesis)
    assert (checked.height, checked.path_length, checked.precommit_weight) == (9, 2, 1000)
    forged6 = _decision(net, 6, _set(net, [1, 1, 1, 1, 1, 900, 900]), moved, [5, 6])
    with pytest.raises(CertificateError, match="trust_path|signers hold 2 of 7"):
        verify(with_trust_path(h9, [light_block_of(forged6)]), net.genesis)
    # a client that already trusts height 6 needs no path
    state = verify(h6, net.genesis).trusted
    assert verify(h9, net.genesis, state=state).height == 9


def test_cli_verify_keeps_a_trusted_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    net = make_net([1] * 7)
    moved = _set(net, [1, 1, 1, 1, 500, 500, 200])
    genesis = tmp_path / "genesis.json"
    net.genesis.save(genesis)
    h6, h9 = tmp_path / "h6.json", tmp_path / "h9.json"
    h6.write_text(json.dumps(_decision(net, 6, moved, moved, [4, 5, 6])))
    h9.write_text(json.dumps(_decision(net, 9, moved, moved, [4, 5])))
    state = tmp_path / "trusted.json"
    assert cli_main(["verify", str(h9), "--genesis", str(genesis), "--trusted-state", str(state)]) == 1
    assert "more than 1/3 is needed" in capsys.readouterr().err and not state.exists()
    assert cli_main(["verify", str(h6), "--genesis", str(genesis), "--trusted-state", str(state)]) == 0
    assert json.loads(state.read_text())["height"] == 6
    assert cli_main(["verify", str(h9), "--trusted-state", str(state)]) == 0  # from height 6 now
    assert json.loads(state.read_text())["height"] == 9
    other = tmp_path / "other.json"
    make_net([1] * 7, seed=50).genesis.save(other)
    assert cli_main(["verify", str(h9), "--genesis", str(other), "--trusted-state", str(state)]) == 1
    assert "started from another genesis" in capsys.readouterr().err


def test_a_certificate_of_another_chain_with_the_same_keys_is_refused() -> None:
    """Votes sign their chain id: the same validators on another chain cannot be replayed here (nor their
    precommits turned into duplicate-vote evidence against them)."""
    net = make_net([1] * 4)
    other = Genesis.build("other-chain", [(v.moniker, v.public_key, v.weight) for v in net.genesis.validators])
    theirs = _cert(Net(net.keys, other), [0, 1, 2])
    assert verify(theirs, other).answer == "Paris"  # valid on its own chain
    replayed = {**theirs, "genesis": net.genesis.to_json(), "chain_id": net.genesis.chain_id}
    with pytest.raises(CertificateError, match="is for chain 'other-chain', not 'test-chain'"):
        verify(replayed, net.genesis)
