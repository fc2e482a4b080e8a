"""Receipts signed, verified and durably appended per second; epoch and inclusion-proof verification times.

Measured side by side in one run (this machine is noisy, so every figure comes with its baseline):

  * baseline, crypto: raw Ed25519 sign + verify of the same body bytes (libsodium through the libp2p key) --
    the floor for anything that signs and checks each receipt;
  * baseline, disk: raw SQLite inserts of the same receipt bytes, WAL + synchronous=FULL, one transaction per
    row and in batches -- the floor for anything that appends each receipt durably;
  * the ledger: build the canonical body, worker signature, signature check, append to the hash chain with its
    index (the full `Ledger.append_batch` path), one receipt per transaction and group-committed in batches;
  * the settled flow on top: the requester verifies and countersigns before the append checks both;
  * an epoch of 10,000 receipts verified offline (`receipts verify` of an export: 10,000 signature checks and
    the Merkle root) against 10,000 raw signature checks; one inclusion proof (epoch signature, receipt
    signature, audit path) against the bare Merkle path check; `ledger verify` of the whole chain.

Medians of ``--rounds`` rounds.

    .venv/bin/python scripts/bench_receipts.py [--rounds 3] [--receipts 5000] [--batch 256] [--dir DIR]
"""

from __future__ import annotations

import argparse
import functools
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from hyperion_node.ledger.epochs import verify_export, verify_proof
from hyperion_node.ledger.merkle import verify_inclusion
from hyperion_node.ledger.receipt import Receipt, countersign, sign_receipt
from hyperion_node.ledger.signing import DOMAIN_RECEIPT
from hyperion_node.testing.receipts import ReceiptFactory, open_ledger

EPOCH_SIZE = 10_000


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def raw_crypto(factory: ReceiptFactory, bodies: list[bytes]) -> float:
    private, public = factory.worker.key_pair.private_key, factory.worker.key_pair.public_key

    def run() -> None:
        for body in bodies:
            signature = private.sign(DOMAIN_RECEIPT + body)
            assert public.verify(DOMAIN_RECEIPT + body, signature)

    return len(bodies) / timed(run)


def side_by_side(baseline: Callable[[int, int], None], ours: Callable[[int, int], None], n: int,
                 chunk: int) -> tuple[float, float]:
    """Rates of two workloads over items [0, n), run in alternating chunks so that both meet the same disk
    and the same neighbours: fsync latency here swings by 3x from one second to the next. Which one goes
    first alternates too: an fsync also waits for the other file's writes still in the disk's queue."""
    spent = [0.0, 0.0]
    for number, start in enumerate(range(0, n, chunk)):
        end = min(n, start + chunk)
        order = [(0, baseline), (1, ours)] if number % 2 == 0 else [(1, ours), (0, baseline)]
        for which, work in order:
            spent[which] += timed(functools.partial(work, start, end))
    return n / spent[0], n / spent[1]


def raw_sqlite(path: Path, rows: list[bytes], batch: int) -> Callable[[int, int], None]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (position INTEGER PRIMARY KEY, data BLOB NOT NULL)")

    def run(start: int, end: int) -> None:
        for i in range(start, end, batch):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO t (data) VALUES (?)", [(r,) for r in rows[i:min(end, i + batch)]])
            conn.execute("COMMIT")

    return run


def ledger_appends(path: Path, factory: ReceiptFactory, receipts: list[Receipt], batch: int, *,
                   settled: bool) -> Callable[[int, int], None]:
    ledger = open_ledger(path, factory.worker, every_receipts=1000)

    def run(start: int, end: int) -> None:
        for i in range(start, end, batch):
            signed = [sign_receipt(r, factory.worker) for r in receipts[i:min(end, i + batch)]]
            if settled:
                signed = [countersign(s, factory.requester) for s in signed]
            outcomes = ledger.append_batch(signed)
            assert all(not isinstance(o, Exception) for o in outcomes)

    return run


def epoch_figures(path: Path, factory: ReceiptFactory) -> dict[str, float]:
    ledger = open_ledger(path, factory.worker, every_receipts=EPOCH_SIZE)
    signed = [sign_receipt(factory.receipt(), factory.worker) for _ in range(EPOCH_SIZE)]
    for i in range(0, EPOCH_SIZE, 1000):
        ledger.append_batch(signed[i:i + 1000])
    [header] = ledger.epochs()
    assert header.count == EPOCH_SIZE
    export = ledger.export_epoch(1)
    proof = ledger.prove(signed[EPOCH_SIZE // 3].id)
    public = factory.worker.key_pair.public_key

    def raw_verifies() -> None:
        for s in signed:
            assert public.verify(DOMAIN_RECEIPT + s.body, s.signature)

    proof_runs = 200
    figures = {
        "epoch_verify_s": timed(lambda: verify_export(export)),
        "epoch_raw_verify_s": timed(raw_verifies),
        "proof_verify_ms": timed(lambda: [verify_proof(proof) for _ in range(proof_runs)]) / proof_runs * 1000,
        "proof_path_ms": timed(lambda: [verify_inclusion(proof.receipt, proof.index, header.count, proof.path,
                                                         header.root) for _ in range(proof_runs)]) / proof_runs * 1000,
        "ledger_verify_s": timed(ledger.verify),
        "proof_hashes": float(len(proof.path)),
    }
    ledger.store.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--receipts", type=int, default=5000, help="receipts per batched measurement")
    parser.add_argument("--single", type=int, default=1000, help="receipts per one-per-transaction measurement")
    parser.add_argument("--batch", type=int, default=256, help="receipts per transaction when group-committing")
    parser.add_argument("--dir", type=Path, default=None, help="where the databases go (default: a temp dir)")
    args = parser.parse_args()

    factory = ReceiptFactory()
    results: dict[str, list[float]] = {}

    def record(name: str, value: float) -> None:
        results.setdefault(name, []).append(value)

    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            root = Path(tmp)
            receipts = [factory.receipt() for _ in range(args.receipts)]
            rows = [sign_receipt(r, factory.worker).encode() for r in receipts]
            record("crypto", raw_crypto(factory, [r.body for r in receipts]))
            fresh = [factory.receipt() for _ in range(args.receipts)]
            raw_1, ledger_1 = side_by_side(raw_sqlite(root / "raw1.db", rows, 1),
                                           ledger_appends(root / "l1.db", factory, fresh, 1, settled=False),
                                           args.single, chunk=50)
            record("sqlite_1", raw_1)
            record("ledger_1", ledger_1)
            fresh = [factory.receipt() for _ in range(args.receipts)]
            raw_b, ledger_b = side_by_side(raw_sqlite(root / "rawb.db", rows, args.batch),
                                           ledger_appends(root / "lb.db", factory, fresh, args.batch, settled=False),
                                           args.receipts, chunk=args.batch * 4)
            record("sqlite_b", raw_b)
            record("ledger_b", ledger_b)
            settled = [factory.receipt() for _ in range(args.receipts)]
            settled_run = ledger_appends(root / "ls.db", factory, settled, args.batch, settled=True)
            record("settled_b", args.receipts / timed(functools.partial(settled_run, 0, args.receipts)))
            for name, value in epoch_figures(root / "epoch.db", factory).items():
                record(name, value)

    m = {name: statistics.median(values) for name, values in results.items()}
    print(f"receipts: {len(rows[0])} bytes each (inference receipt, worker-signed); batch {args.batch}; "
          f"medians of {args.rounds} rounds")
    print(f"baseline  raw Ed25519 sign+verify                         {m['crypto']:9.0f} /s")
    print(f"baseline  raw SQLite insert, FULL, 1 per transaction      {m['sqlite_1']:9.0f} /s")
    print(f"baseline  raw SQLite insert, FULL, {args.batch} per transaction    {m['sqlite_b']:9.0f} /s")
    print(f"ledger    sign+verify+append, 1 per transaction           {m['ledger_1']:9.0f} /s  "
          f"({m['ledger_1'] / m['sqlite_1']:.2f}x raw SQLite 1/tx)")
    print(f"ledger    sign+verify+append, group commit of {args.batch:<4}      {m['ledger_b']:9.0f} /s  "
          f"({m['ledger_b'] / m['crypto']:.2f}x raw crypto, {m['ledger_b'] / m['sqlite_b']:.2f}x raw SQLite batched)")
    print(f"ledger    + requester verify & countersign, group commit  {m['settled_b']:9.0f} /s")
    print(f"epoch of {EPOCH_SIZE}: verify export {m['epoch_verify_s']:.2f} s  "
          f"({m['epoch_verify_s'] / m['epoch_raw_verify_s']:.2f}x {EPOCH_SIZE} raw signature checks, "
          f"{m['epoch_raw_verify_s']:.2f} s)")
    print(f"inclusion proof ({m['proof_hashes']:.0f} hashes): verify {m['proof_verify_ms']:.3f} ms "
          f"(Merkle path alone {m['proof_path_ms']:.3f} ms)")
    print(f"ledger verify of the whole chain ({EPOCH_SIZE} receipts + epoch entry): {m['ledger_verify_s']:.2f} s")


if __name__ == "__main__":
    main()
