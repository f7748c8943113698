"""Pure consensus core: message schemas, validator sets, answer grouping and the Tendermint state machine."""

from consensus.messages import (
    KINDS,
    MAX_ANSWER_CHARS,
    MAX_QUESTION_CHARS,
    Answer,
    Envelope,
    Message,
    MessageError,
    Proposal,
    Query,
    Signed,
    Value,
    Vote,
    open_envelope,
    query_id_of,
    sign,
)
from consensus.validators import Validator, ValidatorSet
from consensus.grouping import (
    Group,
    build_value,
    check_claimed_sims,
    choose,
    group_answers,
    pair_count,
    pair_index,
    quantise_similarity,
    validate_value,
)
from consensus.votes import HeightVotes, RoundVotes, VoteType
from consensus.state_machine import (
    BroadcastProposal,
    BroadcastVote,
    Committee,
    Core,
    Decide,
    EnterHeight,
    Equivocation,
    Input,
    Output,
    ProposalInput,
    ProposeValue,
    RequestValue,
    ScheduleTimeout,
    Start,
    StepName,
    TimeoutInput,
    Timeouts,
    VoteInput,
)

__all__ = [
    "KINDS", "MAX_ANSWER_CHARS", "MAX_QUESTION_CHARS", "Answer", "Envelope", "Message",
    "MessageError", "Proposal", "Query", "Signed", "Value", "Vote", "open_envelope",
    "query_id_of", "sign",
    "Validator", "ValidatorSet",
    "Group", "build_value", "check_claimed_sims", "choose", "group_answers", "pair_count",
    "pair_index", "quantise_similarity", "validate_value",
    "HeightVotes", "RoundVotes", "VoteType",
    "BroadcastProposal", "BroadcastVote", "Committee", "Core", "Decide", "EnterHeight", "Equivocation", "Input",
    "Output",
    "ProposalInput", "ProposeValue", "RequestValue", "ScheduleTimeout", "Start", "StepName",
    "TimeoutInput", "Timeouts", "VoteInput",
]
