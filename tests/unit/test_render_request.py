"""POST /api/render bodies: what is refused and why, and garbage is always our error, never a crash."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hyperion_node.tasks.exceptions import BadRenderJob
from hyperion_node.tasks.render_request import RenderJobRequest

SCENE = b"BLENDER-v304" + b"\0" * 32
GOOD = {"scene_b64": base64.b64encode(SCENE).decode(), "frame_start": 1, "frame_end": 12, "resolution": [64, 48]}


def test_a_good_body_becomes_a_request_with_the_scene_hash() -> None:
    request = RenderJobRequest.from_json({**GOOD, "samples": 4, "workers": 2}, default_timeout_s=60)
    assert (request.frames, request.width, request.height, request.samples) == (12, 64, 48, 4)
    assert request.scene_sha256 == hashlib.sha256(SCENE).hexdigest()
    assert request.item == "blender-cycles"
    assert request.timeout_s == 60
    payload = request.payload(3, 5)
    assert (payload["frame_start"], payload["frame_end"], payload["scene"]) == (3, 5, SCENE)


@pytest.mark.parametrize(("change", "needle"), [
    ({"scene_b64": "not base64!"}, "base64"),
    ({"scene_b64": ""}, "scene_b64"),
    ({"frame_end": 0}, "before frame_start"),
    ({"frame_start": "1"}, "integer"),
    ({"resolution": [64]}, "resolution"),
    ({"resolution": [0, 48]}, "resolution"),
    ({"samples": 0}, "samples"),
    ({"workers": 0}, "workers"),
    ({"chunk_frames": True}, "chunk_frames"),
    ({"stall_timeout_s": -1}, "stall_timeout_s"),
    ({"timeout_s": 1e12}, "timeout_s"),
    ({"engine": "rm -rf"}, "engine"),
])
def test_bad_bodies_say_what_is_wrong(change: dict[str, Any], needle: str) -> None:
    with pytest.raises(BadRenderJob, match=needle):
        RenderJobRequest.from_json({**GOOD, **change})


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                      max_size=3), max_leaves=8)


@given(st.dictionaries(st.sampled_from([*GOOD, "samples", "seed", "workers", "chunk_frames", "stall_timeout_s",
                                        "timeout_s", "engine"]), json_values))
def test_garbage_is_refused_with_our_error(change: dict[str, Any]) -> None:
    try:
        RenderJobRequest.from_json({**GOOD, **change})
    except BadRenderJob:
        pass
