"""Find out what machine the node runs on: GPUs through NVML, CPU, RAM and the data disk.

Everything here blocks (NVML calls, /proc reads); from trio, call ``probe_hardware`` through
``trio.to_thread.run_sync``. A machine without an NVIDIA driver is a normal machine, not an error: it gets
an empty GPU list and a one-line ``gpu_status`` saying why, never a traceback.
"""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

import psutil
import pynvml
import structlog

from hyperion_node.hardware.models import CpuInfo, GpuInfo, HardwareProfile
from hyperion_node.hardware.nvml import (
    NvmlApi,
    decode_text,
    describe_nvml_error,
    format_cuda_version,
    nvml_error_code,
    read_optional,
    real_nvml,
)

log = structlog.get_logger(__name__)

CPUINFO_PATH = Path("/proc/cpuinfo")

# nvmlInit failures that mean "there is no usable NVIDIA driver here" (as opposed to a broken one).
_NO_DRIVER_ERRORS = frozenset({pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED})


def probe_hardware(disk_path: Path, nvml: NvmlApi | None = None) -> HardwareProfile:
    """Read the machine once. ``nvml=None`` uses the installed pynvml (the real driver, if any)."""
    gpus, gpu_status = probe_gpus(real_nvml() if nvml is None else nvml)
    memory = psutil.virtual_memory()
    disk = shutil.disk_usage(_nearest_existing(disk_path))
    return HardwareProfile(
        gpus=gpus,
        gpu_status=gpu_status,
        cpu=read_cpu_info(),
        ram_total_bytes=int(memory.total),
        ram_available_bytes=int(memory.available),
        disk_path=str(disk_path),
        disk_total_bytes=disk.total,
        disk_free_bytes=disk.free,
    )


def probe_gpus(nvml: NvmlApi) -> tuple[tuple[GpuInfo, ...], str]:
    """Every GPU NVML can read, and ``"ok"`` or a one-line reason why some or all are missing."""
    try:
        nvml.nvmlInit()
    except pynvml.NVMLError as exc:
        prefix = "no NVIDIA driver" if nvml_error_code(exc) in _NO_DRIVER_ERRORS else "NVML unavailable"
        return (), f"{prefix}: {describe_nvml_error(exc)}"
    try:
        return _read_gpus(nvml)
    finally:
        try:
            nvml.nvmlShutdown()
        except pynvml.NVMLError as exc:
            # The readings are already taken; a failed shutdown only leaks NVML's own handles.
            log.warning("nvml_shutdown_failed", error=describe_nvml_error(exc))


def _read_gpus(nvml: NvmlApi) -> tuple[tuple[GpuInfo, ...], str]:
    try:
        driver_version = decode_text(nvml.nvmlSystemGetDriverVersion())
        cuda_version = format_cuda_version(nvml.nvmlSystemGetCudaDriverVersion())
        count = nvml.nvmlDeviceGetCount()
    except pynvml.NVMLError as exc:
        return (), f"NVML error: {describe_nvml_error(exc)}"
    if count == 0:
        return (), "NVIDIA driver loaded but NVML lists no GPUs"
    gpus: list[GpuInfo] = []
    failures: list[str] = []
    for index in range(count):
        try:
            gpus.append(read_gpu(nvml, index, driver_version=driver_version, cuda_version=cuda_version))
        except pynvml.NVMLError as exc:
            # One sick GPU must not hide the healthy ones; it is named in gpu_status instead.
            failures.append(f"GPU {index} unreadable: {describe_nvml_error(exc)}")
    return tuple(gpus), "; ".join(failures) if failures else "ok"


def read_gpu(nvml: NvmlApi, index: int, *, driver_version: str, cuda_version: str) -> GpuInfo:
    """One device. Identity and memory must read; sensors the board lacks become ``None``."""
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
    utilization = read_optional(nvml.nvmlDeviceGetUtilizationRates, handle)
    power_mw = read_optional(nvml.nvmlDeviceGetPowerUsage, handle)
    limit_mw = read_optional(nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
    return GpuInfo(
        index=index,
        name=decode_text(nvml.nvmlDeviceGetName(handle)),
        uuid=decode_text(nvml.nvmlDeviceGetUUID(handle)),
        vram_total_bytes=int(memory.total),
        vram_free_bytes=int(memory.free),
        driver_version=driver_version,
        cuda_version=cuda_version,
        compute_capability=f"{major}.{minor}",
        utilization_percent=None if utilization is None else int(utilization.gpu),
        temperature_c=read_optional(nvml.nvmlDeviceGetTemperature, handle, pynvml.NVML_TEMPERATURE_GPU),
        power_watts=milliwatts_to_watts(power_mw),
        power_limit_watts=milliwatts_to_watts(limit_mw),
    )


def milliwatts_to_watts(value: int | None) -> float | None:
    """NVML reports power in milliwatts (nvml.h, nvmlDeviceGetPowerUsage)."""
    return None if value is None else value / 1000.0


# --- CPU --------------------------------------------------------------------------------------------


def read_cpu_info(cpuinfo_path: Path = CPUINFO_PATH) -> CpuInfo:
    try:
        text = cpuinfo_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""  # not Linux, or /proc not mounted: fall back to what platform knows
    model, flags = parse_cpuinfo(text)
    physical = psutil.cpu_count(logical=False)
    return CpuInfo(
        model=model or platform.processor() or platform.machine() or "unknown",
        logical_cores=usable_cpu_count(),
        physical_cores=physical if isinstance(physical, int) and physical > 0 else None,
        avx2="avx2" in flags,
        avx512="avx512f" in flags,
        architecture=platform.machine(),
    )


def parse_cpuinfo(text: str) -> tuple[str | None, frozenset[str]]:
    """The CPU model name and feature flags from /proc/cpuinfo text (first processor block).

    x86 kernels write ``model name`` and ``flags`` (and a numeric ``model``, which is not a name);
    arm64 writes ``Features`` and, on most boards, no model name at all (only ``CPU part`` numbers),
    though a Raspberry Pi adds a ``Model`` line. The model may therefore be ``None``.
    """
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if sep and value and key not in fields:
            fields[key] = value
    model = fields.get("model name") or fields.get("cpu model")
    if model is None and not fields.get("model", "0").isdigit():
        model = fields["model"]
    flags = fields.get("flags") or fields.get("features") or ""
    return model, frozenset(flags.split())


def usable_cpu_count() -> int:
    """CPUs this process may run on. In a container or under taskset that is fewer than the host has,
    and it is what a benchmark will actually get."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _nearest_existing(path: Path) -> Path:
    """The data directory may not exist yet on first start; its filesystem is its nearest ancestor's."""
    path = path.absolute()
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return path
