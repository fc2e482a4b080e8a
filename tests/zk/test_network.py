"""`hyperion-node submit zk` through a real two-node network: A has no prover, B proves; A verifies the proof
before countersigning, and snarkjs accepts what A wrote. A peer may not make a worker read its files."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from hyperion_node.cli.app import app
from hyperion_node.testing.process import NodeProcess, wait_until
from tests.zk.conftest import Circuit, snarkjs_verify

pytestmark = pytest.mark.process

FAST = ["p2p.mdns=false", "p2p.heartbeat_interval_s=0.5", "p2p.suspect_after_s=2.0", "p2p.dead_after_s=4.0",
        "hardware.benchmark_on_start=false"]


def asker_and_prover(root: Path, *asker_sets: str) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    """A (no prover, ``asker_sets`` added) bootstrapped to B (the prover), once A knows B's offer."""
    prover = NodeProcess(root / "b", sets=[*FAST, 'runtimes.disabled=["inference", "render-blender"]']).start()
    asker = NodeProcess(root / "a", sets=[*FAST, 'runtimes.disabled=["inference", "zk-groth16", "render-blender"]',
                                          f'p2p.bootstrap=["{prover.p2p_addr()}"]', *asker_sets]).start()
    try:
        wait_until(lambda: any(o["runtime"] == "zk-groth16" for p in asker.get("/api/peers") for o in p["offers"]
                               if p["state"] == "alive"), timeout=60, what="A knows B's Groth16 offer")
        yield asker, prover
    finally:
        asker.stop()
        prover.stop()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    yield from asker_and_prover(tmp_path_factory.mktemp("zknet"))


def test_submit_zk_proves_on_a_peer_and_snarkjs_accepts_it(pair: tuple[NodeProcess, NodeProcess], chain: Circuit,
                                                           tmp_path: Path) -> None:
    asker, prover = pair
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["submit", "zk", "--zkey", str(chain.zkey), "--wtns", str(chain.wtns),
                                      "--out", str(out)], env={"HYPERION_DATA_DIR": str(asker.data_dir)})
    assert result.exit_code == 0, result.output
    assert "verified" in result.output
    assert snarkjs_verify(chain.vk, out / "public.json", out / "proof.json")
    newest = asker.get("/api/tasks?limit=1")[0]
    assert newest["state"] == "completed"
    assert newest["worker"] == prover.peer_id
    assert prover.get("/api/rewards")["runtimes"]["zk-groth16"]["units"] > 0


def test_a_peer_cannot_make_the_worker_read_a_file(pair: tuple[NodeProcess, NodeProcess], chain: Circuit) -> None:
    asker, _prover = pair
    body = {"runtime": "zk-groth16", "item": "groth16-bn254", "timeout_s": 60,
            "payload": {"zkey_path": str(chain.zkey)},
            "payload_b64": {"wtns": base64.b64encode(chain.wtns.read_bytes()).decode()}}
    answer = httpx.post(asker.api_url + "/api/tasks", content=json.dumps(body), timeout=60,
                        headers={"Authorization": f"Bearer {asker.token}"})
    assert answer.status_code == 400
    assert "name files" in answer.json()["message"]


async def test_the_requester_refuses_a_proof_that_does_not_verify(chain: Circuit, tmp_path: Path) -> None:
    """Through the registry, as a requester that does not run the ZK runtime checks a worker's proof: the
    runtime's class offers the check (``check_result``), found by the runtime's name alone."""
    from hyperion_node.runtime_registry import RuntimeRegistry
    from hyperion_node.store import Store
    from hyperion_node.tasks.checks import ResultRejected, check_result
    from runtimes.interface import HardwareSummary
    from runtimes.zk.runtime import proof_sha256

    hardware = HardwareSummary(cpu_model="test cpu", cpu_cores=2, ram_total_bytes=2**30, ram_available_bytes=2**29)
    registry = RuntimeRegistry(store=Store.open(tmp_path / "node.db"), data_dir=tmp_path, hardware=hardware,
                               settings={}, disabled=("zk-groth16", "inference", "render-blender"))
    assert registry.checkable("zk-groth16")
    assert "zk-groth16" not in registry.loaded
    proof = json.loads(chain.snarkjs_proof.read_text())
    public = json.loads(chain.snarkjs_public.read_text())
    payload = {"zkey": chain.zkey.read_bytes()}
    evidence = {"proof_sha256": proof_sha256(proof), "public_signals": public}
    # Key order as canonical CBOR delivers it: the check does not depend on it.
    await check_result(registry, "zk-groth16", payload, {"proof": dict(sorted(proof.items())), "public": public},
                       evidence)
    forged = [str(int(public[0]) + 1), *public[1:]]
    with pytest.raises(ResultRejected, match="does not verify"):
        await check_result(registry, "zk-groth16", payload, {"proof": proof, "public": forged},
                           {**evidence, "public_signals": forged})
    with pytest.raises(ResultRejected, match="proving key bytes"):
        await check_result(registry, "zk-groth16", {"zkey_path": str(chain.zkey)},
                           {"proof": proof, "public": public}, evidence)


@pytest.fixture(scope="module")
def by_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    """A requester that sends every payload field over 1 KiB by address (the default is 1 MiB: the test
    circuit's key is smaller than that)."""
    yield from asker_and_prover(tmp_path_factory.mktemp("zkblob"), "blobs.inline_max_bytes=1024")


def test_a_proving_key_goes_by_address_once_and_serves_every_task_that_names_it(
        by_address: tuple[NodeProcess, NodeProcess], chain: Circuit, tmp_path: Path) -> None:
    asker, prover = by_address
    for n in range(2):
        out = tmp_path / f"out{n}"
        result = CliRunner().invoke(app, ["submit", "zk", "--zkey", str(chain.zkey), "--wtns", str(chain.wtns),
                                          "--out", str(out)], env={"HYPERION_DATA_DIR": str(asker.data_dir)})
        assert result.exit_code == 0, result.output
        assert snarkjs_verify(chain.vk, out / "public.json", out / "proof.json")
        assert asker.get("/api/tasks?limit=1")[0]["worker"] == prover.peer_id
    sent, fetched = asker.get("/api/status")["blobs"]["stats"], prover.get("/api/status")["blobs"]["stats"]
    assert sent.get("inputs_offered", 0) >= 2, sent  # each task named its key (and witness) by address
    zkey_size = chain.zkey.stat().st_size
    # The first task's fields were fetched; the second task's key came from B's cache.
    assert fetched.get("inputs_cached", 0) >= 1, fetched
    assert fetched.get("fetched_bytes", 0) < 2 * zkey_size, fetched
    cached = {p.name: p.stat().st_size for p in (prover.data_dir / "blobs" / "cache").iterdir()}
    assert zkey_size in cached.values(), cached
