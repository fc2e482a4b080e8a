"""``[tasks]`` and ``[spending]``: the orchestrator's bounds and a requester's limits, from the config loader's flat
values (see configs/default.toml)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from hyperion_node.config_section import Check, section_kwargs

SECTION = "tasks"


@dataclass(frozen=True)
class TaskSettings:
    queue_depth: int = 1
    default_timeout_s: float = 120.0
    request_timeout_s: float = 10.0
    countersign_timeout_s: float = 10.0
    busy_retry_after_s: float = 2.0
    admission_timeout_s: float = 5.0
    lookup_timeout_s: float = 3.0
    history_limit: int = 10000
    max_deadline_s: float = 600.0
    max_streams_per_peer: int = 4
    max_unpaid: int = 3
    unpaid_window_s: float = 3600.0

    @classmethod
    def from_values(cls, values: Mapping[str, Any], sources: Mapping[str, str]) -> TaskSettings:
        checks: dict[str, Check] = {f.name: (lambda v: v > 0, "a number above 0") for f in fields(cls)}
        checks["queue_depth"] = (lambda v: v >= 0, "an integer >= 0")
        return cls(**section_kwargs(cls, SECTION, values, sources, checks))


# ``[spending]`` (tasks/spending.py): a requester's limits. Its max prices are an open table, one key per runtime.
MAX_PRICE_PREFIX = "spending.max_price_per_unit."


@dataclass(frozen=True)
class SpendingSettings:
    daily_budget: float = 0.0  # credits per UTC day; 0: none
    max_price_per_unit: Mapping[str, float] = field(default_factory=dict)  # runtime -> credits per unit

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> SpendingSettings:
        """From the loader's flat values (checked there)."""
        prices = {key.removeprefix(MAX_PRICE_PREFIX): float(value) for key, value in values.items()
                  if key.startswith(MAX_PRICE_PREFIX)}
        return cls(daily_budget=float(values.get("spending.daily_budget", 0.0)), max_price_per_unit=prices)
