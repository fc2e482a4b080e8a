"""Inference through the network against llama.cpp alone, side by side in one run.

Same model (the packaged Gemma 3 270M), prompt, greedy decoding and token count for each path:
  (a) llama-cpp-python called directly in this process (Llama.generate, streamed) -- the floor;
  (b) the local node's OpenAI API (the node runs the model itself);
  (c) a remote node over libp2p: the client talks to a node without the model, which routes to a worker.
Reported: decode tokens/s (after the first token) and time to first token, with b/a and c/a ratios and the
TTFT each path adds over (a). Then 4 concurrent clients through a network of two workers against 4
concurrent clients of llama-cpp-python's own OpenAI server (llama_cpp.server) on the same machine.

TTFT is measured twice for (b) and (c): with the ``openai`` client, as an application would call the node,
and with a plain streaming HTTP client (httpx, reading the server-sent events itself), which separates what
the node adds from what the ``openai`` client adds (its request building, and parsing each chunk into
pydantic models). The rounds alternate between all paths, so load changes hit every path alike, and "added"
is the median of each round's difference against (a) in the same round (paired, so that a slow stretch of
the machine, which moves the prefill by tens of ms on a shared 2-core box, lands on both sides of it).

Threads: every llama.cpp instance gets the node's default, one less than the cores (1 here), for decoding and
for prompt batches alike, so each path does the same work per token; the llama_cpp.server baseline gets the
same and, in a second row, all cores. Every path starts each request from an empty KV cache (the node never
reuses a prompt prefix: see runtimes/inference/runtime.py), and each keeps its client, as an application does.

    .venv/bin/python scripts/bench_inference.py [--tokens 128] [--rounds 3] [--ttft-rounds 15]
    .venv/bin/python scripts/bench_inference.py --parts ttft --ttft-rounds 30   # time to first token only
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai

from hyperion_node.testing.process import NodeProcess, wait_until
from runtimes.inference.registry import ModelHashes, ensure_packaged_model

MODEL = "gemma-3-270m-q4_k_m"
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle. Once upon a time,"
FAST = ["p2p.mdns=false", "p2p.heartbeat_interval_s=1.0", "p2p.suspect_after_s=4.0", "p2p.dead_after_s=8.0"]
OFF = '"zk-groth16", "render-blender"'
THREADS = max(1, (os.cpu_count() or 2) - 1)  # the inference runtime's n_threads = 0 default
PARTS = ("throughput", "ttft", "concurrent", "cancel")


def stream_timing(chunks: Any, t0: float) -> tuple[float, float, int]:
    """(ttft_s, decode tokens/s, tokens) from a stream whose every chunk is one token."""
    stamps = []
    for chunk in chunks:
        if chunk is not None and chunk != "":
            stamps.append(time.perf_counter())
    n = len(stamps)
    rate = (n - 1) / (stamps[-1] - stamps[0]) if n > 1 else 0.0
    return stamps[0] - t0, rate, n


class Direct:
    """llama-cpp-python's own token loop (``Llama.generate``, what create_completion runs underneath) on one
    loaded model, from an empty KV cache as the node starts every generation (so that greedy output is
    reproducible and checkable); a warm cache would let it skip the prompt's prefill."""

    def __init__(self, model_path: Path) -> None:
        import llama_cpp

        # The node's own settings: n_threads_batch too (llama-cpp-python's default is every core, whose threads
        # spin on each other on a busy 2-core machine: a 22-token prefill took 0.6-4 s instead of ~0.2 s), and
        # no full-size sliding-window cache.
        self.llm = llama_cpp.Llama(model_path=str(model_path), n_ctx=2048, n_threads=THREADS,
                                   n_threads_batch=THREADS, swa_full=False, verbose=False, seed=0)
        self.prompt = self.llm.tokenize(PROMPT.encode())
        self.run(4)  # warm-up, as the node's benchmark is

    def run(self, tokens: int) -> tuple[float, float, int]:
        # generate(reset=True) keeps the longest prefix the KV cache already holds: without this reset it would
        # evaluate only the prompt's last token, a prefill no request that reaches the node can skip.
        self.llm.reset()
        t0 = time.perf_counter()
        generated = self.llm.generate(self.prompt, temp=0.0, reset=True)
        try:
            return stream_timing((token for _, token in zip(range(tokens), generated, strict=False)), t0)
        finally:
            generated.close()


class Api:
    """One OpenAI client per path, kept across requests as an application keeps it."""

    def __init__(self, base_url: str, token: str) -> None:
        self.client = openai.OpenAI(base_url=base_url + "/v1", api_key=token, max_retries=0)

    def run(self, tokens: int) -> tuple[float, float, int]:
        t0 = time.perf_counter()
        stream = self.client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=tokens, temperature=0,
                                                stream=True)
        return stream_timing((c.choices[0].text for c in stream if c.choices), t0)


class PlainHttp:
    """The same streamed request through httpx, its server-sent events read as they come: the floor that an
    HTTP client puts under a node's TTFT, without the ``openai`` client's own per-request and per-chunk work."""

    def __init__(self, base_url: str, token: str) -> None:
        self.client = httpx.Client(base_url=base_url + "/v1", headers={"Authorization": f"Bearer {token}"},
                                   timeout=60)

    def run(self, tokens: int) -> tuple[float, float, int]:
        body = {"model": MODEL, "prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "stream": True}
        t0 = time.perf_counter()
        with self.client.stream("POST", "/completions", json=body) as answer:
            answer.raise_for_status()

            def texts() -> Any:
                for line in answer.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        choices = json.loads(line[len("data: "):]).get("choices")
                        if choices:
                            yield choices[0]["text"]

            return stream_timing(texts(), t0)


def concurrent(base_url: str, token: str, clients: int, tokens: int, model: str) -> tuple[float, int]:
    """Aggregate completion tokens/s of ``clients`` simultaneous non-streamed requests."""
    counts: list[int] = []

    def one(i: int) -> None:
        client = openai.OpenAI(base_url=base_url + "/v1", api_key=token, max_retries=0, timeout=300)
        done = client.completions.create(model=model, prompt=f"{PROMPT} ({i})", max_tokens=tokens, temperature=0)
        counts.append(done.usage.completion_tokens if done.usage else 0)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - t0
    return sum(counts) / wall, len(counts)


def cancel_latency(gateway: NodeProcess, workers: list[NodeProcess]) -> float:
    """Seconds from the client closing a streamed answer to the worker recording the task cancelled (its
    generation stopped and its slot freed: the event is written after the runtime's thread has returned)."""
    headers = {"Authorization": f"Bearer {gateway.token}"}
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 400, "stream": True, "temperature": 0}
    with httpx.stream("POST", gateway.api_url + "/v1/completions", json=body, headers=headers, timeout=60) as answer:
        task_id = answer.headers["x-hyperion-task-id"]
        worker = next(w for w in workers if w.peer_id == answer.headers["x-hyperion-worker"])
        for n, _line in enumerate(answer.iter_lines()):
            if n >= 10:
                break
        closed = time.time()
    def cancelled_at() -> float | None:
        events = worker.get("/api/events?limit=1000&since_time=" + str(closed - 60))
        return next((e["time"] for e in events if e["kind"] == "task.cancelled" and e["data"]["task_id"] == task_id),
                    None)
    stopped = wait_until(cancelled_at, timeout=10, what="the worker cancels the task")
    assert stopped is not None
    return stopped - closed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def llama_server(model_path: Path, threads: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(model_path), "--model_alias",
                             MODEL, "--n_threads", str(threads),
                             "--n_threads_batch", str(threads), "--n_ctx", "2048", "--port", str(port),
                             "--host", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(url + "/v1/models", timeout=2).status_code == 200, timeout=60,
               what="llama_cpp.server answers")
    return proc, url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrent-tokens", type=int, default=64)
    parser.add_argument("--ttft-rounds", type=int, default=15)
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated, any of {', '.join(PARTS)} (default: all)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if not parts <= set(PARTS):
        parser.error(f"--parts takes {', '.join(PARTS)}, not {', '.join(sorted(parts - set(PARTS)))}")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_path = ensure_packaged_model(root / "models", ModelHashes(root / "hashes.json")).path
        worker = NodeProcess(root / "b", sets=[*FAST, f"runtimes.disabled=[{OFF}]"], quiet=True).start()
        boot = f'p2p.bootstrap=["{worker.p2p_addr()}"]'
        worker2 = NodeProcess(root / "c", sets=[*FAST, f"runtimes.disabled=[{OFF}]", boot], quiet=True).start()
        gateway = NodeProcess(root / "a", sets=[*FAST, f'runtimes.disabled=["inference", {OFF}]', boot],
                              quiet=True).start()
        try:
            wait_until(lambda: any(m["id"] == MODEL and m["providers"] >= 2
                                   for m in gateway.get("/v1/models")["data"]), timeout=60,
                       what="the gateway knows both workers")
            paths = (Direct(model_path), Api(worker.api_url, worker.token), Api(gateway.api_url, gateway.token),
                     PlainHttp(worker.api_url, worker.token), PlainHttp(gateway.api_url, gateway.token))
            for path in paths[1:]:
                path.run(8)  # warm the workers' models, connections and streams
            rows: list[list[tuple[float, float, int]]] = [[], [], []]
            firsts: list[list[float]] = [[] for _ in paths]
            for _ in range(args.rounds if "throughput" in parts else 0):  # interleaved: load hits every path
                for i, path in enumerate(paths[:3]):
                    rows[i].append(path.run(args.tokens))
            for _ in range(args.ttft_rounds if "ttft" in parts else 0):  # short requests, more of them
                for i, path in enumerate(paths):
                    firsts[i].append(path.run(2)[0])
            a = rows[0]
            net_rate = (concurrent(gateway.api_url, gateway.token, 4, args.concurrent_tokens, MODEL)[0]
                        if "concurrent" in parts else 0.0)
            cancels = ([cancel_latency(gateway, [worker, worker2]) for _ in range(args.rounds)]
                       if "cancel" in parts else [])
        finally:
            for node in (gateway, worker2, worker):
                node.stop()
        base_rows = []
        for threads in (THREADS, os.cpu_count() or 2) if "concurrent" in parts else ():
            proc, url = llama_server(model_path, threads)
            try:
                concurrent(url, "none", 1, 4, MODEL)
                base_rows.append((threads, concurrent(url, "none", 4, args.concurrent_tokens, MODEL)[0]))
            finally:
                proc.terminate()
                proc.wait(10)

    def med(rows: list[tuple[float, float, int]], i: int) -> float:
        return statistics.median(r[i] for r in rows)

    print(f"n_threads={THREADS}; " + (f"{args.tokens} tokens, greedy, medians of {len(a)} interleaved rounds; "
                                      if a else "") +
          f"TTFT: medians of {len(firsts[0])} rounds of 2-token requests, added: median of per-round differences")
    print(f"{'path':44} {'tokens/s':>9} {'ratio':>6} {'TTFT ms':>8} {'added ms':>9} {'TTFT p25-p75 ms':>16}")
    names = ("(a) llama-cpp-python in-process", "(b) local node API, openai client",
             "(c) remote node over libp2p, openai client", "(b) local node API, plain httpx",
             "(c) remote node over libp2p, plain httpx")
    for i, name in enumerate(names):
        rate = f"{med(rows[i], 1):9.1f} {med(rows[i], 1) / med(a, 1):6.3f}" if i < 3 and a else f"{'-':>9} {'-':>6}"
        ttft = "-"
        if len(firsts[i]) >= 2:
            q = statistics.quantiles(firsts[i], n=4)
            median = statistics.median(firsts[i])
            added = statistics.median(t - base for t, base in zip(firsts[i], firsts[0], strict=True))
            ttft = f"{median * 1000:8.1f} {added * 1000:9.1f} {q[0] * 1000:7.0f}-{q[2] * 1000:.0f}"
        print(f"{name:44} {rate} {ttft}")
    if cancels:
        print(f"\nclient gone -> worker stopped and slot free: median {statistics.median(cancels) * 1000:.0f} ms "
              f"(max {max(cancels) * 1000:.0f} ms) over {len(cancels)} cancellations")
    if "concurrent" in parts:
        print(f"\n4 concurrent clients, {args.concurrent_tokens} tokens each")
        print(f"{'network (gateway + 2 workers)':44} {net_rate:9.1f} tokens/s")
        for threads, rate_ in base_rows:
            print(f"{'llama_cpp.server, n_threads=' + str(threads):44} {rate_:9.1f} tokens/s  "
                  f"ratio {net_rate / rate_:.2f}")


if __name__ == "__main__":
    main()
