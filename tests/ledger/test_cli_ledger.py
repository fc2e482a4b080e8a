"""`hyperion-node receipts ...` and `hyperion-node ledger verify` through typer's CliRunner, on a real data dir."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hyperion_node.cli.app import app
from hyperion_node.datadir import DataDir
from hyperion_node.identity import load_identity
from hyperion_node.ledger.chain import Ledger
from hyperion_node.ledger.receipt import SignedReceipt, countersign
from hyperion_node.testing.receipts import ReceiptFactory, new_identity, open_ledger


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("HYPERION_DATA_DIR", "HYPERION_CONFIG", "XDG_DATA_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return CliRunner()


@pytest.fixture
def node(tmp_path: Path) -> tuple[DataDir, Ledger, ReceiptFactory, list[SignedReceipt]]:
    """A data dir as a node leaves it: its key, and a ledger with two closed epochs of 4 and 2 open receipts."""
    dd = DataDir(tmp_path / "node")
    dd.ensure()
    me = load_identity(dd, create=True)
    factory = ReceiptFactory(worker=me, requester=new_identity())
    ledger = open_ledger(dd.db_path, me, every_receipts=4)
    receipts = [factory.signed() for _ in range(10)]
    ledger.append_batch(receipts)
    ledger.settle(countersign(receipts[0], factory.requester))
    return dd, ledger, factory, receipts


def one_line_error(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    assert lines[0].startswith("hyperion-node: ")
    return lines[0]


def flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_receipts_verify_a_good_and_a_tampered_receipt(runner: CliRunner, tmp_path: Path,
                                                      factory: ReceiptFactory) -> None:
    settled = countersign(factory.signed(), factory.requester)
    path = tmp_path / "r.cbor"
    path.write_bytes(settled.encode())
    result = runner.invoke(app, ["receipts", "verify", str(path)])
    assert result.exit_code == 0, result.output
    assert f"ok: receipt {settled.id.hex()} (settled)" in result.output
    assert "212 token" in result.output
    assert "0.000424 credits" in result.output
    data = json.loads(runner.invoke(app, ["receipts", "verify", str(path), "--json"]).output)
    assert (data["kind"], data["id"], data["total"]) == ("receipt", settled.id.hex(), settled.receipt.total)

    flip(path, len(settled.body) // 2)
    result = runner.invoke(app, ["receipts", "verify", str(path)])
    assert result.exit_code == 1
    assert str(path) in one_line_error(result.output)


def test_receipts_verify_an_exported_epoch_and_its_tampered_copy(
    runner: CliRunner, tmp_path: Path, node: tuple[DataDir, Ledger, ReceiptFactory, list[SignedReceipt]]
) -> None:
    dd, ledger, _, _ = node
    out = tmp_path / "e1.cbor"
    result = runner.invoke(app, ["receipts", "export-epoch", "1", "--data-dir", str(dd.root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "4 receipts" in result.output
    result = runner.invoke(app, ["receipts", "verify", str(out)])
    assert result.exit_code == 0, result.output
    assert f"ok: epoch 1 of {ledger.owner}: 4 receipts" in result.output
    flip(out, len(out.read_bytes()) - 40)  # inside the last receipt
    result = runner.invoke(app, ["receipts", "verify", str(out)])
    assert result.exit_code == 1
    one_line_error(result.output)
    # Default file name in the working directory.
    assert runner.invoke(app, ["receipts", "export-epoch", "2", "--data-dir", str(dd.root)]).exit_code == 0
    assert (tmp_path / "epoch-2.cbor").exists()
    result = runner.invoke(app, ["receipts", "export-epoch", "9", "--data-dir", str(dd.root)])
    assert result.exit_code == 2
    assert "no closed epoch 9" in one_line_error(result.output)


def test_receipts_prove_writes_a_proof_that_verifies_offline(
    runner: CliRunner, tmp_path: Path, node: tuple[DataDir, Ledger, ReceiptFactory, list[SignedReceipt]]
) -> None:
    dd, _, _, receipts = node
    target = receipts[5]
    result = runner.invoke(app, ["receipts", "prove", target.id.hex()[:12], "--data-dir", str(dd.root), "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert (shown["receipt_id"], shown["index"], shown["epoch"]["number"]) == (target.id.hex(), 1, 2)
    assert len(shown["path"]) == 2  # log2 of an epoch of 4

    proof = tmp_path / "p.cbor"
    result = runner.invoke(app, ["receipts", "prove", target.id.hex(), "--data-dir", str(dd.root), "--out", str(proof)])
    assert result.exit_code == 0, result.output
    assert "leaf 1 of epoch 2" in result.output
    verified = runner.invoke(app, ["receipts", "verify", str(proof)])
    assert verified.exit_code == 0, verified.output
    assert f"ok: receipt {target.id.hex()} is leaf 1 of epoch 2" in verified.output
    flip(proof, len(proof.read_bytes()) - 5)  # inside the audit path
    assert runner.invoke(app, ["receipts", "verify", str(proof)]).exit_code == 1


def test_receipts_prove_explains_what_it_cannot_prove(
    runner: CliRunner, node: tuple[DataDir, Ledger, ReceiptFactory, list[SignedReceipt]]
) -> None:
    dd, _, _, receipts = node
    result = runner.invoke(app, ["receipts", "prove", receipts[9].id.hex(), "--data-dir", str(dd.root)])
    assert result.exit_code == 2
    assert "no closed epoch yet" in one_line_error(result.output)
    result = runner.invoke(app, ["receipts", "prove", "nothex!!", "--data-dir", str(dd.root)])
    assert result.exit_code == 2
    one_line_error(result.output)


def test_ledger_verify_reports_ok_then_the_tampered_position(
    runner: CliRunner, node: tuple[DataDir, Ledger, ReceiptFactory, list[SignedReceipt]]
) -> None:
    dd, _, _, _ = node
    result = runner.invoke(app, ["ledger", "verify", "--data-dir", str(dd.root)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: 13 entries, 10 receipts, 2 epochs")

    conn = sqlite3.connect(dd.db_path, isolation_level=None)
    conn.execute("DROP TRIGGER ledger_entries_no_update")
    conn.execute("UPDATE ledger_entries SET at_ms = at_ms + 1 WHERE position = 7")
    conn.close()
    result = runner.invoke(app, ["ledger", "verify", "--data-dir", str(dd.root)])
    assert result.exit_code == 1
    assert "ledger chain broken at position 7" in one_line_error(result.output)


def test_ledger_verify_rebuilds_an_edited_index(
    runner: CliRunner, node: tuple[DataDir, Ledger, ReceiptFactory, list[SignedReceipt]]
) -> None:
    dd, ledger, _, _ = node
    ledger.store.execute("UPDATE ledger_receipts SET status = 'disputed'")
    result = runner.invoke(app, ["ledger", "verify", "--data-dir", str(dd.root)])
    assert result.exit_code == 1
    assert "--rebuild-index" in result.output
    result = runner.invoke(app, ["ledger", "verify", "--data-dir", str(dd.root), "--rebuild-index", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["index_consistent"] is True


def test_commands_on_a_data_dir_without_a_node(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["ledger", "verify", "--data-dir", str(tmp_path / "nothing")])
    assert result.exit_code == 1
    assert "no node database" in one_line_error(result.output)
    result = runner.invoke(app, ["receipts", "verify", str(tmp_path / "missing.cbor")])
    assert result.exit_code == 2
    assert "cannot read" in one_line_error(result.output)
    garbage = tmp_path / "garbage.cbor"
    garbage.write_bytes(b"\xa1not cbor")
    result = runner.invoke(app, ["receipts", "verify", str(garbage)])
    assert result.exit_code == 1
    assert "not valid CBOR" in one_line_error(result.output)
