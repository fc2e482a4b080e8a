"""Fixtures for the render runtime's tests: the real Blender, and the committed test scene built with it.

The scene is built once per session from runtimes/render/scenes/make_test_scene.py (frames 1-24, a cube
that moves), so no .blend file is committed. Renders in these tests are tiny (48x36, a few samples).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from runtimes.interface import HardwareSummary, Partial, RuntimeContext, Task
from runtimes.render import BlenderRuntime
from runtimes.render.runtime import TEST_SCENE_SCRIPT

HW = HardwareSummary(cpu_model="test cpu", cpu_cores=2, ram_total_bytes=8 << 30, ram_available_bytes=4 << 30)
SMALL = {"resolution": [48, 36], "samples": 4}


@pytest.fixture(scope="session")
def blender() -> str:
    path = shutil.which("blender")
    if path is None:
        pytest.fail("blender is not on PATH: the render tests run the real Blender -- run scripts/setup.sh "
                    "(it installs Debian's blender package)", pytrace=False)
    return path


def build_scene(blender: str, out: Path, *options: str) -> bytes:
    done = subprocess.run(
        [blender, "--background", "--factory-startup", "--python-exit-code", "2",
         "--python", str(TEST_SCENE_SCRIPT), "--", str(out), *options],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.fail(f"building the test scene failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return out.read_bytes()


@pytest.fixture(scope="session")
def scene(blender: str, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return build_scene(blender, tmp_path_factory.mktemp("scene") / "test.blend")


@pytest.fixture(scope="session")
def scene_without_camera(blender: str, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return build_scene(blender, tmp_path_factory.mktemp("scene") / "no-camera.blend", "--no-camera")


def task(scene: bytes, start: int, end: int, /, **fields: Any) -> Task:
    return Task(f"t{start}-{end}", "render-blender",
                {"scene": scene, "frame_start": start, "frame_end": end, **SMALL, **fields})  # fmt: skip


@asynccontextmanager
async def started(tmp_path: Path, **settings: Any) -> AsyncIterator[BlenderRuntime]:
    runtime = BlenderRuntime(RuntimeContext(data_dir=tmp_path, cache_dir=tmp_path / "cache", settings=settings,
                                            hardware=HW))  # fmt: skip
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.aclose()


class Collector:
    """An ``emit`` that keeps every Partial."""

    def __init__(self) -> None:
        self.partials: list[dict[str, Any]] = []

    async def __call__(self, partial: Partial) -> None:
        self.partials.append(dict(partial.data))


def blender_processes_under(path: Path) -> list[int]:
    """PIDs of processes whose command line names ``path`` (a test's own Blender runs, and only those)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:  # exited while we looked, or not ours to read
            continue
        if str(path).encode() in cmdline:
            found.append(int(proc.name))
    return found
