"""The installed `hyperion-node start` as a real process: readiness through the API, the CLI against it,
one daemon per data dir, graceful SIGTERM/SIGINT, restart with the same identity and a cached benchmark."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from hyperion_node.testing.process import NodeProcess, hyperion_executable

pytestmark = pytest.mark.process


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([hyperion_executable(), *args], capture_output=True, text=True, timeout=60)


def test_start_status_stop_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    node = NodeProcess(data_dir).start()
    try:
        status = json.loads(cli("status", "--json", "--data-dir", str(data_dir)).stdout)
        assert status["pid"] == node.proc.pid  # type: ignore[union-attr]
        assert status["addresses"]["api"] == node.api_url
        p2p = status["addresses"]["p2p"]
        assert p2p
        assert any(a.startswith("/ip4/127.0.0.1/tcp/") for a in p2p)
        assert not any("/tcp/0/" in a or "/udp/0/" in a for a in p2p), "port 0 is resolved before readiness"
        assert all(a.endswith("/p2p/" + status["peer_id"]) for a in p2p)
        inference = next(r for r in status["runtimes"] if r["name"] == "inference")
        assert inference["state"] == "ready"
        assert inference["benchmark"]["throughput"] > 0
        assert inference["benchmark_cached"] is False
        assert inference["offers"], "the packaged model is offered"

        # The CLI's table forms work against the live node.
        table = cli("status", "--data-dir", str(data_dir))
        assert table.returncode == 0
        assert status["peer_id"] in table.stdout
        assert cli("peers", "--data-dir", str(data_dir)).stdout.startswith("no peers yet")
        rewards = json.loads(cli("rewards", "--json", "--data-dir", str(data_dir)).stdout)
        assert rewards["earned"] == 0
        assert rewards["receipts"] == 0
        assert cli("id", "--data-dir", str(data_dir)).stdout.strip() == status["peer_id"]

        # A second daemon on the same data dir is refused, naming the first one's PID.
        second = cli("start", "--data-dir", str(data_dir), "--set", "api.port=0", "--set", "p2p.tcp_port=0")
        assert second.returncode == 1
        assert f"PID {node.proc.pid}" in second.stderr  # type: ignore[union-attr]
        assert "Traceback" not in second.stderr

        peer_id = status["peer_id"]
        node.signal(signal.SIGTERM)
        started = time.monotonic()
        assert node.wait(timeout=10) == 0
        assert time.monotonic() - started < 5.0, "graceful shutdown is promised within 5 s"
        assert not (data_dir / "api.json").exists()
        assert "ready" in node.stdout_text()
    finally:
        node.stop()

    restarted = NodeProcess(data_dir).start()
    try:
        status = restarted.get("/api/status")
        assert status["peer_id"] == peer_id
        inference = next(r for r in status["runtimes"] if r["name"] == "inference")
        assert inference["benchmark_cached"] is True  # warm start: no second benchmark
        events = [e["kind"] for e in restarted.get("/api/events")]
        assert events.count("node.started") == 2
        assert events.count("node.stopped") == 1
        restarted.signal(signal.SIGINT)
        assert restarted.wait(timeout=10) == 0
    finally:
        restarted.stop()


def test_api_needs_the_token_except_for_health(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n", sets=["hardware.benchmark_on_start=false"]).start()
    try:
        assert httpx.get(node.api_url + "/api/health").json()["status"] == "ok"
        assert httpx.get(node.api_url + "/").status_code == 200  # the dashboard's page: static, no data
        for path in ("/api/status", "/api/peers", "/api/rewards", "/api/hardware", "/api/events", "/openapi.json",
                     "/metrics", "/api/dashboard", "/v1/models", "/no/such/route"):
            assert httpx.get(node.api_url + path).status_code == 401, path
            wrong = httpx.get(node.api_url + path, headers={"Authorization": "Bearer wrong"})
            assert wrong.status_code == 401, path
        schema = node.get("/openapi.json")
        assert {"/api/status", "/api/peers", "/api/rewards", "/api/health"} <= set(schema["paths"])
        hardware = node.get("/api/hardware")
        assert hardware["telemetry"]["ram_available_bytes"] > 0
    finally:
        assert node.stop() == 0


def test_two_nodes_on_one_machine_get_their_own_ports(tmp_path: Path) -> None:
    sets = ["hardware.benchmark_on_start=false"]
    a = NodeProcess(tmp_path / "a", sets=sets).start()
    b = NodeProcess(tmp_path / "b", sets=sets).start()
    try:
        sa, sb = a.get("/api/status"), b.get("/api/status")
        assert sa["peer_id"] != sb["peer_id"]
        assert sa["addresses"]["api"] != sb["addresses"]["api"]
        assert set(sa["addresses"]["p2p"]).isdisjoint(sb["addresses"]["p2p"])
    finally:
        assert a.stop() == 0
        assert b.stop() == 0


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    a = NodeProcess(tmp_path / "a", sets=["hardware.benchmark_on_start=false"]).start()
    try:
        port = a.api_url.rsplit(":", 1)[1]
        result = cli("start", "--data-dir", str(tmp_path / "b"), "--set", f"api.port={port}",
                     "--set", "p2p.tcp_port=0", "--set", "p2p.quic_port=0",
                     "--set", "hardware.benchmark_on_start=false")
        assert result.returncode == 1
        assert f"port {port}" in result.stderr
        assert "api.port" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        a.stop()
