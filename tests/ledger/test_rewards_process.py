"""A real `hyperion-node start` reports rewards from its own ledger, written to while it runs, and the offline
ledger commands read the same database next to the running daemon."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from hyperion_node.datadir import DataDir
from hyperion_node.identity import load_identity
from hyperion_node.ledger.chain import Ledger
from hyperion_node.ledger.money import format_credits
from hyperion_node.ledger.receipt import countersign
from hyperion_node.store import Store
from hyperion_node.testing.process import NodeProcess, hyperion_executable
from hyperion_node.testing.receipts import ReceiptFactory, new_identity

pytestmark = pytest.mark.process


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([hyperion_executable(), *args], capture_output=True, text=True, timeout=60)


def test_rewards_come_from_the_ledger_of_the_running_node(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    node = NodeProcess(data_dir, sets=["hardware.benchmark_on_start=false", "ledger.unsettled_warning_minutes=0.0001"])
    node.start()
    try:
        fresh = json.loads(cli("rewards", "--json", "--data-dir", str(data_dir)).stdout)
        assert (fresh["earned"], fresh["receipts"], fresh["warnings"]) == (0, 0, [])

        # The orchestrator does not exist yet: record work as it will, through the ledger on the node's store.
        me = load_identity(DataDir(data_dir), create=False)
        factory = ReceiptFactory(worker=me, requester=new_identity())
        ledger = Ledger(Store.open(DataDir(data_dir).db_path), str(me.peer_id))
        settled = countersign(factory.signed(), factory.requester)
        pending = factory.signed(tokens_out=50)
        ledger.append_batch([settled, pending])
        ledger.store.close()

        data = json.loads(cli("rewards", "--json", "--data-dir", str(data_dir)).stdout)
        assert data["exact"]["earned"] == format_credits(settled.receipt.total)
        assert data["exact"]["pending"] == format_credits(pending.receipt.total)
        assert data["runtimes"]["inference"]["tasks"] == 2
        assert [w["kind"] for w in data["warnings"]] == ["unsettled"]

        table = cli("rewards", "--data-dir", str(data_dir))
        assert table.returncode == 0, table.stderr
        assert f"earned    {format_credits(settled.receipt.total)} credits" in table.stdout
        assert "inference" in table.stdout
        assert "warning: 1 receipt worth" in table.stdout

        verified = cli("ledger", "verify", "--data-dir", str(data_dir))
        assert verified.returncode == 0, verified.stderr
        assert verified.stdout.startswith("ok: 2 entries, 2 receipts, 0 epochs")
    finally:
        assert node.stop() == 0
