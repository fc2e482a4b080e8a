"""`hyperion-node start`: one trio process whose root nursery owns every component.

Each component is started with ``await nursery.start(component.run)``, so when the ready line is printed,
every part of the node really is ready. Signals are handled here and nowhere else: the first SIGINT or
SIGTERM cancels the components' scope (in-flight work is cancelled, state flushed, exit code 0); a second
one exits at once; a shutdown that overruns its 5 s budget is cut short with exit code 1.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import trio

from hyperion_node import __version__
from hyperion_node.config import Config
from hyperion_node.datadir import DataDir, daemon_lock
from hyperion_node.errors import UserError
from hyperion_node.hardware import TelemetrySampler, probe_hardware
from hyperion_node.identity import load_identity
from hyperion_node.node import Node, build_node, start_components
from hyperion_node.store import Store

log = structlog.get_logger(__name__)

SHUTDOWN_BUDGET_S = 5.0  # the promise to the operator: Ctrl-C or SIGTERM ends the node within 5 s
EXIT_SHUTDOWN_OVERRUN = 1
EXIT_SECOND_SIGNAL = 130  # the shell convention for "interrupted"
LEAVE_ANNOUNCE_BUDGET_S = 0.5  # of the 5 s, spent telling peers we leave


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


async def _watch_signals(
    signals: Any, scope: trio.CancelScope, before_cancel: Callable[[], Awaitable[None]] | None = None
) -> None:
    first = True
    async for signum in signals:
        if first:
            first = False
            log.info("shutting_down", signal=signal.Signals(signum).name)
            _hard_exit_after(SHUTDOWN_BUDGET_S, EXIT_SHUTDOWN_OVERRUN)
            if before_cancel is not None:
                # While everything still runs: tell peers we leave, so they need not wait for a timeout.
                with trio.move_on_after(LEAVE_ANNOUNCE_BUDGET_S):
                    await before_cancel()
            scope.cancel()
        else:
            sys.stderr.write("hyperion-node: second signal, exiting now\n")
            sys.stderr.flush()
            os._exit(EXIT_SECOND_SIGNAL)


async def _reload_on_hangup(node: Node) -> None:
    """SIGHUP reads the configuration again, as `hyperion-node config reload` does."""
    with trio.open_signal_receiver(signal.SIGHUP) as hangups:
        async for _ in hangups:
            try:
                done = await node.operate("reload", {"reason": "SIGHUP"}, "SIGHUP")
            except UserError as exc:
                log.warning("reload_refused", error=exc.one_line())
            else:
                log.info("reloaded", applied=done.get("applied"), refused=done.get("refused"))


def _ready_text(node: Node) -> str:
    lines = [
        f"hyperion-node {__version__} ready",
        f"  peer id  {node.identity.peer_id}",
        *[f"  p2p      {addr}" for addr in node.p2p.listen_addrs()],
        f"  api      {node.api.url if node.api else '-'}  (token: {node.data_dir.token_path})",
        f"  runtimes {', '.join(node.runtimes.loaded) or 'none'}",
    ]
    return "\n".join(lines)


async def run_daemon(config: Config, *, on_ready: Callable[[str], None] | None = None,
                     reload_config: Callable[[], Config] | None = None) -> None:
    """Run the node until a signal arrives. Raises ``HyperionError`` subclasses for start-up problems.
    ``reload_config`` reads the configuration again, for ``config reload`` and SIGHUP (``control.py``)."""
    data_dir = DataDir(config.node.data_dir)
    data_dir.ensure()
    with daemon_lock(data_dir):
        store = await trio.to_thread.run_sync(Store.open, data_dir.db_path)
        try:
            await _run_node(config, data_dir, store, on_ready, reload_config)
        finally:
            store.close()
    log.info("stopped")


async def _run_node(
    config: Config, data_dir: DataDir, store: Store, on_ready: Callable[[str], None] | None,
    reload_config: Callable[[], Config] | None = None,
) -> None:
    identity = load_identity(data_dir, create=True)
    token = data_dir.api_token(create=True)
    structlog.contextvars.bind_contextvars(node=str(identity.peer_id)[-8:])
    profile = await trio.to_thread.run_sync(probe_hardware, data_dir.root)
    log.info("hardware", cpu=profile.cpu.model, gpus=len(profile.gpus), gpu_status=profile.gpu_status)

    # The same node the demo builds, with the installed runtimes and the machine's real telemetry.
    sampler = TelemetrySampler(config.hardware.telemetry_interval_s, nvml=None)
    node = build_node(config, data_dir, store, identity, profile, sampler, reload_config=reload_config)

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as root:
            components = trio.CancelScope()
            root.start_soon(_watch_signals, signals, components, node.p2p.announce_leaving)
            root.start_soon(_reload_on_hangup, node)
            with components:
                async with trio.open_nursery() as nursery:
                    await start_components(node, nursery, api_token=token)
                    assert node.api is not None
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
