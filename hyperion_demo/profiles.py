"""The simulated machines of the demo: what each board offers, how fast and at what price.

Throughputs are round figures of the order that public benchmarks report for each board (llama.cpp tokens/s
for an 8B Q4 model, Groth16 constraints/s with GPU MSM, Cycles 1080p frames), scaled so that a demo task takes
a fraction of a second to a few seconds. They shape the simulation; none of them is a measurement of ours.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30

INFERENCE_ITEM = "llama-3.1-8b-q4"
ZK_ITEM = "groth16-bn254"
RENDER_ITEM = "cycles-1080p"


@dataclass(frozen=True)
class SimProfile:
    name: str  # what the dashboard's HARDWARE column shows (the simulated NVML board name)
    vram_bytes: int  # 0: no GPU
    tokens_per_s: float  # 0: does not offer inference
    constraints_per_s: float  # 0: does not offer zk
    frames_per_s: float  # 0: does not offer render
    price_per_token: float  # credits per work unit: faster boards ask more per unit, as a market would
    price_per_constraint: float
    price_per_frame: float
    slots: int  # tasks admitted at once per runtime
    fault_rate: float  # share of tasks that fail on a healthy board (a driver reset, an OOM)
    idle_temp_c: float
    load_temp_c: float  # at full use; the scheduler's health reads it from the heartbeat
    power_limit_w: float


PROFILES: tuple[SimProfile, ...] = (
    SimProfile("NVIDIA H100 80GB HBM3", 80 * GIB, 260.0, 4.0e6, 1.6, 4e-6, 6e-10, 0.020, 4, 0.005, 34, 71, 700),
    SimProfile("NVIDIA A100-SXM4-80GB", 80 * GIB, 170.0, 2.5e6, 1.0, 3e-6, 5e-10, 0.015, 4, 0.005, 33, 69, 400),
    SimProfile("NVIDIA GeForce RTX 4090", 24 * GIB, 140.0, 1.8e6, 1.4, 2e-6, 4e-10, 0.012, 2, 0.01, 38, 74, 450),
    SimProfile("NVIDIA GeForce RTX 3060", 12 * GIB, 60.0, 0.6e6, 0.45, 1e-6, 3e-10, 0.006, 1, 0.02, 36, 72, 170),
    SimProfile("NVIDIA Jetson AGX Orin", 32 * GIB, 25.0, 0.15e6, 0.12, 6e-7, 2e-10, 0.004, 1, 0.02, 40, 66, 60),
    SimProfile("CPU only (16 cores)", 0, 9.0, 0.08e6, 0.0, 4e-7, 1e-10, 0.0, 1, 0.01, 0, 0, 0),
)


def profile_for(index: int) -> SimProfile:
    """Node ``index``'s machine: the list in turn, so any demo of six or more nodes has every kind."""
    return PROFILES[index % len(PROFILES)]
