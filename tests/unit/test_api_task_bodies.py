"""POST /api/tasks bodies: any JSON a client sends is a TaskSpec or a one-line reason, never a crash."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from hyperion_node.api.app import _task_spec
from hyperion_node.tasks.model import TaskSpec

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=3), max_leaves=8)


@given(st.dictionaries(st.sampled_from(["runtime", "item", "payload", "payload_b64", "timeout_s",
                                        "max_price_per_unit", "expected_units", "other"]), json_values))
def test_any_body_is_a_spec_or_a_reason(body: dict[str, Any]) -> None:
    assert isinstance(_task_spec(body, 60.0), TaskSpec | str)


def test_bytes_travel_as_base64_and_bad_base64_is_named() -> None:
    spec = _task_spec({"runtime": "zk-groth16", "item": "groth16-bn254", "payload": {"a": 1},
                       "payload_b64": {"zkey": "AAEC"}}, 60.0)
    assert isinstance(spec, TaskSpec)
    assert spec.payload == {"a": 1, "zkey": b"\x00\x01\x02"}
    for bad in ("not base64!", "é"):
        reason = _task_spec({"runtime": "r", "item": "i", "payload": {}, "payload_b64": {"x": bad}}, 60.0)
        assert isinstance(reason, str)
        assert "base64" in reason
