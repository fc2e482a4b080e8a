"""The node's data directory: where each file lives, and the lock that allows one daemon per directory.

Layout::

    <data dir>/            0700
      identity.key         0600  libp2p Ed25519 private key (protobuf, as libp2p serializes it)
      api.token            0600  bearer token for the control API (both refused when others can read them)
      api.json             0600  where the running daemon's API listens (written when ready, removed at exit)
      daemon.lock                flock held by the running daemon; holds its PID
      node.db                    SQLite (WAL) state
      cache/                     models assembled from packages, benchmark artefacts
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyperion_node.errors import AlreadyRunning, EnvironmentProblem, NodeNotRunning

# What a token file may hold: RFC 6750's b64token (section 2.1), 16 to 512 characters; ours is 43
# (secrets.token_urlsafe(32)). 16 keeps a hand-written token from being guessable; 512 is the API's cap on
# a presented token (hyperion_node/api/guard.py MAX_TOKEN_BYTES).
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
TOKEN_LENGTHS = range(16, 513)


@dataclass(frozen=True)
class PrivateFileProblem:
    """Why a secret file is not private to the user we run as, and the command that fixes it."""

    detail: str
    fix: str


def private_file_problem(path: Path) -> PrivateFileProblem | None:
    """None when only we can read and change ``path``: mode without group or other bits, and our user owns
    it (an owner can read a 0600 file, and chmod it back). The node key and the API token are both checked
    with this, by the daemon at start and by the CLI before it sends the token."""
    st = path.stat()
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return PrivateFileProblem(f"is open to other users (mode {mode:04o})", f"chmod 600 {path}")
    uid = os.geteuid()
    if st.st_uid != uid:
        # Root is never told to take the file: a service's files would become root's, and the service could not
        # start. It runs the command as the owner instead.
        fix = f"sudo -u '#{st.st_uid}' hyperion-node <command>" if uid == 0 else f"chown {uid} {path}"
        return PrivateFileProblem(f"belongs to another user (uid {st.st_uid}; this process runs as uid {uid})",
                                  fix)
    return None


@dataclass(frozen=True)
class DataDir:
    root: Path

    @property
    def key_path(self) -> Path:
        return self.root / "identity.key"

    @property
    def token_path(self) -> Path:
        return self.root / "api.token"

    @property
    def api_file(self) -> Path:
        return self.root / "api.json"

    @property
    def lock_path(self) -> Path:
        return self.root / "daemon.lock"

    @property
    def db_path(self) -> Path:
        return self.root / "node.db"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    def ensure(self) -> None:
        """Create the directory (0700) and its cache folder."""
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.cache_dir.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise EnvironmentProblem(
                f"cannot create data dir {self.root}: {exc.strerror}",
                hint="choose a writable one with --data-dir or HYPERION_DATA_DIR",
            ) from exc

    def api_token(self, *, create: bool) -> str:
        """The control API's bearer token; created (0600) on the daemon's first start. A token file that
        others can read, or that holds no usable token, is refused, by the daemon and by the CLI alike."""
        path = self.token_path
        if not path.exists():
            if not create:
                raise NodeNotRunning(f"no API token in {self.root}", hint="start the node with `hyperion-node start`")
            write_private(path, secrets.token_urlsafe(32).encode())
        problem = private_file_problem(path)
        if problem is not None:
            raise EnvironmentProblem(f"API token {path} {problem.detail}", hint=f"run `{problem.fix}`")
        token = path.read_bytes().strip()
        if len(token) not in TOKEN_LENGTHS or not _TOKEN.fullmatch(token.decode("latin-1")):
            raise EnvironmentProblem(
                f"API token {path} does not hold a usable token (16 to 512 of A-Z a-z 0-9 - . _ ~ + /)",
                hint="delete it and restart the node, which writes a new one",
            )
        return token.decode("ascii")

    def write_api_info(self, info: dict[str, Any]) -> None:
        write_private(self.api_file, json.dumps(info).encode())

    def read_api_info(self) -> dict[str, Any]:
        """Where the running daemon's API is; raises ``NodeNotRunning`` when no daemon holds the lock."""
        pid = running_pid(self)
        if pid is None:
            raise NodeNotRunning(
                f"no hyperion-node is running on data dir {self.root}",
                hint="start one with `hyperion-node start` (or pass the right --data-dir)",
            )
        try:
            info: dict[str, Any] = json.loads(self.api_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise NodeNotRunning(
                f"hyperion-node (PID {pid}) on {self.root} is starting and not ready yet", hint="try again shortly"
            ) from exc
        return info


def write_private(path: Path, data: bytes) -> None:
    """Write a file readable by its owner only, atomically (temp file + rename), so a crash leaves
    either the old content or the new, never half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def running_pid(data_dir: DataDir) -> int | None:
    """PID of the daemon holding the lock, or None when nobody holds it."""
    try:
        fd = os.open(data_dir.lock_path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except PermissionError as exc:
        raise EnvironmentProblem(f"this user cannot read the data dir {data_dir.root}",
                                 hint="run the command as the user that runs the node") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@contextlib.contextmanager
def daemon_lock(data_dir: DataDir) -> Iterator[None]:
    """Hold the data dir's lock for the daemon's lifetime. The kernel drops an flock when the process
    dies, so a SIGKILLed daemon never leaves a stale lock behind."""
    fd = os.open(data_dir.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            pid = text if text.isdigit() else "unknown"
            raise AlreadyRunning(
                f"another hyperion-node (PID {pid}) is already running on data dir {data_dir.root}",
                hint=f"stop it (kill {pid}) or start this one with another --data-dir",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                data_dir.api_file.unlink()
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock
