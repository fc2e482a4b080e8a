"""Live readings of the machine while the node runs: GPU load, free VRAM, RAM, load average, own RSS.

The sampler is a trio component. NVML calls block (a sick GPU can hold one for seconds), so every
reading runs in a worker thread behind a ``CapacityLimiter(1)``; the event loop never waits on the
driver. A GPU that fails at runtime drops out of the samples with one warning, and CPU/RAM sampling goes
on: losing a GPU must not take the daemon down with it.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psutil
import pynvml
import structlog
import trio

from hyperion_node.errors import InternalError
from hyperion_node.hardware.nvml import NvmlApi, describe_nvml_error, read_optional, real_nvml
from hyperion_node.hardware.probe import milliwatts_to_watts
from hyperion_node.trio_types import TaskStatus

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class GpuSample:
    """One GPU at one instant. Readings the board does not offer are ``None``."""

    index: int
    utilization_percent: int | None
    vram_free_bytes: int
    temperature_c: int | None
    power_watts: float | None


@dataclass(frozen=True)
class TelemetrySample:
    """The machine at one instant. ``gpus`` holds only the GPUs that answered this time."""

    time: float  # wall clock (time.time()), so samples can be compared across processes and restarts
    gpus: tuple[GpuSample, ...]
    ram_available_bytes: int
    load_avg_1m: float
    process_rss_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "gpus": [
                {
                    "index": gpu.index,
                    "utilization_percent": gpu.utilization_percent,
                    "vram_free_bytes": gpu.vram_free_bytes,
                    "temperature_c": gpu.temperature_c,
                    "power_watts": gpu.power_watts,
                }
                for gpu in self.gpus
            ],
            "ram_available_bytes": self.ram_available_bytes,
            "load_avg_1m": self.load_avg_1m,
            "process_rss_bytes": self.process_rss_bytes,
        }


@dataclass(frozen=True)
class _Reading:
    """What one worker-thread pass returns; the trio side decides what to log."""

    sample: TelemetrySample
    failures: dict[int, str]  # GPU index -> why it could not be read this time


class TelemetrySampler:
    """Samples the machine every ``interval_s`` seconds of trio time and keeps the last ``history``.

    ``nvml=None`` uses the installed pynvml, as ``probe_hardware`` does; on a machine without a driver the
    samples simply carry no GPUs. NVML is initialised once for the sampler's life and shut down when
    ``run`` exits, cancelled or not.
    """

    def __init__(
        self,
        interval_s: float,
        nvml: NvmlApi | None,
        on_sample: Callable[[TelemetrySample], Awaitable[None]] | None = None,
        history: int = 360,  # one hour at the default 10 s interval
    ) -> None:
        if not interval_s > 0:
            raise InternalError(f"telemetry interval must be positive, got {interval_s!r}")
        if history < 1:
            raise InternalError(f"telemetry history must hold at least one sample, got {history!r}")
        self._interval_s = interval_s
        self._nvml = real_nvml() if nvml is None else nvml
        self._on_sample = on_sample
        self._history: collections.deque[TelemetrySample] = collections.deque(maxlen=history)
        # One NVML call at a time: the driver serialises them anyway, and a hung call must not pile up
        # worker threads behind it.
        self._limiter = trio.CapacityLimiter(1)
        self._process = psutil.Process()
        self._failing: set[int] = set()

    @property
    def latest(self) -> TelemetrySample | None:
        return self._history[-1] if self._history else None

    def history(self) -> tuple[TelemetrySample, ...]:
        """Samples oldest first, at most ``history`` of them."""
        return tuple(self._history)

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Take one sample, report started, then sample every interval until cancelled."""
        handles = await trio.to_thread.run_sync(self._open_nvml, limiter=self._limiter)
        try:
            next_at = trio.current_time()
            await self._sample(handles)
            task_status.started()
            while True:
                # A fixed schedule, so sampling cost does not drift the period; after a stall (slow NVML
                # call, slow on_sample) sample once at once rather than in a burst of missed ticks.
                next_at = max(next_at + self._interval_s, trio.current_time())
                await trio.sleep_until(next_at)
                await self._sample(handles)
        finally:
            if handles is not None:
                # Shielded: this runs while the sampler is being cancelled, and NVML must still be closed.
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self._close_nvml, limiter=self._limiter)

    async def _sample(self, handles: tuple[tuple[int, object], ...] | None) -> None:
        reading = await trio.to_thread.run_sync(self._read, handles or (), limiter=self._limiter)
        for index, error in sorted(reading.failures.items()):
            if index not in self._failing:
                log.warning("gpu_telemetry_failed", gpu=index, error=error)
        for index in sorted(self._failing - reading.failures.keys()):
            log.info("gpu_telemetry_recovered", gpu=index)
        self._failing = set(reading.failures)
        self._history.append(reading.sample)
        if self._on_sample is not None:
            await self._on_sample(reading.sample)

    # --- worker-thread side ---------------------------------------------------------------------------

    def _open_nvml(self) -> tuple[tuple[int, object], ...] | None:
        """``None`` when NVML cannot start here (no driver): the sampler then runs CPU-only."""
        try:
            self._nvml.nvmlInit()
        except pynvml.NVMLError as exc:
            log.info("gpu_telemetry_unavailable", reason=describe_nvml_error(exc))
            return None
        handles: list[tuple[int, object]] = []
        try:
            for index in range(self._nvml.nvmlDeviceGetCount()):
                handles.append((index, self._nvml.nvmlDeviceGetHandleByIndex(index)))
        except pynvml.NVMLError as exc:
            log.warning("gpu_telemetry_unavailable", reason=describe_nvml_error(exc), gpus_found=len(handles))
        return tuple(handles)

    def _close_nvml(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except pynvml.NVMLError as exc:
            log.warning("nvml_shutdown_failed", error=describe_nvml_error(exc))

    def _read(self, handles: tuple[tuple[int, object], ...]) -> _Reading:
        gpus: list[GpuSample] = []
        failures: dict[int, str] = {}
        for index, handle in handles:
            try:
                gpus.append(self._read_gpu(index, handle))
            except pynvml.NVMLError as exc:
                failures[index] = describe_nvml_error(exc)
        memory = psutil.virtual_memory()
        sample = TelemetrySample(
            time=time.time(),
            gpus=tuple(gpus),
            ram_available_bytes=int(memory.available),
            load_avg_1m=float(psutil.getloadavg()[0]),
            process_rss_bytes=int(self._process.memory_info().rss),
        )
        return _Reading(sample=sample, failures=failures)

    def _read_gpu(self, index: int, handle: object) -> GpuSample:
        nvml = self._nvml
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        utilization = read_optional(nvml.nvmlDeviceGetUtilizationRates, handle)
        return GpuSample(
            index=index,
            utilization_percent=None if utilization is None else int(utilization.gpu),
            vram_free_bytes=int(memory.free),
            temperature_c=read_optional(nvml.nvmlDeviceGetTemperature, handle, pynvml.NVML_TEMPERATURE_GPU),
            power_watts=milliwatts_to_watts(read_optional(nvml.nvmlDeviceGetPowerUsage, handle)),
        )
