"""The chain: decided heights and the validator sets they imply (pure).

The driver owns one :class:`Chain` and hands the core each height's
:meth:`committee`. Each decided value is folded in with
:meth:`Chain.apply`, in height order: its signed score vectors and evidence
go through :func:`consensus.weights.update`, whose new weights take effect
``delay_heights`` later. So the set in force at ``h + 1`` is already fixed
when ``h`` is decided, every honest peer derives it from committed data
only, and :meth:`validators_at` is the same function on all of them.

What a value may carry (:meth:`check_extras`; the proposer picks with
:meth:`includable`):

* ``validators_hash`` = the hash of the set in force at the value's height,
  ``next_validators_hash`` = that of the set in force at the next height
  (already fixed: changes folded at ``h`` apply from ``h + delay_heights``);
* signed score vectors for the queries decided at earlier heights, at most
  ``SCORE_WINDOW`` back and after the last counted height, one per
  (height, scorer), not committed before;
* evidence of equivocation by a validator, not applied before and not older
  than ``evidence_max_age``.

Proposer selection is CometBFT's weighted round robin made incremental: the
priorities at the start of each height are carried over and advanced with
the weights in force at that height, so a changing set costs O(n) per
height instead of a replay from genesis.

Members change at epoch boundaries (:mod:`consensus.membership`): a value
may carry join and leave requests, and every value after height 1 carries
``last_commit``, the precommits (more than 2/3 of the set, one round) that
decided the previous height, from which the stability record and the
removal of absent members follow. :meth:`Chain.apply` folds both in and,
at height ``b - delay_heights``, applies the change of members at boundary
``b`` to the weight state.

A chain built with ``params=None`` keeps the genesis weights and members
for ever (the ``equal`` and ``majority`` baselines, and genesis files with
static weights): its values carry no requests and no ``last_commit``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

from consensus.evidence import DuplicateVoteEvidence, Evidence, check_evidence, decode_evidence, evidence_id
from consensus.membership import Membership, MembershipParams
from consensus.messages import (
    MAX_MEMBERSHIP,
    Answer,
    Envelope,
    EvidencePair,
    Join,
    Leave,
    MessageError,
    Signed,
    Value,
    Vote,
    open_envelope,
)
from consensus.scores import ScoreVector
from consensus.state_machine import Committee
from consensus.validators import ValidatorSet
from consensus.verdicts import VerdictRule
from consensus.weights import WeightParams, WeightState, update, with_members
from multillmn import canonical
from multillmn.identity import PeerId

if TYPE_CHECKING:
    from consensus.messages import VerifiedCache

__all__ = ["Chain", "SCORE_WINDOW"]

SCORE_WINDOW = 16
"""Score vectors older than this many heights are not included any more."""


class Chain:
    """Decided heights folded into weights; see the module docstring."""

    def __init__(self, base: ValidatorSet, params: WeightParams | None,
                 verified: VerifiedCache | None = None, chain_id: str = "",
                 membership: MembershipParams | None = None, verdict_rule: VerdictRule | None = None) -> None:
        self.base = base
        self.verdict_rule = verdict_rule  # the genesis' verdict rule (ADR 0022); None: verdicts are refused
        self.chain_id = chain_id  # evidence must be for this chain
        self.verified = verified  # the runner's signature cache: carried vectors it verified are not re-verified
        self.params = params.validate() if params is not None else None
        self.height = 0  # last applied height
        self.state: WeightState | None = WeightState.genesis(base, params) if params is not None else None
        self.members: Membership | None = None if params is None else Membership(
            membership or MembershipParams(), base, chain_id)
        self.last_value_id: bytes | None = None  # of the value decided at ``height``
        self.last_set: ValidatorSet | None = None  # the set in force at ``height``
        self.queries: dict[int, bytes] = {}  # decided query id per recent height
        self._vectors: dict[tuple[int, bytes], dict[PeerId, ScoreVector]] = {}  # committed, not yet counted
        self._sets: dict[int, ValidatorSet] = {}  # by schedule start
        self._prios: tuple[int, ...] = tuple(0 for _ in base)
        self._round_prios: tuple[int, int, tuple[int, ...], int] | None = None  # height, round, prios, chosen

    @property
    def adaptive(self) -> bool:
        return self.state is not None

    # --- views -------------------------------------------------------------
    def validators_at(self, height: int) -> ValidatorSet:
        """The set in force at ``height`` (for heights beyond ``self.height + delay``: the latest known)."""
        if self.state is None:
            return self.base
        start = max((s for s, _ in self.state.schedule if s <= height), default=None)
        if start is None:
            raise ValueError(f"no validator set for height {height}")
        vs = self._sets.get(start)
        if vs is None:
            live = {s for s, _ in self.state.schedule}
            self._sets = {s: v for s, v in self._sets.items() if s in live}
            assert self.members is not None
            vs = self._sets[start] = self.members.validator_set(self.state.weights_at(height))
        return vs

    def members_from(self, height: int) -> set[PeerId]:
        """Every peer in a set in force at ``height`` or scheduled after it."""
        if self.state is None:
            return set(self.base.ids)
        in_force = max((s for s, _ in self.state.schedule if s <= height), default=0)
        return {p for start, ws in self.state.schedule if start >= in_force for p, _ in ws}

    def key_of(self, peer: PeerId) -> bytes | None:
        """The public key of a current, scheduled or joining member (signatures of requests and answers)."""
        if self.members is None:
            return self.base.public_key_of(peer)
        return self.members.key_of(peer)

    def proposer(self, height: int, round: int) -> PeerId:
        """Proposer of (``height``, ``round``); ``height`` must be the next one to decide."""
        if self.state is None:
            return self.base.proposer(height, round)  # static: the replay form is O(1) amortised
        if height != self.height + 1 or round < 0:
            raise ValueError(f"proposer is known for height {self.height + 1} only, not {height}")
        vs = self.validators_at(height)
        cached = self._round_prios
        if cached is not None and cached[0] == height and cached[1] == round:
            return vs.ids[cached[3]]
        if cached is not None and cached[0] == height and cached[1] < round:
            prios, chosen = vs.advance_priorities(cached[2], round - cached[1])
        else:
            prios, chosen = vs.advance_priorities(self._prios, round + 1)
        self._round_prios = (height, round, prios, chosen)
        return vs.ids[chosen]

    def committee(self, height: int) -> Committee:
        """What the core needs at ``height`` (the next height to decide): its set and proposers by round."""
        if height != self.height + 1:
            raise ValueError(f"the chain at height {self.height} knows the committee of {self.height + 1} only")
        return Committee(self.validators_at(height), lambda r: self.proposer(height, r))

    def weights_digest(self) -> bytes | None:
        """Hash of the weight state and the membership state (equal on every honest peer at one height)."""
        if self.state is None or self.members is None:
            return None
        return canonical.digest({"weights": self.state.digest(), "members": self.members.digest_body()})

    @property
    def membership_params(self) -> MembershipParams | None:
        return None if self.members is None else self.members.params

    # --- what a value may carry ---------------------------------------------
    def check_extras(self, value: Value, height: int, cache: VerifiedCache | None = None) -> str | None:
        """``None`` if ``value``'s set hash, score vectors and evidence are valid at ``height``, else why not."""
        vs = self.validators_at(height)
        if value.validators_hash != vs.set_hash():
            return f"validators_hash is not the hash of the set in force at height {height}"
        if value.next_validators_hash != self.validators_at(height + 1).set_hash():
            return f"next_validators_hash is not the hash of the set in force at height {height + 1}"
        if self.state is None and (value.scores or value.evidence or value.joins or value.leaves
                                   or value.last_commit):
            return "weights are static: a value carries no score vectors, evidence, requests or last commit"
        if self.members is not None:
            reason = self._last_commit_reason(value.last_commit, height) or self.members.check(
                value.joins, value.leaves, height, vs, self.members_from(height), cache)
            if reason is not None:
                return reason
        seen: set[tuple[int, PeerId]] = set()
        for k, env in enumerate(value.scores):
            try:
                vec = open_envelope(ScoreVector, env, vs.public_key_of, cache).message
            except MessageError as exc:
                return f"score vector {k}: {exc}"
            reason = self._score_reason(vec, height)
            if reason is None and (vec.height, vec.scorer) in seen:
                reason = "a second vector of this scorer for this height"
            if reason is not None:
                return f"score vector {k} by {vec.scorer} for height {vec.height}: {reason}"
            seen.add((vec.height, vec.scorer))
        ids: set[bytes] = set()
        for k, pair in enumerate(value.evidence):
            try:
                ev = decode_evidence(pair.model_dump())
            except MessageError as exc:
                return f"evidence {k}: {exc}"
            reason = self._evidence_reason(ev, height, vs)
            if reason is None and evidence_id(ev) in ids:
                reason = "included twice"
            if reason is not None:
                return f"evidence {k}: {reason}"
            ids.add(evidence_id(ev))
        return None

    def _last_commit_reason(self, commit: tuple[Envelope, ...], height: int) -> str | None:
        """Why ``commit`` is not a commit of the value decided at ``height - 1``, or ``None``."""
        if height == 1:
            return None if not commit else "the value of height 1 carries no last commit"
        if height != self.height + 1 or self.last_set is None or self.last_value_id is None:
            return f"the chain at height {self.height} cannot check the last commit of height {height}"
        signers = self.commit_signers(commit, self.last_set, height - 1)
        if isinstance(signers, str):
            return f"last commit: {signers}"
        if not self.last_set.has_quorum(self.last_set.weight_of_set(signers)):
            return f"last commit: its precommits carry no quorum of the set of height {height - 1}"
        return None

    def commit_signers(self, commit: tuple[Envelope, ...], vs: ValidatorSet, height: int) -> set[PeerId] | str:
        """The signers of ``commit``, precommits of one round for the value decided at ``height``, or why not."""
        signers: set[PeerId] = set()
        rounds: set[int] = set()
        for k, env in enumerate(commit):
            try:
                vote = open_envelope(Vote, env, vs.public_key_of, self.verified).message
            except MessageError as exc:
                return f"precommit {k}: {exc}"
            if (vote.chain_id, vote.type, vote.height, vote.value_id) != (
                    self.chain_id, "precommit", height, self.last_value_id):
                return f"precommit {k} is not a precommit of chain {self.chain_id!r} for the value of height {height}"
            if vote.voter in signers:
                return f"precommit {k}: a second precommit by {vote.voter}"
            signers.add(vote.voter)
            rounds.add(vote.round)
        if len(rounds) > 1:
            return "precommits of more than one round"
        return signers

    def includable_requests(self, joins: Iterable[Signed[Join]], leaves: Iterable[Signed[Leave]],
                            height: int) -> tuple[tuple[Envelope, ...], tuple[Envelope, ...]]:
        """The join and leave requests a value proposed at ``height`` should carry."""
        if self.members is None:
            return (), ()
        return self.members.includable(joins, leaves, height, self.validators_at(height),
                                       self.members_from(height), MAX_MEMBERSHIP)

    def join_reason(self, join: Join, height: int) -> str | None:
        """Why ``join`` would not be committed at ``height`` now, or ``None`` (for refusing it early)."""
        if self.members is None:
            return "this network's validator set is fixed (static weights)"
        return self.members.join_reason(join, height, self.members_from(height))

    def leave_reason(self, leave: Leave, height: int) -> str | None:
        if self.members is None:
            return "this network's validator set is fixed (static weights)"
        return self.members.leave_reason(leave, height, self.validators_at(height))

    def _score_reason(self, vec: ScoreVector, height: int) -> str | None:
        assert self.state is not None
        if not max(self.state.scored_through, height - 1 - SCORE_WINDOW) < vec.height < height:
            return f"outside the window of includable heights before {height}"
        if self.queries.get(vec.height) != vec.query_id:
            return "not the query decided at that height"
        if vec.scorer in self._vectors.get((vec.height, vec.query_id), {}):
            return "already committed"
        return None

    def _evidence_reason(self, ev: Evidence, height: int, vs: ValidatorSet) -> str | None:
        assert self.state is not None and self.params is not None
        checked = check_evidence(ev, vs, self.chain_id)
        if isinstance(checked, str):
            return checked
        _, ev_height = checked
        if not height - self.params.evidence_max_age <= ev_height <= height:
            return f"evidence of height {ev_height} is outside the admissible age"
        if any(i == evidence_id(ev) for _, i in self.state.evidence):
            return "already applied"
        return None

    def includable(
        self, vectors: Iterable[Signed[ScoreVector]], evidence: Iterable[Evidence], height: int, *,
        max_vectors: int = 256, max_evidence: int = 16,
    ) -> tuple[tuple[Envelope, ...], tuple[EvidencePair, ...]]:
        """The score vectors and evidence a value proposed at ``height`` should carry, in canonical order."""
        if self.state is None:
            return (), ()
        vs = self.validators_at(height)
        chosen: dict[tuple[int, PeerId], Signed[ScoreVector]] = {}
        for signed in vectors:
            vec = signed.message
            if vec.scorer in vs and self._score_reason(vec, height) is None:
                chosen.setdefault((vec.height, vec.scorer), signed)
        scores = tuple(chosen[k].envelope for k in sorted(chosen)[:max_vectors])
        pairs: dict[bytes, EvidencePair] = {}
        for ev in evidence:
            if self._evidence_reason(ev, height, vs) is None:
                kind: Literal["duplicate_vote", "conflicting_proposal"] = (
                    "duplicate_vote" if isinstance(ev, DuplicateVoteEvidence) else "conflicting_proposal")
                pairs.setdefault(evidence_id(ev), EvidencePair(kind=kind, first=ev.first, second=ev.second))
        return scores, tuple(pairs[i] for i in sorted(pairs)[:max_evidence])

    # --- folding a decision in ------------------------------------------------
    def apply(self, height: int, value: Value) -> None:
        """Fold the value decided at ``height`` into the chain.

        ``height`` must be ``self.height + 1``; a static chain may skip heights
        (a peer that caught up by certificates without their values).
        """
        static = self.state is None or self.params is None
        if height != self.height + 1 and not (static and height > self.height):
            raise ValueError(f"height {height} cannot follow {self.height}")
        self.queries[height] = value.query_id()
        for h in [h for h in self.queries if h < height - SCORE_WINDOW]:
            del self.queries[h]
        if self.state is None or self.params is None:
            self.height = height
            return
        vs = self.validators_at(height)
        assert self.members is not None
        self._record(height, value, vs)
        self._prios, _ = vs.advance_priorities(self._prios, 1)
        self._round_prios = None
        self.height = height
        self.last_value_id, self.last_set = value.value_id(), vs
        self.members.commit_requests(value.joins, value.leaves, height, vs, self.verified)
        for env in value.scores:  # validated by the quorum; skip defensively anything that does not open
            try:
                vec = open_envelope(ScoreVector, env, vs.public_key_of, self.verified).message
            except MessageError:
                continue
            self._vectors.setdefault((vec.height, vec.query_id), {}).setdefault(vec.scorer, vec)
        evidence: list[Evidence] = []
        for pair in value.evidence:
            try:
                evidence.append(decode_evidence(pair.model_dump()))
            except MessageError:
                continue
        pending = [v for group in self._vectors.values() for v in group.values()]
        self.state = update(self.state, vs, pending, evidence, height=height, params=self.params)
        floor = max(self.state.scored_through, height - SCORE_WINDOW)
        self._vectors = {k: g for k, g in self._vectors.items() if k[0] > floor}
        self._change_members(height)
        nxt = self.validators_at(height + 1)
        if nxt.ids != vs.ids:  # CometBFT: a newcomer starts at -1.125 * total, so it does not propose at once
            old = dict(zip(vs.ids, self._prios))
            self._prios = tuple(old.get(p, -(nxt.total + nxt.total // 8)) for p in nxt.ids)

    def _record(self, height: int, value: Value, vs: ValidatorSet) -> None:
        """Fold the value's counted answers and its last commit into the stability record."""
        assert self.members is not None
        answers: list[tuple[PeerId, int]] = []
        for env in value.answers:
            try:
                a = open_envelope(Answer, env, vs.public_key_of, self.verified).message
            except MessageError:
                continue
            answers.append((a.peer, a.gen_ms))
        signers: set[PeerId] = set()
        if self.last_set is not None and height > 1:
            got = self.commit_signers(value.last_commit, self.last_set, height - 1)
            signers = got if isinstance(got, set) else set()
        self.members.record(height, vs, answers, self.last_set, signers)

    def _change_members(self, height: int) -> None:
        """At ``b - delay``: apply the change of members at boundary ``b``."""
        assert self.members is not None and self.state is not None and self.params is not None
        boundary = height + self.params.delay_heights
        mp = self.members.params
        if boundary <= 1 or (boundary - 1) % mp.epoch_length:
            return
        t = self.members.transition(boundary, self.state.weights_at(boundary), dict(self.state.trust),
                                    self.params.scale, self.params.floor)
        if t.leaving or t.joining:
            self.state = with_members(self.state, boundary, t.leaving, t.joining, t.trust, self.params)
            self._sets.clear()
        self.members.prune({p for _, ws in self.state.schedule for p, _ in ws} | set(self.last_set.ids
                                                                                   if self.last_set else ()))
