"""The render runtime's settings and task payload, validated. Pure code: no trio, no Blender.

Task payload (one task = one scene and one frame range, usually a slice of a larger job)::

    scene         bytes   the .blend file (content-addressed by its SHA-256)
    scene_sha256  str     optional; when given, the bytes must hash to it
    frame_start   int     first frame to render
    frame_end     int     last frame, inclusive; the range must lie inside the scene's own range
    resolution    [w, h]  pixels, e.g. [1920, 1080]
    engine        str     "CYCLES" (default); others only if the node's settings list them
    samples       int     samples per pixel (default 64)
    seed          int     Cycles' noise seed (default 0)

Work units are pixels x samples x frames ("pixel-sample"), the offer's unit.
"""

from __future__ import annotations

import gzip
import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from hyperion_node.settings import Rule, Section, at_least, count, setting
from runtimes.render.exceptions import BadRenderRequest, FrameRangeError, MalformedScene

RUNTIME_NAME = "render-blender"
# How a .blend file starts: "BLENDER", then pointer size and endianness (blender/source/blender/blenloader,
# "file header"); Blender >= 3.0 may save zstd-compressed files and older ones gzip-compressed files.
BLEND_MAGIC = b"BLENDER"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
# Our bounds, tighter than Blender's own (65536 pixels a side; 2^24 samples): a request above them is a
# mistake or an attack on the node's time. max_pixels in the settings bounds the frame area further.
MAX_RESOLUTION = 16384
MAX_SAMPLES = 1 << 16
SEED_LIMIT = 1 << 31  # Cycles' seed is a signed 32-bit int


@dataclass(frozen=True)
class RenderSettings(Section):
    """``[runtimes.render-blender]`` from configs/default.toml, where every key is documented."""

    SECTION: ClassVar[str] = f"runtimes.{RUNTIME_NAME}"

    blender: str = setting("blender", Rule(lambda v: isinstance(v, str) and bool(v),
                                           "a command name on PATH or a path to the Blender binary"))
    max_scene_bytes: int = setting(64 << 20, count(0, "an integer >= 0"))
    price_per_pixel_sample: float = setting(0.0, at_least(0.0, "a number >= 0.0"))
    threads: int = setting(0, count(0, "an integer >= 0"))
    engines: tuple[str, ...] = setting(("CYCLES",), Rule(
        lambda v: isinstance(v, tuple) and bool(v) and all(isinstance(e, str) and e for e in v),
        'a non-empty list of Blender engine ids, e.g. ["CYCLES"]'))
    load_timeout_s: float = setting(60.0, at_least(1.0, "a number >= 1.0"))
    frame_timeout_s: float = setting(600.0, at_least(1.0, "a number >= 1.0"))
    max_pixels: int = setting(3840 * 2160, count(0, "an integer >= 0"))

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any]) -> RenderSettings:
        return cls.from_table(settings, source=f"[runtimes.{RUNTIME_NAME}]")


def check_scene_bytes(scene: bytes, *, limit: int, expected_sha256: str | None = None) -> str:
    """The scene's SHA-256, after the checks that need no Blender: size, hash, file signature."""
    if len(scene) > limit:
        raise MalformedScene(f"scene is {len(scene)} bytes, over this node's limit of {limit} (max_scene_bytes)")
    digest = hashlib.sha256(scene).hexdigest()
    if expected_sha256 is not None and digest != expected_sha256.lower():
        raise MalformedScene(f"scene bytes hash to {digest}, but the payload's scene_sha256 is {expected_sha256}")
    head = scene[:16]
    if head.startswith(GZIP_MAGIC):
        try:  # the header of a gzip-compressed .blend is in its first inflated bytes
            head = gzip.GzipFile(fileobj=io.BytesIO(scene)).read(16)
        except (OSError, EOFError) as exc:
            raise MalformedScene(f"scene is gzip data that does not inflate: {exc}") from exc
    if not (head.startswith(BLEND_MAGIC) or head.startswith(ZSTD_MAGIC)):
        raise MalformedScene(
            f"scene is not a .blend file: it starts with {scene[:8]!r}, a .blend starts with b'BLENDER' "
            "(or is gzip/zstd-compressed)"
        )
    return digest


@dataclass(frozen=True)
class RenderRequest:
    """A validated payload. ``scene_sha256`` is computed here, and checked against the payload's if any."""

    scene: bytes = field(repr=False)
    scene_sha256: str
    frame_start: int
    frame_end: int
    width: int
    height: int
    engine: str
    samples: int
    seed: int

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], settings: RenderSettings) -> RenderRequest:
        scene = payload.get("scene")
        if not isinstance(scene, bytes | bytearray | memoryview):
            raise BadRenderRequest("payload field 'scene' must be the .blend file's bytes")
        expected = payload.get("scene_sha256")
        if expected is not None and (not isinstance(expected, str) or len(expected) != 64):
            raise BadRenderRequest("payload field 'scene_sha256' must be 64 hex digits")
        start, end = _int(payload, "frame_start"), _int(payload, "frame_end")
        if end < start:
            raise FrameRangeError(f"frame_end {end} is before frame_start {start} (the range is inclusive)")
        resolution = payload.get("resolution")
        if (not isinstance(resolution, list | tuple) or len(resolution) != 2
                or not all(_is_int(v) and 1 <= v <= MAX_RESOLUTION for v in resolution)):
            raise BadRenderRequest(f"payload field 'resolution' must be [width, height], each 1 to {MAX_RESOLUTION}")
        width, height = int(resolution[0]), int(resolution[1])
        if width * height > settings.max_pixels:
            raise BadRenderRequest(f"{width}x{height} is over this node's limit of {settings.max_pixels} pixels")
        engine = payload.get("engine", "CYCLES")
        if engine not in settings.engines:
            raise BadRenderRequest(f"engine {engine!r} is not offered here (this node renders with "
                                   f"{', '.join(settings.engines)})")
        samples = _int(payload, "samples", default=64)
        if not 1 <= samples <= MAX_SAMPLES:
            raise BadRenderRequest(f"payload field 'samples' must be 1 to {MAX_SAMPLES}, got {samples}")
        seed = _int(payload, "seed", default=0)
        if not 0 <= seed < SEED_LIMIT:
            raise BadRenderRequest(f"payload field 'seed' must be 0 to {SEED_LIMIT - 1}, got {seed}")
        data = bytes(scene)
        digest = check_scene_bytes(data, limit=settings.max_scene_bytes, expected_sha256=expected)
        return cls(data, digest, start, end, width, height, str(engine), samples, seed)

    @property
    def frames(self) -> int:
        return self.frame_end - self.frame_start + 1

    @property
    def work_units(self) -> float:
        return float(self.width * self.height * self.samples * self.frames)

    def driver_job(self, *, scene_path: str, output_dir: str, threads: int) -> dict[str, Any]:
        """The JSON object ``runtimes/render/driver.py`` reads from its command line."""
        return {
            "scene": scene_path, "output_dir": output_dir, "threads": threads,
            "frame_start": self.frame_start, "frame_end": self.frame_end,
            "width": self.width, "height": self.height,
            "engine": self.engine, "samples": self.samples, "seed": self.seed,
        }  # fmt: skip


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(payload: Mapping[str, Any], key: str, *, default: int | None = None) -> int:
    value = payload.get(key, default)
    if not _is_int(value):
        raise BadRenderRequest(f"payload field {key!r} must be an integer, got {value!r}")
    assert isinstance(value, int)
    return value
