"""``[verify]``: how much settled work is spot-checked, and when a worker is no longer trusted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from hyperion_node.settings import COUNT, SHARE, Section, above, at_least, count, setting


@dataclass(frozen=True)
class VerifySettings(Section):
    SECTION: ClassVar[str] = "verify"

    budget: float = setting(0.01, SHARE)
    new_worker_results: int = setting(32, count(0))
    new_worker_boost: float = setting(10.0, at_least(1, "a factor of at least 1"))
    drift_boost: float = setting(10.0, at_least(1, "a factor of at least 1"))
    timeout_s: float = setting(120.0, above(0, "a number of seconds above 0"))
    distrust_after_disputes: int = setting(2, COUNT)
    concurrent: int = setting(1, COUNT)
    # Chunks of an inference result's logit commitment the forward pass checks, drawn at random (0: every
    # chunk); runtimes/inference/verifier.py explains the trade-off.
    inference_chunks: int = setting(1, count(0, "an integer of at least 0 (0: every chunk)"))
    standing_floor: float = setting(0.1, SHARE)
    case_evidence: bool = True
