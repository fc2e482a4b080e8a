"""The machine the node runs on: a one-off probe (GPUs, CPU, RAM, disk) and a live telemetry sampler.

NVML sits behind :class:`NvmlApi`: the real ``pynvml`` module on a GPU node, :class:`RecordedNvml`
replaying a recording (``scripts/record_nvml.py``) in tests.
"""

from hyperion_node.hardware.models import CpuInfo, GpuInfo, HardwareProfile
from hyperion_node.hardware.nvml import (
    RECORDING_FORMAT,
    MemoryInfo,
    NvmlApi,
    RecordedNvml,
    RecordingError,
    UtilizationRates,
    real_nvml,
)
from hyperion_node.hardware.probe import parse_cpuinfo, probe_gpus, probe_hardware, read_cpu_info
from hyperion_node.hardware.telemetry import GpuSample, TelemetrySample, TelemetrySampler

__all__ = [
    "RECORDING_FORMAT",
    "CpuInfo",
    "GpuInfo",
    "GpuSample",
    "HardwareProfile",
    "MemoryInfo",
    "NvmlApi",
    "RecordedNvml",
    "RecordingError",
    "TelemetrySample",
    "TelemetrySampler",
    "UtilizationRates",
    "parse_cpuinfo",
    "probe_gpus",
    "probe_hardware",
    "read_cpu_info",
    "real_nvml",
]
