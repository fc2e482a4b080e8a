"""SQLite state: WAL, migrations, ordered events, benchmark cache."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
import trio

from hyperion_node.errors import EnvironmentProblem
from hyperion_node.store import Store
from hyperion_node.store.migrations import MIGRATIONS


def test_open_applies_migrations_in_wal_mode(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "node.db")
    assert store.schema_version() == len(MIGRATIONS)
    assert store.execute("PRAGMA journal_mode")[0][0] == "wal"
    tables = {r[0] for r in store.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"meta", "events", "benchmarks", "peers"} <= tables
    store.close()
    # Reopening applies nothing twice.
    again = Store.open(tmp_path / "node.db")
    assert again.schema_version() == len(MIGRATIONS)
    again.close()


def test_database_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "node.db")
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(EnvironmentProblem, match="upgrade hyperion-node"):
        Store.open(tmp_path / "node.db")


def test_events_are_ordered_and_survive_reopen(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "node.db")
    ids = [store.append_event("task.state", {"n": n}) for n in range(5)]
    assert ids == sorted(ids)
    store.close()
    store = Store.open(tmp_path / "node.db")
    events = store.events(since_id=ids[1])
    assert [e.data["n"] for e in events] == [2, 3, 4]
    store.close()


def test_transaction_is_all_or_nothing(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "node.db")

    def half_done(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO meta (key, value) VALUES ('a', '1')")
        raise ValueError("crash between two writes")

    with pytest.raises(ValueError, match="crash"):
        store.transaction(half_done)
    assert store.execute("SELECT count(*) FROM meta")[0][0] == 0


def test_benchmark_cache_is_keyed_by_hardware_runtime_and_version(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "node.db")
    store.save_benchmark("hw1", "inference", "1.0", {"throughput": 30.0})
    assert store.cached_benchmark("hw1", "inference", "1.0") == {"throughput": 30.0}
    assert store.cached_benchmark("hw2", "inference", "1.0") is None
    assert store.cached_benchmark("hw1", "inference", "1.1") is None


async def test_async_calls_run_off_the_event_loop(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "node.db")
    event_id = await store.run(store.append_event, "node.started", {"x": 1})
    assert (await store.run(store.events))[0].id == event_id


async def test_inline_store_runs_calls_on_the_loop_in_order_and_still_checkpoints(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "node.db")
    store.inline = True  # the demo's stores (Store.inline)
    threads: list[str] = []

    def append(i: int) -> int:
        threads.append(threading.current_thread().name)
        return store.append_event("demo.step", {"i": i})

    ids = [await store.run(append, i) for i in range(3)]
    assert [e.data["i"] for e in await store.run(store.events)] == [0, 1, 2]
    assert ids == sorted(ids)
    assert set(threads) == {threading.current_thread().name}
    with pytest.raises(sqlite3.OperationalError):
        await store.run(store.execute, "SELECT * FROM no_such_table")
    # A cancelled caller runs nothing, and a call is still a checkpoint for its nursery.
    with trio.CancelScope() as scope:
        scope.cancel()
        await store.run(append, 99)
    assert len(threads) == 3
    with trio.move_on_after(0):
        while True:
            await store.run(store.events)
    assert store._thread is None
