"""The peer driver: the protocol logic around the consensus core, pure and sans-I/O (one driver, two hosts).

See :mod:`consensus.driver._driver`; inputs and effects are in
:mod:`consensus.driver._io`; fault injection in
:mod:`consensus.driver.behaviours`.
"""

from consensus.driver._driver import (
    MAX_CATCHUP_AHEAD,
    MAX_CATCHUP_PER_HEIGHT,
    MAX_CHECKING,
    MAX_FUTURE_PER_SIGNER,
    MAX_REQUESTS,
    RESEND_ANSWERS,
    RESEND_MESSAGES,
    Driver,
    DriverConfig,
)
from consensus.driver._io import (
    Announce,
    AskCatchUp,
    BehaviourTimer,
    Certified,
    Committed,
    CoreTimeout,
    Crash,
    Decided,
    DriverInput,
    Effect,
    Embed,
    Embedded,
    QueryTimes,
    EvidenceFound,
    Generate,
    GenerationFailed,
    Generated,
    GraceTimer,
    Judge,
    Judged,
    JudgePair,
    Persist,
    QueryExpired,
    Rate,
    Rated,
    Received,
    Schedule,
    Send,
    SendRaw,
    InjectEvent,
    Tick,
    Timer,
    TimerFired,
)
from consensus.driver._judging import SILENT_AFTER
from consensus.driver._pool import PendingQuery, PoolFull, QueryPool
from consensus.driver._scoring import ScoreBook, judge_pairs

__all__ = [
    "MAX_CATCHUP_AHEAD", "MAX_CATCHUP_PER_HEIGHT", "MAX_CHECKING", "MAX_FUTURE_PER_SIGNER", "MAX_REQUESTS", "RESEND_ANSWERS",
    "RESEND_MESSAGES", "SILENT_AFTER", "Driver", "DriverConfig",
    "Announce", "AskCatchUp", "BehaviourTimer", "Certified", "Committed", "CoreTimeout", "Crash", "Decided",
    "DriverInput", "Effect", "Embed", "Embedded", "QueryTimes", "EvidenceFound", "Generate", "GenerationFailed", "Generated",
    "GraceTimer", "Judge", "Judged", "JudgePair", "Persist", "QueryExpired", "Rate", "Rated", "Received", "Schedule", "Send",
    "SendRaw", "InjectEvent", "Tick", "Timer", "TimerFired",
    "PendingQuery", "PoolFull", "QueryPool", "ScoreBook", "judge_pairs",
]
