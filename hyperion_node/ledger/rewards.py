"""What the node earned, what is pending and why: pure computation over the ledger's receipts.

Operators of other networks report rewards that freeze without a word and earnings that do not add up. So
``rewards`` shows exact sums (atto-credit integers, see money.py) by status, runtime and period, and says
when something looks stuck:

* **idle** -- the node has been available for longer than ``idle_minutes`` and has done no work in that time;
* **unsettled** -- receipts of work done are still not countersigned ``unsettled_minutes`` after the work.

Periods count a receipt by when this node recorded it (its own clock), not by a peer's clock.

Automatic prices ("auto"): for a runtime whose throughput the node has measured (its cached benchmark, in
work units per second), the price per unit that makes an hour of full-speed work earn
``credits_per_hour``::

    price_per_unit = credits_per_hour / (throughput_units_per_s * 3600)

e.g. 1 credit/hour at 25 tokens/s is 1 / 90,000 = 0.0000111 credits per token. Operators elsewhere work this
out by hand from their own benchmarks; the node has the measurement already.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from hyperion_node.ledger.money import ATTO_PER_CREDIT, atto_to_credits, credits_to_atto, format_credits
from runtimes.interface import Offer

CURRENCY = "credits"
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
EARNING_ROLES = ("worker",)  # work done for ourselves ("self") earns nothing


@dataclass(frozen=True)
class ReceiptSummary:
    """One receipt as rewards and reputation read it (chain.py reads them from its index)."""

    receipt_id: bytes
    role: str  # "worker" (we did the work), "requester" (we bought it) or "self"
    status: str  # pending, settled, disputed
    runtime: str
    unit: str
    units: int
    total: int  # atto-credits
    worker: str
    requester: str
    finished_at_ms: int
    recorded_at_ms: int
    epoch: int | None
    contested: bool = False  # disputed by someone, not confirmed: still earned, shown apart


@dataclass(frozen=True)
class StallThresholds:
    idle_minutes: float
    unsettled_minutes: float


@dataclass
class _Sums:
    earned: int = 0
    pending: int = 0
    disputed: int = 0
    contested: int = 0  # part of earned (or pending): disputed by someone, not confirmed
    tasks: int = 0
    units: int = 0

    def add(self, summary: ReceiptSummary) -> None:
        if summary.contested and summary.status != "disputed":
            self.contested += summary.total
        if summary.status == "settled":
            self.earned += summary.total
        elif summary.status == "pending":
            self.pending += summary.total
        else:
            self.disputed += summary.total
        self.tasks += 1
        self.units += summary.units

    def to_json(self) -> dict[str, Any]:
        return {"earned": atto_to_credits(self.earned), "pending": atto_to_credits(self.pending),
                "disputed": atto_to_credits(self.disputed), "contested": atto_to_credits(self.contested),
                "tasks": self.tasks, "units": self.units}


def format_duration(ms: int) -> str:
    minutes = ms // 60_000
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{hours // 24} days"


def stall_warnings(
    work: Sequence[ReceiptSummary], *, now_ms: int, available_since_ms: int, thresholds: StallThresholds
) -> list[dict[str, str]]:
    """The silent-stall checks, on the receipts of work this node did."""
    warnings: list[dict[str, str]] = []
    idle_ms = int(thresholds.idle_minutes * 60_000)
    last_work = max((s.recorded_at_ms for s in work), default=None)
    idle_since = max(available_since_ms, last_work) if last_work is not None else available_since_ms
    if now_ms - idle_since >= idle_ms:
        warnings.append({
            "kind": "idle",
            "message": f"available for {format_duration(now_ms - idle_since)} with no work: check that peers can "
                       f"reach this node (`hyperion-node status`: p2p addresses; p2p.announce_addrs behind NAT) "
                       f"and that its prices are competitive",
        })
    unsettled_ms = int(thresholds.unsettled_minutes * 60_000)
    stuck = [s for s in work if s.status == "pending" and now_ms - s.recorded_at_ms >= unsettled_ms]
    if stuck:
        oldest = min(stuck, key=lambda s: s.recorded_at_ms)
        requesters = sorted({s.requester for s in stuck})
        warnings.append({
            "kind": "unsettled",
            "message": f"{len(stuck)} {'receipt' if len(stuck) == 1 else 'receipts'} worth "
                       f"{format_credits(sum(s.total for s in stuck))} {CURRENCY} "
                       f"{'is' if len(stuck) == 1 else 'are'} not countersigned after {format_duration(unsettled_ms)} "
                       f"(oldest {oldest.receipt_id.hex()[:16]}, "
                       f"{format_duration(now_ms - oldest.recorded_at_ms)} ago; requesters: "
                       f"{', '.join(r[-8:] for r in requesters[:5])}{' ...' if len(requesters) > 5 else ''})",
        })
    return warnings


def compute_rewards(
    summaries: Iterable[ReceiptSummary],
    *,
    now_ms: int,
    available_since_ms: int,
    failed_tasks: int,
    thresholds: StallThresholds,
) -> dict[str, Any]:
    """The ``rewards`` report. Amounts are credits as numbers, and exact decimal strings under ``exact``."""
    all_receipts = list(summaries)
    work = [s for s in all_receipts if s.role in EARNING_ROLES]
    total, hour, day = _Sums(), _Sums(), _Sums()
    per_runtime: dict[str, _Sums] = {}
    units: dict[str, str] = {}
    for s in work:
        total.add(s)
        if now_ms - s.recorded_at_ms < HOUR_MS:
            hour.add(s)
        if now_ms - s.recorded_at_ms < DAY_MS:
            day.add(s)
        per_runtime.setdefault(s.runtime, _Sums()).add(s)
        units[s.runtime] = s.unit
    spent = sum(s.total for s in all_receipts if s.role == "requester" and s.status == "settled")
    counts = {status: sum(1 for s in work if s.status == status) for status in ("settled", "pending", "disputed")}
    counts["contested"] = sum(1 for s in work if s.contested and s.status != "disputed")
    return {
        "currency": CURRENCY,
        "earned": atto_to_credits(total.earned),
        "pending": atto_to_credits(total.pending),
        "disputed": atto_to_credits(total.disputed),
        "contested": atto_to_credits(total.contested),
        "spent": atto_to_credits(spent),
        "exact": {"earned": format_credits(total.earned), "pending": format_credits(total.pending),
                  "disputed": format_credits(total.disputed), "contested": format_credits(total.contested),
                  "spent": format_credits(spent)},
        "periods": {"last_hour": hour.to_json(), "last_day": day.to_json(), "total": total.to_json()},
        "runtimes": {name: {**sums.to_json(), "unit": units[name]} for name, sums in sorted(per_runtime.items())},
        "tasks": {"completed": len(work), "failed": failed_tasks, **counts},
        "receipts": len(all_receipts),
        "warnings": stall_warnings(work, now_ms=now_ms, available_since_ms=available_since_ms,
                                   thresholds=thresholds),
    }


def auto_price(throughput_units_per_s: float, credits_per_hour: float) -> int:
    """Atto-credits per work unit so that an hour at the measured throughput earns ``credits_per_hour``."""
    if not throughput_units_per_s > 0:
        raise ValueError(f"an auto price needs a measured throughput above 0, got {throughput_units_per_s!r}")
    per_hour = Decimal(credits_to_atto(credits_per_hour))
    return int(per_hour / (Decimal(repr(throughput_units_per_s)) * 3600))


def price_offers(offers: Sequence[Offer], *, auto_runtimes: Sequence[str], credits_per_hour: float) -> list[Offer]:
    """Offers with "auto" prices filled in from their measured throughput, as the capability record carries
    them. An offer of an auto-priced runtime that has no measurement keeps its configured price."""
    priced = []
    for offer in offers:
        if offer.runtime in auto_runtimes and offer.throughput:
            price = auto_price(offer.throughput, credits_per_hour) / ATTO_PER_CREDIT
            offer = dataclasses.replace(offer, price_per_unit=price, details={**offer.details, "price": "auto"})
        priced.append(offer)
    return priced
