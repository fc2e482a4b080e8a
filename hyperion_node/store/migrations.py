"""Schema migrations, applied in order at start. Never edit a shipped migration: append a new one.

``PRAGMA user_version`` holds how many of these a database has applied.
"""

from __future__ import annotations

MIGRATIONS: list[list[str]] = [
    # 1: the foundation: node metadata, ordered events, benchmark cache, peers seen.
    [
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            time REAL NOT NULL,
            kind TEXT NOT NULL,
            data TEXT NOT NULL
        )""",
        "CREATE INDEX events_kind ON events (kind, id)",
        """CREATE TABLE benchmarks (
            fingerprint TEXT NOT NULL,
            runtime TEXT NOT NULL,
            version TEXT NOT NULL,
            result TEXT NOT NULL,
            measured_at REAL NOT NULL,
            PRIMARY KEY (fingerprint, runtime, version)
        )""",
        """CREATE TABLE peers (
            peer_id TEXT PRIMARY KEY,
            addrs TEXT NOT NULL DEFAULT '[]',
            first_seen REAL NOT NULL,
            last_seen REAL NOT NULL,
            state TEXT NOT NULL DEFAULT 'alive',
            score REAL NOT NULL DEFAULT 0
        )""",
    ],
    # 2: the ledger (hyperion_node/ledger/chain.py): an append-only hash chain of receipts, status changes and
    # epochs; the receipts' current status and the epochs as an index derived from it.
    [
        """CREATE TABLE ledger_entries (
            position INTEGER PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('receipt', 'settle', 'dispute', 'epoch')),
            receipt_id BLOB,
            data BLOB NOT NULL,
            at_ms INTEGER NOT NULL,
            prev_hash BLOB NOT NULL,
            entry_hash BLOB NOT NULL
        )""",
        "CREATE UNIQUE INDEX ledger_entries_one_receipt ON ledger_entries (receipt_id) WHERE kind = 'receipt'",
        "CREATE INDEX ledger_entries_by_receipt ON ledger_entries (receipt_id, kind)",
        """CREATE TRIGGER ledger_entries_no_update BEFORE UPDATE ON ledger_entries
           BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END""",
        """CREATE TRIGGER ledger_entries_no_delete BEFORE DELETE ON ledger_entries
           BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END""",
        """CREATE TABLE ledger_receipts (
            receipt_id BLOB PRIMARY KEY,
            position INTEGER NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('pending', 'settled', 'disputed')),
            status_position INTEGER NOT NULL,
            role TEXT NOT NULL,
            worker TEXT NOT NULL,
            requester TEXT NOT NULL,
            runtime TEXT NOT NULL,
            unit TEXT NOT NULL,
            units INTEGER NOT NULL,
            total TEXT NOT NULL,
            finished_at_ms INTEGER NOT NULL,
            recorded_at_ms INTEGER NOT NULL,
            epoch INTEGER
        )""",
        "CREATE INDEX ledger_receipts_position ON ledger_receipts (position)",
        """CREATE TABLE ledger_epochs (
            number INTEGER PRIMARY KEY,
            position INTEGER NOT NULL,
            first_position INTEGER NOT NULL,
            last_position INTEGER NOT NULL,
            count INTEGER NOT NULL,
            root BLOB NOT NULL,
            closed_at_ms INTEGER NOT NULL
        )""",
    ],
    # 3: task history (hyperion_node/tasks/history.py): the current state of every task this node asked for or
    # ran, one row per (task, role); every state change is also an ordered event ("task.<state>").
    [
        """CREATE TABLE tasks (
            task_id TEXT NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('requester', 'worker')),
            runtime TEXT NOT NULL,
            item TEXT NOT NULL,
            requester TEXT NOT NULL,
            worker TEXT,
            state TEXT NOT NULL,
            created_ms INTEGER NOT NULL,
            updated_ms INTEGER NOT NULL,
            error TEXT NOT NULL DEFAULT '',
            attempts TEXT NOT NULL DEFAULT '[]',
            result TEXT NOT NULL DEFAULT '{}',
            PRIMARY KEY (task_id, role)
        )""",
        "CREATE INDEX tasks_by_time ON tasks (created_ms)",
    ],
    # 4: disputes of this node's own receipts that are not confirmed (hyperion_node/verify/cases.py): a claim
    # others made, kept beside the hash chain rather than in it, since the chain records only what this node
    # holds true. A confirmed dispute is a chain entry as before, and removes its row here.
    [
        """CREATE TABLE ledger_contests (
            receipt_id BLOB PRIMARY KEY,
            case_data BLOB NOT NULL,
            verifiers TEXT NOT NULL,
            at_ms INTEGER NOT NULL
        )""",
    ],
]
