"""Spot-checking a render: one frame rendered again and compared with the worker's, decoded pixel by pixel.

Pure code (numpy, no Blender, no trio); ``BlenderRuntime.verify`` renders the frame and calls ``compare``.

The requester picks the frame (uniformly, while the frames arrive, so the worker cannot know which one
will be checked) and sends that frame's PNG along with the check. Before anything is rendered, the PNG must
decode to the pixels the output commits to (``pixels_sha256``): a requester cannot frame a worker with a
picture the worker never sent.

Identical pixels pass at once; that is what the driver's pinned settings give on one Blender build (fixed
seed, no adaptive sampling, no denoising). Another machine's Blender, or another CPU's float rounding, may
move a few values by a level or two, so the comparison has a tolerance. What it must still catch is cheap
work passed off as the work asked for: fewer samples than paid for, a lower resolution scaled up, another
frame or scene. Measured on the committed test scene, frame 3 at 48x36 and 16 samples, Blender 3.4
(tests/render/test_check.py prints the figures with ``-s``): two honest renders on one machine are
identical. Mean |difference| per channel value (alpha included) and share of pixels off by more than 8
levels, for each cheat: 4 samples 3.09 and 19%; 8 samples 1.75 and 9.9%; a quarter of the pixels scaled up
4.34 and 22%; frame 5 for frame 3 (the cube moves a little) 1.45 and 6.6%. Every value moved by one level
either way gives a mean of 0.66 and no differing pixel. The bounds sit between the two: a cheat that saves
half the samples or more is caught by both; one that saves a sample or two may pass, and saves little.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtimes.render.exceptions import MalformedImage
from runtimes.render.png import DecodedImage, decode_png

MEAN_TOLERANCE = 1.0  # mean |worker - verifier| per channel value, in 8-bit levels
PIXEL_TOLERANCE = 8  # a pixel "differs" when one of its channels is off by more than this many levels
DIFFERING_SHARE = 0.01  # at most this share of pixels may differ


class SampleRejected(Exception):
    """The requester's sample frame cannot be judged: it is not what the worker's output commits to."""


@dataclass(frozen=True)
class Sample:
    frame: int
    image: DecodedImage
    pixels_sha256: str  # what the output commits to for this frame


def claimed_sample(output: Mapping[str, Any], sample: Mapping[str, Any] | None) -> Sample:
    """The sampled frame, decoded, after checking it against the output's commitment."""
    if sample is None:
        raise SampleRejected("a render check needs one of the result's frames (a sample) to compare with")
    frame, png = sample.get("frame"), sample.get("png")
    if not isinstance(frame, int) or isinstance(frame, bool) or not isinstance(png, bytes | bytearray):
        raise SampleRejected("the sample must be {'frame': int, 'png': bytes}")
    frames = output.get("frames")
    committed = [f for f in frames if isinstance(f, Mapping) and f.get("frame") == frame] if isinstance(
        frames, Sequence) else []
    if len(committed) != 1 or not isinstance(committed[0].get("pixels_sha256"), str):
        raise SampleRejected(f"frame {frame} is not (once) in the result's output")
    try:
        image = decode_png(bytes(png))
    except MalformedImage as exc:
        raise SampleRejected(f"the sampled frame is not a PNG this runtime reads: {exc}") from exc
    expected = str(committed[0]["pixels_sha256"])
    if image.sha256() != expected:
        raise SampleRejected(f"the sampled PNG of frame {frame} is not the frame the output commits to")
    return Sample(frame, image, expected)


def _levels(image: DecodedImage) -> np.ndarray[Any, np.dtype[np.int32]]:
    """Pixels as (height, width, channels) in 8-bit levels, whatever the bit depth."""
    dtype = np.dtype(">u2") if image.bit_depth == 16 else np.dtype(np.uint8)
    values = np.frombuffer(image.pixels, dtype=dtype).astype(np.int32)
    if image.bit_depth == 16:
        values = values >> 8
    return values.reshape(image.height, image.width, image.channels)


def compare(claimed: DecodedImage, ours: DecodedImage) -> tuple[bool, str, dict[str, float]]:
    """(ok, reason, figures): the worker's frame against the verifier's render of the same frame."""
    if claimed.sha256() == ours.sha256():
        return True, "pixels identical", {"mean_abs": 0.0, "differing_share": 0.0, "max_abs": 0.0}
    shape = (claimed.width, claimed.height, claimed.channels)
    if shape != (ours.width, ours.height, ours.channels):
        return False, (f"the frame is {claimed.width}x{claimed.height}x{claimed.channels}, a render of it "
                       f"{ours.width}x{ours.height}x{ours.channels}"), {}
    diff = np.abs(_levels(claimed) - _levels(ours))
    figures = {"mean_abs": float(diff.mean()), "differing_share": float((diff.max(axis=2) > PIXEL_TOLERANCE).mean()),
               "max_abs": float(diff.max())}
    if figures["mean_abs"] > MEAN_TOLERANCE or figures["differing_share"] > DIFFERING_SHARE:
        return False, (f"the frame's pixels differ from a render of it: mean {figures['mean_abs']:.2f} levels "
                       f"(limit {MEAN_TOLERANCE}), {figures['differing_share']:.1%} of pixels off by more than "
                       f"{PIXEL_TOLERANCE} (limit {DIFFERING_SHARE:.0%})"), figures
    return True, "pixels within tolerance", figures
