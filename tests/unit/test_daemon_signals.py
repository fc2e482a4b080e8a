"""The daemon's signal policy: the first signal cancels the components (graceful), the second exits at once,
and a graceful shutdown that overruns its budget is cut short."""

from __future__ import annotations

import signal
import threading
from collections.abc import AsyncIterator

import pytest
import trio

from hyperion_node import daemon


class Exited(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


async def signals(*nums: int) -> AsyncIterator[int]:
    for num in nums:
        yield num


@pytest.fixture
def exits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    budgets: list[float] = []

    def hard_exit_after(seconds: float, code: int) -> threading.Timer:
        budgets.append(seconds)
        return threading.Timer(3600, lambda: None)  # never started: this test only checks it was armed

    def _exit(code: int) -> None:
        raise Exited(code)

    monkeypatch.setattr(daemon, "_hard_exit_after", hard_exit_after)
    monkeypatch.setattr(daemon.os, "_exit", _exit)
    return budgets


async def test_first_signal_cancels_the_components_and_arms_the_budget(exits: list[float]) -> None:
    scope = trio.CancelScope()
    await daemon._watch_signals(signals(signal.SIGTERM), scope)
    assert scope.cancel_called
    assert exits == [daemon.SHUTDOWN_BUDGET_S]


async def test_second_signal_exits_at_once(exits: list[float]) -> None:
    scope = trio.CancelScope()
    with pytest.raises(Exited) as info:
        await daemon._watch_signals(signals(signal.SIGINT, signal.SIGINT), scope)
    assert info.value.code == daemon.EXIT_SECOND_SIGNAL
    assert scope.cancel_called


def test_overrunning_shutdown_is_cut_short(monkeypatch: pytest.MonkeyPatch) -> None:
    codes: list[int] = []
    done = threading.Event()

    def _exit(code: int) -> None:
        codes.append(code)
        done.set()

    monkeypatch.setattr(daemon.os, "_exit", _exit)
    daemon._hard_exit_after(0.01, daemon.EXIT_SHUTDOWN_OVERRUN)
    assert done.wait(5.0)
    assert codes == [daemon.EXIT_SHUTDOWN_OVERRUN]
