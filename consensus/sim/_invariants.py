"""Invariants checked after every run, from the records of honest nodes only.

* **agreement**: no two honest nodes decide different values at a height;
* **validity**: every decided value passes ``validate_value`` (answers signed
  by validators with more than 2/3 of the weight, the choice follows from the
  similarities) and its decision carries a precommit quorum for that height,
  round and value; no query is decided at two heights;
* **termination**: every honest node decided every height by the deadline
  (only promised while faulty weight stays below 1/3); a leaver only the
  heights before it stopped, a joiner every height (by catch-up for the
  heights before it joined);
* **equivocation detection**: an honest node that received two conflicting
  votes of one voter for its current height reported an ``Equivocation``,
  and no honest signer was ever reported;
* **weights**: honest nodes that folded the same height hold the same
  weight-state digest (weights and membership: registry, pending requests,
  stability records), a node that rebuilt its chain after a restart
  recomputed the digests it had before, and every honest node still running
  ends with the same digest (adaptive weights only).

Validity is checked against the validator set the decision was counted in
(the set in force at its height), whose hash the value must carry.

Under the ``majority`` baseline only *disagreement* (honest nodes adopting
different answers) and termination are measured.
"""

from __future__ import annotations

from dataclasses import dataclass

from consensus import grouping
from consensus.verdicts import VerdictRule
from consensus.messages import Answer, MessageError, Value, Vote, open_envelope
from consensus.sim._engine import DecisionRecord, Simulation
from consensus.sim._world import normalise, similarities
from consensus.validators import ValidatorSet

__all__ = ["Violation", "check_run"]


@dataclass(frozen=True)
class Violation:
    """One broken invariant: ``kind`` and a one-line ``detail``."""

    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


def check_run(sim: Simulation) -> list[Violation]:
    """Every violated invariant of a finished run, in a deterministic order."""
    out: list[Violation] = []
    if sim.config.baseline == "majority":
        _disagreement(sim, out)
    else:
        _agreement(sim, out)
        _validity(sim, out)
        _equivocations(sim, out)
        _weights(sim, out)
    _termination(sim, out)
    return out


def _by_height(sim: Simulation) -> dict[int, list[DecisionRecord]]:
    heights: dict[int, list[DecisionRecord]] = {}
    for i in sim.honest:
        for h, rec in sim.decisions[i].items():
            heights.setdefault(h, []).append(rec)
    return dict(sorted(heights.items()))


def _agreement(sim: Simulation, out: list[Violation]) -> None:
    for h, recs in _by_height(sim).items():
        ids = {sim.value_id(r.value) for r in recs if r.value is not None}
        if len(ids) > 1:
            who = ", ".join(f"node {r.node}: {r.answer!r}" for r in recs)
            out.append(Violation("agreement", f"height {h}: {len(ids)} different values decided ({who})"))


def _disagreement(sim: Simulation, out: list[Violation]) -> None:
    for h, recs in _by_height(sim).items():
        answers = {normalise(r.answer) for r in recs}
        if len(answers) > 1:
            out.append(Violation("disagreement", f"question {h}: honest nodes adopted {sorted(answers)}"))


def _validity(sim: Simulation, out: list[Violation]) -> None:
    checked: dict[tuple[bytes, bytes], str | None] = {}
    query_height: dict[bytes, int] = {}
    for h, recs in _by_height(sim).items():
        for rec in recs:
            value = rec.value
            assert value is not None
            vid = sim.value_id(value)
            vs = rec.validators or sim.validators
            key = (vid, vs.set_hash())
            if key not in checked:
                checked[key] = _value_reason(sim, value, vs)
            reason = checked[key] or _precommit_reason(sim, rec, vid)
            if reason is not None:
                out.append(Violation("validity", f"node {rec.node} height {h}: {reason}"))
                return
        value = recs[0].value
        assert value is not None
        for qid in value.query_ids():
            if query_height.setdefault(qid, h) != h:
                out.append(Violation("validity", f"query decided at heights {query_height[qid]} and {h}"))


def _value_reason(sim: Simulation, value: Value, vs: ValidatorSet) -> str | None:
    if value.validators_hash != vs.set_hash():
        return "the value does not carry the hash of the set in force at its height"
    try:
        texts = [[open_envelope(Answer, e, vs.public_key_of).message.text for e in o.answers]
                 for o in value.outcomes()]
    except MessageError as exc:
        return f"decided value holds a bad answer: {exc}"
    return grouping.validate_value(value, validators=vs, local_sims=[similarities(t) for t in texts],
                                   threshold=sim.config.threshold, tolerance=sim.config.tolerance,
                                   verdict_rule=VerdictRule() if sim.config.verdict_rule == "veto" else None)


def _precommit_reason(sim: Simulation, rec: DecisionRecord, vid: bytes) -> str | None:
    vs = rec.validators or sim.validators
    voters: set[str] = set()
    for signed in rec.precommits:
        v = signed.message
        if (v.type, v.height, v.round, v.value_id) != ("precommit", rec.height, rec.round, vid):
            return f"precommit by {v.voter[:8]} is for another vote"
        if sim.config.real_signatures:
            try:
                open_envelope(Vote, signed.envelope, vs.public_key_of)
            except MessageError as exc:
                return f"precommit does not verify: {exc}"
        voters.add(v.voter)
    weight = vs.weight_of_set(voters)
    if not vs.has_quorum(weight):
        return f"decided with precommits of weight {weight} of {vs.total} (no quorum)"
    return None


def _equivocations(sim: Simulation, out: list[Violation]) -> None:
    reported = {(e.reporter, e.signer, e.height, e.round, e.kind) for e in sim.equivocations}
    for e in sim.equivocations:
        if e.signer in sim.honest:
            out.append(Violation("honest-equivocation",
                                 f"node {e.reporter} caught honest node {e.signer} at {e.height}.{e.round} {e.kind}"))
            return
    for key in sim.expected_detections:
        if key[0] in sim.honest and key not in reported:
            node, voter, h, r, t = key
            out.append(Violation("undetected-equivocation",
                                 f"node {node} got two {t}s from node {voter} at {h}.{r} and reported nothing"))
            return


def _weights(sim: Simulation, out: list[Violation]) -> None:
    if sim.digest_conflicts:
        out.append(Violation("weights-divergence", sim.digest_conflicts[0]))
        return
    heights: dict[int, dict[bytes, list[int]]] = {}
    for i in sim.honest:
        for h, digest in sim.digests[i].items():
            heights.setdefault(h, {}).setdefault(digest, []).append(i)
    for h in sorted(heights):
        if len(heights[h]) > 1:
            who = "; ".join(f"{d.hex()[:8]}: nodes {nodes}" for d, nodes in heights[h].items())
            out.append(Violation("weights-divergence", f"height {h}: honest nodes hold different weights ({who})"))
            return
    final: dict[tuple[int, bytes], list[int]] = {}
    for i in sim.honest:
        driver = getattr(sim.nodes[i], "driver", None)
        if i in sim.left_at or driver is None or (digest := driver.chain.weights_digest()) is None:
            continue
        final.setdefault((driver.chain.height, digest), []).append(i)
    tops = [k for k in final if k[0] == max(h for h, _ in final)]
    if len(tops) > 1:
        who = "; ".join(f"{d.hex()[:8]}: nodes {final[(h, d)]}" for h, d in tops)
        out.append(Violation("weights-divergence", f"final height {tops[0][0]}: honest nodes end with different "
                                                   f"weight states ({who})"))


def _termination(sim: Simulation, out: list[Violation]) -> None:
    if not sim.within_model:
        return
    if sim.config.queries_per_height > 1:  # heights are not queries then: every honest node decided every query
        asked = set(sim.query_index)
        short = [(i, len(asked - {q for r in sim.decisions[i].values() if r.value is not None
                                   for q in r.value.query_ids()})) for i in sim.honest]
        if len(asked) < sim.config.heights or any(n for _, n in short):
            first = ", ".join(f"node {i} lacks {n}" for i, n in short if n)
            out.append(Violation("termination", f"{len(asked)} of {sim.config.heights} queries asked; {first}"))
        return
    missing = [(i, h) for i in sim.honest for h in range(1, sim.config.heights + 1)
               if sim.required(i, h) and h not in sim.decisions[i]]
    if missing:
        why = "event budget exhausted" if sim.exhausted else f"by t={sim.deadline_us / 1e6:.1f}s (virtual)"
        first = ", ".join(f"node {i} height {h}" for i, h in missing[:4])
        out.append(Violation("termination", f"{len(missing)} honest decisions missing {why}: {first}"))
