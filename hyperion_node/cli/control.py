"""The operator's live controls from the command line: `drain`, `resume`, `ban`, `unban`, `runtime disable|enable`,
`price set`, `config reload` (``hyperion_node/control.py`` says what each does to the running node).

Each asks the running node's control API and prints what was done; every control is recorded as an event with
its reason (`hyperion-node events`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer

from hyperion_node.cli.common import cli_errors, print_json
from hyperion_node.config import load_config
from hyperion_node.datadir import DataDir
from hyperion_node.errors import UserError

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="User config file (TOML).")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", "-d", help="Data directory.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the node's answer as JSON.")]
ReasonOpt = Annotated[str, typer.Option("--reason", "-r", help="Why: kept in the event this control leaves.")]

runtime_app = typer.Typer(help="Switch a runtime off (no new work) or on again, live.", no_args_is_help=True)
price_app = typer.Typer(help="Set a runtime's price per work unit, live.", no_args_is_help=True)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """'90s', '30m', '1h', '2d' or plain seconds; ``UserError`` otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if match is None or float(match.group(1)) <= 0:
        raise UserError(f"{text!r} is not a duration", hint="write it as 90s, 30m, 1h or 2d")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def _post(config: Path | None, data_dir: Path | None, path: str, body: dict[str, Any], json_: bool) -> None:
    from hyperion_node.cli.client import ApiClient

    cfg = load_config(config_file=config, data_dir=data_dir)
    done = ApiClient(DataDir(cfg.node.data_dir)).post(path, body)
    if json_:
        print_json(done)
        return
    details = {k: v for k, v in done.items() if k not in ("action", "who", "why", "state")}
    extra = "  " + "  ".join(f"{k}={v}" for k, v in details.items()) if details else ""
    typer.echo(f"{done['action']}: done ({done['why']}){extra}")
    state = done.get("state") or {}
    flags = [name for name, on in (("draining", state.get("draining")),) if on]
    flags += [f"{name} off" for name in state.get("switched_off", [])]
    typer.echo("now: " + (", ".join(flags) if flags else "taking work"))


def register(app: typer.Typer, config_app: typer.Typer) -> None:
    """Add the controls to the CLI (``cli/app.py``)."""

    @app.command()
    @cli_errors
    def drain(config: ConfigOpt = None, data_dir: DataDirOpt = None, reason: ReasonOpt = "",
              json_: JsonOpt = False) -> None:
        """Finish the running work, take no new work, and withdraw this node's offers from the network."""
        _post(config, data_dir, "/api/control/drain", {"reason": reason}, json_)

    @app.command()
    @cli_errors
    def resume(config: ConfigOpt = None, data_dir: DataDirOpt = None, reason: ReasonOpt = "",
               json_: JsonOpt = False) -> None:
        """Take new work again after `drain`."""
        _post(config, data_dir, "/api/control/resume", {"reason": reason}, json_)

    @app.command()
    @cli_errors
    def ban(peer: Annotated[str, typer.Argument(help="The peer id.")],
            reason: Annotated[str, typer.Option("--reason", "-r", help="Why (required): kept in the event.")],
            for_: Annotated[str | None, typer.Option("--for", help="How long: 90s, 30m, 1h, 2d; "
                                                      "left out: until `unban`.")] = None,
            config: ConfigOpt = None, data_dir: DataDirOpt = None, json_: JsonOpt = False) -> None:
        """Close a peer's connections and refuse its streams, whatever its score."""
        body: dict[str, Any] = {"peer_id": peer, "reason": reason}
        if for_ is not None:
            body["for_s"] = parse_duration(for_)
        _post(config, data_dir, "/api/control/ban", body, json_)

    @app.command()
    @cli_errors
    def unban(peer: Annotated[str, typer.Argument(help="The peer id.")], config: ConfigOpt = None,
              data_dir: DataDirOpt = None, reason: ReasonOpt = "", json_: JsonOpt = False) -> None:
        """Lift a peer's ban (the operator's or its score's)."""
        _post(config, data_dir, "/api/control/unban", {"peer_id": peer, "reason": reason}, json_)

    @runtime_app.command("disable")
    @cli_errors
    def runtime_disable(name: Annotated[str, typer.Argument(help="inference, zk-groth16, render-blender...")],
                        config: ConfigOpt = None, data_dir: DataDirOpt = None, reason: ReasonOpt = "",
                        json_: JsonOpt = False) -> None:
        """Withdraw a runtime's offers and refuse its new tasks; running ones finish."""
        _post(config, data_dir, f"/api/control/runtimes/{name}/disable", {"reason": reason}, json_)

    @runtime_app.command("enable")
    @cli_errors
    def runtime_enable(name: Annotated[str, typer.Argument(help="A runtime switched off with `disable`.")],
                       config: ConfigOpt = None, data_dir: DataDirOpt = None, reason: ReasonOpt = "",
                       json_: JsonOpt = False) -> None:
        """Offer a switched-off runtime again."""
        _post(config, data_dir, f"/api/control/runtimes/{name}/enable", {"reason": reason}, json_)

    @price_app.command("set")
    @cli_errors
    def price_set(name: Annotated[str, typer.Argument(help="The runtime.")],
                  value: Annotated[float, typer.Argument(help="Credits per work unit (token, constraint...).")],
                  config: ConfigOpt = None, data_dir: DataDirOpt = None, reason: ReasonOpt = "",
                  json_: JsonOpt = False) -> None:
        """Set a runtime's price per unit in its offers, until the node stops."""
        _post(config, data_dir, f"/api/control/runtimes/{name}/price", {"price_per_unit": value, "reason": reason},
              json_)

    @config_app.command("reload")
    @cli_errors
    def config_reload(config: ConfigOpt = None, data_dir: DataDirOpt = None, reason: ReasonOpt = "",
                      json_: JsonOpt = False) -> None:
        """Have the running node read its configuration again (as SIGHUP does) and apply the keys that can
        change live; a changed key that needs a restart is named, and keeps its running value."""
        from hyperion_node.cli.client import ApiClient

        cfg = load_config(config_file=config, data_dir=data_dir)
        done = ApiClient(DataDir(cfg.node.data_dir)).post("/api/control/reload", {"reason": reason})
        if json_:
            print_json(done)
            return
        for key, value in (done.get("applied") or {}).items():
            typer.echo(f"applied  {key} = {value!r}")
        for key in done.get("refused") or []:
            typer.echo(f"refused  {key}: needs a restart (the running value stays)")
        if not done.get("applied") and not done.get("refused"):
            typer.echo("nothing changed")
        if done.get("refused"):
            raise typer.Exit(1)

    app.add_typer(runtime_app, name="runtime")
    app.add_typer(price_app, name="price")
