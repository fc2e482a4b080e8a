"""Task history in the store: the current state of each task, and each change as an ordered event.

A state change and its event are written in one transaction, so ``hyperion-node tasks`` and the event log
never disagree. At start, tasks that a previous run left unfinished are marked failed ("the node stopped"):
their streams died with that process, and nothing will finish them.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from hyperion_node.store import Store
from hyperion_node.tasks.model import FINAL_STATES, Attempt, TaskRecord, TaskState

_COLUMNS = "task_id, role, runtime, item, requester, worker, state, created_ms, updated_ms, error, attempts, result"


def now_ms() -> int:
    return int(time.time() * 1000)


def _row(record: TaskRecord) -> tuple[Any, ...]:
    return (record.task_id, record.role, record.runtime, record.item, record.requester, record.worker,
            record.state.value, record.created_ms, record.updated_ms, record.error,
            json.dumps([a.to_json() for a in record.attempts]), json.dumps(record.result, sort_keys=True))


def _record(row: tuple[Any, ...]) -> TaskRecord:
    attempts = [Attempt(**a) for a in json.loads(row[10])]
    return TaskRecord(task_id=row[0], role=row[1], runtime=row[2], item=row[3], requester=row[4], worker=row[5],
                      state=TaskState(row[6]), created_ms=row[7], updated_ms=row[8], error=row[9],
                      attempts=attempts, result=json.loads(row[11]))


class TaskHistory:
    """Synchronous store access; call through ``Store.run`` from trio."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def save(self, record: TaskRecord, *, event: bool = True) -> None:
        """Upsert the record and, with ``event``, append ``task.<state>`` in the same transaction."""

        def work(conn: sqlite3.Connection) -> None:
            conn.execute(f"INSERT OR REPLACE INTO tasks ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                         _row(record))
            if event:
                data = {"task_id": record.task_id, "role": record.role, "runtime": record.runtime,
                        "item": record.item, "worker": record.worker, "requester": record.requester}
                if record.error:
                    data["error"] = record.error
                conn.execute("INSERT INTO events (time, kind, data) VALUES (?, ?, ?)",
                             (time.time(), f"task.{record.state.value}", json.dumps(data, sort_keys=True)))

        self._store.transaction(work)

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
