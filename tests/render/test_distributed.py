"""Render jobs split across real daemons on 127.0.0.1: A (which also renders), B and C.

Every frame must arrive once, with the pixels of a single-node render of that frame (the runtime renders the
same frame to the same hash in any process, order or chunk); killing a worker mid-job still yields every
frame once; the CLI writes the frames; a client that goes away stops the job. The tests share one network
and run in file order: the last one kills C.
"""

from __future__ import annotations

import base64
import json
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from typer.testing import CliRunner

from hyperion_node.cli.app import app
from hyperion_node.testing.process import NodeProcess, stop_all, wait_until
from runtimes.render.png import pixels_sha256
from tests.render.conftest import Collector, started, task

pytestmark = pytest.mark.process

FAST = ["p2p.mdns=false", "p2p.heartbeat_interval_s=0.5", "p2p.suspect_after_s=2.0", "p2p.dead_after_s=4.0",
        "hardware.benchmark_on_start=false", 'runtimes.disabled=["inference", "zk-groth16"]',
        "runtimes.render-blender.threads=1"]  # three Blenders on 2 cores: one thread each
RES, SAMPLES, FRAMES = [64, 48], 4, 12
JOB = {"resolution": RES, "samples": SAMPLES, "chunk_frames": 2, "timeout_s": 300}


class Network:
    def __init__(self, root: Path) -> None:
        self.a = NodeProcess(root / "a", sets=FAST).start()
        bootstrap = f'p2p.bootstrap=["{self.a.p2p_addr()}"]'
        self.b = NodeProcess(root / "b", sets=[*FAST, bootstrap]).launch()
        self.c = NodeProcess(root / "c", sets=[*FAST, bootstrap]).launch()
        self.b.wait_ready(timeout=120)
        self.c.wait_ready(timeout=120)
        self.names = {n.peer_id: name for name, n in (("a", self.a), ("b", self.b), ("c", self.c))}
        wait_until(lambda: self.render_peers() >= {self.b.peer_id, self.c.peer_id}, timeout=60,
                   what="A knows B's and C's render offers")

    def render_peers(self) -> set[str]:
        return {p["peer_id"] for p in self.a.get("/api/peers") if p["state"] == "alive"
                and any(o["runtime"] == "render-blender" for o in p["offers"])}

    def stream(self, scene: bytes, first: int, last: int, **fields: Any) -> Any:
        body = {"scene_b64": base64.b64encode(scene).decode(), "frame_start": first, "frame_end": last,
                **JOB, **fields}
        return httpx.stream("POST", self.a.api_url + "/api/render", content=json.dumps(body),
                            headers={"Authorization": f"Bearer {self.a.token}"}, timeout=300)

    def stop(self) -> None:
        stop_all([self.a, self.b, self.c])


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    network = Network(tmp_path_factory.mktemp("render-net"))
    try:
        yield network
    finally:
        network.stop()


@pytest.fixture(scope="module")
def reference(scene: bytes, tmp_path_factory: pytest.TempPathFactory) -> dict[int, str]:
    """Pixel hashes of frames 1-12 rendered by one runtime in one task, in this process."""

    async def render() -> dict[int, str]:
        async with started(tmp_path_factory.mktemp("reference")) as runtime:
            collect = Collector()
            await runtime.run(task(scene, 1, FRAMES, resolution=RES, samples=SAMPLES), collect)
        return {p["frame"]: p["pixels_sha256"] for p in collect.partials}

    return trio.run(render)


def events_of(response: httpx.Response) -> Iterator[dict[str, Any]]:
    assert response.status_code == 200, response.read()
    for line in response.iter_lines():
        if line.strip():
            yield json.loads(line)


def check_frames(events: list[dict[str, Any]], reference: dict[int, str], frames: range) -> Counter[str]:
    """Every frame once, with the reference's pixels; the frames each worker delivered."""
    got = [e for e in events if e["event"] == "frame"]
    assert Counter(e["frame"] for e in got) == Counter(frames), "every frame exactly once"
    for e in got:
        assert pixels_sha256(base64.b64decode(e["png"])) == e["pixels_sha256"] == reference[e["frame"]]
    assert events[-1]["event"] == "done", events[-1]
    return Counter(e["worker"] for e in got)


def test_three_nodes_render_a_range_together(net: Network, scene: bytes, reference: dict[int, str]) -> None:
    with net.stream(scene, 1, FRAMES) as response:
        events = list(events_of(response))
    plan = events[0]
    assert plan["event"] == "plan"
    assert {w["worker"] for w in plan["workers"]} == set(net.names), "A, B and C all render"
    by_worker = check_frames(events, reference, range(1, FRAMES + 1))
    assert len(by_worker) >= 2, f"the frames came from several nodes: {by_worker}"
    done = events[-1]
    assert done["frames"] == FRAMES
    assert sum(w["frames"] for w in done["workers"].values()) == FRAMES
    assert len(done["receipts"]) == sum(1 for e in events if e["event"] == "chunk")
    assert all(r["receipt_id"] for r in done["receipts"]), "every chunk was an ordinary, settled task"


def test_cli_writes_every_frame_and_refuses_bad_input(net: Network, scene: bytes, reference: dict[int, str],
                                                      tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"HYPERION_DATA_DIR": str(net.a.data_dir)}
    blend = tmp_path / "scene.blend"
    blend.write_bytes(scene)
    out = tmp_path / "frames"
    result = runner.invoke(app, ["submit", "render", str(blend), "--frames", "3-8", "--out", str(out),
                                 "--resolution", "64x48", "--samples", str(SAMPLES), "--chunk", "2"], env=env)
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in out.iterdir())
    assert written == [f"frame_{n:04d}.png" for n in range(3, 9)]
    for n in range(3, 9):
        assert pixels_sha256((out / f"frame_{n:04d}.png").read_bytes()) == reference[n]
    assert "6 frames in" in result.output
    assert "receipts" in result.output
    for args, needle in [
        (["missing.blend", "--frames", "1-4"], "cannot read the scene"),
        ([str(blend), "--frames", "5-2"], "must go up"),
        ([str(blend), "--frames", "1-4", "--resolution", "64by48"], "WIDTHxHEIGHT"),
    ]:
        bad = runner.invoke(app, ["submit", "render", *args, "--out", str(tmp_path / "x")], env=env)
        assert bad.exit_code == 2, bad.output
        assert needle in bad.output
        assert "Traceback" not in bad.output


def test_a_client_that_goes_away_stops_the_job(net: Network, scene: bytes) -> None:
    with net.stream(scene, 1, 24, chunk_frames=8) as response:
        for event in events_of(response):
            if event["event"] == "frame":
                break  # and close the connection, with most frames still to render

    def settled() -> bool:
        tasks = net.a.get("/api/tasks?limit=10&role=requester")
        return not any(t["state"] in ("queued", "assigned", "running") for t in tasks)

    wait_until(settled, timeout=30, what="every chunk task of the abandoned job is cancelled")
    tasks = net.a.get("/api/tasks?limit=3&role=requester")
    assert any(t["state"] == "cancelled" for t in tasks), [t["state"] for t in tasks]


def test_killing_a_worker_mid_job_still_yields_every_frame_once(net: Network, scene: bytes,
                                                                reference: dict[int, str]) -> None:
    events: list[dict[str, Any]] = []
    victim = net.c.peer_id
    with net.stream(scene, 1, FRAMES) as response:
        for event in events_of(response):
            events.append(event)
            if event["event"] == "frame" and event["worker"] == victim and net.c.proc.poll() is None:
                net.c.signal(signal.SIGKILL)  # C has just sent a frame: the rest of its share is unrendered
    check_frames(events, reference, range(1, FRAMES + 1))
    moved = [e for e in events if e["event"] == "reassigned" and e["worker"] == victim]
    assert moved, "C's unrendered frames were reassigned"
    assert moved[0]["frames"], moved
    assert events[-1]["workers"][victim]["dropped"]
    net.c.wait(10)
