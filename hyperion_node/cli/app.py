"""`hyperion-node`: the command line.

``start`` runs the daemon. ``status``, ``peers`` and ``rewards`` ask the running daemon through its control
API, found through the data dir alone. ``id``, ``hardware`` and ``config show`` work without a daemon.

Every command turns a ``HyperionError`` into one line on stderr and its exit code: a user never sees a
traceback for a mistake or a missing daemon.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer

from hyperion_node import __version__
from hyperion_node.cli.client import ApiClient
from hyperion_node.cli.render import format_bytes, print_table
from hyperion_node.config import Config, load_config
from hyperion_node.datadir import DataDir
from hyperion_node.errors import HyperionError, only_hyperion_error
from hyperion_node.logs import configure_logging

P = ParamSpec("P")
R = TypeVar("R")

app = typer.Typer(
    name="hyperion-node",
    help="Hyperion Node: earn with your GPU on a decentralized compute network.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="User config file (TOML) over the embedded defaults.")
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", "-d", help="Data directory [env: HYPERION_DATA_DIR; default ~/.local/share/hyperion]."),
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override one key: section.key=value (repeatable).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
LogFormatOpt = Annotated[str | None, typer.Option("--log-format", help="auto, console or json.")]
LogLevelOpt = Annotated[str | None, typer.Option("--log-level", help="debug, info, warning or error.")]


def cli_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """One line and an exit code for every deliberate error; bugs keep their traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except HyperionError as exc:
            typer.echo(f"hyperion-node: {exc.one_line()}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except BaseExceptionGroup as group:
            ours = only_hyperion_error(group)
            if ours is None:
                raise
            typer.echo(f"hyperion-node: {ours.one_line()}", err=True)
            raise typer.Exit(ours.exit_code) from None

    return wrapper


def _config(config: Path | None, data_dir: Path | None, sets: list[str] | None = None,
            log_format: str | None = None, log_level: str | None = None) -> Config:
    extra = list(sets or [])
    if log_format:
        extra.append(f'logging.format="{log_format}"')
    if log_level:
        extra.append(f'logging.level="{log_level}"')
    cfg = load_config(config_file=config, data_dir=data_dir, sets=extra)
    configure_logging(level=cfg.logging.level, fmt=cfg.logging.format, libp2p_level=cfg.logging.libp2p_level)
    return cfg


def _client(config: Path | None, data_dir: Path | None) -> ApiClient:
    return ApiClient(DataDir(_config(config, data_dir).node.data_dir))


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        typer.echo(f"hyperion-node {__version__}")
        raise typer.Exit(0)


@app.command()
@cli_errors
def start(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override one key: section.key=value.")] = None,
    log_format: LogFormatOpt = None,
    log_level: LogLevelOpt = None,
) -> None:
    """Start the node: join the network, advertise this machine, serve work until Ctrl-C."""
    import trio

    from hyperion_node.daemon import run_daemon

    cfg = _config(config, data_dir, set_, log_format, log_level)

    def on_ready(text: str) -> None:
        typer.echo(text)
        sys.stdout.flush()

    trio.run(functools.partial(run_daemon, cfg, on_ready=on_ready))


@app.command()
@cli_errors
def status(config: ConfigOpt = None, data_dir: DataDirOpt = None, json_: JsonOpt = False) -> None:
    """Uptime, peer ID, addresses, hardware and runtimes of the running node."""
    data = _client(config, data_dir).get("/api/status")
    if json_:
        _print_json(data)
        return
    hw = data["hardware"]
    typer.echo(f"{data['name']}  (hyperion-node {data['version']}, PID {data['pid']}, up {data['uptime_s']:.0f} s)")
    typer.echo(f"peer id    {data['peer_id']}")
    for addr in data["addresses"]["p2p"]:
        typer.echo(f"p2p        {addr}")
    typer.echo(f"api        {data['addresses']['api']}")
    typer.echo(f"cpu        {hw['cpu']} ({hw['cpu_cores']} cores), RAM {format_bytes(hw['ram_total_bytes'])}")
    typer.echo(f"gpus       {', '.join(hw['gpus']) or hw['gpu_status']}")
    typer.echo(f"peers      {data['peers_connected']} connected")
    for rt in data["runtimes"]:
        if rt["state"] != "ready":
            typer.echo(f"runtime    {rt['name']}: {rt['state']}: {rt['error']}")
            continue
        bench = rt["benchmark"]
        speed = f"{bench['throughput']:.1f} {bench['unit']}/s" if bench else "not benchmarked"
        items = ", ".join(o["item"] for o in rt["offers"])
        typer.echo(f"runtime    {rt['name']} {rt['version']}: {speed}; offers {items or 'nothing'}")


@app.command()
@cli_errors
def peers(config: ConfigOpt = None, data_dir: DataDirOpt = None, json_: JsonOpt = False) -> None:
    """Peers the running node knows, with their state."""
    data = _client(config, data_dir).get("/api/peers")
    if json_:
        _print_json(data)
        return
    if not data:
        typer.echo("no peers yet: add bootstrap peers (p2p.bootstrap) or start another node on this network")
        return
    print_table(["peer id", "state", "addresses"],
                [[p["peer_id"], p["state"], " ".join(p["addrs"])] for p in data])


@app.command()
@cli_errors
def rewards(config: ConfigOpt = None, data_dir: DataDirOpt = None, json_: JsonOpt = False) -> None:
    """What the node has earned, what is pending, and what is disputed."""
    data = _client(config, data_dir).get("/api/rewards")
    if json_:
        _print_json(data)
        return
    cur = data["currency"]
    typer.echo(f"earned    {data['earned']:.6f} {cur}")
    typer.echo(f"pending   {data['pending']:.6f} {cur}")
    typer.echo(f"disputed  {data['disputed']:.6f} {cur}")
    typer.echo(f"tasks     {data['tasks']['completed']} completed, {data['tasks']['failed']} failed; "
               f"{data['receipts']} receipts")


@app.command("id")
@cli_errors
def id_(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Print this node's peer ID (needs no running daemon)."""
    from hyperion_node.identity import load_identity

    cfg = _config(config, data_dir)
    typer.echo(str(load_identity(DataDir(cfg.node.data_dir), create=False).peer_id))


@app.command()
@cli_errors
def hardware(config: ConfigOpt = None, data_dir: DataDirOpt = None, json_: JsonOpt = False) -> None:
    """Probe this machine: GPUs (NVML), CPU, RAM, disk. Needs no running daemon."""
    from hyperion_node.hardware import probe_hardware

    cfg = _config(config, data_dir)
    disk = cfg.node.data_dir if cfg.node.data_dir.exists() else Path.home()
    profile = probe_hardware(disk)
    if json_:
        _print_json(profile.to_json())
        return
    cpu = profile.cpu
    flags = ", ".join(f for f, on in (("AVX2", cpu.avx2), ("AVX-512", cpu.avx512)) if on) or "no AVX2"
    typer.echo(f"cpu    {cpu.model}: {cpu.logical_cores} logical cores ({flags})")
    typer.echo(f"ram    {format_bytes(profile.ram_available_bytes)} free of {format_bytes(profile.ram_total_bytes)}")
    typer.echo(f"disk   {format_bytes(profile.disk_free_bytes)} free at {profile.disk_path}")
    if not profile.gpus:
        typer.echo(f"gpus   none: {profile.gpu_status}")
    for gpu in profile.gpus:
        typer.echo(
            f"gpu {gpu.index}  {gpu.name}  {format_bytes(gpu.vram_free_bytes)} free of "
            f"{format_bytes(gpu.vram_total_bytes)}  driver {gpu.driver_version}  CUDA {gpu.cuda_version}  "
            f"sm {gpu.compute_capability}"
        )


@config_app.command("show")
@cli_errors
def config_show(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override one key: section.key=value.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Print the effective configuration and where each value came from."""
    cfg = load_config(config_file=config, data_dir=data_dir, sets=set_ or [])
    rows = cfg.show()
    if json_:
        _print_json({key: {"value": value, "source": source} for key, value, source in rows})
        return
    print_table(["key", "value", "source"], [[k, json.dumps(v), s] for k, v, s in rows])


def main() -> None:
    app()
