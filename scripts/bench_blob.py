"""Model transfer over /hyperion/blob/1 between real daemons on loopback, against a plain TCP copy.

Measures, side by side in one run (rounds alternate, medians reported):
  * baseline: the packaged model sent over one plain TCP connection on 127.0.0.1 (``socket.sendfile`` on one
    side, ``recv_into`` and a file write on the other, each in its own process), no hashing;
  * the transport's ceiling: the same over one raw py-libp2p stream (Noise, yamux) between two processes;
  * one provider: B's `models pull` of the packaged model from daemon A, upload uncapped, from the request to
    the model in B's models folder (find, manifest, every chunk checked and written, the whole-file hash),
    over A's lane (``hyperion_node/blobs/lane.py``), and the same by a puller with the lane off (``blobs.lane
    = false``: every chunk over the libp2p stream);
  * three providers ÷ one, twice: uncapped (bound by this machine's CPU: four daemons on its cores), and each
    provider capped at ``--cap`` MiB/s (what a fetch from home connections is bound by: their upload).

Every provider has answered one pull before the timing starts, so the figures leave out its first hashing of
the model (~1 s a GiB, once per file: the address is kept in ``blobs/hashes.json``).

    .venv/bin/python scripts/bench_blob.py [--rounds 3] [--cap 20]
"""

from __future__ import annotations

import argparse
import functools
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

# The transport's own ceiling: the same file over one raw py-libp2p stream (Noise, yamux) between two processes,
# no framing, no hashing, written to disk on the other side.
LIBP2P_SENDER = """
import sys, trio
from hyperion_node.testing.hostile import hostile_host
async def main():
    async with hostile_host() as host:
        done = trio.Event()
        async def serve(stream):
            with open(sys.argv[1], "rb") as f:
                while chunk := f.read(1 << 20):
                    await stream.write(chunk)
            await stream.close()
            done.set()
        host.host.set_stream_handler("/bench/raw/1", serve)
        print(host.addr(), flush=True)
        await done.wait()
        await trio.sleep(1)
trio.run(main)
"""
LIBP2P_RECEIVER = """
import sys, time, trio
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from hyperion_node.testing.hostile import hostile_host
async def main():
    async with hostile_host() as host:
        peer = await host.connect(sys.argv[1])
        started = time.perf_counter()
        stream = await host.host.new_stream(ID.from_base58(peer), ["/bench/raw/1"])
        with open(sys.argv[2], "wb") as out:
            try:
                while data := await stream.read(1 << 20):
                    out.write(data)
            except StreamEOF:  # py-libp2p's end of stream
                pass
        print(time.perf_counter() - started)
trio.run(main)
"""


def libp2p_copy_seconds(source: Path, target: Path) -> float:
    sender = subprocess.Popen([sys.executable, "-c", LIBP2P_SENDER, str(source)], stdout=subprocess.PIPE, text=True)
    assert sender.stdout is not None
    addr = sender.stdout.readline().strip()
    out = subprocess.run([sys.executable, "-c", LIBP2P_RECEIVER, addr, str(target)], check=True,
                         capture_output=True, text=True)
    sender.wait()
    assert target.stat().st_size == source.stat().st_size
    target.unlink()
    return float(out.stdout.strip().splitlines()[-1])


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


def providers_found(node: NodeProcess) -> bool:
    return len(node.get(f"/api/providers/inference/{MODEL}")) >= 3


def pull_seconds(puller: NodeProcess, providers: list[NodeProcess], *, lane: bool = True) -> float:
    """One pull of the packaged model into ``puller``'s models folder, from ``providers`` (over their lanes,
    or over the stream with ``lane`` False); the file is removed after, so that the next round pulls it
    again."""
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
    assert len(pull["lanes"]) == (len(providers) if lane else 0), pull
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
        results: dict[str, list[float]] = {k: [] for k in ("tcp", "libp2p", "one", "one_stream", "three",
                                                           "one_capped", "three_capped")}
        for capped in (False, True):
            cap = f"blobs.max_upload_mib_s={args.cap if capped else 0}"
            nodes: list[NodeProcess] = []
            try:
                nodes.append(NodeProcess(root / f"p0{capped}", sets=[*FAST, cap]).start())
                boot = f'p2p.bootstrap=["{nodes[0].p2p_addr()}"]'
                nodes += [NodeProcess(root / f"p{i}{capped}", sets=[*FAST, cap, boot]).start() for i in (1, 2)]
                providers = list(nodes)
                puller = NodeProcess(root / f"b{capped}", sets=[*FAST, boot,
                                                                "runtimes.inference.include_packaged_model=false"])
                nodes.append(puller.start())
                streamer = NodeProcess(root / f"s{capped}", sets=[*FAST, boot, "blobs.lane=false",
                                                                  "runtimes.inference.include_packaged_model=false"])
                if not capped:
                    nodes.append(streamer.start())
                wait_until(functools.partial(providers_found, puller), timeout=120,
                           what="the puller finds the three providers")
                for provider in providers:  # each hashes the model once, before the timing
                    pull_seconds(puller, [provider])
                suffix = "_capped" if capped else ""
                for _ in range(args.rounds):
                    if not capped:
                        results["tcp"].append(tcp_copy_seconds(model, root / "tcp.copy"))
                        results["libp2p"].append(libp2p_copy_seconds(model, root / "libp2p.copy"))
                        results["one_stream"].append(pull_seconds(streamer, providers[:1], lane=False))
                    results["one" + suffix].append(pull_seconds(puller, providers[:1]))
                    results["three" + suffix].append(pull_seconds(puller, providers))
            finally:
                for node in nodes:
                    node.stop()

    med = {k: statistics.median(v) for k, v in results.items()}
    mib = size / 2**20
    print(f"packaged model: {mib:.1f} MiB; medians of {args.rounds} rounds")
    for key, label in (("tcp", "plain TCP copy"), ("libp2p", "raw py-libp2p stream"),
                       ("one", "blob, 1 provider, uncapped"),
                       ("one_stream", "blob, 1 provider, stream (lane off)"),
                       ("three", "blob, 3 providers, uncapped"),
                       ("one_capped", f"blob, 1 provider at {args.cap:g} MiB/s"),
                       ("three_capped", f"blob, 3 providers at {args.cap:g} MiB/s each")):
        print(f"  {label:<38} {med[key]:7.2f} s  {mib / med[key]:8.1f} MiB/s   runs: "
              + ", ".join(f"{s:.2f}" for s in results[key]))
    print(f"blob (1 provider) ÷ TCP copy, throughput: {med['tcp'] / med['one']:.2f}  (goal >= 0.5)")
    print(f"blob (1 provider) ÷ raw py-libp2p stream, throughput: {med['libp2p'] / med['one']:.2f}")
    print(f"blob over the lane ÷ over the stream (lane off), 1 provider: {med['one_stream'] / med['one']:.2f}x")
    print(f"blob over the stream (lane off) ÷ TCP copy: {med['tcp'] / med['one_stream']:.2f}")
    print(f"3 providers ÷ 1, uncapped: {med['one'] / med['three']:.2f}x")
    print(f"3 providers ÷ 1, each at {args.cap:g} MiB/s: {med['one_capped'] / med['three_capped']:.2f}x")


if __name__ == "__main__":
    main()
