"""``[tasks]`` and ``[spending]``: the orchestrator's bounds and a requester's limits, from the config loader's flat
values (see configs/default.toml)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from hyperion_node.settings import POSITIVE, Section, at_least, count, is_number, need, setting


@dataclass(frozen=True)
class TaskSettings(Section):
    SECTION: ClassVar[str] = "tasks"

    queue_depth: int = setting(1, count(0, "an integer >= 0"))
    default_timeout_s: float = setting(120.0, POSITIVE)
    request_timeout_s: float = setting(10.0, POSITIVE)
    countersign_timeout_s: float = setting(10.0, POSITIVE)
    busy_retry_after_s: float = setting(2.0, POSITIVE)
    admission_timeout_s: float = setting(5.0, POSITIVE)
    lookup_timeout_s: float = setting(3.0, POSITIVE)
    history_limit: int = setting(10000, POSITIVE)
    max_deadline_s: float = setting(600.0, POSITIVE)
    max_streams_per_peer: int = setting(4, POSITIVE)
    max_unpaid: int = setting(3, POSITIVE)
    unpaid_window_s: float = setting(3600.0, POSITIVE)


# ``[spending]`` (tasks/spending.py): a requester's limits. Its max prices are an open table, one key per runtime.
MAX_PRICE_PREFIX = "spending.max_price_per_unit."


@dataclass(frozen=True)
class SpendingSettings(Section):
    SECTION: ClassVar[str] = "spending"

    daily_budget: float = setting(0.0, at_least(0, "a number of credits >= 0 (0: no budget)"))  # per UTC day
    max_price_per_unit: Mapping[str, float] = field(default_factory=dict)  # runtime -> credits per unit

    def check(self) -> None:
        for runtime, price in self.max_price_per_unit.items():
            need(is_number(price) and price >= 0, MAX_PRICE_PREFIX + runtime, price,
                 "a number of credits per work unit, >= 0")

    @classmethod
    def from_values(cls, values: Mapping[str, Any], sources: Mapping[str, str] | None = None,
                    **given: Any) -> Self:
        prices = {key.removeprefix(MAX_PRICE_PREFIX): value for key, value in values.items()
                  if key.startswith(MAX_PRICE_PREFIX)}
        return super().from_values(values, sources, **{"max_price_per_unit": prices, **given})
