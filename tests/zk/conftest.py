"""Fixtures for the ZK runtime's tests: real circom2 and snarkjs, from node_modules at the repository root.

The circuits and small powers-of-tau files are committed under tests/zk/circuits; everything compiled from
them (r1cs, wasm, keys, witnesses, snarkjs's own proofs) is made once per session in a temporary directory.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CIRCUITS = Path(__file__).resolve().parent / "circuits"
BIN = ROOT / "node_modules" / ".bin"
CHAIN_INPUT = {"x": "3", "secret": "11"}


def tool(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        pytest.fail(
            f"{path} is missing: the ZK tests need snarkjs and circom2 from npm -- run scripts/test "
            "(or scripts/setup.sh), which installs them with `npm ci` from package-lock.json",
            pytrace=False,
        )
    if shutil.which("node") is None:
        pytest.fail("node is not on PATH: the ZK tests run snarkjs and circom2 -- run scripts/test", pytrace=False)
    return path


def run(cmd: Sequence[str | Path], cwd: Path) -> str:
    """Run a node tool; fail the test with its output if it fails. Bounded: nothing here may hang."""
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def snarkjs_verify(vk: Path, public: Path, proof: Path) -> bool:
    """``snarkjs groth16 verify``: exit 0 and "OK!" when valid, non-zero when not."""
    done = subprocess.run(
        [str(tool("snarkjs")), "groth16", "verify", str(vk), str(public), str(proof)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return done.returncode == 0 and "OK!" in done.stdout


@dataclass(frozen=True)
class Circuit:
    dir: Path
    r1cs: Path
    wasm: Path
    zkey: Path
    vk: Path
    input: Path
    wtns: Path
    snarkjs_proof: Path
    snarkjs_public: Path


def compile_circuit(source: str, work: Path, *, prime: str = "bn128") -> tuple[Path, Path]:
    # circom2 runs under WASI and sees files relative to its working directory: compile a copy there.
    for circom in CIRCUITS.glob("*.circom"):
        shutil.copy(circom, work / circom.name)
    run([tool("circom2"), source, "--r1cs", "--wasm", "--prime", prime, "-o", "."], cwd=work)
    stem = Path(source).stem
    return work / f"{stem}.r1cs", work / f"{stem}_js" / f"{stem}.wasm"


@pytest.fixture(scope="session")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Circuit:
    """chain.circom compiled, set up (with a phase-2 contribution), and proved once by snarkjs."""
    work = tmp_path_factory.mktemp("chain")
    snarkjs = tool("snarkjs")
    r1cs, wasm = compile_circuit("chain.circom", work)
    run([snarkjs, "groth16", "setup", r1cs, CIRCUITS / "pot8_bn128.ptau", work / "chain_0.zkey"], cwd=work)
    run(
        [snarkjs, "zkey", "contribute", work / "chain_0.zkey", work / "chain.zkey", "--name=tests", "-e=test entropy"],
        cwd=work,
    )
    run([snarkjs, "zkey", "export", "verificationkey", work / "chain.zkey", work / "vk.json"], cwd=work)
    (work / "input.json").write_text(json.dumps(CHAIN_INPUT))
    run([snarkjs, "wtns", "calculate", wasm, work / "input.json", work / "chain.wtns"], cwd=work)
    proof, public = work / "proof.json", work / "public.json"
    run([snarkjs, "groth16", "prove", work / "chain.zkey", work / "chain.wtns", proof, public], cwd=work)
    return Circuit(
        dir=work,
        r1cs=r1cs,
        wasm=wasm,
        zkey=work / "chain.zkey",
        vk=work / "vk.json",
        input=work / "input.json",
        wtns=work / "chain.wtns",
        snarkjs_proof=work / "proof.json",
        snarkjs_public=work / "public.json",
    )


@pytest.fixture(scope="session")
def bls_zkey(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Groth16 key made by snarkjs for BLS12-381 (a key for another curve)."""
    work = tmp_path_factory.mktemp("bls")
    r1cs, _ = compile_circuit("tiny.circom", work, prime="bls12381")
    zkey = work / "tiny.zkey"
    run([tool("snarkjs"), "groth16", "setup", r1cs, CIRCUITS / "pot4_bls12381.ptau", zkey], cwd=work)
    return zkey
