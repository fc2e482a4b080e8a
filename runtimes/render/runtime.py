"""Rendering with Blender's Cycles on the CPU: the ``render-blender`` runtime.

One task is one scene and one inclusive frame range (the payload is described in
``runtimes.render.request``). Blender runs as a subprocess per task with the committed driver script
(``runtimes/render/driver.py``), which pins the settings that make pixels reproducible: fixed seed,
adaptive sampling off, denoising off, CPU device, fixed thread count, no dither, no stamp.

Each finished frame is streamed as a Partial::

    {"frame", "png" (bytes), "pixels_sha256", "png_sha256", "width", "height", "render_seconds", "progress"}

The PNG bytes travel only there, once; the Final repeats each frame's hashes so the requester can check
that it holds every frame and that each PNG decodes to the committed pixels::

    output   {"format": "png", "scene_sha256", "frames": [{"frame", "pixels_sha256", "png_sha256"}, ...]}
    evidence {"scene_sha256", "frame_start", "frame_end", "resolution", "engine", "samples", "seed",
              "frames" (as in output), "pixel_hash" (the hash's definition, runtimes.render.png),
              "settings" (what the driver pinned, as Blender reported it), "scene_frame_range",
              "blender" {"version", "build_hash", "build_date", "binary_sha256"}, "runtime_version"}

Work units are pixels x samples x frames. Cancellation or a timeout kills Blender's process group.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog
import trio

from hyperion_node.errors import InternalError, UserError
from runtimes.interface import (
    BenchmarkResult,
    Emit,
    Estimate,
    Final,
    Offer,
    Partial,
    RuntimeContext,
    Tally,
    Task,
    Verdict,
)
from runtimes.render.blender import BlenderBuild, probe
from runtimes.render.check import SampleRejected, claimed_sample, compare
from runtimes.render.exceptions import (
    BadRenderRequest,
    BlenderFailed,
    FrameRangeError,
    HyperionError,
    MalformedScene,
    RenderTimeout,
    UnsafeScene,
)
from runtimes.render.png import HASH_DOMAIN, DecodedImage, decode_png
from runtimes.render.process import DriverExit, run_driver
from runtimes.render.request import RUNTIME_NAME, RenderRequest, RenderSettings

# Bumped when a change here alters throughput or output, so cached benchmarks are redone.
# 2: the sandbox (driver.py) turns compositing and the sequencer off, which changes frames that used them.
RUNTIME_REVISION = "2"
DRIVER = Path(__file__).with_name("driver.py")
TEST_SCENE_SCRIPT = Path(__file__).parent / "scenes" / "make_test_scene.py"
# The cached Blender probe (see blender.probe), kept beside the per-task work directories in the cache dir.
PROBE_CACHE = "blender-build.json"
# The benchmark: 3 frames of the test scene at 128x96 and 16 samples: ~5 s on 2 cores with Blender's start,
# after ~2 s to build the scene.
# The first frame pays Cycles' kernel and scene set-up, so throughput is taken from the others.
BENCH_RESOLUTION, BENCH_SAMPLES, BENCH_FRAMES = (128, 96), 16, (1, 3)
# What a requester can do about a refused scene (Blender 3.4's menu names).
UNSAFE_SCENE_HINT = ("pack external files into the .blend (File > External Data > Pack Resources) and make "
                     "linked data local; disk caches, fluid domains and OSL or Freestyle scripts are not rendered "
                     "here")
# Blender's messages when it cannot read a .blend, as Blender 3.4 prints them: "File format is not supported
# in file ..." (garbage), "Failed to read blend file ...: Missing DNA block" (truncated). The driver reports
# them itself; this finds them in Blender's last output when it died while reading (a crash in the reader).
_SCENE_READ_ERROR = re.compile(r"^Error: .*(blend file|File format|Unable to open|Cannot read)", re.IGNORECASE)


def blender_command(blender: str, scene: str, job: dict[str, Any]) -> list[str]:
    """The command line of one task; ``scripts/bench_render.py`` runs it directly as the baseline.

    --factory-startup: no user preferences or add-ons, so two nodes' Blenders behave alike.
    --disable-autoexec: a scene from a peer may carry Python (drivers, registered scripts); never run it.
    The scene is not on the command line: Blender would evaluate it, opening the files it names, before
    the driver could run. The driver opens it with its sandbox in place (see driver.py's docstring).
    """
    return [
        blender, "--background", "--factory-startup", "--disable-autoexec", "--python-exit-code", "2",
        "--python", str(DRIVER), "--", json.dumps({**job, "scene": scene}),
    ]  # fmt: skip


async def make_test_scene(blender: str, out: Path, *, timeout_s: float = 60.0) -> bytes:
    """Build the committed test scene (runtimes/render/scenes/make_test_scene.py) into ``out``; its bytes."""
    command = [blender, "--background", "--factory-startup", "--python-exit-code", "2",
               "--python", str(TEST_SCENE_SCRIPT), "--", str(out)]  # fmt: skip
    await trio.Path(out).parent.mkdir(parents=True, exist_ok=True)
    with trio.fail_after(timeout_s):
        done = await trio.run_process(command, capture_stdout=True, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise BlenderFailed(f"building the test scene failed ({done.returncode}): {done.stdout.decode()[-500:]}")
    return await trio.Path(out).read_bytes()


class BlenderRuntime:
    """The ``render-blender`` runtime; see the module docstring and ``runtimes.interface.Runtime``."""

    name = RUNTIME_NAME

    @staticmethod
    def tally(payload: Mapping[str, Any]) -> Tally:
        """The requester's count of a result, to check a worker's bill (``runtimes.interface.Tally``)."""
        from runtimes.render.billing import RenderTally

        return RenderTally(payload)

    @staticmethod
    def check_share(payload: Mapping[str, Any], output: Mapping[str, Any]) -> float:
        """A spot check renders one frame of the job again: one frame's share of the work."""
        frames = output.get("frames")
        return 1.0 / max(1, len(frames)) if isinstance(frames, list) else 1.0

    def __init__(self, context: RuntimeContext) -> None:
        self._context = context
        self._settings = RenderSettings.from_mapping(context.settings)
        self._threads = self._settings.threads or max(1, context.hardware.cpu_cores or os.cpu_count() or 1)
        self._build: BlenderBuild | None = None
        self._benchmark: BenchmarkResult | None = None
        # Capacity 1: Cycles already uses every thread it is given; a second render would only share them.
        self._limiter = trio.CapacityLimiter(1)
        self.active_pids: set[int] = set()  # Blender processes running now (status, and the tests)
        self._log = structlog.get_logger("runtimes.render")

    @property
    def version(self) -> str:
        if self._build is None:
            return RUNTIME_REVISION
        return f"{RUNTIME_REVISION}+blender.{self._build.version}.{self._build.binary_sha256[:12]}"

    @property
    def build(self) -> BlenderBuild:
        if self._build is None:
            raise InternalError("the render runtime is used before start()")
        return self._build

    async def start(self) -> None:
        self._build = await probe(self._settings.blender, self._context.cache_dir / PROBE_CACHE)
        self._log.info("render runtime started", blender=self._build.path, version=self._build.version,
                       binary_sha256=self._build.binary_sha256[:12], threads=self._threads)

    async def benchmark(self) -> BenchmarkResult:
        scene_path = self._context.cache_dir / "benchmark-scene.blend"
        scene = await make_test_scene(self.build.path, scene_path)
        await trio.Path(scene_path).unlink()
        (width, height), (first, last) = BENCH_RESOLUTION, BENCH_FRAMES
        payload = {"scene": scene, "frame_start": first, "frame_end": last,
                   "resolution": [width, height], "samples": BENCH_SAMPLES}  # fmt: skip
        seconds_per_frame: list[float] = []

        async def collect(partial: Partial) -> None:
            seconds_per_frame.append(float(partial.data["render_seconds"]))

        started = time.perf_counter()
        final = await self.run(Task("benchmark", self.name, payload), collect)
        seconds = time.perf_counter() - started
        steady = seconds_per_frame[1:]
        throughput = width * height * BENCH_SAMPLES * len(steady) / sum(steady)
        return BenchmarkResult(
            runtime=self.name,
            version=self.version,
            unit="pixel-sample",
            throughput=throughput,
            seconds=seconds,
            details={
                "engine": "CYCLES", "resolution": [width, height], "samples": BENCH_SAMPLES,
                "frames": last - first + 1, "threads": self._threads,
                # What a task costs besides its pixel-samples: Blender's start, scene load, first-frame set-up.
                "fixed_seconds": max(0.0, seconds - final.work_units / throughput),
                "blender": self.build.describe(),
            },
        )  # fmt: skip

    def offers(self, benchmark: BenchmarkResult | None) -> list[Offer]:
        self._benchmark = benchmark
        if self._build is None:
            return []
        return [
            Offer(
                runtime=self.name,
                item=f"blender-{engine.lower().removeprefix('blender_')}",
                unit="pixel-sample",
                price_per_unit=self._settings.price_per_pixel_sample,
                capacity=1,
                # Measured with Cycles only; another engine's speed is unknown until it is benchmarked.
                throughput=benchmark.throughput if benchmark is not None and engine == "CYCLES" else None,
                details={
                    "engine": engine, "device": "CPU", "threads": self._threads, "output": "png-rgba8",
                    "max_scene_bytes": self._settings.max_scene_bytes, "max_pixels": self._settings.max_pixels,
                    "blender": self._build.describe(),
                },
            )
            for engine in self._settings.engines
        ]  # fmt: skip

    def estimate(self, task: Task) -> Estimate:
        """Validates the payload (hashing the scene: ~0.2 s for 64 MiB) without starting Blender."""
        if self._build is None:
            return Estimate(accepted=False, reason="the render runtime is not started")
        try:
            request = RenderRequest.from_payload(task.payload, self._settings)
        except BadRenderRequest as exc:
            return Estimate(accepted=False, reason=exc.one_line())
        seconds = None
        if self._benchmark is not None and self._benchmark.throughput > 0 and request.engine == "CYCLES":
            fixed = float(self._benchmark.details.get("fixed_seconds", 0.0))
            seconds = fixed + request.work_units / self._benchmark.throughput
        return Estimate(accepted=True, work_units=request.work_units, seconds=seconds)

    async def run(self, task: Task, emit: Emit) -> Final:
        build = self.build
        # In a thread: hashing a 64 MiB scene takes ~0.2 s, too long to hold the event loop.
        request = await trio.to_thread.run_sync(RenderRequest.from_payload, task.payload, self._settings)
        async with self._limiter:
            workdir = await trio.to_thread.run_sync(self._prepare, request)
            try:
                deadline = task.deadline if task.deadline is not None else math.inf
                with trio.CancelScope(deadline=deadline):
                    return await self._render(request, build, workdir, emit)
                raise RenderTimeout(f"task {task.task_id} passed its deadline before frame {request.frame_end}")
            finally:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self._cleanup, workdir)

    def _prepare(self, request: RenderRequest) -> Path:
        self._context.cache_dir.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="render-", dir=self._context.cache_dir))
        (workdir / "frames").mkdir()
        (workdir / "scene.blend").write_bytes(request.scene)
        return workdir

    def _cleanup(self, workdir: Path) -> None:
        try:
            shutil.rmtree(workdir)
        except OSError as exc:  # the task's result stands; a leftover directory is only logged
            self._log.warning("render workdir not removed", path=str(workdir), error=str(exc))

    async def _render(self, request: RenderRequest, build: BlenderBuild, workdir: Path, emit: Emit) -> Final:
        scene_path = str(workdir / "scene.blend")
        job = request.driver_job(scene_path=scene_path, output_dir=str(workdir / "frames"), threads=self._threads)
        scene_info: dict[str, Any] = {}
        frames: list[dict[str, Any]] = []
        done = False

        async def on_event(event: dict[str, Any]) -> None:
            nonlocal done
            kind = event.get("event")
            if kind == "scene":
                scene_info.update(event)
                if event.get("sandbox"):
                    self._log.info("render sandbox cleared", scene_sha256=request.scene_sha256[:16],
                                   cleared=event["sandbox"])
            elif kind == "frame":
                png, image = await trio.to_thread.run_sync(_load_frame, Path(event["path"]))
                if (image.width, image.height) != (request.width, request.height):
                    raise BlenderFailed(f"frame {event['frame']} is {image.width}x{image.height}, "
                                        f"not the {request.width}x{request.height} asked for")
                record = {"frame": int(event["frame"]), "pixels_sha256": image.sha256(),
                          "png_sha256": hashlib.sha256(png).hexdigest()}  # fmt: skip
                frames.append(record)
                await emit(Partial({**record, "png": png, "width": image.width, "height": image.height,
                                    "render_seconds": float(event["seconds"]),
                                    "progress": round(len(frames) / request.frames, 4)}))  # fmt: skip
            elif kind == "error":
                raise _driver_error(str(event.get("kind")), str(event.get("message")))
            elif kind == "done":
                done = True

        pids: list[int] = []

        def spawned(pid: int) -> None:
            pids.append(pid)
            self.active_pids.add(pid)

        try:
            exit_ = await run_driver(
                blender_command(build.path, scene_path, job), cwd=str(workdir), on_event=on_event,
                load_timeout_s=self._settings.load_timeout_s, frame_timeout_s=self._settings.frame_timeout_s,
                on_spawn=spawned,
            )  # fmt: skip
        finally:
            self.active_pids.difference_update(pids)  # run_driver has reaped it, whatever happened
        if not done or len(frames) != request.frames:
            raise _exit_error(exit_, scene_path, scene_info, len(frames), request)
        return Final(
            output={"format": "png", "scene_sha256": request.scene_sha256, "frames": frames},
            evidence={
                "scene_sha256": request.scene_sha256, "frame_start": request.frame_start,
                "frame_end": request.frame_end, "resolution": [request.width, request.height],
                "engine": request.engine, "samples": request.samples, "seed": request.seed, "frames": frames,
                "pixel_hash": HASH_DOMAIN.decode().strip(), "settings": scene_info.get("settings", {}),
                "scene_frame_range": [scene_info.get("frame_start"), scene_info.get("frame_end")],
                "blender": {**build.describe(), "reported_version": scene_info.get("version")},
                "runtime_version": self.version,
            },
            work_units=request.work_units,
        )  # fmt: skip

    async def verify(self, payload: Mapping[str, Any], output: Mapping[str, Any], evidence: Mapping[str, Any],
                     *, sample: Mapping[str, Any] | None = None, chunks: int = 1) -> Verdict:
        """Spot check of another worker's render: its sampled frame rendered here again and compared
        (``runtimes.render.check``). ``UserError`` when the sample cannot be judged. ``chunks`` is an inference
        check's (``runtimes.interface.Verifier``): a render check is one frame."""
        try:
            claimed = await trio.to_thread.run_sync(claimed_sample, output, sample)
        except SampleRejected as exc:
            raise UserError(str(exc)) from exc
        rendered: list[bytes] = []

        async def keep(partial: Partial) -> None:
            rendered.append(bytes(partial.data["png"]))

        one = {**payload, "frame_start": claimed.frame, "frame_end": claimed.frame}
        await self.run(Task(f"verify-frame-{claimed.frame}", self.name, one), keep)
        ours = await trio.to_thread.run_sync(decode_png, rendered[0])
        ok, reason, figures = await trio.to_thread.run_sync(compare, claimed.image, ours)
        return Verdict(ok, reason if ok else f"frame {claimed.frame}: {reason}", {"frame": claimed.frame, **figures})

    async def aclose(self) -> None:
        # Nothing outlives a task: each run() owns its Blender process and work directory.
        self.active_pids.clear()


def _load_frame(path: Path) -> tuple[bytes, DecodedImage]:
    png = path.read_bytes()
    image = decode_png(png)
    path.unlink()  # the frame is in memory and on its way to the requester; free the disk now
    return png, image


def _driver_error(kind: str, message: str) -> BadRenderRequest:
    """The driver's refusals are all about the request: its range, engine, or a scene that will not render
    or that the sandbox refuses."""
    if kind == "frame_range":
        return FrameRangeError(message)
    if kind == "scene":
        return MalformedScene(message)
    if kind == "unsafe":
        return UnsafeScene(message, hint=UNSAFE_SCENE_HINT)
    return BadRenderRequest(message)


def _exit_error(exit_: DriverExit, scene_path: str, scene_info: dict[str, Any], rendered: int,
                request: RenderRequest) -> HyperionError:
    """Why Blender stopped early: a scene it could not read (the user's), else a failure of this node."""
    if not scene_info:
        for line in exit_.tail:
            if _SCENE_READ_ERROR.search(line):
                return MalformedScene("Blender cannot read the scene: " + line.removeprefix("Error: ").replace(
                    scene_path, "scene.blend"))
        return BlenderFailed(f"Blender stopped before loading the scene: {exit_.describe()}")
    return BlenderFailed(f"Blender stopped after {rendered} of {request.frames} frames: {exit_.describe()}")
