#!/usr/bin/env python3
"""Per-frame overhead of the render-blender runtime against the same Blender command run directly.

    .venv/bin/python scripts/bench_render.py                      # 160x120, 16 samples, 6 frames, 5 rounds
    .venv/bin/python scripts/bench_render.py --resolution 320x240 --samples 32 --frames 4 --rounds 3
    .venv/bin/python scripts/bench_render.py --distributed --frames 24 --rounds 3  # 1 vs 2 vs 3 node processes

Both sides render the same frames of the generated test scene (runtimes/render/scenes/make_test_scene.py)
with the exact command line the runtime builds (``blender_command``): "direct" runs it with
``subprocess.run`` and discards its output; "runtime" is ``BlenderRuntime.run`` through the Runtime
interface -- payload validation and scene hashing, writing the scene, reading Blender's events, reading,
decoding and hashing every PNG, emitting a Partial per frame (to a sink), cleaning up. Rounds alternate
which side goes first, so drift on a shared machine falls on both. The ratio is runtime / direct wall
time for the whole task, and the same for CPU time (Blender's, as a child, plus this process's own), which
other work on a shared machine disturbs far less; "ms/frame" divides the difference by the frame count.
Target: ratio <= 1.03.

``--distributed`` measures a whole job instead: the wall time of POST /api/render for the frame range on one
node, then split across two and three node processes on this machine (rounds rotate the order), each with
its benchmark on so the planner has measured speeds. Every process shares this machine's cores, so the
speed-up is bounded by the core count (printed), not by the number of nodes.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtimes.interface import HardwareSummary, Partial, RuntimeContext, Task  # noqa: E402
from runtimes.render import BlenderRuntime  # noqa: E402
from runtimes.render.runtime import blender_command, make_test_scene  # noqa: E402


@dataclass(frozen=True)
class Sample:
    wall: float  # seconds
    cpu: float  # CPU seconds: Blender's (children) plus this process's own (event handling, PNG decoding)
    own: float  # CPU seconds of this process alone: the runtime's own work, none of Blender's


@dataclass(frozen=True)
class Usage:
    """CPU time is the steadier figure on a shared machine: other work stretches wall time, not our CPU."""

    wall: float
    cpu: float
    own: float

    @classmethod
    def now(cls) -> Usage:
        me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        own = me.ru_utime + me.ru_stime
        return cls(time.perf_counter(), own + children.ru_utime + children.ru_stime, own)

    def since(self) -> Sample:
        end = Usage.now()
        return Sample(end.wall - self.wall, end.cpu - self.cpu, end.own - self.own)


def parse_resolution(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    return int(width), int(height)


async def bench(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-render-") as tmp:
        await bench_in(Path(tmp), args)


async def bench_in(work: Path, args: argparse.Namespace) -> None:
    hardware = HardwareSummary("bench", cpu_cores=args.threads, ram_total_bytes=0, ram_available_bytes=0)
    runtime = BlenderRuntime(RuntimeContext(work, work / "cache", {"threads": args.threads}, hardware))
    await runtime.start()
    scene = await make_test_scene(runtime.build.path, work / "scene.blend")
    width, height = args.resolution
    first, last = 1, args.frames
    payload = {"scene": scene, "frame_start": first, "frame_end": last, "resolution": [width, height],
               "samples": args.samples}  # fmt: skip
    (work / "direct").mkdir()
    job = {"scene": str(work / "scene.blend"), "output_dir": str(work / "direct"), "threads": args.threads,
           "frame_start": first, "frame_end": last, "width": width, "height": height, "engine": "CYCLES",
           "samples": args.samples, "seed": 0}  # fmt: skip
    command = blender_command(runtime.build.path, str(work / "scene.blend"), job)

    async def sink(partial: Partial) -> None:
        del partial

    def direct() -> Sample:
        before = Usage.now()
        subprocess.run(command, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        return before.since()

    async def through_runtime() -> Sample:
        before = Usage.now()
        await runtime.run(Task("bench", runtime.name, payload), sink)
        return before.since()

    print(f"Blender {runtime.build.version} ({runtime.build.binary_sha256[:12]}), Cycles CPU, {args.threads} threads;"
          f" {width}x{height}, {args.samples} samples, frames {first}-{last}, {args.rounds} rounds (+1 warm-up)")
    direct(), await through_runtime()  # warm-up: page cache, Cycles kernel load
    rows: list[tuple[Sample, Sample]] = []
    for round_ in range(args.rounds):
        # ABBA order: a trend in the machine's load (other work starting, stopping) falls on both sides.
        if round_ % 2 == 0:
            d = direct()
            r = await through_runtime()
        else:
            r = await through_runtime()
            d = direct()
        rows.append((d, r))
    n = args.frames
    print(f"{'round':>6} {'direct s':>9} {'runtime s':>10} {'ratio':>6} {'ms/frame':>9}   "
          f"{'direct cpu':>10} {'runtime cpu':>11} {'ratio':>6} {'ms/frame':>9}")

    def line(label: str, d: Sample, r: Sample, wall_ratio: float, cpu_ratio: float) -> None:
        print(f"{label:>6} {d.wall:>9.3f} {r.wall:>10.3f} {wall_ratio:>6.3f} {(r.wall - d.wall) / n * 1000:>9.1f}   "
              f"{d.cpu:>10.3f} {r.cpu:>11.3f} {cpu_ratio:>6.3f} {(r.cpu - d.cpu) / n * 1000:>9.1f}")

    for i, (d, r) in enumerate(rows, 1):
        line(str(i), d, r, r.wall / d.wall, r.cpu / d.cpu)
    med = Sample(*(statistics.median(getattr(d, f) for d, _ in rows) for f in ("wall", "cpu", "own")))
    rmed = Sample(*(statistics.median(getattr(r, f) for _, r in rows) for f in ("wall", "cpu", "own")))
    wall_ratio = statistics.median(r.wall / d.wall for d, r in rows)
    cpu_ratio = statistics.median(r.cpu / d.cpu for d, r in rows)
    line("median", med, rmed, wall_ratio, cpu_ratio)
    own_share = statistics.median(r.own / (r.cpu - r.own) for _, r in rows)
    print(f"ratio runtime/direct: wall {wall_ratio:.3f}, CPU {cpu_ratio:.3f} (target <= 1.03); "
          f"per frame: direct {med.wall / n * 1000:.0f} ms wall, runtime {rmed.wall / n * 1000:.0f} ms wall")
    print(f"the runtime's own CPU (this process: events, PNG decode and hash): {rmed.own / n * 1000:.1f} ms/frame, "
          f"{own_share:.2%} of Blender's CPU")
    await runtime.aclose()


DISTRIBUTED_SETS = ["p2p.mdns=false", "p2p.heartbeat_interval_s=0.5", 'runtimes.disabled=["inference", "zk-groth16"]']


def bench_distributed(args: argparse.Namespace) -> None:
    import base64
    import json
    import os
    import shutil

    import httpx

    from hyperion_node.testing.process import NodeProcess, wait_until

    blender = shutil.which("blender")
    if blender is None:
        sys.exit("blender is not on PATH: run scripts/setup.sh")
    width, height = args.resolution
    with tempfile.TemporaryDirectory(prefix="bench-render-dist-") as tmp:
        root = Path(tmp)
        scene = trio.run(make_test_scene, blender, root / "scene.blend")
        first = NodeProcess(root / "n0", sets=DISTRIBUTED_SETS, quiet=True).start(timeout=180)
        boot = f'p2p.bootstrap=["{first.p2p_addr()}"]'
        rest = [NodeProcess(root / f"n{i}", sets=[*DISTRIBUTED_SETS, boot], quiet=True).launch() for i in (1, 2)]
        nodes = [first, *rest]
        try:
            for node in rest:
                node.wait_ready(timeout=180)
            wait_until(lambda: sum(1 for p in first.get("/api/peers") if p["state"] == "alive" and any(
                o["runtime"] == "render-blender" and o["throughput"] for o in p["offers"])) >= 2,
                timeout=120, what="the first node knows two measured render peers")
            body = {"scene_b64": base64.b64encode(scene).decode(), "frame_start": 1, "frame_end": args.frames,
                    "resolution": [width, height], "samples": args.samples, "timeout_s": 1800}

            def job(workers: int) -> tuple[float, dict[str, object], list[dict[str, object]]]:
                started = time.perf_counter()
                plan: list[dict[str, object]] = []
                with httpx.stream("POST", first.api_url + "/api/render", json={**body, "workers": workers},
                                  headers={"Authorization": f"Bearer {first.token}"}, timeout=1800) as answer:
                    for line in answer.iter_lines():
                        event = json.loads(line) if line.strip() else {}
                        if event.get("event") == "plan":
                            plan = list(event["workers"])  # type: ignore[arg-type]
                        if event.get("event") in ("done", "error"):
                            if event["event"] == "error":
                                sys.exit(f"the job failed: {event}")
                            return time.perf_counter() - started, event, plan
                sys.exit("the job ended without a summary")

            print(f"{os.cpu_count()} cores; {args.frames} frames of the test scene at {width}x{height}, "
                  f"{args.samples} samples; Blender threads per node: all cores; {args.rounds} rounds")
            walls: dict[int, list[float]] = {1: [], 2: [], 3: []}
            for round_ in range(args.rounds):
                order = [1, 2, 3] if round_ % 2 == 0 else [3, 2, 1]
                for workers in order:
                    wall, done, plan = job(workers)
                    walls[workers].append(wall)
                    per = {str(p)[-6:]: w["frames"] for p, w in done["workers"].items()}  # type: ignore[attr-defined]
                    chunks = [w["chunk_frames"] for w in plan]
                    print(f"round {round_ + 1}  {workers} node(s)  {wall:7.2f} s  frames per node {per}  "
                          f"chunk frames {chunks}  stolen {done['stolen']}")
            base = statistics.median(walls[1])
            for workers in (1, 2, 3):
                med = statistics.median(walls[workers])
                print(f"median {workers} node(s): {med:.2f} s  speed-up {base / med:.2f}x over 1 node "
                      f"({args.frames / med:.2f} frames/s)")
        finally:
            for node in nodes:
                node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolution", type=parse_resolution, default=(160, 120), help="WxH (160x120)")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="Cycles threads, both sides (2)")
    parser.add_argument("--distributed", action="store_true", help="a whole job on 1, 2 and 3 node processes")
    args = parser.parse_args()
    if args.distributed:
        bench_distributed(args)
    else:
        trio.run(bench, args)


if __name__ == "__main__":
    main()
