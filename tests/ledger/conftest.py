"""Identities, receipts and ledgers shared by the ledger tests (built by hyperion_node.testing.receipts)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperion_node.ledger.chain import Ledger
from hyperion_node.testing.receipts import ReceiptFactory, open_ledger


@pytest.fixture(scope="session")
def factory() -> ReceiptFactory:
    """Key generation is cheap, but one worker/requester pair keeps failures easy to read."""
    return ReceiptFactory()


@pytest.fixture
def ledger(tmp_path: Path, factory: ReceiptFactory) -> Iterator[Ledger]:
    """The worker's ledger, closing an epoch every 5 receipts."""
    ledger = open_ledger(tmp_path / "node.db", factory.worker, every_receipts=5)
    yield ledger
    ledger.store.close()
