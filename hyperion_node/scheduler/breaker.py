"""A circuit breaker per peer: stop sending work to a peer that keeps failing, then probe it back carefully.

The state machine (Nygard, *Release It!*, 2007; the thresholds of ``BreakerSettings``)::

    closed    --(N failures in a row, or failure share >= rate over the window with >= min_calls)--> open
    open      --(cool-down elapsed)--------------------------------------------------------------> half-open
    half-open --(a probe succeeds)-----------------------------------------------------------------> closed
    half-open --(a probe fails)--------------------------------> open, cool-down x backoff_factor (capped)

Closed lets everything through; open nothing; half-open at most ``half_open_probes`` requests at once. Only
failures that say something about the peer count (unreachable, failed, timed out); a BUSY answer is load,
not a fault, and releases a probe slot without a verdict.

Time comes from an injected clock (default ``trio.current_time``), so tests drive it with trio's MockClock;
the breaker does no I/O and keeps no task. Every transition is reported to ``on_transition``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from hyperion_node.scheduler.settings import BreakerSettings

Clock = Callable[[], float]

# Outcomes remembered for the failure-rate window; far above any sensible min_calls, and it bounds memory.
MAX_WINDOW_OUTCOMES = 1024


def trio_clock() -> float:
    """The daemon's clock. Imported on use: this module is pure code, trio is only where time comes from."""
    import trio

    return trio.current_time()


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(frozen=True)
class BreakerTransition:
    peer_id: str
    old: BreakerState
    new: BreakerState
    at: float
    reason: str  # "consecutive-failures", "failure-rate", "cool-down-over", "probe-failed", "probe-succeeded"
    cooldown_s: float | None = None  # set when it opens: how long until it half-opens

    def to_json(self) -> dict[str, object]:
        return {"peer_id": self.peer_id, "from": self.old.value, "to": self.new.value, "at": self.at,
                "reason": self.reason, "cooldown_s": self.cooldown_s}


class CircuitBreaker:
    def __init__(self, peer_id: str, settings: BreakerSettings | None = None, *, clock: Clock = trio_clock,
                 on_transition: Callable[[BreakerTransition], None] | None = None) -> None:
        self.peer_id = peer_id
        self.settings = settings or BreakerSettings()
        self._clock = clock
        self._on_transition = on_transition
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._window: deque[tuple[float, bool]] = deque(maxlen=MAX_WINDOW_OUTCOMES)  # (time, failed)
        self._cooldown = self.settings.cooldown_s
        self._open_until = 0.0
        self._probes = 0  # probes in flight while half-open

    # -- reading -------------------------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The state now: an open breaker whose cool-down has elapsed turns half-open when read."""
        if self._state is BreakerState.OPEN and self._clock() >= self._open_until:
            self._probes = 0
            self._move(BreakerState.HALF_OPEN, "cool-down-over")
        return self._state

    @property
    def retry_at(self) -> float | None:
        """When an open breaker will let a probe through; None unless open."""
        return self._open_until if self.state is BreakerState.OPEN else None

    @property
    def cooldown_s(self) -> float:
        """The cool-down the next opening would use (grows with every failed probe)."""
        return self._cooldown

    def admits_at(self, now: float) -> bool:
        """``allows()`` at a time the caller read from this breaker's clock: the scheduler checks every
        troubled breaker in one decision and reads the clock once for all of them."""
        if self._state is BreakerState.OPEN:
            if now < self._open_until:
                return False
            self._probes = 0
            self._move(BreakerState.HALF_OPEN, "cool-down-over")
        return self._state is BreakerState.CLOSED or self._probes < self.settings.half_open_probes

    @property
    def open_until(self) -> float:
        """When the current (or last) opening ends, on this breaker's clock."""
        return self._open_until

    def allows(self) -> bool:
        """Whether a new request may go to this peer now (without taking a probe slot)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        return state is BreakerState.HALF_OPEN and self._probes < self.settings.half_open_probes

    # -- the request's life ----------------------------------------------------------------------------------

    def acquire(self) -> bool:
        """Called just before a request is sent. False: refused (open, or every probe slot taken); True: send
        it, and report its end with exactly one of ``record_success``, ``record_failure`` or ``release``."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and self._probes < self.settings.half_open_probes:
            self._probes += 1
            return True
        return False

    def release(self) -> None:
        """A request ended without a verdict on the peer (it answered BUSY, or the caller cancelled)."""
        if self._state is BreakerState.HALF_OPEN:
            self._probes = max(0, self._probes - 1)

    def record_success(self) -> None:
        state = self.state
        if state is BreakerState.HALF_OPEN:
            self._cooldown = self.settings.cooldown_s
            self._reset_counts()
            self._move(BreakerState.CLOSED, "probe-succeeded")
        elif state is BreakerState.CLOSED:
            self._consecutive = 0
            self._window.append((self._clock(), False))
        # open: a late answer to a request sent before it opened; the cool-down still runs.

    def record_failure(self) -> None:
        state = self.state
        now = self._clock()
        if state is BreakerState.HALF_OPEN:
            self._cooldown = min(self.settings.max_cooldown_s, self._cooldown * self.settings.backoff_factor)
            self._open(now, "probe-failed")
        elif state is BreakerState.CLOSED:
            self._consecutive += 1
            self._window.append((now, True))
            if self._consecutive >= self.settings.consecutive_failures:
                self._open(now, "consecutive-failures")
            elif self._failure_rate_exceeded(now):
                self._open(now, "failure-rate")

    # -- internals -------------------------------------------------------------------------------------------

    def _failure_rate_exceeded(self, now: float) -> bool:
        horizon = now - self.settings.window_s
        while self._window and self._window[0][0] < horizon:
            self._window.popleft()
        calls = len(self._window)
        if calls < self.settings.min_calls:
            return False
        failures = sum(1 for _, failed in self._window if failed)
        return failures / calls >= self.settings.failure_rate

    def _reset_counts(self) -> None:
        self._consecutive = 0
        self._window.clear()
        self._probes = 0

    def _open(self, now: float, reason: str) -> None:
        self._open_until = now + self._cooldown
        self._reset_counts()
        self._move(BreakerState.OPEN, reason, cooldown_s=self._cooldown)

    def _move(self, new: BreakerState, reason: str, *, cooldown_s: float | None = None) -> None:
        old, self._state = self._state, new
        if self._on_transition is not None:
            self._on_transition(BreakerTransition(self.peer_id, old, new, self._clock(), reason, cooldown_s))
