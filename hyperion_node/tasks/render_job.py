"""One render job across several workers: a coordinator that drives a :class:`RenderPlan` with real tasks.

Each chunk of the plan is an ordinary task (``Orchestrator.submit``) pinned to its worker with
``TaskSpec.only``, so it gets the task layer's whole path: a stream straight to the worker, a receipt,
countersigning, history. The coordinator reads every chunk's events through one inbox and::

    frame     checks that the PNG decodes to the pixel hash it came with, keeps it once (``frame_arrived``),
              hands it to the client (the API streams it; the CLI writes it to disk)
    final     the chunk is done; its receipt goes into the summary; a frame it skipped is reassigned
    failed    the worker is dropped and its unrendered frames reassigned (an invalid request -- the request
              itself is wrong -- ends the job instead: every worker would refuse it)
    stall     no frame from a running chunk for ``stall_timeout_s``: its task is cancelled (the worker kills
              Blender), the worker dropped, its frames reassigned

then gives idle workers their next chunk. The job ends when every frame is kept (what still runs then is
cancelled), when no worker is left (``RenderJobFailed`` with the missing frames), at its deadline, or when the
client goes away (``RenderJob.cancel``: every task's stream is reset).
"""

from __future__ import annotations

import secrets
import statistics
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
import trio

from hyperion_node.errors import HyperionError, InternalError
from hyperion_node.scheduler.candidates import Candidate
from hyperion_node.tasks.events import Assigned, Failed, FailureKind, Final, Partial, TaskEvent, failed
from hyperion_node.tasks.exceptions import BadRenderJob, NoWorker, RenderJobFailed
from hyperion_node.tasks.model import TaskSpec
from hyperion_node.tasks.render_plan import DEFAULT_STARTUP_S, RenderPlan, worker_speeds
from hyperion_node.tasks.render_request import RenderJobRequest
from hyperion_node.tasks.service import Job
from hyperion_node.trio_types import TaskStatus

log = structlog.get_logger(__name__)

RUNTIME = "render-blender"
INBOX = 32  # chunk events waiting for the coordinator; a full inbox slows the workers' streams, not memory
EVENT_BUFFER = 16  # job events (a PNG each, at most) held for a client that reads slowly
# A worker is dropped after this long without a frame, at the least: Blender's start-up alone is 1-2 s
# here and a loaded machine stretches it several times; a slow frame adds STALL_FRAMES of its time.
MIN_STALL_TIMEOUT_S = 30.0
STALL_FRAMES = 5
# After the last frame, how long the last chunks get to send their receipts: the requester's countersign
# round trip (tasks.countersign_timeout_s defaults to 10 s).
FINAL_GRACE_S = 10.0

Emit = Callable[[dict[str, Any]], Awaitable[None]]
Inbox = trio.MemoryReceiveChannel[tuple[int, TaskEvent | None]]  # (chunk id, its event; None: ended without one)
InboxSend = trio.MemorySendChannel[tuple[int, TaskEvent | None]]


class RenderBackend(Protocol):
    """What a render job needs from the task layer (the Orchestrator)."""

    def submit(self, spec: TaskSpec) -> Job: ...
    async def live_providers(self, runtime: str, item: str) -> list[Candidate]: ...


def stall_timeout(speeds: dict[str, float], measured: bool) -> float:
    if not measured:
        return MIN_STALL_TIMEOUT_S
    return max(MIN_STALL_TIMEOUT_S, 2 * DEFAULT_STARTUP_S + STALL_FRAMES / min(speeds.values()))


def choose_workers(providers: list[Candidate], limit: int | None) -> list[Candidate]:
    """The fastest live providers first (unmeasured ones count as the median), this node first on a tie."""
    known = [c.throughput for c in providers if c.throughput]
    fill = statistics.median(known) if known else 0.0
    ranked = sorted(providers, key=lambda c: (-(c.throughput or fill), not c.local, c.peer_id))
    return ranked[:limit] if limit else ranked


def _pixels_sha256(png: bytes) -> str:
    from runtimes.render.png import pixels_sha256  # the runtime's definition of the hash, not a copy

    return pixels_sha256(png)


@dataclass
class _Chunk:
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    task_id: str = ""


class RenderCoordinator:
    def __init__(self, backend: RenderBackend, request: RenderJobRequest, emit: Emit, *, job_id: str) -> None:
        self._backend = backend
        self._request = request
        self._emit = emit
        self.job_id = job_id
        self._chunks: dict[int, _Chunk] = {}
        self._receipts: list[dict[str, Any]] = []
        self._hashing = trio.CapacityLimiter(1)  # PNG checks in a thread, one at a time (~15 ms a frame)
        self._plan: RenderPlan | None = None

    @property
    def plan(self) -> RenderPlan:
        if self._plan is None:
            raise InternalError("the render job has no plan before run()")
        return self._plan

    async def run(self) -> dict[str, Any]:
        """Render every frame; returns the summary. Raises NoWorker, BadRenderJob, RenderJobFailed, or
        trio.TooSlowError at the job's deadline."""
        req = self._request
        with trio.fail_after(req.timeout_s):
            self._deadline = trio.current_time() + req.timeout_s
            chosen = choose_workers(await self._backend.live_providers(RUNTIME, req.item), req.workers)
            if not chosen:
                raise NoWorker(f"no live peer offers {RUNTIME}/{req.item}", status="no-provider")
            measured = any(c.throughput for c in chosen)
            speeds = worker_speeds({c.peer_id: c.throughput for c in chosen}, req.width, req.height, req.samples)
            timeout = req.stall_timeout_s or stall_timeout(speeds, measured)
            plan = self._plan = RenderPlan(req.frame_start, req.frame_end, speeds, now=trio.current_time(),
                                           stall_timeout_s=timeout, chunk_size=req.chunk_frames, measured=measured)
            await self._send({"event": "plan", "job_id": self.job_id, "frames": [req.frame_start, req.frame_end],
                              "total": req.frames, "stall_timeout_s": round(timeout, 3), "workers": [
                                  {"worker": p, "local": c.local, "fps": round(w.fps, 4),
                                   "measured": bool(c.throughput), "frames": len(w.reserve),
                                   "chunk_frames": w.chunk_size}
                                  for c in chosen for p, w in plan.workers.items() if p == c.peer_id]})
            failure: HyperionError | None = None
            send, inbox = trio.open_memory_channel[tuple[int, TaskEvent | None]](INBOX)
            async with trio.open_nursery() as nursery:
                try:
                    await self._drive(nursery, send, inbox)
                except HyperionError as exc:  # raised past the nursery it would arrive in an exception group
                    failure = exc
                nursery.cancel_scope.cancel()  # chunks still running hold only frames already kept
            if failure is not None:
                raise failure
        return {"job_id": self.job_id, **plan.summary(trio.current_time()), "receipts": self._receipts}

    async def _drive(self, nursery: trio.Nursery, send: InboxSend, inbox: Inbox) -> None:
        plan = self.plan
        await self._dispatch(nursery, send)
        while not plan.complete:
            if plan.stuck:
                missing = plan.missing()
                raise RenderJobFailed(f"no worker is left for {len(missing)} frames ("
                                      + "; ".join(f"{p[-8:]}: {w.reason}" for p, w in plan.workers.items()) + ")",
                                      missing=missing)
            if not plan.running():
                raise InternalError(f"frames {plan.missing()[:10]} are in no chunk, yet workers are idle")
            with trio.move_on_at(plan.next_stall_at()):
                chunk_id, event = await inbox.receive()
                await self._handle(chunk_id, event)
            for peer in plan.stalled(trio.current_time()):
                await self._drop(peer, f"no frame for {plan.stall_timeout_s:.0f} s (stalled)")
            await self._dispatch(nursery, send)
        # Every frame is kept. A chunk that sent all its frames is about to send its receipt: wait for it, so
        # the worker is paid for work that was used; what else runs renders only duplicates and is cancelled.
        with trio.move_on_after(FINAL_GRACE_S):
            while any(len(c.received) == len(c.frames) for c in plan.running()):
                chunk_id, event = await inbox.receive()
                await self._handle(chunk_id, event)

    async def _dispatch(self, nursery: trio.Nursery, send: InboxSend) -> None:
        plan = self.plan
        for peer in plan.idle_workers():
            chunk = plan.next_chunk(peer, trio.current_time())
            if chunk is None:
                continue
            self._chunks[chunk.chunk_id] = _Chunk()
            nursery.start_soon(self._run_chunk, chunk.chunk_id, send.clone())
            event: dict[str, Any] = {"event": "chunk", "worker": peer, "frames": [chunk.first, chunk.last],
                                     "source": chunk.source}
            if chunk.source == "stolen":
                event["from"] = plan.steals[-1].victim
            await self._send(event)

    async def _run_chunk(self, chunk_id: int, send: InboxSend) -> None:
        chunk, own, req = self.plan.chunk(chunk_id), self._chunks[chunk_id], self._request
        spec = TaskSpec(runtime=RUNTIME, item=req.item, payload=req.payload(chunk.first, chunk.last),
                        timeout_s=max(1.0, self._deadline - trio.current_time()), only=frozenset({chunk.worker}))
        async with send:
            job = self._backend.submit(spec)
            own.task_id = job.task_id
            with own.scope:
                try:
                    async for event in job.events:
                        await send.send((chunk_id, event))
                        if isinstance(event, Final | Failed):
                            return
                finally:
                    job.cancel()  # a stall, the job's end or the client leaving: reset the worker's stream
                await send.send((chunk_id, None))  # the channel closed without a result

    async def _handle(self, chunk_id: int, event: TaskEvent | None) -> None:
        plan = self.plan
        chunk = plan.chunk(chunk_id)
        peer = chunk.worker
        current = plan.workers[peer].running is chunk  # False: the worker was dropped; a late frame may still count
        match event:
            case None:
                if current:
                    await self._drop(peer, "its task ended without a result")
            case Assigned():
                pass  # the chunk is pinned to its worker: nothing new
            case Partial():
                await self._frame(chunk_id, event, current)
            case Final(task_id=task_id, receipt_id=receipt_id, units=units):
                self._receipts.append({"worker": peer, "frames": [chunk.first, chunk.last], "task_id": task_id,
                                       "receipt_id": receipt_id, "units": units})
                lost = plan.chunk_ended(chunk_id, trio.current_time()) if current else ()
                if lost:
                    await self._send({"event": "reassigned", "worker": peer, "frames": list(lost),
                                      "reason": "its task completed without them"})
            case Failed(kind=kind, message=message):
                if kind is FailureKind.INVALID_REQUEST:  # the request itself is wrong: every worker would refuse it
                    raise BadRenderJob(message)
                if current:
                    await self._drop(peer, message)

    async def _frame(self, chunk_id: int, event: Partial, current: bool) -> None:
        plan, data = self.plan, event.data
        chunk = plan.chunk(chunk_id)
        frame, png, claimed = data.get("frame"), data.get("png"), data.get("pixels_sha256")
        if not isinstance(frame, int) or frame not in chunk.frames or not isinstance(png, bytes):
            problem = f"sent a frame outside its chunk or without a PNG ({frame!r})"
        else:
            try:
                actual = await trio.to_thread.run_sync(_pixels_sha256, png, limiter=self._hashing)
            except HyperionError as exc:  # MalformedImage: the worker sent garbage
                actual = f"undecodable ({exc.one_line()})"
            problem = "" if actual == claimed else f"frame {frame}'s PNG does not decode to its pixel hash"
        if problem:
            log.warning("render_bad_frame", worker=chunk.worker[-8:], problem=problem)
            if current:
                await self._drop(chunk.worker, problem)
            return
        assert isinstance(frame, int)
        assert isinstance(png, bytes)
        if not plan.frame_arrived(chunk_id, frame, trio.current_time()):
            log.info("render_duplicate_frame", frame=frame, worker=chunk.worker[-8:])
            return
        await self._send({"event": "frame", "frame": frame, "worker": chunk.worker, "png": png,
                          "pixels_sha256": claimed, "png_sha256": data.get("png_sha256"),
                          "width": data.get("width"), "height": data.get("height"),
                          "render_seconds": data.get("render_seconds"), "task_id": event.task_id})
        await self._send({"event": "progress", "done": len(plan.done), "total": len(plan.frames)})

    async def _drop(self, peer: str, reason: str) -> None:
        plan = self.plan
        running = plan.workers[peer].running
        if running is not None:
            self._chunks[running.chunk_id].scope.cancel()
        moved = plan.worker_failed(peer, reason, trio.current_time())
        log.info("render_worker_dropped", worker=peer[-8:], reason=reason, frames=len(moved.frames))
        await self._send({"event": "reassigned", "worker": peer, "frames": list(moved.frames), "reason": reason})

    async def _send(self, event: dict[str, Any]) -> None:
        before = trio.current_time()
        await self._emit(event)
        if self._plan is not None:
            self._plan.shift_clocks(trio.current_time() - before)  # a slow client is no worker's stall


@dataclass(frozen=True)
class RenderFailed:
    """A render job's last event when it did not complete: why (``failure``, whose ``task_id`` is the job's
    ID), and the frames that no worker rendered when workers ran out (``RenderJobFailed``)."""

    job_id: str
    failure: Failed
    missing: tuple[int, ...] | None = None


# A render job's events: plain dicts (plan, chunk, frame, progress, reassigned, done), the API's NDJSON as
# they are (PNG bytes aside), or its failure, whose HTTP status the API chooses.
RenderEvent = dict[str, Any] | RenderFailed


@dataclass
class RenderJob:
    job_id: str
    events: trio.MemoryReceiveChannel[RenderEvent]
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    def cancel(self) -> None:
        self.scope.cancel()
        self.events.close()


class RenderJobs:
    """The daemon component that runs render jobs, each in its own cancel scope, like Orchestrator jobs."""

    def __init__(self, backend: RenderBackend) -> None:
        self._backend = backend
        self._nursery: trio.Nursery | None = None
        self.stats: Counter[str] = Counter()

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    def submit(self, request: RenderJobRequest) -> RenderJob:
        if self._nursery is None:
            raise InternalError("a render job was submitted before the render jobs component started")
        send, receive = trio.open_memory_channel[RenderEvent](EVENT_BUFFER)
        job = RenderJob(secrets.token_hex(8), receive)
        self._nursery.start_soon(self._run, request, job, send)
        return job

    async def _run(self, request: RenderJobRequest, job: RenderJob,
                   send: trio.MemorySendChannel[RenderEvent]) -> None:
        with job.scope, structlog.contextvars.bound_contextvars(render_job=job.job_id):
            async with send:
                try:
                    summary = await RenderCoordinator(self._backend, request, send.send, job_id=job.job_id).run()
                    self.stats["completed"] += 1
                    log.info("render_job_done", frames=summary["frames"], seconds=summary["seconds"])
                    await send.send({"event": "done", **summary})
                except (HyperionError, trio.TooSlowError) as exc:
                    self.stats["failed"] += 1
                    log.info("render_job_failed", error=str(exc) or type(exc).__name__)
                    missing = tuple(exc.missing) if isinstance(exc, RenderJobFailed) else None
                    try:
                        await send.send(RenderFailed(job.job_id, failed(job.job_id, exc), missing))
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return  # nobody is listening any more
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.stats["cancelled"] += 1  # the client went away; its chunks were cancelled with it
                except Exception as exc:
                    # A bug in one job must not stop a node that serves many (as in Orchestrator._run_job): its
                    # client gets a 500 and the traceback goes to the log, loudly.
                    self.stats["crashed"] += 1
                    log.exception("render_job_crashed")
                    with trio.move_on_after(1):
                        try:
                            await send.send(RenderFailed(job.job_id, failed(job.job_id, exc)))
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            return
