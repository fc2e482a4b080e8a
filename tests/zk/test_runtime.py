"""The zk-groth16 runtime through the Runtime protocol: real worker processes, real keys."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from hyperion_node.errors import ConfigError
from hyperion_node.testing.process import pid_alive
from runtimes.interface import HardwareSummary, Partial, Runtime, RuntimeContext, Task
from runtimes.zk import Groth16Runtime, check_final
from runtimes.zk.exceptions import MalformedInput
from runtimes.zk.verifier import load_json, parse_verifying_key
from tests.zk.conftest import Circuit, snarkjs_verify

HW = HardwareSummary(cpu_model="test cpu", cpu_cores=2, ram_total_bytes=8 << 30, ram_available_bytes=4 << 30)


@asynccontextmanager
async def started(tmp_path: Path, **settings: Any) -> AsyncIterator[Groth16Runtime]:
    runtime = Groth16Runtime(RuntimeContext(data_dir=tmp_path, cache_dir=tmp_path, settings=settings, hardware=HW))
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.aclose()


async def test_benchmark_offer_and_estimate(chain: Circuit, tmp_path: Path) -> None:
    async with started(tmp_path, workers=2, benchmark_power=6, max_constraints=50) as runtime:
        assert isinstance(runtime, Runtime)
        result = await runtime.benchmark()
        assert result.unit == "constraint"
        assert result.details["constraints"] == 62  # Chain(61): 2^6 rows less one for the public signal and one
        assert result.throughput > 0
        [offer] = runtime.offers(result)
        assert (offer.runtime, offer.unit, offer.capacity, offer.throughput) == (
            "zk-groth16", "constraint", 1, result.throughput,
        )  # fmt: skip
        assert offer.details["max_constraints"] == 50
        estimate = runtime.estimate(Task("t", "zk-groth16", {"zkey_path": str(chain.zkey), "wtns_path": "w"}))
        assert not estimate.accepted
        assert "101 constraints is over this node's limit of 50" in estimate.reason
        bad = runtime.estimate(Task("t", "zk-groth16", {"zkey": b"junk", "wtns_path": "w"}))
        assert not bad.accepted
        assert "too short for a .zkey" in bad.reason


async def test_run_proves_verifies_and_reports_progress(chain: Circuit, tmp_path: Path) -> None:
    async with started(tmp_path, workers=2) as runtime:
        task = Task("t", "zk-groth16", {"zkey": chain.zkey.read_bytes(), "wtns_path": str(chain.wtns)})
        estimate = runtime.estimate(task)
        assert (estimate.accepted, estimate.work_units) == (True, 101.0)
        partials: list[Partial] = []

        async def emit(partial: Partial) -> None:
            partials.append(partial)

        final = await runtime.run(task, emit)
        assert final.work_units == 101.0
        assert partials
        assert partials[-1].data["progress"] == 1.0
        assert final.evidence["public_signals"] == final.output["public"]
        assert final.output["public"] == json.loads(chain.snarkjs_public.read_text())
        vk = parse_verifying_key(load_json(chain.vk, label="vk"))
        assert check_final(vk, final.output, final.evidence)
        forged = {**final.evidence, "public_signals": ["1", "3"]}
        assert not check_final(vk, final.output, forged)
        (tmp_path / "proof.json").write_text(json.dumps(final.output["proof"]))
        (tmp_path / "public.json").write_text(json.dumps(final.output["public"]))
        assert snarkjs_verify(chain.vk, tmp_path / "public.json", tmp_path / "proof.json")


async def test_run_from_wasm_and_input(chain: Circuit, tmp_path: Path) -> None:
    pytest.importorskip("wasmtime", reason="wasmtime is optional")
    async with started(tmp_path, workers=1) as runtime:
        payload = {"zkey_path": str(chain.zkey), "wasm_path": str(chain.wasm), "input": {"x": 3, "secret": 11}}
        final = await runtime.run(Task("t", "zk-groth16", payload), _discard)
        assert final.output["public"] == json.loads(chain.snarkjs_public.read_text())
        with pytest.raises(MalformedInput, match="needs 'input'"):
            await runtime.run(Task("t", "zk-groth16", {"zkey_path": str(chain.zkey), "wasm_path": "x"}), _discard)


async def test_cancellation_kills_the_workers_and_the_next_task_runs(chain: Circuit, tmp_path: Path) -> None:
    async with started(tmp_path, workers=2) as runtime:
        pids = [w.process.pid for w in runtime._pool._workers]
        task = Task("t", "zk-groth16", {"zkey_path": str(chain.zkey), "wtns_path": str(chain.wtns)})
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                first_progress = trio.Event()

                async def emit(partial: Partial) -> None:
                    first_progress.set()

                nursery.start_soon(runtime.run, task, emit)
                await first_progress.wait()  # proving has started in the workers
                nursery.cancel_scope.cancel()
        assert not any(pid_alive(pid) for pid in pids if pid is not None)
        final = await runtime.run(task, _discard)  # new workers start on demand
        assert final.work_units == 101.0


async def test_aclose_stops_idle_workers(tmp_path: Path) -> None:
    async with started(tmp_path, workers=2) as runtime:
        pids = [w.process.pid for w in runtime._pool._workers]
        assert all(pid_alive(pid) for pid in pids)
    assert not any(pid_alive(pid) for pid in pids)  # aclose waited for them: reaped, not zombies


def test_bad_settings_name_the_key(tmp_path: Path) -> None:
    for settings, key in (({"workers": -1}, "workers"), ({"backend": "fast"}, "backend"), ({"nope": 1}, "nope")):
        with pytest.raises(ConfigError, match=key):
            Groth16Runtime(RuntimeContext(data_dir=tmp_path, cache_dir=tmp_path, settings=settings, hardware=HW))


async def _discard(partial: Partial) -> None:
    del partial
