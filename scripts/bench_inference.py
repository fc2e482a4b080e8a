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

Continuous batching (``--parts batching``): B = 1, 4 and 8 concurrent streamed requests of 48 tokens through
one node (max_streams = 8) against llama.cpp's own batched decode of B sequences in this process, same
threads (``RawBatch``: one llama_decode per step for all sequences, greedy), and against llama_cpp.server
with the same B clients; the node's resident memory with 8 streams and with 1; the time to first token of a
request that joins 7 running streams against the same request on the idle node. ``--parts checks``: honest
results generated 8 at a time through the engine, each checked by the verifier (every chunk): false disputes.

    .venv/bin/python scripts/bench_inference.py --parts batching,checks [--batching-rounds 3] [--checks 200]
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
PARTS = ("throughput", "ttft", "concurrent", "cancel", "batching", "checks")
LONG_PROMPT = "Write a long essay about the history of lighthouses, their keepers and the ships they guided."


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


class RawBatch:
    """llama.cpp's batched decode, driven directly: B sequences in one context, one ``llama_decode`` per step.

    The floor for the node's engine: the same context settings (n_seq_max = B, a KV cache per sequence, the
    node's threads), each prompt prefilled in one batch, then ``steps`` greedy steps of B tokens (argmax of
    each sequence's row). Tokens/s counts generated tokens over the whole time, prefill included, as a
    client of the node sees it."""

    def __init__(self, model_path: Path) -> None:
        import llama_cpp

        self.llama = llama_cpp
        self.llm = llama_cpp.Llama(model_path=str(model_path), n_ctx=256, n_threads=THREADS,
                                   n_threads_batch=THREADS, swa_full=False, verbose=False)
        self.prompt = self.llm.tokenize(LONG_PROMPT.encode())

    def run(self, sequences: int, steps: int) -> float:
        import numpy as np

        llama = self.llama
        params = type(self.llm.context_params).from_buffer_copy(self.llm.context_params)
        params.n_ctx, params.n_seq_max, params.kv_unified = 256 * sequences, sequences, False
        ctx = llama.llama_init_from_model(self.llm.model, params)
        batch = llama.llama_batch_init(512, 0, 1)
        n_vocab = self.llm.n_vocab()
        try:
            t0 = time.perf_counter()
            n = 0
            for seq in range(sequences):
                for pos, token in enumerate(self.prompt):
                    batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, pos, 1
                    batch.seq_id[n][0], batch.logits[n] = seq, pos == len(self.prompt) - 1
                    n += 1
            batch.n_tokens = n
            assert llama.llama_decode(ctx, batch) == 0
            rows = [(seq + 1) * len(self.prompt) - 1 for seq in range(sequences)]
            for step in range(steps):
                tokens = [int(np.argmax(np.ctypeslib.as_array(llama.llama_get_logits_ith(ctx, r), shape=(n_vocab,))))
                          for r in rows]
                if step == steps - 1:
                    break
                for seq, token in enumerate(tokens):
                    batch.token[seq], batch.pos[seq], batch.n_seq_id[seq] = token, len(self.prompt) + step, 1
                    batch.seq_id[seq][0], batch.logits[seq] = seq, True
                batch.n_tokens = sequences
                assert llama.llama_decode(ctx, batch) == 0
                rows = list(range(sequences))
            return sequences * steps / (time.perf_counter() - t0)
        finally:
            llama.llama_batch_free(batch)
            llama.llama_free(ctx)


def streams(base_url: str, token: str, clients: int, tokens: int, prompt: str = LONG_PROMPT,
            firsts: list[float] | None = None) -> tuple[float, list[float]]:
    """``clients`` streamed requests at once: (aggregate completion tokens/s, their TTFTs as they come in,
    also appended to ``firsts`` when given)."""
    counts: list[int] = []
    firsts = [] if firsts is None else firsts

    def one(_i: int) -> None:
        try:
            read(_i)
        except httpx.HTTPError as exc:
            print(f"  stream {_i} of {clients} failed: {exc}", file=sys.stderr)

    def read(_i: int) -> None:
        first, pieces, usage = True, 0, None
        body = {"model": MODEL, "prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}
        with httpx.Client(timeout=300, headers={"Authorization": f"Bearer {token}"}) as client:
            with client.stream("POST", base_url + "/v1/completions", json=body) as answer:
                answer.raise_for_status()
                for line in answer.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[len("data: "):])
                    if chunk.get("choices") and chunk["choices"][0].get("text"):
                        pieces += 1
                        if first:
                            firsts.append(time.perf_counter() - t0)
                            first = False
                    if chunk.get("usage"):
                        usage = chunk["usage"]["completion_tokens"]
        # llama_cpp.server sends no usage in a stream; its chunks are one token each.
        counts.append(usage if usage is not None else pieces)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - t0), firsts


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class PeakRss:
    """The largest resident size of a process while the block runs, sampled every 20 ms."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()

    def __enter__(self) -> PeakRss:
        def sample() -> None:
            while not self._stop.wait(0.02):
                self.peak = max(self.peak, rss_bytes(self.pid))
        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def batching(root: Path, model_path: Path, rounds: int, tokens: int) -> None:
    """``--parts batching``: see the module docstring."""
    node = NodeProcess(root / "batching", sets=[*FAST, f"runtimes.disabled=[{OFF}]", "runtimes.inference.max_streams=8",
                                                "runtimes.inference.n_ctx=256", "tasks.queue_depth=0"],
                       quiet=True).start()
    raw = RawBatch(model_path)
    raw.run(1, 4)
    sizes = (1, 4, 8)
    node_rates: dict[int, list[float]] = {b: [] for b in sizes}
    raw_rates: dict[int, list[float]] = {b: [] for b in sizes}
    peaks: dict[int, list[int]] = {1: [], 8: []}
    joins: list[float] = []
    idles: list[float] = []
    assert node.proc is not None
    try:
        streams(node.api_url, node.token, 1, 4)  # loads the model and makes the engine
        for _ in range(rounds):  # interleaved, so that load changes hit both sides
            for b in sizes:
                raw_rates[b].append(raw.run(b, tokens))
                with PeakRss(node.proc.pid) as peak:
                    node_rates[b].append(streams(node.api_url, node.token, b, tokens)[0])
                if b in peaks:
                    peaks[b].append(peak.peak)
            idles.append(streams(node.api_url, node.token, 1, 2, PROMPT)[1][0])
            # 7 long streams run; once each has its first token, an 8th short request joins them.
            started: list[float] = []
            running = threading.Thread(target=streams, args=(node.api_url, node.token, 7, 160, LONG_PROMPT, started))
            running.start()
            wait_until(lambda: len(started) >= 7, timeout=120, what="7 streams have their first tokens")  # noqa: B023
            time.sleep(1.0)  # all seven decoding: the newcomer's prefill joins their steps
            joins.append(streams(node.api_url, node.token, 1, 2, PROMPT)[1][0])
            assert running.is_alive(), "the 7 streams ended before the 8th joined: raise their max_tokens"
            running.join()
    finally:
        node.stop()
    print(f"raw tok/s {raw_rates}\nnode tok/s {node_rates}\nRSS {peaks}\njoin TTFT {joins}, idle TTFT {idles}",
          flush=True)
    base: dict[int, float] = {}
    for b in sizes:
        proc, url = llama_server(model_path, THREADS)
        try:
            streams(url, "none", 1, 4)
            base[b] = statistics.median(streams(url, "none", b, tokens)[0] for _ in range(rounds))
        finally:
            proc.terminate()
            proc.wait(10)

    med = statistics.median
    print(f"\ncontinuous batching: n_threads={THREADS}, {tokens} tokens a stream, greedy, medians of {rounds} rounds")
    print(f"{'B':>2} {'raw tok/s':>9} {'raw gain':>8} {'node tok/s':>10} {'node/raw':>8} {'node gain':>9} "
          f"{'gain goal':>9} {'server tok/s':>12} {'node/server':>11}")
    for b in sizes:
        raw_gain = med(raw_rates[b]) / med(raw_rates[1])
        node_gain = med(node_rates[b]) / med(node_rates[1])
        print(f"{b:>2} {med(raw_rates[b]):9.1f} {raw_gain:8.2f} {med(node_rates[b]):10.1f} "
              f"{med(node_rates[b]) / med(raw_rates[b]):8.2f} {node_gain:9.2f} {raw_gain * 0.85:9.2f} "
              f"{base[b]:12.1f} {med(node_rates[b]) / base[b]:11.2f}")
    print(f"resident memory: 8 streams {med(peaks[8]) / 2**20:.0f} MiB, 1 stream {med(peaks[1]) / 2**20:.0f} MiB, "
          f"ratio {med(peaks[8]) / med(peaks[1]):.2f} (goal <= 1.3)")
    print(f"time to first token: joining 7 running streams {med(joins) * 1000:.0f} ms, idle {med(idles) * 1000:.0f} ms,"
          f" ratio {med(joins) / med(idles):.2f} (goal <= 2; each: {[round(j * 1000) for j in joins]} vs "
          f"{[round(i * 1000) for i in idles]})")


async def batched_checks(root: Path, count: int) -> None:
    """``--parts checks``: ``count`` honest results, 8 generated at a time, each verified on every chunk."""
    import trio

    from runtimes.inference import LlamaCppRuntime
    from runtimes.inference.runtime import verify_inference
    from runtimes.interface import HardwareSummary, Partial, RuntimeContext, Task

    hardware = HardwareSummary(cpu_model="bench", cpu_cores=os.cpu_count() or 2, ram_total_bytes=8 << 30,
                               ram_available_bytes=4 << 30)
    context = RuntimeContext(data_dir=root / "checks", cache_dir=root, settings={"n_ctx": 256, "max_streams": 8},
                             hardware=hardware)
    runtime = LlamaCppRuntime(context)
    await runtime.start()
    topics = ["lighthouses", "rivers", "bread", "comets", "violins", "glaciers", "bees", "printing presses"]
    payloads = [{"model": MODEL, "prompt": f"Tell me about {topics[i % 8]} ({i}).", "max_tokens": 24 + i % 17,
                 "temperature": (0.0, 0.7, 1.0)[i % 3], "seed": i} for i in range(count)]
    disputes: list[tuple[int, str]] = []

    async def emit(_partial: Partial) -> None:
        pass

    async def one(i: int) -> None:
        final = await runtime.run(Task(task_id=str(i), runtime="inference", payload=payloads[i]), emit)
        verdict = await verify_inference(runtime, payloads[i], final.output, final.evidence, chunks=0)
        if not verdict.ok:
            disputes.append((i, verdict.reason))

    t0 = time.perf_counter()
    try:
        for start in range(0, count, 8):
            async with trio.open_nursery() as nursery:
                for i in range(start, min(count, start + 8)):
                    nursery.start_soon(one, i)
    finally:
        await runtime.aclose()
    print(f"\nspot checks on batched results: {len(disputes)} false disputes in {count} honest results "
          f"(8 at a time, every chunk checked, {time.perf_counter() - t0:.0f} s){': ' if disputes else ''}"
          + "; ".join(f"#{i}: {why}" for i, why in disputes))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def llama_server(model_path: Path, threads: int) -> tuple[subprocess.Popen[bytes], str]:
    """llama-cpp-python's own OpenAI server. It serves one request at a time; by default a new request
    interrupts a running stream, which its users turn off to serve several clients."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(model_path), "--model_alias",
                             MODEL, "--interrupt_requests", "False", "--n_threads", str(threads),
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
    parser.add_argument("--batching-rounds", type=int, default=3)
    parser.add_argument("--batching-tokens", type=int, default=48)
    parser.add_argument("--checks", type=int, default=200)
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated, any of {', '.join(PARTS)} (default: all)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if not parts <= set(PARTS):
        parser.error(f"--parts takes {', '.join(PARTS)}, not {', '.join(sorted(parts - set(PARTS)))}")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_path = ensure_packaged_model(root / "models", ModelHashes(root / "hashes.json")).path
        if "batching" in parts:
            batching(root, model_path, args.batching_rounds, args.batching_tokens)
        if "checks" in parts:
            import trio

            trio.run(batched_checks, root, args.checks)
        if not parts & {"throughput", "ttft", "concurrent", "cancel"}:
            return
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
