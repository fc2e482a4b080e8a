"""What the node knows about its machine: plain, frozen records with no I/O.

The probe (``probe.py``) fills these in; everything else (capability records, the benchmark cache, the
control API) only reads them. Keeping them free of NVML and psutil is what lets tests build any machine
they like.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from runtimes.interface import HardwareSummary

# Bumped whenever the set of fields hashed by ``HardwareProfile.fingerprint`` changes, so that a new node
# version never matches a benchmark cached under the old definition by accident.
FINGERPRINT_VERSION = 1


@dataclass(frozen=True)
class GpuInfo:
    """One NVIDIA GPU as NVML reports it. A reading NVML does not support on this device is ``None``."""

    index: int
    name: str
    uuid: str
    vram_total_bytes: int
    vram_free_bytes: int
    driver_version: str
    cuda_version: str  # highest CUDA version the driver supports, e.g. "12.4"
    compute_capability: str  # e.g. "9.0"
    utilization_percent: int | None
    temperature_c: int | None
    power_watts: float | None
    power_limit_watts: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "uuid": self.uuid,
            "vram_total_bytes": self.vram_total_bytes,
            "vram_free_bytes": self.vram_free_bytes,
            "driver_version": self.driver_version,
            "cuda_version": self.cuda_version,
            "compute_capability": self.compute_capability,
            "utilization_percent": self.utilization_percent,
            "temperature_c": self.temperature_c,
            "power_watts": self.power_watts,
            "power_limit_watts": self.power_limit_watts,
        }


@dataclass(frozen=True)
class CpuInfo:
    """The CPU the node's processes may run on."""

    model: str
    logical_cores: int  # CPUs this process may be scheduled on (affinity), not the host's total
    physical_cores: int | None  # None where the OS does not tell (some containers, some ARM boards)
    avx2: bool
    avx512: bool  # AVX-512 Foundation (the ``avx512f`` flag); the subsets all require it
    architecture: str  # platform.machine(), e.g. "x86_64", "aarch64"

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "logical_cores": self.logical_cores,
            "physical_cores": self.physical_cores,
            "avx2": self.avx2,
            "avx512": self.avx512,
            "architecture": self.architecture,
        }


@dataclass(frozen=True)
class HardwareProfile:
    """A snapshot of the machine: what it is (stable) and how much of it is free right now (changing)."""

    gpus: tuple[GpuInfo, ...]
    # "ok" when every GPU NVML listed was read; otherwise one line saying why GPUs are missing,
    # e.g. "no NVIDIA driver: NVML library not found (libnvidia-ml.so.1)".
    gpu_status: str
    cpu: CpuInfo
    ram_total_bytes: int
    ram_available_bytes: int
    disk_path: str
    disk_total_bytes: int
    disk_free_bytes: int

    def fingerprint(self) -> str:
        """A sha256 hex digest of what decides benchmark results on this machine.

        Only identity and capacity go in (CPU model and cores, each GPU's name, UUID, total VRAM,
        compute capability and driver); values that move from one second to the next (free memory,
        temperature, load) stay out, or every restart would throw the benchmark cache away. GPUs are
        hashed as a set, ordered by UUID, because NVML's enumeration order is not a property of the
        hardware.
        """
        identity = {
            "version": FINGERPRINT_VERSION,
            "cpu": self.cpu.to_json(),
            "gpus": [
                {
                    "name": gpu.name,
                    "uuid": gpu.uuid,
                    "vram_total_bytes": gpu.vram_total_bytes,
                    "compute_capability": gpu.compute_capability,
                    "driver_version": gpu.driver_version,
                    "cuda_version": gpu.cuda_version,
                }
                for gpu in sorted(self.gpus, key=lambda gpu: gpu.uuid)
            ],
        }
        canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-ready data (lists, not tuples), fingerprint included for the control API."""
        return {
            "gpus": [gpu.to_json() for gpu in self.gpus],
            "gpu_status": self.gpu_status,
            "cpu": self.cpu.to_json(),
            "ram_total_bytes": self.ram_total_bytes,
            "ram_available_bytes": self.ram_available_bytes,
            "disk_path": self.disk_path,
            "disk_total_bytes": self.disk_total_bytes,
            "disk_free_bytes": self.disk_free_bytes,
            "fingerprint": self.fingerprint(),
        }

    def summary(self) -> HardwareSummary:
        """The part of the profile a runtime gets in its ``RuntimeContext``."""
        return HardwareSummary(
            cpu_model=self.cpu.model,
            cpu_cores=self.cpu.logical_cores,
            ram_total_bytes=self.ram_total_bytes,
            ram_available_bytes=self.ram_available_bytes,
            gpus=tuple(gpu.to_json() for gpu in self.gpus),
            fingerprint=self.fingerprint(),
        )
