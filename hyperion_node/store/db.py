"""The node's durable state: one SQLite database in WAL mode, schema versioned by migrations.

SQLite calls block, so the async API runs each one on the store's own thread (``StoreThread``): a single
connection, used by one thread at a time, in the order calls arrive. ``synchronous=FULL``
because a receipt acknowledged to a peer must survive a power cut, not only a process crash; only
writes that may be lost to one (a task's intermediate states, ``tasks/history.py``) commit without the
fsync, through ``transaction(durable=False)``.
"""

from __future__ import annotations

import contextvars
import functools
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import outcome
import trio
from outcome import Outcome

from hyperion_node.errors import EnvironmentProblem
from hyperion_node.store.migrations import MIGRATIONS

T = TypeVar("T")


@dataclass(frozen=True)
class Event:
    id: int
    time: float
    kind: str
    data: dict[str, Any]


class StoreThread:
    """One thread that runs a store's calls in order, handing each result back to the waiting trio task.

    ``trio.to_thread.run_sync`` behind a CapacityLimiter of one did the same through trio's thread cache, the
    limiter and a fresh thread hand-off per call: ~80 us of the event loop's time a call, ~10% of a 50-node
    demo's CPU (py-spy) at some 2,000 store calls a second. Here a call is a queue put, and the result comes
    back with one ``run_sync_soon``."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Callable[[Outcome[Any]], None]] | None] = (
            queue.SimpleQueue())
        self._thread = threading.Thread(target=self._work, name=f"store {name}", daemon=True)
        self._thread.start()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        task = trio.lowlevel.current_task()
        token = trio.lowlevel.current_trio_token()
        context = contextvars.copy_context()

        def deliver(result: Outcome[Any]) -> None:
            try:
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)
            except trio.RunFinishedError:
                pass  # the loop is gone; nobody waits for this result any more

        self._jobs.put((functools.partial(context.run, fn, *args), deliver))
        result: T = await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)
        return result

    def stop(self) -> None:
        """Finish the calls already queued, then end the thread."""
        self._jobs.put(None)
        self._thread.join(timeout=10)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            call, deliver = job
            deliver(outcome.capture(call))


class Store:
    """Open with :meth:`open` (sync, for the CLI's offline commands) or use inside the daemon."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._path = path
        self._lock = threading.Lock()  # guards the connection when the sync API is used from threads
        self._thread: StoreThread | None = None  # started by the first ``run``
        # Run calls on the caller's thread instead (``run``). For the demo only: its virtual nodes share one
        # process and one GIL, and a store thread beside a busy event loop pays a contended GIL hand-over
        # on every SQLite call (measured: one 8-statement transaction 31 us of thread CPU alone, ~1,090 us
        # beside a thread running Python), so its stores, on a RAM-backed directory where a commit does
        # not wait for a disk, run on the loop. A real node keeps its thread: its commits wait for fsync.
        self.inline = False

    @classmethod
    def open(cls, path: Path) -> Store:
        try:
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as exc:
            raise EnvironmentProblem(
                f"cannot open the node database {path}: {exc}",
                hint="check the disk and the data dir's permissions; `hyperion-node doctor` lists the checks",
            ) from exc
        store = cls(conn, path)
        store.migrate()
        return store

    @property
    def path(self) -> Path:
        return self._path

    def schema_version(self) -> int:
        with self._lock:
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> int:
        """Apply every migration newer than the database, each in its own transaction."""
        with self._lock:
            current = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
            if current > len(MIGRATIONS):
                raise EnvironmentProblem(
                    f"the node database {self._path} has schema {current}, newer than this "
                    f"hyperion-node knows ({len(MIGRATIONS)})",
                    hint="upgrade hyperion-node, or point --data-dir elsewhere",
                )
            for version, statements in enumerate(MIGRATIONS[current:], start=current + 1):
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in statements:
                        self._conn.execute(statement)
                    # PRAGMA takes no parameters; version is an int from our own list.
                    self._conn.execute(f"PRAGMA user_version = {version}")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            return len(MIGRATIONS)

    def close(self) -> None:
        if self._thread is not None:
            self._thread.stop()
            self._thread = None
        with self._lock:
            self._conn.close()

    # -- sync primitives -------------------------------------------------------------------------------

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def transaction(self, work: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T:
        """Run ``work`` in one IMMEDIATE transaction: all of it lands, or none.

        ``durable=False`` commits without an fsync (``synchronous=NORMAL`` for this transaction only), for
        writes that may be lost to a power cut, never torn: in WAL mode such a commit survives a killed
        process (it is in the OS's cache) and can only roll back whole after a power loss, and the next
        durable commit's fsync of the WAL covers it too (https://sqlite.org/pragma.html#pragma_synchronous,
        https://sqlite.org/wal.html). Receipts never take this path.
        """
        with self._lock:
            if not durable:
                self._conn.execute("PRAGMA synchronous=NORMAL")  # not allowed inside a transaction
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    result = work(self._conn)
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
                return result
            finally:
                if not durable:
                    self._conn.execute("PRAGMA synchronous=FULL")

    # -- async wrappers ----------------------------------------------------------------------------------

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the store's thread (on the caller's, for an ``inline`` store), after every call
        made before it; not cancellable once queued (as ``trio.to_thread.run_sync``): a write that has begun
        finishes, and its caller learns how."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.inline:
            result = fn(*args)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return result
        if self._thread is None:
            self._thread = StoreThread(Path(self._path).name)
        return await self._thread.run(fn, *args)

    # -- events ----------------------------------------------------------------------------------------

    def append_event(self, kind: str, data: dict[str, Any]) -> int:
        with self._lock:
            cur = self._conn.execute(
                "INSERT INTO events (time, kind, data) VALUES (?, ?, ?)",
                (time.time(), kind, json.dumps(data, sort_keys=True)),
            )
            return int(cur.lastrowid or 0)

    def events(self, *, since_id: int = 0, limit: int = 1000, since_time: float = 0.0) -> list[Event]:
        rows = self.execute(
            "SELECT id, time, kind, data FROM events WHERE id > ? AND time >= ? ORDER BY id LIMIT ?",
            (since_id, since_time, limit),
        )
        return [Event(id=r[0], time=r[1], kind=r[2], data=json.loads(r[3])) for r in rows]

    # -- benchmark cache ---------------------------------------------------------------------------------

    def cached_benchmark(self, fingerprint: str, runtime: str, version: str) -> dict[str, Any] | None:
        rows = self.execute(
            "SELECT result FROM benchmarks WHERE fingerprint = ? AND runtime = ? AND version = ?",
            (fingerprint, runtime, version),
        )
        return json.loads(rows[0][0]) if rows else None

    def save_benchmark(self, fingerprint: str, runtime: str, version: str, result: dict[str, Any]) -> None:
        self.execute(
            "INSERT OR REPLACE INTO benchmarks (fingerprint, runtime, version, result, measured_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (fingerprint, runtime, version, json.dumps(result, sort_keys=True), time.time()),
        )

    # -- peers (the peer cache: redialled at start, so a node rejoins without its bootstrap peers) --------

    def remember_peer(self, peer_id: str, addrs: list[str], *, state: str, score: float, keep: int) -> None:
        """Upsert a peer seen alive with its addresses; keep only the ``keep`` most recently seen."""

        def work(conn: sqlite3.Connection) -> None:
            now = time.time()
            conn.execute(
                "INSERT INTO peers (peer_id, addrs, first_seen, last_seen, state, score) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (peer_id) DO UPDATE SET addrs = excluded.addrs, last_seen = excluded.last_seen,"
                " state = excluded.state, score = excluded.score",
                (peer_id, json.dumps(addrs), now, now, state, score),
            )
            conn.execute(
                "DELETE FROM peers WHERE peer_id NOT IN (SELECT peer_id FROM peers ORDER BY last_seen DESC LIMIT ?)",
                (keep,),
            )

        self.transaction(work)


    def known_peers(self) -> list[dict[str, Any]]:
        rows = self.execute(
            "SELECT peer_id, addrs, first_seen, last_seen, state, score FROM peers ORDER BY last_seen DESC"
        )
        return [
            {"peer_id": r[0], "addrs": json.loads(r[1]), "first_seen": r[2], "last_seen": r[3],
             "state": r[4], "score": r[5]}
            for r in rows
        ]
