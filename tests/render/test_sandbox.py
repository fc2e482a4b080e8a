"""The render sandbox (runtimes/render/driver.py): a peer's scene neither reads nor writes outside its job.

Scenes come from tests/render/hostile_scenes.py, built once for the module by the real Blender; each
adds one hostile thing to a 32x24, 1-sample plane. Where the point is that the sandbox, not chance, stops
something, a control first shows Blender doing it when it opens the same scene itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from hyperion_node.errors import UserError
from runtimes.interface import Partial
from runtimes.render.exceptions import UnsafeScene
from runtimes.render.png import decode_png
from runtimes.render.runtime import PROBE_CACHE
from tests.render.conftest import Collector, started, task

BUILDER = Path(__file__).with_name("hostile_scenes.py")
TINY = {"resolution": [32, 24], "samples": 1}


class Scenes:
    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def blend(self, name: str) -> bytes:
        return (self.dir / f"{name}.blend").read_bytes()


@pytest.fixture(scope="module")
def hostile(blender: str, tmp_path_factory: pytest.TempPathFactory) -> Scenes:
    out = tmp_path_factory.mktemp("hostile")
    done = subprocess.run([blender, "--background", "--factory-startup", "--python-exit-code", "2",
                           "--python", str(BUILDER), "--", str(out)],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"building the sandbox scenes failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return Scenes(out)


@pytest.fixture(scope="module")
def plain_frame(hostile: Scenes, tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, str]:
    """Frame 1 of the plain scene through the runtime: (PNG, pixel hash)."""

    async def render() -> tuple[bytes, str]:
        async with started(tmp_path_factory.mktemp("plain")) as runtime:
            emit = Collector()
            await runtime.run(task(hostile.blend("plain"), 1, 1, **TINY), emit)
        [frame] = emit.partials
        return frame["png"], frame["pixels_sha256"]

    return trio.run(render)


async def render_as_saved(blender: str, scene: Path, out: Path) -> None:
    """Blender rendering frame 1 of ``scene`` by itself, the control: no driver, no sandbox."""
    await trio.run_process([blender, "--background", "--factory-startup", "--disable-autoexec", str(scene),
                            "--render-output", str(out / "frame_"), "--render-frame", "1"],
                           capture_stdout=True, capture_stderr=True)  # fmt: skip


async def refusal(tmp_path: Path, scene: bytes, **settings: Any) -> UnsafeScene:
    """The sandbox's refusal of ``scene``, after checking that no frame came first and no Blender is left."""
    async with started(tmp_path, **settings) as runtime:
        emit = Collector()
        with trio.fail_after(60), pytest.raises(UnsafeScene) as caught:
            await runtime.run(task(scene, 1, 1, **TINY), emit)
        assert emit.partials == [], "refused before Blender rendered anything"
        assert runtime.active_pids == set()
    assert isinstance(caught.value, UserError), "the requester's fault: the task fails, the worker serves on"
    assert "File > External Data > Pack Resources" in caught.value.one_line()
    return caught.value


async def test_an_image_read_from_an_absolute_path_is_refused(hostile: Scenes, tmp_path: Path) -> None:
    refused = await refusal(tmp_path, hostile.blend("absolute-image"))
    assert "image 'hostname' reads '/etc/hostname'" in refused.one_line()


async def test_an_image_read_from_beside_the_job_directory_is_refused(hostile: Scenes, tmp_path: Path) -> None:
    refused = await refusal(tmp_path, hostile.blend("parent-image"))
    assert "image 'outside' reads '//../x.png'" in refused.one_line()


async def test_a_linked_library_is_refused(hostile: Scenes, tmp_path: Path) -> None:
    refused = await refusal(tmp_path, hostile.blend("library"))
    assert f"library 'lib.blend' links {str(hostile.dir / 'lib.blend')!r}" in refused.one_line()


async def test_a_font_outside_the_blend_is_refused_before_blender_opens_it(blender: str, hostile: Scenes,
                                                                          tmp_path: Path) -> None:
    # A FIFO blocks whoever opens it for reading until a writer comes. Given the scene on its command
    # line, Blender evaluates the text object while loading, before any --python script, and hangs there:
    # the control. The driver audits before that evaluation, so the refusal comes at once.
    font = hostile.dir / "font.woff2"
    font.unlink()
    os.mkfifo(font)
    with trio.move_on_after(3) as control:
        await trio.run_process([blender, "--background", "--factory-startup", "--disable-autoexec",
                                str(hostile.dir / "font.blend"), "--python-expr", "import os; os._exit(0)"],
                               capture_stdout=True, capture_stderr=True)  # fmt: skip
    assert control.cancelled_caught, "Blender alone opens the font while loading the scene"
    refused = await refusal(tmp_path, hostile.blend("font"), load_timeout_s=30.0)
    assert f"font 'DejaVu Sans Book' reads {str(font)!r}" in refused.one_line()


async def test_a_freestyle_python_module_is_refused(blender: str, hostile: Scenes, tmp_path: Path) -> None:
    # Freestyle runs its style modules' Python even under --disable-autoexec: the control shows it.
    ran = hostile.dir / "freestyle-ran"
    await render_as_saved(blender, hostile.dir / "freestyle.blend", tmp_path)
    assert ran.read_text() == "ran"
    ran.unlink()
    refused = await refusal(tmp_path, hostile.blend("freestyle"))
    assert "view layer 'ViewLayer' of scene 'Scene' runs the Freestyle Python module 'style.py'" in refused.one_line()
    assert not ran.exists()


class JobDirectory(Collector):
    """Keeps each Partial and what the job directory holds when it arrives."""

    def __init__(self, cache: Path) -> None:
        super().__init__()
        self.cache = cache
        self.listings: list[list[str]] = []

    async def __call__(self, partial: Partial) -> None:
        await super().__call__(partial)
        self.listings.append(await trio.to_thread.run_sync(self.listing))

    def listing(self) -> list[str]:
        [workdir] = [p for p in self.cache.iterdir() if p.name.startswith("render-")]
        return sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*"))


async def test_blender_alone_writes_where_a_file_output_node_says(blender: str, hostile: Scenes,
                                                                 tmp_path: Path) -> None:
    """The control for the test below: the absolute File Output node writes outside the job directory."""
    escape = hostile.dir / "escape-absolute"
    try:
        await render_as_saved(blender, hostile.dir / "file-output-absolute.blend", tmp_path)
        assert [p.name for p in escape.iterdir()] == ["Image0001.png"]
    finally:
        if escape.exists():
            shutil.rmtree(escape)


@pytest.mark.parametrize("name", ["file-output-absolute", "file-output-parent"])
async def test_file_output_nodes_are_removed_and_the_frame_still_renders(
    name: str, hostile: Scenes, plain_frame: tuple[bytes, str], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    async with started(tmp_path) as runtime:
        emit = JobDirectory(cache)
        final = await runtime.run(task(hostile.blend(name), 1, 1, **TINY), emit)
    # While it rendered, the job directory held the scene and the (emptied) frames directory, nothing else.
    assert emit.listings == [["frames", "scene.blend"]]
    # //../escape-parent/ is the cache directory's escape-parent/: nothing is left beside the job either.
    assert [p.name for p in cache.iterdir()] == [PROBE_CACHE]
    assert not (hostile.dir / "escape-absolute").exists()
    [frame] = emit.partials
    assert frame["pixels_sha256"] == plain_frame[1], "the same pixels as the scene without the node"
    assert final.evidence["settings"]["compositing"] is False


async def test_a_packed_image_is_accepted_and_renders(hostile: Scenes, plain_frame: tuple[bytes, str],
                                                      tmp_path: Path) -> None:
    async with started(tmp_path) as runtime:
        emit = Collector()
        await runtime.run(task(hostile.blend("packed-image"), 1, 1, **TINY), emit)
    [frame] = emit.partials
    assert frame["pixels_sha256"] != plain_frame[1]
    image = decode_png(frame["png"])
    middle = (image.height // 2 * image.width + image.width // 2) * image.channels
    red, green, blue = image.pixels[middle : middle + 3]
    # Filmic desaturates (measured: 210, 119, 119); the grey plane without the texture has red == green == blue.
    assert red - max(green, blue) > 50, f"the packed red texture is on the plane: {(red, green, blue)}"


async def test_a_verifier_refuses_the_scene_too(hostile: Scenes, plain_frame: tuple[bytes, str],
                                                tmp_path: Path) -> None:
    # A worker's claim of some frame for the hostile scene: the verifier renders it again through the
    # same driver, so it meets the same sandbox.
    png, pixels = plain_frame
    payload = task(hostile.blend("absolute-image"), 1, 1, **TINY).payload
    async with started(tmp_path) as runtime:
        with pytest.raises(UnsafeScene, match="image 'hostname' reads '/etc/hostname'"):
            await runtime.verify(payload, {"frames": [{"frame": 1, "pixels_sha256": pixels}]}, {},
                                 sample={"frame": 1, "png": png})
