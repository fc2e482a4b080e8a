"""Interoperability with snarkjs and circom on a real compiled circuit: proofs verify both ways."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from runtimes.zk import prove_files, prove_wasm_files, verify_files
from runtimes.zk.exceptions import MalformedInput
from runtimes.zk.files import snarkjs_dumps
from runtimes.zk.verifier import load_json, parse_proof, parse_public, parse_verifying_key, verify
from runtimes.zk.witness import calculate_witness
from runtimes.zk.wtns import parse_wtns
from tests.zk.conftest import Circuit, snarkjs_verify


@pytest.fixture(scope="module")
def our_proof(chain: Circuit, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ours")
    prove_files(chain.zkey, chain.wtns, out, workers=2)
    return out


def tamper(public: Path, out: Path) -> Path:
    """public.json with its first signal changed by one."""
    values = json.loads(public.read_text())
    values[0] = str(int(values[0]) + 1)
    out.write_text(json.dumps(values))
    return out


def test_snarkjs_accepts_our_proof(chain: Circuit, our_proof: Path) -> None:
    assert snarkjs_verify(chain.vk, our_proof / "public.json", our_proof / "proof.json")


def test_our_verifier_accepts_snarkjs_proof(chain: Circuit) -> None:
    assert verify_files(chain.vk, chain.snarkjs_proof, chain.snarkjs_public)


def test_changed_public_signal_is_rejected_by_both(chain: Circuit, our_proof: Path, tmp_path: Path) -> None:
    bad_public = tamper(our_proof / "public.json", tmp_path / "public.json")
    assert not snarkjs_verify(chain.vk, bad_public, our_proof / "proof.json")
    assert not verify_files(chain.vk, our_proof / "proof.json", bad_public)
    bad_snarkjs = tamper(chain.snarkjs_public, tmp_path / "public2.json")
    assert not verify_files(chain.vk, chain.snarkjs_proof, bad_snarkjs)


def test_fast_and_py_ecc_engines_agree(chain: Circuit, our_proof: Path, tmp_path: Path) -> None:
    vk = parse_verifying_key(load_json(chain.vk, label="vk"))
    proof = parse_proof(load_json(our_proof / "proof.json", label="proof"))
    good = parse_public(load_json(our_proof / "public.json", label="public"))
    bad = (good[0] + 1, *good[1:])
    assert [verify(vk, proof, p, engine="py_ecc") for p in (good, bad)] == [True, False]
    assert [verify(vk, proof, p, engine="fast") for p in (good, bad)] == [True, False]


def test_outputs_have_snarkjs_layout_and_public_signals(chain: Circuit, our_proof: Path) -> None:
    ours, theirs = (our_proof / "proof.json").read_text(), chain.snarkjs_proof.read_text()
    # Same keys, nesting, indentation and quoting; only the numbers differ (r and s are random).
    assert re.sub(r'"\d+"', '"N"', ours) == re.sub(r'"\d+"', '"N"', theirs)
    assert (our_proof / "public.json").read_text() == chain.snarkjs_public.read_text()
    assert ours == snarkjs_dumps(json.loads(ours))


def test_two_proofs_of_one_witness_differ_and_both_verify(chain: Circuit, tmp_path: Path) -> None:
    first, _ = prove_files(chain.zkey, chain.wtns, tmp_path / "a", workers=1, backend="python")
    second, _ = prove_files(chain.zkey, chain.wtns, tmp_path / "b", workers=2)
    assert first["pi_a"] != second["pi_a"]  # fresh r and s each time: zero knowledge
    for out in ("a", "b"):
        assert verify_files(chain.vk, tmp_path / out / "proof.json", tmp_path / out / "public.json")


def test_gmpy2_backend_proof_verifies(chain: Circuit, tmp_path: Path) -> None:
    pytest.importorskip("gmpy2", reason="gmpy2 is optional; the python backend is tested above")
    prove_files(chain.zkey, chain.wtns, tmp_path, workers=1, backend="gmpy2")
    assert snarkjs_verify(chain.vk, tmp_path / "public.json", tmp_path / "proof.json")


def test_witness_from_wasm_matches_snarkjs(chain: Circuit, tmp_path: Path) -> None:
    pytest.importorskip("wasmtime", reason="wasmtime is optional")
    inputs = json.loads(chain.input.read_text())
    assert calculate_witness(chain.wasm.read_bytes(), inputs) == parse_wtns(chain.wtns.read_bytes())
    proof, public = prove_wasm_files(chain.zkey, chain.wasm, chain.input, tmp_path, workers=1)
    assert public == json.loads(chain.snarkjs_public.read_text())
    assert snarkjs_verify(chain.vk, tmp_path / "public.json", tmp_path / "proof.json")
    assert proof["protocol"] == "groth16"


def test_garbage_json_is_named(chain: Circuit, tmp_path: Path) -> None:
    garbage = tmp_path / "proof.json"
    garbage.write_text('{"pi_a": [1, 2')
    with pytest.raises(MalformedInput, match=r"proof\.json: not valid JSON"):
        verify_files(chain.vk, garbage, chain.snarkjs_public)
    garbage.write_text('{"pi_a": ["1", "2", "1"]}')
    with pytest.raises(MalformedInput, match="pi_b"):
        verify_files(chain.vk, garbage, chain.snarkjs_public)
    garbage.write_text(json.dumps({**json.loads(chain.snarkjs_proof.read_text()), "pi_a": ["1", "3", "1"]}))
    with pytest.raises(MalformedInput, match="pi_a: the point is not on the BN254 curve"):
        verify_files(chain.vk, garbage, chain.snarkjs_public)
