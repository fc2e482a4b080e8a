"""Splitting one render job's frames across workers, as pure code (no trio, no I/O, time passed in).

A job is an inclusive frame range rendered by several workers, each frame by exactly one task's Blender::

    speeds     each worker's frames/s, from its advertised pixel-samples/s and the job's w x h x samples
               (a worker that never measured gets the median of those that did)
    reserves   the range cut into one contiguous block per worker, in proportion to its speed
    chunks     a worker runs its reserve a chunk (one task, several frames) at a time: every task pays
               Blender's start-up, so a chunk is long enough to keep that cost a small share of its time
    orphans    frames of a worker that failed or stalled (no frame for ``stall_timeout_s``); any worker
               takes these first
    stealing   a worker whose reserve and the orphans are empty takes the tail of the reserve with the most
               time left, split so that both should finish together; frames already in a running task are
               never stolen (that task would render them anyway)

A frame is done once, the first time it arrives; a second copy (a stalled worker that wakes up, a failed
task whose frames were already reassigned) is reported as a duplicate and dropped.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from hyperion_node.errors import InternalError

# What one task costs besides its frames: Blender's start and the scene's load, 1-2 s on this project's
# 2-core machine (scripts/bench_render.py; the runtime's benchmark reports it as "fixed_seconds").
DEFAULT_STARTUP_S = 1.5
# A chunk is long enough that start-up is at most this share of its time ...
MAX_STARTUP_SHARE = 0.2
# ... and short enough that the tail of a job can still be balanced by stealing.
MAX_CHUNK_FRAMES = 12
# Frames per chunk when no worker ever measured its speed (nothing to derive a size from).
UNMEASURED_CHUNK_FRAMES = 4


def frames_per_second(pixel_samples_per_s: float | None, width: int, height: int, samples: int) -> float | None:
    """A worker's advertised throughput (unit ``pixel-sample``) as frames/s of this job, or None if unknown."""
    if pixel_samples_per_s is None or not math.isfinite(pixel_samples_per_s) or pixel_samples_per_s <= 0:
        return None
    return pixel_samples_per_s / (width * height * samples)


def worker_speeds(throughputs: Mapping[str, float | None], width: int, height: int,
                  samples: int) -> dict[str, float]:
    """Frames/s per worker; those without a measurement get the median of the others (1.0 if nobody has one,
    which only matters relative to each other: equal shares)."""
    fps = {peer: frames_per_second(t, width, height, samples) for peer, t in throughputs.items()}
    known = [v for v in fps.values() if v is not None]
    fill = statistics.median(known) if known else 1.0
    return {peer: fill if v is None else v for peer, v in fps.items()}


def proportional_shares(count: int, speeds: Mapping[str, float]) -> dict[str, int]:
    """``count`` frames split in proportion to speed by largest remainder (Hamilton): the shares sum to
    ``count`` and none is more than one frame off its exact quota. Ties go to the earlier worker."""
    if not speeds:
        raise InternalError("a render job needs at least one worker")
    total = sum(speeds.values())
    quotas = {peer: count * s / total for peer, s in speeds.items()}
    shares = {peer: math.floor(q) for peer, q in quotas.items()}
    order = sorted(speeds, key=lambda p: (-(quotas[p] - shares[p]), list(speeds).index(p)))
    for peer in order[: count - sum(shares.values())]:
        shares[peer] += 1
    return shares


def chunk_frames(fps: float | None, *, startup_s: float = DEFAULT_STARTUP_S) -> int:
    """Frames per task for a worker of ``fps``: the fewest that keep start-up within MAX_STARTUP_SHARE."""
    if fps is None:
        return UNMEASURED_CHUNK_FRAMES
    # startup / (startup + n / fps) <= share  <=>  n >= startup * fps * (1 - share) / share
    needed = math.ceil(startup_s * fps * (1 - MAX_STARTUP_SHARE) / MAX_STARTUP_SHARE)
    return max(1, min(MAX_CHUNK_FRAMES, needed))


@dataclass
class Chunk:
    """One task: a contiguous run of frames on one worker."""

    chunk_id: int
    worker: str
    frames: tuple[int, ...]
    source: str  # "reserve", "orphans" or "stolen"
    started_at: float
    last_frame_at: float
    received: set[int] = field(default_factory=set)

    @property
    def first(self) -> int:
        return self.frames[0]

    @property
    def last(self) -> int:
        return self.frames[-1]


@dataclass
class WorkerState:
    peer_id: str
    fps: float
    chunk_size: int
    reserve: list[int]  # sorted; frames nobody has started
    running: Chunk | None = None
    alive: bool = True
    reason: str = ""  # why it was dropped
    frames: int = 0  # frames it delivered first
    tasks: int = 0
    busy_s: float = 0.0

    def reserve_seconds(self) -> float:
        return len(self.reserve) / self.fps


@dataclass(frozen=True)
class Steal:
    thief: str
    victim: str
    frames: tuple[int, ...]


@dataclass(frozen=True)
class Reassignment:
    worker: str
    reason: str
    frames: tuple[int, ...]  # back in the orphan pool


def first_run(frames: Sequence[int], limit: int) -> list[int]:
    """The longest contiguous run at the start of sorted ``frames``, at most ``limit`` long."""
    run: list[int] = []
    for frame in frames:
        if len(run) >= limit or (run and frame != run[-1] + 1):
            break
        run.append(frame)
    return run


class RenderPlan:
    def __init__(self, frame_start: int, frame_end: int, speeds: Mapping[str, float], *, now: float,
                 stall_timeout_s: float, chunk_size: int | None = None, measured: bool = True,
                 startup_s: float = DEFAULT_STARTUP_S) -> None:
        if frame_end < frame_start:
            raise InternalError(f"empty frame range {frame_start}-{frame_end}")
        if any(not math.isfinite(s) or s <= 0 for s in speeds.values()):
            raise InternalError(f"worker speeds must be finite and above 0: {dict(speeds)}")
        self.frames = range(frame_start, frame_end + 1)
        self.stall_timeout_s = stall_timeout_s
        self.started_at = now
        self.workers: dict[str, WorkerState] = {}
        shares = proportional_shares(len(self.frames), speeds)
        cursor = frame_start
        for peer, fps in speeds.items():
            size = chunk_size or chunk_frames(fps if measured else None, startup_s=startup_s)
            self.workers[peer] = WorkerState(peer, fps, size, list(range(cursor, cursor + shares[peer])))
            cursor += shares[peer]
        self.orphans: list[int] = []
        self.done: dict[int, str] = {}  # frame -> the worker whose copy was kept
        self.duplicates = 0
        self.steals: list[Steal] = []
        self.reassignments: list[Reassignment] = []
        self._chunks: dict[int, Chunk] = {}
        self._next_id = 0

    # -- what the coordinator asks ---------------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return len(self.done) == len(self.frames)

    @property
    def stuck(self) -> bool:
        """Frames remain but no worker is left to render them."""
        return not self.complete and not any(w.alive for w in self.workers.values())

    def missing(self) -> list[int]:
        return [f for f in self.frames if f not in self.done]

    def idle_workers(self) -> list[str]:
        return [p for p, w in self.workers.items() if w.alive and w.running is None]

    def chunk(self, chunk_id: int) -> Chunk:
        return self._chunks[chunk_id]

    def running(self) -> list[Chunk]:
        return [w.running for w in self.workers.values() if w.running is not None]

    def next_chunk(self, peer: str, now: float) -> Chunk | None:
        """The next task for an idle worker: orphans first, then its own reserve, then a steal; None if
        there is nothing it should take."""
        worker = self._live(peer)
        if worker.running is not None:
            raise InternalError(f"{peer} already runs chunk {worker.running.chunk_id}")
        source = "orphans"
        frames = first_run(self.orphans, worker.chunk_size)
        if frames:
            del self.orphans[: len(frames)]
        else:
            source = "reserve"
            frames = first_run(worker.reserve, worker.chunk_size)
            if frames:
                del worker.reserve[: len(frames)]
            else:
                source = "stolen"
                frames = self._steal(worker)
        if not frames:
            return None
        chunk = Chunk(self._next_id, peer, tuple(frames), source, now, now)
        self._next_id += 1
        self._chunks[chunk.chunk_id] = chunk
        worker.running = chunk
        worker.tasks += 1
        return chunk

    def _steal(self, thief: WorkerState) -> list[int]:
        victims = [w for w in self.workers.values() if w is not thief and w.alive and w.reserve]
        if not victims:
            return []
        victim = max(victims, key=WorkerState.reserve_seconds)
        # Split the victim's reserve so that both finish it at the same time: the thief's part is its share
        # of the two speeds. Rounded, so a much slower thief takes nothing rather than delay the job.
        take = math.floor(len(victim.reserve) * thief.fps / (thief.fps + victim.fps) + 0.5)
        take = min(take, thief.chunk_size)
        if take < 1:
            return []
        tail = _last_run(victim.reserve, take)
        del victim.reserve[-len(tail):]
        self.steals.append(Steal(thief.peer_id, victim.peer_id, tuple(tail)))
        return tail

    # -- what happened -------------------------------------------------------------------------------------

    def frame_arrived(self, chunk_id: int, frame: int, now: float) -> bool:
        """Record a frame from a chunk; True if it is new, False if it is a duplicate to drop."""
        chunk = self._chunks[chunk_id]
        if frame not in chunk.frames:
            raise InternalError(f"frame {frame} is not in chunk {chunk_id} ({chunk.first}-{chunk.last})")
        chunk.received.add(frame)
        chunk.last_frame_at = now
        if frame in self.done:
            self.duplicates += 1
            return False
        self.done[frame] = chunk.worker
        self.workers[chunk.worker].frames += 1
        # It may also be waiting elsewhere (reassigned after a stall): nobody need render it again.
        if frame in self.orphans:
            self.orphans.remove(frame)
        for worker in self.workers.values():
            if frame in worker.reserve:
                worker.reserve.remove(frame)
        return True

    def chunk_ended(self, chunk_id: int, now: float) -> tuple[int, ...]:
        """The chunk's task completed. Frames it should have sent and did not go back to the orphans."""
        chunk = self._chunks[chunk_id]
        worker = self.workers[chunk.worker]
        if worker.running is not chunk:
            return ()  # already reassigned (a stall) before its task ended
        worker.running = None
        worker.busy_s += now - chunk.started_at
        return self._orphan(f for f in chunk.frames if f not in chunk.received)

    def worker_failed(self, peer: str, reason: str, now: float) -> Reassignment:
        """The worker's task failed or stalled: it gets no more work; its unrendered frames are orphans."""
        worker = self.workers[peer]
        lost: list[int] = []
        if worker.running is not None:
            chunk = worker.running
            worker.busy_s += now - chunk.started_at
            lost += [f for f in chunk.frames if f not in chunk.received]
            worker.running = None
        lost += worker.reserve
        worker.reserve = []
        worker.alive = False
        worker.reason = reason
        moved = Reassignment(peer, reason, self._orphan(lost))
        self.reassignments.append(moved)
        return moved

    def _orphan(self, frames: Iterable[int]) -> tuple[int, ...]:
        fresh = [f for f in frames if f not in self.done and f not in self.orphans]
        self.orphans = sorted(self.orphans + fresh)
        return tuple(fresh)

    # -- time ------------------------------------------------------------------------------------------------

    def stalled(self, now: float) -> list[str]:
        """Workers whose running chunk sent no frame for ``stall_timeout_s`` (its start counts as one)."""
        # The same sum as next_stall_at(), so that waking at that instant always finds the stall (a
        # difference could round below the timeout and leave the caller waking again and again).
        return [c.worker for c in self.running() if now >= c.last_frame_at + self.stall_timeout_s]

    def next_stall_at(self) -> float:
        return min((c.last_frame_at + self.stall_timeout_s for c in self.running()), default=math.inf)

    def shift_clocks(self, seconds: float) -> None:
        """Time the coordinator spent blocked on its own client is nobody's stall."""
        for chunk in self.running():
            chunk.last_frame_at += seconds

    def _live(self, peer: str) -> WorkerState:
        worker = self.workers.get(peer)
        if worker is None or not worker.alive:
            raise InternalError(f"{peer} is not a live worker of this job")
        return worker

    def summary(self, now: float) -> dict[str, object]:
        return {
            "frames": len(self.done), "seconds": round(now - self.started_at, 3),
            "workers": {p: {"frames": w.frames, "tasks": w.tasks, "busy_s": round(w.busy_s, 3),
                            "fps_planned": round(w.fps, 4), "dropped": w.reason or None}
                        for p, w in self.workers.items()},
            "stolen": sum(len(s.frames) for s in self.steals),
            "reassigned": sum(len(r.frames) for r in self.reassignments),
            "duplicates": self.duplicates,
        }  # fmt: skip


def _last_run(frames: Sequence[int], limit: int) -> list[int]:
    """The longest contiguous run at the end of sorted ``frames``, at most ``limit`` long."""
    run: list[int] = []
    for frame in reversed(frames):
        if len(run) >= limit or (run and frame != run[0] - 1):
            break
        run.insert(0, frame)
    return run
