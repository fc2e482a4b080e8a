"""Shaped generation and embeddings through a real daemon, each against its baseline in the same run.

Measures, rounds alternating, medians reported:
  * tokens/s of a chat completion with ``response_format`` json_schema ÷ the same request unconstrained, through
    one daemon's ``/v1/chat/completions`` (greedy, the same prompt and ``max_tokens``; tokens/s is
    completion_tokens over the request's wall time, so what the grammar costs per token shows, whatever
    length each answer stops at);
  * embeddings/s through the daemon's ``/v1/embeddings`` (the ``openai`` client, base64 as it asks by default) ÷
    llama-cpp-python's ``create_embedding`` in this process on the same file, same thread count, same texts.

The daemon runs one llama.cpp thread, as does the in-process baseline; nothing else runs meanwhile.

    .venv/bin/python scripts/bench_api.py [--rounds 5] [--texts 16]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import openai

from hyperion_node.testing.process import NodeProcess, wait_until

MODEL = "gemma-3-270m-q4_k_m"
SETS = ["p2p.mdns=false", "hardware.benchmark_on_start=false", 'runtimes.disabled=["zk-groth16", "render-blender"]',
        "runtimes.inference.n_ctx=1024", "runtimes.inference.n_threads=1",
        "runtimes.embedding.include_packaged_model=true", "runtimes.embedding.n_threads=1"]
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                           "city": {"type": "string"}, "hobbies": {"type": "array",
                                                                                   "items": {"type": "string"}}},
          "required": ["name", "age", "city", "hobbies"]}
MESSAGES = [{"role": "user", "content": "Describe a person as JSON: name, age, city and hobbies."}]
SENTENCES = ["The lighthouse keeper climbed the stairs at dusk.", "Stock prices fell sharply on Tuesday.",
             "A recipe for bread needs flour, water, salt and yeast.", "def add(a, b): return a + b",
             "The river froze early that winter.", "Quantum computers use qubits instead of bits.",
             "She painted the fence a bright shade of green.", "Trains to the coast run every hour."]


def rate(client: openai.OpenAI, **extra: Any) -> float:
    started = time.perf_counter()
    answer = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=64, temperature=0, **extra)
    seconds = time.perf_counter() - started
    assert answer.usage is not None
    return answer.usage.completion_tokens / seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--texts", type=int, default=16)
    args = parser.parse_args()
    texts = [SENTENCES[i % len(SENTENCES)] + f" ({i})" for i in range(args.texts)]
    with tempfile.TemporaryDirectory() as tmp:
        node = NodeProcess(Path(tmp) / "n", sets=SETS).start()
        try:
            client = openai.OpenAI(base_url=node.api_url + "/v1", api_key=node.token, max_retries=0, timeout=300)
            wait_until(lambda: any(m["id"] == MODEL for m in node.get("/v1/models")["data"]), timeout=60,
                       what="the node serves the model")
            import llama_cpp

            gguf = Path(tmp) / "n" / "cache" / "embedding" / "models" / f"{MODEL}.gguf"
            client.embeddings.create(model=MODEL, input=texts[:1])  # the daemon's embedder loads, and its file
            local = llama_cpp.Llama(model_path=str(gguf), embedding=True, n_ctx=512, n_batch=512, n_ubatch=512,
                                    n_threads=1, n_threads_batch=1, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                                    verbose=False)
            rate(client)  # warm: the generation model loads
            rate(client, response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}})
            free, shaped, through, alone = [], [], [], []
            for _ in range(args.rounds):
                free.append(rate(client))
                shaped.append(rate(client, response_format={"type": "json_schema",
                                                            "json_schema": {"name": "p", "schema": PERSON}}))
                started = time.perf_counter()
                client.embeddings.create(model=MODEL, input=texts)
                through.append(len(texts) / (time.perf_counter() - started))
                started = time.perf_counter()
                local.create_embedding(texts)
                alone.append(len(texts) / (time.perf_counter() - started))
        finally:
            node.stop()
    med = statistics.median
    ratios = [s / f for s, f in zip(shaped, free, strict=True)]
    print(f"chat tokens/s unconstrained {med(free):.1f}, json_schema {med(shaped):.1f}: "
          f"ratio {med(ratios):.2f} (rounds {', '.join(f'{r:.2f}' for r in ratios)})")
    ratios = [t / a for t, a in zip(through, alone, strict=True)]
    print(f"embeddings/s of {len(texts)} texts: in-process create_embedding {med(alone):.1f}, through the node "
          f"{med(through):.1f}: ratio {med(ratios):.2f} (rounds {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
