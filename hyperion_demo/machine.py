"""A simulated machine: the board a demo node pretends to have, read through the same NVML interface
(:class:`~hyperion_node.hardware.nvml.NvmlApi`) that the real probe and telemetry sampler use, so the node's
hardware profile, heartbeats and dashboard rows come from the real code.

The demo's script degrades a machine by raising ``degrade`` from 0 to 1: its GPU runs hotter (the scheduler's
health trend reads ``temp_c`` from the heartbeats) and its runtimes fail more of their tasks (the error-rate
signal), which is what a board with a failing fan or bad memory looks like from the network.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass

from hyperion_demo.profiles import SimProfile

# At full degradation the board sits at this temperature whatever its load: past the scheduler's
# gpu_temp_bad_c (92), where NVIDIA boards throttle, so the temperature signal alone would drain it.
DEGRADED_TEMP_C = 98.0
DEGRADED_FAULT_RATE = 0.6  # at full degradation, above the health's error_rate_bad (0.5)


@dataclass(frozen=True)
class _Memory:
    total: int
    free: int
    used: int


@dataclass(frozen=True)
class _Utilization:
    gpu: int
    memory: int


class SimMachine:
    """One node's simulated board and how loaded and how degraded it is. Read from the sampler's worker
    thread and written from trio, hence the lock."""

    def __init__(self, profile: SimProfile, index: int, seed: int) -> None:
        self.profile = profile
        self.index = index
        self.seed = seed
        self._lock = threading.Lock()
        self._busy = 0
        self._degrade = 0.0

    @property
    def degrade(self) -> float:
        with self._lock:
            return self._degrade

    def set_degrade(self, level: float) -> None:
        with self._lock:
            self._degrade = min(max(level, 0.0), 1.0)

    def fault_rate(self) -> float:
        return self.profile.fault_rate + self.degrade * DEGRADED_FAULT_RATE

    def slowdown(self) -> float:
        """Thermal throttling: a hot board is slower (up to half speed at full degradation)."""
        return 1.0 + self.degrade

    def task_started(self) -> None:
        with self._lock:
            self._busy += 1

    def task_ended(self) -> None:
        with self._lock:
            self._busy -= 1

    def utilization(self) -> int:
        with self._lock:
            return min(100, round(100 * self._busy / max(self.profile.slots * 3, 1)))

    def temperature(self) -> int:
        p = self.profile
        healthy = p.idle_temp_c + (p.load_temp_c - p.idle_temp_c) * self.utilization() / 100
        return round(healthy + self.degrade * (DEGRADED_TEMP_C - healthy))


class SimulatedNvml:
    """The :class:`NvmlApi` of a machine with the profile's one GPU (none for a CPU-only profile)."""

    def __init__(self, machine: SimMachine) -> None:
        self._machine = machine
        self._uuid = "GPU-" + hashlib.sha256(f"{machine.seed}:{machine.index}".encode()).hexdigest()[:32]

    def nvmlInit(self) -> None:
        return None

    def nvmlShutdown(self) -> None:
        return None

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return 12040

    def nvmlDeviceGetCount(self) -> int:
        return 1 if self._machine.profile.vram_bytes else 0

    def nvmlDeviceGetHandleByIndex(self, index: int, /) -> object:
        return index

    def nvmlDeviceGetName(self, handle: object, /) -> str:
        return self._machine.profile.name

    def nvmlDeviceGetUUID(self, handle: object, /) -> str:
        return self._uuid

    def nvmlDeviceGetMemoryInfo(self, handle: object, /) -> _Memory:
        total = self._machine.profile.vram_bytes
        used = total * (10 + self._machine.utilization() * 6 // 10) // 100  # weights resident, KV cache grows
        return _Memory(total=total, free=total - used, used=used)

    def nvmlDeviceGetCudaComputeCapability(self, handle: object, /) -> tuple[int, int]:
        return (9, 0) if "H100" in self._machine.profile.name else (8, 6)

    def nvmlDeviceGetUtilizationRates(self, handle: object, /) -> _Utilization:
        util = self._machine.utilization()
        return _Utilization(gpu=util, memory=util // 2)

    def nvmlDeviceGetTemperature(self, handle: object, sensor: int, /) -> int:
        return self._machine.temperature()

    def nvmlDeviceGetPowerUsage(self, handle: object, /) -> int:
        limit = self._machine.profile.power_limit_w
        return round(1000 * limit * (0.15 + 0.8 * self._machine.utilization() / 100))  # milliwatts, as NVML

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: object, /) -> int:
        return round(1000 * self._machine.profile.power_limit_w)
