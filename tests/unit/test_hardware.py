"""Hardware probe and telemetry: on this machine for real, and on replayed NVML recordings for GPUs.

The recordings go through ``RecordedNvml``, which raises real ``pynvml.NVMLError`` subclasses, so the
error handling tested here is the one that runs against a driver.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pynvml
import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from hyperion_node.hardware import (
    CpuInfo,
    GpuInfo,
    HardwareProfile,
    NvmlApi,
    RecordedNvml,
    RecordingError,
    TelemetrySample,
    TelemetrySampler,
    parse_cpuinfo,
    probe_hardware,
)
from runtimes.interface import HardwareSummary

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
TWO_GPUS = DATA / "nvml_recording_2gpu.json"
PARTIAL = DATA / "nvml_recording_partial.json"
HAS_NVIDIA_DEVICE = Path("/dev/nvidiactl").exists()

H100 = GpuInfo(
    index=0,
    name="NVIDIA H100 80GB HBM3",
    uuid="GPU-5f2a8c1e-3b7d-4e19-a6c2-9d0e8f7b1a34",
    vram_total_bytes=85520809984,
    vram_free_bytes=84927315968,
    driver_version="550.54.15",
    cuda_version="12.4",
    compute_capability="9.0",
    utilization_percent=3,
    temperature_c=34,
    power_watts=71.234,
    power_limit_watts=700.0,
)
RTX_4090 = GpuInfo(
    index=1,
    name="NVIDIA GeForce RTX 4090",
    uuid="GPU-a1c93e07-6d42-8b15-f0e2-47c6d9b83e51",
    vram_total_bytes=25757220864,
    vram_free_bytes=24148705280,
    driver_version="550.54.15",
    cuda_version="12.4",
    compute_capability="8.9",
    utilization_percent=12,
    temperature_c=46,
    power_watts=27.45,
    power_limit_watts=450.0,
)


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def two_gpus_with(**device0: Any) -> dict[str, Any]:
    """The 2-GPU recording with some of GPU 0's readings replaced."""
    recording = load(TWO_GPUS)
    recording["devices"][0].update(device0)
    return recording


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


# --- probe on this machine ------------------------------------------------------------------------


@pytest.mark.skipif(HAS_NVIDIA_DEVICE, reason="this machine has an NVIDIA driver")
def test_probe_without_gpu_reports_reason_and_real_cpu_ram_disk(tmp_path: Path) -> None:
    profile = probe_hardware(tmp_path)

    assert profile.gpus == ()
    assert profile.gpu_status
    assert profile.gpu_status != "ok"
    assert "\n" not in profile.gpu_status
    assert "NVML" in profile.gpu_status or "driver" in profile.gpu_status
    assert profile.cpu.logical_cores > 0
    assert profile.cpu.model
    assert profile.ram_total_bytes > 0
    assert 0 < profile.ram_available_bytes <= profile.ram_total_bytes
    assert 0 < profile.disk_free_bytes <= profile.disk_total_bytes
    assert profile.disk_path == str(tmp_path)
    json.dumps(profile.to_json())  # plain data all the way down


@pytest.mark.skipif(not HAS_NVIDIA_DEVICE, reason="needs an NVIDIA GPU and driver")
def test_probe_with_real_gpu_reads_it(tmp_path: Path) -> None:
    profile = probe_hardware(tmp_path)

    assert profile.gpu_status == "ok"
    assert profile.gpus
    assert all(gpu.vram_total_bytes > 0 and gpu.uuid.startswith(("GPU-", "MIG-")) for gpu in profile.gpus)


def test_probe_of_directory_not_yet_created_measures_its_filesystem(tmp_path: Path) -> None:
    profile = probe_hardware(tmp_path / "not" / "yet", nvml=RecordedNvml(PARTIAL))

    assert profile.disk_total_bytes > 0
    assert profile.disk_path == str(tmp_path / "not" / "yet")


# --- probe on recorded NVML -----------------------------------------------------------------------


def test_two_gpu_recording_gives_exact_values(tmp_path: Path) -> None:
    nvml = RecordedNvml(TWO_GPUS)

    profile = probe_hardware(tmp_path, nvml=nvml)

    assert profile.gpus == (H100, RTX_4090)
    assert profile.gpu_status == "ok"
    assert (nvml.init_calls, nvml.shutdown_calls, nvml.initialized) == (1, 1, False)


def test_partial_recording_gives_none_for_unsupported_readings(tmp_path: Path) -> None:
    profile = probe_hardware(tmp_path, nvml=RecordedNvml(PARTIAL))

    (gpu,) = profile.gpus
    assert gpu.name == "NVIDIA A10G"
    assert gpu.cuda_version == "12.2"
    assert gpu.compute_capability == "8.6"
    assert gpu.vram_total_bytes == 24146608128
    assert gpu.utilization_percent == 0
    assert (gpu.temperature_c, gpu.power_watts, gpu.power_limit_watts) == (None, None, None)
    assert profile.gpu_status == "ok"


def test_recorded_unsupported_reading_raises_the_real_pynvml_error() -> None:
    nvml = RecordedNvml(PARTIAL)
    nvml.nvmlInit()
    handle = nvml.nvmlDeviceGetHandleByIndex(0)

    with pytest.raises(pynvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetPowerUsage(handle)


def test_installed_pynvml_has_every_function_the_interface_names() -> None:
    names = {name for name in vars(NvmlApi) if name.startswith("nvml")}

    assert len(names) >= 14
    assert all(callable(getattr(pynvml, name, None)) for name in names)


def test_recorded_nvml_refuses_calls_before_init() -> None:
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        RecordedNvml(TWO_GPUS).nvmlDeviceGetCount()


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("NVML_ERROR_DRIVER_NOT_LOADED", "no NVIDIA driver: NVIDIA kernel driver not loaded"),
        ("NVML_ERROR_LIBRARY_NOT_FOUND", "no NVIDIA driver: NVML library not found (libnvidia-ml.so.1)"),
        ("NVML_ERROR_LIB_RM_VERSION_MISMATCH", "NVML unavailable: NVML library and kernel driver versions"),
    ],
)
def test_failing_init_gives_no_gpus_and_a_one_line_reason(tmp_path: Path, error: str, expected: str) -> None:
    recording = load(TWO_GPUS)
    recording["system"]["nvmlInit"] = {"error": error}
    nvml = RecordedNvml(recording)

    profile = probe_hardware(tmp_path, nvml=nvml)

    assert profile.gpus == ()
    assert profile.gpu_status.startswith(expected)
    assert "\n" not in profile.gpu_status
    assert nvml.shutdown_calls == 0  # nothing to shut down after a failed init


def test_lost_gpu_is_skipped_and_named_while_the_healthy_one_is_kept(tmp_path: Path) -> None:
    nvml = RecordedNvml(two_gpus_with(nvmlDeviceGetMemoryInfo={"error": "NVML_ERROR_GPU_IS_LOST"}))

    profile = probe_hardware(tmp_path, nvml=nvml)

    assert profile.gpus == (RTX_4090,)
    assert profile.gpu_status.startswith("GPU 0 unreadable: GPU is lost")
    assert not nvml.initialized


def test_nvml_is_shut_down_even_when_a_system_reading_fails(tmp_path: Path) -> None:
    recording = load(TWO_GPUS)
    recording["system"]["nvmlDeviceGetCount"] = {"error": "NVML_ERROR_UNKNOWN"}
    nvml = RecordedNvml(recording)

    profile = probe_hardware(tmp_path, nvml=nvml)

    assert profile.gpus == ()
    assert "NVML_ERROR_UNKNOWN" in profile.gpu_status
    assert (nvml.init_calls, nvml.shutdown_calls) == (1, 1)


def test_old_pynvml_bytes_names_are_decoded(tmp_path: Path) -> None:
    class BytesNvml(RecordedNvml):
        def nvmlDeviceGetName(self, handle: object, /) -> bytes:  # type: ignore[override]
            return super().nvmlDeviceGetName(handle).encode()

    profile = probe_hardware(tmp_path, nvml=BytesNvml(TWO_GPUS))

    assert [gpu.name for gpu in profile.gpus] == [H100.name, RTX_4090.name]


@pytest.mark.parametrize(
    "recording",
    [
        {"format": "something-else/1"},
        {"format": "hyperion-nvml-recording/1", "devices": [{"nvmlDeviceGetName": {"error": "NVML_NOPE"}}]},
        {"format": "hyperion-nvml-recording/1", "devices": {"0": {}}},
    ],
)
def test_malformed_recording_is_rejected_on_load(recording: dict[str, Any]) -> None:
    with pytest.raises(RecordingError):
        RecordedNvml(recording)


# --- fingerprint, json, summary -------------------------------------------------------------------


def test_fingerprint_is_stable_and_ignores_changing_values(tmp_path: Path) -> None:
    first = probe_hardware(tmp_path, nvml=RecordedNvml(TWO_GPUS))
    second = probe_hardware(tmp_path, nvml=RecordedNvml(TWO_GPUS))
    busier = probe_hardware(
        tmp_path,
        nvml=RecordedNvml(
            two_gpus_with(
                nvmlDeviceGetMemoryInfo={"total": H100.vram_total_bytes, "free": 1 << 30, "used": 0},
                nvmlDeviceGetTemperature=81,
                nvmlDeviceGetUtilizationRates={"gpu": 100, "memory": 90},
            )
        ),
    )

    assert len(first.fingerprint()) == 64
    assert first.fingerprint() == second.fingerprint() == busier.fingerprint()
    assert busier.gpus[0].vram_free_bytes == 1 << 30  # the change did reach the profile


def test_fingerprint_changes_when_a_gpu_is_added_or_the_driver_changes(tmp_path: Path) -> None:
    base = probe_hardware(tmp_path, nvml=RecordedNvml(TWO_GPUS)).fingerprint()
    three = load(TWO_GPUS)
    extra = copy.deepcopy(three["devices"][1])
    extra["nvmlDeviceGetUUID"] = "GPU-00000000-1111-2222-3333-444444444444"
    three["devices"].append(extra)
    three["system"]["nvmlDeviceGetCount"] = 3
    new_driver = load(TWO_GPUS)
    new_driver["system"]["nvmlSystemGetDriverVersion"] = "555.42.02"

    with_third = probe_hardware(tmp_path, nvml=RecordedNvml(three))
    upgraded = probe_hardware(tmp_path, nvml=RecordedNvml(new_driver))

    assert len(with_third.gpus) == 3
    assert with_third.fingerprint() != base
    assert upgraded.fingerprint() != base


def test_fingerprint_covers_the_cpu() -> None:
    cpu = CpuInfo("AMD EPYC 9654 96-Core Processor", 192, 96, avx2=True, avx512=True, architecture="x86_64")
    profile = HardwareProfile((H100,), "ok", cpu, 1 << 40, 1 << 39, "/data", 1 << 42, 1 << 41)
    smaller = HardwareProfile(
        (H100,), "ok", CpuInfo(cpu.model, 96, 48, True, True, "x86_64"), 1 << 40, 1 << 39, "/data", 1 << 42, 1
    )

    assert profile.fingerprint() != smaller.fingerprint()


def test_to_json_and_summary(tmp_path: Path) -> None:
    profile = probe_hardware(tmp_path, nvml=RecordedNvml(TWO_GPUS))

    data = json.loads(json.dumps(profile.to_json()))
    summary = profile.summary()

    assert data["gpus"][0]["name"] == "NVIDIA H100 80GB HBM3"
    assert data["gpus"][1]["power_limit_watts"] == 450.0
    assert data["fingerprint"] == profile.fingerprint()
    assert isinstance(summary, HardwareSummary)
    assert summary.fingerprint == profile.fingerprint()
    assert summary.cpu_cores == profile.cpu.logical_cores
    assert [gpu["uuid"] for gpu in summary.gpus] == [H100.uuid, RTX_4090.uuid]


# --- /proc/cpuinfo --------------------------------------------------------------------------------

X86_CPUINFO = """\
processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse2 avx avx2 avx512f avx512bw avx512_vnni amx_tile

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
"""

ARM_CPUINFO = """\
processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid
CPU implementer\t: 0x41
CPU part\t: 0xd0c
"""

ZEN2_CPUINFO = "model name\t: AMD Ryzen 9 3950X 16-Core Processor\nflags\t\t: sse2 avx avx2 fma\n"


def test_parse_cpuinfo() -> None:
    model, flags = parse_cpuinfo(X86_CPUINFO)
    assert model == "Intel(R) Xeon(R) Platinum 8480+"
    assert {"avx2", "avx512f"} <= flags

    model, flags = parse_cpuinfo(ZEN2_CPUINFO)
    assert "avx2" in flags
    assert "avx512f" not in flags

    model, flags = parse_cpuinfo(ARM_CPUINFO)
    assert model is None  # the numeric "CPU part" is not a model name
    assert "asimd" in flags
    assert "avx2" not in flags

    assert parse_cpuinfo("") == (None, frozenset())


# --- telemetry sampler ----------------------------------------------------------------------------


async def collect(sampler_args: dict[str, Any], count: int) -> tuple[TelemetrySampler, list[float]]:
    """Run a sampler until it has delivered ``count`` samples; return it and the trio time of each.

    The samples are awaited through ``on_sample``, not with a timeout: under an autojump clock a
    deadline in the test would be jumped to while the sampler waits on its worker thread.
    """
    send, receive = trio.open_memory_channel[TelemetrySample](0)
    times: list[float] = []

    async def on_sample(sample: TelemetrySample) -> None:
        times.append(trio.current_time())
        await send.send(sample)

    sampler = TelemetrySampler(on_sample=on_sample, **sampler_args)
    async with send, receive, trio.open_nursery() as nursery:
        nursery.start_soon(sampler.run)
        for _ in range(count):
            await receive.receive()
        nursery.cancel_scope.cancel()
    return sampler, times


async def test_sampler_takes_a_sample_per_interval_and_bounds_history(
    autojump_clock: trio.testing.MockClock,
) -> None:
    nvml = RecordedNvml(TWO_GPUS)

    sampler, times = await collect({"interval_s": 10.0, "nvml": nvml, "history": 4}, count=7)

    assert [t - times[0] for t in times] == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
    history = sampler.history()
    assert len(history) == 4
    assert history[-1] is sampler.latest
    assert [s.time for s in history] == sorted(s.time for s in history)
    latest = sampler.latest
    assert latest is not None
    assert [(g.index, g.utilization_percent, g.vram_free_bytes, g.temperature_c) for g in latest.gpus] == [
        (0, 3, H100.vram_free_bytes, 34),
        (1, 12, RTX_4090.vram_free_bytes, 46),
    ]
    assert latest.gpus[0].power_watts == pytest.approx(71.234)
    assert latest.ram_available_bytes > 0
    assert latest.process_rss_bytes > 0
    assert (nvml.init_calls, nvml.shutdown_calls, nvml.initialized) == (1, 1, False)


async def test_sampler_is_started_after_its_first_sample() -> None:
    # Real clock on purpose: a missing task_status.started() must fail this test, not hang it, and under
    # an autojump clock the fail_after deadline would be jumped to while the first sample is in its thread.
    sampler = TelemetrySampler(3600.0, RecordedNvml(PARTIAL))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(sampler.run)
            first = sampler.latest
            assert first is not None
            assert len(sampler.history()) == 1
            (gpu,) = first.gpus
            assert (gpu.temperature_c, gpu.power_watts) == (None, None)  # unsupported, not a failure
            nursery.cancel_scope.cancel()


async def test_sampler_survives_a_gpu_falling_off_the_bus(autojump_clock: trio.testing.MockClock) -> None:
    lost = {"error": "NVML_ERROR_GPU_IS_LOST"}
    ok = {"gpu": 50, "memory": 20}
    nvml = RecordedNvml(two_gpus_with(nvmlDeviceGetUtilizationRates={"sequence": [ok, lost, lost, lost, ok]}))

    with capture_logs() as logs:
        sampler, _ = await collect({"interval_s": 1.0, "nvml": nvml}, count=6)

    per_sample_gpus = [[gpu.index for gpu in sample.gpus] for sample in sampler.history()]
    assert per_sample_gpus == [[0, 1], [1], [1], [1], [0, 1], [0, 1]]
    assert all(sample.ram_available_bytes > 0 for sample in sampler.history())
    failed = [entry for entry in logs if entry["event"] == "gpu_telemetry_failed"]
    assert len(failed) == 1  # once per outage, not once per sample
    assert failed[0]["log_level"] == "warning"
    assert failed[0]["gpu"] == 0
    assert "GPU is lost" in failed[0]["error"]
    assert [entry["gpu"] for entry in logs if entry["event"] == "gpu_telemetry_recovered"] == [0]
    assert not nvml.initialized


async def test_sampler_without_driver_samples_cpu_and_ram(autojump_clock: trio.testing.MockClock) -> None:
    recording = load(TWO_GPUS)
    recording["system"]["nvmlInit"] = {"error": "NVML_ERROR_DRIVER_NOT_LOADED"}
    nvml = RecordedNvml(recording)

    sampler, times = await collect({"interval_s": 2.0, "nvml": nvml}, count=3)

    assert times[-1] - times[0] == 4.0
    assert all(sample.gpus == () and sample.ram_available_bytes > 0 for sample in sampler.history())
    assert nvml.shutdown_calls == 0


async def test_sampler_error_from_on_sample_propagates(autojump_clock: trio.testing.MockClock) -> None:
    nvml = RecordedNvml(TWO_GPUS)

    async def broken(sample: TelemetrySample) -> None:
        raise RuntimeError("consumer bug")

    sampler = TelemetrySampler(1.0, nvml, on_sample=broken)
    with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="consumer bug")):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sampler.run)
    assert not nvml.initialized  # NVML closed on the way out


# --- the recorder ---------------------------------------------------------------------------------


def load_recorder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("record_nvml", REPO / "scripts" / "record_nvml.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", [TWO_GPUS, PARTIAL])
def test_recorder_reproduces_a_recording_it_replays(path: Path) -> None:
    """Record through the replayer: the recorder and RecordedNvml agree on every reading's format."""
    recorder = load_recorder()
    original = load(path)

    recorded = recorder.record(RecordedNvml(path))

    assert recorded["format"] == original["format"]
    assert recorded["system"] == original["system"]
    assert recorded["devices"] == original["devices"]
    assert (
        probe_hardware(Path("."), nvml=RecordedNvml(recorded)).gpus
        == probe_hardware(Path("."), nvml=RecordedNvml(path)).gpus
    )


def test_recorder_stores_changing_readings_as_sequences_and_errors_by_name() -> None:
    recorder = load_recorder()
    source = two_gpus_with(
        nvmlDeviceGetTemperature={"sequence": [34, 35, 36]},
        nvmlDeviceGetPowerUsage={"sequence": [71234, {"error": "NVML_ERROR_GPU_IS_LOST"}]},
    )
    sleeps: list[float] = []

    recorded = recorder.record(RecordedNvml(source), samples=3, interval_s=2.5, sleep=sleeps.append)

    device = recorded["devices"][0]
    assert sleeps == [2.5, 2.5]
    assert device["nvmlDeviceGetTemperature"] == {"sequence": [34, 35, 36]}
    lost = {"error": "NVML_ERROR_GPU_IS_LOST"}
    assert device["nvmlDeviceGetPowerUsage"] == {"sequence": [71234, lost, lost]}
    assert device["nvmlDeviceGetName"] == "NVIDIA H100 80GB HBM3"  # identity read once


def test_recorder_encodes_real_pynvml_structs() -> None:
    recorder = load_recorder()
    memory = pynvml.c_nvmlMemory_t()
    memory.total, memory.free, memory.used = 100, 60, 40
    utilization = pynvml.c_nvmlUtilization_t()
    utilization.gpu, utilization.memory = 7, 3

    assert recorder.to_json_value(memory) == {"total": 100, "free": 60, "used": 40}
    assert recorder.to_json_value(utilization) == {"gpu": 7, "memory": 3}
    assert recorder.to_json_value(b"NVIDIA A100") == "NVIDIA A100"
    assert recorder.to_json_value((8, 0)) == [8, 0]


def test_recorder_on_a_machine_without_driver_records_the_init_error() -> None:
    recorder = load_recorder()
    source = load(TWO_GPUS)
    source["system"]["nvmlInit"] = {"error": "NVML_ERROR_LIBRARY_NOT_FOUND"}

    recorded = recorder.record(RecordedNvml(source))

    assert recorded["system"] == {"nvmlInit": {"error": "NVML_ERROR_LIBRARY_NOT_FOUND"}}
    assert recorded["devices"] == []
