"""The trio side of the worker pool: run a ``ProofPlan`` in worker processes without blocking the loop.

Same workers and frames as ``runtimes.zk.pool`` (kept apart so that a worker never imports trio). Each
busy worker is served by a task in a nursery that lives only for one proof; results come back over a
memory channel. Cancellation: when the caller's scope is cancelled, every worker still computing is
killed before ``prove`` returns (a killed process is the only way to stop pure-Python work at once), and
the pool starts new workers on its next use.
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from hyperion_node.errors import InternalError
from runtimes.zk.exceptions import WorkerCrashed
from runtimes.zk.pool import WORKER_COMMAND, FrameReader, default_workers, encode_frame, unwrap, worker_env
from runtimes.zk.prover import Job, Proof, ProofPlan, queue_order

AsyncProgress = Callable[[float, Job], Awaitable[None]]
# How long an idle worker gets to exit after its stdin closes before it is killed.
CLOSE_GRACE_S = 2.0


@dataclass(eq=False)
class _Worker:
    process: trio.Process
    reader: FrameReader = field(default_factory=FrameReader)
    job: Job | None = None

    async def call(self, job: Job) -> object:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None
        assert stdout is not None
        self.job = job
        await stdin.send_all(encode_frame((job.function, job.args)))
        while (reply := self.reader.next()) is None:
            data = await stdout.receive_some(1 << 20)
            if not data:
                code = await self.process.wait()
                raise WorkerCrashed(f"a proving worker exited with code {code} during job {job.key}")
            self.reader.feed(data)
        self.job = None
        return unwrap(reply, job)

    def alive(self) -> bool:
        return self.process.returncode is None and self.job is None


class TrioProcessPool:
    """Worker processes for one runtime; one proof at a time (callers queue on ``prove``)."""

    def __init__(self, workers: int | None = None) -> None:
        self.size = workers or default_workers()
        self._workers: list[_Worker] = []
        self._lock = trio.Lock()

    async def start(self) -> None:
        while len(self._workers) < self.size:
            process = await trio.lowlevel.open_process(
                list(WORKER_COMMAND), stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=worker_env()
            )
            self._workers.append(_Worker(process))

    async def prove(self, plan: ProofPlan, on_progress: AsyncProgress | None = None) -> Proof:
        proof: Proof = await self._guarded(lambda: self._run(plan, on_progress))
        return proof

    async def call(self, function: str, *args: Any) -> Any:
        """One job (``runtimes.zk.prover.JOBS[function](*args)``) on one worker."""

        async def one() -> Any:
            return await self._workers[0].call(Job(function, function, args, cost=0.0))

        return await self._guarded(one)

    async def _guarded(self, work: Callable[[], Awaitable[Any]]) -> Any:
        async with self._lock:
            await self.start()
            try:
                return await work()
            finally:
                for worker in self._workers:
                    if worker.job is not None:  # cancelled or failed mid-job: stop it now
                        worker.process.kill()
                # Reap the killed ones; shielded so a cancelled caller does not leave zombies.
                with trio.CancelScope(shield=True):
                    for worker in self._workers:
                        if worker.job is not None:
                            await worker.process.wait()
                self._workers = [w for w in self._workers if w.alive()]

    async def _run(self, plan: ProofPlan, on_progress: AsyncProgress | None) -> Proof:
        queue = plan.start()
        idle = list(self._workers)
        send, receive = trio.open_memory_channel[tuple[_Worker, Job, object]](math.inf)
        done_cost = 0.0

        async def serve(worker: _Worker, job: Job) -> None:
            result = await worker.call(job)
            send.send_nowait((worker, job, result))

        async with trio.open_nursery() as nursery:
            running = 0
            while not plan.done:
                while queue and idle:
                    nursery.start_soon(serve, idle.pop(), queue.pop(0))
                    running += 1
                if not running:
                    raise InternalError("proof plan stalled with no job running")
                worker, job, result = await receive.receive()
                running -= 1
                idle.append(worker)
                queue.extend(plan.complete(job, result))
                queue.sort(key=queue_order)
                done_cost += job.cost
                if on_progress is not None:
                    await on_progress(min(1.0, done_cost / plan.expected_cost), job)
        return plan.proof()

    async def aclose(self) -> None:
        workers, self._workers = self._workers, []
        with trio.CancelScope(shield=True):
            for worker in workers:
                if worker.process.stdin is not None:
                    await worker.process.stdin.aclose()  # EOF: an idle worker exits by itself
            with trio.move_on_after(CLOSE_GRACE_S):
                for worker in workers:
                    await worker.process.wait()
            for worker in workers:
                if worker.process.returncode is None:
                    worker.process.kill()
                    await worker.process.wait()
