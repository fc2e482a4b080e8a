"""``[ledger]``: when epochs close, when the node warns of idle or unsettled work, and how often it
refreshes its dealings summary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from hyperion_node.settings import COUNT, POSITIVE, Section, at_least, setting


@dataclass(frozen=True)
class LedgerSettings(Section):
    SECTION: ClassVar[str] = "ledger"

    epoch_receipts: int = setting(rule=COUNT)
    epoch_minutes: float = setting(rule=POSITIVE)
    idle_warning_minutes: float = setting(rule=POSITIVE)
    unsettled_warning_minutes: float = setting(rule=POSITIVE)
    dealings_interval_s: float = setting(5.0, at_least(0, "a number of seconds, 0 or more"))
