"""Valid frames to mutate, and the mutations, for the decoder property tests and ``bench/fuzz.py``.

:func:`build_corpus` makes real signed inputs of every kind a peer or a client
receives: a vote, a proposal whose value carries answers, score vectors and
evidence, a score vector, a DAG events batch and a DAG event carrying ledger
transactions, and a certificate's JSON. :func:`mutate` changes one input the
ways an attacker (or a bit flip) would: flipped, replaced, inserted and
deleted bytes, cuts, duplicated slices, msgpack and JSON headers planted at
random, and a run of nesting (``0x91``, ``[``) deep enough to reach the
interpreter's recursion limit if anything recursed on it.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from consensus import grouping
from consensus.chain import Chain
from consensus.evidence import DuplicateVoteEvidence
from consensus.messages import (Answer, EvidencePair, Proposal, Query, Signed, Value, Verdict, Vote, answers_digest,
                                open_envelope, sign)
from consensus.scores import ScoreVector
from dag.event import encode_event, sign_event
from dag.ledger import certificate_tx, evidence_tx, membership_tx, weights_tx
from dag.messages import DagEvents, DagSync, DagWant
from multillmn.certificate import build_certificate
from multillmn.genesis import Genesis
from peers.wire import encode_message
from tests.conftest import Net, make_net

__all__ = ["Corpus", "build_corpus", "mutate", "deep_msgpack", "deep_json"]


@dataclass(frozen=True)
class Corpus:
    """Valid inputs by decoder, and what checks them."""

    net: Net
    wire: dict[str, bytes]  # signed message payloads for peers.wire.decode_message
    events: dict[str, bytes]  # encoded DAG events for dag.event.decode_event
    certificates: dict[str, bytes]  # certificate JSON for multillmn.certificate.verify
    chain: Chain  # at height 1, so the proposal's extras (height 2) check out

    @property
    def genesis(self) -> Genesis:
        return self.net.genesis


def _value_at(net: Net, chain: Chain, height: int, texts: list[str], scores: tuple[Signed[ScoreVector], ...] = (),
              evidence: tuple[EvidencePair, ...] = ()) -> Value:
    query = sign(Query(entry=net.keys[0].peer_id, question=f"question {height}?", nonce=bytes([height]) * 16,
                       max_tokens=32, created_ms=0), net.keys[0])  # no random nonce: the corpus is deterministic
    answers = [net.answer(query, i, t) for i, t in enumerate(texts)]
    n = len(texts)
    sims = [1000 if texts[i] == texts[j] else 0 for i in range(n) for j in range(i + 1, n)]
    vs = chain.validators_at(height)
    return grouping.build_value(query.envelope, answers, sims, [vs.weight_of(a.signer) for a in answers],
                                net.genesis.params.similarity_threshold, validators_hash=vs.set_hash(),
                                next_validators_hash=chain.validators_at(height + 1).set_hash(),
                                scores=[s.envelope for s in scores], evidence=evidence,
                                last_commit=net.last_commit(chain, height))


def _verdict(net: Net, value: Value) -> Signed[Verdict]:
    """Peer 3's verdict on the other answers of ``value``'s first query (ADR 0022)."""
    rated = [e for e in value.answers if open_envelope(Answer, e, net.genesis.validators.public_key_of).signer
             != net.keys[3].peer_id]
    ids = [open_envelope(Answer, e, net.genesis.validators.public_key_of).signer for e in rated]
    return sign(Verdict(judge=net.keys[3].peer_id, query_id=value.query_id(), answers_digest=answers_digest(rated),
                        verdicts=tuple((p, -700) for p in ids)), net.keys[3])


def build_corpus() -> Corpus:
    """Real signed frames of every kind, on a 4-peer adaptive-weights network; the same bytes every run."""
    net = make_net([1, 1, 1, 1])
    keys, ids = net.keys, [k.peer_id for k in net.keys]
    chain = net.genesis.chain()
    v1 = _value_at(net, chain, 1, ["Paris", "Paris", "Paris", "Lyon"])
    chain.apply(1, v1)
    vectors = tuple(sign(ScoreVector(scorer=ids[i], height=1, query_id=v1.query_id(),
                                     scores=tuple(sorted(zip(ids, [1000, 1000, 1000, 0])))), keys[i])
                    for i in range(4))
    a = sign(Vote(chain_id=net.genesis.chain_id, type="prevote", height=1, round=0, value_id=None, voter=ids[2]), keys[2])
    b = sign(Vote(chain_id=net.genesis.chain_id, type="prevote", height=1, round=0, value_id=b"\x01" * 32,
                  voter=ids[2]), keys[2])
    dup = DuplicateVoteEvidence(first=a.envelope, second=b.envelope)
    evidence = EvidencePair(kind="duplicate_vote", first=dup.first, second=dup.second)
    v2 = _value_at(net, chain, 2, ["Paris", "Paris", "Paris.", "Berlin"], vectors, (evidence,))
    proposal = sign(Proposal(height=2, round=0, valid_round=-1, proposer=ids[1], value=v2), keys[1])
    precommit = sign(Vote(type="precommit", height=2, round=0, value_id=v2.value_id(), voter=ids[0]), keys[0])

    cert = build_certificate(net.genesis, 1, 0, v1, tuple(
        sign(Vote(type="precommit", height=1, round=0, value_id=v1.value_id(), voter=ids[i]), keys[i])
        for i in range(3)), validators=chain.validators_at(1))
    cert_json = json.dumps(cert, sort_keys=True, separators=(",", ":")).encode()
    txs = [certificate_tx(1, cert_json), weights_tx(3, {ids[0]: 2, ids[1]: 1}),
           evidence_tx("duplicate_vote", ids[2], b"\x00" * 40), membership_tx("join", ids[3], keys[3].public_key)]
    e0 = sign_event(keys[0], seq=0, self_parent=None, other_parent=None, timestamp=10, transactions=txs[:2])
    e1 = sign_event(keys[1], seq=0, self_parent=None, other_parent=None, timestamp=11, transactions=txs[2:])
    e2 = sign_event(keys[0], seq=1, self_parent=e0.hash, other_parent=e1.hash, timestamp=12)
    events = {"event-certificate": encode_event(e0), "event-evidence": encode_event(e1),
              "event-parents": encode_event(e2)}
    batch = DagEvents(sender=ids[0], events=tuple(events.values()))
    wire = {
        "vote": encode_message(precommit),
        "proposal": encode_message(proposal),
        "scores": encode_message(vectors[0]),
        "verdict": encode_message(_verdict(net, v2)),
        "dag-events": encode_message(sign(batch, keys[0])),
        "dag-sync": encode_message(sign(DagSync(sender=ids[1], vector={ids[0]: 2, ids[1]: 1}), keys[1])),
        "dag-want": encode_message(sign(DagWant(sender=ids[2], wanted=(e2.hash,), vector={ids[0]: 1}), keys[2])),
    }
    return Corpus(net, wire, events, {"certificate": cert_json}, chain)


def deep_msgpack(depth: int) -> bytes:
    """One-element arrays nested ``depth`` deep around a nil."""
    return b"\x91" * depth + b"\xc0"


def deep_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


_MSGPACK_HEADERS = (b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff", b"\xdb\x7f\xff\xff\xff",
                    b"\xcb\x7f\xf0\x00\x00\x00\x00\x00\x00", b"\xc7\x01\x05", b"\xd4\xff", b"\xc1",
                    b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff", b"\xd3\x80\x00\x00\x00\x00\x00\x00\x00",
                    b"\x81\xc4\x01k", b"\xa3\xed\xa0\x80")
_JSON_TOKENS = (b"[", b"{", b"]", b"}", b'"', b"\\", b"\\ud800", b"NaN", b"1e999", b"9" * 5000, b"-", b",", b":",
                b"\xff", b"\xed\xa0\x80", b"null", b'"\\u0000"', b"{}" * 3, b"[[[[[[[[")


def mutate(data: bytes, rng: random.Random, *, json_like: bool = False) -> bytes:
    """``data`` changed by one to three random mutations."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        n = len(out)
        op = rng.randrange(10)
        i = rng.randrange(n + 1) if n else 0
        if op == 0 and n:  # flip bits of one byte
            out[min(i, n - 1)] ^= rng.randint(1, 255)
        elif op == 1 and n:  # replace one byte
            out[min(i, n - 1)] = rng.randrange(256)
        elif op == 2:  # insert random bytes
            out[i:i] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and n:  # delete a slice
            del out[i:i + rng.randint(1, 16)]
        elif op == 4:  # cut
            del out[i:]
        elif op == 5 and n:  # duplicate a slice
            j = rng.randrange(n)
            out[i:i] = out[j:j + rng.randint(1, 64)]
        elif op == 6:  # plant a header or token
            out[i:i] = rng.choice(_JSON_TOKENS if json_like else _MSGPACK_HEADERS)
        elif op == 7:  # plant deep nesting
            depth = rng.choice((17, 33, 200, 1010, 5000))
            out[i:i] = b"[" * depth if json_like else b"\x91" * depth
        elif op == 8 and n:  # change a length byte towards a maximum
            out[min(i, n - 1)] = rng.choice((0x00, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc4, 0xdc, 0xde, 0xff))
        else:  # swap two bytes
            if n >= 2:
                j = rng.randrange(n)
                k = min(i, n - 1)
                out[k], out[j] = out[j], out[k]
    return bytes(out)
