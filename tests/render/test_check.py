"""Render spot checks with the real Blender: an honest frame passes, cheap work passed off as the work asked
for is caught, and a requester cannot frame a worker with a picture the worker never sent.

Each cheat is a real render: the "worker" renders what it would to save work (fewer samples, fewer pixels,
another frame) and claims the requested task's output for it; ``BlenderRuntime.verify`` renders the sampled
frame of the requested task itself and compares. The figures of every comparison are printed (``-s``): they
are where the tolerances in runtimes/render/check.py come from.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hyperion_node.errors import UserError
from runtimes.render import BlenderRuntime
from runtimes.render.check import DIFFERING_SHARE, MEAN_TOLERANCE, compare
from runtimes.render.png import decode_png
from tests.render.conftest import Collector, started, task

FRAME = 3
HONEST = {"resolution": [48, 36], "samples": 16}


async def render(runtime: BlenderRuntime, scene: bytes, frame: int, **fields: Any) -> tuple[dict[str, Any], bytes]:
    """(the Final's output, the frame's PNG) of one frame rendered as asked."""
    got = Collector()
    final = await runtime.run(task(scene, frame, frame, **fields), got)
    return dict(final.output), bytes(got.partials[0]["png"])


def claim(honest_output: dict[str, Any], frame: int, png: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """A worker's output for ``frame`` that commits to ``png``, and the requester's sample of it."""
    frames = [{**f, "pixels_sha256": decode_png(png).sha256()} if f["frame"] == frame else f
              for f in honest_output["frames"]]
    return {**honest_output, "frames": frames}, {"frame": frame, "png": png}


def png_rgba8(pixels: np.ndarray[Any, Any]) -> bytes:
    """A minimal PNG writer (filter 0), for a cheat's upscaled frame."""
    height, width, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].astype(np.uint8).tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


async def test_honest_frame_passes_with_identical_pixels(scene: bytes, tmp_path: Path) -> None:
    async with started(tmp_path) as runtime:
        payload = task(scene, FRAME, FRAME, **HONEST).payload
        output, png = await render(runtime, scene, FRAME, **HONEST)
        verdict = await runtime.verify(payload, output, {}, sample={"frame": FRAME, "png": png})
    print("honest", dict(verdict.details))
    assert verdict.ok, verdict.reason
    assert verdict.reason == "pixels identical"


@pytest.mark.parametrize("cheat", ["quarter samples", "half samples", "quarter pixels", "another frame"])
async def test_cheap_render_passed_off_as_the_task_is_disputed(cheat: str, scene: bytes, tmp_path: Path) -> None:
    async with started(tmp_path) as runtime:
        payload = task(scene, FRAME, FRAME, **HONEST).payload
        honest_output, _ = await render(runtime, scene, FRAME, **HONEST)
        if cheat == "quarter samples":
            _, png = await render(runtime, scene, FRAME, resolution=HONEST["resolution"], samples=4)
        elif cheat == "half samples":
            _, png = await render(runtime, scene, FRAME, resolution=HONEST["resolution"], samples=8)
        elif cheat == "quarter pixels":
            _, small = await render(runtime, scene, FRAME, resolution=[24, 18], samples=HONEST["samples"])
            image = decode_png(small)
            pixels = np.frombuffer(image.pixels, np.uint8).reshape(image.height, image.width, image.channels)
            png = png_rgba8(pixels.repeat(2, axis=0).repeat(2, axis=1))
        else:
            _, png = await render(runtime, scene, FRAME + 2, **HONEST)
        output, sample = claim(honest_output, FRAME, png)
        verdict = await runtime.verify(payload, output, {}, sample=sample)
    print(cheat, dict(verdict.details))
    assert not verdict.ok
    assert verdict.reason.startswith(f"frame {FRAME}: the frame's pixels differ")
    assert (verdict.details["mean_abs"] > MEAN_TOLERANCE or verdict.details["differing_share"] > DIFFERING_SHARE)


async def test_sample_that_is_not_the_workers_frame_cannot_be_judged(scene: bytes, tmp_path: Path) -> None:
    async with started(tmp_path) as runtime:
        payload = task(scene, FRAME, FRAME, **HONEST).payload
        output, png = await render(runtime, scene, FRAME, **HONEST)
        _, other = await render(runtime, scene, FRAME + 1, **HONEST)
        with pytest.raises(UserError, match="not the frame the output commits to"):
            await runtime.verify(payload, output, {}, sample={"frame": FRAME, "png": other})
        with pytest.raises(UserError, match=r"not \(once\) in the result's output"):
            await runtime.verify(payload, output, {}, sample={"frame": FRAME + 7, "png": png})
        with pytest.raises(UserError, match="needs one of the result's frames"):
            await runtime.verify(payload, output, {}, sample=None)
        with pytest.raises(UserError, match="not a PNG"):
            await runtime.verify(payload, output, {}, sample={"frame": FRAME, "png": b"\x89PNG garbage"})


def test_compare_tolerates_a_level_of_rounding_but_not_noise() -> None:
    rng = np.random.default_rng(7)
    base = rng.integers(0, 256, size=(36, 48, 4), dtype=np.int32)
    ours = decode_png(png_rgba8(base))
    nudged = np.clip(base + rng.integers(-1, 2, size=base.shape), 0, 255)  # +-1 level: rounding
    ok, reason, figures = compare(decode_png(png_rgba8(nudged)), ours)
    assert ok, reason
    assert 0 < figures["mean_abs"] <= MEAN_TOLERANCE
    noisy = np.clip(base + rng.integers(-12, 13, size=base.shape), 0, 255)
    ok, reason, _ = compare(decode_png(png_rgba8(noisy)), ours)
    assert not ok
    assert "differ" in reason
