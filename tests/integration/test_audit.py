"""`hyperion-node audit` on real daemons: requester A (which runs the inference runtime but is drained, so it asks
the network) checks its own results itself. W serves the packaged model honestly; C serves it requantized to
Q2_K under the same id (``tests/verify/cheaters.py``). A's audit of W's result holds, of C's does not, each with
the check's statistics, and a task A does not hold is refused in one line.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import httpx
import pytest

from hyperion_node.testing.process import NodeProcess, hyperion_executable, stop_all, wait_until
from runtimes.inference.registry import ModelHashes, ensure_packaged_model
from tests.verify.cheaters import requantized

pytestmark = pytest.mark.process

MODEL = "gemma-3-270m-q4_k_m"
FAST = ["p2p.mdns=false", "hardware.benchmark_on_start=false", "runtimes.inference.n_ctx=256",
        "runtimes.inference.n_threads=1", 'runtimes.disabled=["zk-groth16", "render-blender"]']


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, NodeProcess]]:
    root = tmp_path_factory.mktemp("audit")
    packaged = ensure_packaged_model(root / "models", ModelHashes(root / "hashes.json")).path
    cheap = requantized(packaged, root / "cheat", "q2_k")
    started: dict[str, NodeProcess] = {}
    try:
        started["w"] = NodeProcess(root / "w", sets=FAST).start()
        boot = f'p2p.bootstrap=["{started["w"].p2p_addr()}"]'
        started["c"] = NodeProcess(root / "c", sets=[*FAST, boot, "runtimes.inference.include_packaged_model=false",
                                                     f'runtimes.inference.models=["{cheap}"]']).start()
        started["a"] = NodeProcess(root / "a", sets=[*FAST, boot, "verify.budget=0"]).start()
        drained = cli(started["a"], "drain", "--reason", "asks the network, audits what it gets")
        assert drained.returncode == 0, drained.stderr
        wait_until(lambda: next((m["providers"] for m in started["a"].get("/v1/models")["data"] if m["id"] == MODEL),
                                0) >= 2, timeout=60, what="A knows W and C")
        yield started
    finally:
        stop_all(list(started.values()))


def cli(node: NodeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([hyperion_executable(), *args, "--data-dir", str(node.data_dir)], capture_output=True,
                          text=True, timeout=300)


def test_audit_holds_for_honest_work_and_not_for_a_cheaters(nodes: dict[str, NodeProcess]) -> None:
    a = nodes["a"]
    by_worker: dict[str, str] = {}
    for n in range(12):
        answer = httpx.post(a.api_url + "/v1/completions", timeout=120, headers={"Authorization": f"Bearer {a.token}"},
                            json={"model": MODEL, "prompt": f"{n}, {n + 1}, {n + 2},", "max_tokens": 24,
                                  "temperature": 0})
        assert answer.status_code == 200, answer.text
        by_worker.setdefault(answer.headers["x-hyperion-worker"], answer.headers["x-hyperion-task-id"])
        if len(by_worker) == 2:
            break
    assert set(by_worker) == {nodes["w"].peer_id, nodes["c"].peer_id}, by_worker

    honest = cli(a, "audit", by_worker[nodes["w"].peer_id], "--json")
    assert honest.returncode == 0, honest.stderr
    verdict = json.loads(honest.stdout)
    assert (verdict["ok"], verdict["worker"]) == (True, nodes["w"].peer_id)
    assert verdict["statistics"]["positions"] >= 1  # every position the check read, with its figures
    # ... its scores, and this node's evidence on W after it: one check, which scores a greedy claim's figures
    assert set(verdict["scores"]) == {"values", "greedy_gaps"}, verdict["scores"]
    assert (verdict["evidence"]["checks"], verdict["evidence"]["failed"]) == (1, 0)
    assert verdict["evidence"]["drift"] < 0.5
    assert verdict["evidence"]["condemned"] is None
    shown = cli(a, "audit", by_worker[nodes["w"].peer_id])
    assert "the result holds" in shown.stdout

    cheated = cli(a, "audit", by_worker[nodes["c"].peer_id])
    assert cheated.returncode == 1, cheated.stdout + cheated.stderr
    assert "does NOT hold" in cheated.stdout
    # C's evidence names its own file (another hash); one that claimed the honest file's hash would meet the logit
    # check instead (tests/verify/test_verify_inference.py).
    assert any(why in cheated.stdout for why in ("model_sha256", "quantization", "logits")), cheated.stdout
    events = [e for e in a.get("/api/events?limit=1000") if e["kind"] == "verify.audit"]
    assert [e["data"]["ok"] for e in events] == [True, True, False]
    book = {(w["worker"], w["item"]): w for w in a.get("/api/verify/evidence")["workers"]}
    assert (book[(nodes["w"].peer_id, MODEL)]["checks"], book[(nodes["w"].peer_id, MODEL)]["failed"]) == (2, 0)
    assert (book[(nodes["c"].peer_id, MODEL)]["checks"], book[(nodes["c"].peer_id, MODEL)]["failed"]) == (1, 1)
    assert a.get("/api/verify/evidence")["sampling"]["budget"] == 0.0  # A samples nothing: these were audits

    unknown = cli(a, "audit", "no-such-task")
    assert unknown.returncode != 0
    assert "no recent result of task 'no-such-task'" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_audit_through_the_api(nodes: dict[str, NodeProcess]) -> None:
    a = nodes["a"]
    answer = httpx.post(a.api_url + "/api/tasks/no-such-task/audit", headers={"Authorization": f"Bearer {a.token}"})
    assert answer.status_code == 404
    assert "no recent result" in answer.json()["error"]
