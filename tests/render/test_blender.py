"""Which Blender: parsing ``blender --version`` from official and distribution builds, and finding the binary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from hyperion_node.errors import RuntimeUnavailable
from runtimes.render.blender import locate, parse_version, probe

OFFICIAL = """Blender 3.6.2
\tbuild date: 2023-08-16
\tbuild time: 16:43:17
\tbuild commit date: 2023-08-15
\tbuild commit time: 16:01:15
\tbuild hash: e53e55951e7a
\tbuild platform: Linux
\tbuild type: release
"""


def test_official_build_gives_its_hash_and_date() -> None:
    assert parse_version(OFFICIAL) == ("3.6.2", "e53e55951e7a", "2023-08-16")


def test_debian_build_has_no_hash() -> None:
    assert parse_version("Blender 3.4.1\n") == ("3.4.1", None, None)
    assert parse_version("Blender 3.4.1\n\tbuild hash: Unknown\n") == ("3.4.1", None, None)


def test_output_without_a_version_is_unavailable() -> None:
    with pytest.raises(RuntimeUnavailable, match=r"printed no 'Blender X\.Y' line"):
        parse_version("Segmentation fault\n")


def test_a_file_that_is_not_executable_is_named(tmp_path: Path) -> None:
    fake = tmp_path / "blender"
    fake.write_text("not a program")
    with pytest.raises(RuntimeUnavailable, match="is not an executable file"):
        locate(str(fake))


async def test_probe_identifies_the_installed_blender(blender: str) -> None:
    resolved = str(await trio.Path(blender).resolve())
    build = await probe(blender)
    assert build.path == resolved
    assert build.version.count(".") >= 1
    assert len(build.binary_sha256) == 64


async def test_probe_is_cached_until_the_binary_changes(blender: str, tmp_path: Path) -> None:
    cache = tmp_path / "blender-build.json"
    first = await probe(blender, cache)
    stored = json.loads(cache.read_text())
    stored["build"]["version"] = "9.9.9-from-cache"
    cache.write_text(json.dumps(stored))
    assert (await probe(blender, cache)).version == "9.9.9-from-cache", "the warm start does not run Blender"
    stored["key"][1] += 1  # as if the binary had been replaced by another of a different size
    cache.write_text(json.dumps(stored))
    assert (await probe(blender, cache)).version == first.version
