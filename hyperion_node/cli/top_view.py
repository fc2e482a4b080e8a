"""What ``hyperion-node top`` draws, as pure code: a dashboard view (``GET /api/dashboard``) and the latest
events in, at most ``height`` lines of at most ``width`` characters out.

Every text that a peer chose (its name, an event's fields) passes through :func:`printable` first: a peer
must not be able to move the operator's cursor or retitle their terminal with escape sequences.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

SPARK = "▁▂▃▄▅▆▇█"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
HEAD_LINES = 8  # title, four summary lines, the sparkline, a blank, the node table's header
MIN_EVENTS = 4  # event lines kept on screen however many nodes there are


def printable(text: Any) -> str:
    return _CONTROL.sub("?", str(text))


def fit(text: str, width: int) -> str:
    """Exactly ``width`` characters: cut with an ellipsis, or padded."""
    if len(text) > width:
        return text[: max(width - 1, 0)] + "…" if width > 0 else ""
    return text.ljust(width)


def short_id(peer_id: str) -> str:
    return "…" + peer_id[-8:]


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}T"  # unreachable: the loop returns at "T"


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


def fmt_duration(seconds: float) -> str:
    s = int(seconds)
    h, m = divmod(s // 60, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s % 60:02d}s" if m else f"{s}s"


def sparkline(values: Sequence[float], width: int) -> str:
    """The last ``width`` values as block characters scaled to their maximum (all blank when all are 0)."""
    tail = list(values)[-width:] if width > 0 else []
    top = max(tail, default=0.0)
    if top <= 0:
        return " " * len(tail)
    return "".join(" " if v <= 0 else SPARK[min(len(SPARK) - 1, int(v / top * (len(SPARK) - 1) + 0.5))]
                   for v in tail)


def _hardware(node: Mapping[str, Any]) -> str:
    hw = node.get("hardware") or {}
    gpus = hw.get("gpus") or []
    if gpus:
        name = printable(gpus[0].get("name", "GPU")).replace("NVIDIA ", "").replace("GeForce ", "")
        return f"{len(gpus)}×{name}"
    if hw:
        return f"{hw.get('cores', '?')}c {fmt_bytes(hw.get('ram_bytes'))}"
    return "-"


def _gpu(node: Mapping[str, Any]) -> tuple[str, str, str]:
    gpus = (node.get("telemetry") or {}).get("gpus") or []
    if not gpus:
        return "-", "-", "-"
    g = gpus[0]  # the first GPU; `hyperion-node peers --json` has them all
    util = "-" if g.get("util") is None else f"{g['util']:.0f}%"
    temp = "-" if g.get("temp_c") is None else f"{g['temp_c']:.0f}C"
    return util, temp, fmt_bytes(g.get("vram_free"))


# (title, width, right-aligned); the widths add up to 69, plus 10 separating spaces: 79 of 80 columns.
COLUMNS = (("NODE", 14, False), ("STATE", 7, False), ("HARDWARE", 12, False), ("GPU%", 4, True),
           ("TEMP", 4, True), ("VRAM", 7, True), ("Q", 2, True), ("RUN", 3, True), ("RTT", 6, True),
           ("ROUTED", 6, True), ("SHR", 4, True))


def _row(cells: Sequence[str]) -> str:
    out = []
    for (_title, width, right), text in zip(COLUMNS, cells, strict=True):
        text = fit(text, width).rstrip() if len(text) > width else text
        out.append(text.rjust(width) if right else text.ljust(width))
    return " ".join(out)


def network_line(network: Mapping[str, Any] | None) -> str:
    """The census's estimate of the whole network, labelled as one (p2p/census.py)."""
    if not network:
        return "network: not estimated yet"
    return (f"network ≈ {network['nodes']} nodes, {network['gpus']} GPUs "
            f"(est. from {network['sampled_peers']}, {fmt_duration(network['age_s'])} ago)")


def node_line(node: Mapping[str, Any], routed_total: int) -> str:
    telemetry = node.get("telemetry") or {}
    util, temp, vram = _gpu(node)
    routed = int((node.get("routed") or {}).get("completed", 0))
    name = printable(node.get("name") or short_id(node["peer_id"]))
    return _row([
        ("*" if node.get("self") else " ") + name, printable(node.get("state", "?")), _hardware(node), util, temp,
        vram, str(telemetry.get("queue_depth", "-")), str(telemetry.get("active_tasks", "-")),
        "-" if node.get("rtt_ms") is None else f"{node['rtt_ms']:.0f}ms", str(routed),
        f"{100 * routed / routed_total:.0f}%" if routed_total else "-",
    ])


def event_line(event: Mapping[str, Any]) -> str:
    stamp = datetime.fromtimestamp(float(event["time"])).strftime("%H:%M:%S")
    fields = []
    for key, value in sorted((event.get("data") or {}).items()):
        if isinstance(value, dict | list):
            continue
        text = printable(value)
        fields.append(f"{key}={short_id(text) if key in ('peer_id', 'worker', 'requester') else text[:24]}")
    return printable(f"{stamp} {event['kind']:<16} {' '.join(fields)}")


def summary(view: Mapping[str, Any], points: Sequence[Mapping[str, Any]]) -> list[str]:
    totals, rewards = view["totals"], view.get("rewards") or {}
    last = points[-1] if points else {}
    local = view["nodes"][0] if view["nodes"] else {}
    telemetry = local.get("telemetry") or {}
    return [
        f"connected {view.get('connected', 0)}  {network_line(view.get('network'))}",
        f"routed {totals['routed_completed']} "
        f"({totals['routed_failed']} failed)  served {totals['served_completed']} ({totals['served_failed']} "
        f"failed)  queue {telemetry.get('queue_depth', 0)} run {telemetry.get('active_tasks', 0)}",
        f"rate {last.get('routed_per_s', 0.0):.2f}/s routed {last.get('served_per_s', 0.0):.2f}/s served  "
        f"latency p50 {fmt_ms(last.get('routed_p50_ms'))} p95 {fmt_ms(last.get('routed_p95_ms'))}  "
        f"run p95 {fmt_ms(last.get('served_p95_ms'))}",
        f"rewards earned {rewards.get('earned', 0.0):.6f}  pending {rewards.get('pending', 0.0):.6f}  "
        f"disputed {rewards.get('disputed', 0.0):.6f}  spent {rewards.get('spent', 0.0):.6f}",
    ]


def render(view: Mapping[str, Any], points: Sequence[Mapping[str, Any]], events: Sequence[Mapping[str, Any]],
           *, width: int = 80, height: int = 24, now: float | None = None) -> list[str]:
    """The whole screen, top to bottom: no line longer than ``width``, no more than ``height`` lines."""
    node = view["node"]
    clock = datetime.fromtimestamp(now if now is not None else view["time"]).strftime("%H:%M:%S")
    title = (f"hyperion-node top  {printable(node['name'])} {short_id(node['peer_id'])}  v{node['version']}  "
             f"up {fmt_duration(node['uptime_s'])}")
    label = "tasks/s "
    rates = [p.get("routed_per_s", 0.0) + p.get("served_per_s", 0.0) for p in points]
    lines = [fit(title, max(width - len(clock) - 1, 0)) + " " + clock, *summary(view, points),
             label + sparkline(rates, max(width - len(label), 0)), "",
             _row([t for t, _w, _r in COLUMNS])]
    routed_total = sum(int((n.get("routed") or {}).get("completed", 0)) for n in view["nodes"])
    room = max(height - HEAD_LINES - 2, 0)  # below the table: a blank and the events' header
    nodes = view["nodes"][: max(room - MIN_EVENTS, 1)]
    lines += [node_line(n, routed_total) for n in nodes]
    if len(nodes) < view["nodes_total"]:
        lines[-1] = f"  … and {view['nodes_total'] - len(nodes) + 1} more nodes (hyperion-node peers)"
    lines += ["", "EVENTS"]
    lines += [event_line(e) for e in list(events)[-max(height - len(lines), 0):]] if height > len(lines) else []
    return [fit(line, width).rstrip() for line in lines[:height]]


def plain_line(view: Mapping[str, Any], points: Sequence[Mapping[str, Any]]) -> str:
    """One line per refresh when stdout is not a terminal (a log file, a pipe): no cursor movement."""
    stamp = datetime.fromtimestamp(view["time"]).strftime("%Y-%m-%d %H:%M:%S")
    last = points[-1] if points else {}
    totals, rewards = view["totals"], view.get("rewards") or {}
    network = view.get("network") or {}
    return (f"{stamp} connected={view.get('connected', 0)} network_est={network.get('nodes', '-')} "
            f"routed={totals['routed_completed']} "
            f"served={totals['served_completed']} failed={totals['routed_failed'] + totals['served_failed']} "
            f"routed_per_s={last.get('routed_per_s', 0.0):.2f} served_per_s={last.get('served_per_s', 0.0):.2f} "
            f"p95_ms={last.get('routed_p95_ms') or last.get('served_p95_ms') or '-'} "
            f"earned={rewards.get('earned', 0.0):.6f}")
