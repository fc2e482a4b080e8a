"""The control API against a hostile local client, on a real ``hyperion-node start`` process: a page that
rebinds its DNS name to 127.0.0.1, bodies of 200 MB, malformed tokens, open routes, a token file others
can read. The gate's edge cases, in-process, are in tests/unit/test_api_guard.py."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from hyperion_node.cli.app import app
from hyperion_node.datadir import DataDir, write_private
from hyperion_node.testing.process import NodeProcess, hyperion_executable

pytestmark = pytest.mark.process

QUICK = ["hardware.benchmark_on_start=false", "p2p.mdns=false",
         'runtimes.disabled=["inference", "zk-groth16", "render-blender"]']
DEFAULT_CAP = 96 * 1024 * 1024  # api.max_body_bytes in configs/default.toml
HUGE = 200 * 1024 * 1024
CHUNK = 1024 * 1024
# What the daemon may grow by beyond the body it holds: Hypercorn's queue of 10 chunks of 64 KiB, the
# bytearray's over-allocation, allocator slack. Before the cap, a 144 MB body took it from 144 to 921 MB.
MARGIN = 48 * 1024 * 1024


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    started = NodeProcess(tmp_path_factory.mktemp("hardening") / "node", sets=QUICK).start()
    try:
        yield started
    finally:
        assert started.stop() == 0


def port_of(node: NodeProcess) -> int:
    return int(urlsplit(node.api_url).port or 0)


def auth(node: NodeProcess) -> dict[str, str]:
    return {"Authorization": f"Bearer {node.token}"}


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM, proc(5)): psutil reports only the current one, and a body
    read and freed between two samples would leave no trace in it."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB$", status, re.MULTILINE)
    assert match, status
    return int(match[1]) * 1024


def test_a_foreign_host_is_refused_on_every_route_even_with_the_token(node: NodeProcess) -> None:
    port = port_of(node)
    peer_id = node.peer_id
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}", f"localhost:{port + 1}"):
        for path in ("/", "/api/dashboard", "/metrics", "/api/status", "/api/health"):
            answer = httpx.get(node.api_url + path, headers={**auth(node), "Host": host}, timeout=10)
            assert answer.status_code == 421, (host, path)
            assert "api.allowed_hosts" in answer.json()["error"]
            assert peer_id not in answer.text
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", "127.0.0.1"):
        answer = httpx.get(node.api_url + "/api/status", headers={**auth(node), "Host": host}, timeout=10)
        assert answer.status_code == 200, host
        assert answer.json()["peer_id"] == peer_id


def test_a_request_without_host_is_a_400(node: NodeProcess) -> None:
    with socket.create_connection(("127.0.0.1", port_of(node)), timeout=10) as sock:
        sock.sendall(b"GET /api/health HTTP/1.0\r\n\r\n")  # HTTP/1.0 may leave Host out; we do not answer it
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"exactly one Host header" in answer


def _body(total: int, sent: list[int]) -> Iterator[bytes]:
    piece = b"x" * CHUNK
    while sent[0] < total:
        sent[0] += CHUNK
        yield piece


def test_a_200_mb_body_is_refused_and_memory_stays_under_the_cap(node: NodeProcess) -> None:
    assert node.proc is not None
    daemon = psutil.Process(node.proc.pid)
    before = daemon.memory_info().rss
    # Declared: refused on the headers, before the body is read (what got out is what the sockets buffer).
    sent = [0]
    answer = httpx.post(node.api_url + "/api/render", content=_body(HUGE, sent), timeout=60,
                        headers={**auth(node), "Content-Length": str(HUGE)})
    assert answer.status_code == 413
    assert "api.max_body_bytes" in answer.json()["error"]
    assert sent[0] < DEFAULT_CAP // 2
    # Chunked: counted as it arrives and cut off at the cap, on each route that takes a body.
    for path in ("/api/tasks", "/api/render", "/v1/chat/completions"):
        sent = [0]
        answer = httpx.post(node.api_url + path, content=_body(HUGE, sent), headers=auth(node), timeout=60)
        assert answer.status_code == 413, path
        assert DEFAULT_CAP <= sent[0] < HUGE, path
    assert peak_rss(daemon.pid) <= before + DEFAULT_CAP + MARGIN
    assert node.get("/api/health")["status"] == "ok"  # and it still answers
    assert node.get("/api/status")["pid"] == daemon.pid


@pytest.mark.parametrize("authorization", [
    "Bearer t\u00f6ken".encode(),  # non-ASCII: the 500 this once was
    "Bearer \u00e9".encode("latin-1"),
    b"Bearer \xff\xfe\x80x",
    b"Bearer " + b"x" * 8000,
    b"Basic dXNlcjpwYXNz",
    b"Bearer",
    b"Bearer a b c",
    b"Bearer\tx",
])
def test_a_malformed_token_is_a_401(node: NodeProcess, authorization: bytes) -> None:
    for path in ("/api/status", "/api/dashboard", "/v1/models"):
        answer = httpx.get(node.api_url + path, headers={"Authorization": authorization}, timeout=10)
        assert answer.status_code == 401, path
        assert "missing or wrong bearer token" in answer.json()["error"]


def test_metrics_and_dashboard_data_need_the_token_and_the_page_does_not(node: NodeProcess) -> None:
    for path in ("/metrics", "/api/dashboard", "/no/such/route"):
        assert httpx.get(node.api_url + path, timeout=10).status_code == 401, path
    metrics = httpx.get(node.api_url + "/metrics", headers=auth(node), timeout=10)
    assert metrics.status_code == 200
    assert "hyperion_peers" in {f.name for f in text_string_to_metric_families(metrics.text)}
    assert httpx.get(node.api_url + "/api/dashboard", headers=auth(node), timeout=10).json()["nodes"]
    page = httpx.get(node.api_url + "/", timeout=10)
    assert page.status_code == 200
    assert node.peer_id not in page.text  # the page is static: its data comes with the token


def test_cli_dashboard_prints_a_link_whose_fragment_opens_the_data(node: NodeProcess) -> None:
    result = CliRunner().invoke(app, ["dashboard", "--data-dir", str(node.data_dir)])
    assert result.exit_code == 0, result.output
    link = urlsplit(result.output.strip())
    assert f"{link.scheme}://{link.netloc}" == node.api_url
    assert link.path == "/"
    assert link.fragment == f"token={node.token}"
    data = httpx.get(node.api_url + "/api/dashboard", timeout=10,
                     headers={"Authorization": f"Bearer {link.fragment.removeprefix('token=')}"})
    assert data.status_code == 200
    # `top` reads the same data (and /api/events) with the token from the data dir.
    top = CliRunner().invoke(app, ["top", "--data-dir", str(node.data_dir), "--once"])
    assert top.exit_code == 0, top.output
    assert "connected=0" in top.output


def test_metrics_public_and_allowed_hosts_as_configured(tmp_path: Path) -> None:
    other = NodeProcess(tmp_path / "public", sets=[*QUICK, "api.metrics_public=true",
                                                   'api.allowed_hosts=["node.lan", "proxy.lan:8443"]']).start()
    try:
        port = port_of(other)
        assert httpx.get(other.api_url + "/metrics", timeout=10).status_code == 200  # no token
        assert httpx.get(other.api_url + "/api/dashboard", timeout=10).status_code == 401  # the rest stays closed
        for host, status in (("node.lan", 200), (f"node.lan:{port}", 200), ("proxy.lan:8443", 200),
                             (f"proxy.lan:{port}", 421), ("evil.example", 421)):
            answer = httpx.get(other.api_url + "/api/status", headers={**auth(other), "Host": host}, timeout=10)
            assert answer.status_code == status, host
    finally:
        assert other.stop() == 0


def test_a_token_file_others_can_read_stops_the_node_as_a_key_does(tmp_path: Path) -> None:
    data_dir = DataDir(tmp_path / "open")
    data_dir.ensure()
    write_private(data_dir.token_path, b"a-token-someone-wrote-by-hand-0123456789")
    os.chmod(data_dir.token_path, 0o644)
    result = subprocess.run([hyperion_executable(), "start", "--data-dir", str(data_dir.root), "--set", "api.port=0",
                             "--set", "p2p.tcp_port=0", "--set", "p2p.quic_port=0", *[f"--set={s}" for s in QUICK]],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert f"run `chmod 600 {data_dir.token_path}`" in result.stderr
    assert "mode 0644" in result.stderr
    assert "Traceback" not in result.stderr
    assert not data_dir.api_file.exists()  # it never listened


def test_the_cli_refuses_a_token_file_others_can_read(node: NodeProcess) -> None:
    token_path = node.data_dir / "api.token"
    os.chmod(token_path, 0o644)
    try:
        runner = CliRunner()
        status = runner.invoke(app, ["status", "--data-dir", str(node.data_dir)])
        assert status.exit_code == 1
        assert f"run `chmod 600 {token_path}`" in status.output
        assert "Traceback" not in status.output
        doctor = runner.invoke(app, ["doctor", "--data-dir", str(node.data_dir)])
        assert doctor.exit_code == 1
        assert "FAIL  api.token: mode 0644" in doctor.output
        assert "FAIL  running node: not asked: API token" in doctor.output
    finally:
        os.chmod(token_path, 0o600)
    assert CliRunner().invoke(app, ["status", "--data-dir", str(node.data_dir)]).exit_code == 0
