"""Light-client verification: trust a later height's validator set by following certified set changes.

As CometBFT's light client (``spec/light-client/verification``), adapted to
weights that may change at every height. Every decided value commits to the
hash of the set in force at its height and at the next one
(:meth:`consensus.messages.Value.header`), and every precommit signs the
value id, so a quorum attests both sets.

A :class:`TrustedState` is a height whose decision the client accepted: the
set in force there and the hash of the next one (from the genesis: height
0, the genesis set, whose hash is the set of height 1). A
:class:`LightBlock` is one decided height as a light client needs it: the
value header, the precommits and the set they are counted in. From a
trusted state, :func:`verify_block` accepts a later block when

1. its set has the hash its header commits to, and precommits for
   (height, round, value id) by distinct members of that set carry more
   than 2/3 of its weight; and
2. either it is the next height and its set's hash is the trusted
   ``next_hash`` (*adjacent*), or it lies at most ``trusting_period``
   heights ahead and its signers hold more than 1/3 of the *trusted* set's
   weight (*skipping*: at least one of them is honest, and an honest
   validator precommits only a value whose set hashes its own chain
   computed).

Trust assumptions: fewer than 1/3 of the weight of every set the client
trusts is faulty, for ``trusting_period`` heights after it was in force (a
validator's key that leaks later must not be able to sign the past). A
forged set that only signs for itself proves nothing: its signers are
either not in the trusted set or hold too little of it.

:func:`plan_path` is the serving side: the blocks a client that trusts a
given state needs to reach a target height (bisection, as CometBFT's).
Everything here is pure; signatures go through
:func:`consensus.messages.open_envelope`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from consensus.messages import Envelope, MessageError, Signed, ValueHeader, VerifiedCache, Vote, open_envelope
from consensus.validators import ValidatorSet
from multillmn import canonical
from multillmn.identity import PeerId

__all__ = [
    "LightBlock",
    "LightClientError",
    "MAX_PATH",
    "TRUSTING_PERIOD",
    "TrustedState",
    "commit_signers",
    "plan_path",
    "verify_block",
    "verify_path",
]

TRUSTING_PERIOD = 10_000
"""Heights a trusted set may vouch ahead of itself (skipping); further needs intermediate blocks."""
MAX_PATH = 64
"""Blocks a client accepts between its trusted state and a target (a path is O(log) in practice)."""


class LightClientError(ValueError):
    """A block cannot be trusted from the trusted state; the message says why."""


@dataclass(frozen=True)
class LightBlock:
    """One decided height: the value header, the precommits, and the set they are counted in."""

    height: int
    round: int
    header: ValueHeader
    precommits: tuple[Envelope, ...]
    validators: ValidatorSet


@dataclass(frozen=True)
class TrustedState:
    """A height the client trusts on chain ``chain_id``, the set in force there and the next height's set hash."""

    chain_id: str
    height: int
    validators: ValidatorSet
    next_hash: bytes

    @classmethod
    def genesis(cls, chain_id: str, validators: ValidatorSet) -> TrustedState:
        """Trust anchored at the genesis: height 0, whose next set (height 1's) is the genesis set."""
        return cls(chain_id, 0, validators, validators.set_hash())


def commit_signers(block: LightBlock, chain_id: str, cache: VerifiedCache | None = None) -> list[Signed[Vote]]:
    """The block's precommits, checked: set hash, signatures, (chain, height, round, value id), distinct voters,
    quorum. Raises :class:`LightClientError` naming the first problem.
    """
    vs = block.validators
    if block.header.validators_hash != vs.set_hash():
        raise LightClientError(f"height {block.height}: the validator set is not the one the value commits to")
    value_id = block.header.value_id()
    votes: list[Signed[Vote]] = []
    voters: set[PeerId] = set()
    for i, env in enumerate(block.precommits):
        try:
            signed = open_envelope(Vote, env, vs.public_key_of, cache)
        except MessageError as exc:
            raise LightClientError(f"height {block.height}: precommits[{i}]: {exc}") from None
        vote = signed.message
        if vote.chain_id != chain_id:
            raise LightClientError(f"height {block.height}: precommits[{i}] is for chain {vote.chain_id!r}, "
                                   f"not {chain_id!r}")
        if vote.type != "precommit" or vote.height != block.height or vote.round != block.round:
            raise LightClientError(f"height {block.height}: precommits[{i}] is not a precommit for height "
                                   f"{block.height} round {block.round}")
        if vote.value_id != value_id:
            raise LightClientError(f"height {block.height}: precommits[{i}] is for another value")
        if vote.voter in voters:
            raise LightClientError(f"height {block.height}: precommits[{i}] repeats voter {vote.voter}")
        voters.add(vote.voter)
        votes.append(signed)
    weight = vs.weight_of_set(voters)
    if not vs.has_quorum(weight):
        raise LightClientError(f"height {block.height}: precommits carry {weight} of {vs.total} weight; "
                               "more than 2/3 is needed")
    return votes


def _trusts(state: TrustedState, block: LightBlock, voters: set[PeerId], trusting_period: int) -> str | None:
    """``None`` if ``state`` vouches for ``block``'s set (given its checked voters), else why not."""
    if block.height <= state.height:
        return f"height {block.height} is not after the trusted height {state.height}"
    if block.height == state.height + 1:
        if block.validators.set_hash() != state.next_hash:
            return f"height {block.height}: its validator set is not the one height {state.height} committed to"
        return None
    if block.height - state.height > trusting_period:
        return (f"height {block.height} is more than {trusting_period} heights after the trusted height "
                f"{state.height}; intermediate blocks are needed")
    trusted = state.validators  # a peer id is the hash of its key: the same id is the same key
    weight = trusted.weight_of_set(voters)
    if not trusted.has_one_third(weight):
        return (f"height {block.height}: its signers hold {weight} of {trusted.total} weight in the set trusted at "
                f"height {state.height}; more than 1/3 is needed to skip there")
    return None


def verify_block(state: TrustedState, block: LightBlock, *, trusting_period: int = TRUSTING_PERIOD,
                 cache: VerifiedCache | None = None) -> TrustedState:
    """The trusted state after accepting ``block`` from ``state`` (module rules); raises :class:`LightClientError`."""
    voters = {v.signer for v in commit_signers(block, state.chain_id, cache)}
    reason = _trusts(state, block, voters, trusting_period)
    if reason is not None:
        raise LightClientError(reason)
    return TrustedState(state.chain_id, block.height, block.validators, block.header.next_validators_hash)


def verify_path(state: TrustedState, blocks: Sequence[LightBlock], *, trusting_period: int = TRUSTING_PERIOD,
                cache: VerifiedCache | None = None) -> TrustedState:
    """Accept ``blocks`` in order from ``state`` (blocks at or below the trusted height are skipped)."""
    if len(blocks) > MAX_PATH:
        raise LightClientError(f"a trust path of {len(blocks)} blocks exceeds {MAX_PATH}")
    for block in blocks:
        if block.height > state.height:
            state = verify_block(state, block, trusting_period=trusting_period, cache=cache)
    return state


def plan_path(state: TrustedState, target: LightBlock, block_at: Callable[[int], LightBlock | None], *,
              trusting_period: int = TRUSTING_PERIOD) -> list[LightBlock]:
    """The intermediate blocks a client trusting ``state`` needs before ``target`` (bisection).

    ``block_at(h)`` returns a block this peer already verified (its own
    decisions or its ledger's), so only the trust rule is evaluated here,
    not signatures. Raises :class:`LightClientError` if a needed block is
    missing.
    """

    def voters(block: LightBlock) -> set[PeerId]:
        return {v for env in block.precommits if (v := _voter(env)) is not None}

    path: list[LightBlock] = []

    def reach(state: TrustedState, goal: LightBlock, depth: int) -> TrustedState:
        if _trusts(state, goal, voters(goal), trusting_period) is None:
            return TrustedState(state.chain_id, goal.height, goal.validators, goal.header.next_validators_hash)
        if depth > 2 * MAX_PATH or goal.height - state.height < 2:
            raise LightClientError(f"no trust path from height {state.height} to {goal.height}")
        mid = block_at((state.height + goal.height) // 2)
        if mid is None:
            raise LightClientError(f"height {(state.height + goal.height) // 2} is not available for a trust path")
        state = reach(state, mid, depth + 1)
        path.append(mid)
        return reach(state, goal, depth + 1)

    reach(state, target, 0)
    if len(path) > MAX_PATH:
        raise LightClientError(f"the trust path to height {target.height} needs {len(path)} blocks")
    return path


def _voter(env: Envelope) -> PeerId | None:
    """The voter named in a precommit this peer verified before (no signature check)."""
    try:
        body = canonical.unpack(env.body)
    except canonical.CanonicalError:
        return None
    voter = body.get("voter") if isinstance(body, dict) else None
    return voter if isinstance(voter, str) else None
