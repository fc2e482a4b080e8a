"""Proving from files, without a daemon: what ``hyperion-node submit zk`` runs locally, and scripts use.

``prove_files(zkey, wtns, out_dir)`` writes ``proof.json`` and ``public.json`` exactly as
``snarkjs groth16 prove`` does (same layout, one-space indent, no trailing newline) and returns both.
``prove_wasm_files`` does the same from the circuit's ``.wasm`` and an input JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runtimes.zk.exceptions import MalformedInput
from runtimes.zk.field import Backend
from runtimes.zk.pool import ProcessPool, Progress
from runtimes.zk.prover import ProofPlan, proof_json, public_json, run_inline
from runtimes.zk.wtns import parse_wtns
from runtimes.zk.zkey import parse_zkey

ProofJson = dict[str, Any]


def read_input(path: Path, *, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise MalformedInput(f"{what} {path}: cannot read: {exc.strerror or exc}") from exc


def snarkjs_dumps(value: Any) -> str:
    """JSON as snarkjs's CLI writes proof.json and public.json (bfj with space: 1)."""
    return json.dumps(value, indent=1)


def prove_witness(
    zkey_bytes: bytes,
    witness: list[int],
    *,
    zkey_label: str = "zkey",
    workers: int | None = None,
    backend: Backend = "auto",
    on_progress: Progress | None = None,
) -> tuple[ProofJson, list[str]]:
    """Prove with a process pool of ``workers`` (None: one per core; 1: in this process)."""
    zkey = parse_zkey(zkey_bytes, label=zkey_label)
    if workers == 1:
        plan = ProofPlan(zkey, witness, backend=backend, parallelism=1)
        proof = run_inline(plan)
    else:
        with ProcessPool(workers) as pool:
            plan = ProofPlan(zkey, witness, backend=backend, parallelism=pool.size)
            proof = pool.prove(plan, on_progress)
    return proof_json(proof), public_json(proof)


def prove_files(
    zkey_path: str | Path,
    wtns_path: str | Path,
    out_dir: str | Path | None = None,
    *,
    workers: int | None = None,
    backend: Backend = "auto",
) -> tuple[ProofJson, list[str]]:
    """Prove from a .zkey and a .wtns; write proof.json and public.json into out_dir when given."""
    zkey_path, wtns_path = Path(zkey_path), Path(wtns_path)
    witness = parse_wtns(read_input(wtns_path, what="witness"), label=str(wtns_path))
    result = prove_witness(
        read_input(zkey_path, what="proving key"), witness, zkey_label=str(zkey_path), workers=workers, backend=backend
    )
    if out_dir is not None:
        write_outputs(Path(out_dir), *result)
    return result


def prove_wasm_files(
    zkey_path: str | Path,
    wasm_path: str | Path,
    input_path: str | Path,
    out_dir: str | Path | None = None,
    *,
    workers: int | None = None,
    backend: Backend = "auto",
) -> tuple[ProofJson, list[str]]:
    """As ``prove_files``, computing the witness from the circuit's .wasm and an input JSON first."""
    # Imported here: the verifier pulls in the pairing (~0.13 s) and the witness wasmtime, which a proof from
    # a .wtns, the common case and a whole process of its own in the CLI, does not need.
    from runtimes.zk.verifier import load_json
    from runtimes.zk.witness import calculate_witness

    inputs = load_json(Path(input_path), label=str(input_path))
    witness = calculate_witness(read_input(Path(wasm_path), what="witness generator"), inputs)
    result = prove_witness(
        read_input(Path(zkey_path), what="proving key"), witness, zkey_label=str(zkey_path), workers=workers,
        backend=backend,
    )
    if out_dir is not None:
        write_outputs(Path(out_dir), *result)
    return result


def write_outputs(out_dir: Path, proof: ProofJson, public: list[str]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "proof.json").write_text(snarkjs_dumps(proof))
    (out_dir / "public.json").write_text(snarkjs_dumps(public))
