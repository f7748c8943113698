"""Certificates: a real decision verifies offline; every kind of tampering fails with its reason."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest

from multillmn import canonical
from multillmn.certificate import CertificateError, build_certificate, verify, verify_file
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
        (lambda c: _mutate(c, "genesis.validators.0.weight", 100), "differs from the trusted genesis"),
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


def test_the_heights_own_set_counts_and_must_be_the_one_the_value_commits_to() -> None:
    from consensus import grouping
    from consensus.validators import Validator, ValidatorSet

    net = make_net([1, 1, 1, 1])
    later = ValidatorSet(Validator(v.peer_id, v.public_key, w, v.moniker)
                         for v, w in zip(net.genesis.validators, [500, 300, 100, 100]))
    query = net.query()
    answers = [net.answer(query, i, t) for i, t in enumerate(["Paris", "Paris", "Lyon", "Lyon"])]
    value = grouping.build_value(query.envelope, answers, [1000, 0, 0, 0, 0, 1000], [500, 300, 100, 100], 800,
                                 validators_hash=later.set_hash())
    # peers 0 and 1 hold 800 of 1000 in this height's set: a quorum, though only half of the genesis weight
    cert = build_certificate(net.genesis, 7, 0, value, tuple(net.precommit(i, 7, 0, value) for i in (0, 1)),
                             validators=later)
    checked = verify(cert, net.genesis)
    assert (checked.precommit_weight, checked.total_weight, checked.answer) == (800, 1000, "Paris")
    heavier = _mutate(cert, "validators.2.weight", 900)  # shift weight: the value committed to another set
    with pytest.raises(CertificateError, match="not the set the value commits to"):
        verify(heavier, net.genesis)
    stranger = _mutate(cert, "validators.0.moniker", "mallory")
    with pytest.raises(CertificateError, match="members or keys differ from the genesis"):
        verify(stranger, net.genesis)
    static = Genesis.from_json({**net.genesis.to_json(), "params": {"weights": "static"}})
    with pytest.raises(CertificateError, match="weights are static"):
        verify({**cert, "genesis": static.to_json()})
