"""Loads the runtimes installed as ``hyperion.runtimes`` entry points and keeps them for the daemon.

A runtime is third-party code as far as the core is concerned: one that fails to import, to construct or
to start is reported (log, ``status``, event) and skipped, and the node carries on with the others.
Benchmarks are cached in the store by (hardware fingerprint, runtime name, runtime version and settings), so a
restart on the same machine with the same settings does not benchmark again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

import structlog
import trio

from hyperion_node.ledger.rewards import price_offers
from hyperion_node.store import Store
from hyperion_node.trio_types import TaskStatus
from runtimes.interface import BenchmarkResult, HardwareSummary, Offer, Runtime, RuntimeContext, Tally, Verifier

ENTRY_POINT_GROUP = "hyperion.runtimes"
log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class RuntimeFailure:
    name: str
    stage: str  # "load", "start" or "benchmark"
    error: str


@dataclass
class LoadedRuntime:
    runtime: Runtime
    benchmark: BenchmarkResult | None
    benchmark_cached: bool

    def offers(self) -> list[Offer]:
        return self.runtime.offers(self.benchmark)


@dataclass
class RuntimeRegistry:
    """The runtimes this node runs. A trio component: ``run`` loads and benchmarks them, then holds them
    until cancelled and closes them on the way out."""

    store: Store
    data_dir: Path
    hardware: HardwareSummary
    settings: Mapping[str, Mapping[str, Any]]
    disabled: tuple[str, ...] = ()
    benchmark_on_start: bool = True
    entry_points: Iterable[EntryPoint] | None = None  # injected by tests; None: the installed ones
    # Runtimes priced from their cached benchmark ("pricing.auto") and what an hour of their work should earn.
    auto_priced: tuple[str, ...] = ()
    auto_credits_per_hour: float = 1.0
    loaded: dict[str, LoadedRuntime] = field(default_factory=dict)
    failures: list[RuntimeFailure] = field(default_factory=list)
    # The operator's live controls (hyperion_node/control.py): a draining node offers nothing; a runtime switched
    # off offers nothing; a price set here replaces the configured or automatic one. offers() applies them, so
    # adverts, admission and receipts follow at once.
    draining: bool = False
    switched_off: set[str] = field(default_factory=set)
    prices: dict[str, float] = field(default_factory=dict)
    _factories: dict[str, Any] = field(default_factory=dict)  # entry point name -> what it names, once loaded

    def _entry_points(self) -> list[EntryPoint]:
        if self.entry_points is not None:
            return list(self.entry_points)
        return sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)

    def _fail(self, name: str, stage: str, exc: BaseException) -> None:
        failure = RuntimeFailure(name=name, stage=stage, error=f"{type(exc).__name__}: {exc}")
        self.failures.append(failure)
        log.warning("runtime_skipped", runtime=name, stage=stage, error=failure.error)
        self.store.append_event("runtime.skipped", dataclasses.asdict(failure))

    async def load(self) -> None:
        for ep in self._entry_points():
            if ep.name in self.disabled:
                log.info("runtime_disabled", runtime=ep.name)
                continue
            context = RuntimeContext(
                data_dir=self.data_dir,
                cache_dir=self.data_dir / "cache" / ep.name,
                settings=self.settings.get(ep.name, {}),
                hardware=self.hardware,
            )
            context.cache_dir.mkdir(parents=True, exist_ok=True)
            # A plugin is foreign code: any failure to load or start it is reported and skipped,
            # never fatal to the node. Cancellation is not an Exception and still propagates.
            try:
                runtime = ep.load()(context)
            except Exception as exc:
                self._fail(ep.name, "load", exc)
                continue
            try:
                await runtime.start()
            except Exception as exc:
                self._fail(ep.name, "start", exc)
                await runtime.aclose()
                continue
            benchmark, cached = await self._benchmark(ep.name, runtime)
            self.loaded[runtime.name] = LoadedRuntime(runtime, benchmark, cached)
            log.info("runtime_ready", runtime=runtime.name, version=runtime.version,
                     throughput=benchmark.throughput if benchmark else None, benchmark_cached=cached)

    async def _benchmark(self, name: str, runtime: Runtime) -> tuple[BenchmarkResult | None, bool]:
        # The runtime's settings are part of the key: threads, context size or slots change the throughput.
        settings = json.dumps(self.settings.get(name, {}), sort_keys=True, default=str)
        settings_digest = hashlib.sha256(settings.encode()).hexdigest()[:16]
        key = (self.hardware.fingerprint, runtime.name, f"{runtime.version}+settings.{settings_digest}")
        cached = await self.store.run(self.store.cached_benchmark, *key)
        if cached is not None:
            return BenchmarkResult(**cached), True
        if not self.benchmark_on_start:
            return None, False
        started = time.monotonic()
        try:
            result = await runtime.benchmark()
        except Exception as exc:
            self._fail(name, "benchmark", exc)
            return None, False
        log.info("runtime_benchmarked", runtime=runtime.name, seconds=round(time.monotonic() - started, 3))
        await self.store.run(self.store.save_benchmark, *key, dataclasses.asdict(result))
        return result, False

    async def aclose(self) -> None:
        for loaded in self.loaded.values():
            with trio.CancelScope(shield=True):
                await loaded.runtime.aclose()
        self.loaded.clear()

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self.load()
            task_status.started()
            await trio.sleep_forever()
        finally:
            await self.aclose()

    def _factory(self, runtime: str) -> Any:
        """The runtime's factory (usually its class), loaded from its entry point if it is not running here;
        None when it is not installed or cannot be loaded."""
        factory = self._factories.get(runtime)
        if factory is None:
            ep = next((e for e in self._entry_points() if e.name == runtime), None)
            if ep is None:
                return None
            try:
                factory = ep.load()
            except Exception as exc:  # foreign code (module docstring): reported, never fatal
                log.warning("runtime_not_loadable", runtime=runtime, error=f"{type(exc).__name__}: {exc}")
                return None
            self._factories[runtime] = factory
        return factory

    def tally(self, runtime: str, payload: Mapping[str, Any]) -> Tally | None:
        """The runtime's count of one result (``runtimes.interface.Tally``), for checking a peer's bill; None
        when the runtime is not installed or its factory offers none. Works for runtimes that are disabled
        or did not start here: a requester checks bills for work it does not serve itself."""
        make = getattr(self._factory(runtime), "tally", None)
        return None if make is None else make(payload)

    def result_check(self, runtime: str) -> Callable[[Mapping[str, Any], Mapping[str, Any], Mapping[str, Any]],
                                                       str] | None:
        """The runtime's cheap check of a result (``check_result`` on its class: ``runtimes.interface``),
        usable whether or not the runtime runs here; None when it has none."""
        check = getattr(self._factory(runtime), "check_result", None)
        return check if callable(check) else None

    def check_share(self, runtime: str, payload: Mapping[str, Any], output: Mapping[str, Any]) -> float:
        """What a spot check of this result costs as a share of its work (``check_share`` on the runtime's
        class, ``runtimes.interface``); 1.0 for a runtime that does not say."""
        share = getattr(self._factory(runtime), "check_share", None)
        if not callable(share):
            return 1.0
        value = float(share(payload, output))
        return value if 0.0 < value <= 1.0 else 1.0

    def check_scores(self, runtime: str, details: Mapping[str, Any]) -> dict[str, float]:
        """A spot check's statistics as scores for the evidence over many results (``check_scores`` on the
        runtime's class); empty for a runtime that has none."""
        scores = getattr(self._factory(runtime), "check_scores", None)
        return {str(k): float(v) for k, v in scores(details).items()} if callable(scores) else {}

    def verifier(self, runtime: str) -> Verifier | None:
        """The running runtime, when it can spot-check another worker's result (``runtimes.interface.Verifier``)."""
        loaded = self.loaded.get(runtime)
        return loaded.runtime if loaded is not None and isinstance(loaded.runtime, Verifier) else None

    def checkable(self, runtime: str) -> bool:
        """Whether results of ``runtime`` can be checked for less than the work: by its cheap check anywhere,
        or by a spot check where a node runs it."""
        factory = self._factory(runtime)
        return factory is not None and (callable(getattr(factory, "check_result", None))
                                        or callable(getattr(factory, "verify", None)))

    def offers(self) -> list[Offer]:
        """What this node offers, priced as advertised (auto prices filled in): the one source for adverts,
        admission and receipts."""
        if self.draining:
            return []
        offers = [offer for name, loaded in self.loaded.items() if name not in self.switched_off
                  for offer in loaded.offers()]
        priced = price_offers(offers, auto_runtimes=self.auto_priced, credits_per_hour=self.auto_credits_per_hour)
        return [dataclasses.replace(o, price_per_unit=self.prices[o.runtime]) if o.runtime in self.prices else o
                for o in priced]

    def closed(self, runtime: str) -> str | None:
        """Why this node takes no new task of ``runtime`` now (the operator's controls), or None."""
        if self.draining:
            return "this node is draining: it finishes its running work and takes no new work"
        if runtime in self.switched_off:
            return f"the operator of this node has switched the {runtime} runtime off"
        return None

    def shared_files(self) -> list[tuple[str, str, Path]]:
        """(runtime, item, file) for each file a running runtime serves that peers may fetch over
        ``/hyperion/blob/1`` (a runtime with a ``shared_files()`` method: the inference runtime's models)."""
        files: list[tuple[str, str, Path]] = []
        for name, loaded in self.loaded.items():
            shared = getattr(loaded.runtime, "shared_files", None)
            if callable(shared):
                files += [(name, item, Path(path)) for item, path in shared().items()]
        return files

    def describe(self) -> list[dict[str, Any]]:
        """Per runtime: name, version, benchmark and offers; failures too. For ``status`` and the API."""
        described: list[dict[str, Any]] = [
            {
                "name": name,
                "version": loaded.runtime.version,
                "state": "switched off" if name in self.switched_off else "draining" if self.draining else "ready",
                "benchmark": dataclasses.asdict(loaded.benchmark) if loaded.benchmark else None,
                "benchmark_cached": loaded.benchmark_cached,
                "offers": [dataclasses.asdict(offer) for offer in self.offers() if offer.runtime == name],
            }
            for name, loaded in self.loaded.items()
        ]
        described += [
            {"name": f.name, "state": f"failed at {f.stage}", "error": f.error} for f in self.failures
        ]
        return described
