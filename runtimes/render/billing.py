"""What a render result may be billed (``runtimes.interface.Tally``): pixels x samples x frames of the request,
and every frame of the range streamed once. Pure: no Blender."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runtimes.render.exceptions import BadRenderRequest
from runtimes.render.request import RenderRequest, RenderSettings

# The requester parses the request as a worker with no local limits would: its own config may cap scenes and
# frames lower than the worker's, and a bill is checked against what was asked, not against what it serves.
_UNBOUNDED = RenderSettings(max_scene_bytes=2**62, max_pixels=2**62, engines=("CYCLES", "BLENDER_EEVEE"))


class RenderTally:
    def __init__(self, payload: Mapping[str, Any]) -> None:
        try:
            self.request: RenderRequest | None = RenderRequest.from_payload(payload, _UNBOUNDED)
        except BadRenderRequest:
            self.request = None
        self.frames: list[Any] = []

    def partial(self, data: Mapping[str, Any]) -> None:
        self.frames.append(data.get("frame"))

    def units(self, output: Mapping[str, Any]) -> tuple[int, int] | str:
        request = self.request
        if request is None:
            return "the task's payload is not a valid render request"
        wanted = list(range(request.frame_start, request.frame_end + 1))
        if sorted(self.frames) != wanted:
            return f"frames {request.frame_start}-{request.frame_end} were asked for, {len(self.frames)} streamed"
        units = int(request.work_units)
        return units, units
