"""The blobs a node keeps, under ``<data dir>/blobs`` (blocking file code; the service runs it in threads).

::

    blobs/manifests/<address>       the manifest of every blob this node serves or fetches
    blobs/hashes.json               address of each shared file by path, size and mtime (hash a file once)
    blobs/partial/<address>.data    a download in progress, written chunk by chunk at its offset
    blobs/partial/<address>.have    which of its chunks are on disk and verified (a bitmap)
    blobs/cache/<address>           task inputs fetched from peers (scenes, proving keys)

A download survives a kill: a chunk's bit is set in ``.have`` only after the chunk was checked against its
hash and the data file was flushed to disk, and ``.have`` is replaced atomically, so at worst the chunks
received since the last flush are fetched again. A finished download is checked against the whole-file
hash before it is moved (atomically) to where it is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from hyperion_node.blobs.manifest import (
    CHUNK_SIZE,
    BadManifest,
    Manifest,
    is_address,
    manifest_of_chunks,
    manifest_of_file,
)
from hyperion_node.errors import UserError

AHEAD_BYTES = 64 * 1024 * 1024  # chunks past a gap held for the whole-file hash (several providers interleave)

BLOBS_DIR = "blobs"


@dataclass(frozen=True)
class Shared:
    """A file this node serves to peers: its manifest and where it lies."""

    address: str
    manifest: Manifest
    path: Path
    name: str  # the file name peers are told (a model's .gguf name)


class Partial:
    """One download in progress: its data file and its bitmap of verified chunks."""

    def __init__(self, root: Path, address: str, manifest: Manifest) -> None:
        self.address = address
        self.manifest = manifest
        self.data_path = root / f"{address}.data"
        self.have_path = root / f"{address}.have"
        root.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.data_path, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(self._fd, manifest.size)  # sparse until written
        self.have = bytearray((manifest.count + 7) // 8)
        try:
            saved = self.have_path.read_bytes()
        except FileNotFoundError:
            saved = b""
        if len(saved) == len(self.have):
            self.have[:] = saved
        self._unflushed = 0
        self._lock = threading.Lock()  # writes come from several worker threads at once
        self._hashing = threading.Lock()  # held by the thread feeding the whole-file hash
        # The whole-file hash, fed chunk by chunk in order as they are written (a chunk past a gap waits in
        # _ahead, bounded), so that the check at the end reads back only what it did not see.
        self._whole = hashlib.sha256()
        self._hashed = 0
        self._feeding = not any(self.have)  # a resumed download's earlier chunks are read back at the end
        self._ahead: dict[int, bytes] = {}
        self._ahead_bytes = 0

    def has(self, index: int) -> bool:
        return bool(self.have[index // 8] & (1 << (index % 8)))

    def missing(self) -> list[int]:
        return [i for i in range(self.manifest.count) if not self.has(i)]

    @property
    def bytes_done(self) -> int:
        return sum(self.manifest.chunk_length(i) for i in range(self.manifest.count) if self.has(i))

    def write(self, index: int, data: bytes) -> None:
        """Write a chunk already checked against its hash; recorded in ``.have`` at the next flush."""
        os.pwrite(self._fd, data, index * self.manifest.chunk_size)
        with self._lock:
            self.have[index // 8] |= 1 << (index % 8)
            self._unflushed += 1
            if self._feeding and index >= self._hashed and self._ahead_bytes + len(data) <= AHEAD_BYTES:
                self._ahead[index] = data
                self._ahead_bytes += len(data)
            # else: read back from the file at the end (a resumed download's earlier chunks, a long gap)
        if self._hashing.acquire(blocking=False):  # one thread at a time feeds the hash; the others go on
            try:
                self._feed_whole()
            finally:
                self._hashing.release()

    def _feed_whole(self) -> None:
        """Hash the chunks that come next in order, outside the lock (SHA-256 leaves the GIL)."""
        while True:
            with self._lock:
                data = self._ahead.pop(self._hashed, None)
                if data is None:
                    return
                self._ahead_bytes -= len(data)
            self._whole.update(data)
            with self._lock:
                self._hashed += 1

    def whole_digest(self) -> bytes:
        """SHA-256 of the file: what was fed in order, then the rest read back from the file."""
        with self._hashing:
            self._feed_whole()
            whole, start = self._whole.copy(), self._hashed
        with self.data_path.open("rb") as f:
            f.seek(start * self.manifest.chunk_size)
            while chunk := f.read(4 * 1024 * 1024):
                whole.update(chunk)
        return whole.digest()

    def flush(self) -> None:
        """Data to disk first, then the bitmap that says it is there (replaced atomically)."""
        with self._lock:
            if not self._unflushed:
                return
            have, self._unflushed = bytes(self.have), 0
        os.fsync(self._fd)  # every chunk in ``have`` was written before it was marked
        tmp = self.have_path.with_suffix(".have.tmp")
        with tmp.open("wb") as f:
            f.write(have)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.have_path)

    def finish(self, target: Path, check: Callable[[Path], object] | None = None) -> Path:
        """Check the whole file against the manifest's hash, then move it to ``target`` atomically. ``check``
        (a model's header, say) reads the file in a second thread while it is hashed (SHA-256 leaves the GIL);
        what it raises discards the file and comes through."""
        self.flush()
        with ThreadPoolExecutor(1, thread_name_prefix="blob-check") as pool:
            checked = pool.submit(check, self.data_path) if check is not None else None
            digest = self.whole_digest()
            try:
                if checked is not None:
                    checked.result()
            except BaseException:
                self.discard()
                raise
        if digest != self.manifest.sha256:
            self.discard()
            raise BadManifest("wrong_file_hash", "the assembled file does not match its manifest's hash")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.close(self._fd)
        self._fd = -1
        os.replace(self.data_path, target)
        _fsync_dir(target.parent)
        self.have_path.unlink(missing_ok=True)
        return target

    def close(self) -> None:
        if self._fd >= 0:
            self.flush()
            os.close(self._fd)
            self._fd = -1

    def discard(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.data_path.unlink(missing_ok=True)
        self.have_path.unlink(missing_ok=True)


class BlobStore:
    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / BLOBS_DIR
        self.shared: dict[str, Shared] = {}

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    def share(self, path: Path, name: str | None = None) -> Shared:
        """Serve ``path`` to peers under its content address (hashed once per path, size and mtime)."""
        stat = path.stat()
        hashes_path = self.root / "hashes.json"
        try:
            known = json.loads(hashes_path.read_text())
        except (OSError, ValueError):
            known = {}
        key = str(path.resolve())
        entry = known.get(key) if isinstance(known, dict) else None
        manifest = None
        if isinstance(entry, dict) and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
            manifest = self.manifest(str(entry.get("address")))
        if manifest is None:
            manifest = manifest_of_file(path)
            self._save_manifest(manifest)
            known = known if isinstance(known, dict) else {}
            known[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "address": manifest.address}
            _write_atomically(hashes_path, json.dumps(known, indent=1).encode())
        shared = Shared(manifest.address, manifest, path, name or path.name)
        self.shared[shared.address] = shared
        return shared

    def manifest(self, address: str) -> Manifest | None:
        """A manifest this node holds, checked against its address."""
        if not is_address(address):
            return None
        try:
            return Manifest.decode((self.root / "manifests" / address).read_bytes(), address)
        except (OSError, BadManifest):
            return None

    def _save_manifest(self, manifest: Manifest) -> None:
        _write_atomically(self.root / "manifests" / manifest.address, manifest.encode())

    def read_chunk(self, address: str, index: int) -> bytes | None:
        """Chunk ``index`` of a blob this node serves; None when it does not serve it (or the file changed)."""
        shared = self.shared.get(address)
        if shared is None or not 0 <= index < shared.manifest.count:
            return None
        manifest = shared.manifest
        with shared.path.open("rb") as f:
            f.seek(index * manifest.chunk_size)
            data = f.read(manifest.chunk_length(index))
        return data if len(data) == manifest.chunk_length(index) else None

    def partial(self, manifest: Manifest) -> Partial:
        self._save_manifest(manifest)
        return Partial(self.root / "partial", manifest.address, manifest)

    def partial_progress(self, address: str) -> int:
        """Verified bytes of an unfinished download of ``address`` (0 when none)."""
        manifest = self.manifest(address)
        if manifest is None or not (self.root / "partial" / f"{address}.have").exists():
            return 0
        part = self.partial(manifest)
        try:
            return part.bytes_done
        finally:
            part.close()

    def cached(self, address: str) -> Path | None:
        path = self.cache_dir / address
        return path if is_address(address) and path.is_file() else None

    def keep(self, data: bytes) -> Shared:
        """Put ``data`` in the cache under its address and serve it (a task input this node sends by address)."""
        manifest = manifest_of_chunks(data[i:i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE))
        path = self.cache_dir / manifest.address
        if not path.is_file():
            _write_atomically(path, data)
        self._save_manifest(manifest)
        return self.share_cached(manifest)

    def share_cached(self, manifest: Manifest) -> Shared:
        path = self.cache_dir / manifest.address
        os.utime(path)  # the cache forgets the least recently used first
        shared = Shared(manifest.address, manifest, path, manifest.address)
        self.shared[shared.address] = shared
        return shared

    def evict(self, limit_bytes: int, keep: str) -> list[str]:
        """Delete the least recently used cached blobs until the cache holds at most ``limit_bytes``."""
        if not self.cache_dir.is_dir():
            return []
        files = sorted(((p.stat().st_mtime, p) for p in self.cache_dir.iterdir() if is_address(p.name)),
                       key=lambda item: item[0])
        total = sum(p.stat().st_size for _, p in files)
        gone: list[str] = []
        for _, path in files:
            if total <= limit_bytes:
                break
            if path.name == keep:
                continue
            total -= path.stat().st_size
            path.unlink(missing_ok=True)
            self.shared.pop(path.name, None)
            gone.append(path.name)
        return gone


def safe_model_name(name: str, fallback: str) -> str:
    """A file name a peer gave, reduced to a plain ``.gguf`` name in the models folder (never a path)."""
    base = Path(name.replace("\\", "/")).name
    if not base or base.startswith(".") or not base.lower().endswith(".gguf") or len(base) > 200 or "\x00" in base:
        base = f"{fallback}.gguf"
    if not Path(base).name == base:
        raise UserError(f"cannot store a model named {name!r}")
    return base


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
