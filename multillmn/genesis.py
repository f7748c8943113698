"""Genesis file: the chain id and the initial validator set, shared by every peer.

JSON, so a client can read it without msgpack::

    {"chain_id": "local-testnet",
     "params": {"similarity_threshold": 800, "similarity_tolerance": 20},
     "validators": [{"peer_id": "...", "public_key": "<64 hex>", "weight": 1, "moniker": "peer0"}]}

``params`` are consensus parameters: every peer must use the same values, since
they decide whether a proposal is valid. ``similarity_threshold`` (per mille,
MiniLM cosine) puts two answers in one group; ``similarity_tolerance`` (per
mille) is how far a proposer's claimed similarity may differ from a validator's
own computation, so float noise cannot split honest peers. ``weights`` is
``adaptive`` (weights follow committed answer-quality scores, see
``consensus/weights.py``) or ``static`` (the genesis weights and members for
ever). Membership (``consensus/membership.py``, adaptive weights only):
``epoch_length`` in heights (members change only at the first height of an
epoch), ``admission_share`` (per mille of the total weight that the joiners
admitted at one boundary may hold together), ``max_missed`` (per mille of an
epoch's heights a member may miss before it is removed), ``max_validators``
and ``models`` (the model names a joiner may declare; empty: any).
``verdict_rule`` (ADR 0022) is ``none`` (a split is decided by weight and the
tie-breaks; values carry no verdicts) or ``veto`` (judges' signed verdicts ride
in values and reject the wrong side of a contested split, see
``consensus/verdicts.py``); ``verdict_margin`` (per mille, default 500: half a
nat per token) is how far below zero a verdict must be to reject. The keys are
written only when they differ from ``none``/500, so older genesis files keep
their digest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from consensus.chain import Chain
from consensus.membership import MAX_EPOCH_LENGTH, MembershipParams
from consensus.messages import VerifiedCache
from consensus.validators import Validator, ValidatorSet
from consensus.verdicts import GENESIS_RULES, MAX_VERDICT, VerdictRule
from consensus.weights import WeightParams
from multillmn import canonical
from multillmn.identity import peer_id_of

__all__ = ["Genesis", "GenesisError", "Params"]


class GenesisError(ValueError):
    """The genesis file is missing or invalid."""


@dataclass(frozen=True)
class Params:
    """Consensus parameters fixed at genesis."""

    similarity_threshold: int = 800
    similarity_tolerance: int = 20
    weights: str = "adaptive"  # adaptive: weights track answer quality (consensus/weights.py); static: genesis
    epoch_length: int = 100
    admission_share: int = 100  # per mille
    max_missed: int = 500  # per mille
    max_validators: int = 64
    models: tuple[str, ...] = ()
    verdict_rule: str = "none"  # none: today's rule; veto: judges' verdicts reject the wrong side of a split
    verdict_margin: int = 500  # per mille (milli-nats per token) below zero for a verdict to reject

    def validate(self) -> Params:
        if self.weights not in ("adaptive", "static"):
            raise GenesisError(f"params.weights must be 'adaptive' or 'static', got {self.weights!r}")
        if self.verdict_rule not in GENESIS_RULES:
            raise GenesisError(f"params.verdict_rule must be one of {', '.join(GENESIS_RULES)}, "
                               f"got {self.verdict_rule!r}")
        for name, value, low, high in (("similarity_threshold", self.similarity_threshold, 0, 1000),
                                       ("similarity_tolerance", self.similarity_tolerance, 0, 200),
                                       ("epoch_length", self.epoch_length, 4, MAX_EPOCH_LENGTH),
                                       ("admission_share", self.admission_share, 0, 1000),
                                       ("max_missed", self.max_missed, 0, 1000),
                                       ("max_validators", self.max_validators, 1, 256),
                                       ("verdict_margin", self.verdict_margin, 0, 2 * MAX_VERDICT)):
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise GenesisError(f"params.{name} must be an integer in [{low}, {high}], got {value!r}")
        if not isinstance(self.models, tuple) or len(self.models) > 64 or not all(
                isinstance(m, str) and 0 < len(m) <= 128 for m in self.models):
            raise GenesisError("params.models must be a list of at most 64 model names (1-128 characters)")
        return self

    def membership(self) -> MembershipParams:
        return MembershipParams(epoch_length=self.epoch_length, admission_share=Fraction(self.admission_share, 1000),
                                max_missed=Fraction(self.max_missed, 1000), max_validators=self.max_validators,
                                models=self.models)

    def verdicts(self) -> VerdictRule | None:
        """The rule validators apply to verdicts in values; ``None`` for ``verdict_rule = "none"``."""
        return None if self.verdict_rule == "none" else VerdictRule(self.verdict_margin)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "similarity_threshold": self.similarity_threshold, "similarity_tolerance": self.similarity_tolerance,
            "weights": self.weights, "epoch_length": self.epoch_length, "admission_share": self.admission_share,
            "max_missed": self.max_missed, "max_validators": self.max_validators, "models": list(self.models)}
        if (self.verdict_rule, self.verdict_margin) != ("none", 500):
            out.update(verdict_rule=self.verdict_rule, verdict_margin=self.verdict_margin)
        return out


@dataclass(frozen=True)
class Genesis:
    chain_id: str
    validators: ValidatorSet
    params: Params = Params()

    @classmethod
    def build(cls, chain_id: str, members: list[tuple[str, bytes, int]], params: Params = Params()) -> Genesis:
        """From ``(moniker, public_key, weight)`` triples."""
        vals = [Validator(peer_id=peer_id_of(pk), public_key=pk, weight=w, moniker=m) for m, pk, w in members]
        return cls(chain_id, ValidatorSet(vals), params.validate())

    def chain(self, verified: VerifiedCache | None = None) -> Chain:
        """A fresh :class:`~consensus.chain.Chain` at height 0 with this genesis' weight rule
        (``verified``: a signature cache to share with it)."""
        return Chain(self.validators, WeightParams.default() if self.params.weights == "adaptive" else None,
                     verified, self.chain_id, self.params.membership(), self.params.verdicts())

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "params": self.params.to_json(),
            "validators": [
                {"peer_id": v.peer_id, "public_key": v.public_key.hex(), "weight": v.weight, "moniker": v.moniker}
                for v in self.validators.validators
            ],
        }

    def digest(self) -> bytes:
        """SHA-256 of the canonical form of :meth:`to_json`: names this network (with its chain id)."""
        return canonical.digest(self.to_json())

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def from_json(cls, data: Any) -> Genesis:
        if not isinstance(data, dict) or not {"chain_id", "validators"} <= set(data) <= {"chain_id", "validators", "params"}:
            raise GenesisError("genesis must be an object with chain_id, validators and optionally params")
        raw_params = data.get("params", {})
        names = set(Params.__dataclass_fields__)
        if not isinstance(raw_params, dict) or not set(raw_params) <= names:
            raise GenesisError(f"params may hold only {', '.join(sorted(names))}")
        if "models" in raw_params:
            if not isinstance(raw_params["models"], list):
                raise GenesisError("params.models must be a list of model names")
            raw_params = {**raw_params, "models": tuple(raw_params["models"])}
        params = Params(**raw_params).validate()
        if not isinstance(data["chain_id"], str) or not data["chain_id"]:
            raise GenesisError("chain_id must be a non-empty string")
        if not isinstance(data["validators"], list) or not data["validators"]:
            raise GenesisError("validators must be a non-empty list")
        vals = []
        for i, v in enumerate(data["validators"]):
            if not isinstance(v, dict) or set(v) != {"peer_id", "public_key", "weight", "moniker"}:
                raise GenesisError(f"validators[{i}] must have exactly peer_id, public_key, weight, moniker")
            try:
                pk = bytes.fromhex(v["public_key"])
            except (TypeError, ValueError):
                raise GenesisError(f"validators[{i}].public_key is not hex") from None
            if not isinstance(v["weight"], int) or isinstance(v["weight"], bool):
                raise GenesisError(f"validators[{i}].weight must be an integer")
            if not isinstance(v["moniker"], str) or not isinstance(v["peer_id"], str):
                raise GenesisError(f"validators[{i}]: peer_id and moniker must be strings")
            vals.append(Validator(peer_id=v["peer_id"], public_key=pk, weight=v["weight"], moniker=v["moniker"]))
        try:
            return cls(data["chain_id"], ValidatorSet(vals), params)
        except ValueError as exc:
            raise GenesisError(str(exc)) from exc

    @classmethod
    def load(cls, path: Path, *, max_bytes: int = 16 << 20) -> Genesis:
        """The genesis in ``path``: at most ``max_bytes``, JSON within :func:`multillmn.jsonsafe.loads`'s
        bounds (UTF-8, nesting, integers), else :class:`GenesisError` saying why."""
        from multillmn import jsonsafe

        try:
            with path.open("rb") as f:
                raw = f.read(max_bytes + 1)
        except OSError as exc:
            raise GenesisError(f"cannot read genesis {path}: {exc.strerror}") from None
        try:
            data = jsonsafe.loads(raw, max_bytes=max_bytes)
        except jsonsafe.JsonError as exc:
            raise GenesisError(f"{path}: not valid JSON within bounds: {exc}") from None
        return cls.from_json(data)
