#!/usr/bin/env python3
"""Groth16 prove and verify times against snarkjs, on the same circuits, side by side in one run.

    .venv/bin/python scripts/bench_zk.py            # 2^10 and 2^12 constraints (~5 min the first time)
    .venv/bin/python scripts/bench_zk.py --big      # and 2^14 (the powers of tau alone take a while)

Circuits: tests/zk/circuits/chain_template.circom, Chain(2^k - 4), whose witness values are full-size field
elements (the worst case for the MSMs). Keys come from snarkjs (powers of tau with one contribution, phase 2,
groth16 setup, a zkey contribution); they are cached under build/zk-bench/ (git-ignored), keyed by size.

Rows, per circuit: snarkjs proving in-process (warm: node has built its curve; median of rounds), the
`snarkjs groth16 prove` command as a whole process, and this runtime in-process (workers started) with
Python ints and with gmpy2, in 1 process and in a pool of one process per core, and as a whole process
(`prove_files` from a fresh interpreter). Ratios are against snarkjs in-process, and for the whole-process
row against the snarkjs command. Needs node_modules (scripts/setup.sh installs it).
"""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtimes.zk.field import Arithmetic, Backend  # noqa: E402
from runtimes.zk.pool import ProcessPool, default_workers  # noqa: E402
from runtimes.zk.prover import ProofPlan, run_inline  # noqa: E402
from runtimes.zk.verifier import load_json, parse_proof, parse_public, parse_verifying_key, verify  # noqa: E402
from runtimes.zk.wtns import parse_wtns  # noqa: E402
from runtimes.zk.zkey import ZKey, parse_zkey  # noqa: E402

BIN = ROOT / "node_modules" / ".bin"
CACHE = ROOT / "build" / "zk-bench"
CIRCUITS = ROOT / "tests" / "zk" / "circuits"
SNARKJS_INPROC = """
import * as snarkjs from %s;
const [zkey, wtns, rounds] = process.argv.slice(2);
const times = [];
for (let i = 0; i <= Number(rounds); i++) {
  const t0 = performance.now();
  await snarkjs.groth16.prove(zkey, wtns);
  times.push((performance.now() - t0) / 1000);
}
console.log(JSON.stringify(times.slice(1)));  // the first call builds the curve: excluded (warm figures)
process.exit(0);
"""


def sh(*cmd: str | Path, cwd: Path = CACHE) -> str:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def timed(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def ptau(power: int) -> Path:
    out = CACHE / f"pot{power}.ptau"
    if not out.exists():
        print(f"# making powers of tau 2^{power} (cached in {out}; phase 2 takes minutes at 2^12 and up)", flush=True)
        snarkjs = BIN / "snarkjs"
        sh(snarkjs, "powersoftau", "new", "bn128", str(power), f"pot{power}_0.ptau")
        sh(snarkjs, "powersoftau", "contribute", f"pot{power}_0.ptau", f"pot{power}_1.ptau", "--name=bench", "-e=bench")
        sh(snarkjs, "powersoftau", "prepare", "phase2", f"pot{power}_1.ptau", out.name)
    return out


def circuit(power: int, tau: Path) -> tuple[Path, Path, Path]:
    """(zkey, wtns, verification key) for Chain(2^power - 4), built once."""
    name = f"chain{power}"
    work = CACHE / name
    zkey, wtns, vk = work / f"{name}.zkey", work / f"{name}.wtns", work / "vk.json"
    if vk.exists():
        return zkey, wtns, vk
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy(CIRCUITS / "chain_template.circom", work)
    n = (1 << power) - 4  # n + 1 constraints, 2 public signals and the constant: 2^power rows
    (work / f"{name}.circom").write_text(
        f'pragma circom 2.0.0;\ninclude "chain_template.circom";\ncomponent main {{public [x]}} = Chain({n});\n'
    )
    sh(BIN / "circom2", f"{name}.circom", "--r1cs", "--wasm", "-o", ".", cwd=work)
    snarkjs = BIN / "snarkjs"
    sh(snarkjs, "groth16", "setup", f"{name}.r1cs", tau, f"{name}_0.zkey", cwd=work)
    sh(snarkjs, "zkey", "contribute", f"{name}_0.zkey", zkey.name, "--name=bench", "-e=bench", cwd=work)
    (work / "input.json").write_text(json.dumps({"x": "3", "secret": "11"}))
    sh(snarkjs, "wtns", "calculate", f"{name}_js/{name}.wasm", "input.json", wtns.name, cwd=work)
    sh(snarkjs, "zkey", "export", "verificationkey", zkey.name, vk.name, cwd=work)
    return zkey, wtns, vk


def _prove(pool: ProcessPool | None, zkey: ZKey, witness: list[int], backend: Backend, workers: int) -> object:
    plan = ProofPlan(zkey, witness, backend=backend, parallelism=workers)
    return run_inline(plan) if pool is None else pool.prove(plan)


def bench(power: int, tau: Path, rounds: int, workers: int) -> list[tuple[str, float, str, str]]:
    zkey_path, wtns_path, vk_path = circuit(power, tau)
    zkey = parse_zkey(zkey_path.read_bytes(), label=str(zkey_path))
    witness = parse_wtns(wtns_path.read_bytes(), label=str(wtns_path))
    rows: list[tuple[str, float, str, str]] = []
    label = f"2^{power} ({zkey.constraints} constraints)"
    script = CACHE / "snarkjs_inproc.mjs"
    script.write_text(SNARKJS_INPROC % json.dumps(str(ROOT / "node_modules" / "snarkjs" / "main.js")))
    js = statistics.median(json.loads(sh("node", script, zkey_path, wtns_path, str(rounds))))
    rows.append((f"{label}: snarkjs in-process (warm)", js, "1.00x", "baseline"))
    out = CACHE / "out"
    out.mkdir(exist_ok=True)
    prove_cmd = (BIN / "snarkjs", "groth16", "prove", zkey_path, wtns_path, out / "p.json", out / "q.json")
    cli = timed(lambda: sh(*prove_cmd), rounds)
    rows.append((f"{label}: `snarkjs groth16 prove` whole process", cli, f"{cli / js:.2f}x", "baseline 2"))
    backends: tuple[Backend, ...] = ("python", "gmpy2") if "gmpy2" in Arithmetic.available() else ("python",)
    for backend in backends:
        target = "<= 5x" if backend == "python" else "<= 2.5x"
        t1 = timed(functools.partial(_prove, None, zkey, witness, backend, 1), rounds)
        rows.append((f"{label}: ours, {backend}, 1 process", t1, f"{t1 / js:.2f}x", target))
        with ProcessPool(workers) as pool:
            tp = timed(functools.partial(_prove, pool, zkey, witness, backend, workers), rounds)
        rows.append((f"{label}: ours, {backend}, pool of {workers}", tp, f"{tp / js:.2f}x", target))
    whole = timed(
        lambda: sh(
            sys.executable, "-c",
            f"from runtimes.zk import prove_files; prove_files({str(zkey_path)!r}, {str(wtns_path)!r}, {str(out)!r})",
            cwd=ROOT,
        ),
        rounds,
    )  # fmt: skip
    rows.append((f"{label}: ours, whole process (prove_files)", whole, f"{whole / cli:.2f}x of the command", "<= 1x"))
    vk = parse_verifying_key(load_json(vk_path, label="vk"))
    proof = parse_proof(load_json(out / "proof.json", label="proof"))
    public = parse_public(load_json(out / "public.json", label="public"))
    assert verify(vk, proof, public), "our proof did not verify"
    ver = timed(lambda: verify(vk, proof, public), rounds)
    rows.append((f"{label}: ours, verify (in-process)", ver, "", "<= 0.6 s"))
    sver = timed(lambda: sh(BIN / "snarkjs", "groth16", "verify", vk_path, out / "public.json", out / "proof.json"), 1)
    rows.append((f"{label}: `snarkjs groth16 verify` whole process", sver, "", "reference"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big", action="store_true", help="also 2^14 constraints (not in CI)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per figure (median)")
    parser.add_argument("--workers", type=int, default=default_workers(), help="pool size (default: cores)")
    args = parser.parse_args()
    if not (BIN / "snarkjs").exists():
        raise SystemExit("node_modules/.bin/snarkjs is missing: run scripts/setup.sh first")
    CACHE.mkdir(parents=True, exist_ok=True)
    powers = [10, 12] + ([14] if args.big else [])
    tau = ptau(max(powers))
    rows = [row for power in powers for row in bench(power, tau, args.rounds, args.workers)]
    command = " ".join(["python", "scripts/bench_zk.py", *map(shlex.quote, sys.argv[1:])])
    print(f"\n# {command}  (medians of {args.rounds}; {default_workers()} cores; backends {Arithmetic.available()})")
    print(f"| {'figure':<62} | {'seconds':>8} | {'ratio':>22} | {'target':>10} |")
    print(f"|{'-' * 64}|{'-' * 10}:|{'-' * 24}:|{'-' * 12}:|")
    for name, seconds, ratio, target in rows:
        print(f"| {name:<62} | {seconds:8.3f} | {ratio:>22} | {target:>10} |")


if __name__ == "__main__":
    main()
