"""The render-blender runtime through the Runtime protocol, with the real Blender and the generated scene."""

from __future__ import annotations

import dataclasses
import hashlib
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import trio

from hyperion_node.errors import ConfigError, RuntimeUnavailable, UserError
from hyperion_node.testing.process import pid_alive
from runtimes.interface import Runtime, RuntimeContext
from runtimes.render import BlenderRuntime, pixels_sha256
from runtimes.render.exceptions import BadRenderRequest, FrameRangeError, MalformedScene, RenderTimeout
from runtimes.render.png import SIGNATURE
from runtimes.render.runtime import PROBE_CACHE
from tests.render.conftest import HW, Collector, blender_processes_under, started, task


async def test_renders_each_frame_as_a_partial_with_its_pixel_hash(scene: bytes, tmp_path: Path) -> None:
    async with started(tmp_path) as runtime:
        assert isinstance(runtime, Runtime)
        emit = Collector()
        final = await runtime.run(task(scene, 1, 3), emit)
    assert [p["frame"] for p in emit.partials] == [1, 2, 3]
    assert [p["progress"] for p in emit.partials] == [0.3333, 0.6667, 1.0]
    for partial in emit.partials:
        assert partial["png"].startswith(SIGNATURE)
        assert (partial["width"], partial["height"]) == (48, 36)
        # Recomputed from the PNG alone, as a requester or verifier would.
        assert pixels_sha256(partial["png"]) == partial["pixels_sha256"]
    # The cube moves: every frame has other pixels.
    assert len({p["pixels_sha256"] for p in emit.partials}) == 3
    frames = [{k: p[k] for k in ("frame", "pixels_sha256", "png_sha256")} for p in emit.partials]
    assert final.output == {"format": "png", "scene_sha256": final.evidence["scene_sha256"], "frames": frames}
    assert final.work_units == 48 * 36 * 4 * 3
    evidence = final.evidence
    assert evidence["frames"] == frames
    assert (evidence["frame_start"], evidence["frame_end"], evidence["scene_frame_range"]) == (1, 3, [1, 24])
    assert evidence["settings"] == {
        "engine": "CYCLES", "resolution": [48, 36], "threads": 2, "dither": 0.0, "color": "RGBA8",
        "view_transform": "Filmic", "compositing": False, "sequencer": False, "device": "CPU", "samples": 4,
        "seed": 0, "animated_seed": False, "adaptive_sampling": False, "denoising": False, "auto_tile": False,
    }  # fmt: skip
    assert evidence["blender"]["version"] == evidence["blender"]["reported_version"]
    assert len(evidence["blender"]["binary_sha256"]) == 64
    assert evidence["pixel_hash"] == "hyperion-pixels/1"
    # The work directory (scene copy, frames) is gone with the task.
    assert [p for p in (tmp_path / "cache").iterdir() if p.name != PROBE_CACHE] == []


async def test_same_frame_rendered_twice_has_the_same_pixel_hash(scene: bytes, tmp_path: Path) -> None:
    async with started(tmp_path) as runtime:
        first, second = Collector(), Collector()
        await runtime.run(task(scene, 5, 6), first)
    # A new process, frame 6 rendered first this time, and one Cycles thread instead of two: pixels are
    # per-pixel sample sequences, so the thread count (recorded in the evidence) does not change them.
    async with started(tmp_path, threads=1) as runtime:
        await runtime.run(task(scene, 6, 6), second)
        seeded = Collector()
        await runtime.run(task(scene, 6, 6, seed=7), seeded)
    assert first.partials[1]["frame"] == second.partials[0]["frame"] == 6
    assert first.partials[1]["pixels_sha256"] == second.partials[0]["pixels_sha256"]
    assert first.partials[0]["pixels_sha256"] != first.partials[1]["pixels_sha256"]
    # Another seed is other noise: the seed is part of what the hash commits to.
    assert seeded.partials[0]["pixels_sha256"] != second.partials[0]["pixels_sha256"]


async def test_garbage_scene_is_refused_before_blender_starts(tmp_path: Path) -> None:
    async with started(tmp_path) as runtime:
        garbage = task(b"\x00\x01 this is not a blend file " * 40, 1, 1)
        estimate = runtime.estimate(garbage)
        assert not estimate.accepted
        assert "scene is not a .blend file" in estimate.reason
        with pytest.raises(MalformedScene, match=r"scene is not a \.blend file: it starts with"):
            await runtime.run(garbage, Collector())


async def test_truncated_scene_is_reported_in_blenders_words(scene: bytes, tmp_path: Path) -> None:
    # The header is right, so only Blender can tell; it would otherwise go on with its default scene.
    async with started(tmp_path) as runtime:
        assert runtime.active_pids == set()
        with pytest.raises(MalformedScene, match=r"Blender cannot read the scene: .*scene\.blend") as caught:
            await runtime.run(task(scene[:4000], 1, 1), Collector())
    assert isinstance(caught.value, UserError)
    assert str(tmp_path) not in str(caught.value)  # the node's paths are not the requester's business


async def test_scene_hash_and_size_are_checked(scene: bytes, tmp_path: Path) -> None:
    async with started(tmp_path, max_scene_bytes=len(scene) - 1) as runtime:
        assert "over this node's limit" in runtime.estimate(task(scene, 1, 1)).reason
    async with started(tmp_path) as runtime:
        wrong = task(scene, 1, 1, scene_sha256="0" * 64)
        assert "but the payload's scene_sha256 is 000" in runtime.estimate(wrong).reason
        right = task(scene, 1, 2, scene_sha256=hashlib.sha256(scene).hexdigest())
        estimate = runtime.estimate(right)
        assert estimate.accepted
        assert estimate.work_units == 48 * 36 * 4 * 2


async def test_frame_ranges_out_of_bounds_are_refused(scene: bytes, tmp_path: Path) -> None:
    async with started(tmp_path) as runtime:
        backwards = task(scene, 5, 4)
        assert "frame_end 4 is before frame_start 5" in runtime.estimate(backwards).reason
        with pytest.raises(FrameRangeError, match="frame_end 4 is before frame_start 5"):
            await runtime.run(backwards, Collector())
        # Only Blender knows the scene's range: the driver refuses it before rendering anything.
        emit = Collector()
        with pytest.raises(FrameRangeError, match="frames 20-30 are outside the scene's range 1-24"):
            await runtime.run(task(scene, 20, 30), emit)
        assert emit.partials == []


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"resolution": [48]}, "'resolution' must be \\[width, height\\]"),
        ({"resolution": [0, 36]}, "'resolution' must be"),
        ({"samples": 0}, "'samples' must be 1 to"),
        ({"engine": "BLENDER_EEVEE"}, "engine 'BLENDER_EEVEE' is not offered here"),
        ({"frame_start": "1"}, "'frame_start' must be an integer"),
        ({"scene": "scene.blend"}, "'scene' must be the .blend file's bytes"),
    ],
)
async def test_bad_payload_fields_are_named(scene: bytes, tmp_path: Path, fields: dict[str, object],
                                            message: str) -> None:
    async with started(tmp_path) as runtime:
        bad = task(scene, 1, 1, **fields)
        assert not runtime.estimate(bad).accepted
        with pytest.raises(BadRenderRequest, match=message):
            await runtime.run(bad, Collector())


@pytest.mark.parametrize("setting", ["/nonexistent/blender", "no-such-blender-binary"])
async def test_missing_blender_makes_the_runtime_unavailable_with_the_fix(setting: str, tmp_path: Path) -> None:
    runtime = BlenderRuntime(RuntimeContext(tmp_path, tmp_path, {"blender": setting}, HW))
    with pytest.raises(RuntimeUnavailable) as caught:
        await runtime.start()
    message = caught.value.one_line()
    assert repr(setting) in message
    assert "install Blender: apt-get install blender" in message
    assert "runtimes.render-blender.blender" in message
    assert runtime.offers(None) == []


async def test_cancellation_kills_blender(scene: bytes, tmp_path: Path) -> None:
    async with started(tmp_path) as runtime:
        first_frame = trio.Event()
        pids: list[int] = []

        async def emit(partial: object) -> None:
            pids.extend(runtime.active_pids)
            first_frame.set()

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(runtime.run, task(scene, 1, 24, samples=64), emit)
                await first_frame.wait()
                nursery.cancel_scope.cancel()
        [pid] = pids
        assert not pid_alive(pid)
        assert not pid_alive(pid, group=True)
        assert blender_processes_under(tmp_path) == []
        assert runtime.active_pids == set()
        assert [p for p in (tmp_path / "cache").iterdir() if p.name != PROBE_CACHE] == []


async def test_a_silent_blender_is_killed_after_the_frame_timeout(scene: bytes, tmp_path: Path) -> None:
    async with started(tmp_path, frame_timeout_s=1.0) as runtime:
        # 320x240 at 2048 samples is minutes of work on any CPU: the first frame outlasts the 1 s limit.
        with trio.fail_after(60), pytest.raises(RenderTimeout, match="silent for 1 s while rendering a frame"):
            await runtime.run(task(scene, 1, 2, resolution=[320, 240], samples=2048), Collector())
        assert runtime.active_pids == set()
        assert blender_processes_under(tmp_path) == []


async def test_a_task_past_its_deadline_stops(scene: bytes, tmp_path: Path) -> None:
    async with started(tmp_path) as runtime:
        late = dataclasses.replace(task(scene, 1, 24), deadline=trio.current_time() + 0.2)
        with trio.fail_after(30), pytest.raises(RenderTimeout, match="passed its deadline"):
            await runtime.run(late, Collector())
        assert runtime.active_pids == set()
        assert blender_processes_under(tmp_path) == []


async def test_benchmark_offer_and_estimate(scene: bytes, tmp_path: Path) -> None:
    async with started(tmp_path, price_per_pixel_sample=1e-9) as runtime:
        result = await runtime.benchmark()
        assert (result.runtime, result.unit) == ("render-blender", "pixel-sample")
        assert result.throughput > 0
        assert result.seconds < 30
        [offer] = runtime.offers(result)
        assert (offer.item, offer.unit, offer.capacity) == ("blender-cycles", "pixel-sample", 1)
        assert (offer.throughput, offer.price_per_unit) == (result.throughput, 1e-9)
        assert offer.details["blender"]["version"] == runtime.build.version
        assert runtime.version.startswith(f"2+blender.{runtime.build.version}.")
        estimate = runtime.estimate(task(scene, 1, 10))
        assert estimate.accepted
        assert estimate.seconds is not None
        assert estimate.seconds > result.details["fixed_seconds"]


def test_settings_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[runtimes.render-blender\]: blendr: unknown key"):
        BlenderRuntime(RuntimeContext(tmp_path, tmp_path, {"blendr": "x"}, HW))
    with pytest.raises(ConfigError, match="frame_timeout_s: got 0"):
        BlenderRuntime(RuntimeContext(tmp_path, tmp_path, {"frame_timeout_s": 0}, HW))
    with pytest.raises(ConfigError, match="engines"):
        BlenderRuntime(RuntimeContext(tmp_path, tmp_path, {"engines": "CYCLES"}, HW))


def test_the_entry_point_names_this_runtime() -> None:
    [ep] = [ep for ep in entry_points(group="hyperion.runtimes") if ep.name == "render-blender"]
    assert ep.load() is BlenderRuntime


async def test_a_scene_that_cannot_render_says_why(scene_without_camera: bytes, tmp_path: Path) -> None:
    async with started(tmp_path) as runtime:
        with pytest.raises(BadRenderRequest, match=r"Blender cannot render frame 1 of this scene: .*camera"):
            await runtime.run(task(scene_without_camera, 1, 2), Collector())
