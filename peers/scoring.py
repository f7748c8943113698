"""A peer's side of the weight rule: scoring decided answers, and what a value may carry.

After each decision the runner hands the value to :meth:`Scoring.score`: the
peer scores every answer against the decided group on its own similarities
(:func:`consensus.scores.score_answers`), asks its own model to judge the
close calls (:mod:`peers.judge`), lets a fault-injection behaviour rewrite
the scores, and signs the vector. :class:`Scoring` also holds the vectors and
equivocation evidence received from others until a decided value carries
them (:meth:`includable`), and the peer's own similarities of the values it
checked, so scoring a decision costs no second embedding.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from functools import partial
from typing import TYPE_CHECKING

import trio

from consensus import grouping
from consensus.chain import SCORE_WINDOW, Chain
from consensus.evidence import Evidence, decode_evidence, evidence_id
from consensus.messages import Answer, Envelope, EvidencePair, Query, Signed, Value, VerifiedCache, open_envelope, sign
from consensus.scores import JudgeResult, ScoreVector, score_answers
from consensus.validators import ValidatorSet
from multillmn.identity import KeyPair
from multillmn.logs import fields
from peers.judge import judge_close_calls

if TYPE_CHECKING:
    from peers.byzantine import Behaviour
    from peers.engine import AnswerEngine

__all__ = ["Scoring"]

log = logging.getLogger("multillmn.scoring")

SIMS_KEPT = 64  # values whose local similarities are remembered
FUTURE_HEIGHTS = 4  # vectors accepted for heights up to this far ahead of the core


class Scoring:
    """Score vectors and evidence of one peer, waiting to be carried in a value."""

    def __init__(self, key: KeyPair, engine: AnswerEngine, behaviour: Behaviour, *, threshold: int,
                 judge_band: int, verified: VerifiedCache) -> None:
        self.key = key
        self.engine = engine
        self.behaviour = behaviour
        self.threshold = threshold
        self.judge_band = judge_band
        self.verified = verified
        self.vectors: dict[tuple[int, str], Signed[ScoreVector]] = {}  # (height, scorer) -> first one seen
        self.evidence: dict[bytes, Evidence] = {}
        self._sims: OrderedDict[bytes, list[int]] = OrderedDict()

    # -- holding ------------------------------------------------------------

    def add_vector(self, signed: Signed[ScoreVector], height: int) -> None:
        """Keep a verified vector if it can still be carried from the core's ``height``."""
        vec = signed.message
        if height - SCORE_WINDOW - 1 <= vec.height < height + FUTURE_HEIGHTS:
            self.vectors.setdefault((vec.height, vec.scorer), signed)

    def add_evidence(self, evidence: Evidence) -> None:
        self.evidence.setdefault(evidence_id(evidence), evidence)

    def committed(self, value: Value) -> None:
        """``value`` was decided: its evidence needs no carrying any more."""
        for pair in value.evidence:
            self.evidence.pop(evidence_id(decode_evidence(pair.model_dump())), None)

    def entered(self, height: int) -> None:
        """The core reached ``height``: drop vectors too old to be carried."""
        stale = height - SCORE_WINDOW - 1
        self.vectors = {k: v for k, v in self.vectors.items() if k[0] > stale}

    def includable(self, chain: Chain, height: int) -> tuple[tuple[Envelope, ...], tuple[EvidencePair, ...]]:
        """What a value proposed at ``height`` may carry (:meth:`consensus.chain.Chain.includable`)."""
        return chain.includable(self.vectors.values(), self.evidence.values(), height)

    def remember_sims(self, value_id: bytes, sims: list[int]) -> None:
        """Our own similarities of a value's answers (in its order), computed when we checked it."""
        self._sims[value_id] = sims
        while len(self._sims) > SIMS_KEPT:
            self._sims.popitem(last=False)

    # -- scoring ------------------------------------------------------------

    async def score(self, height: int, value: Value, vs: ValidatorSet) -> Signed[ScoreVector]:
        """Score every answer of the value decided at ``height`` with this peer's own view, and sign it."""
        keys = vs.public_key_of
        answers = [open_envelope(Answer, e, keys, self.verified).message for e in value.answers]
        question = open_envelope(Query, value.query, keys, self.verified).message.question
        texts = [a.text for a in answers]
        sims = self._sims.get(value.value_id())
        if sims is None:  # decided without this peer checking it (e.g. it caught up)
            sims = await trio.to_thread.run_sync(self.engine.similarities, question, texts)
        judged = await self._judge(question, answers, sims, value, vs)
        peers = [a.peer for a in answers]
        scores = score_answers(peers, sims, [peers.index(p) for p in value.winners],
                               grouping.eligibility(question, texts), judged)
        own = next((a.text for a in answers if a.peer == self.key.peer_id), None)
        scores = self.behaviour.scores(scores, {a.peer: a.text for a in answers}, own)
        vector = sign(ScoreVector(scorer=self.key.peer_id, height=height, query_id=value.query_id(),
                                  scores=scores), self.key)
        self.verified.add(ScoreVector.KIND, vector.envelope)
        self.add_vector(vector, height)
        return vector

    async def _judge(self, question: str, answers: list[Answer], sims: list[int], value: Value,
                     vs: ValidatorSet) -> list[JudgeResult]:
        """LLM-as-a-judge verdicts on the close calls (none without a judge or with judge_band = 0)."""
        judge = self.engine.judge
        if judge is None or self.judge_band == 0 or len(answers) < 2 or not self.behaviour.judges():
            return []
        peers = [a.peer for a in answers]
        winners = [peers.index(p) for p in value.winners if p in peers]
        contested = 3 * vs.weight_of_set(value.winners) <= 2 * vs.weight_of_set(peers)
        own = peers.index(self.key.peer_id) if self.key.peer_id in peers else None
        results = await trio.to_thread.run_sync(partial(
            judge_close_calls, judge, question, peers, [a.text for a in answers], sims, self.threshold,
            self.judge_band, contested_winners=winners if contested else (), own=own))
        if results:
            log.info("judged close calls", extra=fields(pairs=len(results), winners=[r.winner() for r in results]))
        return results
