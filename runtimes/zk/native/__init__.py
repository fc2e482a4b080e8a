"""The optional native kernel (``msm.c``: the MSMs and the NTT), built with the system's C compiler, loaded by ctypes.

Why it exists: with gmpy2 the Python MSM is the floor of a proof. Its per-point bucket work and its batched
additions are interpreter work (see ``runtimes.zk.msm``), and a 2^14-constraint proof as a whole process took
1.1-1.5x the ``snarkjs groth16 prove`` command. The kernel computes the same windows, digits and buckets in C.

Nothing needs it. When no compiler is found or the build fails, ``load`` returns None, says why in
``unavailable_reason``, and the MSM jobs run the Python MSM (gmpy2 or ints) instead, with the same result.
The library is cached per source and compiler flags under the user's cache directory
(``$XDG_CACHE_HOME/hyperion-node/native``, or ``HYPERION_NATIVE_CACHE``). scripts/setup.sh builds it (-O3 takes
~5 s; -O2 builds in 1 s but its MSMs took 1.3-1.5x as long); otherwise the first proof does, under a file lock,
so that the pool's workers build it once and never load a half-written file. The daemon itself never builds
or loads it (``buildable`` only looks): proofs run in worker processes.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runtimes.zk.curve import G2_B
from runtimes.zk.exceptions import MalformedInput
from runtimes.zk.field import B1

SOURCE = Path(__file__).with_name("msm.c")
ABI = 4  # HYPERION_MSM_ABI in msm.c
FLAGS = ("-O3", "-shared", "-fPIC", "-std=c11")
BUILD_TIMEOUT_S = 120

_library: ctypes.CDLL | None = None
_tried = False
unavailable_reason = ""


def cache_dir() -> Path:
    explicit = os.environ.get("HYPERION_NATIVE_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hyperion-node" / "native"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _target(compiler: str) -> Path:
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join((compiler, *FLAGS)).encode()).hexdigest()[:16]
    return cache_dir() / f"msm-{digest}.so"


def _build(compiler: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it: wait, then use its build
        if target.exists():
            return
        fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
        os.close(fd)
        try:
            done = subprocess.run([compiler, *FLAGS, "-o", temporary, str(SOURCE)], capture_output=True,
                                  text=True, timeout=BUILD_TIMEOUT_S, check=False)
            if done.returncode != 0:
                raise OSError(f"{compiler} failed: {done.stderr.strip()[-500:]}")
            os.replace(temporary, target)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)


def _ruled_out() -> str:
    """Why the kernel cannot be had here before any build is tried ("" when nothing rules it out)."""
    if os.environ.get("HYPERION_ZK_NATIVE", "1") == "0":
        return "turned off by HYPERION_ZK_NATIVE=0"
    if _compiler() is None:
        return "no C compiler (cc, gcc or clang) on PATH"
    return ""


def buildable() -> bool:
    """Whether ``load`` can be expected to work here (not turned off, and a C compiler found),
    without building or loading anything; ``unavailable_reason`` says why not."""
    global unavailable_reason
    reason = _ruled_out()
    if reason:
        unavailable_reason = reason
    return not reason


def built() -> Path | None:
    """The library built for this source and compiler, if it is in the cache (nothing is built or loaded)."""
    compiler = _compiler()
    try:
        target = _target(compiler) if compiler else None
    except RuntimeError:  # no home directory for the cache
        return None
    return target if target is not None and target.exists() else None


def load() -> ctypes.CDLL | None:
    """The kernel, built if needed; None (and ``unavailable_reason``) when it cannot be had here."""
    global _library, _tried, unavailable_reason
    if _tried:
        return _library
    _tried = True
    if not buildable():
        return None
    compiler = _compiler()
    assert compiler is not None  # buildable() found one
    try:
        target = _target(compiler)  # Path.home() raises RuntimeError where no home directory can be found
        if not target.exists():
            _build(compiler, target)
        library = ctypes.CDLL(str(target))
        if library.hyperion_msm_abi() != ABI:
            raise OSError(f"{target} has ABI {library.hyperion_msm_abi()}, expected {ABI}")
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        unavailable_reason = f"the native MSM kernel could not be built or loaded: {exc}"
        return None
    library.hyperion_ntt.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p]
    library.hyperion_ntt.restype = ctypes.c_int
    library.hyperion_msm_section.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t,
                                             ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_uint64)]
    library.hyperion_msm_section.restype = ctypes.c_int
    library.hyperion_check_section.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
                                               ctypes.POINTER(ctypes.c_int)]
    library.hyperion_check_section.restype = ctypes.c_long
    _library = library
    return library


def available() -> bool:
    return load() is not None


def ntt(values: Sequence[int], omega: int) -> list[int]:
    """``runtimes.zk.fft.ntt`` in C (values and omega in [0, r)); only once ``load`` has returned the kernel."""
    library = load()
    if library is None:
        raise RuntimeError(f"the native kernel is not loaded: {unavailable_reason}")
    buffer = ctypes.create_string_buffer(b"".join(v.to_bytes(32, "little") for v in values), 32 * len(values))
    status = library.hyperion_ntt(buffer, len(values), omega.to_bytes(32, "little"))
    if status != 0:
        raise ValueError(f"transform size {len(values)} is not a power of two")
    raw = buffer.raw
    return [int.from_bytes(raw[i : i + 32], "little") for i in range(0, len(raw), 32)]


def check_section(group: int, section: bytes, *, label: str) -> bool:
    """``zkey.decode_g1`` / ``decode_g2``'s checks on a .zkey point section as it is (Montgomery form), with the
    same ``MalformedInput``; False when the kernel cannot be had here (the caller decodes in Python)."""
    library = load()
    if library is None:
        return False
    size = 64 * group
    b = (B1.to_bytes(32, "little") if group == 1
         else b"".join(v.to_bytes(32, "little") for v in G2_B))
    why = ctypes.c_int(0)
    bad = library.hyperion_check_section(group, section, len(section) // size, b, ctypes.byref(why))
    if bad >= 0:
        curve = "BN254 G1" if group == 1 else "the BN254 G2 twist"
        problem = "has a coordinate >= q" if why.value == 1 else f"is not on {curve}"
        raise MalformedInput(f"{label}: point {bad} {problem}")
    return True


def msm_section(group: int, section: bytes, scalars: bytes, c: int, windows: tuple[int, int]) -> Any | None:
    """The MSM of a checked .zkey point section (``check_section``) with scalars packed as 32-byte
    little-endian numbers: the Jacobian result of ``msm_g1`` / ``msm_g2`` (``runtimes.zk.msm``) for those
    windows, as plain ints (Fq2 pairs for G2); None when the kernel cannot be had here."""
    library = load()
    if library is None:
        return None
    n = len(scalars) // 32
    if len(section) != 64 * group * n:
        raise ValueError(f"{len(section)} bytes of points for {n} scalars")
    out = (ctypes.c_uint64 * (12 * group))()
    status = library.hyperion_msm_section(group, section, scalars, n, c, windows[0], windows[1], out)
    if status != 0:
        raise RuntimeError(f"the native MSM kernel failed ({status}: bad window or out of memory)")
    return _jacobian(group, out)


def _jacobian(group: int, out: Any) -> Any:
    values = [_limbs_to_int(out, 4 * k) for k in range(3 * group)]
    if group == 1:
        return values[0], values[1], values[2]
    return (values[0], values[1]), (values[2], values[3]), (values[4], values[5])


def _limbs_to_int(words: Any, start: int) -> int:
    return int.from_bytes(b"".join(int(words[start + i]).to_bytes(8, "little") for i in range(4)), "little")
