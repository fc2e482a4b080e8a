"""`hyperion-node events --since` parsing (the command itself runs against real nodes in the routing tests)."""

from __future__ import annotations

from datetime import datetime

import pytest

from hyperion_node.cli.events import parse_since
from hyperion_node.errors import UserError


def test_since_takes_an_id_a_duration_or_a_time() -> None:
    now = 1_000_000.0
    assert parse_since(None, now) == (0, 0.0)
    assert parse_since("1234", now) == (1234, 0.0)
    assert parse_since("90s", now) == (0, now - 90)
    assert parse_since("15m", now) == (0, now - 900)
    assert parse_since("2h", now) == (0, now - 7200)
    assert parse_since("1.5d", now) == (0, now - 1.5 * 86400)
    assert parse_since("2026-12-01T20:00", now) == (0, datetime(2026, 12, 1, 20, 0).timestamp())


@pytest.mark.parametrize("bad", ["yesterday", "15x", "-3", "12:00:00:00"])
def test_a_bad_since_says_what_is_accepted(bad: str) -> None:
    with pytest.raises(UserError, match="duration like 15m"):
        parse_since(bad, 0.0)
