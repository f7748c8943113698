"""The weight rule's bookkeeping in the driver: score vectors and evidence waiting to be carried, own
similarities, and which close calls a judge should see.

After each decision the driver scores every answer against the decided
group on its own similarities (:func:`consensus.scores.score_answers`), with
its model as a judge of the close calls (:func:`judge_pairs`), and signs
the vector. :class:`ScoreBook` holds the vectors and evidence received until
a decided value carries them (:meth:`ScoreBook.includable`), and the
similarities this peer computed for the values it checked, so scoring a
decision costs no second embedding.

Bounds: vectors for heights in ``[h - SCORE_WINDOW - 1, h + FUTURE_HEIGHTS)``,
one per (height, scorer); one piece of evidence per offender; the
similarities of :data:`SIMS_KEPT` values.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from consensus.chain import SCORE_WINDOW, Chain
from consensus.evidence import Evidence, check_evidence, decode_evidence, evidence_id
from consensus.grouping import pair_index
from consensus.messages import Envelope, EvidencePair, MessageError, Signed, Value
from consensus.scores import ScoreVector
from consensus.validators import ValidatorSet
from multillmn.identity import PeerId

__all__ = ["FUTURE_HEIGHTS", "MAX_JUDGED_PAIRS", "SIMS_KEPT", "ScoreBook", "judge_pairs"]

SIMS_KEPT = 64
"""Values whose local similarities are remembered."""
FUTURE_HEIGHTS = 4
"""Vectors are accepted for heights up to this far ahead of the core."""
MAX_JUDGED_PAIRS = 6
"""Close calls a judge sees per decision."""


class ScoreBook:
    """Score vectors and evidence of one peer, waiting to be carried in a value; own similarities."""

    def __init__(self, chain_id: str = "") -> None:
        self.chain_id = chain_id
        self.vectors: dict[tuple[int, PeerId], Signed[ScoreVector]] = {}  # (height, scorer) -> first one seen
        self.evidence: dict[PeerId, Evidence] = {}  # offender -> one proof (enough to slash)
        self._sims: OrderedDict[bytes, tuple[tuple[int, ...], ...]] = OrderedDict()

    def add_vector(self, signed: Signed[ScoreVector], height: int) -> None:
        """Keep a verified vector if it can still be carried from the core's ``height``."""
        vec = signed.message
        if height - SCORE_WINDOW - 1 <= vec.height < height + FUTURE_HEIGHTS:
            self.vectors.setdefault((vec.height, vec.scorer), signed)

    def add_evidence(self, evidence: Evidence, validators: ValidatorSet) -> bool:
        """Keep valid evidence, one per offender; whether it was new."""
        checked = check_evidence(evidence, validators, self.chain_id)
        if isinstance(checked, str) or checked[0] in self.evidence:
            return False
        self.evidence[checked[0]] = evidence
        return True

    def committed(self, value: Value, validators: ValidatorSet) -> None:
        """``value`` was decided: the evidence it carries needs no carrying any more."""
        carried: set[bytes] = set()
        for pair in value.evidence:
            try:
                carried.add(evidence_id(decode_evidence(pair.model_dump())))
            except MessageError:
                continue
        self.evidence = {p: e for p, e in self.evidence.items() if evidence_id(e) not in carried}

    def entered(self, height: int) -> None:
        """The core reached ``height``: drop vectors too old to be carried."""
        stale = height - SCORE_WINDOW - 1
        self.vectors = {k: v for k, v in self.vectors.items() if k[0] > stale}

    def includable(self, chain: Chain, height: int) -> tuple[tuple[Envelope, ...], tuple[EvidencePair, ...]]:
        """What a value proposed at ``height`` may carry (:meth:`consensus.chain.Chain.includable`)."""
        return chain.includable(self.vectors.values(), self.evidence.values(), height)

    def own_vectors(self, me: PeerId) -> list[Signed[ScoreVector]]:
        return [v for (_, scorer), v in self.vectors.items() if scorer == me]

    def remember_sims(self, value_id: bytes, sims: Sequence[Sequence[int]]) -> None:
        """This peer's own similarities of a value's answers, per outcome (for scoring it once decided)."""
        self._sims[value_id] = tuple(tuple(s) for s in sims)
        self._sims.move_to_end(value_id)
        while len(self._sims) > SIMS_KEPT:
            self._sims.popitem(last=False)

    def sims_of(self, value_id: bytes) -> tuple[tuple[int, ...], ...] | None:
        return self._sims.get(value_id)

    def statistics(self) -> dict[str, int]:
        return {"score_vectors": len(self.vectors), "evidence": len(self.evidence), "sims": len(self._sims)}


def judge_pairs(n: int, sims: Sequence[int], threshold: int, band: int, *, contested_winners: Sequence[int] = (),
                own: int | None = None, max_pairs: int = MAX_JUDGED_PAIRS) -> list[tuple[int, int]]:
    """The close calls among ``n`` answers a judge should see (at most ``max_pairs``), as index pairs ``i < j``.

    Close calls are the pairs within ``band`` of the similarity threshold
    (closest first) and, when the decision was contested
    (``contested_winners``: the indices of a winning group that held at
    most 2/3 of the answering weight), every losing answer against the
    winning one: a split network is exactly where agreement alone cannot
    tell a right minority from a wrong bloc. A judge recuses itself from
    games that involve its own answer (``own``) or one that means the same
    (similarity at or above ``threshold``): a model's likelihood favours its
    own greedy output, so such a verdict would only repeat its vote.
    """
    if band <= 0:
        return []
    mine = set() if own is None else {k for k in range(n) if k == own or sims[pair_index(n, own, k)] >= threshold}
    near = [(i, j) for i in range(n) for j in range(i + 1, n) if abs(sims[pair_index(n, i, j)] - threshold) <= band]
    near.sort(key=lambda p: (abs(sims[pair_index(n, *p)] - threshold), p))
    contested: list[tuple[int, int]] = []
    if contested_winners:
        rep = contested_winners[0]
        contested = [(min(rep, j), max(rep, j)) for j in range(n) if j not in contested_winners]
    return [p for p in dict.fromkeys([*contested, *near]) if p[0] not in mine and p[1] not in mine][:max_pairs]
