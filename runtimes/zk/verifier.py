"""Groth16 verification against snarkjs's ``verification_key.json``, ``proof.json`` and ``public.json``.

The check is snarkjs's (``groth16_verify.js``): with vk_x = IC[0] + sum(public_i * IC[i]),

    e(-pi_a, pi_b) * e(vk_x, gamma2) * e(pi_c, delta2) * e(alpha1, beta2) == 1

Public signals must be integers below r, proof points on their curves and pi_b in the order-r subgroup of
the twist (the twist's group has a cofactor). Malformed input raises ``MalformedInput`` saying what and
where; a well-formed proof that fails the equation returns False.

``engine="fast"`` uses ``runtimes.zk.pairing`` (about 0.05 s for the whole check); ``engine="py_ecc"``
uses py-ecc's own pairing (about 1.3 s) and exists so that tests can hold the two against each other.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from runtimes.zk import pairing
from runtimes.zk.curve import (
    fq2_ops,
    fq_ops,
    is_in_g2_subgroup,
    is_on_curve_g1,
    is_on_curve_g2,
    to_affine,
)
from runtimes.zk.exceptions import MalformedInput, UnsupportedCurve
from runtimes.zk.field import Arithmetic, Q, R
from runtimes.zk.msm import choose_window, msm_g1, window_count
from runtimes.zk.prover import Proof
from runtimes.zk.zkey import Point1, Point2, ZKey

Engine = Literal["fast", "py_ecc"]
CURVE_NAMES = ("bn128", "bn254", "alt_bn128")


@dataclass(frozen=True)
class VerifyingKey:
    n_public: int
    alpha1: Point1
    beta2: Point2
    gamma2: Point2
    delta2: Point2
    ic: tuple[Point1, ...]


def verifying_key_from_zkey(zkey: ZKey) -> VerifyingKey:
    return VerifyingKey(zkey.n_public, zkey.alpha1, zkey.beta2, zkey.gamma2, zkey.delta2, zkey.ic)


def load_json(source: str | bytes | Path, *, label: str) -> Any:
    """JSON from a file path or raw bytes/text; ``MalformedInput`` with the position if it is not JSON."""
    try:
        text = source.read_bytes() if isinstance(source, Path) else source
        return json.loads(text)
    except OSError as exc:
        raise MalformedInput(f"{label}: cannot read: {exc.strerror or exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MalformedInput(f"{label}: not valid JSON: {exc}") from exc


def parse_verifying_key(obj: Any, *, label: str = "verification key") -> VerifyingKey:
    if not isinstance(obj, Mapping):
        raise MalformedInput(f"{label}: expected a JSON object, got {type(obj).__name__}")
    if obj.get("protocol") != "groth16":
        raise UnsupportedCurve(f"{label}: protocol {obj.get('protocol')!r} is not groth16")
    if obj.get("curve") not in CURVE_NAMES:
        raise UnsupportedCurve(f"{label}: curve {obj.get('curve')!r} is not BN254 (bn128)")
    ic_raw = _field(obj, "IC", label)
    if not isinstance(ic_raw, list) or not ic_raw:
        raise MalformedInput(f"{label}: IC must be a non-empty list of G1 points")
    ic = tuple(parse_g1(p, label=f"{label}: IC[{i}]") for i, p in enumerate(ic_raw))
    n_public = _field(obj, "nPublic", label)
    if n_public != len(ic) - 1:
        raise MalformedInput(f"{label}: nPublic is {n_public!r} but IC has {len(ic)} points (expected nPublic + 1)")
    return VerifyingKey(
        n_public=n_public,
        alpha1=parse_g1(_field(obj, "vk_alpha_1", label), label=f"{label}: vk_alpha_1"),
        beta2=parse_g2(_field(obj, "vk_beta_2", label), label=f"{label}: vk_beta_2"),
        gamma2=parse_g2(_field(obj, "vk_gamma_2", label), label=f"{label}: vk_gamma_2"),
        delta2=parse_g2(_field(obj, "vk_delta_2", label), label=f"{label}: vk_delta_2"),
        ic=ic,
    )


def parse_proof(obj: Any, *, label: str = "proof") -> Proof:
    if not isinstance(obj, Mapping):
        raise MalformedInput(f"{label}: expected a JSON object, got {type(obj).__name__}")
    if obj.get("protocol", "groth16") != "groth16":
        raise UnsupportedCurve(f"{label}: protocol {obj.get('protocol')!r} is not groth16")
    if obj.get("curve", "bn128") not in CURVE_NAMES:
        raise UnsupportedCurve(f"{label}: curve {obj.get('curve')!r} is not BN254 (bn128)")
    pi_b = parse_g2(_field(obj, "pi_b", label), label=f"{label}: pi_b")
    if not is_in_g2_subgroup(pi_b, fq2_ops(Arithmetic.select("python"))):
        raise MalformedInput(f"{label}: pi_b is on the twist but not in the order-r subgroup G2")
    return Proof(
        pi_a=parse_g1(_field(obj, "pi_a", label), label=f"{label}: pi_a"),
        pi_b=pi_b,
        pi_c=parse_g1(_field(obj, "pi_c", label), label=f"{label}: pi_c"),
        public=(),
    )


def parse_public(obj: Any, *, label: str = "public signals") -> tuple[int, ...]:
    if not isinstance(obj, list):
        raise MalformedInput(f"{label}: expected a JSON list of decimal strings, got {type(obj).__name__}")
    return tuple(_integer(v, R, label=f"{label}[{i}]") for i, v in enumerate(obj))


def verify(vk: VerifyingKey, proof: Proof, public: Sequence[int], *, engine: Engine = "fast") -> bool:
    """True if the proof verifies for these public signals under this key."""
    if len(public) != vk.n_public:
        raise MalformedInput(f"{len(public)} public signals given; the verification key expects {vk.n_public}")
    for i, value in enumerate(public):
        if not 0 <= value < R:
            raise MalformedInput(f"public signal {i} is not below the field order r")
    vk_x = _linear_combination(vk.ic, public)
    neg_a = None if proof.pi_a is None else (proof.pi_a[0], -proof.pi_a[1] % Q)
    pairs = [(neg_a, proof.pi_b), (vk_x, vk.gamma2), (proof.pi_c, vk.delta2), (vk.alpha1, vk.beta2)]
    live = [(p, q) for p, q in pairs if p is not None and q is not None]
    if engine == "py_ecc":
        return _check_py_ecc(live)
    return pairing.is_one(pairing.final_exponentiation(pairing.miller_loop(live)))


def verify_json(vk: Any, proof: Any, public: Any, *, engine: Engine = "fast") -> bool:
    """``verify`` on decoded JSON values (as ``json.load`` returns them)."""
    return verify(parse_verifying_key(vk), parse_proof(proof), parse_public(public), engine=engine)


def verify_files(vk_path: Path, proof_path: Path, public_path: Path) -> bool:
    """The equivalent of ``snarkjs groth16 verify verification_key.json public.json proof.json``."""
    return verify(
        parse_verifying_key(load_json(vk_path, label=str(vk_path)), label=str(vk_path)),
        parse_proof(load_json(proof_path, label=str(proof_path)), label=str(proof_path)),
        parse_public(load_json(public_path, label=str(public_path)), label=str(public_path)),
    )


def _linear_combination(ic: Sequence[Point1], public: Sequence[int]) -> Point1:
    ar = Arithmetic.select("python")
    xs = [None if p is None else p[0] for p in ic]
    ys = [None if p is None else p[1] for p in ic]
    scalars = [1, *public]
    c = choose_window(len(scalars), 254)
    result = msm_g1(xs, ys, scalars, ar, c, (0, window_count(254, c)))
    affine = to_affine(fq_ops(ar), result)
    return None if affine is None else (int(affine[0]), int(affine[1]))


def _check_py_ecc(pairs: Sequence[tuple[Any, Any]]) -> bool:
    from py_ecc.fields import optimized_bn128_FQ as FQ
    from py_ecc.fields import optimized_bn128_FQ2 as FQ2
    from py_ecc.fields import optimized_bn128_FQ12 as FQ12
    from py_ecc.optimized_bn128.optimized_pairing import final_exponentiate, pairing

    f = FQ12.one()
    for p, q in pairs:
        p3 = (FQ(p[0]), FQ(p[1]), FQ.one())
        q3 = (FQ2(list(q[0])), FQ2(list(q[1])), FQ2.one())
        f = f * pairing(q3, p3, final_exponentiate=False)
    return bool(final_exponentiate(f) == FQ12.one())


# --- JSON points -----------------------------------------------------------------------------------------


def _field(obj: Mapping[str, Any], key: str, label: str) -> Any:
    if key not in obj:
        raise MalformedInput(f"{label}: field {key!r} is missing")
    return obj[key]


def _integer(value: Any, bound: int, *, label: str) -> int:
    """A decimal string (or JSON integer) below bound; snarkjs writes big numbers as strings."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise MalformedInput(f"{label}: expected a decimal string, got {type(value).__name__}")
    text = str(value)
    if not text.isascii() or not text.isdigit() or len(text) > 80:
        raise MalformedInput(f"{label}: {text[:40]!r} is not a non-negative decimal integer")
    number = int(text)
    if number >= bound:
        raise MalformedInput(f"{label}: {number} is not below the field modulus")
    return number


def parse_g1(value: Any, *, label: str) -> Point1:
    """[x, y, z] (affine when z = 1, the point at infinity when z = 0; any other z is Jacobian)."""
    if not isinstance(value, list) or len(value) != 3:
        raise MalformedInput(f"{label}: a G1 point is a list of 3 decimal strings")
    x, y, z = (_integer(v, Q, label=label) for v in value)
    if z == 0:
        return None
    if z != 1:
        zi = pow(z, -1, Q)
        x, y = x * zi * zi % Q, y * zi * zi * zi % Q
    if not is_on_curve_g1((x, y)):
        raise MalformedInput(f"{label}: the point is not on the BN254 curve")
    return x, y


def parse_g2(value: Any, *, label: str) -> Point2:
    """[[x0, x1], [y0, y1], [z0, z1]] with the same conventions as ``parse_g1``."""
    if not isinstance(value, list) or len(value) != 3 or not all(isinstance(c, list) and len(c) == 2 for c in value):
        raise MalformedInput(f"{label}: a G2 point is a list of 3 pairs of decimal strings")
    (x0, x1), (y0, y1), (z0, z1) = ((_integer(a, Q, label=label), _integer(b, Q, label=label)) for a, b in value)
    F = fq2_ops(Arithmetic.select("python"))
    if (z0, z1) == (0, 0):
        return None
    x: tuple[int, int] = (x0, x1)
    y: tuple[int, int] = (y0, y1)
    if (z0, z1) != (1, 0):
        affine = to_affine(F, (x, y, (z0, z1)))
        assert affine is not None
        x, y = affine
    if not is_on_curve_g2((x, y), F):
        raise MalformedInput(f"{label}: the point is not on the BN254 twist")
    return x, y
