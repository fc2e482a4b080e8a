"""NVML behind an interface: the real ``pynvml`` module, or a recording of it replayed.

The probe and the telemetry sampler only ever talk to an :class:`NvmlApi`. On a machine with a GPU that is
the ``pynvml`` module itself (a module satisfies a Protocol of functions); in tests it is
:class:`RecordedNvml`, which replays a JSON recording made by ``scripts/record_nvml.py`` and raises the
same ``pynvml.NVMLError`` subclasses real hardware raises. The error handling under test is therefore the
error handling that runs on a GPU node.

Recording format (``"format": "hyperion-nvml-recording/1"``)::

    {
      "format": "hyperion-nvml-recording/1",
      "system": {                                   # keys are the pynvml function names
        "nvmlInit": null,                           # optional; {"error": ...} when init failed
        "nvmlSystemGetDriverVersion": "550.54.15",
        "nvmlSystemGetCudaDriverVersion": 12040,
        "nvmlDeviceGetCount": 2                     # optional; defaults to len(devices)
      },
      "devices": [                                  # one object per index
        {"nvmlDeviceGetName": "NVIDIA H100 80GB HBM3",
         "nvmlDeviceGetMemoryInfo": {"total": ..., "free": ..., "used": ...},
         "nvmlDeviceGetPowerUsage": {"error": "NVML_ERROR_NOT_SUPPORTED"}, ...}
      ]
    }

Every value is what the pynvml function returned, unconverted (power in milliwatts, the CUDA version as
NVML's integer), so the probe's conversions run on replay too. A value may also be
``{"error": "NVML_ERROR_<NAME>"}`` (the call raised that error) or ``{"sequence": [v1, v2, ...]}`` (the
n-th call returns the n-th value, the last one repeating), which is how a recording made over several
samples replays readings that change, or a GPU that falls off the bus half way.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pynvml

from hyperion_node.errors import UserError

RECORDING_FORMAT = "hyperion-nvml-recording/1"

T = TypeVar("T")

# The pynvml functions the recorder calls once per machine and once per device. The recorder and
# RecordedNvml share these names, so a reading added to the probe without adding it here fails loudly
# (RecordingError) instead of silently replaying nothing.
SYSTEM_READINGS = ("nvmlSystemGetDriverVersion", "nvmlSystemGetCudaDriverVersion", "nvmlDeviceGetCount")
DEVICE_READINGS = (
    "nvmlDeviceGetName",
    "nvmlDeviceGetUUID",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetCudaComputeCapability",
    "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetTemperature",
    "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetEnforcedPowerLimit",
)
# Readings that move while the node runs; the recorder samples these repeatedly with --samples.
CHANGING_DEVICE_READINGS = (
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetTemperature",
    "nvmlDeviceGetPowerUsage",
)

# Errors that mean "this device or driver does not offer this reading", as opposed to "the GPU is in
# trouble". NVML returns NOT_SUPPORTED for sensors a board lacks (power on many GeForce and vGPU
# devices), NO_PERMISSION where a reading needs root, FUNCTION_NOT_FOUND where the driver predates the
# call (nvml.h: "Local version of NVML doesn't implement this function").
UNSUPPORTED_ERRORS = frozenset(
    {
        pynvml.NVML_ERROR_NOT_SUPPORTED,
        pynvml.NVML_ERROR_NO_PERMISSION,
        pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,
    }
)

# The library file pynvml dlopens (pynvml._LoadNvmlLibrary), named in the message a user sees.
NVML_LIBRARY = "nvml.dll" if sys.platform == "win32" else "libnvidia-ml.so.1"


class MemoryInfo(Protocol):
    """The fields of pynvml's ``c_nvmlMemory_t`` the node reads (bytes)."""

    @property
    def total(self) -> int: ...

    @property
    def free(self) -> int: ...

    @property
    def used(self) -> int: ...


class UtilizationRates(Protocol):
    """The fields of pynvml's ``c_nvmlUtilization_t`` (percent over the driver's last sample period)."""

    @property
    def gpu(self) -> int: ...

    @property
    def memory(self) -> int: ...


class NvmlApi(Protocol):
    """Exactly the pynvml functions the node calls. The ``pynvml`` module satisfies it as it is."""

    def nvmlInit(self) -> None: ...

    def nvmlShutdown(self) -> None: ...

    def nvmlSystemGetDriverVersion(self) -> str | bytes: ...

    def nvmlSystemGetCudaDriverVersion(self) -> int: ...

    def nvmlDeviceGetCount(self) -> int: ...

    def nvmlDeviceGetHandleByIndex(self, index: int, /) -> object: ...

    def nvmlDeviceGetName(self, handle: object, /) -> str | bytes: ...

    def nvmlDeviceGetUUID(self, handle: object, /) -> str | bytes: ...

    def nvmlDeviceGetMemoryInfo(self, handle: object, /) -> MemoryInfo: ...

    def nvmlDeviceGetCudaComputeCapability(self, handle: object, /) -> tuple[int, int]: ...

    def nvmlDeviceGetUtilizationRates(self, handle: object, /) -> UtilizationRates: ...

    def nvmlDeviceGetTemperature(self, handle: object, sensor: int, /) -> int: ...

    def nvmlDeviceGetPowerUsage(self, handle: object, /) -> int: ...

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: object, /) -> int: ...


def real_nvml() -> NvmlApi:
    """The installed pynvml module. Importing it never touches the driver; ``nvmlInit`` does."""
    api: NvmlApi = pynvml
    return api


# --- reading NVML's values and errors ---------------------------------------------------------------


def decode_text(value: str | bytes) -> str:
    """pynvml before 11.5 returned ``bytes`` for names, UUIDs and versions; newer ones return ``str``."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def format_cuda_version(value: int) -> str:
    """NVML encodes CUDA 12.4 as 12040 (nvml.h: ``NVML_CUDA_DRIVER_VERSION_MAJOR(v) = v / 1000``,
    ``MINOR(v) = (v % 1000) / 10``)."""
    return f"{value // 1000}.{(value % 1000) // 10}"


def is_nvml_error(exc: BaseException) -> bool:
    return isinstance(exc, pynvml.NVMLError)


def nvml_error_code(exc: BaseException) -> int | None:
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) else None


def is_unsupported(exc: BaseException) -> bool:
    """True for errors that mean "no such reading here" rather than "this GPU is failing"."""
    return is_nvml_error(exc) and nvml_error_code(exc) in UNSUPPORTED_ERRORS


def read_optional(read: Callable[..., T], *args: object) -> T | None:
    """Call an NVML reading; ``None`` where the device does not offer it, any other NVML error raised.

    A GPU that is failing (lost, unknown error) must not look like a GPU without a power sensor, so only
    the "unsupported" family becomes ``None``.
    """
    try:
        return read(*args)
    except pynvml.NVMLError as exc:
        if is_unsupported(exc):
            return None
        raise


def nvml_error_name(code: int) -> str:
    """``NVML_ERROR_NOT_SUPPORTED`` for 3: the constant's own name, as pynvml defines it."""
    for name, value in vars(pynvml).items():
        if name.startswith("NVML_ERROR_") and value == code:
            return str(name)
    return f"NVML_ERROR_{code}"


def describe_nvml_error(exc: BaseException) -> str:
    """One line for logs and ``gpu_status``: what went wrong, in words a user can act on."""
    code = nvml_error_code(exc)
    if code is None:
        return str(exc)
    if code == pynvml.NVML_ERROR_LIBRARY_NOT_FOUND:
        return f"NVML library not found ({NVML_LIBRARY})"
    if code == pynvml.NVML_ERROR_DRIVER_NOT_LOADED:
        return "NVIDIA kernel driver not loaded (NVML_ERROR_DRIVER_NOT_LOADED)"
    if code == pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH:
        return "NVML library and kernel driver versions differ; reboot or reload the nvidia module"
    if code == pynvml.NVML_ERROR_NO_PERMISSION:
        return "no permission to open the NVIDIA device files (/dev/nvidia*)"
    if code == pynvml.NVML_ERROR_GPU_IS_LOST:
        return "GPU is lost (fell off the bus or stopped responding; NVML_ERROR_GPU_IS_LOST)"
    # pynvml's own strings ("Not Supported", "Unknown Error") are a fixed table; they need no driver.
    return f"{exc} ({nvml_error_name(code)})"


def nvml_error(name: str) -> Exception:
    """A real pynvml error instance for ``NVML_ERROR_<NAME>``; pynvml picks the matching subclass."""
    code = getattr(pynvml, name, None)
    if not name.startswith("NVML_ERROR_") or not isinstance(code, int):
        raise RecordingError(f"unknown NVML error name {name!r}")
    error: Exception = pynvml.NVMLError(code)
    return error


# --- replaying a recording --------------------------------------------------------------------------


class RecordingError(UserError):
    """An NVML recording file that is not in the recorder's format, or lacks a reading the code asks for."""


@dataclass(frozen=True)
class RecordedHandle:
    """Stands in for pynvml's opaque ``c_nvmlDevice_t``."""

    index: int


@dataclass(frozen=True)
class RecordedMemoryInfo:
    total: int
    free: int
    used: int


@dataclass(frozen=True)
class RecordedUtilization:
    gpu: int
    memory: int


class RecordedNvml:
    """Replays an NVML recording through the :class:`NvmlApi` interface.

    Behaves like the library where the node could tell the difference: calls before ``nvmlInit`` raise
    ``NVML_ERROR_UNINITIALIZED``, init and shutdown are reference counted as in NVML, and recorded
    failures raise real ``pynvml.NVMLError`` subclasses. ``init_calls`` and ``shutdown_calls`` let tests
    check that every successful init is paired with a shutdown.
    """

    def __init__(self, recording: Path | str | Mapping[str, Any]) -> None:
        if isinstance(recording, Mapping):
            data: Any = recording
            source = "<dict>"
        else:
            source = str(recording)
            try:
                data = json.loads(Path(recording).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise RecordingError(f"{source}: cannot read NVML recording: {exc}") from exc
        self._source = source
        self._system, self._devices = _validate(data, source)
        # Per-reading call counts drive {"sequence": [...]} replay. The sampler reads from a worker
        # thread, so the counters and the init depth are guarded.
        self._lock = threading.Lock()
        self._calls: dict[tuple[int | None, str], int] = {}
        self._init_depth = 0
        self.init_calls = 0
        self.shutdown_calls = 0

    @property
    def initialized(self) -> bool:
        with self._lock:
            return self._init_depth > 0

    # -- system ---------------------------------------------------------------------------------------

    def nvmlInit(self) -> None:
        if "nvmlInit" in self._system:
            self._replay(None, "nvmlInit", self._system["nvmlInit"])
        with self._lock:
            self._init_depth += 1
            self.init_calls += 1

    def nvmlShutdown(self) -> None:
        with self._lock:
            if self._init_depth == 0:
                raise nvml_error("NVML_ERROR_UNINITIALIZED")
            self._init_depth -= 1
            self.shutdown_calls += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return _as_str(self._system_reading("nvmlSystemGetDriverVersion"), self._source)

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return _as_int(self._system_reading("nvmlSystemGetCudaDriverVersion"), self._source)

    def nvmlDeviceGetCount(self) -> int:
        self._require_init()
        if "nvmlDeviceGetCount" not in self._system:
            return len(self._devices)
        return _as_int(self._system_reading("nvmlDeviceGetCount"), self._source)

    # -- devices --------------------------------------------------------------------------------------

    def nvmlDeviceGetHandleByIndex(self, index: int, /) -> RecordedHandle:
        self._require_init()
        if not 0 <= index < len(self._devices):
            raise nvml_error("NVML_ERROR_INVALID_ARGUMENT")
        device = self._devices[index]
        if "nvmlDeviceGetHandleByIndex" in device:
            self._replay(index, "nvmlDeviceGetHandleByIndex", device["nvmlDeviceGetHandleByIndex"])
        return RecordedHandle(index)

    def nvmlDeviceGetName(self, handle: object, /) -> str:
        return _as_str(self._device_reading(handle, "nvmlDeviceGetName"), self._source)

    def nvmlDeviceGetUUID(self, handle: object, /) -> str:
        return _as_str(self._device_reading(handle, "nvmlDeviceGetUUID"), self._source)

    def nvmlDeviceGetMemoryInfo(self, handle: object, /) -> RecordedMemoryInfo:
        value = _as_dict(self._device_reading(handle, "nvmlDeviceGetMemoryInfo"), self._source)
        return RecordedMemoryInfo(
            total=_as_int(value.get("total"), self._source),
            free=_as_int(value.get("free"), self._source),
            used=_as_int(value.get("used"), self._source),
        )

    def nvmlDeviceGetCudaComputeCapability(self, handle: object, /) -> tuple[int, int]:
        value = self._device_reading(handle, "nvmlDeviceGetCudaComputeCapability")
        if not (isinstance(value, list) and len(value) == 2):
            raise RecordingError(f"{self._source}: compute capability must be [major, minor], got {value!r}")
        return _as_int(value[0], self._source), _as_int(value[1], self._source)

    def nvmlDeviceGetUtilizationRates(self, handle: object, /) -> RecordedUtilization:
        value = _as_dict(self._device_reading(handle, "nvmlDeviceGetUtilizationRates"), self._source)
        return RecordedUtilization(
            gpu=_as_int(value.get("gpu"), self._source),
            memory=_as_int(value.get("memory"), self._source),
        )

    def nvmlDeviceGetTemperature(self, handle: object, sensor: int, /) -> int:
        # Recordings hold the GPU die sensor only, the one NVML defines for every board.
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise nvml_error("NVML_ERROR_INVALID_ARGUMENT")
        return _as_int(self._device_reading(handle, "nvmlDeviceGetTemperature"), self._source)

    def nvmlDeviceGetPowerUsage(self, handle: object, /) -> int:
        return _as_int(self._device_reading(handle, "nvmlDeviceGetPowerUsage"), self._source)

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: object, /) -> int:
        return _as_int(self._device_reading(handle, "nvmlDeviceGetEnforcedPowerLimit"), self._source)

    # -- replay machinery -----------------------------------------------------------------------------

    def _require_init(self) -> None:
        with self._lock:
            if self._init_depth == 0:
                raise nvml_error("NVML_ERROR_UNINITIALIZED")

    def _system_reading(self, name: str) -> Any:
        self._require_init()
        if name not in self._system:
            raise RecordingError(f"{self._source}: recording has no system reading {name}")
        return self._replay(None, name, self._system[name])

    def _device_reading(self, handle: object, name: str) -> Any:
        self._require_init()
        if not isinstance(handle, RecordedHandle) or not 0 <= handle.index < len(self._devices):
            raise nvml_error("NVML_ERROR_INVALID_ARGUMENT")
        device = self._devices[handle.index]
        if name not in device:
            raise RecordingError(f"{self._source}: device {handle.index} has no reading {name}")
        return self._replay(handle.index, name, device[name])

    def _replay(self, device: int | None, name: str, recorded: Any) -> Any:
        if _is_sequence(recorded):
            values = recorded["sequence"]
            with self._lock:
                call = self._calls.get((device, name), 0)
                self._calls[(device, name)] = call + 1
            recorded = values[min(call, len(values) - 1)]
        if _is_error(recorded):
            raise nvml_error(recorded["error"])
        return recorded


def _is_error(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"error"}


def _is_sequence(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"sequence"}


def _validate(data: Any, source: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Check the shape and every error name up front, so a typo fails at load, not mid-test."""
    if not isinstance(data, Mapping):
        raise RecordingError(f"{source}: an NVML recording is a JSON object")
    if data.get("format") != RECORDING_FORMAT:
        raise RecordingError(f"{source}: format is {data.get('format')!r}, expected {RECORDING_FORMAT!r}")
    system = data.get("system", {})
    devices = data.get("devices", [])
    if not isinstance(system, dict):
        raise RecordingError(f"{source}: 'system' must be an object")
    if not isinstance(devices, list) or not all(isinstance(device, dict) for device in devices):
        raise RecordingError(f"{source}: 'devices' must be a list of objects")
    for scope in [system, *devices]:
        for name, value in scope.items():
            if not name.startswith("nvml"):
                raise RecordingError(f"{source}: {name!r} is not a pynvml function name")
            alternatives = value["sequence"] if _is_sequence(value) else [value]
            if not isinstance(alternatives, list) or not alternatives:
                raise RecordingError(f"{source}: {name}: 'sequence' must be a non-empty list")
            for alternative in alternatives:
                if _is_error(alternative):
                    nvml_error(str(alternative["error"]))  # raises RecordingError on an unknown name
    return system, devices


def _as_int(value: Any, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecordingError(f"{source}: expected an integer reading, got {value!r}")
    return value


def _as_str(value: Any, source: str) -> str:
    if not isinstance(value, str):
        raise RecordingError(f"{source}: expected a string reading, got {value!r}")
    return value


def _as_dict(value: Any, source: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RecordingError(f"{source}: expected an object reading, got {value!r}")
    return value
