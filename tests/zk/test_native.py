"""The native kernel (runtimes/zk/native/msm.c) against py-ecc, the Python MSM and NTT, and its fallback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from py_ecc.optimized_bn128.optimized_pairing import field_modulus

from runtimes.zk import native, prove_files
from runtimes.zk.curve import add, fq2_ops, fq_ops, shift_left, to_affine
from runtimes.zk.exceptions import MalformedInput
from runtimes.zk.fft import ntt
from runtimes.zk.field import Arithmetic, Q, R, backend_name, fr_root_of_unity
from runtimes.zk.msm import msm_g1, msm_g2, window_count
from runtimes.zk.zkey import decode_g1, decode_g2
from tests.zk.conftest import Circuit, snarkjs_verify
from tests.zk.test_arithmetic import g1_points, g2_points, naive_g1, naive_g2, rng

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def kernel() -> None:
    if native.load() is None:
        if not native.buildable():
            pytest.skip(f"no native kernel here: {native.unavailable_reason}")
        pytest.fail(f"a C compiler is here but the kernel did not build: {native.unavailable_reason}")


def affine(group: int, jacobian: Any) -> Any:
    return to_affine(fq_ops(Arithmetic.select("python")) if group == 1 else fq2_ops(Arithmetic.select("python")),
                     jacobian)


def zkey_section(points: list[Any]) -> bytes:
    """Points as a .zkey section writes them: Montgomery form (x 2^256 mod q), little-endian, (0, 0) at infinity."""
    def mont(v: int) -> bytes:
        return (v * 2**256 % field_modulus).to_bytes(32, "little")

    out = b""
    for p in points:
        if p is None:
            out += bytes(64)  # a G1 point at infinity (the G2 sections here have none)
        elif isinstance(p[0], int):
            out += mont(p[0]) + mont(p[1])
        else:
            out += b"".join(mont(v) for v in (*p[0], *p[1]))
    return out


def packed(scalars: list[int]) -> bytes:
    return b"".join(k.to_bytes(32, "little") for k in scalars)


def msm(group: int, points: list[Any], scalars: list[int], c: int, windows: tuple[int, int]) -> Any:
    """The kernel's MSM of these points, written as a .zkey section."""
    return native.msm_section(group, zkey_section(points), packed(scalars), c, windows)


@pytest.mark.parametrize("c", [2, 5, 8, 11])
def test_g1_matches_naive_sum_including_edge_cases(c: int) -> None:
    base = g1_points(12)
    points: list[tuple[int, int] | None] = [*base, base[0], base[1], (base[2][0], -base[2][1] % field_modulus), None]
    scalars = [rng.randrange(R) for _ in points]
    scalars[3] = 0
    scalars[13] = scalars[1]  # the same point twice with the same digits: a bucket doubles
    scalars[14] = scalars[2]  # P and -P with the same digits: buckets that cancel to infinity
    scalars[4] = 5
    count = window_count(254, c)
    mid = count // 2
    top = (1 << (c - 1)) * ((1 << (c * mid)) - 1) // ((1 << c) - 1)  # the low windows' largest sum; +1 carries
    scalars[5], scalars[6] = top, (rng.randrange(R) >> (c * mid) << (c * mid)) + top + 1
    whole = affine(1, msm(1, points, scalars, c, (0, count)))
    F = fq_ops(Arithmetic.select("python"))
    low, high = msm(1, points, scalars, c, (0, mid)), msm(1, points, scalars, c, (mid, count))
    assert whole == naive_g1(points, scalars)
    assert affine(1, add(F, low, shift_left(F, high, c * mid))) == whole


def test_g1_with_most_points_in_one_bucket() -> None:
    base = g1_points(9)
    points: list[tuple[int, int] | None] = [*base, *base, *((x, -y % field_modulus) for x, y in base[:4]), *base[:3]]
    scalars = [1] * len(points)
    scalars[5], scalars[6], scalars[20] = rng.randrange(R), 2, (1 << 253) + 1
    assert affine(1, msm(1, points, scalars, 6, (0, window_count(254, 6)))) == naive_g1(points, scalars)


def test_a_sum_that_cancels_is_the_point_at_infinity() -> None:
    p = g1_points(1)[0]
    k = rng.randrange(1, R)
    result = msm(1, [p, (p[0], -p[1] % field_modulus)], [k, k], 8, (0, window_count(254, 8)))
    assert result[2] == 0
    assert msm(1, [p], [0], 8, (0, window_count(254, 8)))[2] == 0


@pytest.mark.parametrize("c", [4, 9])
def test_g2_matches_naive_sum_and_the_python_msm(c: int) -> None:
    g2 = g2_points(6)
    points = [*g2, *g2, g2[0], g2[0], g2[1]]
    scalars = [rng.randrange(R) for _ in points]
    scalars[6] = scalars[0]  # doublings in G2 buckets
    scalars[7] = 1
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    count = window_count(254, c)
    result = affine(2, msm(2, points, scalars, c, (0, count)))
    assert result is not None
    assert (tuple(result[0]), tuple(result[1])) == naive_g2(points, scalars)
    ar = Arithmetic.select("python")
    mid = count // 2
    assert msm(2, points, scalars, c, (mid, count)) is not None
    python_part = to_affine(fq2_ops(ar), msm_g2(xs, ys, scalars, ar, c, (mid, count)))
    assert affine(2, msm(2, points, scalars, c, (mid, count))) == python_part


def test_auto_picks_the_native_backend_when_a_compiler_is_here() -> None:
    assert backend_name("auto") == "native"
    assert backend_name("gmpy2" if "gmpy2" in Arithmetic.available() else "python") != "native"


def test_native_proof_verifies_with_snarkjs(chain: Circuit, tmp_path: Path) -> None:
    prove_files(chain.zkey, chain.wtns, tmp_path, workers=2, backend="native")
    assert snarkjs_verify(chain.vk, tmp_path / "public.json", tmp_path / "proof.json")


def test_without_a_working_compiler_the_proof_is_made_in_python(chain: Circuit, tmp_path: Path) -> None:
    # A real failed build (CC names a compiler that fails) in a fresh interpreter with an empty cache.
    script = (
        "import json, sys\n"
        "from runtimes.zk import native, prove_files\n"
        "prove_files(sys.argv[1], sys.argv[2], sys.argv[3], workers=1, backend='native')\n"
        "print(json.dumps({'loaded': native.load() is not None, 'why': native.unavailable_reason}))\n"
    )
    env = {**os.environ, "CC": "false", "HYPERION_NATIVE_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", script, str(chain.zkey), str(chain.wtns), str(tmp_path / "out")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=True)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["loaded"] is False
    assert "false failed" in report["why"]
    assert snarkjs_verify(chain.vk, tmp_path / "out" / "public.json", tmp_path / "out" / "proof.json")


@pytest.mark.parametrize("power", [0, 1, 4, 10])
def test_ntt_equals_the_python_transform(power: int) -> None:
    values = [rng.randrange(R) for _ in range(1 << power)]
    omega = fr_root_of_unity(power)
    assert native.ntt(values, omega) == ntt(values, omega)
    assert native.ntt(values, pow(omega, -1, R)) == ntt(values, pow(omega, -1, R))
    with pytest.raises(ValueError, match="not a power of two"):
        native.ntt(values * 3, omega)


def test_section_checks_and_messages_match_the_python_decoder() -> None:
    ar = Arithmetic.select("python")
    g1 = g1_points(5)
    good = zkey_section([*g1, None])
    assert native.check_section(1, good, label="k") is True
    decode_g1(good, ar, label="k")
    off_curve = zkey_section([*g1[:2], (g1[2][0], (g1[2][1] + 1) % field_modulus)])
    too_big = good[:64] + Q.to_bytes(32, "little") + good[96:]
    for bad in (off_curve, too_big):
        with pytest.raises(MalformedInput) as ours:
            native.check_section(1, bad, label="k")
        with pytest.raises(MalformedInput) as python:
            decode_g1(bad, ar, label="k")
        assert str(ours.value) == str(python.value)
    g2 = g2_points(3)
    assert native.check_section(2, zkey_section(g2), label="k") is True
    twisted = zkey_section([g2[0], (g2[1][0], (g2[1][1][0], (g2[1][1][1] + 1) % field_modulus))])
    with pytest.raises(MalformedInput) as ours:
        native.check_section(2, twisted, label="k")
    with pytest.raises(MalformedInput) as python:
        decode_g2(twisted, ar, label="k")
    assert str(ours.value) == str(python.value) == "k: point 1 is not on the BN254 G2 twist"


@pytest.mark.parametrize("group", [1, 2])
def test_msm_of_a_section_as_it_is_equals_the_python_msm_of_its_points(group: int) -> None:
    base: list[Any] = g1_points(10) if group == 1 else g2_points(6)
    points = [*base, base[0], None] if group == 1 else [*base, base[0]]
    scalars = [rng.randrange(R) for _ in points]
    scalars[len(base)] = scalars[0]  # a doubling
    section = zkey_section(points)
    xs = [None if p is None else p[0] for p in points]
    ys = [None if p is None else p[1] for p in points]
    count = window_count(254, 7)
    ar = Arithmetic.select("python")
    python = (msm_g1 if group == 1 else msm_g2)(xs, ys, scalars, ar, 7, (2, count))
    assert affine(group, native.msm_section(group, section, packed(scalars), 7, (2, count))) == affine(group, python)


def test_a_worker_without_the_kernel_computes_a_section_msm_in_python(tmp_path: Path) -> None:
    points: list[Any] = g1_points(8)
    scalars = [rng.randrange(R) for _ in points]
    section, numbers = zkey_section(points), packed(scalars)
    (tmp_path / "section").write_bytes(section)
    (tmp_path / "scalars").write_bytes(numbers)
    count = window_count(254, 5)
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from runtimes.zk import native\n"
        "from runtimes.zk.prover import job_msm_section\n"
        "d = Path(sys.argv[1])\n"
        f"r = job_msm_section(1, (d / 'section').read_bytes(), (d / 'scalars').read_bytes(), 5, (0, {count}), 'k')\n"
        "print(json.dumps({'loaded': native.load() is not None, 'result': [int(v) for v in r]}))\n"
    )
    env = {**os.environ, "CC": "false", "HYPERION_NATIVE_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["loaded"] is False
    assert affine(1, tuple(report["result"])) == affine(1, native.msm_section(1, section, numbers, 5, (0, count)))


def test_setup_builds_the_kernel_into_an_empty_cache(tmp_path: Path) -> None:
    # What scripts/setup.sh runs; a real build (~5 s at -O3).
    env = {**os.environ, "HYPERION_NATIVE_CACHE": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "runtimes.zk.native"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300, check=True)
    assert done.stderr == ""
    assert [p.suffix for p in tmp_path.glob("msm-*.so")] == [".so"]


def test_doctor_reports_the_built_kernel_and_a_missing_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    from hyperion_node.cli.doctor import _zk_kernel_check

    check = _zk_kernel_check()
    assert check["ok"] is True
    assert check["detail"] == str(native.built())
    monkeypatch.setenv("HYPERION_ZK_NATIVE", "0")
    check = _zk_kernel_check()
    assert check["ok"] is None
    assert "2-4x slower" in check["detail"]
    assert "build-essential" in check["fix"]
