"""Task history: intermediate states written in order off the request's path, final ones durably, and a
kill at any moment leaves every acknowledged final state and nothing torn."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import trio

from hyperion_node.store import Store
from hyperion_node.tasks.history import HistoryWriter, TaskHistory
from hyperion_node.tasks.model import TaskRecord, TaskState


def _record(task_id: str = "t1") -> TaskRecord:
    return TaskRecord(task_id=task_id, role="requester", runtime="inference", item="m", requester="me",
                      created_ms=1, updated_ms=1)


def _states(store: Store, task_id: str) -> list[str]:
    return [e.kind for e in store.events() if e.data.get("task_id") == task_id]


async def test_a_final_save_writes_the_queued_changes_before_it_in_order(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "node.db")
    history = TaskHistory(store)
    writer = HistoryWriter(history, store.run)  # no background flush: only save() writes
    record = _record()
    writer.save_soon(record)
    record.move(TaskState.ASSIGNED, 2)
    writer.save_soon(record)
    record.move(TaskState.RUNNING, 3)
    writer.save_soon(record)
    assert history.get("t1") == []  # nothing waited for the disk yet
    record.move(TaskState.COMPLETED, 4)
    await writer.save(record)
    assert _states(store, "t1") == ["task.queued", "task.assigned", "task.running", "task.completed"]
    assert history.get("t1")[0].state is TaskState.COMPLETED


async def test_the_background_flush_writes_intermediate_states_while_the_task_runs(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "node.db")
    history = TaskHistory(store)
    writer = HistoryWriter(history, store.run)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        record = _record()
        record.move(TaskState.RUNNING, 2)
        writer.save_soon(record)
        record.move(TaskState.COMPLETED, 3)  # edits after save_soon do not change what it writes
        with trio.fail_after(10):  # the flush runs in the store's thread: poll for its result
            while True:
                written = history.get("t1")
                if written:
                    break
                await trio.sleep(0.01)
        assert written[0].state is TaskState.RUNNING
        nursery.cancel_scope.cancel()


async def test_changes_made_within_the_flush_delay_share_one_store_call(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "node.db")
    history = TaskHistory(store)
    calls: list[int] = []

    async def store_run(fn: object, batch: list[object]) -> None:
        calls.append(len(batch))
        await store.run(fn, batch)

    writer = HistoryWriter(history, store_run, flush_delay_s=0.2)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        records = [_record(f"t{i}") for i in range(3)]
        for record in records:  # three tasks' first states, then each one's next, within the delay
            writer.save_soon(record)
        for record in records:
            record.move(TaskState.RUNNING, 2)
            writer.save_soon(record)
        with trio.fail_after(10):
            while not calls:  # noqa: ASYNC110
                await trio.sleep(0.01)
        assert calls == [6]
        records[1].result = {"progress": 0.5}
        writer.save_soon(records[1], event=False)
        records[0].move(TaskState.COMPLETED, 4)
        await writer.save(records[0])  # a final save does not wait for the delay, and takes what is queued
        assert calls == [6, 2]
        assert _states(store, "t0") == ["task.queued", "task.running", "task.completed"]
        assert history.get("t1")[0].result == {"progress": 0.5}
        nursery.cancel_scope.cancel()


async def test_a_stopping_writer_writes_what_it_holds(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "node.db")
    history = TaskHistory(store)
    writer = HistoryWriter(history, store.run)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        writer.save_soon(_record("t2"))
        nursery.cancel_scope.cancel()
    assert [r.state for r in history.get("t2")] == [TaskState.QUEUED]


def test_a_commit_without_fsync_leaves_the_connection_durable(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "node.db")
    store.transaction(lambda conn: conn.execute("INSERT INTO events (time, kind, data) VALUES (0, 'x', '{}')"),
                      durable=False)
    assert store.execute("PRAGMA synchronous")[0][0] == 2  # FULL, for the ledger's next append

    def broken(conn: object) -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        store.transaction(broken, durable=False)
    assert store.execute("PRAGMA synchronous")[0][0] == 2
    assert [e.kind for e in store.events()] == ["x"]


_WRITER = textwrap.dedent("""
    import sys, trio
    from hyperion_node.store import Store
    from hyperion_node.tasks.history import HistoryWriter, TaskHistory
    from hyperion_node.tasks.model import TaskRecord, TaskState

    async def main():
        store = Store.open(sys.argv[1])
        writer = HistoryWriter(TaskHistory(store), store.run)
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            for n in range(10_000):
                record = TaskRecord(task_id=f"t{n}", role="requester", runtime="inference", item="m",
                                    requester="me", created_ms=n, updated_ms=n)
                writer.save_soon(record)
                record.move(TaskState.RUNNING, n)
                writer.save_soon(record)
                await trio.sleep(0)
                record.move(TaskState.COMPLETED, n)
                await writer.save(record)
                print(record.task_id, flush=True)

    trio.run(main)
""")


@pytest.mark.parametrize("run_s", [0.05, 0.15, 0.3])
def test_sigkill_loses_no_acknowledged_final_state(tmp_path: Path, run_s: float) -> None:
    db = tmp_path / "node.db"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(db)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()  # one final state acknowledged: the writer is under way
    time.sleep(run_s)
    proc.send_signal(signal.SIGKILL)
    acknowledged = [first.strip(), *(line.strip() for line in proc.stdout)]
    proc.wait()
    store = Store.open(db)  # as the restarted node does
    assert store.execute("PRAGMA integrity_check")[0][0] == "ok"
    history = TaskHistory(store)
    for task_id in acknowledged:
        assert [r.state for r in history.get(task_id)] == [TaskState.COMPLETED], task_id
    history.fail_unfinished("the node stopped before the task finished")
    states = {r.state for r in history.recent(limit=100_000)}
    assert states <= {TaskState.COMPLETED, TaskState.FAILED}


def test_a_long_running_node_keeps_the_newest_tasks_and_events_only(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``tasks.history_limit``: ended tasks beyond the newest ``limit`` are deleted, and events beyond
    ``EVENTS_PER_TASK`` x ``limit``; a task still running is kept however old."""
    monkeypatch.setattr("hyperion_node.tasks.history.TRIM_EVERY", 4)
    monkeypatch.setattr("hyperion_node.tasks.history.EVENTS_PER_TASK", 2)
    store = Store.open(tmp_path / "node.db")
    history = TaskHistory(store, limit=5)
    running = _record("still-running")
    for state in (TaskState.ASSIGNED, TaskState.RUNNING):
        running.move(state, 1)
    history.save(running)
    for n in range(40):
        record = _record(f"t{n:02d}")
        for state in (TaskState.ASSIGNED, TaskState.RUNNING, TaskState.COMPLETED):
            record.move(state, 10 + n)
        history.save(record)
    ended = [r.task_id for r in history.recent(limit=100) if r.state is TaskState.COMPLETED]
    assert len(ended) <= 5 + 4  # trimmed every 4 ended tasks
    assert {"t39", "t38", "t37", "t36", "t35"} <= set(ended)
    assert "t00" not in ended
    assert history.get("still-running")[0].state is TaskState.RUNNING
    events = store.events(limit=1000)
    assert 0 < len(events) <= 2 * 5 + 4
    assert events[-1].data["task_id"] == "t39"
