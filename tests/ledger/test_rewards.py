"""Rewards from the ledger: exact sums by status, runtime and period; silent-stall warnings; auto prices."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyperion_node.ledger.chain import Ledger
from hyperion_node.ledger.dispute import sign_dispute
from hyperion_node.ledger.money import credits_to_atto, format_credits
from hyperion_node.ledger.receipt import countersign
from hyperion_node.ledger.rewards import (
    HOUR_MS,
    ReceiptSummary,
    StallThresholds,
    auto_price,
    compute_rewards,
    price_offers,
)
from hyperion_node.store import Store
from hyperion_node.testing.receipts import ReceiptFactory, new_identity
from runtimes.interface import Offer

NOW = 1_800_000_000_000
QUIET = StallThresholds(idle_minutes=10_000, unsettled_minutes=10_000)


def summary(status: str, total: int, *, ago_ms: int = 0, role: str = "worker", runtime: str = "inference",
            units: int = 10, contested: bool = False) -> ReceiptSummary:
    return ReceiptSummary(receipt_id=bytes(32), role=role, status=status, runtime=runtime,
                          unit="token" if runtime == "inference" else "constraint", units=units, total=total,
                          worker="w", requester="r-" + status, finished_at_ms=NOW - ago_ms,
                          recorded_at_ms=NOW - ago_ms, epoch=None, contested=contested)


def report(summaries: list[ReceiptSummary], thresholds: StallThresholds = QUIET,
           available_since_ms: int = NOW - 1000, failed: int = 0) -> dict[str, object]:
    return compute_rewards(summaries, now_ms=NOW, available_since_ms=available_since_ms, failed_tasks=failed,
                           thresholds=thresholds)


def test_a_fresh_node_has_earned_nothing_and_is_not_warned() -> None:
    data = report([])
    assert (data["earned"], data["pending"], data["disputed"], data["receipts"]) == (0, 0, 0, 0)
    assert data["tasks"] == {"completed": 0, "failed": 0, "settled": 0, "pending": 0, "disputed": 0,
                             "contested": 0}
    assert data["warnings"] == []


def test_sums_by_status_period_and_runtime_are_exact() -> None:
    tenth = credits_to_atto("0.1")
    data = report([
        summary("settled", tenth, ago_ms=10),
        summary("settled", tenth, ago_ms=2 * HOUR_MS),  # yesterday's share of the last day
        summary("settled", tenth, ago_ms=2 * HOUR_MS, contested=True),  # accused, not confirmed: still earned
        summary("pending", 3, ago_ms=30 * HOUR_MS),
        summary("disputed", 5, runtime="zk", units=7),
        summary("settled", 10**30, role="requester"),  # bought, not earned
        summary("settled", 10**30, role="self"),  # a node serving itself earns nothing
    ], failed=2)
    assert data["exact"] == {"earned": "0.3", "pending": "0.000000000000000003",
                             "disputed": "0.000000000000000005", "contested": "0.1", "spent": "1000000000000"}
    periods = data["periods"]
    assert isinstance(periods, dict)
    assert (periods["last_hour"]["earned"], periods["last_hour"]["tasks"]) == (0.1, 2)
    assert periods["last_day"]["earned"] == pytest.approx(0.3)
    assert periods["total"]["tasks"] == 5
    runtimes = data["runtimes"]
    assert isinstance(runtimes, dict)
    assert runtimes["zk"] == {"earned": 0.0, "pending": 0.0, "disputed": 5e-18, "contested": 0.0, "tasks": 1,
                              "units": 7, "unit": "constraint"}
    assert runtimes["inference"]["tasks"] == 4
    assert data["tasks"] == {"completed": 5, "failed": 2, "settled": 3, "pending": 1, "disputed": 1, "contested": 1}
    assert data["receipts"] == 7


def test_idle_while_available_is_warned() -> None:
    thresholds = StallThresholds(idle_minutes=60, unsettled_minutes=10_000)
    assert report([], thresholds, available_since_ms=NOW - 59 * 60_000)["warnings"] == []
    [warning] = report([], thresholds, available_since_ms=NOW - 3 * HOUR_MS)["warnings"]  # type: ignore[misc]
    assert warning["kind"] == "idle"
    assert "available for 3 h with no work" in warning["message"]
    # Work an hour ago keeps the warning away until the threshold passes again since that work.
    recent = [summary("settled", 1, ago_ms=30 * 60_000)]
    assert report(recent, thresholds, available_since_ms=NOW - 3 * HOUR_MS)["warnings"] == []


def test_receipts_left_unsettled_past_the_threshold_are_warned() -> None:
    thresholds = StallThresholds(idle_minutes=10_000, unsettled_minutes=30)
    fresh = [summary("pending", 7, ago_ms=29 * 60_000)]
    assert report(fresh, thresholds)["warnings"] == []
    stuck = [summary("pending", 7, ago_ms=31 * 60_000), summary("pending", 8, ago_ms=2 * HOUR_MS),
             summary("settled", 9, ago_ms=5 * HOUR_MS)]
    [warning] = report(stuck, thresholds)["warnings"]  # type: ignore[misc]
    assert warning["kind"] == "unsettled"
    assert f"2 receipts worth {format_credits(15)} credits are not countersigned after 30 min" in warning["message"]
    assert "2 h 0 min ago" not in warning["message"]
    assert "2 h ago" in warning["message"]


def test_rewards_from_a_real_ledger(tmp_path: Path, factory: ReceiptFactory) -> None:
    ledger = Ledger(Store.open(tmp_path / "node.db"), str(factory.worker.peer_id), clock=lambda: NOW / 1000)
    settled = countersign(factory.signed(), factory.requester)
    pending, disputed = factory.signed(), factory.signed()
    ledger.append_batch([settled, pending, disputed])
    ledger.dispute(sign_dispute(disputed.id, disputed.receipt.worker, "wrong", NOW, new_identity()))
    data = compute_rewards(ledger.summaries(), now_ms=NOW, available_since_ms=NOW, failed_tasks=0, thresholds=QUIET)
    total = settled.receipt.total
    assert data["exact"]["earned"] == format_credits(total)  # type: ignore[index]
    assert data["exact"]["pending"] == format_credits(pending.receipt.total)  # type: ignore[index]
    assert data["exact"]["disputed"] == format_credits(disputed.receipt.total)  # type: ignore[index]
    assert data["tasks"]["completed"] == 3  # type: ignore[index]


def test_auto_price_makes_an_hour_of_full_speed_work_earn_the_target() -> None:
    price = auto_price(25.0, 1.0)  # 25 tokens/s, 1 credit per hour
    assert price == credits_to_atto(1) // 90_000
    assert abs(price * 25 * 3600 - credits_to_atto(1)) < 25 * 3600  # off by less than one atto per unit
    with pytest.raises(ValueError, match="throughput"):
        auto_price(0.0, 1.0)


def test_price_offers_fills_auto_prices_where_measured() -> None:
    measured = Offer(runtime="inference", item="m", unit="token", price_per_unit=2e-6, capacity=1, throughput=50.0)
    unmeasured = Offer(runtime="inference", item="n", unit="token", price_per_unit=2e-6, capacity=1, throughput=None)
    other = Offer(runtime="zk", item="c", unit="constraint", price_per_unit=1e-9, capacity=1, throughput=1e6)
    priced = price_offers([measured, unmeasured, other], auto_runtimes=["inference"], credits_per_hour=0.9)
    assert priced[0].price_per_unit == pytest.approx(0.9 / (50 * 3600))
    assert priced[0].details["price"] == "auto"
    assert priced[1:] == [unmeasured, other]


@pytest.mark.parametrize(("credits", "atto"), [(0.000002, 2 * 10**12), ("1", 10**18), (0, 0), ("1e-18", 1)])
def test_credits_convert_exactly(credits: float | str, atto: int) -> None:
    assert credits_to_atto(credits) == atto
    assert credits_to_atto(format_credits(atto)) == atto


def test_negative_or_nonsense_amounts_are_refused() -> None:
    for bad in (-1, "x", "nan", float("inf")):
        with pytest.raises(ValueError, match="credits"):
            credits_to_atto(bad)
