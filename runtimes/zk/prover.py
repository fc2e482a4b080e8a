"""The Groth16 prover as a plan of independent jobs, the same steps as snarkjs's ``groth16_prove.js``.

    pi_a = alpha1 + sum(w_i * A_i) + r * delta1
    pi_b = beta2  + sum(w_i * B2_i) + s * delta2                   (in G2)
    B1   = beta1  + sum(w_i * B1_i) + s * delta1
    pi_c = sum(w_i * C_i, private i) + sum(h_j * H_j) + s * pi_a + r * B1 - r * s * delta1

with h the values of A*B - C on the odd coset (``runtimes.zk.fft``) and r, s fresh random scalars, so two
proofs of one witness differ (Groth16's zero knowledge) and both verify.

``ProofPlan`` is sans-IO: it hands out jobs (a function name from ``JOBS`` and picklable arguments), takes
their results, hands out the jobs those unlock, and builds the proof from the last one. Whoever runs it
decides where jobs run: ``run_inline`` here in this process, ``runtimes.zk.pool`` in worker processes.
Each MSM is split by windows into parts sized so that a pool of P workers gets about 4P jobs, enough to
even out the load (a G2 MSM costs about twice a G1 MSM of the same size).

Each point section is decoded and curve-checked once, by a ``decode`` job, and its MSM parts get the
points as plain ints. When every part decoded its whole section itself (it needs all the points: the
parts split windows, not points), a 2^14 proof in a pool of 2 decoded B2 3 times and each G1 section
twice: 4.5 s of the 20.6 CPU s (gmpy2, load ~3), against 1.2 s once.

With the native kernel (``runtimes.zk.native``, backend "native") the same plan runs other job bodies: the
decode job only checks the section in C, and the MSM parts (``msm_section``) read the section's bytes as
snarkjs wrote them, in Montgomery form, with the scalars packed once; the H job's NTTs run in C too. Where
the kernel cannot be had in a worker, each job falls back to the Python code with the same result.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from runtimes.zk.curve import (
    Affine,
    Jacobian,
    add,
    add_affine,
    fq2_ops,
    fq_ops,
    multiply,
    neg,
    shift_left,
    to_affine,
    to_jacobian,
)
from runtimes.zk.exceptions import WitnessMismatch
from runtimes.zk.fft import Transform, abc_on_domain, h_scalars, ntt
from runtimes.zk.field import Arithmetic, Backend, R, backend_name
from runtimes.zk.msm import choose_window, msm_g1, msm_g2, window_count
from runtimes.zk.zkey import G1_BYTES, ZKey, decode_coefs, decode_g1, decode_g2

G2_COST_FACTOR = 2.0  # measured: a G2 MSM takes 1.6x (ints) to 2.7x (gmpy2) a G1 MSM of the same size
H_JOB = "h"
DECODE_JOB = "decode"
FINISH_JOB = "finish"
# Decoding and checking a point, in G1 additions (the cost unit): measured 11 us a G1 point, ~2 G1 additions
# of an MSM job (gmpy2); a G2 point has twice the coordinates and a costlier check.
DECODE_COST = {1: 2.0, 2: 5.0}


@dataclass(frozen=True)
class Job:
    """One unit of work: ``JOBS[function](*args)``; ``key`` says what its result is for."""

    key: str
    function: str
    args: tuple[Any, ...]
    cost: float  # relative: for ordering (largest first) and progress
    part: tuple[str, int] = ("", 0)  # MSM jobs: which MSM, and the bit shift of its windows


def queue_order(job: Job) -> tuple[bool, float]:
    """Sort key for a queue of jobs: the jobs that unlock others (H scalars, decoding) first, then largest first.

    By cost alone the small decode jobs waited behind the MSM parts of the first section decoded, so the
    last section's parts started last and ran as the proof's tail.
    """
    return job.function not in (H_JOB, DECODE_JOB), -job.cost


@dataclass(frozen=True)
class Proof:
    pi_a: tuple[int, int] | None
    pi_b: tuple[tuple[int, int], tuple[int, int]] | None
    pi_c: tuple[int, int] | None
    public: tuple[int, ...]


# --- job functions (run in worker processes; arguments and results are picklable plain data) ----------


def _arithmetic(backend: str) -> Arithmetic:
    """The number type of a job: a plan's backend is already resolved ("python", "gmpy2" or "native")."""
    return Arithmetic.select("python" if backend == "python" else "auto")


def job_decode(group: int, points: bytes, label: str, backend: str) -> tuple[list[Any], list[Any]] | None:
    """A point section as affine coordinates (plain ints, None at infinity), each point checked; with the native
    kernel, None: the section is checked as it is and its MSM parts read it as it is (``job_msm_section``)."""
    if backend == "native":
        from runtimes.zk import native

        if native.check_section(group, points, label=label):
            return None
    return _decode(group, points, label, _arithmetic(backend))


def _decode(group: int, points: bytes, label: str, ar: Arithmetic) -> tuple[list[Any], list[Any]]:
    xs, ys = (decode_g1 if group == 1 else decode_g2)(points, ar, label=label)
    if ar.name == "python":
        return xs, ys
    return [None if x is None else _plain(x) for x in xs], [None if y is None else _plain(y) for y in ys]


def job_msm(
    group: int, xs: list[Any], ys: list[Any], scalars: Sequence[int], c: int, windows: tuple[int, int], backend: str
) -> Any:
    ar = _arithmetic(backend)  # native plans come here only where the kernel could not be had: Python
    if ar.name != "python":
        xs, ys = _numbers(xs, ar), _numbers(ys, ar)
    result = (msm_g1 if group == 1 else msm_g2)(xs, ys, scalars, ar, c, windows)
    return _plain(result)


def job_msm_section(group: int, section: bytes, scalars: bytes, c: int, windows: tuple[int, int], label: str) -> Any:
    """``job_msm`` on a checked .zkey section as it is, scalars as 32-byte little-endian numbers (native)."""
    from runtimes.zk import native

    result = native.msm_section(group, section, scalars, c, windows)
    if result is not None:
        return result
    # The kernel could not be had in this worker (the plan's checks ran where it could): the MSM in Python.
    ar = Arithmetic.select("auto")
    xs, ys = _decode(group, section, label, ar)
    numbers = [int.from_bytes(scalars[i : i + 32], "little") for i in range(0, len(scalars), 32)]
    return job_msm(group, xs, ys, numbers, c, windows, ar.name)


def job_h(coefs: bytes, witness: Sequence[int], n_vars: int, domain_size: int, backend: str = "python") -> list[int]:
    decoded = decode_coefs(coefs, n_vars, domain_size, label="proving key section 4")
    a_t, b_t = abc_on_domain(decoded, witness, domain_size)
    transform: Transform = ntt
    if backend == "native":
        from runtimes.zk import native

        if native.load() is not None:
            transform = native.ntt
    return h_scalars(a_t, b_t, domain_size.bit_length() - 1, transform)


def job_finish(
    header: Mapping[str, Any], parts: Mapping[str, list[tuple[int, Jacobian]]], r: int, s: int
) -> tuple[Any, Any, Any]:
    """Join MSM parts and add the r, s terms; affine results as plain ints."""
    ar = Arithmetic.select("python")
    F1, F2 = fq_ops(ar), fq2_ops(ar)

    def joined(F: Any, name: str) -> Jacobian:
        acc: Jacobian = (F.one, F.one, F.zero)
        for shift, part in parts.get(name, []):
            acc = add(F, acc, shift_left(F, part, shift))
        return acc

    delta1 = to_jacobian(F1, header["delta1"])
    pi_a = add(F1, add_affine(F1, joined(F1, "A"), header["alpha1"]), multiply(F1, delta1, r))
    b1 = add(F1, add_affine(F1, joined(F1, "B1"), header["beta1"]), multiply(F1, delta1, s))
    delta2 = to_jacobian(F2, header["delta2"])
    pi_b = add(F2, add_affine(F2, joined(F2, "B2"), header["beta2"]), multiply(F2, delta2, s))
    pi_c = add(F1, joined(F1, "C"), joined(F1, "H"))
    pi_c = add(F1, pi_c, multiply(F1, pi_a, s))
    pi_c = add(F1, pi_c, multiply(F1, b1, r))
    pi_c = add(F1, pi_c, neg(F1, multiply(F1, delta1, r * s % R)))
    return to_affine(F1, pi_a), to_affine(F2, pi_b), to_affine(F1, pi_c)


def job_witness(wasm: bytes, inputs: Any) -> list[int]:
    from runtimes.zk.witness import calculate_witness  # wasmtime is optional and heavy: import on use

    return calculate_witness(wasm, inputs)


def job_benchmark_key(power: int) -> tuple[ZKey, list[int]]:
    from runtimes.zk.benchmark import synthetic_key

    return synthetic_key(power)


def job_verify(vk: Any, proof: Proof) -> bool:
    from runtimes.zk.verifier import verify

    return verify(vk, proof, proof.public)


JOBS: Mapping[str, Callable[..., Any]] = {
    "verify": job_verify,
    DECODE_JOB: job_decode,
    "msm": job_msm,
    "msm_section": job_msm_section,
    H_JOB: job_h,
    FINISH_JOB: job_finish,
    "witness": job_witness,
    "benchmark_key": job_benchmark_key,
}


def _numbers(values: list[Any], ar: Arithmetic) -> list[Any]:
    """Decoded coordinates (ints, Fq2 pairs of ints, None) in ``ar``'s number type."""
    number = ar.number
    return [v if v is None else number(v) if isinstance(v, int) else tuple(map(number, v)) for v in values]


def _plain(value: Any) -> Any:
    """gmpy2 numbers back to ints, recursively, so results unpickle anywhere."""
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return int(value)


# --- the plan ----------------------------------------------------------------------------------------


@dataclass
class ProofPlan:
    """Hands out jobs in dependency order; see the module docstring."""

    zkey: ZKey
    witness: Sequence[int]
    backend: Backend = "auto"
    parallelism: int = 1
    r: int = field(default_factory=lambda: secrets.randbelow(R))
    s: int = field(default_factory=lambda: secrets.randbelow(R))
    _parts: dict[str, list[tuple[int, Jacobian]]] = field(default_factory=dict)
    # decoded sections, or (native) the checked section's bytes as they are
    _points: dict[str, tuple[list[Any], list[Any]] | bytes] = field(default_factory=dict)
    _scalars: dict[str, list[int]] = field(default_factory=dict)  # known scalars of sections not yet decoded
    _waiting: set[str] = field(default_factory=set)
    _result: Any = None

    def __post_init__(self) -> None:
        if len(self.witness) != self.zkey.n_vars:
            raise WitnessMismatch(
                f"the witness has {len(self.witness)} values but the proving key's circuit has "
                f"{self.zkey.n_vars} signals -- was it computed for another circuit?"
            )
        self._backend = backend_name(self.backend)

    @property
    def public(self) -> tuple[int, ...]:
        return tuple(self.witness[1 : self.zkey.n_public + 1])

    def start(self) -> list[Job]:
        z, w = self.zkey, list(self.witness)
        self._scalars = {"A": w, "B1": w, "B2": w, "C": w[z.n_public + 1 :]}
        h_job = Job(H_JOB, H_JOB, (z.coefs, w, z.n_vars, z.domain_size, self._backend), cost=self._h_cost())
        # The H scalars come first: they unlock the H MSM, and take ~5% of the time. Decoding unlocks the rest.
        jobs = [h_job]
        for name, group, points, _ in self._sections():
            cost = DECODE_COST[group] * (len(points) // (G1_BYTES * group))
            args = (group, points, self._label(name), self._backend)
            jobs.append(Job(f"{DECODE_JOB}:{name}", DECODE_JOB, args, cost))
        self._waiting = {job.key for job in jobs}
        return sorted(jobs, key=queue_order)

    def complete(self, job: Job, result: Any) -> list[Job]:
        """Record a job's result; return the jobs it unlocks (MSM parts, or the final step)."""
        self._waiting.discard(job.key)
        if job.function == FINISH_JOB:
            self._result = result
            return []
        if job.function in (H_JOB, DECODE_JOB):
            name = "H" if job.function == H_JOB else job.key.split(":", 1)[1]
            if job.function == H_JOB:
                self._scalars["H"] = result
            else:
                self._points[name] = job.args[1] if result is None else result
            if name not in self._points or name not in self._scalars:
                return []
            group = 2 if name == "B2" else 1
            more = self._msm_jobs(name, group, self._points.pop(name), self._scalars.pop(name),
                                  total=self._total_cost())
            self._waiting |= {j.key for j in more}
            return sorted(more, key=queue_order)
        name, shift = job.part
        self._parts.setdefault(name, []).append((shift, result))
        if self._waiting:
            return []
        z = self.zkey
        header = {"alpha1": z.alpha1, "beta1": z.beta1, "beta2": z.beta2, "delta1": z.delta1, "delta2": z.delta2}
        return [Job(FINISH_JOB, FINISH_JOB, (header, self._parts, self.r, self.s), cost=0.0)]

    @property
    def done(self) -> bool:
        return self._result is not None

    def proof(self) -> Proof:
        if self._result is None:
            raise RuntimeError("the plan has not finished")
        pi_a, pi_b, pi_c = self._result
        return Proof(pi_a, pi_b, pi_c, self.public)

    def _sections(self) -> list[tuple[str, int, bytes, int]]:
        """(name, group, the section's bytes, its section number in the .zkey) of each MSM's points."""
        z = self.zkey
        return [("A", 1, z.a, 5), ("B1", 1, z.b1, 6), ("B2", 2, z.b2, 7), ("C", 1, z.c, 8), ("H", 1, z.h, 9)]

    def _label(self, name: str) -> str:
        """How errors name a point section: the key, the section number and the MSM (decoding, or its fallback)."""
        kind = next(k for n, _, _, k in self._sections() if n == name)
        return f"{self.zkey.label}: section {kind} ({name})"

    def _total_cost(self) -> float:
        z = self.zkey
        sizes = ((1, z.n_vars), (1, z.n_vars), (2, z.n_vars), (1, z.n_vars - z.n_public - 1), (1, z.domain_size))
        decode = sum(DECODE_COST[group] * n for group, n in sizes)
        return sum(self._cost(group, n) for group, n in sizes) + self._h_cost() + decode

    @property
    def expected_cost(self) -> float:
        """The sum of job costs for a witness of full-size values (for progress: done cost / this)."""
        return self._total_cost()

    def _h_cost(self) -> float:
        # 6 transforms of n log n butterflies at about one G1 addition each (measured: ~5% of a proof).
        n = self.zkey.domain_size
        return 6 * n * max(1, n.bit_length() - 1) / 2

    @staticmethod
    def _cost(group: int, n: int) -> float:
        c = choose_window(max(n, 1), R.bit_length())
        cost = window_count(R.bit_length(), c) * (n + 1.2 * (1 << c))
        return cost * (G2_COST_FACTOR if group == 2 else 1.0)

    def _windows(self, group: int, n: int, total: float) -> list[tuple[int, int]]:
        c = choose_window(max(n, 1), R.bit_length())
        count = window_count(R.bit_length(), c)
        parts = 1
        if self.parallelism > 1:
            parts = min(count, math.ceil(self._cost(group, n) / (total / (4 * self.parallelism))))
        bounds = [round(i * count / parts) for i in range(parts + 1)]
        return [(bounds[i], bounds[i + 1]) for i in range(parts)]

    def _msm_jobs(
        self, name: str, group: int, points: tuple[list[Any], list[Any]] | bytes, scalars: Sequence[int], *,
        total: float
    ) -> list[Job]:
        n = len(scalars)
        if isinstance(points, bytes):  # native: the section as it is, and the scalars packed once for all parts
            packed = b"".join(int(v).to_bytes(32, "little") for v in scalars)
            label = self._label(name)
        # Bits actually used: a circuit whose witness is mostly bits needs a few windows, not 255/c.
        bits = max((int(v).bit_length() for v in scalars), default=1) or 1
        c = choose_window(max(n, 1), bits)
        count = window_count(bits, c)
        jobs = []
        for lo, hi in self._windows(group, n, total):
            lo, hi = min(lo, count), min(hi, count)
            if lo >= hi:
                continue
            cost = self._cost(group, n) * (hi - lo) / max(count, 1)
            if isinstance(points, bytes):
                jobs.append(Job(f"{name}:{lo}", "msm_section", (group, points, packed, c, (lo, hi), label), cost,
                                part=(name, c * lo)))
                continue
            xs, ys = points
            args = (group, xs, ys, list(scalars), c, (lo, hi), self._backend)
            jobs.append(Job(f"{name}:{lo}", "msm", args, cost, part=(name, c * lo)))
        return jobs


def run_inline(plan: ProofPlan, on_job: Callable[[Job], None] | None = None) -> Proof:
    """Run every job of the plan in this process, in order (for one-core machines and tests)."""
    queue = plan.start()
    while queue:
        job = queue.pop(0)
        result = call_job(job)
        queue.extend(plan.complete(job, result))
        if on_job is not None:
            on_job(job)
    return plan.proof()


def call_job(job: Job) -> Any:
    return JOBS[job.function](*job.args)


# --- snarkjs JSON --------------------------------------------------------------------------------------


def proof_json(proof: Proof) -> dict[str, Any]:
    """proof.json as snarkjs writes it: affine points with a trailing "1", ["0", "1", "0"] at infinity."""
    return {
        "pi_a": g1_json(proof.pi_a),
        "pi_b": g2_json(proof.pi_b),
        "pi_c": g1_json(proof.pi_c),
        "protocol": "groth16",
        "curve": "bn128",
    }


def public_json(proof: Proof) -> list[str]:
    return [str(v) for v in proof.public]


def g1_json(p: Affine) -> list[str]:
    return ["0", "1", "0"] if p is None else [str(int(p[0])), str(int(p[1])), "1"]


def g2_json(p: Affine) -> list[list[str]]:
    if p is None:
        return [["0", "0"], ["1", "0"], ["0", "0"]]
    return [[str(int(c)) for c in p[0]], [str(int(c)) for c in p[1]], ["1", "0"]]
