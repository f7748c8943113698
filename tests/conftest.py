"""Shared fixtures: deterministic keys, a genesis, and signed protocol messages."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from consensus import grouping
from consensus.chain import Chain
from consensus.messages import Answer, Envelope, Query, Signed, Value, Vote, query_id_of, sign
from multillmn.genesis import Genesis
from multillmn.identity import KeyPair


@dataclass
class Net:
    """Keys and genesis of a small validator set, with helpers to sign messages."""

    keys: list[KeyPair]
    genesis: Genesis

    def query(self, question: str = "What is the capital of France?", entry: int = 0) -> Signed[Query]:
        return sign(Query(entry=self.keys[entry].peer_id, question=question, nonce=os.urandom(16),
                          max_tokens=32, created_ms=0), self.keys[entry])

    def answer(self, query: Signed[Query], i: int, text: str) -> Signed[Answer]:
        k = self.keys[i]
        return sign(Answer(query_id=query_id_of(query.envelope), peer=k.peer_id, model="m", text=text,
                           gen_ms=5), k)

    def value(self, texts: list[str], query: Signed[Query] | None = None) -> Value:
        """A value over answers ``texts[i]`` by peer i; equal texts have similarity 1000, else 0."""
        query = query or self.query()
        answers = [self.answer(query, i, t) for i, t in enumerate(texts)]
        n = len(answers)
        sims = [1000 if texts[i] == texts[j] else 0 for i in range(n) for j in range(i + 1, n)]
        weights = [self.genesis.validators.weight_of(a.signer) for a in answers]
        return grouping.build_value(query.envelope, answers, sims, weights,
                                    self.genesis.params.similarity_threshold,
                                    validators_hash=self.genesis.validators.set_hash(),
                                    next_validators_hash=self.genesis.validators.set_hash(),
                                    chain_id=self.genesis.chain_id)

    def last_commit(self, chain: Chain, height: int) -> tuple[Envelope, ...]:
        """Precommits by every member for the value ``chain`` decided at ``height - 1``: what a value of
        ``height`` carries (nothing at height 1 or on a static chain)."""
        if height == 1 or chain.members is None or chain.last_set is None:
            return ()
        return tuple(sign(Vote(chain_id=chain.chain_id, type="precommit", height=height - 1, round=0,
                               value_id=chain.last_value_id, voter=k.peer_id), k).envelope
                     for k in self.keys if k.peer_id in chain.last_set)

    def precommit(self, i: int, height: int, round_: int, value: Value | None) -> Signed[Vote]:
        k = self.keys[i]
        return sign(Vote(chain_id=self.genesis.chain_id, type="precommit", height=height, round=round_,
                         value_id=value.value_id() if value else None, voter=k.peer_id), k)


def make_net(weights: list[int], seed: int = 0) -> Net:
    keys = [KeyPair.from_seed(bytes([seed + i + 1]) * 32) for i in range(len(weights))]
    genesis = Genesis.build("test-chain", [(f"peer{i}", k.public_key, w)
                                           for i, (k, w) in enumerate(zip(keys, weights))])
    return Net(keys, genesis)


@pytest.fixture
def net4() -> Net:
    return make_net([1, 1, 1, 1])
