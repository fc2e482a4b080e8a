"""Routing policies on a real gateway G in front of a real worker W that serves two models: the packaged Gemma
and the same file under another name (``tiny-270m-q4_k_m``), standing in for a candidate model.

A canary at 25 % sends 20-30 of 100 requests to the candidate; a shadow runs a share of requests on another
model, answers from the primary and records agreement and latency; an A/B split is sticky per user; an SLA
missed (W stopped for 2.5 s under two requests) switches the alias to its degraded model and back; a routing
file with a mistake is refused with its line at reload, and the policies in force stay.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hyperion_node.testing.process import NodeProcess, hyperion_executable, stop_all, wait_until

pytestmark = pytest.mark.process

MODEL = "gemma-3-270m-q4_k_m"
CANDIDATE = "tiny-270m-q4_k_m"
FAST = ["p2p.mdns=false", "hardware.benchmark_on_start=false"]
OFF = '"zk-groth16", "render-blender"'
POLICIES = f"""
[aliases.chat]
model = "{MODEL}"
canary = {{ model = "{CANDIDATE}", percent = 25 }}
shadow = {{ model = "{CANDIDATE}", percent = 10 }}

[aliases.assistant]
model = "{MODEL}"
ab = {{ model = "{CANDIDATE}", percent = 50 }}

[aliases.fast]
model = "{MODEL}"
sla = {{ ttft_p95_ms = 1500, window_s = 8, min_requests = 3, degraded = "{CANDIDATE}" }}
"""


class Network:
    def __init__(self, root: Path, cache: Path) -> None:
        candidate = root / f"{CANDIDATE}.gguf"
        os.link(cache / "models" / f"{MODEL}.gguf", candidate)  # the same weights under another model id
        self.w = NodeProcess(root / "w", sets=[
            *FAST, f"runtimes.disabled=[{OFF}]", "runtimes.inference.n_ctx=256", "runtimes.inference.n_threads=1",
            "runtimes.inference.max_loaded_models=2", f'runtimes.inference.models=["{candidate}"]']).start()
        (root / "g").mkdir()
        (root / "g" / "routing.toml").write_text(POLICIES)
        self.g = NodeProcess(root / "g", sets=[*FAST, f'runtimes.disabled=["inference", {OFF}]',
                                               'api.routing_file="routing.toml"',
                                               f'p2p.bootstrap=["{self.w.p2p_addr()}"]']).start()
        wait_until(lambda: {MODEL, CANDIDATE} <= {m["id"] for m in self.g.get("/v1/models")["data"]}, timeout=60,
                   what="G knows W's two models")

    def chat(self, model: str, user: str | None = None) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0}
        if user:
            body["user"] = user
        return httpx.post(self.g.api_url + "/v1/chat/completions", json=body, timeout=120,
                          headers={"Authorization": f"Bearer {self.g.token}"})

    def metrics(self) -> str:
        return httpx.get(self.g.api_url + "/metrics", headers={"Authorization": f"Bearer {self.g.token}"}).text


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, inference_cache_dir: Path) -> Iterator[Network]:
    network = Network(tmp_path_factory.mktemp("routing"), inference_cache_dir)
    try:
        yield network
    finally:
        stop_all([network.g, network.w])


def arm(answer: httpx.Response) -> str:
    assert answer.status_code == 200, answer.text
    found = re.search(r"arm=(\w+)", answer.headers["x-hyperion-route"])
    assert found is not None
    return found.group(1)


def test_a_canary_takes_its_share_and_a_shadow_records_agreement(net: Network) -> None:
    assert "chat" in {m["id"] for m in net.g.get("/v1/models")["data"]}  # aliases are listed as models
    arms = Counter(arm(net.chat("chat")) for _ in range(100))
    assert 20 <= arms["canary"] <= 30, arms
    assert arms["primary"] == 100 - arms["canary"]
    served = net.chat("chat")
    assert served.json()["model"] == (CANDIDATE if arm(served) == "canary" else MODEL)  # the model that served
    arms[arm(served)] += 1

    def shadows() -> int:
        found = re.findall(r'hyperion_routing_shadow_total\{alias="chat",outcome="\w+"\} (\S+)', net.metrics())
        return sum(int(float(n)) for n in found)

    wait_until(lambda: shadows() >= 10, timeout=60, what="the shadow runs of 101 requests at 10 %")
    text = net.metrics()
    agreed = re.search(r'hyperion_routing_shadow_total\{alias="chat",outcome="agreed"\} (\S+)', text)
    assert agreed is not None, text  # the same weights, greedy: the shadow agrees with the primary
    assert 'hyperion_routing_shadow_latency_seconds_count{alias="chat"}' in text
    assert 'hyperion_routing_requests_total{alias="chat",arm="canary",outcome="ok"}' in text
    assert 'hyperion_routing_latency_seconds_bucket{alias="chat",arm="primary"' in text
    shown = net.g.get("/api/dashboard")["routing"]["chat"]  # what the web dashboard's Routing panel draws
    assert shown["arms"]["canary"]["ok"] == arms["canary"]
    assert sum(shown["shadow"].values()) >= 10


def test_an_ab_split_is_sticky_per_user(net: Network) -> None:
    for user in ("alice", "bob", "carol"):
        assert len({arm(net.chat("assistant", user)) for _ in range(4)}) == 1, user
    arms = {arm(net.chat("assistant", f"user-{n}")) for n in range(16)}
    assert arms == {"primary", "b"}


def test_an_sla_miss_switches_to_the_degraded_model_and_back(net: Network) -> None:
    assert arm(net.chat("fast")) == "primary"
    assert net.w.proc is not None
    net.w.proc.send_signal(signal.SIGSTOP)  # the worker slowed on purpose: nothing it serves starts for 2.5 s
    try:
        slow: list[str] = []
        # Two at once: one requester holds at most half of W's places (the first request above makes a third sample).
        threads = [threading.Thread(target=lambda: slow.append(arm(net.chat("fast")))) for _ in range(2)]
        for thread in threads:
            thread.start()
        time.sleep(2.5)
    finally:
        net.w.proc.send_signal(signal.SIGCONT)
    for thread in threads:
        thread.join(120)
    assert slow == ["primary"] * 2
    seen: list[str] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not (seen and seen[-5:] == ["primary"] * 5 and "degraded" in seen):
        seen.append(arm(net.chat("fast")))
    assert "degraded" in seen, seen  # fell back to the smaller model...
    assert seen[-5:] == ["primary"] * 5, seen  # ...and returned once the primary met the objective again
    kinds = [e["kind"] for e in net.g.get("/api/events?limit=1000") if e["kind"].startswith("routing.")]
    assert kinds[-2:] == ["routing.degraded", "routing.restored"], kinds
    degraded = next(e for e in net.g.get("/api/events?limit=1000") if e["kind"] == "routing.degraded")
    assert "p95 time to first token" in degraded["data"]["why"]
    assert degraded["data"]["degraded"] == CANDIDATE


def test_a_bad_routing_file_is_refused_with_its_line_and_the_policies_stay(net: Network) -> None:
    broken = POLICIES + '\n[aliases.broken]\nmodel = "x"\ncanary = 5\n'
    line = broken.splitlines().index("canary = 5") + 1
    (net.g.data_dir / "routing.toml").write_text(broken)
    reloaded = subprocess.run([hyperion_executable(), "config", "reload", "--data-dir", str(net.g.data_dir)],
                              capture_output=True, text=True, timeout=60)
    assert reloaded.returncode != 0
    assert f"routing.toml:{line}: aliases.broken.canary" in reloaded.stderr, reloaded.stderr
    assert "Traceback" not in reloaded.stderr
    assert arm(net.chat("chat")) in ("primary", "canary")  # the policies in force still route
    (net.g.data_dir / "routing.toml").write_text(f'[aliases.chat]\nmodel = "{CANDIDATE}"\n')
    reloaded = subprocess.run([hyperion_executable(), "config", "reload", "--data-dir", str(net.g.data_dir)],
                              capture_output=True, text=True, timeout=60)
    assert reloaded.returncode == 0, reloaded.stderr
    assert net.chat("chat").json()["model"] == CANDIDATE
