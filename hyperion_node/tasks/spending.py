"""What this node may spend as a requester: a max price per work unit per runtime, and a daily budget.

``[spending]`` in the configuration, changeable live (``config reload``). Both apply to every task this node
asks the network for, whatever asked it (the OpenAI and Ollama APIs, ``POST /api/tasks``, ``submit``):

- ``max_price_per_unit.<runtime>``: a task's max price is the lower of its own and this one, so the scheduler
  never sends it to a dearer offer (and a worker refuses it if its price rose since it advertised). When no offer
  is at or under the limit, the refusal names the limit.
- ``daily_budget``: credits per UTC day. Once the receipts this node signed as requester today (pending and
  settled) add up to it, a new task is refused at once with HTTP 429, saying how much was spent and when the
  budget resets (``Retry-After``). Tasks running when the budget is reached finish: the budget can be
  overshot by what they cost.
"""

from __future__ import annotations

import dataclasses
import datetime

from hyperion_node.ledger.money import atto_to_credits
from hyperion_node.store import Store
from hyperion_node.tasks.exceptions import LimitReached
from hyperion_node.tasks.model import TaskSpec
from hyperion_node.tasks.settings import MAX_PRICE_PREFIX, SpendingSettings

SPENT_FRESH_S = 1.0  # today's spending is read again at most this often


class Spending:
    """The limits in force (``settings`` is replaced by a reload) and how they apply to a task."""

    def __init__(self, settings: SpendingSettings, store: Store) -> None:
        self.settings = settings
        self._store = store
        self._spent: tuple[int, float, float] = (-1, 0.0, -SPENT_FRESH_S)  # (day start ms, credits, when read)

    def limit(self, spec: TaskSpec) -> tuple[TaskSpec, str | None]:
        """The spec with this node's max price for its runtime applied, and the key of that limit when it is the
        one that binds (None when the task's own is lower, or there is none)."""
        limit = self.settings.max_price_per_unit.get(spec.runtime)
        if limit is None or (spec.max_price_per_unit is not None and spec.max_price_per_unit <= limit):
            return spec, None
        return dataclasses.replace(spec, max_price_per_unit=limit), f"{MAX_PRICE_PREFIX}{spec.runtime} = {limit}"

    async def check_budget(self, now: float) -> None:
        """``LimitReached`` when today's spending has reached the daily budget."""
        budget = self.settings.daily_budget
        if budget <= 0:
            return
        day = datetime.datetime.fromtimestamp(now, datetime.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        resets = day + datetime.timedelta(days=1)
        since_ms = int(day.timestamp() * 1000)
        cached_day, spent, read_at = self._spent
        if cached_day != since_ms or now - read_at >= SPENT_FRESH_S:  # one read a second, not one per task
            spent = await self._store.run(self._spent_since, since_ms)
            self._spent = (since_ms, spent, now)
        if spent < budget:
            return
        wait = resets.timestamp() - now
        raise LimitReached(
            f"the daily budget of {budget} credits (spending.daily_budget) is spent: {spent:.6f} today; it resets "
            f"at 00:00 UTC, in {int(wait // 3600)} h {int(wait % 3600 // 60)} min",
            hint="raise spending.daily_budget and run `hyperion-node config reload`, or wait", retry_after_s=wait)

    def _spent_since(self, since_ms: int) -> float:
        rows = self._store.execute("SELECT total FROM ledger_receipts WHERE role = 'requester' AND status != 'disputed'"
                                   " AND recorded_at_ms >= ?", (since_ms,))
        return atto_to_credits(sum(int(r[0]) for r in rows))
