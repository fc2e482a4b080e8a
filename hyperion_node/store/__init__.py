"""Durable node state in SQLite (WAL) with versioned migrations."""

from hyperion_node.store.db import Event, Store

__all__ = ["Event", "Store"]
