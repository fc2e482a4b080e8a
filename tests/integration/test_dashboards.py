"""The dashboards against real daemons: a worker serving the packaged Gemma and a gateway that routes to it.

Completions go through the gateway's ``/v1/completions``; ``hyperion-node top`` (not a terminal under
CliRunner: plain lines) and the web page in a real headless Chromium, opened from the link that
``hyperion-node dashboard`` prints (the token after the #), must show both nodes and task counts that grow
as more completions arrive. The same page served by `start --demo --web`, opened from the link on the demo's
status line, must show every virtual node alive and the first node's task count rising.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from hyperion_node.cli.app import app
from hyperion_node.testing.process import NodeProcess, demo_process, stop_all, wait_until

pytestmark = pytest.mark.process

MODEL = "gemma-3-270m-q4_k_m"
FAST = ["p2p.mdns=false", "p2p.heartbeat_interval_s=0.5", "p2p.suspect_after_s=2.0", "p2p.dead_after_s=4.0",
        "hardware.benchmark_on_start=false"]
OFF = '"zk-groth16", "render-blender"'
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SCREENSHOT_COPY = Path("/tmp/dashboard.png")  # where a developer looks at the last run's page


class Network:
    def __init__(self, root: Path) -> None:
        self.worker = NodeProcess(root / "worker", sets=[*FAST, f"runtimes.disabled=[{OFF}]",
                                                         "runtimes.inference.n_ctx=512"]).start()
        bootstrap = f'p2p.bootstrap=["{self.worker.p2p_addr()}"]'
        self.gateway = NodeProcess(root / "gateway", sets=[*FAST, f'runtimes.disabled=["inference", {OFF}]',
                                                           bootstrap]).start()
        self.worker_id = self.worker.peer_id
        wait_until(lambda: any(m["id"] == MODEL for m in self.gateway.get("/v1/models")["data"]), timeout=60,
                   what="the gateway knows the worker serves the model")

    def complete(self, n: int) -> None:
        for i in range(n):
            answer = httpx.post(self.gateway.api_url + "/v1/completions", timeout=120,
                                headers={"Authorization": f"Bearer {self.gateway.token}"},
                                json={"model": MODEL, "prompt": f"Count to {i + 2}.", "max_tokens": 4,
                                      "temperature": 0})
            assert answer.status_code == 200, answer.text

    def dashboard(self, node: NodeProcess) -> dict[str, Any]:
        answer = httpx.get(node.api_url + "/api/dashboard", timeout=10,
                           headers={"Authorization": f"Bearer {node.token}"})
        answer.raise_for_status()
        data: dict[str, Any] = answer.json()
        return data

    def stop(self) -> None:
        stop_all([self.gateway, self.worker])


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    network = Network(tmp_path_factory.mktemp("dashboards"))
    try:
        network.complete(2)
        yield network
    finally:
        network.stop()


def test_dashboard_data_needs_the_token_and_holds_no_secret(net: Network) -> None:
    gateway = net.gateway
    assert httpx.get(gateway.api_url + "/api/dashboard", timeout=10).status_code == 401
    view = wait_until(lambda: (v := net.dashboard(gateway))["totals"]["routed_completed"] >= 2 and v,
                      timeout=30, what="the gateway's dashboard counts the routed completions")
    text = httpx.get(gateway.api_url + "/api/dashboard", timeout=10,
                     headers={"Authorization": f"Bearer {gateway.token}"}).text
    assert gateway.token not in text
    assert str(gateway.data_dir) not in text
    assert "/ip4/" not in text  # no addresses either
    worker_row = next(n for n in view["nodes"] if n["peer_id"] == net.worker_id)
    assert worker_row["state"] == "alive"
    assert worker_row["routed"]["completed"] >= 2
    assert worker_row["hardware"]["cores"] >= 1
    assert view["distribution"][0]["peer_id"] == net.worker_id
    assert any(p["routed_per_s"] > 0 for p in view["series"])
    assert any(p["routed_p95_ms"] is not None for p in view["series"])
    # The worker's own dashboard sees the same tasks from the other side, and their receipts' rewards.
    served = wait_until(lambda: (v := net.dashboard(net.worker))["totals"]["served_completed"] >= 2
                        and v["rewards"]["earned"] + v["rewards"]["pending"] > 0 and v,
                        timeout=30, what="the worker's dashboard counts the served tasks and their rewards")
    assert served["nodes"][0]["self"] is True
    page = httpx.get(gateway.api_url + "/", timeout=10)  # no token: static, its data comes with one
    assert page.status_code == 200
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"
    assert net.worker_id not in page.text


def test_top_prints_plain_lines_when_not_a_terminal(net: Network) -> None:
    result = CliRunner().invoke(app, ["top", "--data-dir", str(net.gateway.data_dir), "--iterations", "2",
                                      "--interval", "0.1"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    status = [line for line in lines if " connected=" in line]
    assert len(status) == 2
    routed = int(status[-1].split("routed=")[1].split()[0])
    assert routed >= 2
    assert "connected=1" in status[-1]
    assert not any("\x1b" in line for line in lines)  # no cursor movement into a pipe
    assert any("task.completed" in line or "node.started" in line for line in lines)  # the latest events


def test_top_once_against_no_node_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["top", "--data-dir", str(tmp_path), "--once"])
    assert result.exit_code == 1
    assert "no hyperion-node is running" in result.output


def _routed_shown(driver: Any) -> int:
    from selenium.webdriver.common.by import By

    text = driver.find_element(By.ID, "tasks-routed").text
    return int(text) if text.isdigit() else -1


needs_chromium = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (scripts/setup.sh installs them)")


@contextlib.contextmanager
def _browser(tmp_path: Path) -> Iterator[Any]:
    """A real headless Chromium through chromedriver, with a profile of its own under tmp_path."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(dir=tmp_path, prefix="chromium-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _screenshot(driver: Any, shot: Path) -> None:
    assert driver.save_screenshot(str(shot))
    shutil.copyfile(shot, SCREENSHOT_COPY)
    assert shot.stat().st_size > 10_000  # a drawn page, not a blank one


@needs_chromium
def test_web_dashboard_in_headless_chromium(net: Network, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    link = CliRunner().invoke(app, ["dashboard", "--data-dir", str(net.gateway.data_dir)]).output.strip()
    assert link.startswith(net.gateway.api_url + "/#token=")
    with _browser(tmp_path) as driver:
        wait = WebDriverWait(driver, 60, poll_frequency=0.2)
        driver.get(net.gateway.api_url + "/")  # without the link's token the page shows no data, and says why
        wait.until(lambda d: "hyperion-node dashboard" in d.find_element(By.ID, "live").text)
        assert _routed_shown(driver) == -1
        driver.get(link)
        wait.until(lambda d: _routed_shown(d) >= 2)
        assert "token" not in driver.current_url  # taken off the address bar
        before = _routed_shown(driver)
        # Both live nodes are rows of the nodes table, the worker with the tasks routed to it.
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, f"#nodes tr[data-peer-id='{net.worker_id}']")))
        node_ids = {row.get_attribute("data-peer-id") for row in driver.find_elements(By.CSS_SELECTOR, "#nodes tr")}
        assert node_ids == {net.worker_id, net.gateway.peer_id}
        assert driver.find_element(By.ID, "nodes-alive").text == "1"  # connected peers, exactly
        net.complete(3)
        # The page polls on its own: the count it shows rises without a reload.
        wait.until(lambda d: _routed_shown(d) >= before + 3)
        wait.until(lambda d: int(d.find_element(
            By.CSS_SELECTOR, f"#nodes tr[data-peer-id='{net.worker_id}'] td.routed").text) >= before + 3)
        assert driver.find_element(By.ID, "live").text == "live"
        assert net.gateway.token not in driver.page_source
        driver.refresh()  # the tab keeps the token (sessionStorage): a reload still shows the data
        wait.until(lambda d: _routed_shown(d) >= before + 3)
        wait.until(lambda d: d.find_element(By.ID, "live").text == "live")
        _screenshot(driver, tmp_path / "dashboard.png")


@needs_chromium
def test_web_dashboard_of_a_demo_in_headless_chromium(tmp_path: Path) -> None:
    """`start --demo --web`: the first virtual node's page shows every node alive and its task count rising."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    nodes = 5
    log = tmp_path / "demo.out"
    args = ["--web", "--nodes", str(nodes), "--rate", "5", "--duration", "300", "--seed", "3"]
    with log.open("wb") as out, demo_process(tmp_path, args, stdout=out, stderr=subprocess.STDOUT) as proc:
        url = wait_until(lambda: (m := re.search(r"web=(http://127\.0\.0\.1:\d+/#token=[\w%.~-]+)", log.read_text()))
                         and m[1], timeout=90, what="the demo's status line names its web dashboard's link")
        with _browser(tmp_path) as driver:
            driver.get(url)
            wait = WebDriverWait(driver, 60, poll_frequency=0.2)
            wait.until(lambda d: d.find_element(By.ID, "nodes-alive").text == f"{nodes - 1}")
            # The census's first sample (10 s after start): on the fabric it sees every node.
            wait.until(lambda d: f"network ≈ {nodes} nodes" in d.find_element(By.ID, "network-estimate").text)
            rows = driver.find_elements(By.CSS_SELECTOR, "#nodes tr[data-peer-id]")
            assert len(rows) == nodes
            wait.until(lambda d: _routed_shown(d) >= 1)
            before = _routed_shown(driver)
            wait.until(lambda d: _routed_shown(d) >= before + 2)  # rising, without a reload
            assert driver.find_element(By.ID, "live").text == "live"
            _screenshot(driver, tmp_path / "demo-dashboard.png")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, log.read_text()
