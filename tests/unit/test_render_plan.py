"""The render job planner: shares by speed, chunks, stealing, reassignment, and every frame exactly once.

The property test runs the planner inside a small discrete-event simulation of workers with any speeds, some
of which crash or freeze (and may deliver their frames late, after they were reassigned): whatever happens,
as long as one worker stays healthy, the job completes with every frame kept exactly once.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hyperion_node.errors import InternalError
from hyperion_node.tasks.render_plan import (
    MAX_CHUNK_FRAMES,
    UNMEASURED_CHUNK_FRAMES,
    RenderPlan,
    chunk_frames,
    first_run,
    frames_per_second,
    proportional_shares,
    worker_speeds,
)

STARTUP = 1.5


def plan(frames: int, speeds: dict[str, float], **kwargs: object) -> RenderPlan:
    options: dict[str, object] = {"now": 0.0, "stall_timeout_s": 10.0, **kwargs}
    return RenderPlan(1, frames, speeds, **options)  # type: ignore[arg-type]


def test_frames_per_second_from_pixel_samples() -> None:
    assert frames_per_second(64 * 48 * 4 * 2.0, 64, 48, 4) == pytest.approx(2.0)
    assert frames_per_second(None, 64, 48, 4) is None
    assert frames_per_second(0.0, 64, 48, 4) is None
    assert frames_per_second(float("nan"), 64, 48, 4) is None


def test_unmeasured_workers_get_the_median_speed() -> None:
    unit = 10 * 10 * 1
    speeds = worker_speeds({"a": 1.0 * unit, "b": 3.0 * unit, "c": 5.0 * unit, "d": None}, 10, 10, 1)
    assert speeds == {"a": 1.0, "b": 3.0, "c": 5.0, "d": 3.0}
    assert worker_speeds({"a": None, "b": None}, 10, 10, 1) == {"a": 1.0, "b": 1.0}


@given(st.integers(0, 500), st.lists(st.floats(0.01, 1000), min_size=1, max_size=8))
def test_shares_sum_to_the_frames_and_follow_the_speeds(count: int, speeds: list[float]) -> None:
    by_peer = {f"p{i}": s for i, s in enumerate(speeds)}
    shares = proportional_shares(count, by_peer)
    assert sum(shares.values()) == count
    total = sum(speeds)
    for peer, share in shares.items():
        assert abs(share - count * by_peer[peer] / total) < 1.0  # largest remainder: under one frame off


def test_a_three_times_faster_worker_gets_three_times_the_frames() -> None:
    assert proportional_shares(12, {"fast": 3.0, "slow": 1.0}) == {"fast": 9, "slow": 3}
    p = plan(12, {"fast": 3.0, "slow": 1.0})
    assert p.workers["fast"].reserve == list(range(1, 10))
    assert p.workers["slow"].reserve == [10, 11, 12]


def test_chunks_keep_start_up_a_small_share() -> None:
    # 2 frames/s: 12 frames at 1.5 s start-up -> start-up is 1.5 / (1.5 + 6) = 20% of the task.
    assert chunk_frames(2.0, startup_s=STARTUP) == 12
    assert chunk_frames(0.01, startup_s=STARTUP) == 1  # a frame takes 100 s: one frame per task is fine
    assert chunk_frames(100.0, startup_s=STARTUP) == MAX_CHUNK_FRAMES
    assert chunk_frames(None) == UNMEASURED_CHUNK_FRAMES


def test_first_run_stops_at_a_gap() -> None:
    assert first_run([3, 4, 5, 9, 10], 10) == [3, 4, 5]
    assert first_run([3, 4, 5], 2) == [3, 4]
    assert first_run([], 3) == []


def test_a_worker_that_runs_dry_steals_the_tail_of_the_slowest_reserve() -> None:
    p = plan(20, {"a": 1.0, "b": 1.0}, chunk_size=2)
    a = p.next_chunk("a", 0.0)
    b = p.next_chunk("b", 0.0)
    assert a is not None
    assert b is not None
    assert (a.frames, b.frames) == ((1, 2), (11, 12))
    p.workers["a"].reserve.clear()  # as if a had rendered its whole reserve
    for frame in a.frames:
        p.frame_arrived(a.chunk_id, frame, 1.0)
    p.chunk_ended(a.chunk_id, 1.0)
    stolen = p.next_chunk("a", 1.0)
    assert stolen is not None
    assert stolen.source == "stolen"
    assert stolen.frames == (19, 20), "the tail, never frames b has started"
    assert p.workers["b"].reserve == list(range(13, 19))
    assert p.steals[0].victim == "b"


def test_a_much_slower_worker_does_not_steal_the_last_frame() -> None:
    p = plan(4, {"fast": 100.0, "slow": 1.0}, chunk_size=1)
    assert p.workers["slow"].reserve == []
    assert p.next_chunk("fast", 0.0) is not None
    assert p.next_chunk("slow", 0.0) is None, "slow would finish 1 frame after fast finishes 3"


def test_a_failed_workers_frames_go_to_the_others_first() -> None:
    p = plan(12, {"a": 1.0, "b": 1.0, "c": 1.0}, chunk_size=2)
    chunks = {peer: p.next_chunk(peer, 0.0) for peer in "abc"}
    c = chunks["c"]
    assert c is not None
    assert c.frames == (9, 10)
    p.frame_arrived(c.chunk_id, 9, 1.0)
    moved = p.worker_failed("c", "the stream broke", 2.0)
    assert moved.frames == (10, 11, 12), "the frame it did not send, and its reserve"
    a = chunks["a"]
    assert a is not None
    for frame in a.frames:
        p.frame_arrived(a.chunk_id, frame, 3.0)
    p.chunk_ended(a.chunk_id, 3.0)
    after = p.next_chunk("a", 3.0)
    assert after is not None
    assert after.source == "orphans"
    assert after.frames == (10, 11)
    assert p.idle_workers() == [], "a and b both run; c is gone"
    with pytest.raises(InternalError):
        p.next_chunk("c", 3.0)


def test_a_stalled_worker_is_found_and_its_late_frame_is_kept_once() -> None:
    p = plan(4, {"a": 1.0, "b": 1.0}, chunk_size=2, stall_timeout_s=5.0)
    a = p.next_chunk("a", 0.0)
    b = p.next_chunk("b", 0.0)
    assert a is not None
    assert b is not None
    p.frame_arrived(b.chunk_id, 3, 4.0)
    assert p.stalled(4.9) == []
    assert p.next_stall_at() == 5.0
    p.shift_clocks(1.0)  # the coordinator was blocked on its client for a second: nobody's fault
    assert p.stalled(5.5) == []
    assert p.stalled(6.0) == ["a"]
    p.worker_failed("a", "no frame for 5 s", 6.0)
    p.frame_arrived(b.chunk_id, 4, 6.0)
    p.chunk_ended(b.chunk_id, 6.0)
    again = p.next_chunk("b", 6.0)
    assert again is not None
    assert again.frames == (1, 2)
    assert p.frame_arrived(a.chunk_id, 1, 7.0) is True, "a woke up: its copy came first and is kept"
    assert p.frame_arrived(again.chunk_id, 1, 7.5) is False, "b's copy is the duplicate"
    p.frame_arrived(again.chunk_id, 2, 8.0)
    assert p.frame_arrived(a.chunk_id, 2, 8.5) is False
    p.chunk_ended(again.chunk_id, 8.0)
    assert p.complete
    assert p.duplicates == 2
    assert sorted(p.done) == [1, 2, 3, 4]


def test_everyone_failing_leaves_the_plan_stuck_with_what_is_missing() -> None:
    p = plan(6, {"a": 1.0, "b": 1.0}, chunk_size=3)
    first = p.next_chunk("a", 0.0)
    assert first is not None
    p.frame_arrived(first.chunk_id, 1, 1.0)
    p.worker_failed("a", "x", 1.0)
    p.worker_failed("b", "y", 1.0)
    assert p.stuck
    assert p.missing() == [2, 3, 4, 5, 6]


def test_a_frame_outside_the_chunk_is_refused() -> None:
    p = plan(4, {"a": 1.0})
    chunk = p.next_chunk("a", 0.0)
    assert chunk is not None
    with pytest.raises(InternalError):
        p.frame_arrived(chunk.chunk_id, 99, 1.0)


# -- any speeds, any failures ------------------------------------------------------------------------------


@dataclass
class Fate:
    fps: float
    crash_at: float | None = None  # the worker's task dies: the coordinator hears at once
    freeze_at: float | None = None  # it stops sending: only the stall timeout finds it
    wakes: bool = False  # a frozen worker delivers its frames late, after they were reassigned


fates = st.builds(
    Fate,
    fps=st.floats(0.05, 20.0),
    crash_at=st.none() | st.floats(0.0, 60.0),
    freeze_at=st.none() | st.floats(0.0, 60.0),
    wakes=st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(
    healthy=st.lists(st.floats(0.05, 20.0), min_size=1, max_size=3),
    faulty=st.lists(fates, max_size=4),
    count=st.integers(1, 80),
    start=st.integers(0, 1000),
    chunk_size=st.none() | st.integers(1, 10),
    measured=st.booleans(),
)
def test_every_frame_is_kept_exactly_once(healthy: list[float], faulty: list[Fate], count: int, start: int,
                                          chunk_size: int | None, measured: bool) -> None:
    workers = {f"ok{i}": Fate(fps) for i, fps in enumerate(healthy)}
    workers |= {f"bad{i}": fate for i, fate in enumerate(faulty)}
    slowest = min(f.fps for f in workers.values())
    timeout = 2 * STARTUP + 3 / slowest  # a healthy worker always sends a frame well within it
    p = RenderPlan(start, start + count - 1, {w: f.fps for w, f in workers.items()}, now=0.0,
                   stall_timeout_s=timeout, chunk_size=chunk_size, measured=measured, startup_s=STARTUP)
    kept: Counter[int] = Counter()
    events: list[tuple[float, int, str, int]] = []  # (time, seq, kind, chunk id)
    seq = 0

    def schedule(at: float, kind: str, chunk_id: int) -> None:
        nonlocal seq
        heapq.heappush(events, (at, seq, kind, chunk_id))
        seq += 1

    def frame_due(chunk_id: int, now: float) -> None:
        chunk = p.chunk(chunk_id)
        fate = workers[chunk.worker]
        at = now + 1 / fate.fps + (STARTUP if not chunk.received else 0.0)
        if fate.crash_at is not None and at >= fate.crash_at:
            schedule(max(now, fate.crash_at), "crash", chunk_id)
        elif fate.freeze_at is not None and at >= fate.freeze_at:
            if fate.wakes:
                schedule(at + 5 * timeout, "late", chunk_id)
        else:
            schedule(at, "frame", chunk_id)

    def dispatch(now: float) -> None:
        for peer in p.idle_workers():
            chunk = p.next_chunk(peer, now)
            if chunk is not None:
                assert list(chunk.frames) == list(range(chunk.first, chunk.last + 1)), "a task is a range"
                assert not any(f in p.done for f in chunk.frames), "no done frame is rendered again"
                frame_due(chunk.chunk_id, now)

    now = 0.0
    dispatch(now)
    for _ in range(20_000):  # every event is a frame, a crash or a stall: far fewer than this
        if p.complete:
            break
        assert p.running() or events, f"frames {p.missing()} are nowhere while workers live"
        stall_at = p.next_stall_at()
        if events and events[0][0] <= stall_at:
            now, _, kind, chunk_id = heapq.heappop(events)
            chunk = p.chunk(chunk_id)
            worker = p.workers[chunk.worker]
            if kind == "crash":
                if worker.alive and worker.running is chunk:
                    p.worker_failed(chunk.worker, "crashed", now)
            elif kind == "late":
                for frame in chunk.frames:
                    if frame not in chunk.received and p.frame_arrived(chunk_id, frame, now):
                        kept[frame] += 1
            else:
                frame = next(f for f in chunk.frames if f not in chunk.received)
                if p.frame_arrived(chunk_id, frame, now):
                    kept[frame] += 1
                if worker.running is chunk and len(chunk.received) < len(chunk.frames):
                    frame_due(chunk_id, now)
                elif worker.running is chunk:
                    p.chunk_ended(chunk_id, now)
        else:
            now = stall_at
            for peer in p.stalled(now):
                p.worker_failed(peer, "stalled", now)
        dispatch(now)
    assert p.complete, f"missing {p.missing()}"
    assert sorted(kept) == list(range(start, start + count))
    assert set(kept.values()) == {1}, "every frame kept exactly once"
    assert sorted(p.done) == sorted(kept)
    dropped = {peer for peer, w in p.workers.items() if not w.alive}
    assert not any(peer.startswith("ok") for peer in dropped), "a healthy worker is never taken for stalled"
    summary = p.summary(now)
    per_worker = summary["workers"]
    assert isinstance(per_worker, dict)
    assert sum(w["frames"] for w in per_worker.values()) == count
