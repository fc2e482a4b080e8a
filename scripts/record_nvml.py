"""Record every NVML reading the hardware probe and telemetry sampler use, as JSON the tests replay.

Run it on a machine with an NVIDIA GPU, with the node installed (``pip install -e .``)::

    python scripts/record_nvml.py --out tests/data/nvml_recording_<machine>.json
    python scripts/record_nvml.py --samples 5 --interval 2      # changing readings as sequences

The format is documented in ``hyperion_node/hardware/nvml.py`` and replayed by ``RecordedNvml``. Values
are stored exactly as pynvml returned them; a call that raised is stored as ``{"error": "NVML_ERROR_..."}``
so that a board without a power sensor replays as one. On a machine without a driver the recording holds
just the ``nvmlInit`` error, which is a useful recording too.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import datetime
import importlib.metadata
import json
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import pynvml

from hyperion_node.hardware.nvml import (
    CHANGING_DEVICE_READINGS,
    DEVICE_READINGS,
    RECORDING_FORMAT,
    SYSTEM_READINGS,
    NvmlApi,
    nvml_error_code,
    nvml_error_name,
    real_nvml,
)

# Arguments beyond the device handle, per reading. Only the GPU die sensor is recorded: it is the one
# sensor nvml.h defines for every board.
EXTRA_ARGS: dict[str, tuple[int, ...]] = {"nvmlDeviceGetTemperature": (pynvml.NVML_TEMPERATURE_GPU,)}


def to_json_value(value: Any) -> Any:
    """pynvml's return values as JSON: ctypes structs become objects of their fields, bytes become text."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, str | int | float) or value is None:
        return value
    if isinstance(value, tuple | list):
        return [to_json_value(item) for item in value]
    if isinstance(value, ctypes.Structure):
        return {field[0]: to_json_value(getattr(value, field[0])) for field in value._fields_}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: to_json_value(getattr(value, field.name)) for field in dataclasses.fields(value)}
    raise TypeError(f"cannot record a {type(value).__name__} reading: {value!r}")


def call(read: Callable[..., Any], *args: Any) -> Any:
    """One reading as it goes into the recording: its value, or the NVML error it raised."""
    try:
        return to_json_value(read(*args))
    except pynvml.NVMLError as exc:
        return {"error": nvml_error_name(nvml_error_code(exc) or pynvml.NVML_ERROR_UNKNOWN)}


def record(
    nvml: NvmlApi,
    *,
    samples: int = 1,
    interval_s: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Read everything once, then the changing readings ``samples - 1`` more times, ``interval_s`` apart."""
    system: dict[str, Any] = {}
    devices: list[dict[str, Any]] = []
    recording: dict[str, Any] = {
        "format": RECORDING_FORMAT,
        "recorded_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "recorder": {
            "script": "scripts/record_nvml.py",
            "nvidia_ml_py": _package_version("nvidia-ml-py"),
            "python": platform.python_version(),
            "os": platform.platform(),
        },
        "system": system,
        "devices": devices,
    }
    init = call(nvml.nvmlInit)
    if init is not None:
        system["nvmlInit"] = init
        return recording
    try:
        for name in SYSTEM_READINGS:
            system[name] = call(getattr(nvml, name))
        count = system["nvmlDeviceGetCount"]
        handles: list[object | None] = []
        for index in range(count if isinstance(count, int) else 0):
            device: dict[str, Any] = {}
            try:
                handles.append(nvml.nvmlDeviceGetHandleByIndex(index))
            except pynvml.NVMLError as exc:
                device["nvmlDeviceGetHandleByIndex"] = {"error": nvml_error_name(nvml_error_code(exc) or 0)}
                handles.append(None)
            devices.append(device)
        for device, handle in zip(devices, handles, strict=True):
            if handle is not None:
                for name in DEVICE_READINGS:
                    device[name] = call(getattr(nvml, name), handle, *EXTRA_ARGS.get(name, ()))
        for _ in range(samples - 1):
            sleep(interval_s)
            for device, handle in zip(devices, handles, strict=True):
                if handle is not None:
                    for name in CHANGING_DEVICE_READINGS:
                        value = call(getattr(nvml, name), handle, *EXTRA_ARGS.get(name, ()))
                        previous = device[name]
                        if not (isinstance(previous, dict) and set(previous) == {"sequence"}):
                            device[name] = previous = {"sequence": [previous]}
                        previous["sequence"].append(value)
    finally:
        nvml.nvmlShutdown()
    return recording


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", help="write the recording here instead of stdout")
    parser.add_argument("--samples", type=int, default=1, help="times to read the changing readings")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    args = parser.parse_args(argv)
    if args.samples < 1:
        parser.error("--samples must be at least 1")
    text = json.dumps(record(real_nvml(), samples=args.samples, interval_s=args.interval), indent=2) + "\n"
    if args.out:
        with open(args.out, "w", encoding="utf-8") as out:
            out.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
