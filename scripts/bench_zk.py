#!/usr/bin/env python3
"""Groth16 prove and verify times against snarkjs, on the same circuits, side by side in one run.

    .venv/bin/python scripts/bench_zk.py            # 2^10 and 2^12 constraints (~5 min the first time)
    .venv/bin/python scripts/bench_zk.py --big      # and 2^14 (the powers of tau alone take a while)

Circuits: tests/zk/circuits/chain_template.circom, Chain(2^k - 4), whose witness values are full-size field
elements (the worst case for the MSMs). Keys come from snarkjs (powers of tau with one contribution, phase 2,
groth16 setup, a zkey contribution); they are cached under build/zk-bench/ (git-ignored), keyed by size.

Rows, per circuit: snarkjs proving in-process (warm: node has built its curve; median of rounds), the
`snarkjs groth16 prove` command as a whole process, and this runtime in-process (workers started) with
Python ints, with gmpy2 and with the native MSM kernel (runtimes/zk/native; where it builds), in 1 process
and in a pool of one process per core, and as a whole process (`prove_files` from a fresh interpreter, with
the backend ``auto`` picks, and with gmpy2). Ratios are against snarkjs in-process, and for the whole-process
rows against the snarkjs command. Needs node_modules (scripts/setup.sh installs it).

On a shared machine the wall ratios follow the load more than the code: snarkjs in-process runs before and
after our rows (both medians are printed; the baseline is the median of all its rounds), the load average is
printed per circuit, and each row also gives CPU seconds (node's process.cpuUsage(), which counts its worker
threads; ours counts the pool's worker processes), which load moves far less.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
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

from runtimes.zk import native  # noqa: E402
from runtimes.zk.field import Arithmetic, Backend, backend_name  # noqa: E402
from runtimes.zk.pool import ProcessPool, default_workers  # noqa: E402
from runtimes.zk.prover import ProofPlan, run_inline  # noqa: E402
from runtimes.zk.verifier import load_json, parse_proof, parse_public, parse_verifying_key, verify  # noqa: E402
from runtimes.zk.wtns import parse_wtns  # noqa: E402
from runtimes.zk.zkey import ZKey, parse_zkey  # noqa: E402

BIN = ROOT / "node_modules" / ".bin"
CACHE = ROOT / "build" / "zk-bench"
CIRCUITS = ROOT / "tests" / "zk" / "circuits"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SNARKJS_INPROC = """
import * as snarkjs from %s;
const [zkey, wtns, rounds] = process.argv.slice(2);
const wall = [], cpu = [];
for (let i = 0; i <= Number(rounds); i++) {
  const t0 = performance.now(), c0 = process.cpuUsage();  // cpuUsage: the whole process, its threads too
  await snarkjs.groth16.prove(zkey, wtns);
  const c = process.cpuUsage(c0);
  wall.push((performance.now() - t0) / 1000);
  cpu.push((c.user + c.system) / 1e6);
}
// the first call builds the curve: excluded (warm figures)
console.log(JSON.stringify({wall: wall.slice(1), cpu: cpu.slice(1)}));
process.exit(0);
"""


def sh(*cmd: str | Path, cwd: Path = CACHE) -> str:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


Row = tuple[str, float, float | None, str, str]  # figure, wall s, CPU s, ratio, target


def timed(fn: Callable[[], object], rounds: int, cpu: Callable[[], float] = time.process_time) -> tuple[float, float]:
    """Medians of wall and CPU seconds; ``cpu`` is a clock of CPU seconds of everything that does the work."""
    walls, cpus = [], []
    for _ in range(rounds):
        started, cpu_started = time.perf_counter(), cpu()
        fn()
        walls.append(time.perf_counter() - started)
        cpus.append(cpu() - cpu_started)
    return statistics.median(walls), statistics.median(cpus)


def children_cpu() -> float:
    """CPU seconds of the finished child processes (and their own finished children)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pids: tuple[int, ...]) -> float:
    """CPU seconds of this process and of running processes pids (/proc/PID/stat: utime, stime)."""
    total = time.process_time()
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.1f} {five:.1f} {fifteen:.1f}"


def snarkjs_inproc(script: Path, zkey: Path, wtns: Path, rounds: int) -> tuple[list[float], list[float]]:
    result = json.loads(sh("node", script, zkey, wtns, str(rounds)))
    return result["wall"], result["cpu"]


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


def available_backends() -> list[Backend]:
    """The backends that can prove here: ints always, gmpy2 when installed, native where the kernel builds."""
    names: list[Backend] = ["python", *(["gmpy2"] if "gmpy2" in Arithmetic.available() else [])]
    return [*names, "native"] if native.available() else names


def bench(power: int, tau: Path, rounds: int, workers: int) -> list[Row]:
    """Rows for one circuit. snarkjs in-process runs before and after ours; the baseline is the median of both
    (the machine's load drifts during a run: the two medians are printed so the drift shows)."""
    zkey_path, wtns_path, vk_path = circuit(power, tau)
    zkey = parse_zkey(zkey_path.read_bytes(), label=str(zkey_path))
    witness = parse_wtns(wtns_path.read_bytes(), label=str(wtns_path))
    label = f"2^{power} ({zkey.constraints} constraints)"
    print(f"# {label}: {load()}", flush=True)
    script = CACHE / "snarkjs_inproc.mjs"
    script.write_text(SNARKJS_INPROC % json.dumps(str(ROOT / "node_modules" / "snarkjs" / "main.js")))
    js_wall, js_cpu = snarkjs_inproc(script, zkey_path, wtns_path, rounds)
    out = CACHE / "out"
    out.mkdir(exist_ok=True)
    prove_cmd = (BIN / "snarkjs", "groth16", "prove", zkey_path, wtns_path, out / "p.json", out / "q.json")
    cli, cli_cpu = timed(lambda: sh(*prove_cmd), rounds, children_cpu)
    ours: list[tuple[str, float, float, str, str]] = []  # figure, wall, CPU, what it is compared with, target
    for backend in available_backends():
        target = {"python": "<= 5x", "gmpy2": "<= 2.5x"}.get(backend, "-")
        t1, c1 = timed(functools.partial(_prove, None, zkey, witness, backend, 1), rounds)
        ours.append((f"{label}: ours, {backend}, 1 process", t1, c1, "js", target))
        with ProcessPool(workers) as pool:
            pids = pool.worker_pids()
            tp, cp = timed(
                functools.partial(_prove, pool, zkey, witness, backend, workers),
                rounds,
                functools.partial(process_cpu, pids),
            )
        ours.append((f"{label}: ours, {backend}, pool of {workers}", tp, cp, "js", target))
    for backend in ("auto", *(["gmpy2"] if "gmpy2" in Arithmetic.available() else [])):
        code = (f"from runtimes.zk import prove_files; "
                f"prove_files({str(zkey_path)!r}, {str(wtns_path)!r}, {str(out)!r}, backend={backend!r})")
        whole, whole_cpu = timed(lambda code=code: sh(sys.executable, "-c", code, cwd=ROOT), rounds, children_cpu)
        what = f"auto: {backend_name('auto')}" if backend == "auto" else backend
        ours.append((f"{label}: ours, whole process (prove_files, {what})", whole, whole_cpu, "cli",
                     "<= 1x" if backend == "auto" else "-"))
    after_wall, after_cpu = snarkjs_inproc(script, zkey_path, wtns_path, rounds)
    js, jc = statistics.median(js_wall + after_wall), statistics.median(js_cpu + after_cpu)
    rows: list[Row] = [
        (f"{label}: snarkjs in-process (warm)", js, jc, "1.00x / 1.00x", "baseline"),
        (f"{label}:   snarkjs in-process before our rows", statistics.median(js_wall), statistics.median(js_cpu),
         "", "drift"),
        (f"{label}:   snarkjs in-process after our rows", statistics.median(after_wall), statistics.median(after_cpu),
         f"{statistics.median(after_wall) / statistics.median(js_wall):.2f}x / "
         f"{statistics.median(after_cpu) / statistics.median(js_cpu):.2f}x of before", "drift"),
        (f"{label}: `snarkjs groth16 prove` whole process", cli, cli_cpu, f"{cli / js:.2f}x / {cli_cpu / jc:.2f}x",
         "baseline 2"),
    ]  # fmt: skip
    for name, wall, cpu, versus, target in ours:
        if versus == "js":
            rows.append((name, wall, cpu, f"{wall / js:.2f}x / {cpu / jc:.2f}x", target))
        else:
            rows.append((name, wall, cpu, f"{wall / cli:.2f}x / {cpu / cli_cpu:.2f}x of the command", target))
    print(f"# {label}: done, {load()}", flush=True)
    vk = parse_verifying_key(load_json(vk_path, label="vk"))
    proof = parse_proof(load_json(out / "proof.json", label="proof"))
    public = parse_public(load_json(out / "public.json", label="public"))
    assert verify(vk, proof, public), "our proof did not verify"
    ver, ver_cpu = timed(lambda: verify(vk, proof, public), rounds)
    rows.append((f"{label}: ours, verify (in-process)", ver, ver_cpu, "", "<= 0.6 s"))
    sver, sver_cpu = timed(
        lambda: sh(BIN / "snarkjs", "groth16", "verify", vk_path, out / "public.json", out / "proof.json"),
        1,
        children_cpu,
    )
    rows.append((f"{label}: `snarkjs groth16 verify` whole process", sver, sver_cpu, "", "reference"))
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
    backends = tuple(available_backends())
    print(f"\n# {command}  (medians of {args.rounds}; {default_workers()} cores; backends {backends})")
    print("# ratio: wall / CPU seconds against snarkjs in-process (CPU: node's threads, our pool's workers)")
    print(f"| {'figure':<64} | {'wall s':>8} | {'CPU s':>8} | {'ratio wall / CPU':>30} | {'target':>10} |")
    print(f"|{'-' * 66}|{'-' * 9}:|{'-' * 9}:|{'-' * 31}:|{'-' * 11}:|")
    for name, wall, cpu, ratio, target in rows:
        cpu_text = "" if cpu is None else f"{cpu:8.3f}"
        print(f"| {name:<64} | {wall:8.3f} | {cpu_text:>8} | {ratio:>30} | {target:>10} |")


if __name__ == "__main__":
    main()
