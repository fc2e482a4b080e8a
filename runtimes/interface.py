"""The contract every runtime implements: inference, ZK proving, rendering, or one a third party ships.

A runtime is found through the ``hyperion.runtimes`` entry-point group. The entry point names a factory
(usually the class itself) called with a :class:`RuntimeContext`; what it returns must satisfy
:class:`Runtime`. The node never imports a runtime by name, so a separate distribution can add one
without touching the core.

Life of a runtime inside the daemon::

    factory(context) -> runtime
    await runtime.start()                 # check the machine; raise RuntimeUnavailable if it cannot work here
    await runtime.benchmark()             # only when no cached result matches (hardware, name, version)
    runtime.offers(benchmark)             # advertised to the network
    runtime.estimate(task)                # admission: can it run this, how long, how many work units
    await runtime.run(task, emit)         # emit(Partial) as work progresses, return the Final result
    await runtime.aclose()

Cancellation is trio's: when the caller's scope is cancelled, ``run`` must stop its work (a worker thread
or process included) promptly and release what it holds.

The requester's side needs no running runtime: before it countersigns a peer's bill it asks the runtime's
*class* (what the entry point names) for ``tally(payload)``, a :class:`Tally` that counts the streamed
result and says how many work units it may be billed. A runtime without ``tally`` has its bills checked for
price and total only.

Two more optional hooks let the node check other workers' results without knowing any runtime by name
(``hyperion_node/runtime_registry.py`` looks them up):

* ``check_result(payload, output, evidence) -> str`` on the *class* (a static method): a check cheap enough
  to run on every result before countersigning it, with no running runtime (a Groth16 proof verifies in a
  fraction of the proving time); ``""`` when the result stands, else why not. It also settles spot checks.
* ``verify(payload, output, evidence, *, sample=None, chunks=1) -> Verdict`` on a running runtime
  (:class:`Verifier`): a spot check, costing a share of the work (inference: one batched prefill against the
  worker's logit commitments, ``chunks`` of them; render: one ``sample`` frame rendered again). Each runtime
  takes both keywords and uses what applies to it.

And two for the sampling of spot checks and the evidence that accumulates over them
(``hyperion_node/verify/sampling.py``, ``evidence.py``), both static methods on the *class*:

* ``check_share(payload, output) -> float``: what a spot check of this result costs, as a share of the work
  that produced it. The requester checks a result with probability ``verify.budget`` / share. Without it a
  check is taken to cost as much as the work.
* ``check_scores(details) -> Mapping[str, float]``: a spot check's statistics (its ``Verdict.details``) as
  scores that honest results keep below 1 nearly always and a cheat's exceed 1 on average; the node sums
  their excess over a worker's checks (CUSUM). Without it only failed checks count against a worker.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

JSON = Any  # values that survive json.dumps; kept loose on purpose for runtime-specific payloads


@dataclass(frozen=True)
class HardwareSummary:
    """What a runtime needs to know about the machine to decide what it can offer."""

    cpu_model: str
    cpu_cores: int
    ram_total_bytes: int
    ram_available_bytes: int
    gpus: tuple[Mapping[str, JSON], ...] = ()
    fingerprint: str = ""  # stable hash of the hardware; part of the benchmark cache key


@dataclass(frozen=True)
class RuntimeContext:
    """Everything a runtime factory gets. No globals: what a runtime needs is injected here."""

    data_dir: Path
    cache_dir: Path
    settings: Mapping[str, JSON]  # this runtime's table from the config ([runtimes.<name>])
    hardware: HardwareSummary


@dataclass(frozen=True)
class Offer:
    """One thing this node can do for the network, as advertised in its capability record."""

    runtime: str  # runtime name, e.g. "inference"
    item: str  # what exactly: a model id, a circuit size class, a renderer
    unit: str  # the work unit prices and throughput are in: "token", "constraint", "pixel-sample"
    price_per_unit: float
    capacity: int  # tasks it admits at once
    throughput: float | None  # measured units per second (from the cached benchmark), None if unmeasured
    details: Mapping[str, JSON] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """A unit of work as a runtime sees it. The orchestrator owns the rest of the task's life."""

    task_id: str
    runtime: str
    payload: Mapping[str, JSON]
    requirements: Mapping[str, JSON] = field(default_factory=dict)
    deadline: float | None = None  # trio.current_time() value after which the work is worthless
    # The requester has not paid this node yet (a stranger): a runtime that shares one engine among tasks
    # serves it behind the others (the inference batcher gives it one step in BACKGROUND_EVERY).
    background: bool = False


@dataclass(frozen=True)
class Estimate:
    """Admission answer: whether the runtime can run the task here, and what it would cost."""

    accepted: bool
    reason: str = ""
    work_units: float = 0.0
    seconds: float | None = None


@dataclass(frozen=True)
class Partial:
    """A piece of a result streamed while work goes on (tokens, a rendered frame, progress)."""

    data: Mapping[str, JSON]


@dataclass(frozen=True)
class Verdict:
    """A verifier's answer on another worker's result (a runtime's ``verify``): ``ok``, or why not;
    ``details`` holds the measured figures either way."""

    ok: bool
    reason: str
    details: Mapping[str, JSON] = field(default_factory=dict)


@dataclass(frozen=True)
class Final:
    """The finished result plus what the receipt needs to prove the work was done."""

    output: Mapping[str, JSON]
    evidence: Mapping[str, JSON]
    work_units: float


@dataclass(frozen=True)
class BenchmarkResult:
    """A runtime's micro-benchmark, cached by (hardware fingerprint, runtime name, runtime version)."""

    runtime: str
    version: str
    unit: str
    throughput: float  # units per second
    seconds: float  # how long the benchmark took
    details: Mapping[str, JSON] = field(default_factory=dict)


Emit = Callable[[Partial], Awaitable[None]]


@runtime_checkable
class Tally(Protocol):
    """What a requester counts of one task's result as it arrives, to check the worker's bill (the units
    its receipt claims) against what was received. Pure: no model, no I/O."""

    def partial(self, data: Mapping[str, JSON]) -> None:
        """One streamed partial result, in order."""
        ...

    def units(self, output: Mapping[str, JSON]) -> tuple[int, int] | str:
        """The fewest and most work units this final output may be billed, or why the output contradicts
        the request or what was streamed (then the result is refused)."""
        ...


@runtime_checkable
class Runtime(Protocol):
    """What the daemon and orchestrator call. See the module docstring for the order of calls."""

    name: str

    @property
    def version(self) -> str:
        """Runtime version string; a change invalidates the cached benchmark."""
        ...

    async def start(self) -> None:
        """Check that the runtime can work here; raise ``RuntimeUnavailable`` with the fix if not."""
        ...

    async def benchmark(self) -> BenchmarkResult:
        """Measure throughput on this machine. Called only on a benchmark-cache miss."""
        ...

    def offers(self, benchmark: BenchmarkResult | None) -> list[Offer]:
        """What this node can offer with this runtime, given the measured throughput."""
        ...

    def estimate(self, task: Task) -> Estimate:
        """Admission check for a task; cheap and without side effects."""
        ...

    async def run(self, task: Task, emit: Emit) -> Final:
        """Do the work, emitting partial results; honour trio cancellation promptly."""
        ...

    async def aclose(self) -> None:
        """Release models, processes and files."""
        ...


@runtime_checkable
class Verifier(Protocol):
    """A running runtime that can spot-check another worker's result (module docstring)."""

    async def verify(self, payload: Mapping[str, JSON], output: Mapping[str, JSON], evidence: Mapping[str, JSON],
                     *, sample: Mapping[str, JSON] | None = None, chunks: int = 1) -> Verdict:
        ...


RuntimeFactory = Callable[[RuntimeContext], Runtime]
