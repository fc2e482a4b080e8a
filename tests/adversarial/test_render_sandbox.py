"""A peer's scene touching the worker's files -- no more: a .blend that reads /etc/hostname as a texture is
refused with the reason, one that writes through a File Output node renders with the node removed, and the
worker keeps serving. Sent by a hostile requester straight to W over ``/hyperion/task/1``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from hyperion_node.tasks.messages import FinalResult, TaskError, TaskRequest
from hyperion_node.tasks.model import new_task_id
from hyperion_node.testing.hostile import hostile_host
from tests.adversarial.conftest import Net, ask, call, now_ms

pytestmark = pytest.mark.process

BUILDER = Path(__file__).parents[1] / "render" / "hostile_scenes.py"
ITEM = "blender-cycles"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    blender = shutil.which("blender")
    assert blender is not None, "blender is not on PATH: run scripts/setup.sh"
    out = tmp_path_factory.mktemp("hostile-scenes")
    subprocess.run([blender, "--background", "--factory-startup", "--python-exit-code", "2", "--python",
                    str(BUILDER), "--", str(out)], capture_output=True, timeout=120, check=True)
    return out


def render(requester: str, scene: bytes) -> TaskRequest:
    payload = {"scene": scene, "frame_start": 1, "frame_end": 1, "resolution": [32, 24], "samples": 1}
    return TaskRequest(task_id=new_task_id("render-blender", ITEM, payload, requester, now_ms()),
                       runtime="render-blender", item=ITEM, payload=payload, requester=requester, deadline_s=120.0)


async def test_a_scene_cannot_read_or_write_the_workers_files(net: Net, scenes: Path) -> None:
    w_id = await call(lambda: net.w.peer_id)
    async with hostile_host() as attacker:
        await attacker.connect(await call(net.w.p2p_addr))
        reader = (scenes / "absolute-image.blend").read_bytes()
        _, answers = await attacker.task(w_id, render(attacker.peer_id, reader))
        last = answers[-1]
        assert isinstance(last, TaskError), answers
        assert "/etc/hostname" in last.message
        assert not any(type(a).__name__ == "PartialResult" for a in answers), "nothing was rendered"
        for name, target in (("file-output-absolute", scenes / "escape-absolute"),
                             ("file-output-parent", None)):
            writer = (scenes / f"{name}.blend").read_bytes()
            _, answers = await attacker.task(w_id, render(attacker.peer_id, writer))
            assert isinstance(answers[-1], FinalResult), answers  # rendered, with the writer removed
            if target is not None:
                assert not target.exists() or not any(target.iterdir()), "a File Output node wrote a file"
        escaped = list((net.w.data_dir / "cache").rglob("escape-parent*"))
        assert not escaped, escaped
    status, _ = await call(ask, net.r)
    assert status == 200
