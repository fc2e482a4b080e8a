"""Each runtime's settings table rejects a key it does not know, naming the table, the key and the known keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hyperion_node.errors import ConfigError
from runtimes.inference.registry import InferenceSettings
from runtimes.render.request import RenderSettings
from runtimes.zk.runtime import ZkSettings


def _inference(settings: dict[str, Any]) -> Any:
    return InferenceSettings.from_mapping(settings, base_dir=Path("."))


CASES = [  # (runtime, parser, a typo, the key meant, a valid value for it)
    ("inference", _inference, "n_thread", "n_threads", 2),
    ("zk-groth16", ZkSettings.from_mapping, "worker", "workers", 2),
    ("render-blender", RenderSettings.from_mapping, "blendr", "blender", "/opt/blender/blender"),
]


@pytest.mark.parametrize(("name", "parse", "typo", "meant", "value"), CASES, ids=[c[0] for c in CASES])
def test_a_mistyped_key_is_named_with_the_keys_that_exist(
    name: str, parse: Any, typo: str, meant: str, value: Any
) -> None:
    with pytest.raises(ConfigError) as raised:
        parse({typo: value})
    message = str(raised.value)
    assert message.startswith(f"[runtimes.{name}]: {typo}: unknown key (expected one of: ")
    assert meant in message.split("one of: ", 1)[1]
    assert "\n" not in message


@pytest.mark.parametrize(("name", "parse", "typo", "meant", "value"), CASES, ids=[c[0] for c in CASES])
def test_the_key_meant_is_taken(name: str, parse: Any, typo: str, meant: str, value: Any) -> None:
    assert getattr(parse({meant: value}), meant) == value
