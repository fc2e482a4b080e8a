"""`hyperion-node models`: the GGUF models a node can serve, and the ones it keeps in its data dir.

``list`` shows every model file the inference runtime would find (the packaged model, the files and
directories in ``[runtimes.inference] models``, and ``<data dir>/models``), grouped by model: several
quantizations of one model form a family, of which the node serves the best that fits its memory
(``runtimes/inference/tiers.py``). With a running node it also says which file the node serves and why.
``add PATH`` copies a GGUF file into ``<data dir>/models`` after checking its header; ``remove ID`` deletes one
from there; ``pull ID`` has the running node fetch a model that peers serve, over ``/hyperion/blob/1``
(``hyperion_node/blobs``), with a progress bar. The node reads its models when it starts: restart it to serve
what was added, pulled or removed.

Needs no running daemon (but ``pull``) and imports no llama.cpp: the registry reads file names and GGUF headers.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from hyperion_node.cli.common import cli_errors, print_json
from hyperion_node.cli.render import format_bytes, print_table
from hyperion_node.config import load_config
from hyperion_node.datadir import DataDir
from hyperion_node.errors import NodeNotRunning, UserError
from runtimes.inference.registry import ModelEntry, ModelRegistry, model_id_for, parse_quantization, read_gguf_info
from runtimes.inference.tiers import family_name, tier_of

MANAGED_DIR = "models"  # under the data dir: runtimes/inference/runtime.py MANAGED_MODELS_DIR
PACKAGED_ID = "gemma-3-270m-q4_k_m"

models_app = typer.Typer(help="The models this node serves: list, add, remove, pull.", no_args_is_help=True)
PULL_POLL_S = 0.5

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="User config file (TOML).")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", "-d", help="Data directory.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def managed_dir(data_dir: Path) -> Path:
    return data_dir / MANAGED_DIR


def _files(config: Path | None, data_dir: Path | None) -> tuple[DataDir, list[tuple[ModelEntry, str]]]:
    """Every model file the runtime would find, with where it comes from."""
    cfg = load_config(config_file=config, data_dir=data_dir)
    root = DataDir(cfg.node.data_dir)
    settings = cfg.runtime_settings.get("inference", {})
    found: list[tuple[ModelEntry, str]] = []
    if settings.get("include_packaged_model", True):
        packaged = root.cache_dir / "inference" / "models" / f"{PACKAGED_ID}.gguf"
        size = packaged.stat().st_size if packaged.is_file() else 0
        found.append((ModelEntry(PACKAGED_ID, packaged, size, "Q4_K_M", packaged=True), "packaged"))
    configured = [root.root / Path(m).expanduser() for m in settings.get("models", []) if isinstance(m, str)]
    for path in configured:
        if path.exists():
            found += [(entry, "configured") for entry in ModelRegistry.scan([path])]
    managed = managed_dir(root.root)
    if managed.is_dir():
        found += [(entry, "data dir") for entry in ModelRegistry.scan([managed])]
    return root, found


def _served(root: DataDir) -> dict[str, dict[str, Any]] | None:
    """What a running node offers, by model: its offers' details; None when no node runs."""
    from hyperion_node.cli.client import ApiClient

    try:
        status = ApiClient(root).get("/api/status")
    except NodeNotRunning:
        return None
    served: dict[str, dict[str, Any]] = {}
    for runtime in status.get("runtimes", []):
        for offer in runtime.get("offers", []) if isinstance(runtime, dict) else []:
            if offer.get("runtime") == "inference":
                served[str(offer.get("item"))] = dict(offer.get("details") or {})
    return served


@models_app.command("list")
@cli_errors
def list_models(config: ConfigOpt = None, data_dir: DataDirOpt = None, json_: JsonOpt = False) -> None:
    """Every model file this node would serve, by model; with a running node, the file it serves and why."""
    root, found = _files(config, data_dir)
    served = _served(root)
    rows: list[dict[str, Any]] = []
    for entry, source in found:
        family = family_name(entry.model_id, entry.quantization)
        offer = None
        if served is not None:
            offer = served.get(entry.model_id) or served.get(family)
        serving = None if served is None else (
            offer is not None and offer.get("quantization") == entry.quantization
            and (entry.model_id in served or family in served))
        rows.append({"id": entry.model_id, "model": family, "quantization": entry.quantization,
                     "tier": tier_of(entry.quantization), "size_bytes": entry.size_bytes, "source": source,
                     "path": str(entry.path), "served": serving,
                     "why": offer.get("tier_reason") if serving and offer is not None else None})
    if json_:
        print_json({"node_running": served is not None, "models": rows})
        return
    if not rows:
        typer.echo("no model files: add one with `hyperion-node models add PATH`, or set "
                   "[runtimes.inference] include_packaged_model = true")
        return
    print_table(["id", "model", "quant", "tier", "size", "source", "served"],
                [[r["id"], r["model"], r["quantization"], r["tier"] or "-", format_bytes(r["size_bytes"]),
                  r["source"], "?" if r["served"] is None else ("yes" if r["served"] else "no")] for r in rows])
    for row in rows:
        if row["why"]:
            typer.echo(f"{row['model']}: serves {row['why']}")
    if served is None:
        typer.echo("(the node is not running: `served` shows once it is)")


@models_app.command("add")
@cli_errors
def add_model(
    path: Annotated[Path, typer.Argument(help="A .gguf model file.")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Copy a GGUF model file into the data dir's models folder; the node serves it from its next start."""
    if not path.is_file():
        raise UserError(f"{path} is not a file", hint="give the path of a .gguf model file")
    if path.suffix.lower() != ".gguf":
        raise UserError(f"{path.name} is not a .gguf file", hint="the inference runtime serves GGUF models only")
    try:
        info = read_gguf_info(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not a readable GGUF model: {exc}", hint="download the file again") from exc
    root, found = _files(config, data_dir)
    model_id = model_id_for(path)
    for entry, source in found:
        if entry.model_id == model_id:
            raise UserError(f"a model with the id {model_id!r} is already there ({source}: {entry.path})",
                            hint=f"remove it first (`hyperion-node models remove {model_id}`) or rename the file")
    target_dir = managed_dir(root.root)
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / path.name
    partial = target.with_name(f".{target.name}.partial")
    shutil.copyfile(path, partial)
    os.replace(partial, target)  # never a half-copied model under its real name
    quant = parse_quantization(path.name)
    typer.echo(f"added {model_id} ({info.architecture}, {quant}, {tier_of(quant) or 'no'} tier, "
               f"{format_bytes(target.stat().st_size)}) as model {family_name(model_id, quant)!r}; "
               "restart the node to serve it")


@models_app.command("remove")
@cli_errors
def remove_model(
    model_id: Annotated[str, typer.Argument(help="The model file's id, as `models list` shows it.")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Delete a model file from the data dir's models folder; the node stops serving it at its next start."""
    _, found = _files(config, data_dir)
    matches = [(entry, source) for entry, source in found if entry.model_id == model_id]
    if not matches:
        known = ", ".join(entry.model_id for entry, _ in found) or "none"
        raise UserError(f"no model file with the id {model_id!r}", hint=f"the ids are: {known}")
    entry, source = matches[0]
    if source != "data dir":
        how = ("set [runtimes.inference] include_packaged_model = false" if source == "packaged"
               else "remove it from [runtimes.inference] models")
        raise UserError(f"{model_id} is not in the data dir's models folder ({source}: {entry.path})", hint=how)
    entry.path.unlink()
    typer.echo(f"removed {model_id} ({entry.path}); restart the node to stop serving it")


@models_app.command("pull")
@cli_errors
def pull_model(
    model_id: Annotated[str, typer.Argument(help="The model's id, as peers offer it (`hyperion-node providers`).")],
    from_: Annotated[list[str] | None, typer.Option("--from", help="Fetch only from this peer (repeatable).")] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Fetch a model that peers serve into the data dir's models folder, from several of them at once, every
    chunk checked; run it again after an interruption to go on where it stopped. Needs the node running."""
    from hyperion_node.cli.client import ApiClient

    cfg = load_config(config_file=config, data_dir=data_dir)
    client = ApiClient(DataDir(cfg.node.data_dir))
    body: dict[str, Any] = {"model": model_id, **({"from": list(from_)} if from_ else {})}
    pull = next(iter(client.post_stream("/api/models/pull", body, timeout_s=30)))
    shown = -1.0
    while pull.get("state") not in ("done", "failed"):
        if not json_:
            shown = _show_progress(pull, shown)
        time.sleep(PULL_POLL_S)
        pull = next((p for p in client.get("/api/models/pulls") if p.get("model") == model_id), pull)
    if not json_ and shown >= 0 and sys.stderr.isatty():
        sys.stderr.write("\n")
    if json_:
        print_json(pull)
    if pull["state"] == "failed":
        raise UserError(f"pull of {model_id} failed: {pull.get('error')}", hint=pull.get("hint") or None)
    if not json_:
        fetched = pull["done_bytes"] - pull["resumed_bytes"]
        resumed = f", {format_bytes(pull['resumed_bytes'])} of it from an earlier pull" if pull["resumed_bytes"] else ""
        refused = f", {pull['refused_chunks']} bad chunk(s) refused" if pull.get("refused_chunks") else ""
        lanes = len(pull.get("lanes") or [])
        direct = f", {lanes} of them over its blob lane" if lanes else ""
        typer.echo(f"pulled {model_id} into {pull['path']} ({format_bytes(pull['size'])}{resumed}; "
                   f"{format_bytes(fetched)} from {len(pull['providers'])} peer(s){direct}{refused}); "
                   "restart the node to serve it")


def _show_progress(pull: dict[str, Any], shown: float) -> float:
    """One progress bar on stderr: redrawn in place on a terminal, a line per 10 % otherwise."""
    size, done = int(pull.get("size") or 0), int(pull.get("done_bytes") or 0)
    if not size:  # still asking which file the peers serve
        return shown
    share = done / size
    elapsed = max(1e-3, time.time() - float(pull.get("started_at") or time.time()))
    rate = (done - int(pull.get("resumed_bytes") or 0)) / elapsed
    bar = "#" * int(share * 30)
    line = (f"{pull.get('state', '?'):<9} [{bar:<30}] {share:6.1%} {format_bytes(done)} / {format_bytes(size)} "
            f"{format_bytes(rate)}/s from {len(pull.get('providers') or [])} peer(s)")
    if sys.stderr.isatty():
        sys.stderr.write("\r" + line)
        sys.stderr.flush()
        return share
    if share >= shown + 0.1 or shown < 0:
        sys.stderr.write(line + "\n")
        return share
    return shown
