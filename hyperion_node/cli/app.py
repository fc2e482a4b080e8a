"""`hyperion-node`: the command line.

``start`` runs the daemon. ``status``, ``peers``, ``rewards`` and ``dashboard`` ask the running daemon
through its control API, found through the data dir alone. ``id``, ``hardware`` and ``config show`` work
without a daemon.

Every command turns a ``HyperionError`` into one line on stderr and its exit code: a user never sees a
traceback for a mistake or a missing daemon.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from hyperion_node import __version__
from hyperion_node.cli.client import ApiClient
from hyperion_node.cli.common import cli_errors
from hyperion_node.cli.common import print_json as _print_json
from hyperion_node.cli.control import register as register_controls
from hyperion_node.cli.events import events_command
from hyperion_node.cli.ledger import ledger_app, receipts_app
from hyperion_node.cli.models import models_app
from hyperion_node.cli.render import format_bytes, print_table
from hyperion_node.cli.tasks import audit as audit_command
from hyperion_node.cli.tasks import submit_app
from hyperion_node.cli.tasks import tasks as tasks_command
from hyperion_node.cli.top import top_command
from hyperion_node.config import Config, load_config
from hyperion_node.datadir import DataDir
from hyperion_node.errors import EnvironmentProblem, NodeNotRunning, UserError

app = typer.Typer(
    name="hyperion-node",
    help="Hyperion Node: earn with your GPU on a decentralized compute network.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(receipts_app, name="receipts")
app.add_typer(ledger_app, name="ledger")
app.add_typer(submit_app, name="submit")
app.add_typer(models_app, name="models")
app.command("tasks")(cli_errors(tasks_command))
app.command("audit")(cli_errors(audit_command))
app.command("events")(events_command)
app.command("top")(top_command)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="User config file (TOML) over the embedded defaults.")
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", "-d", help="Data directory (env HYPERION_DATA_DIR; default ~/.local/share/hyperion)."),
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override one key: section.key=value (repeatable).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
LogFormatOpt = Annotated[str | None, typer.Option("--log-format", help="auto, console or json.")]
LogLevelOpt = Annotated[str | None, typer.Option("--log-level", help="debug, info, warning or error.")]


def _config(config: Path | None, data_dir: Path | None, sets: list[str] | None = None,
            log_format: str | None = None, log_level: str | None = None) -> Config:
    extra = list(sets or [])
    if log_format:
        extra.append(f'logging.format="{log_format}"')
    if log_level:
        extra.append(f'logging.level="{log_level}"')
    return load_config(config_file=config, data_dir=data_dir, sets=extra)


def _with_logging(cfg: Config) -> Config:
    """Set up logging for a command that runs node code (structlog costs a quarter second to import: the
    commands that only ask the daemon or read a file skip it)."""
    from hyperion_node.logs import configure_logging

    configure_logging(level=cfg.logging.level, fmt=cfg.logging.format, libp2p_level=cfg.logging.libp2p_level)
    return cfg


def _client(config: Path | None, data_dir: Path | None) -> ApiClient:
    return ApiClient(DataDir(_config(config, data_dir).node.data_dir))


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
    demo: Annotated[bool, typer.Option("--demo", help="Run a simulated network of virtual nodes in this "
                                       "process (real node code, simulated GPUs); nothing leaves 127.0.0.1.")] = False,
    nodes: Annotated[int, typer.Option("--nodes", help="--demo: virtual nodes.")] = 8,
    rate: Annotated[float, typer.Option("--rate", help="--demo: tasks submitted per second.")] = 5.0,
    duration: Annotated[float, typer.Option("--duration", help="--demo: seconds of workload.")] = 60.0,
    seed: Annotated[int, typer.Option("--seed", help="--demo: seed of the workload and simulated runtimes.")] = 0,
    web: Annotated[bool, typer.Option("--web", help="--demo: serve the first node's web dashboard.")] = False,
    real_inference: Annotated[bool, typer.Option("--real-inference", help="--demo: the first node serves the "
                                                 "packaged GGUF model with llama.cpp for real.")] = False,
    network: Annotated[str, typer.Option("--network", help="--demo: libp2p (each node a libp2p host on "
                                         "127.0.0.1), memory (an in-process fabric under the same P2P "
                                         "interface: for more nodes and tasks than one core carries over "
                                         "libp2p), or auto: libp2p up to nodes x rate = 40, memory above.")
                       ] = "auto",
) -> None:
    """Start the node: join the network, advertise this machine, serve work until Ctrl-C."""
    import trio

    from hyperion_node.daemon import run_daemon
    from hyperion_node.logs import configure_logging

    if demo:
        from hyperion_demo.runner import DemoOptions, run_demo

        # The demo's many nodes log to one terminal: only warnings, unless asked for more.
        configure_logging(level=log_level or "warning", fmt=log_format or "auto", libp2p_level="error")
        # The script kills a node on purpose; its peers' libp2p then logs each broken connection as an error.
        logging.getLogger("libp2p").setLevel(logging.CRITICAL)
        options = DemoOptions(nodes=nodes, rate=rate, duration=duration, seed=seed, web=web,
                              real_inference=real_inference, network=network)
        trio.run(functools.partial(run_demo, options, sys.stdout, terminal=sys.stdout.isatty()))
        return
    cfg = _with_logging(_config(config, data_dir, set_, log_format, log_level))

    def on_ready(text: str) -> None:
        typer.echo(text)
        sys.stdout.flush()

    def reload() -> Config:  # `config reload` and SIGHUP: the same file, environment and flags, read again
        return _config(config, data_dir, set_, log_format, log_level)

    trio.run(functools.partial(run_daemon, cfg, on_ready=on_ready, reload_config=reload))


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
    peers = data["peers"]
    typer.echo(f"peers      {peers['live']} alive of {peers['known']} known, {peers['connected']} connected")
    for rt in data["runtimes"]:
        if rt["state"] != "ready":
            typer.echo(f"runtime    {rt['name']}: {rt['state']}: {rt['error']}")
            continue
        bench = rt["benchmark"]
        speed = f"{bench['throughput']:.1f} {bench['unit']}/s" if bench else "not benchmarked"
        items = ", ".join(o["item"] for o in rt["offers"])
        typer.echo(f"runtime    {rt['name']} {rt['version']}: {speed}; offers {items or 'nothing'}")


PEER_SORTS = ("state", "score", "rtt", "name", "seen")


def _peer_rows(data: list[dict[str, Any]], sort: str) -> list[list[str]]:
    keys = {
        "state": lambda p: (p["state"] != "alive", p["state"], p["name"]),
        "score": lambda p: -p["score"],
        "rtt": lambda p: p["rtt_ms"] if p["rtt_ms"] is not None else float("inf"),
        "name": lambda p: p["name"] or p["peer_id"],
        "seen": lambda p: p["last_seen_s_ago"],
    }
    rows = []
    for p in sorted(data, key=keys[sort]):
        telemetry = p["telemetry"] or {}
        offers = ", ".join(o["item"] for o in p["offers"]) or "-"
        rows.append([
            p["name"] or "-", p["peer_id"][-12:], p["state"] + ("" if p["connected"] else " (not connected)"),
            "-" if p["rtt_ms"] is None else f"{p['rtt_ms']:.0f} ms", f"{p['last_seen_s_ago']:.0f} s",
            str(telemetry.get("queue_depth", "-")), f"{p['score']:.1f}", offers,
        ])
    return rows


def _network_summary(data: list[dict[str, Any]], estimate: dict[str, Any] | None) -> str:
    """Connected peers, exactly; the rest of the network as the census estimates it (p2p/census.py)."""
    from hyperion_node.cli.top_view import network_line

    connected = sum(1 for p in data if p["connected"])
    line = f"connected: {connected} peers (exact); {network_line(estimate)}"
    if estimate and estimate["capacity"]:
        line += "; capacity ≈ " + ", ".join(f"{k} {v}" for k, v in estimate["capacity"].items())
    return line


@app.command()
@cli_errors
def peers(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    json_: JsonOpt = False,
    sort: Annotated[str, typer.Option("--sort", help="state, score, rtt, name or seen.")] = "state",
    watch: Annotated[bool, typer.Option("--watch", help="Refresh every 2 s until Ctrl-C.")] = False,
) -> None:
    """Peers the running node knows: state, round-trip time, last seen, queue, score, offers."""
    if sort not in PEER_SORTS:
        raise UserError(f"--sort {sort!r} is not one of {', '.join(PEER_SORTS)}")
    client = _client(config, data_dir)
    while True:
        data = client.get("/api/peers")
        if json_:
            _print_json(data)
        elif not data:
            typer.echo("no peers yet: add bootstrap peers (p2p.bootstrap) or start another node on this network")
        else:
            if watch:
                typer.echo("\x1b[H\x1b[2J", nl=False)  # home + clear: redraw in place
            print_table(["name", "peer id", "state", "rtt", "seen", "queue", "score", "offers"],
                        _peer_rows(data, sort))
            typer.echo(_network_summary(data, client.get("/api/p2p").get("network_estimate")))
        if not watch:
            return
        try:
            time.sleep(2.0)
        except KeyboardInterrupt:
            return


@app.command()
@cli_errors
def doctor(config: ConfigOpt = None, data_dir: DataDirOpt = None, json_: JsonOpt = False) -> None:
    """Check this node's set-up and print the exact fix for each problem."""
    from hyperion_node.cli.doctor import local_checks, print_checks

    cfg = _with_logging(_config(config, data_dir))
    checks = local_checks(cfg)
    try:
        checks += ApiClient(DataDir(cfg.node.data_dir)).get("/api/doctor")
    except NodeNotRunning:
        checks.append({"name": "running node", "ok": None, "fix": "start it with `hyperion-node start`",
                       "detail": "not running: reachability, bootstrap membership and clock skew not checked"})
    except EnvironmentProblem as exc:  # e.g. a token file others can read: the CLI does not send it
        checks.append({"name": "running node", "ok": False, "fix": exc.hint or "",
                       "detail": f"not asked: {exc.message}"})
    if json_:
        _print_json(checks)
    else:
        print_checks(checks)
    if any(c["ok"] is False for c in checks):
        raise typer.Exit(1)


@app.command()
@cli_errors
def rewards(config: ConfigOpt = None, data_dir: DataDirOpt = None, json_: JsonOpt = False) -> None:
    """What the node has earned (settled), what is pending and disputed, per runtime and period, and why."""
    data = _client(config, data_dir).get("/api/rewards")
    if json_:
        _print_json(data)
        return
    cur, exact, tasks = data["currency"], data["exact"], data["tasks"]
    typer.echo(f"earned    {exact['earned']} {cur}  (settled: countersigned by the requester)")
    typer.echo(f"pending   {exact['pending']} {cur}  (not countersigned yet)")
    typer.echo(f"disputed  {exact['disputed']} {cur}  (rejected by a verifier)")
    typer.echo(f"spent     {exact['spent']} {cur}  (work this node bought)")
    typer.echo(f"tasks     {tasks['completed']} completed ({tasks['settled']} settled, {tasks['pending']} pending, "
               f"{tasks['disputed']} disputed), {tasks['failed']} failed; {data['receipts']} receipts")
    typer.echo("")
    periods = data["periods"]
    print_table(["period", "earned", "pending", "disputed", "tasks"],
                [[name.replace("_", " "), f"{p['earned']:.6f}", f"{p['pending']:.6f}", f"{p['disputed']:.6f}",
                  str(p["tasks"])] for name, p in periods.items()])
    if data["runtimes"]:
        typer.echo("")
        print_table(["runtime", "tasks", "work", "earned", "pending", "disputed"],
                    [[name, str(r["tasks"]), f"{r['units']} {r['unit']}", f"{r['earned']:.6f}",
                      f"{r['pending']:.6f}", f"{r['disputed']:.6f}"] for name, r in data["runtimes"].items()])
    for warning in data["warnings"]:
        typer.echo(f"warning: {warning['message']}")


@app.command("dashboard")
@cli_errors
def dashboard_link(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Print the link to the running node's web dashboard, to open in a browser on this machine.

    The link carries the API token after the #: a browser never sends that part to a server, and the page
    sends the token on its own requests."""
    # Printed, not opened: a browser started with the link carries it on its command line, which every
    # local user can read (ps), and the token is what keeps other local users out of the API.
    typer.echo(_client(config, data_dir).dashboard_url)


@app.command("id")
@cli_errors
def id_(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Print this node's peer ID (needs no running daemon)."""
    from hyperion_node.keyfile import peer_id_of_seed, read_key_seed

    cfg = _config(config, data_dir)
    typer.echo(peer_id_of_seed(read_key_seed(DataDir(cfg.node.data_dir).key_path)))


@app.command()
@cli_errors
def hardware(config: ConfigOpt = None, data_dir: DataDirOpt = None, json_: JsonOpt = False) -> None:
    """Probe this machine: GPUs (NVML), CPU, RAM, disk. Needs no running daemon."""
    from hyperion_node.hardware import probe_hardware

    cfg = _with_logging(_config(config, data_dir))
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


register_controls(app, config_app)  # after the commands above: they come first in --help


def main() -> None:
    try:
        app()
    except (BrokenPipeError, BaseExceptionGroup) as exc:
        if not _only_broken_pipe(exc):
            raise
        # Whoever read our output went away (`start --demo | head`, `events --follow | less`, then q): stop
        # quietly with the shell's code for a SIGPIPE death, as other command-line tools do. stdout now goes
        # nowhere, so the interpreter's last flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(128 + signal.SIGPIPE)


def _only_broken_pipe(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(BrokenPipeError)
        return matched is not None and rest is None
    return isinstance(exc, BrokenPipeError)
