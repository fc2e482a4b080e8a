"""Simulated runtimes: real implementations of ``runtimes.interface.Runtime`` whose work is a timed
simulation on a :class:`~hyperion_demo.machine.SimMachine`. Everything around them -- admission, the
task stream, receipts, countersignatures, the ledger, spot checks -- is the node's real code.

Results are a pure function of the payload (and the demo's seed), so a spot check can recompute them
(:meth:`SimInference.verify`), and whether a task faults is a function of (seed, node, task sequence number),
so a seeded demo faults the same tasks on the same nodes whichever order the network delivers them in.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from importlib.metadata import EntryPoint
from typing import Any

import trio

from hyperion_demo.machine import SimMachine
from hyperion_demo.profiles import INFERENCE_ITEM, RENDER_ITEM, ZK_ITEM
from hyperion_node.errors import EnvironmentProblem, UserError
from runtimes.inference.claims import Verdict
from runtimes.interface import BenchmarkResult, Emit, Estimate, Final, Offer, Partial, RuntimeContext, Task

VERSION = "sim-1"
STREAM_EVERY_S = 0.2  # tokens leave in chunks: a frame per token at 100+ tasks/s would be the bottleneck
_WORDS = ("the", "network", "routes", "work", "to", "a", "peer", "that", "signs", "its", "receipt", "and",
          "streams", "tokens", "back", "GPU", "proof", "frame", "ledger", "epoch")
GROUP = "hyperion.runtimes"


class SimulatedFault(EnvironmentProblem):
    """The simulated board faulted during the task (what an Xid error or a CUDA OOM looks like)."""


def _unit_hash(*parts: object) -> float:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def generated_text(seed: int, prompt: str, tokens: int) -> list[str]:
    """The words an inference task "generates": fixed by the seed and the prompt, so anyone can check them."""
    digest = hashlib.sha256(f"{seed}:{prompt}".encode()).digest()
    return [_WORDS[(digest[i % 32] + i) % len(_WORDS)] for i in range(tokens)]


class _SimRuntime:
    name = ""
    item = ""
    unit = ""

    def __init__(self, context: RuntimeContext) -> None:
        machine = context.settings.get("machine")
        if not isinstance(machine, SimMachine):
            raise UserError("a simulated runtime needs its machine in settings['machine']")
        self.machine = machine

    @property
    def version(self) -> str:
        return VERSION

    def rate(self) -> float:
        raise NotImplementedError

    def price(self) -> float:
        raise NotImplementedError

    def units(self, payload: Mapping[str, Any]) -> float:
        raise NotImplementedError

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def benchmark(self) -> BenchmarkResult:
        return BenchmarkResult(runtime=self.name, version=VERSION, unit=self.unit, throughput=self.rate(),
                               seconds=0.0, details={"simulated": True})

    def offers(self, benchmark: BenchmarkResult | None) -> list[Offer]:
        if self.rate() <= 0:
            return []  # this board does not do this kind of work
        return [Offer(runtime=self.name, item=self.item, unit=self.unit, price_per_unit=self.price(),
                      capacity=self.machine.profile.slots,
                      throughput=benchmark.throughput if benchmark else self.rate(),
                      details={"simulated": True})]

    def estimate(self, task: Task) -> Estimate:
        if self.rate() <= 0 or task.requirements.get("item") != self.item:
            return Estimate(False, f"{self.name} does not offer {task.requirements.get('item')}")
        try:
            units = self.units(task.payload)
        except (KeyError, TypeError, ValueError) as exc:
            return Estimate(False, f"bad payload: {exc}")
        return Estimate(True, work_units=units, seconds=units / self.rate())

    async def _work(self, task: Task, units: float, emit: Emit, chunks: int) -> None:
        """Spend the simulated time in ``chunks`` steps, emitting a partial after each; fault where the
        seeded draw says so, at a seeded point of the work."""
        machine = self.machine
        seq = task.payload.get("seq", task.task_id)
        draw = _unit_hash(machine.seed, machine.index, self.name, seq)
        faults_at = math.floor(_unit_hash(machine.seed, seq, "at") * chunks) if draw < machine.fault_rate() else -1
        step = units / self.rate() * machine.slowdown() / chunks
        machine.task_started()
        try:
            for i in range(chunks):
                if i == faults_at:
                    raise SimulatedFault(f"simulated {machine.profile.name} faulted (Xid 79) at step {i}")
                await trio.sleep(step)
                await emit(Partial(self.partial(task, i, chunks)))
        finally:
            machine.task_ended()

    def partial(self, task: Task, i: int, chunks: int) -> dict[str, Any]:
        return {"progress": (i + 1) / chunks}

    def evidence(self) -> dict[str, Any]:
        return {"item_hash": hashlib.sha256(self.item.encode()).hexdigest(), "simulated": True,
                "board": self.machine.profile.name}


class SimInference(_SimRuntime):
    name, item, unit = "inference", INFERENCE_ITEM, "token"

    def rate(self) -> float:
        return self.machine.profile.tokens_per_s

    def price(self) -> float:
        return self.machine.profile.price_per_token

    def units(self, payload: Mapping[str, Any]) -> float:
        return float(int(payload["max_tokens"]))

    def partial(self, task: Task, i: int, chunks: int) -> dict[str, Any]:
        words = generated_text(self.machine.seed, str(task.payload["prompt"]), int(task.payload["max_tokens"]))
        per = math.ceil(len(words) / chunks)
        return {"text": " ".join(words[i * per:(i + 1) * per]) + " "}

    async def run(self, task: Task, emit: Emit) -> Final:
        tokens = int(task.payload["max_tokens"])
        chunks = max(1, math.ceil(tokens / self.rate() / STREAM_EVERY_S))
        await self._work(task, tokens, emit, min(chunks, tokens))
        text = " ".join(generated_text(self.machine.seed, str(task.payload["prompt"]), tokens))
        return Final(output={"text": text, "tokens": tokens}, evidence=self.evidence(), work_units=tokens)

    async def verify(self, payload: Mapping[str, Any], output: Mapping[str, Any], evidence: Mapping[str, Any],
                     *, sample: Mapping[str, Any] | None = None, chunks: int = 0) -> Verdict:
        """A spot check: the text is a function of seed and prompt, so recomputing it is the check. ``sample``
        and ``chunks`` (``runtimes.interface.Verifier``) are accepted as every runtime's are; the whole text
        costs nothing to recompute here."""
        expected = " ".join(generated_text(self.machine.seed, str(payload["prompt"]), int(payload["max_tokens"])))
        ok = output.get("text") == expected
        return Verdict(ok, "" if ok else "the text is not what the prompt generates")


class SimZk(_SimRuntime):
    name, item, unit = "zk", ZK_ITEM, "constraint"

    def rate(self) -> float:
        return self.machine.profile.constraints_per_s

    def price(self) -> float:
        return self.machine.profile.price_per_constraint

    def units(self, payload: Mapping[str, Any]) -> float:
        return float(int(payload["constraints"]))

    async def run(self, task: Task, emit: Emit) -> Final:
        constraints = int(task.payload["constraints"])
        await self._work(task, constraints, emit, 2)  # witness, then proof
        proof = hashlib.sha256(f"{self.machine.seed}:proof:{task.payload.get('seq')}".encode()).hexdigest()
        return Final(output={"proof": proof, "constraints": constraints}, evidence=self.evidence(),
                     work_units=constraints)


class SimRender(_SimRuntime):
    name, item, unit = "render", RENDER_ITEM, "frame"

    def rate(self) -> float:
        return self.machine.profile.frames_per_s

    def price(self) -> float:
        return self.machine.profile.price_per_frame

    def units(self, payload: Mapping[str, Any]) -> float:
        return float(int(payload["frames"]))

    def partial(self, task: Task, i: int, chunks: int) -> dict[str, Any]:
        digest = hashlib.sha256(f"{self.machine.seed}:{task.payload.get('seq')}:{i}".encode()).hexdigest()
        return {"frame": i, "sha256": digest}

    async def run(self, task: Task, emit: Emit) -> Final:
        frames = int(task.payload["frames"])
        await self._work(task, frames, emit, frames)
        return Final(output={"frames": frames}, evidence=self.evidence(), work_units=frames)


def entry_points() -> list[EntryPoint]:
    """What the demo hands ``RuntimeRegistry(entry_points=...)`` in place of the installed plugins."""
    return [EntryPoint(name=cls.name, value=f"{__name__}:{cls.__name__}", group=GROUP)
            for cls in (SimInference, SimZk, SimRender)]
