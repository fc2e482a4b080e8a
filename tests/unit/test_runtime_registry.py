"""Runtime discovery through entry points: broken plugins are reported and skipped; benchmarks are cached.

The plugins here are small runtimes written for the test and loaded through real ``EntryPoint`` objects,
exactly as a third-party distribution's would be.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import pytest

from hyperion_node.errors import RuntimeUnavailable
from hyperion_node.runtime_registry import ENTRY_POINT_GROUP, RuntimeRegistry
from hyperion_node.store import Store
from runtimes.interface import (
    BenchmarkResult,
    Emit,
    Estimate,
    Final,
    HardwareSummary,
    Offer,
    Partial,
    Runtime,
    RuntimeContext,
    Task,
)

HW = HardwareSummary(cpu_model="test cpu", cpu_cores=2, ram_total_bytes=2**30, ram_available_bytes=2**29,
                     fingerprint="hw-a")


class EchoRuntime:
    """A complete, tiny runtime: echoes its payload word by word."""

    name = "echo"
    benchmarks_run = 0

    def __init__(self, context: RuntimeContext) -> None:
        self.context = context
        self.closed = False

    @property
    def version(self) -> str:
        return str(self.context.settings.get("version", "1.0"))

    async def start(self) -> None:
        return None

    async def benchmark(self) -> BenchmarkResult:
        type(self).benchmarks_run += 1
        return BenchmarkResult(runtime=self.name, version=self.version, unit="word", throughput=1000.0, seconds=0.01)

    def offers(self, benchmark: BenchmarkResult | None) -> list[Offer]:
        return [Offer(runtime=self.name, item="words", unit="word", price_per_unit=0.1, capacity=1,
                      throughput=benchmark.throughput if benchmark else None)]

    def estimate(self, task: Task) -> Estimate:
        return Estimate(accepted=True, work_units=len(str(task.payload["text"]).split()))

    async def run(self, task: Task, emit: Emit) -> Final:
        words = str(task.payload["text"]).split()
        for word in words:
            await emit(Partial({"text": word}))
        return Final(output={"text": " ".join(words)}, evidence={}, work_units=len(words))

    async def aclose(self) -> None:
        self.closed = True


class UnavailableRuntime(EchoRuntime):
    name = "needs-gpu"

    async def start(self) -> None:
        raise RuntimeUnavailable("no CUDA device", hint="install the NVIDIA driver")


def ep(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


def registry(tmp_path: Path, eps: list[EntryPoint], **kwargs: object) -> RuntimeRegistry:
    return RuntimeRegistry(store=Store.open(tmp_path / "node.db"), data_dir=tmp_path, hardware=HW,
                           settings={}, entry_points=eps, **kwargs)  # type: ignore[arg-type]


def test_the_packaged_runtimes_are_registered_as_entry_points() -> None:
    names = {e.name for e in entry_points(group=ENTRY_POINT_GROUP)}
    assert "inference" in names


def test_echo_runtime_satisfies_the_interface() -> None:
    ctx = RuntimeContext(data_dir=Path("."), cache_dir=Path("."), settings={}, hardware=HW)
    assert isinstance(EchoRuntime(ctx), Runtime)


async def test_broken_plugins_are_reported_and_skipped(tmp_path: Path) -> None:
    reg = registry(tmp_path, [
        ep("missing", "hyperion_no_such_module:Runtime"),
        ep("typo", "tests.unit.test_runtime_registry:NoSuchClass"),
        ep("needs-gpu", "tests.unit.test_runtime_registry:UnavailableRuntime"),
        ep("echo", "tests.unit.test_runtime_registry:EchoRuntime"),
    ])
    await reg.load()
    assert list(reg.loaded) == ["echo"]
    failed = {f.name: f for f in reg.failures}
    assert failed["missing"].stage == "load"
    assert "ModuleNotFoundError" in failed["missing"].error
    assert failed["typo"].stage == "load"
    assert failed["needs-gpu"].stage == "start"
    assert "no CUDA device" in failed["needs-gpu"].error
    states = {d["name"]: d["state"] for d in reg.describe()}
    assert states == {"echo": "ready", "missing": "failed at load", "typo": "failed at load",
                      "needs-gpu": "failed at start"}
    skipped = [e for e in reg.store.events() if e.kind == "runtime.skipped"]
    assert len(skipped) == 3


async def test_disabled_runtime_is_not_loaded(tmp_path: Path) -> None:
    reg = registry(tmp_path, [ep("echo", "tests.unit.test_runtime_registry:EchoRuntime")], disabled=("echo",))
    await reg.load()
    assert reg.loaded == {}


async def test_benchmark_is_cached_across_restarts_until_version_changes(tmp_path: Path) -> None:
    EchoRuntime.benchmarks_run = 0
    plugin = [ep("echo", "tests.unit.test_runtime_registry:EchoRuntime")]
    first = registry(tmp_path, plugin)
    await first.load()
    assert EchoRuntime.benchmarks_run == 1
    assert first.loaded["echo"].benchmark_cached is False
    assert first.offers()[0].throughput == 1000.0
    await first.aclose()

    second = registry(tmp_path, plugin)
    await second.load()
    assert EchoRuntime.benchmarks_run == 1  # the restart reused the cached result
    assert second.loaded["echo"].benchmark_cached is True
    assert second.offers()[0].throughput == 1000.0

    upgraded = RuntimeRegistry(store=second.store, data_dir=tmp_path, hardware=HW,
                               settings={"echo": {"version": "2.0"}}, entry_points=plugin)
    await upgraded.load()
    assert EchoRuntime.benchmarks_run == 2  # a new runtime version measures again

    retuned = RuntimeRegistry(store=second.store, data_dir=tmp_path, hardware=HW,
                              settings={"echo": {"version": "2.0", "threads": 1}}, entry_points=plugin)
    await retuned.load()
    assert EchoRuntime.benchmarks_run == 3  # so do new settings (threads, context size change throughput)


async def test_runs_and_closes_with_its_owner(tmp_path: Path) -> None:
    import trio

    reg = registry(tmp_path, [ep("echo", "tests.unit.test_runtime_registry:EchoRuntime")])
    async with trio.open_nursery() as nursery:
        await nursery.start(reg.run)
        runtime = reg.loaded["echo"].runtime
        pieces: list[str] = []

        async def collect(partial: Partial) -> None:
            pieces.append(partial.data["text"])

        final = await runtime.run(Task(task_id="t", runtime="echo", payload={"text": "a b c"}), collect)
        assert pieces == ["a", "b", "c"]
        assert final.work_units == 3
        nursery.cancel_scope.cancel()
    assert isinstance(runtime, EchoRuntime)
    assert runtime.closed
    assert reg.loaded == {}


async def test_auto_priced_runtimes_offer_the_price_their_benchmark_earns(tmp_path: Path) -> None:
    for name in ("fixed", "auto"):
        (tmp_path / name).mkdir()
    fixed = registry(tmp_path / "fixed", [ep("echo", "tests.unit.test_runtime_registry:EchoRuntime")])
    auto = registry(tmp_path / "auto", [ep("echo", "tests.unit.test_runtime_registry:EchoRuntime")],
                    auto_priced=("echo",), auto_credits_per_hour=3.6)
    for reg in (fixed, auto):
        await reg.load()
    assert [o.price_per_unit for o in fixed.offers()] == [0.1]
    # 3.6 credits an hour at 1,000 words/s: 3.6 / 3.6e6 = 1e-6 credits per word, in every view of the offer.
    assert [o.price_per_unit for o in auto.offers()] == [pytest.approx(1e-6)]
    assert auto.describe()[0]["offers"][0]["price_per_unit"] == pytest.approx(1e-6)


def test_every_runtime_that_verifies_takes_the_verifier_keywords() -> None:
    """The spot checker calls ``verify(payload, output, evidence, sample=..., chunks=...)`` on any runtime that
    has it (``runtimes.interface.Verifier``): each one, packaged or the demo's, must take both keywords."""
    import inspect

    from hyperion_demo import runtimes as demo_runtimes

    classes = [e.load() for e in entry_points(group=ENTRY_POINT_GROUP)]
    classes += [c for _, c in inspect.getmembers(demo_runtimes, inspect.isclass)
                if c.__module__ == demo_runtimes.__name__]
    verifiers = [c for c in classes if callable(getattr(c, "verify", None))]
    assert len(verifiers) >= 3  # inference, render, the demo's inference
    for cls in verifiers:
        parameters = inspect.signature(cls.verify).parameters
        assert {"sample", "chunks"} <= set(parameters), cls
