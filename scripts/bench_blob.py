"""Model transfer over /hyperion/blob/1 between real daemons on loopback, against a plain TCP copy.

Measures, side by side in one run (rounds alternate, medians reported):
  * baseline: the packaged model sent over one plain TCP connection on 127.0.0.1 (``socket.sendfile`` on one
    side, ``recv_into`` and a file write on the other, each in its own process), no hashing;
  * one provider: B's `models pull` of the packaged model from daemon A, upload uncapped, from the request to
    the model in B's models folder (find, manifest, every chunk checked and written, the whole-file hash);
  * three providers ÷ one, twice: uncapped (bound by this machine's CPU: four daemons on its cores), and each
    provider capped at ``--cap`` MiB/s (what a fetch from home connections is bound by: their upload).

Every provider has answered one pull before the timing starts, so the figures leave out its first hashing of
the model (~1 s a GiB, once per file: the address is kept in ``blobs/hashes.json``).

    .venv/bin/python scripts/bench_blob.py [--rounds 3] [--cap 20]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from hyperion_node.testing.process import NodeProcess, wait_until
from runtimes.inference.registry import ModelHashes, ensure_packaged_model

MODEL = "gemma-3-270m-q4_k_m"
FAST = ["p2p.mdns=false", "hardware.benchmark_on_start=false", 'runtimes.disabled=["zk-groth16", "render-blender"]',
        "runtimes.inference.n_ctx=512"]

TCP_SENDER = """
import socket, sys
server = socket.create_server(("127.0.0.1", 0))
print(server.getsockname()[1], flush=True)
conn, _ = server.accept()
with open(sys.argv[1], "rb") as f:
    conn.sendfile(f)
conn.close()
"""
TCP_RECEIVER = """
import socket, sys
buf = bytearray(1 << 20)
view = memoryview(buf)
with socket.create_connection(("127.0.0.1", int(sys.argv[1]))) as conn, open(sys.argv[2], "wb") as out:
    while n := conn.recv_into(buf):
        out.write(view[:n])
"""


def tcp_copy_seconds(source: Path, target: Path) -> float:
    sender = subprocess.Popen([sys.executable, "-c", TCP_SENDER, str(source)], stdout=subprocess.PIPE, text=True)
    assert sender.stdout is not None
    port = sender.stdout.readline().strip()
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", TCP_RECEIVER, port, str(target)], check=True)
    seconds = time.perf_counter() - started
    sender.wait()
    assert target.stat().st_size == source.stat().st_size
    target.unlink()
    return seconds


def pull_seconds(puller: NodeProcess, providers: list[NodeProcess]) -> float:
    """One pull of the packaged model into ``puller``'s models folder, from ``providers``; the file is removed
    after, so that the next round pulls it again."""
    started = time.perf_counter()
    answer = httpx.post(puller.api_url + "/api/models/pull", timeout=30,
                        json={"model": MODEL, "from": [p.peer_id for p in providers]},
                        headers={"Authorization": f"Bearer {puller.token}"})
    assert answer.status_code == 202, answer.text

    def finished() -> dict[str, Any]:
        pull: dict[str, Any] = next(p for p in puller.get("/api/models/pulls") if p["model"] == MODEL)
        return pull if pull["state"] in ("done", "failed") else {}

    pull: dict[str, Any] = wait_until(finished, timeout=600, what="the pull ends", interval=0.05)
    seconds = time.perf_counter() - started
    assert pull["state"] == "done", pull
    assert len(pull["providers"]) == len(providers), pull
    Path(pull["path"]).unlink()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cap", type=float, default=20.0, help="each provider's upload cap in the capped run, MiB/s")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = ensure_packaged_model(root / "models", ModelHashes(root / "hashes.json")).path
        size = model.stat().st_size
        results: dict[str, list[float]] = {"tcp": [], "one": [], "three": [], "one_capped": [], "three_capped": []}
        for capped in (False, True):
            cap = f"blobs.max_upload_mib_s={args.cap if capped else 0}"
            nodes: list[NodeProcess] = []
            try:
                providers = [NodeProcess(root / f"p{i}{capped}", sets=[*FAST, cap]).start() for i in range(3)]
                nodes += providers
                boot = f'p2p.bootstrap=["{providers[0].p2p_addr()}"]'
                puller = NodeProcess(root / f"b{capped}", sets=[*FAST, boot,
                                                                "runtimes.inference.include_packaged_model=false"])
                nodes.append(puller.start())
                for provider in providers:  # each hashes the model once, before the timing
                    pull_seconds(puller, [provider])
                suffix = "_capped" if capped else ""
                for _ in range(args.rounds):
                    if not capped:
                        results["tcp"].append(tcp_copy_seconds(model, root / "tcp.copy"))
                    results["one" + suffix].append(pull_seconds(puller, providers[:1]))
                    results["three" + suffix].append(pull_seconds(puller, providers))
            finally:
                for node in nodes:
                    node.stop()

    med = {k: statistics.median(v) for k, v in results.items()}
    mib = size / 2**20
    print(f"packaged model: {mib:.1f} MiB; medians of {args.rounds} rounds")
    for key, label in (("tcp", "plain TCP copy"), ("one", "blob, 1 provider, uncapped"),
                       ("three", "blob, 3 providers, uncapped"),
                       ("one_capped", f"blob, 1 provider at {args.cap:g} MiB/s"),
                       ("three_capped", f"blob, 3 providers at {args.cap:g} MiB/s each")):
        print(f"  {label:<38} {med[key]:7.2f} s  {mib / med[key]:8.1f} MiB/s   runs: "
              + ", ".join(f"{s:.2f}" for s in results[key]))
    print(f"blob (1 provider) ÷ TCP copy, throughput: {med['tcp'] / med['one']:.2f}  (goal >= 0.5)")
    print(f"3 providers ÷ 1, uncapped: {med['one'] / med['three']:.2f}x")
    print(f"3 providers ÷ 1, each at {args.cap:g} MiB/s: {med['one_capped'] / med['three_capped']:.2f}x")


if __name__ == "__main__":
    main()
