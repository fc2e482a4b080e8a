"""`hyperion-node submit ...` and `hyperion-node tasks`: work sent to the network through the running node."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

from hyperion_node.cli.client import ApiClient
from hyperion_node.cli.common import cli_errors, print_json
from hyperion_node.cli.render import print_table
from hyperion_node.config import load_config
from hyperion_node.datadir import DataDir
from hyperion_node.errors import EnvironmentProblem, UserError

submit_app = typer.Typer(help="Send work to the network through the running node.", no_args_is_help=True)

DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", "-d", help="Data directory (env HYPERION_DATA_DIR; default ~/.local/share/hyperion)."),
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="User config file (TOML).")]


def client(config: Path | None, data_dir: Path | None) -> ApiClient:
    return ApiClient(DataDir(load_config(config_file=config, data_dir=data_dir).node.data_dir))


def run_task(api: ApiClient, body: dict[str, Any], *, stream_text: bool, timeout_s: float) -> dict[str, Any]:
    """Submit a task, print its partial text as it arrives (with ``stream_text``), return its final event."""
    final: dict[str, Any] | None = None
    for event in api.post_stream("/api/tasks", body, timeout_s=timeout_s):
        kind = event.get("event")
        if kind == "assigned":
            typer.echo(f"task {event['task_id'][:12]} -> worker {event['worker'][-12:]}"
                       f"{' (this node)' if event.get('local') else ''}", err=True)
        elif kind == "partial" and stream_text:
            sys.stdout.write(str(event.get("text", "")))
            sys.stdout.flush()
        elif kind == "final":
            final = event
        elif kind == "error":
            raise EnvironmentProblem(str(event.get("message", "the task failed")))
    if final is None:
        raise EnvironmentProblem("the node ended the answer without a result", hint="see `hyperion-node tasks`")
    return final


@submit_app.command("infer")
@cli_errors
def submit_infer(
    model: Annotated[str, typer.Option("--model", "-m", help="Model id (see `curl .../v1/models`).")],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Prompt text.")],
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Tokens to generate at most.")] = 128,
    temperature: Annotated[float, typer.Option("--temperature", help="0 = greedy.")] = 0.8,
    stream: Annotated[bool, typer.Option("--stream/--no-stream", help="Print tokens as they arrive.")] = True,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds the task may take, failover included.")] = 120.0,
    json_: Annotated[bool, typer.Option("--json", help="Print the final result as JSON.")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Generate text on the best peer that serves the model, streaming tokens as they arrive."""
    if max_tokens < 1:
        raise UserError(f"--max-tokens must be at least 1, got {max_tokens}")
    body = {"runtime": "inference", "item": model, "timeout_s": timeout, "expected_units": max_tokens,
            "payload": {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature}}
    final = run_task(client(config, data_dir), body, stream_text=stream and not json_, timeout_s=timeout)
    if json_:
        print_json(final)
        return
    output = final.get("output", {})
    if not stream:
        typer.echo(output.get("text", ""), nl=False)
    typer.echo("")
    typer.echo(f"[{output.get('tokens_out', '?')} tokens by {final['worker'][-12:]}, "
               f"finish {output.get('finish_reason')}, receipt {final.get('receipt_id', '')[:16]}]", err=True)


@submit_app.command("zk")
@cli_errors
def submit_zk(
    zkey: Annotated[Path, typer.Option("--zkey", help="The circuit's Groth16 proving key (snarkjs .zkey).")],
    wtns: Annotated[Path | None, typer.Option("--wtns", help="The witness (.wtns).")] = None,
    wasm: Annotated[Path | None, typer.Option("--wasm", help="The circuit's witness generator (.wasm).")] = None,
    input_: Annotated[Path | None, typer.Option("--input", help="Its input JSON (with --wasm).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Where proof.json and public.json go.")] = Path("."),
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds the task may take, failover included.")] = 600.0,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Prove on the best peer that runs Groth16; the proof is verified here before it is accepted."""
    if (wtns is None) == (wasm is None) or (wasm is not None) != (input_ is not None):
        raise UserError("give --wtns, or --wasm with --input")
    files = {"zkey": zkey, "wtns": wtns, "wasm": wasm}
    encoded: dict[str, str] = {}
    for field, path in files.items():
        if path is None:
            continue
        try:
            encoded[field] = base64.b64encode(path.read_bytes()).decode()
        except OSError as exc:
            raise UserError(f"cannot read --{field} {path}: {exc.strerror}") from exc
    payload: dict[str, Any] = {}
    if input_ is not None:
        try:
            payload["input"] = json.loads(input_.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"--input {input_} is not a readable JSON file: {exc}") from exc
    body = {"runtime": "zk-groth16", "item": "groth16-bn254", "timeout_s": timeout, "payload": payload,
            "payload_b64": encoded}
    final = run_task(client(config, data_dir), body, stream_text=False, timeout_s=timeout)
    from runtimes.zk.files import snarkjs_dumps
    from runtimes.zk.runtime import in_snarkjs_order

    out.mkdir(parents=True, exist_ok=True)
    output = final.get("output", {})
    (out / "proof.json").write_text(snarkjs_dumps(in_snarkjs_order(output.get("proof") or {})))
    (out / "public.json").write_text(snarkjs_dumps(output.get("public")))
    typer.echo(f"proof by {final['worker'][-12:]} verified; wrote {out / 'proof.json'} and {out / 'public.json'}"
               f" (receipt {final.get('receipt_id', '')[:16]})")


def tasks(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    limit: Annotated[int, typer.Option("--limit", "-n", help="Newest N tasks.")] = 20,
    role: Annotated[str | None, typer.Option("--role", help="requester or worker.")] = None,
    task_id: Annotated[str | None, typer.Argument(help="Show one task (an ID or its first characters).")] = None,
) -> None:
    """Task history: what this node asked the network for and what it ran for peers (survives restarts)."""
    if role not in (None, "requester", "worker"):
        raise UserError(f"--role must be requester or worker, got {role!r}")
    api = client(config, data_dir)
    if task_id is not None:
        found = api.get(f"/api/tasks/{quote(task_id, safe='')}")
        print_json(found)
        return
    params: dict[str, Any] = {"limit": limit}
    if role:
        params["role"] = role
    data = api.get("/api/tasks", **params)
    if json_:
        print_json(data)
        return
    if not data:
        typer.echo("no tasks yet: `hyperion-node submit infer --model M --prompt TEXT` sends one")
        return
    rows = []
    for t in data:
        tries = " ".join(f"{a['peer_id'][-6:]}:{a['outcome']}" for a in t["attempts"]) or "-"
        rows.append([t["task_id"][:12], t["role"], f"{t['runtime']}/{t['item']}"[:40], t["state"],
                     (t["worker"] or "-")[-12:], tries, (t["error"] or "")[:40]])
    print_table(["task", "role", "what", "state", "worker", "attempts", "error"], rows)


def audit(
    task_id: Annotated[str, typer.Argument(help="A task this node asked for (`hyperion-node tasks` lists them).")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the verdict and its statistics as JSON.")] = False,
) -> None:
    """Check one of this node's own recent results on this node itself: every position the check can read,
    against this node's own copy of the model; the verdict with the check's statistics."""
    answer = client(config, data_dir).post(f"/api/tasks/{quote(task_id, safe='')}/audit", {}, timeout_s=3600)
    if json_:
        print_json(answer)
        return
    verdict = "holds" if answer["ok"] else "does NOT hold"
    typer.echo(f"task {answer['task_id'][:12]} by {answer['worker'][-12:]} ({answer['runtime']}/{answer['item']}): "
               f"the result {verdict}: {answer['reason']}  ({answer['seconds']:.2f} s)")
    stats = answer.get("statistics") or {}
    shown = {k: v for k, v in stats.items() if isinstance(v, int | float | bool) and not isinstance(v, list)}
    if shown:
        print_table(["statistic", "value"], [[k, f"{v:.4g}" if isinstance(v, float) else str(v)]
                                             for k, v in sorted(shown.items())])
    evidence = answer.get("evidence")
    if evidence:
        typer.echo(f"this node's checks of {answer['worker'][-12:]} on {answer['item']}: {evidence['checks']} "
                   f"({evidence['failed']} failed alone); sequential test at {100 * evidence['drift']:.0f}% of a "
                   f"dispute{'; DISPUTED: ' + evidence['condemned']['statistic'] if evidence['condemned'] else ''}")
        scores = answer.get("scores") or {}
        rows = [[name, f"{scores.get(name, 0.0):.3f}", f"{c['value']:.3f}", f"{c['peak']:.3f}"]
                for name, c in evidence["cusums"].items()]
        if rows:
            print_table(["score", "this check", "CUSUM", "highest"], rows)
    if not answer["ok"]:
        raise typer.Exit(1)


def parse_frames(text: str) -> tuple[int, int]:
    """``1-48`` (inclusive) or one frame, ``7``."""
    first, sep, last = text.strip().partition("-")
    try:
        start, end = int(first), int(last) if sep else int(first)
    except ValueError:
        raise UserError(f"--frames must be a range such as 1-48 (or one frame, 7), got {text!r}") from None
    if start < 0 or end < start:
        raise UserError(f"--frames {text}: the range must go up, from frame 0 or later (e.g. 1-48)")
    return start, end


def parse_resolution(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    try:
        w, h = int(width), int(height)
    except ValueError:
        raise UserError(f"--resolution must be WIDTHxHEIGHT such as 640x360, got {text!r}") from None
    if not sep or not (1 <= w <= 16384 and 1 <= h <= 16384):
        raise UserError(f"--resolution {text}: width and height must each be 1 to 16384")
    return w, h


class RenderProgress:
    """A progress bar on a terminal, one line per frame otherwise (logs, CI, pipes)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._bar = (typer.progressbar(length=total, label="rendering", file=sys.stderr)
                     if sys.stderr.isatty() else None)
        if self._bar is not None:
            self._bar.__enter__()

    def frame(self, event: dict[str, Any], path: Path, done: int) -> None:
        if self._bar is not None:
            self._bar.update(1)
        else:
            typer.echo(f"frame {event['frame']} <- {event['worker'][-12:]}  {done}/{self.total}  {path}", err=True)

    def note(self, line: str) -> None:
        if self._bar is not None:
            sys.stderr.write("\n")
        typer.echo(line, err=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


@submit_app.command("render")
@cli_errors
def submit_render(
    scene: Annotated[Path, typer.Argument(help="The Blender scene (.blend).")],
    frames: Annotated[str, typer.Option("--frames", "-f", help="Inclusive range, e.g. 1-48 (or one frame, 7).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for frame_0001.png, ... (created).")],
    resolution: Annotated[str, typer.Option("--resolution", "-r", help="WIDTHxHEIGHT.")] = "640x360",
    samples: Annotated[int, typer.Option("--samples", "-s", help="Cycles samples per pixel.")] = 32,
    seed: Annotated[int, typer.Option("--seed", help="Cycles noise seed.")] = 0,
    workers: Annotated[int | None, typer.Option("--workers", help="Use at most N workers.")] = None,
    chunk: Annotated[int | None, typer.Option("--chunk", help="Frames per task (default: from speeds).")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds the whole job may take.")] = 3600.0,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Render a frame range split across the live render workers; frames are written as they arrive."""
    start, end = parse_frames(frames)
    width, height = parse_resolution(resolution)
    if samples < 1:
        raise UserError(f"--samples must be at least 1, got {samples}")
    try:
        data = scene.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read the scene {scene}: {exc.strerror}") from exc
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create --out {out}: {exc.strerror}") from exc
    body: dict[str, Any] = {"scene_b64": base64.b64encode(data).decode(), "frame_start": start, "frame_end": end,
                            "resolution": [width, height], "samples": samples, "seed": seed, "workers": workers,
                            "chunk_frames": chunk, "timeout_s": timeout}
    progress = RenderProgress(end - start + 1)
    try:
        summary = _render_events(client(config, data_dir), body, out, progress, timeout)
    finally:
        progress.close()
    typer.echo(f"{summary['frames']} frames in {summary['seconds']:.1f} s -> {out}")
    for peer, w in summary["workers"].items():
        dropped = f", dropped: {w['dropped']}" if w.get("dropped") else ""
        typer.echo(f"  {peer[-12:]}  {w['frames']:>4} frames  {w['tasks']} tasks  {w['busy_s']:.1f} s busy{dropped}")
    typer.echo(f"  stolen {summary['stolen']}, reassigned {summary['reassigned']}, duplicates dropped "
               f"{summary['duplicates']}; {len(summary['receipts'])} receipts")


def _render_events(api: ApiClient, body: dict[str, Any], out: Path, progress: RenderProgress,
                   timeout: float) -> dict[str, Any]:
    done = 0
    for event in api.post_stream("/api/render", body, timeout_s=timeout):
        kind = event.get("event")
        if kind == "plan":
            shares = ", ".join(f"{w['worker'][-12:]} {w['frames']}" for w in event["workers"])
            progress.note(f"{event['total']} frames across {len(event['workers'])} workers: {shares}")
        elif kind == "frame":
            path = out / f"frame_{int(event['frame']):04d}.png"
            path.write_bytes(base64.b64decode(event["png"]))
            done += 1
            progress.frame(event, path, done)
        elif kind == "reassigned" and event.get("frames"):
            frames = event["frames"]
            progress.note(f"worker {event['worker'][-12:]} dropped ({event['reason']}): {len(frames)} frames "
                          f"({frames[0]}-{frames[-1]}) reassigned")
        elif kind == "chunk" and event.get("source") == "stolen":
            progress.note(f"{event['worker'][-12:]} took frames {event['frames'][0]}-{event['frames'][1]} "
                          f"from {event['from'][-12:]}")
        elif kind == "done":
            return event
        elif kind == "error":
            message = str(event.get("message", "the render job failed"))
            if event.get("missing"):
                message += f" (missing frames: {event['missing'][:20]})"
            raise (UserError if event.get("status") == 400 else EnvironmentProblem)(message)
    raise EnvironmentProblem("the node ended the render job without a summary", hint="see `hyperion-node tasks`")
