"""The operator's live controls on real daemons: a worker W that serves the packaged model and a gateway G that
routes to it. Every control is given with the CLI, as an operator would, and leaves an event with its reason.

- drain: W finishes the task it is running and takes no new one (G answers 503), until resume;
- ban: G's requests no longer reach W, until unban;
- runtime disable / enable, price set (a requester's max price then refuses W with the reason);
- config reload and SIGHUP: live keys applied, a key that needs a restart refused by name (exit 1).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hyperion_node.testing.process import NodeProcess, hyperion_executable, stop_all, wait_until

pytestmark = pytest.mark.process

MODEL = "gemma-3-270m-q4_k_m"
FAST = ["p2p.mdns=false", "hardware.benchmark_on_start=false", "p2p.heartbeat_interval_s=0.5",
        "p2p.suspect_after_s=2.0", "p2p.dead_after_s=4.0"]
OFF = '"zk-groth16", "render-blender"'
WORKER = [*FAST, f"runtimes.disabled=[{OFF}]", "runtimes.inference.n_ctx=512", "runtimes.inference.n_threads=1"]
GATEWAY = [*FAST, f'runtimes.disabled=["inference", {OFF}]']


class Network:
    def __init__(self, root: Path) -> None:
        self.w = NodeProcess(root / "w", sets=WORKER).start()
        self.g = NodeProcess(root / "g", sets=[*GATEWAY, f'p2p.bootstrap=["{self.w.p2p_addr()}"]']).start()
        self.wait_serving()

    def complete(self, **extra: Any) -> httpx.Response:
        return httpx.post(self.g.api_url + "/v1/completions", timeout=120,
                          headers={"Authorization": f"Bearer {self.g.token}"},
                          json={"model": MODEL, "prompt": "1, 2, 3,", "max_tokens": 3, "temperature": 0, **extra})

    def wait_serving(self) -> None:
        wait_until(lambda: self.complete().status_code == 200, timeout=90, interval=1.0, what="G gets an answer from W")

    def cli(self, *args: str, node: NodeProcess | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([hyperion_executable(), *args, "--data-dir", str((node or self.w).data_dir)],
                              capture_output=True, text=True, timeout=60)

    def operator_events(self) -> list[dict[str, Any]]:
        return [e for e in self.w.get("/api/events?limit=1000") if e["kind"].startswith("operator.")]


def inference(net: Network) -> dict[str, Any]:
    return next(r for r in net.w.get("/api/status")["runtimes"] if r["name"] == "inference")


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    network = Network(tmp_path_factory.mktemp("controls"))
    try:
        yield network
    finally:
        stop_all([network.g, network.w])


def test_a_drained_worker_finishes_its_task_and_takes_no_new_one(net: Network) -> None:
    chunks: list[dict[str, Any]] = []
    first = threading.Event()

    def stream() -> None:
        with httpx.stream("POST", net.g.api_url + "/v1/completions", timeout=120,
                          headers={"Authorization": f"Bearer {net.g.token}"},
                          json={"model": MODEL, "prompt": "1, 2, 3,", "max_tokens": 40, "temperature": 0,
                                "stream": True, "stream_options": {"include_usage": True}}) as answer:
            for line in answer.iter_lines():
                if line.startswith("data: {"):
                    chunks.append(json.loads(line[6:]))
                    first.set()

    running = threading.Thread(target=stream)
    running.start()
    assert first.wait(60)
    drained = net.cli("drain", "--reason", "maintenance window")
    assert drained.returncode == 0, drained.stderr
    assert "drain: done (maintenance window)" in drained.stdout
    running.join(120)
    assert chunks[-1]["usage"]["completion_tokens"] == 40  # the running task finished, whole
    assert net.w.get("/api/status")["controls"]["draining"] is True
    refused = net.complete()  # 503 (W answers BUSY: draining) or, once G has W's new record, 404 (no offer left)
    assert refused.status_code in (404, 503), refused.text
    assert inference(net)["offers"] == []  # withdrawn from the adverts
    assert net.cli("resume", "--reason", "done").returncode == 0
    net.wait_serving()


def test_a_banned_peer_is_refused_until_unban(net: Network) -> None:
    banned = net.cli("ban", net.g.peer_id, "--reason", "flooding us", "--for", "1h")
    assert banned.returncode == 0, banned.stderr
    state = net.w.get("/api/control")
    assert [b["peer_id"] for b in state["banned"]] == [net.g.peer_id]
    wait_until(lambda: net.complete().status_code != 200, timeout=30, what="G's requests no longer reach W")
    assert net.g.peer_id not in {p["peer_id"] for p in net.w.get("/api/peers") if p.get("connected")}
    assert net.cli("unban", net.g.peer_id, "--reason", "it stopped").returncode == 0
    net.wait_serving()


def test_runtime_off_and_on_and_a_price_above_the_requesters_limit(net: Network) -> None:
    assert net.cli("runtime", "disable", "inference", "--reason", "GPU maintenance").returncode == 0
    assert net.complete().status_code in (404, 503)
    assert net.cli("runtime", "enable", "inference").returncode == 0
    net.wait_serving()
    unknown = net.cli("runtime", "disable", "no-such-runtime")
    assert unknown.returncode != 0
    assert "no runtime 'no-such-runtime'" in unknown.stderr
    assert "Traceback" not in unknown.stderr

    assert net.cli("price", "set", "inference", "0.5", "--reason", "peak hours").returncode == 0
    assert inference(net)["offers"][0]["price_per_unit"] == 0.5
    answer = httpx.post(net.g.api_url + "/api/tasks", timeout=60, headers={"Authorization": f"Bearer {net.g.token}"},
                        json={"runtime": "inference", "item": MODEL, "max_price_per_unit": 0.01,
                              "payload": {"model": MODEL, "prompt": "hi", "max_tokens": 2}})
    # G has W's new price (503: no peer meets the request, for its price) or not yet (W refuses: 400).
    assert answer.status_code in (400, 503), answer.text
    refusal = answer.json()["error"]
    assert "price 0.5 per token is above the 0.01 asked for" in refusal or "meets the request (1 price)" in refusal
    assert net.cli("price", "set", "inference", "0.000002").returncode == 0


def test_config_reload_applies_live_keys_and_names_the_others(net: Network) -> None:
    # Written in capitals, as operators do: applied as written, the level set lower-cased.
    (net.w.data_dir / "config.toml").write_text('[logging]\nlevel = "DEBUG"\n[p2p]\ntarget_connections = 5\n')
    reloaded = net.cli("config", "reload", "--reason", "new settings")
    assert reloaded.returncode == 1, reloaded.stdout + reloaded.stderr
    assert "applied  logging.level = 'DEBUG'" in reloaded.stdout
    assert "refused  p2p.target_connections: needs a restart" in reloaded.stdout
    (net.w.data_dir / "config.toml").write_text('[logging]\nlevel = "info"\n')
    assert net.w.proc is not None
    net.w.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: any(e["data"]["who"] == "SIGHUP" for e in net.operator_events()), timeout=30,
               what="the SIGHUP reload's event")
    hup = next(e for e in net.operator_events() if e["data"]["who"] == "SIGHUP")
    assert hup["data"]["applied"] == {"logging.level": "info"}
    assert net.w.proc.poll() is None  # SIGHUP reloads; it does not stop the node


def test_spending_limits_refuse_with_the_limit_and_when_it_resets(net: Network) -> None:
    """G's own limits as a requester, set and lifted by config reload: its daily budget (spent already by the
    tests above), then a max price under W's."""
    config = net.g.data_dir / "config.toml"
    config.write_text("[spending]\ndaily_budget = 1e-9\n")
    assert net.cli("config", "reload", node=net.g).returncode == 0
    over = net.complete()
    assert over.status_code == 429, over.text
    assert 0 < int(over.headers["retry-after"]) <= 86400
    message = over.json()["error"]["message"]
    assert "daily budget of 1e-09 credits (spending.daily_budget) is spent" in message
    assert "resets at 00:00 UTC" in message

    config.write_text("[spending.max_price_per_unit]\ninference = 1e-9\n")
    assert net.cli("config", "reload", node=net.g).returncode == 0
    dear = net.complete()
    assert dear.status_code == 503, dear.text
    assert "spending limit spending.max_price_per_unit.inference = 1e-09" in dear.json()["error"]["message"]

    config.write_text("")
    assert net.cli("config", "reload", node=net.g).returncode == 0
    net.wait_serving()


def test_every_control_left_an_event_with_who_and_why(net: Network) -> None:
    events = net.operator_events()
    kinds = [e["kind"] for e in events]
    for kind in ("operator.drain", "operator.resume", "operator.ban", "operator.unban", "operator.runtime_off",
                 "operator.runtime_on", "operator.price", "operator.reload"):
        assert kind in kinds, kinds
    by_kind = {e["kind"]: e["data"] for e in events}
    assert by_kind["operator.drain"]["why"] == "maintenance window"
    assert by_kind["operator.ban"] == {**by_kind["operator.ban"], "who": "api.token", "why": "flooding us",
                                       "peer_id": net.g.peer_id, "duration_s": 3600.0}
    assert by_kind["operator.runtime_on"]["why"] == "(no reason given)"
    # What the web dashboard's Operator panel draws (its sampler reads new events once a second).
    shown = wait_until(lambda: (view := net.w.get("/api/dashboard")["operator"])["events"][0]["action"] == "reload"
                       and view, timeout=10, what="the dashboard shows the last control")
    assert shown["events"][0]["action"] == "reload"
    assert shown["events"][0]["who"] == "SIGHUP"
    assert {"drain", "ban", "price"} <= {e["action"] for e in shown["events"]}
    metrics = httpx.get(net.w.api_url + "/metrics", headers={"Authorization": f"Bearer {net.w.token}"}).text
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    actions = {s.labels["action"]: s.value for s in families["hyperion_operator_actions"].samples}
    assert actions["drain"] == 1
    assert actions["ban"] == 1
    assert [s.value for s in families["hyperion_draining"].samples] == [0]


def test_metrics_an_operator_can_run_on(net: Network) -> None:
    """What /metrics holds after the requests above, written by prometheus_client and clean to promtool."""
    texts = {name: httpx.get(node.api_url + "/metrics", headers={"Authorization": f"Bearer {node.token}"}).text
             for name, node in (("g", net.g), ("w", net.w))}
    for text in texts.values():
        checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                                 timeout=30)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    families = {f.name: f for f in text_string_to_metric_families(texts["g"])}
    routes = {(s.labels["route"], s.labels["code"]) for s in families["hyperion_api_requests"].samples}
    assert ("/v1/completions", "2xx") in routes  # RED per route: requests...
    assert ("/v1/completions", "4xx") in routes or ("/v1/completions", "5xx") in routes  # ...errors...
    assert any(s.name.endswith("_count") and s.labels["route"] == "/v1/completions"
               for s in families["hyperion_api_request_duration_seconds"].samples)  # ...and durations
    tokens = {s.labels["model"]: s.value for s in families["hyperion_inference_tokens"].samples}
    assert tokens[MODEL] >= 40
    assert any(s.name.endswith("_count") and s.value > 0
               for s in families["hyperion_inference_time_to_first_token_seconds"].samples)
    assert families["hyperion_build_info"].samples[0].labels["version"]
    for name in ("process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds", "hyperion_tasks",
                 "hyperion_p2p_messages", "hyperion_peers"):
        assert name in families, name


def test_the_alerting_rules_check_and_name_only_metrics_the_node_exposes(net: Network) -> None:
    rules = Path(__file__).parents[2] / "configs" / "alerts.yml"
    checked = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    documented = (rules.parents[1] / "docs" / "operations.md").read_text().split("```yaml\n")[-1].split("```")[0]
    assert documented == rules.read_text()  # docs/operations.md ships the same rules
    text = httpx.get(net.w.api_url + "/metrics", headers={"Authorization": f"Bearer {net.w.token}"}).text
    exposed = {f.name for f in text_string_to_metric_families(text)}
    named = set(re.findall(r"\b(hyperion_[a-z_]+)", rules.read_text()))
    missing = {n for n in named if n not in exposed and n.removesuffix("_total") not in exposed}
    assert missing == set()
