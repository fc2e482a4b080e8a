"""Start real ``hyperion-node`` processes for tests and benchmarks, and wait for them without sleeps.

Readiness is what the daemon itself publishes: ``api.json`` in the data dir (written after every component
has started) plus an answer from ``/api/health``. Polling that file under a deadline is the event we wait
for; a process that exits early fails at once with its stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

POLL_INTERVAL_S = 0.05
T = TypeVar("T")


def wait_until(check: Callable[[], T], *, timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll ``check`` until it returns something truthy, or fail naming ``what`` after ``timeout`` seconds.
    Exceptions from ``check`` count as "not yet" (a node may be between states)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except Exception as exc:  # e.g. an API not answering yet
            last_error = exc
        else:
            if result:
                return result
        time.sleep(interval)
    raise TimeoutError(f"{what}: not true after {timeout} s (last error: {last_error!r})")


def stop_all(nodes: Sequence[NodeProcess], timeout: float = 10.0) -> None:
    """Stop every node of ``nodes`` that was started and still runs (a test's or benchmark's clean-up)."""
    for node in nodes:
        if node.proc is not None and node.proc.poll() is None:
            node.stop(timeout=timeout)


def pid_alive(pid: int, *, group: bool = False) -> bool:
    """Whether a process with this PID exists, or with ``group`` any process of the process group ``pid``
    (for tests that check that workers, or a worker's whole group, were killed)."""
    try:
        (os.killpg if group else os.kill)(pid, 0)
    except ProcessLookupError:
        return False
    return True


def hyperion_executable() -> str:
    """The installed console script next to this interpreter (the one a user runs)."""
    beside = Path(sys.executable).with_name("hyperion-node")
    found = str(beside) if beside.exists() else shutil.which("hyperion-node")
    if found is None:
        raise RuntimeError("hyperion-node is not installed in this environment; run scripts/test")
    return found


@contextlib.contextmanager
def demo_process(tmp: Path, args: Sequence[str], *, stdout: Any, stderr: Any) -> Iterator[subprocess.Popen[bytes]]:
    """``hyperion-node start --demo ARGS`` as its own process, TMPDIR under ``tmp``; killed if still running
    when the block ends (a failed assertion must not leave a demo behind)."""
    proc = subprocess.Popen([hyperion_executable(), "start", "--demo", *args], stdout=stdout, stderr=stderr,
                            env={**os.environ, "TMPDIR": str(tmp)})
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@dataclass
class NodeProcess:
    """One daemon process on a data dir, with ports chosen by the OS unless ``sets`` say otherwise."""

    data_dir: Path
    sets: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    api_url: str = ""
    ready_seconds: float = 0.0
    quiet: bool = False  # discard stdout (benchmarks with many nodes never read it)

    def command(self) -> list[str]:
        args = [hyperion_executable(), "start", "--data-dir", str(self.data_dir), "--log-format", "json",
                "--set", "api.port=0", "--set", "p2p.tcp_port=0", "--set", "p2p.quic_port=0",
                "--set", 'p2p.listen_host="127.0.0.1"']
        for item in self.sets:
            args += ["--set", item]
        return args

    def start(self, *, timeout: float = 120.0) -> NodeProcess:
        """Start and wait until the node answers on its API."""
        self.launch()
        self.wait_ready(timeout=timeout)
        return self

    def launch(self) -> NodeProcess:
        """Start the process without waiting (to start many at once); then call ``wait_ready``."""
        env = {**os.environ, **self.env}
        env.pop("HYPERION_DATA_DIR", None)
        for name in [n for n in env if n.startswith("HYPERION_P2P__")]:
            env.pop(name)  # a developer's shell settings must not leak into test networks
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._stderr = open(self.data_dir / "test-stderr.log", "wb")  # closed in wait()
        self._launched = time.monotonic()
        stdout = subprocess.DEVNULL if self.quiet else subprocess.PIPE
        self.proc = subprocess.Popen(self.command(), stdout=stdout, stderr=self._stderr, env=env)
        return self

    def wait_ready(self, *, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        api_file = self.data_dir / "api.json"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hyperion-node exited with {self.proc.returncode}:\n{self.stderr_text()}")
            if api_file.exists():
                try:
                    info = json.loads(api_file.read_text())
                    if info.get("pid") == self.proc.pid:
                        httpx.get(info["url"] + "/api/health", timeout=2.0).raise_for_status()
                        self.api_url = info["url"]
                        self.ready_seconds = time.monotonic() - self._launched
                        return
                except (ValueError, httpx.HTTPError):
                    pass  # written but not yet answering: poll again
            time.sleep(POLL_INTERVAL_S)
        raise TimeoutError(f"hyperion-node not ready after {timeout} s:\n{self.stderr_text()}")

    def stderr_text(self) -> str:
        path = self.data_dir / "test-stderr.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    @property
    def token(self) -> str:
        return (self.data_dir / "api.token").read_text().strip()

    def get(self, path: str) -> Any:
        response = httpx.get(self.api_url + path, headers={"Authorization": f"Bearer {self.token}"}, timeout=10)
        response.raise_for_status()
        return response.json()

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._stderr.close()

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; SIGKILL if it overruns (a test then fails on the exit code, not a hang)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                return self.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.wait(timeout)
                raise
        return self.proc.returncode

    @property
    def peer_id(self) -> str:
        return str(self.get("/api/status")["peer_id"])

    def p2p_addr(self) -> str:
        """This node's TCP multiaddr, with /p2p/<peer ID> (TCP: the transport every peer has)."""
        return str(next(a for a in self.get("/api/p2p")["addrs"] if "/tcp/" in a))

    def live_peers(self) -> set[str]:
        """Peers this node's table says are alive (answering pings while connected, or not found dead)."""
        return {p["peer_id"] for p in self.get("/api/peers") if p["state"] == "alive"}

    def peer_state(self, peer_id: str) -> str | None:
        return next((p["state"] for p in self.get("/api/peers") if p["peer_id"] == peer_id), None)

    def stdout_text(self) -> str:
        assert self.proc is not None
        assert self.proc.stdout is not None
        return self.proc.stdout.read().decode(errors="replace")
