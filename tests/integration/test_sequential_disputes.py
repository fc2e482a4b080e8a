"""The sequential test end to end on loopback: a close cheat, condemned by its results together, and a third node
that believes it only on its own re-checks.

C serves a requantization of the packaged model under its name and, in its hash cache, the packaged file's hash
(an operator who edited ``model-hashes.json``): its receipts claim the honest model, and its logits sit close
enough to the honest ones that single checks mostly pass (``FTYPE``, chosen from ``tests/verify/cheaters.py``'s
measurements). A serves the model too, prices its own work high (so its scheduler sends work to C, the cheapest)
and checks every result itself (``verify.budget = 1``); it counts single disputes but acts only on the sequential
test here (``verify.distrust_after_disputes`` high). W serves the model honestly.

A's sequential test condemns C and A publishes an evidence case of the checked work. A then routes to W (so A has
standing at W). When W routes a request of its own, it weighs C: it fetches A's case, checks every result in it
itself, and condemns C by its own sequential test: ``case:<statistic>`` in W's evidence.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hyperion_node.testing.process import NodeProcess, stop_all, wait_until
from runtimes.inference.registry import ModelHashes, ensure_packaged_model
from tests.verify import cheaters

pytestmark = pytest.mark.process

MODEL = "gemma-3-270m-q4_k_m"
FTYPE = ("q5_0", 8)  # llama_ftype; see the module docstring
FAST = ["p2p.mdns=false", "hardware.benchmark_on_start=false", "runtimes.inference.n_ctx=256",
        "runtimes.inference.n_threads=1", 'runtimes.disabled=["zk-groth16", "render-blender"]']


def poisoned_hash_cache(data_dir: Path, model: Path, claimed_sha256: str) -> None:
    """C's hash cache, saying its file is the packaged one (``ModelHashes``'s format)."""
    stat = model.stat()
    store = data_dir / "cache" / "inference" / "model-hashes.json"
    store.parent.mkdir(parents=True, exist_ok=True)
    store.write_text(json.dumps({"format": 1, "files": {str(model.resolve()): {
        "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": claimed_sha256}}}))


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, NodeProcess]]:
    root = tmp_path_factory.mktemp("sequential")
    packaged = ensure_packaged_model(root / "models", ModelHashes(root / "hashes.json")).path
    honest_sha = hashlib.sha256(packaged.read_bytes()).hexdigest()
    cheaters.FTYPES.setdefault(*FTYPE)
    close = cheaters.requantized(packaged, root / "cheat", FTYPE[0])
    poisoned_hash_cache(root / "c", close, honest_sha)
    started: dict[str, NodeProcess] = {}
    try:
        started["w"] = NodeProcess(root / "w", sets=[*FAST, "runtimes.inference.price_per_token=0.00001"]).start()
        boot = f'p2p.bootstrap=["{started["w"].p2p_addr()}"]'
        started["c"] = NodeProcess(root / "c", sets=[*FAST, boot, "runtimes.inference.include_packaged_model=false",
                                                     f'runtimes.inference.models=["{close}"]',
                                                     "runtimes.inference.price_per_token=0.0000001"]).start()
        started["a"] = NodeProcess(root / "a", sets=[*FAST, boot, "runtimes.inference.price_per_token=0.001",
                                                     "verify.budget=1.0", "verify.distrust_after_disputes=1000",
                                                     "scheduler.weights.reliability=0.0",
                                                     "scheduler.weights.price=0.6"]).start()
        for node in started.values():
            wait_until(lambda n=node: next((m["providers"] for m in n.get("/v1/models")["data"] if m["id"] == MODEL),
                                           0) >= 3, timeout=60, what="every node knows the three providers")
        yield started
    finally:
        stop_all(list(started.values()))


def complete(node: NodeProcess, n: int) -> httpx.Response:
    body = {"model": MODEL, "prompt": f"Item {n}: the {n}th word of the list is", "max_tokens": 24, "temperature": 0}
    answer = httpx.post(node.api_url + "/v1/completions", timeout=120,
                        headers={"Authorization": f"Bearer {node.token}"}, json=body)
    assert answer.status_code == 200, answer.text
    return answer


def kinds_of_events(node: NodeProcess) -> set[str]:
    kinds: set[str] = set()
    since = 0
    while page := node.get(f"/api/events?since={since}&limit=1000"):
        kinds.update(e["kind"] for e in page)
        since = page[-1]["id"]
    return kinds


def evidence_of(node: NodeProcess, worker: str) -> dict[str, Any] | None:
    return next((w for w in node.get("/api/verify/evidence")["workers"] if w["worker"] == worker), None)


def test_a_close_cheat_is_condemned_by_its_results_together_and_a_third_node_rechecks_the_case(
        nodes: dict[str, NodeProcess]) -> None:
    a, c, w = nodes["a"], nodes["c"], nodes["w"]
    condemned = None
    for n in range(60):
        complete(a, n)
        found = evidence_of(a, c.peer_id)
        if found is not None and found["condemned"] is not None:
            condemned = found
            break
    assert condemned is not None, evidence_of(a, c.peer_id)
    case = condemned["condemned"]
    assert case["statistic"] != "failed_check"
    assert len(case["checks"]) >= 2  # a dispute of results together, naming the checks it rests on
    wait_until(lambda: "verify.condemned" in kinds_of_events(a), timeout=30, what="A's event of the dispute")

    # A no longer routes to C: its next requests go to W, which gives A standing at W.
    for n in range(3):
        assert complete(a, 100 + n).headers["x-hyperion-worker"] != c.peer_id

    # W routes a request of its own: it weighs C, fetches A's evidence case and re-checks it.
    complete(w, 200)
    wait_until(lambda: (evidence_of(w, c.peer_id) or {}).get("condemned") is not None, timeout=120,
               what="W condemns C on its own re-checks of A's case")
    judged = evidence_of(w, c.peer_id)
    assert judged is not None
    assert judged["condemned"]["statistic"].startswith("case:")
    stats = w.get("/api/tasks/stats")
    assert "evidence_case_confirmed" in json.dumps(stats)
