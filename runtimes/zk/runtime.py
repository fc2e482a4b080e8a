"""Groth16 proving on BN254, interoperable with snarkjs and circom: the ``zk-groth16`` runtime.

Task payload (one of each pair; bytes travel as they are, paths are read on this node):

    zkey | zkey_path        the circuit's proving key (.zkey)
    wtns | wtns_path        the witness (.wtns), or else
    wasm | wasm_path        the circuit's witness generator (.wasm from circom) and
    input | input_path      its input JSON (an object, or the path of a file holding one)

Output: ``{"proof": <proof.json>, "public": <public.json>}`` as snarkjs writes them. Evidence for the
receipt: the SHA-256 of proof.json (as written), the public signals, the SHA-256 of the key, and the
constraint count, which is also the task's work units. ``check_final`` is the requester's side: it
verifies the proof and that the evidence matches it, before the receipt is countersigned.

All proving work runs in a pool of worker processes (``runtimes.zk.async_pool``), one proof at a time
(capacity 1: a proof already uses every worker); a cancelled task kills its workers at once.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import structlog
import trio

from hyperion_node.errors import InternalError
from hyperion_node.settings import Rule, Section, at_least, count, is_integer, setting
from runtimes.interface import BenchmarkResult, Emit, Estimate, Final, Offer, Partial, RuntimeContext, Tally, Task
from runtimes.zk.async_pool import TrioProcessPool
from runtimes.zk.exceptions import MalformedInput
from runtimes.zk.field import BACKENDS, Backend, backend_name
from runtimes.zk.prover import Job, Proof, ProofPlan, proof_json, public_json
from runtimes.zk.witness import wasmtime_available
from runtimes.zk.wtns import parse_wtns
from runtimes.zk.zkey import ZKey, parse_zkey

if TYPE_CHECKING:
    from runtimes.zk.verifier import VerifyingKey

RUNTIME_NAME = "zk-groth16"
# Bumped when a change here alters throughput or output, so cached benchmarks are redone.
RUNTIME_REVISION = "1"
OFFER_ITEM = "groth16-bn254"
# Progress is reported at most this often (each report is a message to the requester).
PROGRESS_INTERVAL_S = 0.5


@dataclass(frozen=True)
class ZkSettings(Section):
    """``[runtimes.zk-groth16]``: workers (0 = one per core), the largest circuit accepted, price, backend."""

    SECTION: ClassVar[str] = f"runtimes.{RUNTIME_NAME}"

    workers: int = setting(0, count(0, "an integer >= 0"))
    max_constraints: int = setting(1 << 20, count(0, "an integer >= 0"))
    price_per_constraint: float = setting(0.0, at_least(0))
    backend: Backend = setting("auto", Rule(lambda v: v in BACKENDS, "auto, python, gmpy2 or native"))
    # The benchmark proves a 2^10-constraint circuit (about 1 s on 2 cores).
    benchmark_power: int = setting(10, Rule(lambda v: is_integer(v) and 2 <= v <= 16, "2 to 16"))

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any]) -> ZkSettings:
        return cls.from_table(settings, source=f"[runtimes.{RUNTIME_NAME}]")


@dataclass(frozen=True)
class ProvingRequest:
    """A task payload, validated; ``load`` reads what it names (blocking: call it in a thread)."""

    zkey: bytes | Path
    wtns: bytes | Path | None
    wasm: bytes | Path | None
    inputs: Mapping[str, Any] | Path | None

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> ProvingRequest:
        zkey = _one_of(payload, "zkey", "zkey_path", required=True)
        wtns = _one_of(payload, "wtns", "wtns_path")
        wasm = _one_of(payload, "wasm", "wasm_path")
        inputs: Mapping[str, Any] | Path | None = None
        if "input" in payload and "input_path" in payload:
            raise MalformedInput("payload: give 'input' or 'input_path', not both")
        if "input" in payload:
            if not isinstance(payload["input"], Mapping):
                raise MalformedInput("payload field 'input' must be a JSON object of signal values")
            inputs = payload["input"]
        elif "input_path" in payload:
            inputs = _path(payload["input_path"], "input_path")
        if (wtns is None) == (wasm is None):
            raise MalformedInput("payload needs a witness: 'wtns'/'wtns_path', or 'wasm'/'wasm_path' with 'input'")
        if wasm is not None and inputs is None:
            raise MalformedInput("payload field 'wasm' needs 'input' or 'input_path' (the circuit's inputs)")
        assert zkey is not None
        return cls(zkey=zkey, wtns=wtns, wasm=wasm, inputs=inputs)

    def load(self) -> tuple[bytes, ZKey, list[int] | None, bytes | None, Any]:
        """(key bytes, parsed key, witness or None, wasm or None, inputs or None)."""
        from runtimes.zk.files import read_input
        from runtimes.zk.verifier import load_json

        zkey_bytes = self.zkey if isinstance(self.zkey, bytes) else read_input(self.zkey, what="proving key")
        zkey = parse_zkey(zkey_bytes, label=str(self.zkey) if isinstance(self.zkey, Path) else "payload zkey")
        witness = None
        if self.wtns is not None:
            label = str(self.wtns) if isinstance(self.wtns, Path) else "payload wtns"
            data = self.wtns if isinstance(self.wtns, bytes) else read_input(self.wtns, what="witness")
            witness = parse_wtns(data, label=label)
        wasm = self.wasm if not isinstance(self.wasm, Path) else read_input(self.wasm, what="witness generator")
        inputs: Any = self.inputs
        if isinstance(inputs, Path):
            inputs = load_json(inputs, label=str(inputs))
        return zkey_bytes, zkey, witness, wasm, inputs


def _path(value: Any, field: str) -> Path:
    if not isinstance(value, str) or not value:
        raise MalformedInput(f"payload field {field!r} must be a file path (a non-empty string)")
    return Path(value)


def _one_of(payload: Mapping[str, Any], inline: str, path: str, *, required: bool = False) -> bytes | Path | None:
    if inline in payload and path in payload:
        raise MalformedInput(f"payload: give {inline!r} or {path!r}, not both")
    if inline in payload:
        value = payload[inline]
        if not isinstance(value, bytes | bytearray):
            raise MalformedInput(f"payload field {inline!r} must be the file's bytes")
        return bytes(value)
    if path in payload:
        return _path(payload[path], path)
    if required:
        raise MalformedInput(f"payload needs {inline!r} (bytes) or {path!r} (a file path)")
    return None


# proof.json's keys in the order snarkjs writes them. Transports may reorder a map (our wire format is
# canonical CBOR, which sorts keys), so the hash and the file are always made in this order.
PROOF_KEYS = ("pi_a", "pi_b", "pi_c", "protocol", "curve")


def in_snarkjs_order(proof: Mapping[str, Any]) -> dict[str, Any]:
    ordered = {key: proof[key] for key in PROOF_KEYS if key in proof}
    return {**ordered, **{k: v for k, v in proof.items() if k not in ordered}}


def proof_sha256(proof: Mapping[str, Any]) -> str:
    """SHA-256 of proof.json as snarkjs writes it (the receipt's commitment to the proof), whatever order
    the map's keys arrived in."""
    from runtimes.zk.files import snarkjs_dumps

    return hashlib.sha256(snarkjs_dumps(in_snarkjs_order(proof)).encode()).hexdigest()


def check_final(vk: VerifyingKey, output: Mapping[str, Any], evidence: Mapping[str, Any]) -> bool:
    """Requester side, before countersigning: the proof verifies and the evidence describes it."""
    # The verifier (py_ecc's pairing) is imported when a proof is first checked, not while the daemon idles.
    from runtimes.zk.verifier import parse_proof, parse_public, verify

    proof, public = output.get("proof"), output.get("public")
    if evidence.get("proof_sha256") != proof_sha256(proof or {}) or evidence.get("public_signals") != public:
        return False
    return verify(vk, parse_proof(proof), parse_public(public))


class Groth16Runtime:
    """The ``zk-groth16`` runtime; see the module docstring and ``runtimes.interface.Runtime``."""

    name = RUNTIME_NAME

    @staticmethod
    def tally(payload: Mapping[str, Any]) -> Tally:
        """The requester's count of a result, to check a worker's bill (``runtimes.interface.Tally``)."""
        from runtimes.zk.billing import ZkTally

        return ZkTally(payload)

    @staticmethod
    def check_result(payload: Mapping[str, Any], output: Mapping[str, Any], evidence: Mapping[str, Any]) -> str:
        """The requester's check before it countersigns (``runtimes.interface``): the proof verifies against
        the proving key it sent, and the evidence describes that proof. ``""`` when it stands."""
        from runtimes.zk.exceptions import MalformedInput
        from runtimes.zk.verifier import verifying_key_from_zkey
        from runtimes.zk.zkey import parse_zkey

        zkey = payload.get("zkey")
        if not isinstance(zkey, bytes):
            return "a ZK result can only be checked against the proving key bytes that were sent"
        try:
            ok = check_final(verifying_key_from_zkey(parse_zkey(zkey, label="task zkey")), output, evidence)
        except (MalformedInput, ValueError, TypeError, KeyError) as exc:
            return f"the proof in the result is malformed: {exc}"
        return "" if ok else "the proof does not verify against the task's key, or the evidence does not match it"

    def __init__(self, context: RuntimeContext) -> None:
        self._context = context
        self._settings = ZkSettings.from_mapping(context.settings)
        self._backend = backend_name(self._settings.backend)
        self._pool = TrioProcessPool(self._settings.workers or None)
        self._benchmark: BenchmarkResult | None = None
        self._log = structlog.get_logger("runtimes.zk")

    @property
    def version(self) -> str:
        return f"{RUNTIME_REVISION}+{self._backend}"

    @property
    def workers(self) -> int:
        return self._pool.size

    async def start(self) -> None:
        # Workers start on the first proof (the pool starts them inside every call) and then stay: an idle
        # node keeps no prover processes, and ~0.1 s per worker is paid once, not per task.
        self._log.info("zk runtime started", workers=self._pool.size, backend=self._backend)

    async def benchmark(self) -> BenchmarkResult:
        power = self._settings.benchmark_power
        zkey, witness = await self._pool.call("benchmark_key", power)
        plan = ProofPlan(zkey, witness, backend=self._settings.backend, parallelism=self._pool.size)
        started = time.perf_counter()
        await self._pool.prove(plan)
        seconds = time.perf_counter() - started
        return BenchmarkResult(
            runtime=self.name,
            version=self.version,
            unit="constraint",
            throughput=zkey.constraints / seconds,
            seconds=seconds,
            details={"constraints": zkey.constraints, "workers": self._pool.size, "backend": self._backend},
        )

    def offers(self, benchmark: BenchmarkResult | None) -> list[Offer]:
        self._benchmark = benchmark
        return [
            Offer(
                runtime=self.name,
                item=OFFER_ITEM,
                unit="constraint",
                price_per_unit=self._settings.price_per_constraint,
                capacity=1,
                throughput=benchmark.throughput if benchmark is not None else None,
                details={
                    "max_constraints": self._settings.max_constraints,
                    "protocol": "groth16",
                    "curve": "bn128",
                    "backend": self._backend,
                    "workers": self._pool.size,
                    "witness_from_wasm": wasmtime_available(),
                },
            )
        ]

    def estimate(self, task: Task) -> Estimate:
        """Parses the key (reading it when the payload names a path) to count its constraints."""
        try:
            request = ProvingRequest.from_payload(task.payload)
            if isinstance(request.zkey, Path):
                from runtimes.zk.files import read_input

                data = read_input(request.zkey, what="proving key")
            else:
                data = request.zkey
            zkey = parse_zkey(data, label="payload zkey")
        except MalformedInput as exc:
            return Estimate(accepted=False, reason=exc.one_line())
        if request.wasm is not None and not wasmtime_available():
            reason = "this node cannot run witness generators (no wasmtime); send a .wtns"
            return Estimate(accepted=False, reason=reason)
        if zkey.constraints > self._settings.max_constraints:
            return Estimate(
                accepted=False,
                reason=f"{zkey.constraints} constraints is over this node's limit of {self._settings.max_constraints}",
            )
        throughput = self._benchmark.throughput if self._benchmark is not None else 0.0
        return Estimate(
            accepted=True,
            work_units=float(zkey.constraints),
            seconds=zkey.constraints / throughput if throughput > 0 else None,
        )

    async def run(self, task: Task, emit: Emit) -> Final:
        request = ProvingRequest.from_payload(task.payload)
        zkey_bytes, zkey, witness, wasm, inputs = await trio.to_thread.run_sync(request.load)
        if zkey.constraints > self._settings.max_constraints:
            raise MalformedInput(
                f"{zkey.constraints} constraints is over this node's limit of {self._settings.max_constraints}"
            )
        if witness is None:
            await emit(Partial({"stage": "witness", "progress": 0.0}))
            witness = await self._pool.call("witness", wasm, inputs)
        plan = ProofPlan(zkey, witness, backend=self._settings.backend, parallelism=self._pool.size)
        last = -PROGRESS_INTERVAL_S

        async def progress(fraction: float, job: Job) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last >= PROGRESS_INTERVAL_S or fraction >= 1.0:
                last = now
                await emit(Partial({"stage": "proving", "progress": round(fraction, 3), "job": job.key}))

        proof = await self._pool.prove(plan, on_progress=progress)
        await self._self_check(zkey, proof)
        proof_obj, public = proof_json(proof), public_json(proof)
        return Final(
            output={"proof": proof_obj, "public": public},
            evidence={
                "proof_sha256": proof_sha256(proof_obj),
                "public_signals": public,
                "zkey_sha256": hashlib.sha256(zkey_bytes).hexdigest(),
                "constraints": zkey.constraints,
                "protocol": "groth16",
                "curve": "bn128",
            },
            work_units=float(zkey.constraints),
        )

    async def _self_check(self, zkey: ZKey, proof: Proof) -> None:
        """A proof that does not verify is a bug here, never the requester's fault: fail before sending it."""
        from runtimes.zk.verifier import verifying_key_from_zkey

        ok = await self._pool.call("verify", verifying_key_from_zkey(zkey), proof)
        if not ok:
            raise InternalError("the proof this node just produced does not verify against its key")

    async def aclose(self) -> None:
        await self._pool.aclose()
