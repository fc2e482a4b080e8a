"""Choosing the peer that runs a task: pure code, fed by the peer table, capability records and outcomes.

See ``scheduler.py`` for how the requester side calls it and ``settings.py`` for the ``[scheduler]`` keys.
"""

from hyperion_node.scheduler.adaptive import AdaptiveLayer, OutcomeStats
from hyperion_node.scheduler.breaker import BreakerState, BreakerTransition, CircuitBreaker
from hyperion_node.scheduler.candidates import (
    Candidate,
    CandidateSet,
    TaskRequirements,
    candidates_from_peer_table,
    local_candidate,
)
from hyperion_node.scheduler.exceptions import InvalidRequirements, InvalidSetting, WrongCapability
from hyperion_node.scheduler.health import HealthChange, HealthMonitor, PeerHealth
from hyperion_node.scheduler.scheduler import (
    Decision,
    DecisionStatus,
    Exclusion,
    Outcome,
    OutcomeKind,
    Scheduler,
    SchedulerEvent,
    ScoredCandidate,
)
from hyperion_node.scheduler.scoring import CRITERIA, Weights
from hyperion_node.scheduler.settings import AdaptiveSettings, BreakerSettings, HealthSettings, SchedulerSettings

__all__ = [
    "CRITERIA",
    "AdaptiveLayer",
    "AdaptiveSettings",
    "BreakerSettings",
    "BreakerState",
    "BreakerTransition",
    "Candidate",
    "CandidateSet",
    "CircuitBreaker",
    "Decision",
    "DecisionStatus",
    "Exclusion",
    "HealthChange",
    "HealthMonitor",
    "HealthSettings",
    "InvalidRequirements",
    "InvalidSetting",
    "Outcome",
    "OutcomeKind",
    "OutcomeStats",
    "PeerHealth",
    "Scheduler",
    "SchedulerEvent",
    "SchedulerSettings",
    "ScoredCandidate",
    "TaskRequirements",
    "Weights",
    "WrongCapability",
    "candidates_from_peer_table",
    "local_candidate",
]
