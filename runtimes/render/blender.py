"""Finding the Blender binary and saying exactly which build it is, for offers and receipts.

``blender --version`` from blender.org builds prints the version and then indented ``build ...:`` lines
(date, hash, branch, platform). Debian's package prints only ``Blender 3.4.1`` (its build hash is
"Unknown"), so the evidence also carries the SHA-256 of the binary itself: that identifies the build on
any distribution, and two nodes with the same hash run the same renderer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from hyperion_node.errors import RuntimeUnavailable

INSTALL_HINT = "install Blender: apt-get install blender, or set runtimes.render-blender.blender = /path/to/blender"
# `blender --version` starts Blender's kernel without a scene: ~0.8 s here. 30 s covers a cold disk cache.
VERSION_TIMEOUT_S = 30.0
_VERSION_LINE = re.compile(r"^Blender (\d+\.\d+(?:\.\d+)?)\b.*$", re.MULTILINE)
_BUILD_FIELD = re.compile(r"^\s*build (hash|date|branch|platform):\s*(.+?)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class BlenderBuild:
    """What identifies the renderer: part of every offer and every receipt's evidence."""

    path: str
    version: str
    build_hash: str | None
    build_date: str | None
    binary_sha256: str

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "build_hash": self.build_hash,
            "build_date": self.build_date,
            "binary_sha256": self.binary_sha256,
        }


def parse_version(text: str) -> tuple[str, str | None, str | None]:
    """(version, build hash, build date) from ``blender --version``; the hash and date may be absent."""
    match = _VERSION_LINE.search(text)
    if match is None:
        raise RuntimeUnavailable(f"`blender --version` printed no 'Blender X.Y' line: {text.strip()[:200]!r}",
                                 hint=INSTALL_HINT)
    fields = {name: value for name, value in _BUILD_FIELD.findall(text)}
    # Unofficial builds print "Unknown" where a git hash would be.
    build_hash = fields.get("hash")
    if build_hash is not None and build_hash.lower() in ("unknown", ""):
        build_hash = None
    return match.group(1), build_hash, fields.get("date")


def locate(setting: str) -> str:
    """The absolute path of the Blender binary the setting names (a command on PATH or a path)."""
    found = shutil.which(setting)
    if found is None:
        if os.sep not in setting:
            what = "not found on PATH"
        else:
            what = "not an executable file" if Path(setting).exists() else "no such file"
        raise RuntimeUnavailable(f"Blender is not available: {setting!r} is {what}", hint=INSTALL_HINT)
    return str(Path(found).resolve())


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stat_key(path: str) -> list[Any]:
    real = os.path.realpath(path)
    st = os.stat(real)
    return [real, st.st_size, st.st_mtime_ns, st.st_ino]


async def probe(setting: str, cache_file: Path | None = None) -> BlenderBuild:
    """Locate Blender, run ``--version`` and hash the binary (~0.5 s for Debian's 89 MB, in a thread).

    With ``cache_file``, the result is kept keyed by the binary's real path, size, mtime and inode, and
    reused while they match: ``--version`` starts Blender, which takes 1-2 s here, and the node's warm
    start must stay under 3 s. An upgraded or replaced binary changes the key and is probed again."""
    path = locate(setting)
    key = _stat_key(path)
    cached = _read_cache(cache_file, key) if cache_file is not None else None
    if cached is not None:
        return cached
    build = await _probe(path)
    if cache_file is not None:
        _write_cache(cache_file, key, build)
    return build


def _read_cache(cache_file: Path, key: list[Any]) -> BlenderBuild | None:
    """The cached probe if it is for this very binary; None when missing, stale or from older code."""
    try:
        cached = json.loads(cache_file.read_text())
        return BlenderBuild(**cached["build"]) if cached.get("key") == key else None
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _write_cache(cache_file: Path, key: list[Any], build: BlenderBuild) -> None:
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "build": dataclasses.asdict(build)}))
    os.replace(tmp, cache_file)


async def _probe(path: str) -> BlenderBuild:
    try:
        with trio.fail_after(VERSION_TIMEOUT_S):
            done = await trio.run_process([path, "--version"], capture_stdout=True, capture_stderr=True, check=False)
    except trio.TooSlowError as exc:
        raise RuntimeUnavailable(f"`{path} --version` did not answer in {VERSION_TIMEOUT_S:.0f} s",
                                 hint=INSTALL_HINT) from exc
    except OSError as exc:  # exists but cannot be executed: wrong architecture, missing libraries
        raise RuntimeUnavailable(f"cannot run {path}: {exc}", hint=INSTALL_HINT) from exc
    output = done.stdout.decode(errors="replace")
    if done.returncode != 0:
        detail = (output + done.stderr.decode(errors="replace")).strip()[-300:]
        raise RuntimeUnavailable(f"`{path} --version` exited with status {done.returncode}: {detail}",
                                 hint=INSTALL_HINT)
    version, build_hash, build_date = parse_version(output)
    binary_sha256 = await trio.to_thread.run_sync(_sha256_file, path)
    return BlenderBuild(path, version, build_hash, build_date, binary_sha256)
