"""`hyperion-node top`'s screen as pure code: it fits the terminal and a peer cannot write escapes into it."""

from __future__ import annotations

from typing import Any

import pytest

from hyperion_node.cli.top import frame
from hyperion_node.cli.top_view import fit, plain_line, printable, render, sparkline


def node(i: int, **extra: Any) -> dict[str, Any]:
    return {"peer_id": f"12D3KooW{i:040d}", "name": f"worker-with-a-long-name-{i}", "self": i == 0,
            "state": "alive", "rtt_ms": 1.5 * i, "routed": {"completed": i, "failed": 0},
            "hardware": {"cores": 64, "ram_bytes": 2**40, "gpus": [{"name": "NVIDIA H200", "vram_bytes": 2**37}] * 8},
            "telemetry": {"queue_depth": i, "active_tasks": 1,
                          "gpus": [{"util": 99, "temp_c": 81, "vram_free": 2**36}]},
            **extra}


def view(n_nodes: int, **extra: Any) -> dict[str, Any]:
    return {"time": 1_800_000_000.0, "node": {"peer_id": "12D3KooWme", "name": "gateway", "version": "0.1.0",
                                              "uptime_s": 3725.0},
            "nodes": [node(i) for i in range(n_nodes)], "nodes_total": n_nodes, "peers_alive": n_nodes - 1,
            "connected": n_nodes - 1, "network": {"estimate": True, "nodes": 1234, "gpus": 56, "capacity": {},
                                                  "sampled_peers": 21, "age_s": 42.0},
            "totals": {"routed_completed": 12345, "routed_failed": 6, "served_completed": 7, "served_failed": 0},
            "rewards": {"earned": 123.456789, "pending": 0.5, "disputed": 0.0, "spent": 9.0}, **extra}


POINTS = [{"t": float(t), "routed_per_s": t % 7, "served_per_s": 0.5, "routed_p50_ms": 320.0,
           "routed_p95_ms": 1250.0, "served_p95_ms": 80.0} for t in range(300)]
EVENTS = [{"id": i, "time": 1_800_000_000.0 + i, "kind": "task.completed",
           "data": {"worker": f"12D3KooW{i:040d}", "runtime": "inference", "role": "requester", "nested": {"a": 1}}}
          for i in range(40)]


@pytest.mark.parametrize(("width", "height", "nodes"), [(80, 24, 3), (80, 24, 60), (120, 40, 60), (80, 24, 1)])
def test_screen_fits_the_terminal(width: int, height: int, nodes: int) -> None:
    lines = render(view(nodes), POINTS, EVENTS, width=width, height=height)
    assert len(lines) <= height
    assert all(len(line) <= width for line in lines), max(lines, key=len)
    assert not any(line.endswith("…") for line in lines[1:5])  # the summary lines fit whole
    text = "\n".join(lines)
    assert "12345" in text
    assert "123.456789" in text
    assert "1.25 s" in text
    assert "EVENTS" in text
    assert "task.completed" in text
    assert lines[-1].startswith("01:") or "task.completed" in lines[-1]  # newest events at the bottom


def test_many_nodes_leave_room_for_events_and_say_how_many_are_hidden() -> None:
    lines = render(view(60), POINTS, EVENTS, width=80, height=24)
    assert sum("task.completed" in line for line in lines) >= 4
    assert any("more nodes" in line for line in lines)


def test_node_rows_show_gpu_telemetry_queue_and_share() -> None:
    lines = render(view(3), POINTS, [], width=80, height=24)
    row = next(line for line in lines if "3ms" in line)  # the third node: RTT 1.5 ms x 2
    assert "8×H200" in row
    assert "99%" in row
    assert "81C" in row
    assert "64.0G" in row
    assert row.rstrip().endswith("67%")  # 2 of the 3 routed tasks


def test_peer_text_cannot_carry_terminal_escapes() -> None:
    evil = view(2)
    evil["nodes"][1]["name"] = "\x1b]0;owned\x07\x1b[2J"
    evil["node"]["name"] = "gw\x1b[31m"
    events = [{"id": 1, "time": 1_800_000_000.0, "kind": "peer.joined", "data": {"name": "\x1b[H\rx"}}]
    lines = render(evil, POINTS, events, width=80, height=24)
    assert not any(ch in line for line in lines for ch in "\x1b\x07\r")
    assert printable("a\x9bb\nc") == "a?b?c"


def test_frame_redraws_in_place_without_clearing_the_screen_first() -> None:
    out = frame(["one", "two"])
    assert out == "\x1b[Hone\x1b[K\ntwo\x1b[K\x1b[J"  # home, each line cleared to its end, then below


def test_fit_and_sparkline() -> None:
    assert fit("abcdef", 4) == "abc…"
    assert fit("ab", 4) == "ab  "
    assert sparkline([0, 1, 2, 4], 10) == " ▃▅█"
    assert sparkline([0, 0], 2) == "  "
    assert len(sparkline(list(range(100)), 20)) == 20


def test_plain_line_is_one_line_of_key_values() -> None:
    line = plain_line(view(2), POINTS)
    assert "\n" not in line
    assert "\x1b" not in line
    assert "routed=12345" in line
    assert "connected=1" in line
    assert "network_est=1234" in line
    assert "earned=123.456789" in line
