"""Models by memory tier, on real GGUF files: the packaged Gemma 3 270M (Q4_K_M) and the same model requantized to
Q2_K with llama.cpp's own quantizer. Listed together they are one model, ``gemma-3-270m``; the node serves the
best quantization that fits its memory budget, says why, and refuses a request for a higher tier than it serves.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import trio
from typer.testing import CliRunner

from hyperion_node.cli.app import app
from hyperion_node.errors import UserError
from runtimes.inference import LlamaCppRuntime, ModelRegistry
from runtimes.inference.tiers import choose, family_name, tier_of, tier_rank
from runtimes.interface import HardwareSummary, Partial, RuntimeContext, Task
from tests.verify.cheaters import requantized

HW = HardwareSummary(cpu_model="test cpu", cpu_cores=2, ram_total_bytes=8 << 30, ram_available_bytes=4 << 30)
FAMILY = "gemma-3-270m"


@pytest.fixture(scope="module")
def family_dir(inference_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the model at two quantizations, named as a model's files are."""
    packaged = inference_cache_dir / "models" / "gemma-3-270m-q4_k_m.gguf"
    root = tmp_path_factory.mktemp("tiers")
    q2 = requantized(packaged, root / "made", "q2_k")
    family = root / "family"
    family.mkdir()
    os.link(packaged, family / "gemma-3-270m-q4_k_m.gguf")
    os.link(q2, family / "gemma-3-270m-q2_k.gguf")
    return family


def runtime_for(cache_dir: Path, data_dir: Path, family: Path, **settings: Any) -> LlamaCppRuntime:
    merged = {"n_ctx": 256, "n_threads": 1, "max_streams": 1, "include_packaged_model": False,
              "models": [str(family)], **settings}
    return LlamaCppRuntime(RuntimeContext(data_dir=data_dir, cache_dir=cache_dir, settings=merged, hardware=HW))


def footprints(cache_dir: Path, data_dir: Path, family: Path) -> dict[str, int]:
    probe = runtime_for(cache_dir, data_dir, family)
    return {e.quantization: probe._footprint(e) for e in ModelRegistry.scan([family])}


def task(**payload: Any) -> Task:
    return Task(task_id="t", runtime="inference", payload={"prompt": "Name a colour.", "max_tokens": 3, **payload})


async def generate(runtime: LlamaCppRuntime, **payload: Any) -> dict[str, Any]:
    async def emit(_partial: Partial) -> None:
        pass

    final = await runtime.run(task(**payload), emit)
    return dict(final.evidence)


async def test_a_roomy_node_serves_the_better_quantization_and_says_why(
    inference_cache_dir: Path, family_dir: Path, tmp_path: Path
) -> None:
    sizes = footprints(inference_cache_dir, tmp_path, family_dir)
    runtime = runtime_for(inference_cache_dir, tmp_path, family_dir, memory_budget_bytes=sizes["Q4_K_M"] + 1)
    await runtime.start()
    try:
        [offer] = runtime.offers(None)
        assert offer.item == FAMILY
        assert (offer.details["quantization"], offer.details["tier"]) == ("Q4_K_M", "high")
        assert str(offer.details["tier_reason"]).startswith("Q4_K_M: the best that fits")
        assert sorted(offer.details["variants"]) == ["Q2_K", "Q4_K_M"]  # type: ignore[arg-type]
        evidence = await generate(runtime, model=FAMILY, min_tier="high")
        assert evidence["quantization"] == "Q4_K_M"
    finally:
        await runtime.aclose()


async def test_a_small_budget_picks_the_smaller_quantization_and_refuses_a_higher_tier(
    inference_cache_dir: Path, family_dir: Path, tmp_path: Path
) -> None:
    sizes = footprints(inference_cache_dir, tmp_path, family_dir)
    assert sizes["Q2_K"] < sizes["Q4_K_M"]
    budget = (sizes["Q2_K"] + sizes["Q4_K_M"]) // 2
    runtime = runtime_for(inference_cache_dir, tmp_path, family_dir, memory_budget_bytes=budget)
    await runtime.start()
    try:
        [offer] = runtime.offers(None)
        assert (offer.item, offer.details["quantization"], offer.details["tier"]) == (FAMILY, "Q2_K", "emergency")
        reason = str(offer.details["tier_reason"])
        assert reason.startswith("Q2_K: the best that fits"), reason
        assert "memory_budget_bytes" in reason
        assert "Q4_K_M (" in reason, reason
        assert reason.endswith("would not fit"), reason
        # A requester that needs at least the high tier is refused with the reason, before and at run time.
        estimate = runtime.estimate(task(model=FAMILY, min_tier="high"))
        assert not estimate.accepted
        assert "Q2_K (emergency tier), below the requested minimum 'high'" in str(estimate.reason)
        with pytest.raises(UserError, match="below the requested minimum 'high'"):
            await generate(runtime, model=FAMILY, min_tier="high")
        # Served by the family's name and by the chosen file's own id; the file passed over is not served.
        assert (await generate(runtime, model=FAMILY, min_tier="emergency"))["quantization"] == "Q2_K"
        assert (await generate(runtime, model="gemma-3-270m-q2_k"))["model"] == FAMILY
        assert not runtime.estimate(task(model="gemma-3-270m-q4_k_m")).accepted
        with pytest.raises(UserError, match="min_tier"):
            await generate(runtime, model=FAMILY, min_tier="best")
    finally:
        with trio.CancelScope(shield=True):
            await runtime.aclose()


def test_family_names_tiers_and_the_choice() -> None:
    assert family_name("gemma-3-270m-q4_k_m", "Q4_K_M") == "gemma-3-270m"
    assert family_name("llama-3.1-8b-instruct.q8_0", "Q8_0") == "llama-3.1-8b-instruct"
    assert family_name("qwen2-7b-iq2_m-imat", "IQ2_M") == "qwen2-7b-imat"
    assert family_name("mymodel", "unknown") == "mymodel"
    assert [tier_of(q) for q in ("Q8_0", "Q6_K_L", "Q5_K_M", "Q4_K_S", "IQ4_XS", "IQ3_M", "Q2_K", "IQ2_M", "F16")] == [
        "premium", "premium", "high", "high", "good", "good", "emergency", "emergency", "premium"]
    assert tier_rank("premium") > tier_rank("high") > tier_rank("good") > tier_rank("emergency") > tier_rank(None)
    gib = 2**30
    # A 7B model's files (sizes as published) against the seed's tiers: 8 GB+ Premium, 6-8 High, 4-6 Good.
    quants = ["Q2_K", "IQ3_M", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"]
    files = [int(s * gib) for s in (2.7, 3.3, 4.1, 4.8, 5.5, 7.2)]
    footprint = [int(f * 1.1) for f in files]
    assert quants[choose(quants, footprint, 10 * gib, "test").chosen] == "Q8_0"
    assert quants[choose(quants, footprint, 6 * gib, "test").chosen] == "Q5_K_M"
    assert quants[choose(quants, footprint, 4 * gib, "test").chosen] == "IQ3_M"
    none_fits = choose(quants, footprint, 1 * gib, "test")
    assert quants[none_fits.chosen] == "Q2_K"
    assert "none fits" in none_fits.reason


def one_line_error(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line]
    assert len(lines) == 1, output
    assert lines[0].startswith("hyperion-node: "), output
    return lines[0]


async def test_models_add_list_remove_and_the_runtime_serves_what_was_added(
    inference_cache_dir: Path, family_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("HYPERION_DATA_DIR", "HYPERION_CONFIG", "XDG_DATA_HOME"):
        monkeypatch.delenv(var, raising=False)
    runner = CliRunner()
    data = tmp_path / "node"
    where = ["--data-dir", str(data)]
    added = runner.invoke(app, ["models", "add", str(family_dir / "gemma-3-270m-q2_k.gguf"), *where])
    assert added.exit_code == 0, added.output
    assert "added gemma-3-270m-q2_k (gemma3, Q2_K, emergency tier" in added.output
    assert (data / "models" / "gemma-3-270m-q2_k.gguf").is_file()
    listed = runner.invoke(app, ["models", "list", "--json", *where])
    assert listed.exit_code == 0, listed.output
    rows = {r["id"]: r for r in json.loads(listed.output)["models"]}
    assert rows["gemma-3-270m-q2_k"]["model"] == rows["gemma-3-270m-q4_k_m"]["model"] == FAMILY
    assert (rows["gemma-3-270m-q2_k"]["source"], rows["gemma-3-270m-q4_k_m"]["source"]) == ("data dir", "packaged")
    # Mistakes get one line and a non-zero exit.
    assert "already there" in one_line_error(
        runner.invoke(app, ["models", "add", str(family_dir / "gemma-3-270m-q2_k.gguf"), *where]).output)
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("not a model")
    bad = runner.invoke(app, ["models", "add", str(not_gguf), *where])
    assert bad.exit_code != 0
    assert "not a readable GGUF model" in one_line_error(bad.output)
    packaged = runner.invoke(app, ["models", "remove", "gemma-3-270m-q4_k_m", *where])
    assert packaged.exit_code != 0
    assert "include_packaged_model = false" in one_line_error(packaged.output)
    # The runtime on that data dir serves the family; the roomy default budget picks Q4_K_M.
    context = RuntimeContext(data_dir=data, cache_dir=inference_cache_dir, hardware=HW,
                             settings={"n_ctx": 256, "n_threads": 1, "max_streams": 1})
    runtime = LlamaCppRuntime(context)
    await runtime.start()
    try:
        [offer] = runtime.offers(None)
        assert (offer.item, offer.details["quantization"]) == (FAMILY, "Q4_K_M")
    finally:
        await runtime.aclose()
    removed = runner.invoke(app, ["models", "remove", "gemma-3-270m-q2_k", *where])
    assert removed.exit_code == 0, removed.output
    assert not (data / "models" / "gemma-3-270m-q2_k.gguf").exists()


def test_a_requester_passes_over_a_worker_below_the_tier_it_asks_for(
        inference_cache_dir: Path, family_dir: Path, tmp_path: Path) -> None:
    """Real daemons: L serves the family at Q2_K (its memory budget), H at Q4_K_M. Offers carry their tier on
    the wire, so R's request for the high tier goes to H without trying L, and one for the premium tier,
    which nobody serves, is refused at R without trying anyone."""
    import httpx

    from hyperion_node.testing.process import NodeProcess, wait_until

    sizes = footprints(inference_cache_dir, tmp_path, family_dir)
    common = ["p2p.mdns=false", "hardware.benchmark_on_start=false", "runtimes.inference.n_ctx=256",
              'runtimes.disabled=["zk-groth16", "render-blender"]', "runtimes.inference.include_packaged_model=false",
              f'runtimes.inference.models=["{family_dir}"]']
    nodes: list[NodeProcess] = []
    try:
        low = NodeProcess(tmp_path / "l", sets=[
            *common, f"runtimes.inference.memory_budget_bytes={(sizes['Q2_K'] + sizes['Q4_K_M']) // 2}"]).start()
        nodes.append(low)
        boot = f'p2p.bootstrap=["{low.p2p_addr()}"]'
        high = NodeProcess(tmp_path / "h", sets=[*common, boot]).start()
        nodes.append(high)
        r = NodeProcess(tmp_path / "r", sets=[*common[:2], 'runtimes.disabled=["inference", "zk-groth16", '
                                              '"render-blender"]', boot]).start()
        nodes.append(r)
        wait_until(lambda: {p["peer_id"]: [o.get("tier") for o in p["offers"]] for p in r.get("/api/peers")
                            if p["peer_id"] in (low.peer_id, high.peer_id)}
                   == {low.peer_id: ["emergency"], high.peer_id: ["high"]},
                   timeout=60, what="R knows both workers' offers and their tiers")
        for _ in range(3):
            answer = httpx.post(r.api_url + "/v1/completions", timeout=120,
                                json={"model": FAMILY, "prompt": "Name a colour.", "max_tokens": 3, "min_tier": "high"},
                                headers={"Authorization": f"Bearer {r.token}"})
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-hyperion-worker"] == high.peer_id
            newest = r.get("/api/tasks?limit=1")[0]
            assert [a["peer_id"] for a in newest["attempts"]] == [high.peer_id], newest
        refused = httpx.post(r.api_url + "/v1/completions", timeout=120,
                             json={"model": FAMILY, "prompt": "Name a colour.", "max_tokens": 3,
                                   "min_tier": "premium"},
                             headers={"Authorization": f"Bearer {r.token}"})
        assert refused.status_code == 400, refused.text
        assert "serve a tier below the payload's min_tier 'premium'" in refused.text
        assert not r.get("/api/tasks?limit=1")[0]["attempts"]
    finally:
        for node in nodes:
            node.stop()
