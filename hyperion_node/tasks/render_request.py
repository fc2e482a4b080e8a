"""A distributed render job as the control API receives it, validated. Pure code: no trio, no Blender.

``POST /api/render`` body (JSON)::

    scene_b64        str     the .blend file, base64
    frame_start      int     first frame
    frame_end        int     last frame, inclusive
    resolution       [w, h]  pixels
    samples          int     Cycles samples per pixel (default 16)
    engine           str     "CYCLES" (default)
    seed             int     noise seed (default 0)
    workers          int     use at most this many workers (default: every live provider)
    chunk_frames     int     frames per task (default: from each worker's speed, see render_plan)
    stall_timeout_s  float   a worker that sends no frame for this long is dropped (default: from the speeds)
    timeout_s        float   the whole job's deadline (default 3600)

The workers check the scene itself (Blender reads it there); this side checks only what it needs to plan.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hyperion_node.tasks.exceptions import BadRenderJob

# The render runtime's own bounds (runtimes/render/request.py): a request past them would be refused by
# every worker, so it is refused here, before a scene is sent anywhere.
MAX_RESOLUTION = 16384
MAX_SAMPLES = 1 << 16
SEED_LIMIT = 1 << 31
MAX_FRAMES = 100_000  # a job's events and plan stay small; a longer film is several jobs
MAX_TIMEOUT_S = 7 * 86400.0


@dataclass(frozen=True)
class RenderJobRequest:
    scene: bytes = field(repr=False)
    frame_start: int
    frame_end: int
    width: int
    height: int
    samples: int = 16
    engine: str = "CYCLES"
    seed: int = 0
    workers: int | None = None
    chunk_frames: int | None = None
    stall_timeout_s: float | None = None
    timeout_s: float = 3600.0
    scene_sha256: str = ""

    def __post_init__(self) -> None:
        if not self.scene_sha256:
            object.__setattr__(self, "scene_sha256", hashlib.sha256(self.scene).hexdigest())

    @property
    def frames(self) -> int:
        return self.frame_end - self.frame_start + 1

    @property
    def item(self) -> str:
        """The offer's item, as the render runtime names it: "blender-cycles" for CYCLES."""
        return f"blender-{self.engine.lower().removeprefix('blender_')}"

    def payload(self, first: int, last: int) -> dict[str, Any]:
        """One task's payload (runtimes/render/request.py): the scene and a sub-range."""
        return {"scene": self.scene, "scene_sha256": self.scene_sha256, "frame_start": first, "frame_end": last,
                "resolution": [self.width, self.height], "engine": self.engine, "samples": self.samples,
                "seed": self.seed}  # fmt: skip

    @classmethod
    def from_json(cls, body: Mapping[str, Any], *, default_timeout_s: float = 3600.0) -> RenderJobRequest:
        encoded = body.get("scene_b64")
        if not isinstance(encoded, str) or not encoded:
            raise BadRenderJob("'scene_b64' must be the .blend file, base64-encoded")
        try:
            scene = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:  # ValueError: text that is not even ASCII
            raise BadRenderJob(f"'scene_b64' is not base64: {exc}") from exc
        start, end = _int(body, "frame_start"), _int(body, "frame_end")
        if end < start:
            raise BadRenderJob(f"frame_end {end} is before frame_start {start} (the range is inclusive)")
        if end - start + 1 > MAX_FRAMES:
            raise BadRenderJob(f"{end - start + 1} frames: a job renders at most {MAX_FRAMES}")
        resolution = body.get("resolution")
        if (not isinstance(resolution, list) or len(resolution) != 2
                or not all(_is_int(v) and 1 <= v <= MAX_RESOLUTION for v in resolution)):
            raise BadRenderJob(f"'resolution' must be [width, height], each 1 to {MAX_RESOLUTION}")
        samples = _int(body, "samples", 16)
        if not 1 <= samples <= MAX_SAMPLES:
            raise BadRenderJob(f"'samples' must be 1 to {MAX_SAMPLES}, got {samples}")
        seed = _int(body, "seed", 0)
        if not 0 <= seed < SEED_LIMIT:
            raise BadRenderJob(f"'seed' must be 0 to {SEED_LIMIT - 1}, got {seed}")
        engine = body.get("engine", "CYCLES")
        if not isinstance(engine, str) or not engine.isidentifier():
            raise BadRenderJob(f"'engine' must be a Blender engine id such as CYCLES, got {engine!r}")
        workers, chunk = _optional_int(body, "workers"), _optional_int(body, "chunk_frames")
        stall = _optional_number(body, "stall_timeout_s")
        timeout = _optional_number(body, "timeout_s")
        if timeout is not None and timeout > MAX_TIMEOUT_S:
            raise BadRenderJob(f"'timeout_s' must be at most {MAX_TIMEOUT_S:.0f}")
        return cls(scene, start, end, int(resolution[0]), int(resolution[1]), samples, engine, seed, workers, chunk,
                   stall, default_timeout_s if timeout is None else timeout)  # fmt: skip


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(body: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = body.get(key, default)
    if not _is_int(value):
        raise BadRenderJob(f"{key!r} must be an integer, got {value!r}")
    assert isinstance(value, int)
    return value


def _optional_int(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not _is_int(value) or value < 1:
        raise BadRenderJob(f"{key!r} must be an integer of at least 1, got {value!r}")
    assert isinstance(value, int)
    return value


def _optional_number(body: Mapping[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise BadRenderJob(f"{key!r} must be a number of seconds above 0, got {value!r}")
    return float(value)
