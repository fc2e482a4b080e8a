"""Render spot checks end to end on loopback: A asks and renders honestly, C renders with a quarter of the
samples it is paid for (its "Blender" is a wrapper that cuts them, tests/verify/cheaters.py) and undercuts
A's price.

A's scheduler weighs only price and reliability here (a user's weights), so C gets A's work until it is
caught. A checks every settled receipt (verify.budget = 1: every result): it keeps one of the frames as they arrive,
renders it again itself and compares pixels. C's frames differ, so its receipts are disputed in A's ledger;
after verify.distrust_after_disputes of them A gives C no more work. A publishes each dispute with its
evidence; C's own ledger shows them as contested (A is the accuser, and no independent verifier confirmed
it: there is none in a network of two), not as income lost.
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from hyperion_node.testing.process import NodeProcess, wait_until
from tests.render.conftest import build_scene
from tests.verify.cheaters import cheap_blender

pytestmark = pytest.mark.process

FAST = ["p2p.mdns=false", "p2p.heartbeat_interval_s=0.5", "p2p.suspect_after_s=2.0", "p2p.dead_after_s=4.0",
        "hardware.benchmark_on_start=false", 'runtimes.disabled=["inference", "zk-groth16"]',
        "runtimes.render-blender.threads=1"]
PRICE_ONLY = ["scheduler.weights.memory=0", "scheduler.weights.jobs=0", "scheduler.weights.rtt=0",
              "scheduler.weights.throughput=0", "scheduler.weights.price=1", "scheduler.weights.reliability=1",
              "scheduler.adaptive.exploration_rate=0", "scheduler.adaptive.weight=0"]
ITEM = "blender-cycles"


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, NodeProcess, bytes]]:
    root = tmp_path_factory.mktemp("render-spot")
    real = shutil.which("blender")
    if real is None:
        pytest.fail("blender is not on PATH: run scripts/setup.sh", pytrace=False)
    scene = build_scene(real, root / "scene.blend")
    wrapper = cheap_blender(root / "cheat", real)
    nodes: list[NodeProcess] = []
    try:
        a = NodeProcess(root / "a", sets=[*FAST, *PRICE_ONLY, "verify.budget=1.0",
                                          "runtimes.render-blender.price_per_pixel_sample=0.000001"]).start()
        nodes.append(a)
        c = NodeProcess(root / "c", sets=[*FAST, f'p2p.bootstrap=["{a.p2p_addr()}"]',
                                          f'runtimes.render-blender.blender="{wrapper}"']).start()
        nodes.append(c)
        wait_until(lambda: any(p["peer_id"] == c.peer_id and p["state"] == "alive" and p["offers"]
                               for p in a.get("/api/peers")), timeout=60, what="A knows C's render offer")
        yield a, c, scene
    finally:
        for node in nodes:
            node.stop()


def render(node: NodeProcess, scene: bytes, frame: int) -> str:
    """Submit one small render task; the worker that did it."""
    body = {"runtime": "render-blender", "item": ITEM, "timeout_s": 120,
            "payload": {"frame_start": frame, "frame_end": frame + 1, "resolution": [48, 36], "samples": 16},
            "payload_b64": {"scene": base64.b64encode(scene).decode()}}
    answer = httpx.post(node.api_url + "/api/tasks", content=json.dumps(body), timeout=180,
                        headers={"Authorization": f"Bearer {node.token}"})
    assert answer.status_code == 200, answer.text
    events: list[dict[str, Any]] = [json.loads(line) for line in answer.text.splitlines() if line.strip()]
    assert events[-1]["event"] == "final", events[-1]
    return str(events[-1]["worker"])


def test_a_worker_rendering_fewer_samples_is_disputed_and_then_avoided(
        network: tuple[NodeProcess, NodeProcess, bytes]) -> None:
    a, c, scene = network
    workers = [render(a, scene, frame) for frame in (1, 4)]
    assert workers == [c.peer_id, c.peer_id], "C's price won A's work before anyone knew better"
    wait_until(lambda: a.get("/api/tasks/stats")["reputation"].get(c.peer_id, {}).get("disputed", 0) >= 2,
               timeout=120, what="A's re-renders of C's frames dispute both receipts")
    failed = [e for e in a.get("/api/events?limit=1000") if e["kind"] == "verify.failed"]
    assert failed
    assert all("pixels differ" in e["data"]["reason"] for e in failed), failed
    wait_until(lambda: c.get("/api/rewards")["tasks"]["contested"] >= 1, timeout=30,
               what="C's own ledger marks its receipts contested")
    assert c.get("/api/rewards")["tasks"]["disputed"] == 0
    # From now on A gives C nothing: the work it pays for is rendered by A itself.
    assert render(a, scene, 7) == a.peer_id
