"""A deterministic simulator of the WBFT protocol: many shipping drivers under seeded virtual time.

``run(config, seed)`` hosts one :class:`~consensus.driver.Driver` per peer,
the very object a real peer runs (``peers/node.py`` is its other host), over
a simulated network with seeded latency, loss, partitions, crashes and
slowness, and the shared Byzantine behaviours
(:mod:`consensus.driver.behaviours`) per node. It then checks agreement, validity, termination,
equivocation detection and equal weights on honest peers, raising
:class:`SimFailure` with the seed and a one-line replay command.
``replay(seed, config)`` reproduces a run exactly (same ``trace_hash``).
Baselines run in the same harness: ``equal`` (the same core, all weights 1)
and ``majority`` (no rounds; most common answer).

Weights adapt under ``wbft`` (``SimConfig.adaptive_weights``, default on):
each driver owns an adaptive :class:`~consensus.chain.Chain`; it scores
decided answers, gossips signed score vectors, carries them and
equivocation evidence in values, and folds decided values into the weights
in force two heights later. The fault model is then checked
per height (faulty weight below 1/3 of the set in force), and results report
the faulty peers' share of the weight per height. ``attack_from_height``
makes faulty peers mere wrong answerers until then, to model an attack
launched once weights have adapted.

Membership (issue 12): ``epoch_length``, ``joiners`` and ``leaves`` add
peers outside the genesis that join a running network (they catch up from
the genesis and vote once their chain puts them in the set) and members
that leave (and stop); members that crash for good are removed by the
missed-heights rule. Sends, keys and the fault model follow each node's
chain; :func:`churn_scenario` draws runs that mix all of it
(``bench/sim_membership.py``).

Fast path vs real signatures: see :mod:`consensus.sim._world`.
"""

from consensus.driver.behaviours import BEHAVIOURS, Behaviour, Phased, behaviour_names, register
from consensus.sim._config import (
    BASELINES,
    WEIGHT_PRESETS,
    Baseline,
    Crash,
    Joiner,
    Leaver,
    Partition,
    SimConfig,
    SimConfigError,
    WeightPreset,
)
from consensus.sim._engine import DecisionRecord, EquivocationRecord, Simulation, proposer_of, validator_set
from consensus.sim._invariants import Violation, check_run
from consensus.sim._scenarios import churn_scenario, random_scenario
from consensus.sim._run import RunResult, SimFailure, Summary, replay, replay_command, run, simulate, summarise
from consensus.sim._world import Question, answer_table, normalise, sim_keys, similarities

__all__ = [
    "BASELINES", "BEHAVIOURS", "Baseline", "Behaviour", "Crash", "DecisionRecord", "EquivocationRecord", "Joiner", "Leaver",
    "Partition", "Phased", "churn_scenario", "Question", "RunResult", "SimConfig", "SimConfigError", "SimFailure", "Simulation",
    "Summary", "Violation", "answer_table", "behaviour_names", "check_run", "normalise", "proposer_of",
    "random_scenario", "register",
    "replay", "replay_command", "run", "sim_keys", "simulate", "similarities", "summarise", "validator_set",
    "WEIGHT_PRESETS", "WeightPreset",
]
