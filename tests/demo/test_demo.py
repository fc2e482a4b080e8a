"""`hyperion-node start --demo`: a seeded demo of real nodes with simulated GPUs finishes by itself with a
summary that shows work of every kind done, paid on several nodes, and the scripted failures handled;
SIGINT ends it cleanly with the summary too."""

from __future__ import annotations

import re
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hyperion_demo.runner import DemoOptions
from hyperion_node.cli.app import app
from hyperion_node.testing.process import demo_process, wait_until


def _completed(summary: str, kind: str) -> int:
    match = re.search(rf"^  {kind}\s+(\d+)/(\d+) completed", summary, re.MULTILINE)
    assert match, summary
    return int(match.group(1))


@pytest.mark.parametrize(("network", "nodes", "rate", "joins"), [
    ("libp2p", 4, 8, "NVIDIA Jetson AGX Orin"), ("memory", 12, 30, "NVIDIA H100 80GB HBM3")])
def test_short_demo_finishes_with_every_kind_done_rewards_spread_and_failover(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, network: str, nodes: int, rate: int, joins: str
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the nodes' data dirs go under our basetemp
    result = CliRunner().invoke(app, ["start", "--demo", "--nodes", str(nodes), "--duration", "8", "--rate",
                                      str(rate), "--seed", "1", "--network", network])
    out = result.output
    assert result.exit_code == 0, out
    assert f"nodes started on {network}" in out, out
    summary = out[out.index("hyperion-node demo summary (finished"):]
    for kind in ("inference", "zk", "render"):
        assert _completed(summary, kind) > 0, summary
    earned = [float(m) for m in re.findall(r"earned (\d+\.\d+)", summary)]
    assert sum(1 for e in earned if e > 0) >= 2, summary
    assert re.search(r"died \(no goodbye\)", summary), summary
    assert f"({joins}) joined" in summary, summary
    assert "starts to overheat" in summary, summary
    moved = re.search(r"failover\s+(\d+) tasks of the dead node completed elsewhere", summary)
    assert moved, summary
    assert int(moved.group(1)) > 0, summary
    assert re.search(r"^\s+a100-1\s.*\bdead\b", summary, re.MULTILINE), summary
    # Off a terminal the live view is plain lines, one a second, with the demo's own counts.
    assert len(re.findall(r"\| demo seed=1 nodes=", out)) >= 5, out
    if network == "memory":  # work spreads: most boards served some, not only their own requests
        served = [int(n) for n in re.findall(r"\bserved\s+(\d+)\s+earned", summary)]
        assert sum(1 for n in served if n > 0) >= nodes // 2, summary


def test_an_unknown_demo_network_is_a_one_line_error() -> None:
    result = CliRunner().invoke(app, ["start", "--demo", "--network", "carrier-pigeon", "--duration", "1"])
    assert result.exit_code != 0
    assert "--network 'carrier-pigeon' is not one of auto, libp2p, memory" in result.output


def test_auto_network_keeps_libp2p_while_one_core_carries_it_and_takes_the_fabric_beyond() -> None:
    assert DemoOptions().resolved().network == "libp2p"  # the default 8 nodes at 5 tasks/s: the real wire
    assert DemoOptions(nodes=4, rate=10).resolved().network == "libp2p"
    assert DemoOptions(nodes=8, rate=6).resolved().network == "memory"
    assert DemoOptions(nodes=50, rate=100).resolved().network == "memory"
    assert DemoOptions(nodes=50, rate=100, network="libp2p").resolved().network == "libp2p"  # asked for


def test_an_auto_demo_too_big_for_libp2p_says_it_runs_on_the_fabric(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = CliRunner().invoke(app, ["start", "--demo", "--nodes", "3", "--rate", "20", "--duration", "2",
                                      "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "3 nodes at 20 tasks/s are more than one core carries over libp2p" in result.output, result.output
    assert "nodes started on memory" in result.output, result.output
    assert "Traceback" not in result.output


def _demo_dirs(tmp_path: Path) -> set[Path]:
    """The demo's data dirs: under TMPDIR, or in /dev/shm where the demo keeps them when it can."""
    return {*tmp_path.glob("hyperion-demo-*"), *Path("/dev/shm").glob("hyperion-demo-*")}


def test_sigint_ends_a_demo_cleanly_with_the_summary(tmp_path: Path) -> None:
    before = _demo_dirs(tmp_path)
    log = tmp_path / "demo.out"
    with log.open("wb") as out, demo_process(tmp_path, ["--nodes", "3", "--duration", "600", "--rate", "4"],
                                             stdout=out, stderr=subprocess.STDOUT) as proc:
        wait_until(lambda: re.search(r"completed=[1-9]", log.read_text()), timeout=60,
                   what="the demo completes a task")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, log.read_text()
    text = log.read_text()
    assert "hyperion-node demo summary (interrupted" in text, text
    assert re.search(r"tasks\s+\d+ submitted, [1-9]\d* completed", text), text
    assert _demo_dirs(tmp_path) == before, "the demo's temporary data dirs are removed"


def test_a_demo_whose_reader_goes_away_stops_quietly(tmp_path: Path) -> None:
    """`start --demo | head -1`: the pipe closes under the live view; no traceback, nothing left behind."""
    before = _demo_dirs(tmp_path)
    with demo_process(tmp_path, ["--nodes", "3", "--duration", "600", "--rate", "4"],
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        assert proc.stdout.readline().startswith(b"demo: 3 nodes started")
        proc.stdout.close()  # what head does after its line
        code = proc.wait(timeout=60)
        errors = proc.stderr.read().decode()
    assert code == 128 + signal.SIGPIPE, errors
    assert "Traceback" not in errors, errors
    assert _demo_dirs(tmp_path) == before, "the demo's temporary data dirs are removed"
