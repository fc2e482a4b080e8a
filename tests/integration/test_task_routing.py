"""Task routing with real daemons on 127.0.0.1: node A serves no model, B and C serve the packaged Gemma.

The official ``openai`` client talks to A; the completion is generated on B or C and streamed chunk by chunk
over a libp2p stream from the worker to A. Workers are killed before their first token (A fails over) and
after it (the client gets an error, not a shortened answer); more requests than slots get BUSY answers that
A turns into failover or a 503; bad requests get 400/404; no live provider gets a 503 with the reason.

The tests share one network and run in file order: the last one stops the workers.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from hyperion_node.cli.app import app
from hyperion_node.testing.process import NodeProcess, hyperion_executable, stop_all, wait_until

pytestmark = pytest.mark.process

MODEL = "gemma-3-270m-q4_k_m"
FAST = [
    "p2p.mdns=false",
    "p2p.heartbeat_interval_s=0.5",
    "p2p.suspect_after_s=2.0",
    "p2p.dead_after_s=4.0",
    "hardware.benchmark_on_start=false",
    "tasks.queue_depth=0",  # one task per worker at a time: BUSY is reachable with a few requests
]
OFF = '"zk-groth16", "render-blender"'
REQUESTER = [*FAST, f'runtimes.disabled=["inference", {OFF}]']
# Epochs of two receipts, so that the tests see epoch roots published and read too.
# One stream per worker (and no queue, above): BUSY is reachable with a few requests.
WORKER = [*FAST, f"runtimes.disabled=[{OFF}]", "runtimes.inference.n_ctx=1024", "runtimes.inference.max_streams=1",
          "ledger.epoch_receipts=2"]
# ~800 prompt tokens (of the workers' 1,024): on these 2 cores the prompt alone takes seconds, long enough to
# kill a worker inside it.
LONG_PROMPT = "Describe the harbour. " + " ".join(f"Ship {i} carries grain and wool." for i in range(100))


class Network:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.b = NodeProcess(root / "b", sets=WORKER).start()
        bootstrap = f'p2p.bootstrap=["{self.b.p2p_addr()}"]'
        self.c = NodeProcess(root / "c", sets=[*WORKER, bootstrap]).start()
        self.a = NodeProcess(root / "a", sets=[*REQUESTER, bootstrap]).start()
        self.workers = {self.b.peer_id: self.b, self.c.peer_id: self.c}
        self.wait_for_providers(2)

    def client(self, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.a.api_url + "/v1", api_key=self.a.token, **kwargs)

    def providers(self) -> int:
        models = self.a.get("/v1/models")["data"]
        return next((m["providers"] for m in models if m["id"] == MODEL), 0)

    def wait_for_providers(self, count: int) -> None:
        wait_until(lambda: self.providers() >= count and all(
            self.a.peer_state(p) == "alive" for p in self.workers), timeout=60,
            what=f"A knows {count} live providers of {MODEL}")

    def restart(self, node: NodeProcess) -> None:
        """Start a killed worker again on its data dir; it finds the network through its peer cache."""
        node.wait(10)
        node.proc = None
        node.start()
        self.wait_for_providers(2)

    def post(self, path: str, body: Any, **kwargs: Any) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.post(self.a.api_url + path, content=content, timeout=120,
                          headers={"Authorization": f"Bearer {self.a.token}"}, **kwargs)

    def wait_serving(self) -> None:
        """Until a small request succeeds: BUSY answers make A hold off a worker for scheduler.busy_backoff_s."""
        wait_until(lambda: self.post("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 1}
                                     ).status_code == 200, timeout=30, interval=0.5, what="A serves again")

    @contextmanager
    def stream(self, body: dict[str, Any]) -> Iterator[httpx.Response]:
        """A streamed completion, asked again while A answers 503 all-busy, as a client honouring Retry-After
        would: right after a restart a worker can be briefly suspect on these loaded cores."""
        deadline = time.monotonic() + 30
        with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {self.a.token}"}) as client:
            while True:
                with client.stream("POST", self.a.api_url + "/v1/completions", json=body) as answer:
                    if answer.status_code != 503 or time.monotonic() > deadline:
                        yield answer
                        return
                    error = json.loads(answer.read())["error"]
                    if error.get("code") != "all-busy":
                        yield answer
                        return
                    retry_after = float(answer.headers.get("retry-after", "1"))
                time.sleep(min(retry_after, 1.0))  # a poll under the deadline above

    def task(self, task_id: str) -> dict[str, Any]:
        return next(t for t in self.a.get(f"/api/tasks/{task_id}") if t["role"] == "requester")

    def running_task(self) -> dict[str, Any] | None:
        return next((t for t in self.a.get("/api/tasks?limit=5") if t["state"] == "running"), None)

    def stop(self) -> None:
        stop_all([self.a, self.b, self.c])


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    network = Network(tmp_path_factory.mktemp("routing"))
    try:
        yield network
    finally:
        network.stop()


def test_openai_stream_is_generated_on_a_worker_and_settled(net: Network) -> None:
    client = net.client()
    models = [m.id for m in client.models.list().data]
    assert models == [MODEL]
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Name a colour."}],
                                            max_tokens=24, temperature=0, stream=True)
    chunks = list(stream)
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) >= 2, "the answer arrived in several chunks, not in one piece"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    task_id = chunks[0].id.removeprefix("chatcmpl-")
    record = net.task(task_id)
    assert record["state"] == "completed"
    assert record["worker"] in net.workers, "A has no model: the work ran on B or C"
    worker = net.workers[record["worker"]]
    # Both sides hold the countersigned receipt: A spent, the worker earned (settled, not pending).
    receipt_id = record["result"]["receipt_id"]
    wait_until(lambda: worker.get("/api/rewards")["tasks"]["settled"] >= 1, timeout=10,
               what="the worker's receipt is settled by A's countersignature")
    assert net.a.get("/api/rewards")["exact"]["spent"] != "0"
    served = next(t for t in worker.get(f"/api/tasks/{task_id}") if t["role"] == "worker")
    assert served["state"] == "completed"
    assert served["result"]["receipt_id"] == receipt_id


def test_non_streaming_completion_and_chat(net: Network) -> None:
    client = net.client()
    done = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert done.choices[0].text.strip()
    assert done.usage is not None
    assert 1 <= done.usage.completion_tokens <= 8
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hi."}],
                                          max_tokens=8, temperature=0)
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content


def test_cli_submit_streams_tokens_and_tasks_shows_the_worker(net: Network) -> None:
    runner = CliRunner()
    env = {"HYPERION_DATA_DIR": str(net.a.data_dir)}
    result = runner.invoke(app, ["submit", "infer", "--model", MODEL, "--prompt", "The sky is",
                                 "--max-tokens", "6", "--temperature", "0"], env=env)
    assert result.exit_code == 0, result.output
    assert "-> worker" in result.output
    assert "tokens by" in result.output
    listed = runner.invoke(app, ["tasks", "--limit", "1", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    newest = json.loads(listed.output)[0]
    assert newest["state"] == "completed"
    assert newest["worker"] in net.workers
    unknown = runner.invoke(app, ["submit", "infer", "--model", "nope", "--prompt", "x"], env=env)
    assert unknown.exit_code != 0
    assert "no peer" in unknown.output or "not served" in unknown.output or "nope" in unknown.output
    assert "Traceback" not in unknown.output


def test_counterparts_read_each_others_dealings_and_epoch_roots(net: Network) -> None:
    # By now each worker settled receipts for A and closed epochs of two; each signed a summary of its dealings
    # and stored it in the DHT with its epoch root. A read both workers'; a worker read A's, in which A vouches
    # for the other worker: the worker credits it, as far as its own dealings with A go.
    wait_until(lambda: net.a.get("/api/tasks/stats")["requested"].get("epochs_read", 0) >= 1, timeout=90,
               what="A read a worker's epoch root")
    for worker_id, worker in net.workers.items():
        other_id = next(p for p in net.workers if p != worker_id)
        if not worker.get("/api/rewards")["tasks"]["settled"] or not net.workers[other_id].get(
                "/api/rewards")["tasks"]["settled"]:
            continue
        view = wait_until(lambda w=worker, o=other_id: (v := w.get(f"/api/reputation/{o}"))["vouchers"] and v,
                          timeout=90, what=f"{worker_id[-6:]} read A's word for {other_id[-6:]}")
        assert set(view["vouchers"]) == {net.a.peer_id}
        assert view["credited"] > 0


def test_metrics_parse_as_prometheus_text_and_count_the_tasks(net: Network) -> None:
    text = httpx.get(net.a.api_url + "/metrics", timeout=10, headers={"Authorization": f"Bearer {net.a.token}"}).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    done = [s for s in families["hyperion_tasks"].samples
            if s.labels == {"runtime": "inference", "side": "requester", "outcome": "completed"}]
    assert done
    assert done[0].value >= 3
    counts = [s for s in families["hyperion_task_duration_seconds"].samples if s.name.endswith("_count")]
    assert counts
    assert counts[0].value >= 3
    alive = [s.value for s in families["hyperion_peers"].samples if s.labels["state"] == "alive"]
    assert alive == [2]
    receipts = {(s.labels["status"], s.labels["role"]): s.value for s in families["hyperion_receipts"].samples}
    assert receipts[("settled", "requester")] >= 3
    worker = next(iter(net.workers.values()))
    worker_text = httpx.get(worker.api_url + "/metrics", timeout=10,
                            headers={"Authorization": f"Bearer {worker.token}"}).text
    earned = {s.labels["kind"]: s.value for f in text_string_to_metric_families(worker_text)
              if f.name == "hyperion_rewards_credits" for s in f.samples}
    assert set(earned) == {"earned", "pending", "disputed"}


def test_events_replay_in_order_and_follow_new_ones(net: Network) -> None:
    env = {"HYPERION_DATA_DIR": str(net.a.data_dir)}
    replay = CliRunner().invoke(app, ["events", "--kind", "task.", "--json"], env=env)
    assert replay.exit_code == 0, replay.output
    events = [json.loads(line) for line in replay.output.splitlines()]
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    assert {"task.queued", "task.assigned", "task.running", "task.completed"} <= {e["kind"] for e in events}
    follower = subprocess.Popen([hyperion_executable(), "events", "--follow", "--since", str(events[-1]["id"]),
                                 "--kind", "task.completed", "--data-dir", str(net.a.data_dir)],
                                stdout=subprocess.PIPE, text=True)
    try:
        answer = net.post("/v1/completions", {"model": MODEL, "prompt": "Hello", "max_tokens": 2})
        assert answer.status_code == 200
        assert follower.stdout is not None
        seen = follower.stdout.readline()  # blocks until --follow prints the new completion
        assert "task.completed" in seen
        assert answer.headers["x-hyperion-task-id"] in seen
    finally:
        follower.kill()
        follower.wait()


def test_bad_requests_get_clear_errors(net: Network) -> None:
    client = net.client(max_retries=0)
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="no-such-model", prompt="hi", max_tokens=4)
    assert MODEL in str(missing.value), "a 404 lists the models that are served"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model=MODEL, prompt="word " * 3000, max_tokens=4)
    assert "context" in str(too_long.value)
    garbage = net.post("/v1/chat/completions", b"{not json")
    assert garbage.status_code == 400
    assert "JSON" in garbage.json()["error"]["message"]
    no_model = net.post("/v1/completions", {"prompt": "hi"})
    assert no_model.status_code == 400
    assert no_model.json()["error"]["param"] == "model"


def test_more_requests_than_slots_fail_over_or_get_503(net: Network) -> None:
    results: list[tuple[int, dict[str, Any]]] = []

    def ask() -> None:
        response = net.post("/v1/completions", {"model": MODEL, "prompt": "Count: one, two,", "max_tokens": 40,
                                                "temperature": 0})
        results.append((response.status_code, response.json()))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=150)
    assert not any(t.is_alive() for t in threads), "no request hangs"
    codes = sorted(code for code, _ in results)
    assert codes.count(200) >= 2, f"each worker served one: {codes}"
    assert 503 in codes, f"two slots, four requests: the excess is refused ({codes})"
    for code, body in results:
        if code == 503:
            assert "busy" in body["error"]["message"] or body["error"]["code"] == "all-busy"
    tasks = net.a.get("/api/tasks?limit=4")
    assert any(a["outcome"] == "busy" for t in tasks for a in t["attempts"]), "a BUSY answer was seen"
    assert any(t["state"] == "completed" and len(t["attempts"]) >= 2 for t in tasks) or codes.count(200) == 2


def test_worker_killed_before_first_token_fails_over(net: Network) -> None:
    net.wait_serving()
    outcome: dict[str, Any] = {}

    def ask() -> None:
        try:
            outcome["answer"] = net.client(max_retries=0).completions.create(
                model=MODEL, prompt=LONG_PROMPT, max_tokens=4, temperature=0)
        except openai.APIError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=ask)
    thread.start()
    running = wait_until(lambda: outcome or net.running_task(), timeout=30, what="A's task is accepted by a worker")
    assert not outcome, f"the request ended before a worker was killed: {outcome}"
    victim = net.workers[running["worker"]]
    victim.signal(signal.SIGKILL)  # still inside the long prompt: no token has been generated
    thread.join(timeout=120)
    assert "error" not in outcome, f"A should have failed over: {outcome.get('error')!r}"
    assert outcome["answer"].choices[0].text is not None
    record = net.task(running["task_id"])
    assert record["state"] == "completed"
    assert next(a["peer_id"] for a in record["attempts"]) == running["worker"]
    assert record["attempts"][0]["outcome"] in ("unreachable", "failed")
    assert record["worker"] != running["worker"]
    assert record["attempts"][-1]["outcome"] == "success"
    net.restart(victim)


def test_worker_killed_after_tokens_started_is_an_error(net: Network) -> None:
    net.wait_serving()
    stream = net.client(max_retries=0).completions.create(model=MODEL, prompt="Once upon a time",
                                                          max_tokens=300, temperature=0, stream=True)
    pieces: list[str] = []
    killed: list[NodeProcess] = []

    def read_until_killed() -> None:
        for chunk in stream:
            pieces.append(chunk.choices[0].text)
            if len(pieces) == 3:
                running = net.running_task()
                assert running is not None
                killed.append(net.workers[running["worker"]])
                killed[0].signal(signal.SIGKILL)

    with pytest.raises(openai.APIError) as failed:
        read_until_killed()
    assert len(pieces) >= 3, "tokens had started"
    assert "failed after its output had started" in str(failed.value)
    net.restart(killed[0])


def test_client_going_away_frees_the_worker_slot(net: Network) -> None:
    net.wait_serving()  # the last test killed and restarted a worker
    body = {"model": MODEL, "prompt": "Tell a long story.", "max_tokens": 400, "stream": True}
    with net.stream(body) as answer:
        assert answer.status_code == 200, f"{answer.status_code}: {answer.read().decode()}"
        worker = net.workers[answer.headers["x-hyperion-worker"]]
        task_id = answer.headers["x-hyperion-task-id"]
        for n, _line in enumerate(answer.iter_lines()):
            if n >= 6:
                break
    wait_until(lambda: [t["state"] for t in worker.get(f"/api/tasks/{task_id}")] == ["cancelled"], timeout=10,
               what="the worker cancels the task when A's client goes away")
    assert worker.get("/api/tasks/stats")["running"] == 0, "the slot is free again"


def test_no_live_provider_is_503_with_the_reason(net: Network) -> None:
    for worker in net.workers.values():
        worker.stop()  # they announce that they leave: A marks them left at once
    wait_until(lambda: all(net.a.peer_state(p) in ("left", "dead") for p in net.workers), timeout=15,
               what="A sees both workers gone")
    answer = net.post("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 4})
    assert answer.status_code == 503
    assert "no-provider" in answer.json()["error"]["code"]
