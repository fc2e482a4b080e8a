"""The [ledger] and [pricing] configuration keys: defaults, overrides and validation naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyperion_node.config import load_config
from hyperion_node.errors import ConfigError


def test_defaults(tmp_path: Path) -> None:
    cfg = load_config(environ={"HOME": str(tmp_path)})
    assert (cfg.ledger.epoch_receipts, cfg.ledger.epoch_minutes) == (1000, 60.0)
    assert (cfg.ledger.idle_warning_minutes, cfg.ledger.unsettled_warning_minutes) == (120.0, 30.0)
    assert cfg.ledger.dealings_interval_s == 5.0
    assert (cfg.pricing.auto, cfg.pricing.auto_credits_per_hour) == ((), 1.0)


def test_overrides(tmp_path: Path) -> None:
    cfg = load_config(environ={"HOME": str(tmp_path), "HYPERION_LEDGER__EPOCH_MINUTES": "5"},
                      sets=["ledger.epoch_receipts=10", 'pricing.auto=["inference"]'])
    assert (cfg.ledger.epoch_receipts, cfg.ledger.epoch_minutes, cfg.pricing.auto) == (10, 5.0, ("inference",))


@pytest.mark.parametrize(("setting", "key"), [
    ("ledger.epoch_receipts=0", "ledger.epoch_receipts"),
    ("ledger.epoch_minutes=0", "ledger.epoch_minutes"),
    ("ledger.unsettled_warning_minutes=-1", "ledger.unsettled_warning_minutes"),
    ("ledger.dealings_interval_s=-0.5", "ledger.dealings_interval_s"),
    ("pricing.auto_credits_per_hour=0", "pricing.auto_credits_per_hour"),
    ('ledger.epoch_receipts="many"', "ledger.epoch_receipts"),
])
def test_invalid_values_name_the_key(tmp_path: Path, setting: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config(environ={"HOME": str(tmp_path)}, sets=[setting])
