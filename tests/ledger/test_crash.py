"""Crash safety: a real process appending receipts is killed with SIGKILL at random moments, many times.

After every kill the database is opened afresh (as a restarted node would) and must hold a chain that
verifies end to end, an index that agrees with it, and every receipt (and settlement) the process reported
as committed before it died.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hyperion_node.ledger.chain import Ledger
from hyperion_node.store import Store

KILLS = 20
LINE_TIMEOUT_S = 30.0  # a fork or a kill answers in milliseconds; this only bounds a broken run
MAX_RUN_S = 0.25  # each writer lives a random time up to this before its SIGKILL


class Writer:
    """The fork server of hyperion_node.testing.ledger_writer and the lines it prints."""

    def __init__(self, db: Path, stderr: Path) -> None:
        self._stderr = stderr.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "hyperion_node.testing.ledger_writer", str(db)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
        self.lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.acked: set[str] = set()
        self.settled: set[str] = set()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def until(self, prefix: str, deadline: float | None = None) -> list[str] | None:
        """Collect acks until a line starting with ``prefix``; None if ``deadline`` (monotonic) passes first."""
        while True:
            timeout = LINE_TIMEOUT_S if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                line = self.lines.get(timeout=timeout).decode()
            except queue.Empty:
                if deadline is None:
                    raise AssertionError(f"the writer said nothing for {LINE_TIMEOUT_S} s") from None
                return None
            assert line.endswith("\n"), f"torn line {line!r}"
            word, *rest = line.split()
            if word == "ack":
                self.acked.add(rest[0])
            elif word == "settled":
                self.settled.add(rest[0])
            if word == prefix:
                return rest

    def command(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=LINE_TIMEOUT_S)
        self._stderr.close()


@pytest.mark.process
def test_sigkill_at_random_moments_loses_nothing_acknowledged(tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    db = tmp_path / "node.db"
    writer = Writer(db, tmp_path / "writer.stderr")
    killed_while_writing = 0
    try:
        [owner] = writer.until("owner") or []
        for kill in range(KILLS):
            before = len(writer.acked)
            writer.command("fork\n")
            [pid] = writer.until("child") or []
            # Let it run a random while, then kill it wherever it is: signing, inside a transaction, in the
            # middle of a commit's fsync, or still opening the database.
            writer.until("never", deadline=time.monotonic() + rng.uniform(0.0, MAX_RUN_S))
            os.kill(int(pid), signal.SIGKILL)
            exit_pid, code = writer.until("exit") or []
            assert (exit_pid, code) == (pid, str(int(signal.SIGKILL))), (
                f"writer {pid} ended with {code} instead of being killed (seed {seed}):\n"
                + (tmp_path / "writer.stderr").read_text())
            killed_while_writing += len(writer.acked) > before

            store = Store.open(db)  # what a restarted node does
            try:
                report = Ledger(store, owner).verify()
                assert report.index_consistent, f"kill {kill} (seed {seed})"
                stored = {bytes(r[0]).hex(): r[1] for r in store.execute(
                    "SELECT receipt_id, status FROM ledger_receipts")}
            finally:
                store.close()
            missing = writer.acked - stored.keys()
            assert not missing, f"kill {kill} (seed {seed}) lost acknowledged receipts {sorted(missing)[:3]}"
            assert all(stored[rid] == "settled" for rid in writer.settled), f"kill {kill} (seed {seed})"
            assert report.receipts == len(stored) >= len(writer.acked)
    finally:
        writer.close()
    # The kills must have landed while receipts were being written, not only before the first one.
    assert killed_while_writing >= KILLS // 2, f"only {killed_while_writing} kills hit a writing process"
    assert report.epochs >= 1
    print(f"seed {seed}: {report.receipts} receipts, {report.entries} entries, {len(writer.acked)} acked")
