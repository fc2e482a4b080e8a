"""`hyperion-node events`: replay the node's ordered event log and, with --follow, tail it.

Every presence change, task state change, receipt and verdict is a persisted event with an increasing ID,
so a reader that remembers the last ID it saw misses nothing across restarts of either side.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from typing import Annotated, Any

import typer

from hyperion_node.cli.common import cli_errors
from hyperion_node.cli.tasks import ConfigOpt, DataDirOpt, client
from hyperion_node.errors import UserError

POLL_S = 0.5
PAGE = 1000
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str | None, now: float) -> tuple[int, float]:
    """``--since``: an event ID (``1234``), a duration back from now (``90s``, ``15m``, ``2h``, ``1d``) or an
    ISO 8601 time (``2026-12-01T20:00``, local time unless it names a zone). Returns (id, unix time)."""
    if text is None:
        return 0, 0.0
    if text.isdigit():
        return int(text), 0.0
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text)
    if match:
        return 0, now - float(match[1]) * _UNITS[match[2]]
    try:
        return 0, datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise UserError(f"--since {text!r} is not an event ID, a duration like 15m or 2h, or an ISO time",
                        hint="e.g. --since 1200, --since 30m, --since 2026-12-01T20:00") from None


def line(event: dict[str, Any]) -> str:
    stamp = datetime.fromtimestamp(event["time"]).strftime("%Y-%m-%d %H:%M:%S")
    data = " ".join(f"{k}={v}" for k, v in sorted(event["data"].items()) if not isinstance(v, dict | list))
    return f"{event['id']:>7}  {stamp}  {event['kind']:<18} {data}"[:300]


def events(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    since: Annotated[str | None, typer.Option("--since", help="Event ID, duration (15m, 2h) or ISO time.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events until Ctrl-C.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    kind: Annotated[str | None, typer.Option("--kind", help="Only events whose kind starts with this.")] = None,
) -> None:
    """Replay the node's events (presence, tasks, receipts, verdicts) in order; --follow tails them."""
    api = client(config, data_dir)
    after, since_time = parse_since(since, time.time())
    while True:
        page = api.get("/api/events", since=after, limit=PAGE, since_time=since_time)
        for event in page:
            after = event["id"]
            if kind and not event["kind"].startswith(kind):
                continue
            typer.echo(json.dumps(event, sort_keys=True) if json_ else line(event))
        if len(page) == PAGE:
            continue
        if not follow:
            return
        try:
            time.sleep(POLL_S)
        except KeyboardInterrupt:
            return


events_command = cli_errors(events)

