"""Task history in the store: the current state of each task, and each change as an ordered event.

A state change and its event are written in one transaction, so ``hyperion-node tasks`` and the event log
never disagree. At start, tasks that a previous run left unfinished are marked failed ("the node stopped"):
their streams died with that process, and nothing will finish them.

Which changes a request waits for (:class:`HistoryWriter`). A task passes through queued, assigned and
running before its first token; writing each with an fsync on the request's path cost ~1.5 ms apiece on
the reference machine, three to four of them before the first token. Those intermediate states are now
queued in memory and written in order, in one transaction without an fsync, by a background flush; only
final states (completed, failed, cancelled) are waited for, with an fsync, and each also writes every
change queued before it. Why a crash or kill at any moment loses no receipt and corrupts no state:

- receipts are not task history: the ledger appends them durably before a task is marked completed, and
  a completed state is durable before the requester's client gets its final answer;
- the changes of one task reach the store in the order they were made (one queue, one writer at a time),
  so an older state never overwrites a newer one;
- an intermediate change lost to a kill (still in memory) or a power cut (committed without an fsync)
  leaves the task at an earlier state or not yet recorded; a task not in a final state is marked failed
  at the next start, as it was before, and one never recorded had no receipt, nor any client left;
- a commit without an fsync cannot tear the database: WAL mode rolls it back whole (``Store.transaction``).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from hyperion_node.clock import now_ms
from hyperion_node.store import Store
from hyperion_node.tasks.model import FINAL_STATES, Attempt, TaskRecord, TaskState
from hyperion_node.trio_types import TaskStatus

# How long the background flush lets intermediate changes gather before it writes them. In a 50-node demo a
# third of the store calls were these, most of them one change each; a task's final save, which is waited for,
# writes whatever is queued then, so a task of under this long costs one store call for all its states.
FLUSH_DELAY_S = 0.25
_FINAL_VALUES = tuple(sorted(state.value for state in FINAL_STATES))
_COLUMNS = "task_id, role, runtime, item, requester, worker, state, created_ms, updated_ms, error, attempts, result"



def _row(record: TaskRecord) -> tuple[Any, ...]:
    return (record.task_id, record.role, record.runtime, record.item, record.requester, record.worker,
            record.state.value, record.created_ms, record.updated_ms, record.error,
            json.dumps([a.to_json() for a in record.attempts]), json.dumps(record.result, sort_keys=True))


def _record(row: tuple[Any, ...]) -> TaskRecord:
    attempts = [Attempt(**a) for a in json.loads(row[10])]
    return TaskRecord(task_id=row[0], role=row[1], runtime=row[2], item=row[3], requester=row[4], worker=row[5],
                      state=TaskState(row[6]), created_ms=row[7], updated_ms=row[8], error=row[9],
                      attempts=attempts, result=json.loads(row[11]))


@dataclass(frozen=True)
class Change:
    """One state change as it was when made: the task's row and, maybe, its event (time, kind, data)."""

    row: tuple[Any, ...]
    event: tuple[float, str, str] | None
    durable: bool


def change(record: TaskRecord, *, event: bool = True, durable: bool = True) -> Change:
    """A snapshot of ``record`` now: later edits to the record do not alter what this change writes."""
    logged = None
    if event:
        data = {"task_id": record.task_id, "role": record.role, "runtime": record.runtime,
                "item": record.item, "worker": record.worker, "requester": record.requester}
        if record.error:
            data["error"] = record.error
        logged = (time.time(), f"task.{record.state.value}", json.dumps(data, sort_keys=True))
    return Change(_row(record), logged, durable)


# The history is trimmed once this many tasks have ended since the last trim (a DELETE each time would cost
# every task an index scan; once in a while keeps the tables within a few percent of their limits).
TRIM_EVERY = 256
# Events kept per task of the history: a task writes 3-5 (queued, assigned, running, its end), and the rest of
# the node (presence, verdicts, disputes) adds fewer than tasks do on a busy node.
EVENTS_PER_TASK = 20


class TaskHistory:
    """Synchronous store access; call through ``Store.run`` from trio.

    Bounded: a node that runs for months keeps the newest ``limit`` ended tasks (``tasks.history_limit``) and
    the newest ``EVENTS_PER_TASK`` x ``limit`` events; older ones are deleted as new ones end. Tasks still
    running are never deleted. Receipts are the ledger's, not the history's: nothing here touches them."""

    def __init__(self, store: Store, limit: int = 10000) -> None:
        self._store = store
        self.limit = limit
        self._ended_since_trim = TRIM_EVERY  # trim at the first write: a node upgraded with a long history

    def save(self, record: TaskRecord, *, event: bool = True) -> None:
        """Upsert the record and, with ``event``, append ``task.<state>`` in the same transaction (durably)."""
        self.write([change(record, event=event)])

    def write(self, changes: Sequence[Change]) -> None:
        """Apply ``changes`` in order in one transaction, with an fsync if any of them asks for one."""

        ended = sum(1 for c in changes if c.row[6] in _FINAL_VALUES)
        trim = self._ended_since_trim + ended >= TRIM_EVERY

        def work(conn: sqlite3.Connection) -> None:
            for c in changes:
                conn.execute(f"INSERT OR REPLACE INTO tasks ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", c.row)
                if c.event is not None:
                    conn.execute("INSERT INTO events (time, kind, data) VALUES (?, ?, ?)", c.event)
            if trim:
                self._trim(conn)

        self._store.transaction(work, durable=any(c.durable for c in changes))
        self._ended_since_trim = 0 if trim else self._ended_since_trim + ended

    def _trim(self, conn: sqlite3.Connection) -> None:
        finals = ", ".join("?" for _ in _FINAL_VALUES)
        conn.execute(f"DELETE FROM tasks WHERE state IN ({finals}) AND rowid IN (SELECT rowid FROM tasks"
                     f" WHERE state IN ({finals}) ORDER BY updated_ms DESC LIMIT -1 OFFSET ?)",
                     (*_FINAL_VALUES, *_FINAL_VALUES, self.limit))
        conn.execute("DELETE FROM events WHERE id <= (SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?)",
                     (EVENTS_PER_TASK * self.limit,))

    def get(self, task_id: str) -> list[TaskRecord]:
        rows = self._store.execute(f"SELECT {_COLUMNS} FROM tasks WHERE task_id = ? ORDER BY role", (task_id,))
        return [_record(r) for r in rows]

    def find(self, prefix: str) -> list[TaskRecord]:
        """Tasks whose ID starts with ``prefix`` (the CLI shows short IDs)."""
        pattern = prefix.replace("%", "").replace("_", "") + "%"
        rows = self._store.execute(f"SELECT {_COLUMNS} FROM tasks WHERE task_id LIKE ? ORDER BY created_ms DESC "
                                   "LIMIT 10", (pattern,))
        return [_record(r) for r in rows]

    def recent(self, *, limit: int = 50, role: str | None = None, state: str | None = None) -> list[TaskRecord]:
        sql, params = f"SELECT {_COLUMNS} FROM tasks", []
        where = []
        if role:
            where.append("role = ?")
            params.append(role)
        if state:
            where.append("state = ?")
            params.append(state)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_ms DESC, task_id LIMIT ?"
        params.append(str(limit))
        return [_record(r) for r in self._store.execute(sql, params)]

    def counts(self) -> dict[str, int]:
        return {f"{role}.{state}": int(n) for role, state, n in self._store.execute(
            "SELECT role, state, count(*) FROM tasks GROUP BY role, state")}

    def fail_unfinished(self, reason: str) -> int:
        """Mark every task not in a final state as failed; returns how many."""
        finals = tuple(s.value for s in FINAL_STATES)
        rows = self._store.execute(
            f"SELECT {_COLUMNS} FROM tasks WHERE state NOT IN ({','.join('?' * len(finals))})", finals)
        for row in rows:
            record = _record(row)
            record.state, record.error, record.updated_ms = TaskState.FAILED, reason, now_ms()
            self.save(record)
        return len(rows)


class HistoryWriter:
    """Task-state changes written in the order they are made; only final ones are waited for (module docstring).

    ``save_soon`` queues an intermediate change and returns at once; ``save`` queues a final one and returns
    when it, and everything queued before it, is on disk. ``run`` is the background flush that writes queued
    intermediate changes while a task runs; without it they wait for the next ``save``. The queue holds at
    most a few changes per task in progress (one per state and attempt), so it is bounded by the tasks the
    node runs, not by a rate.
    """

    def __init__(self, history: TaskHistory, store_run: Callable[..., Awaitable[Any]],
                 flush_delay_s: float = FLUSH_DELAY_S) -> None:
        self.history = history
        self._store_run = store_run
        self.flush_delay_s = flush_delay_s
        self._pending: list[Change] = []
        self._lock = trio.Lock()  # one flush at a time: each takes every change queued so far, in order
        self._wake_send, self._wake_receive = trio.open_memory_channel[None](1)

    def save_soon(self, record: TaskRecord, *, event: bool = True) -> None:
        self._pending.append(change(record, event=event, durable=False))
        try:
            self._wake_send.send_nowait(None)
        except trio.WouldBlock:
            pass  # a flush is already due; it will take this change too

    async def save(self, record: TaskRecord, *, event: bool = True) -> None:
        self._pending.append(change(record, event=event, durable=True))
        await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            batch, self._pending = self._pending, []
            if not batch:
                return  # an earlier flush took ours: it held the lock until its write was done
            try:
                await self._store_run(self.history.write, batch)
            except BaseException:
                self._pending[:0] = batch  # not written: the next flush tries again, in the same order
                raise

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            async for _ in self._wake_receive:
                # A moment for the changes that follow (the next state, other tasks', or the final save that
                # takes them all): one store call for them instead of one each.
                await trio.sleep(self.flush_delay_s)
                await self.flush()
        finally:
            with trio.CancelScope(shield=True):  # a node stopping writes what it has
                await self.flush()
