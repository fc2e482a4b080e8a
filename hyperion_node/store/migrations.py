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
]
