"""`hyperion-node receipts ...` and `hyperion-node ledger ...`: offline commands, no daemon needed.

``receipts verify FILE`` checks a receipt, an exported epoch or an inclusion proof with nothing but the file.
``receipts prove``, ``receipts export-epoch`` and ``ledger verify`` read the node's database directly: SQLite
in WAL mode lets them read while a daemon writes. The ledger modules are imported inside the commands, so
that the rest of the CLI does not pay for libp2p's import.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hyperion_node.cli.common import cli_errors, print_json
from hyperion_node.config import load_config
from hyperion_node.datadir import DataDir
from hyperion_node.errors import EnvironmentProblem, UserError

if TYPE_CHECKING:
    from hyperion_node.ledger.chain import Ledger

receipts_app = typer.Typer(help="Verify receipts, prove them part of an epoch, export epochs.", no_args_is_help=True)
ledger_app = typer.Typer(help="Check the node's hash-chained ledger.", no_args_is_help=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="User config file (TOML) over the embedded defaults.")
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", "-d", help="Data directory (env HYPERION_DATA_DIR; default ~/.local/share/hyperion)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Write the file here.")]


def _open_ledger(config: Path | None, data_dir: Path | None) -> Ledger:
    from hyperion_node.identity import load_identity
    from hyperion_node.ledger.chain import Ledger
    from hyperion_node.store import Store

    dd = DataDir(load_config(config_file=config, data_dir=data_dir).node.data_dir)
    if not dd.db_path.exists():
        raise EnvironmentProblem(f"no node database at {dd.db_path}",
                                 hint="pass the --data-dir the node runs on, or start it once")
    owner = str(load_identity(dd, create=False).peer_id)
    return Ledger(Store.open(dd.db_path), owner)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from exc


def _write(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from exc


def _credits(atto: int) -> str:
    from hyperion_node.ledger.money import format_credits

    return f"{format_credits(atto)} credits"


def _describe_receipt(r: dict[str, Any]) -> str:
    return (f"{r['runtime']} {r['item']}: {r['units']} {r['unit']} at {_credits(r['price_per_unit'])} = "
            f"{_credits(r['total'])}; worker {r['worker']}, requester {r['requester']}")


@receipts_app.command("verify")
@cli_errors
def receipts_verify(
    file: Annotated[Path, typer.Argument(help="A receipt, an exported epoch or an inclusion proof.")],
    json_: JsonOpt = False,
) -> None:
    """Verify a receipt, an exported epoch or an inclusion proof offline: signatures, hashes, Merkle root."""
    from hyperion_node.ledger.epochs import verify_file
    from hyperion_node.ledger.exceptions import ReceiptRejected

    try:
        verified = verify_file(_read(file))
    except ReceiptRejected as exc:
        raise type(exc)(f"{file}: {exc.message}", peer_id=exc.peer_id) from exc
    if json_:
        print_json({"ok": True, "kind": verified.kind, **verified.summary})
        return
    s = verified.summary
    if verified.kind == "receipt":
        typer.echo(f"ok: receipt {s['id']} ({s['status']})")
        typer.echo(f"  {_describe_receipt(s)}")
    elif verified.kind == "epoch":
        typer.echo(f"ok: epoch {s['number']} of {s['signer']}: {s['receipts']} receipts, every signature and the "
                   f"Merkle root {s['root']} check out")
    else:
        typer.echo(f"ok: receipt {s['receipt_id']} is leaf {s['index']} of epoch {s['epoch']['number']} "
                   f"(root {s['epoch']['root']}, signed by {s['epoch']['signer']})")
        typer.echo(f"  {_describe_receipt(s['receipt'])}")


@receipts_app.command("prove")
@cli_errors
def receipts_prove(
    receipt_id: Annotated[str, typer.Argument(help="Receipt id in hex, or a unique prefix of 8+ digits.")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    out: OutOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Inclusion proof of a receipt in its epoch's signed Merkle root (check it with `receipts verify`)."""
    ledger = _open_ledger(config, data_dir)
    try:
        proof = ledger.prove(ledger.resolve(receipt_id))
    finally:
        ledger.store.close()
    summary = proof.summary()
    if out is not None:
        _write(out, proof.encode())
    if json_ or out is None:
        print_json(summary)
    if out is not None and not json_:
        typer.echo(f"wrote the proof of receipt {summary['receipt_id']} (leaf {proof.index} of epoch "
                   f"{proof.epoch.header.number}, {len(proof.path)} hashes) to {out}")


@receipts_app.command("export-epoch")
@cli_errors
def receipts_export_epoch(
    number: Annotated[int, typer.Argument(help="Epoch number (1 is the first).")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    out: OutOpt = None,
) -> None:
    """Write a closed epoch with all its receipts, its root and signature to a file."""
    ledger = _open_ledger(config, data_dir)
    try:
        export = ledger.export_epoch(number)
    finally:
        ledger.store.close()
    path = out or Path(f"epoch-{number}.cbor")
    _write(path, export.encode())
    typer.echo(f"wrote epoch {number} ({len(export.receipts)} receipts, root {export.epoch.header.root.hex()}) "
               f"to {path}")


@ledger_app.command("verify")
@cli_errors
def ledger_verify(
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    json_: JsonOpt = False,
    rebuild_index: Annotated[
        bool, typer.Option("--rebuild-index", help="Once the chain verifies, rebuild the status index from it.")
    ] = False,
) -> None:
    """Check the whole hash chain: every entry, signature and epoch root. Names the first broken position."""
    ledger = _open_ledger(config, data_dir)
    try:
        report = ledger.verify()
        if rebuild_index and not report.index_consistent:
            ledger.rebuild_index()
            report = ledger.verify()
    finally:
        ledger.store.close()
    if json_:
        print_json({"ok": True, "entries": report.entries, "receipts": report.receipts, "epochs": report.epochs,
                    "head": report.head.hex(), "index_consistent": report.index_consistent})
    else:
        typer.echo(f"ok: {report.entries} entries, {report.receipts} receipts, {report.epochs} epochs; "
                   f"head {report.head.hex()}")
    if not report.index_consistent:
        raise EnvironmentProblem("the chain verifies, but the status index (ledger_receipts) disagrees with it",
                                 hint="the database was edited outside hyperion-node; `hyperion-node ledger verify "
                                      "--rebuild-index` rebuilds it from the chain")
