"""Many queries per height (ADR 0020): one value decides several, and each client's certificate proves its own.

Four nodes on loopback with scripted engines answer questions asked together;
the proposer packs the ready ones into one value. Each client gets a query
certificate (version 4): its outcome with a Merkle proof under the signed
header, verified offline without the other queries' answers.
"""

from __future__ import annotations

import base64
import copy
import json
from dataclasses import replace
from typing import Any

import pytest
import trio

from consensus import merkle
from consensus.messages import Value
from multillmn import canonical
from multillmn.certificate import CertificateError, query_certificate, verify
from multillmn.config import ConfigError, PeerConfig
from peers.engine import ScriptedEngine
from tests.conftest import make_net
from tests.test_node import running

TABLE = {f"What is {k} + {k}?": str(2 * k) for k in range(1, 9)}


GENERATION: list[dict[str, Any]] = []  # each node's status()["generation"] after the last run


async def _ask_together(queries_per_height: int) -> tuple[Any, list[Any]]:
    net = make_net([1, 1, 1, 1])
    engines = [ScriptedEngine(TABLE, model_name=f"m{i}", delay_s=0.2) for i in range(4)]
    cfg = replace(PeerConfig.for_tests(), max_batch=8, queries_per_height=queries_per_height)
    decisions: dict[str, Any] = {}
    async with running(net, engines, cfg=cfg) as nodes:
        async def ask(i: int, question: str) -> None:
            decisions[question] = await nodes[i % 4].submit(question)

        with trio.fail_after(60):
            async with trio.open_nursery() as n:
                for i, question in enumerate(TABLE):
                    n.start_soon(ask, i, question)
        GENERATION[:] = [node.status()["generation"] for node in nodes]
    return net, [decisions[q] for q in TABLE]


async def test_questions_asked_together_are_decided_in_fewer_heights_each_with_its_own_certificate() -> None:
    net, decisions = await _ask_together(queries_per_height=16)
    assert [d.outcome.answer for d in decisions] == list(TABLE.values())
    heights = {d.height for d in decisions}
    assert len(heights) < len(TABLE)  # several queries shared a height
    shared = [d for d in decisions if len(d.value.outcomes()) > 1]
    assert shared
    for d in decisions:
        cert = verify(d.certificate, net.genesis)  # offline, from the genesis alone
        assert cert.question in TABLE and cert.answer == TABLE[cert.question]
        assert cert.height == d.height and cert.queries == len(d.value.outcomes())
        if cert.queries > 1:  # a query certificate: its own outcome, none of the others' answers
            assert d.certificate["version"] == 4 and "value" not in d.certificate
            others = [o.answer for o in d.value.outcomes() if o.query_id() != d.outcome.query_id()]
            text = json.dumps(d.certificate)
            assert all(base64.b64encode(o.canonical()).decode() not in text
                       for o in d.value.outcomes() if o.query_id() != d.outcome.query_id())
            assert others
    for g in GENERATION:  # /v1/status shows the batches each peer's model ran
        assert g["answered"] == sum(int(k) * n for k, n in g["batch_sizes"].items()) <= len(TABLE)
        assert g["batches"] == sum(g["batch_sizes"].values()) and g["batches"] < g["answered"]
    # every query decided once, across heights
    ids = [q for h in heights for q in next(d for d in decisions if d.height == h).value.query_ids()]
    assert len(ids) == len(set(ids)) == len(TABLE)


async def test_one_query_per_height_when_configured() -> None:
    _, decisions = await _ask_together(queries_per_height=1)
    assert [d.outcome.answer for d in decisions] == list(TABLE.values())
    assert len({d.height for d in decisions}) == len(TABLE)
    assert all(len(d.value.outcomes()) == 1 and d.certificate["version"] == 3 for d in decisions)


def test_queries_per_height_is_validated() -> None:
    with pytest.raises(ConfigError, match="queries_per_height"):
        replace(PeerConfig.for_tests(), queries_per_height=0).validate()
    with pytest.raises(ConfigError, match="queries_per_height"):
        replace(PeerConfig.for_tests(), queries_per_height=17).validate()


# --- query certificates under attack --------------------------------------------------------------

@pytest.fixture(scope="module")
def shared() -> tuple[Any, Any]:
    net, decisions = trio.run(_ask_together, 16)
    d = next(d for d in decisions if len(d.value.outcomes()) > 1)
    return net, d


def _tampered(cert: dict[str, Any], edit: Any) -> dict[str, Any]:
    bad = copy.deepcopy(cert)
    edit(bad)
    return bad


def test_a_query_certificate_rejects_any_change_to_its_proof_or_outcome(shared: tuple[Any, Any]) -> None:
    net, d = shared
    cert = d.certificate
    verify(cert, net.genesis)
    value: Value = d.value
    other = next(o for o in value.outcomes() if o.query_id() != d.outcome.query_id())

    def swap_outcome(c: dict[str, Any]) -> None:  # another query's outcome under this proof
        c["outcome"] = base64.b64encode(other.canonical()).decode()

    def flip_path(c: dict[str, Any]) -> None:
        h = bytearray(bytes.fromhex(c["proof"]["path"][0]))
        h[0] ^= 1
        c["proof"]["path"][0] = h.hex()

    def move_index(c: dict[str, Any]) -> None:
        c["proof"]["index"] = (c["proof"]["index"] + 1) % c["proof"]["count"]

    def grow_count(c: dict[str, Any]) -> None:
        c["proof"]["count"] = 17

    def other_rest(c: dict[str, Any]) -> None:
        c["proof"]["rest_hash"] = "00" * 32

    def changed_answer(c: dict[str, Any]) -> None:  # the outcome re-encoded with another chosen answer
        raw = canonical.unpack(base64.b64decode(c["outcome"]))
        c["outcome"] = base64.b64encode(canonical.pack({**raw, "answer": "Berlin"})).decode()

    def other_header(c: dict[str, Any]) -> None:
        c["header"]["payload_hash"] = "11" * 32

    for edit in (swap_outcome, flip_path, move_index, grow_count, other_rest, changed_answer, other_header):
        with pytest.raises(CertificateError):
            verify(_tampered(cert, edit), net.genesis)


def test_a_commit_certificate_yields_a_query_certificate_for_each_of_its_queries(shared: tuple[Any, Any]) -> None:
    net, d = shared
    full = d.certificate  # rebuild the commit certificate the node holds: the value itself
    value: Value = d.value
    leaves = [o.canonical() for o in value.outcomes()]
    assert merkle.root_from_proof(leaves[full["proof"]["index"]], full["proof"]["index"], len(leaves),
                                  [bytes.fromhex(h) for h in full["proof"]["path"]]) == merkle.root(leaves)
    commit = {k: v for k, v in full.items() if k not in ("header", "outcome", "proof")}
    commit.update(version=3, value=base64.b64encode(value.canonical()).decode(), value_id=value.value_id().hex(),
                  summary=full["summary"])
    for o in value.outcomes():
        cert = verify(query_certificate(commit, o.query_id()), net.genesis)
        assert cert.answer == o.answer and cert.queries == len(leaves)
    with pytest.raises(CertificateError, match="does not decide"):
        query_certificate(commit, b"\0" * 32)
