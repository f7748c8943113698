"""Catch-up: decided heights this peer did not decide itself.

A decided height from another peer (:class:`~consensus.driver.Certified`)
is checked against the set this peer's own chain computed; one from its own
ledger (:class:`~consensus.driver.Committed`) is folded as is. Later heights
wait to be folded in order.

Bounds: :data:`MAX_CATCHUP_AHEAD` heights ahead, :data:`MAX_CATCHUP_PER_HEIGHT`
values each (from other peers, only ones whose signers hold 1/3 of the
current set).
"""

from __future__ import annotations

from consensus import grouping
from consensus.driver._base import DriverBase
from consensus.driver._io import Certified, Committed, Effect
from consensus.state_machine import VoteInput

__all__ = ["MAX_CATCHUP_AHEAD", "MAX_CATCHUP_PER_HEIGHT", "CatchUpMixin"]

MAX_CATCHUP_AHEAD = 64
"""Decided heights beyond the next one kept to be folded in order."""
MAX_CATCHUP_PER_HEIGHT = 4
"""Distinct values kept per later height from catch-up (only ones whose signers hold 1/3 of the current set)."""


class CatchUpMixin(DriverBase):
    """The :class:`~consensus.driver.Driver`'s catch-up (see the module docstring)."""

    _catchup: dict[int, dict[bytes, Certified | Committed]]  # later height -> value id -> decided height

    def _catch_up(self, inp: Certified | Committed, out: list[Effect]) -> None:
        height = self.core.height
        if inp.height < height:
            return
        if inp.height > height:
            if inp.height <= height + MAX_CATCHUP_AHEAD and (isinstance(inp, Committed) or self._credible(inp)):
                bucket = self._catchup.setdefault(inp.height, {})
                if len(bucket) < MAX_CATCHUP_PER_HEIGHT:
                    bucket.setdefault(inp.value.value_id(), inp)
            return
        if isinstance(inp, Certified):
            reason = self._certify(inp)
            if reason is not None:
                self._count("uncertified-catchup")
                for vote in inp.precommits:  # the core catches a signer that also precommitted the real value
                    if vote.message.height == height and vote.signer in self.validators:
                        self._step(VoteInput(vote), out)
                return
        self._decided(inp.height, inp.round, inp.value, inp.precommits, out)
        self._step(self._next_height(), out)

    def _credible(self, c: Certified) -> bool:
        """A decided later height worth keeping: its signers hold more than 1/3 of the current set."""
        vs = self.validators
        return vs.has_one_third(vs.weight_of_set(
            v.signer for v in c.precommits if v.message.type == "precommit" and v.message.height == c.height
            and v.message.chain_id == self.config.chain_id))

    def _certify(self, c: Certified) -> str | None:
        """Why a decided height from another peer is not the one this peer's own chain admits, or ``None``."""
        vs = self.validators
        vid = c.value.value_id()
        voters = {v.signer for v in c.precommits
                  if (v.message.chain_id, v.message.type, v.message.height, v.message.round, v.message.value_id)
                  == (self.config.chain_id, "precommit", c.height, c.round, vid)}
        if not vs.has_quorum(vs.weight_of_set(voters)):
            return "the precommits carry no quorum of this peer's set"
        if any(self.pool.is_decided(q) for q in c.value.query_ids()):
            return "a query was decided at an earlier height"
        return self.chain.check_extras(c.value, c.height, self.verified) or grouping.validate_value(
            c.value, validators=vs, local_sims=None, threshold=self.config.threshold,
            tolerance=self.config.tolerance, cache=self.verified, chain_id=self.config.chain_id,
            verdict_rule=self.chain.verdict_rule)
