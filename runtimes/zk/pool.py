"""Worker processes that run a ``ProofPlan``'s jobs: a blocking pool and a trio one.

Proving is pure-Python CPU work, so it runs in processes, not threads (the GIL would serialise threads).
Workers are plain subprocesses (``python -m runtimes.zk.worker``) talking length-prefixed pickle frames
over their stdin/stdout, rather than ``multiprocessing`` children: a spawned ``multiprocessing`` child
re-imports the parent's ``__main__`` (the whole daemon), and a forked one inherits a process with threads.
A worker can also be killed at any moment without leaving a pool in a broken state, which is how the trio
pool honours cancellation: the workers busy with a cancelled proof are killed, and replaced on next use.

Frames are trusted: a worker is a child of this process, never a peer.
"""

from __future__ import annotations

import os
import pickle
import selectors
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hyperion_node.errors import InternalError
from runtimes.zk.exceptions import HyperionError, WorkerCrashed
from runtimes.zk.prover import Job, Proof, ProofPlan, queue_order

FRAME_HEADER = struct.Struct("<Q")
WORKER_COMMAND = (sys.executable, "-m", "runtimes.zk.worker")
Progress = Callable[[float, Job], None]  # (fraction of the expected work done, the job that just finished)


def encode_frame(value: Any) -> bytes:
    body = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME_HEADER.pack(len(body)) + body


@dataclass
class FrameReader:
    """Sans-IO: feed bytes, take whole frames out."""

    buffer: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def next(self) -> Any | None:
        if len(self.buffer) < FRAME_HEADER.size:
            return None
        (size,) = FRAME_HEADER.unpack_from(self.buffer)
        end = FRAME_HEADER.size + size
        if len(self.buffer) < end:
            return None
        body = bytes(self.buffer[FRAME_HEADER.size : end])
        del self.buffer[:end]
        return pickle.loads(body)


def unwrap(reply: tuple[str, Any], job: Job) -> Any:
    """A worker's reply as a value, or the error it reported raised here."""
    status, value = reply
    if status == "ok":
        return value
    if status == "error" and isinstance(value, HyperionError):
        raise value
    raise InternalError(f"proving job {job.key} failed in a worker:\n{value}")


def default_workers() -> int:
    """One worker per CPU this process may use (a container's cpuset, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    # Workers must import this very checkout of runtimes/ and hyperion_node/, installed or not.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


class _SyncWorker:
    def __init__(self) -> None:
        self.process = subprocess.Popen(WORKER_COMMAND, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=worker_env())
        self.reader = FrameReader()
        self.job: Job | None = None

    def send(self, job: Job) -> None:
        assert self.process.stdin is not None
        self.job = job
        self.process.stdin.write(encode_frame((job.function, job.args)))
        self.process.stdin.flush()

    def receive(self) -> Any | None:
        """Read what is available; the reply once complete, else None. Raises if the worker died."""
        assert self.process.stdout is not None
        data = os.read(self.process.stdout.fileno(), 1 << 20)
        if not data:
            code = self.process.wait()
            raise WorkerCrashed(f"a proving worker exited with code {code} during job {self.job and self.job.key}")
        self.reader.feed(data)
        return self.reader.next()

    def close(self) -> None:
        if self.process.poll() is None:
            if self.job is None and self.process.stdin is not None:
                self.process.stdin.close()  # EOF: an idle worker exits by itself
                try:
                    self.process.wait(timeout=2)
                    return
                except subprocess.TimeoutExpired:
                    pass
            self.process.kill()
            self.process.wait()


class ProcessPool:
    """Blocking pool for scripts and the CLI: ``with ProcessPool(2) as pool: proof = pool.prove(plan)``."""

    def __init__(self, workers: int | None = None) -> None:
        self.size = workers or default_workers()
        self._workers: list[_SyncWorker] = []

    def __enter__(self) -> ProcessPool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        while len(self._workers) < self.size:
            self._workers.append(_SyncWorker())

    def prove(self, plan: ProofPlan, on_progress: Progress | None = None) -> Proof:
        self.start()
        queue = plan.start()
        idle = list(self._workers)
        busy: dict[int, _SyncWorker] = {}
        done_cost = 0.0
        with selectors.DefaultSelector() as selector:
            try:
                while not plan.done:
                    while queue and idle:
                        worker = idle.pop()
                        worker.send(queue.pop(0))
                        assert worker.process.stdout is not None
                        fd = worker.process.stdout.fileno()
                        busy[fd] = worker
                        selector.register(fd, selectors.EVENT_READ)
                    if not busy:
                        raise InternalError("proof plan stalled with no job running")
                    for key, _ in selector.select():
                        worker = busy[int(key.fd)]
                        reply = worker.receive()
                        if reply is None:
                            continue
                        job, worker.job = worker.job, None
                        assert job is not None
                        selector.unregister(key.fd)
                        del busy[int(key.fd)]
                        idle.append(worker)
                        queue.extend(plan.complete(job, unwrap(reply, job)))
                        queue.sort(key=queue_order)
                        done_cost += job.cost
                        if on_progress is not None:
                            on_progress(min(1.0, done_cost / plan.expected_cost), job)
            finally:
                # Workers still computing a job nobody will read are killed, and replaced on next use.
                for worker in busy.values():
                    worker.close()
                self._workers = [w for w in self._workers if w.process.poll() is None and w.job is None]
        return plan.proof()

    def worker_pids(self) -> tuple[int, ...]:
        """The running workers' process ids (for benchmarks that count the workers' CPU time)."""
        return tuple(w.process.pid for w in self._workers if w.process.poll() is None)

    def close(self) -> None:
        for worker in self._workers:
            worker.close()
        self._workers = []
