"""`hyperion-node start`: one trio process whose root nursery owns every component.

Each component is started with ``await nursery.start(component.run)``, so when the ready line is printed,
every part of the node really is ready. Signals are handled here and nowhere else: the first SIGINT or
SIGTERM cancels the components' scope (in-flight work is cancelled, state flushed, exit code 0); a second
one exits at once; a shutdown that overruns its 5 s budget is cut short with exit code 1.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

from hyperion_node import __version__
from hyperion_node.api.server import ApiServer
from hyperion_node.config import Config
from hyperion_node.datadir import DataDir, daemon_lock
from hyperion_node.hardware import HardwareProfile, TelemetrySampler, probe_hardware
from hyperion_node.identity import Identity, load_identity
from hyperion_node.p2p.host import P2PHost
from hyperion_node.runtime_registry import RuntimeRegistry
from hyperion_node.store import Store

log = structlog.get_logger(__name__)

SHUTDOWN_BUDGET_S = 5.0  # the promise to the operator: Ctrl-C or SIGTERM ends the node within 5 s
EXIT_SHUTDOWN_OVERRUN = 1
EXIT_SECOND_SIGNAL = 130  # the shell convention for "interrupted"


@dataclass
class Node:
    """The running node's parts, as the control API reads them."""

    config: Config
    data_dir: DataDir
    identity: Identity
    store: Store
    hardware_profile: HardwareProfile
    sampler: TelemetrySampler
    runtimes: RuntimeRegistry
    p2p: P2PHost
    api: ApiServer | None = None
    started_at: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        return self.config.node.name or f"hyperion-{str(self.identity.peer_id)[-8:]}"

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "peer_id": str(self.identity.peer_id), "version": __version__}

    def status(self) -> dict[str, Any]:
        gpus = self.hardware_profile.gpus
        return {
            "name": self.name,
            "version": __version__,
            "pid": os.getpid(),
            "peer_id": str(self.identity.peer_id),
            "uptime_s": round(time.time() - self.started_at, 3),
            "data_dir": str(self.data_dir.root),
            "addresses": {
                "p2p": self.p2p.listen_addrs(),
                "api": self.api.url if self.api else None,
            },
            "hardware": {
                "cpu": self.hardware_profile.cpu.model,
                "cpu_cores": self.hardware_profile.cpu.logical_cores,
                "ram_total_bytes": self.hardware_profile.ram_total_bytes,
                "gpus": [f"{g.name} ({g.vram_total_bytes // 2**20} MiB)" for g in gpus],
                "gpu_status": self.hardware_profile.gpu_status,
            },
            "runtimes": self.runtimes.describe(),
            "peers_connected": len(self.peers()),
        }

    def hardware(self) -> dict[str, Any]:
        latest = self.sampler.latest
        return {
            "profile": self.hardware_profile.to_json(),
            "telemetry": dataclasses.asdict(latest) if latest else None,
        }

    def peers(self) -> list[dict[str, Any]]:
        host = self.p2p.host
        if host is None:
            return []
        connected = []
        for peer_id in host.get_connected_peers():
            addrs = [str(a) for a in host.get_peerstore().addrs(peer_id)]
            connected.append({"peer_id": str(peer_id), "addrs": addrs, "state": "connected"})
        return connected

    def rewards(self) -> dict[str, Any]:
        # No receipts exist until the ledger lands; this is the real, empty state, not a placeholder figure.
        return {
            "currency": "credits",
            "earned": 0.0,
            "pending": 0.0,
            "disputed": 0.0,
            "tasks": {"completed": 0, "failed": 0},
            "receipts": 0,
        }

    async def events(self, since_id: int, limit: int) -> list[dict[str, Any]]:
        events = await self.store.run(lambda: self.store.events(since_id=since_id, limit=limit))
        return [dataclasses.asdict(e) for e in events]


def _hard_exit_after(seconds: float, code: int) -> threading.Timer:
    """A last resort: if a graceful shutdown overruns its budget, leave anyway (os._exit skips cleanup
    that is already stuck; the store is WAL with synchronous=FULL, so committed state is on disk)."""

    def leave() -> None:
        sys.stderr.write(f"hyperion-node: shutdown took longer than {seconds:.0f} s; exiting now\n")
        sys.stderr.flush()
        os._exit(code)

    timer = threading.Timer(seconds, leave)
    timer.daemon = True
    timer.start()
    return timer


async def _watch_signals(signals: Any, scope: trio.CancelScope) -> None:
    first = True
    async for signum in signals:
        if first:
            first = False
            log.info("shutting_down", signal=signal.Signals(signum).name)
            _hard_exit_after(SHUTDOWN_BUDGET_S, EXIT_SHUTDOWN_OVERRUN)
            scope.cancel()
        else:
            sys.stderr.write("hyperion-node: second signal, exiting now\n")
            sys.stderr.flush()
            os._exit(EXIT_SECOND_SIGNAL)


def _ready_text(node: Node) -> str:
    lines = [
        f"hyperion-node {__version__} ready",
        f"  peer id  {node.identity.peer_id}",
        *[f"  p2p      {addr}" for addr in node.p2p.listen_addrs()],
        f"  api      {node.api.url if node.api else '-'}  (token: {node.data_dir.token_path})",
        f"  runtimes {', '.join(node.runtimes.loaded) or 'none'}",
    ]
    return "\n".join(lines)


async def run_daemon(config: Config, *, on_ready: Callable[[str], None] | None = None) -> None:
    """Run the node until a signal arrives. Raises ``HyperionError`` subclasses for start-up problems."""
    data_dir = DataDir(config.node.data_dir)
    data_dir.ensure()
    with daemon_lock(data_dir):
        store = await trio.to_thread.run_sync(Store.open, data_dir.db_path)
        try:
            await _run_node(config, data_dir, store, on_ready)
        finally:
            store.close()
    log.info("stopped")


async def _run_node(
    config: Config, data_dir: DataDir, store: Store, on_ready: Callable[[str], None] | None
) -> None:
    identity = load_identity(data_dir, create=True)
    token = data_dir.api_token(create=True)
    structlog.contextvars.bind_contextvars(node=str(identity.peer_id)[-8:])
    profile = await trio.to_thread.run_sync(probe_hardware, data_dir.root)
    log.info("hardware", cpu=profile.cpu.model, gpus=len(profile.gpus), gpu_status=profile.gpu_status)

    node = Node(
        config=config,
        data_dir=data_dir,
        identity=identity,
        store=store,
        hardware_profile=profile,
        # Telemetry stays in the sampler's bounded history; the peer table persists what peers need.
        sampler=TelemetrySampler(config.hardware.telemetry_interval_s, nvml=None),
        runtimes=RuntimeRegistry(
            store=store,
            data_dir=data_dir.root,
            hardware=profile.summary(),
            settings=config.runtime_settings,
            disabled=config.runtimes_disabled,
            benchmark_on_start=config.hardware.benchmark_on_start,
        ),
        p2p=P2PHost(identity=identity, settings=config.p2p),
    )

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as root:
            components = trio.CancelScope()
            root.start_soon(_watch_signals, signals, components)
            with components:
                async with trio.open_nursery() as nursery:
                    await nursery.start(node.sampler.run)
                    await nursery.start(node.runtimes.run)
                    await nursery.start(node.p2p.run)
                    node.api = ApiServer(node, token, host=config.api.host, port=config.api.port,
                                         token_path=str(data_dir.token_path))
                    await nursery.start(node.api.run)
                    data_dir.write_api_info(
                        {"url": node.api.url, "pid": os.getpid(), "peer_id": str(identity.peer_id)}
                    )
                    await store.run(store.append_event, "node.started",
                                    {"peer_id": str(identity.peer_id), "version": __version__})
                    ready = _ready_text(node)
                    log.info("ready", api=node.api.url, p2p=node.p2p.listen_addrs())
                    if on_ready is not None:
                        on_ready(ready)
            # Components are down (signal or crash). Record the stop, then let the signal watcher go.
            with trio.CancelScope(shield=True):
                await store.run(store.append_event, "node.stopped", {"peer_id": str(identity.peer_id)})
            root.cancel_scope.cancel()
