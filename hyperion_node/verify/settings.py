"""``[verify]``: how much settled work is spot-checked, and when a worker is no longer trusted."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hyperion_node.config_section import Check, section_kwargs

SECTION = "verify"


@dataclass(frozen=True)
class VerifySettings:
    budget: float = 0.01
    new_worker_results: int = 32
    new_worker_boost: float = 10.0
    drift_boost: float = 10.0
    timeout_s: float = 120.0
    distrust_after_disputes: int = 2
    concurrent: int = 1
    # Chunks of an inference result's logit commitment the forward pass checks, drawn at random (0: every
    # chunk); runtimes/inference/verifier.py explains the trade-off.
    inference_chunks: int = 1
    standing_floor: float = 0.1
    case_evidence: bool = True

    @classmethod
    def from_values(cls, values: Mapping[str, Any], sources: Mapping[str, str]) -> VerifySettings:
        checks: dict[str, Check] = {
            "budget": (lambda v: 0 <= v <= 1, "a share from 0 to 1"),
            "new_worker_results": (lambda v: v >= 0, "an integer of at least 0"),
            "new_worker_boost": (lambda v: v >= 1, "a factor of at least 1"),
            "drift_boost": (lambda v: v >= 1, "a factor of at least 1"),
            "timeout_s": (lambda v: v > 0, "a number of seconds above 0"),
            "distrust_after_disputes": (lambda v: v >= 1, "an integer of at least 1"),
            "concurrent": (lambda v: v >= 1, "an integer of at least 1"),
            "inference_chunks": (lambda v: v >= 0, "an integer of at least 0 (0: every chunk)"),
            "standing_floor": (lambda v: 0 <= v <= 1, "a share from 0 to 1"),
        }
        return cls(**section_kwargs(cls, SECTION, values, sources, checks))
