"""`hyperion-node audit` of a 256-token result against the generation that produced it, on real daemons.

A requester A (drained: it asks the network, and runs the model only to check) gets 256-token greedy completions
from a worker W, then audits each (`POST /api/tasks/{id}/audit`: every position the check reads). Reported: the
audit's own time (from its answer) ÷ the generation's time on W (its prompt and decode, from W's task history),
medians of the rounds. Both nodes run one llama.cpp thread.

    .venv/bin/python scripts/bench_audit.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from pathlib import Path

import httpx

from hyperion_node.testing.process import NodeProcess, hyperion_executable, stop_all, wait_until

MODEL = "gemma-3-270m-q4_k_m"
SETS = ["p2p.mdns=false", "hardware.benchmark_on_start=false", "runtimes.inference.n_ctx=512",
        "runtimes.inference.n_threads=1", 'runtimes.disabled=["zk-groth16", "render-blender"]']
COUNTING = "1, 2, 3, 4,"  # greedy counting goes on to max_tokens without an end of turn


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        w = NodeProcess(Path(tmp) / "w", sets=SETS).start()
        a = NodeProcess(Path(tmp) / "a", sets=[*SETS, f'p2p.bootstrap=["{w.p2p_addr()}"]', "verify.budget=0"]).start()
        try:
            subprocess.run([hyperion_executable(), "drain", "--data-dir", str(a.data_dir)], check=True,
                           capture_output=True)
            wait_until(lambda: any(m["id"] == MODEL for m in a.get("/v1/models")["data"]), timeout=60, what="W seen")
            headers = {"Authorization": f"Bearer {a.token}"}
            ratios, audits, generations = [], [], []
            for n in range(args.rounds + 1):  # the first round loads the models: not counted
                answer = httpx.post(a.api_url + "/v1/completions", headers=headers, timeout=600,
                                    json={"model": MODEL, "prompt": COUNTING, "max_tokens": 256, "temperature": 0})
                assert answer.json()["usage"]["completion_tokens"] == 256, answer.text
                task_id = answer.headers["x-hyperion-task-id"]
                served = next(t for t in w.get(f"/api/tasks/{task_id}") if t["role"] == "worker")
                generated = (served["updated_ms"] - served["created_ms"]) / 1000
                audit = httpx.post(a.api_url + f"/api/tasks/{task_id}/audit", headers=headers, timeout=600).json()
                assert audit["ok"], audit
                if n:
                    ratios.append(audit["seconds"] / generated)
                    audits.append(audit["seconds"])
                    generations.append(generated)
        finally:
            stop_all([a, w])
    med = statistics.median
    print(f"audit of a 256-token result: {med(audits):.2f} s; its generation on the worker {med(generations):.2f} s: "
          f"ratio {med(ratios):.2f} (rounds {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
