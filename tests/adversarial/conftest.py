"""A small network of real daemons for the hostile peers to attack: W and X serve the packaged model (W also
renders), R is a gateway that serves nothing and routes to them. Honest traffic goes through R's OpenAI API
(``ask``) or, where a test needs W itself to answer, through an honest py-libp2p requester
(``hyperion_node.testing.hostile`` speaks the protocol either way)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from hyperion_node.testing.process import NodeProcess, stop_all, wait_until

MODEL = "gemma-3-270m-q4_k_m"
# Liveness faster than the defaults (15 s / 30 s), but not so fast that a flood saturating this 2-core machine
# (every daemon and the attacker share it) reads as a death: pings answered late are not a crash.
FAST = ["p2p.mdns=false", "p2p.heartbeat_interval_s=0.5", "p2p.suspect_after_s=5.0", "p2p.dead_after_s=10.0",
        "hardware.benchmark_on_start=false", "runtimes.inference.n_ctx=512", "verify.budget=0.0",
        "tasks.countersign_timeout_s=3.0"]


@dataclass
class Net:
    w: NodeProcess
    x: NodeProcess
    r: NodeProcess
    root: Path

    def nodes(self) -> list[NodeProcess]:
        return [self.w, self.x, self.r]


def ask(node: NodeProcess, prompt: str = "Name a colour.", max_tokens: int = 6) -> tuple[int, str]:
    """An honest client's completion through ``node``'s OpenAI API: (status, worker peer ID)."""
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    answer = httpx.post(node.api_url + "/v1/completions", json=body, timeout=120,
                        headers={"Authorization": f"Bearer {node.token}"})
    if answer.status_code != 200:
        print("ASK FAILED", answer.status_code, answer.text[:500])
    return answer.status_code, answer.headers.get("x-hyperion-worker", "")


def peer(node: NodeProcess, peer_id: str) -> dict[str, Any]:
    """``node``'s view of ``peer_id`` (its peer table row), or {} when it has none."""
    return next((p for p in node.get("/api/peers") if p["peer_id"] == peer_id), {})


def rejected(node: NodeProcess) -> dict[str, int]:
    return dict(node.get("/api/p2p")["stats"]["rejected"])


@pytest.fixture(scope="package")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    root = tmp_path_factory.mktemp("adversarial")
    started: list[NodeProcess] = []
    try:
        w = NodeProcess(root / "w", sets=[*FAST, 'runtimes.disabled=["zk-groth16"]']).start()
        started.append(w)
        boot = f'p2p.bootstrap=["{w.p2p_addr()}"]'
        x = NodeProcess(root / "x", sets=[*FAST, boot, 'runtimes.disabled=["zk-groth16", "render-blender"]'])
        r = NodeProcess(root / "r", sets=[*FAST, boot, 'runtimes.disabled=["inference", "zk-groth16", '
                                                          '"render-blender"]'])
        for node in (x, r):
            started.append(node.launch())
        for node in (x, r):
            node.wait_ready(timeout=120)
        wait_until(lambda: next((m["providers"] for m in r.get("/v1/models")["data"] if m["id"] == MODEL), 0) >= 2,
                   timeout=60, what="R knows both providers")
        yield Net(w, x, r, root)
    finally:
        stop_all(started)


async def until(check: Any, what: str, seconds: float = 30.0) -> Any:
    """Poll ``check`` (blocking calls to a daemon: run in a thread) until it is true, under a deadline."""
    return await trio.to_thread.run_sync(lambda: wait_until(check, timeout=seconds, what=what))


async def polled(condition: Any, what: str, seconds: float = 10.0) -> None:
    """Poll a cheap in-process ``condition`` (no daemon call) until true, failing after ``seconds``."""
    with trio.fail_after(seconds):
        for _ in iter(int, 1):  # until the deadline
            if condition():
                return
            await trio.sleep(0.05)
    raise AssertionError(what)


def call(function: Any, *args: Any) -> Any:
    """A blocking call to a daemon, from a trio test (the hostile host keeps running meanwhile)."""
    return trio.to_thread.run_sync(lambda: function(*args))


def now_ms() -> int:
    return int(time.time() * 1000)
