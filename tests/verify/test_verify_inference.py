"""The verifier on the real packaged Gemma 3 270M and real llama.cpp: honest results pass, cheats fail.

Generations are 12-24 tokens (64-96 for the spot-check tests, whose results span several chunks) so that the
file stays around three minutes on the 2-core dev box.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from hyperion_node.verify.evidence import Check, replay
from runtimes.inference import LlamaCppRuntime, Verdict, scoring, verify_inference
from runtimes.inference.commitments import LogitCommitment
from runtimes.interface import Final, HardwareSummary, Partial, RuntimeContext, Task
from tests.verify import cheaters
from tests.verify.draws import FixedChunks

MODEL = cheaters.MODEL
END_OF_TURN = 106  # Gemma's <end_of_turn>: what a truncating cheat claims ended its output
HW = HardwareSummary(cpu_model="test cpu", cpu_cores=2, ram_total_bytes=8 << 30, ram_available_bytes=4 << 30)
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "The three laws of robotics are",
    "In 1905 Albert Einstein published",
    "A recipe for pancakes: first,",
    "The mitochondria is the",
    "Prime numbers: 2, 3, 5, 7,",
    "Dear Sir or Madam, I am writing to",
    "The weather forecast for tomorrow",
    "SELECT name FROM users WHERE",
    "Photosynthesis converts",
    "The best way to learn a language is",
    "Q: What is 12 times 12?\nA:",
    "Le chat est sur",
    "import numpy as np\n",
    "The longest river in Africa is",
    "Roses are red, violets are",
    "In the beginning there was",
    "Top 3 tips for sleeping well:",
]


@asynccontextmanager
async def started(cache_dir: Path, data_dir: Path, **settings: Any) -> AsyncIterator[LlamaCppRuntime]:
    merged = {"n_ctx": 512, "n_threads": 1, **settings}
    runtime = LlamaCppRuntime(RuntimeContext(data_dir=data_dir, cache_dir=cache_dir, settings=merged, hardware=HW))
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.aclose()


@asynccontextmanager
async def cheat_runtime(cache_dir: Path, model_file: Path, data_dir: Path) -> AsyncIterator[LlamaCppRuntime]:
    """A runtime serving only ``model_file``, which has the packaged model's name and so its model id."""
    async with started(
        cache_dir, data_dir, include_packaged_model=False, models=[str(model_file.parent)]
    ) as runtime:
        yield runtime


async def run(runtime: LlamaCppRuntime, payload: Mapping[str, Any]) -> Final:
    async def emit(_partial: Partial) -> None:
        pass

    return await runtime.run(Task(task_id="t", runtime="inference", payload={"model": MODEL, **payload}), emit)


async def check(runtime: LlamaCppRuntime, payload: Mapping[str, Any], final: Final) -> Verdict:
    return await verify_inference(runtime, {"model": MODEL, **payload}, final.output, final.evidence)


def honest_payloads() -> list[dict[str, Any]]:
    payloads: list[dict[str, Any]] = []
    for n, prompt in enumerate(PROMPTS):
        payloads.append({"prompt": prompt, "max_tokens": 12 + n % 5, "temperature": 0.0})
        payloads.append({"prompt": prompt, "max_tokens": 16, "temperature": (0.5, 0.8, 1.2)[n % 3], "seed": n})
    payloads.append({"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 24, "seed": 3})
    payloads.append({"prompt": "1, 2, 3, 4,", "max_tokens": 24, "stop": [", 9"], "deterministic": True})
    payloads.append({"prompt": "Hello", "max_tokens": 8})  # random seed, recorded in the evidence
    return payloads


async def test_honest_results_pass(verify_cache_dir: Path, tmp_path: Path) -> None:
    verdicts = []
    async with started(verify_cache_dir, tmp_path) as runtime:
        for payload in honest_payloads():
            final = await run(runtime, payload)
            verdicts.append((payload, final.output["finish_reason"], await check(runtime, payload, final)))
    failed = [(p, v.reason, v.details) for p, _, v in verdicts if not v.ok]
    assert failed == []
    assert {finish for _, finish, _ in verdicts} == {"stop", "length"}
    assert max(v.details["median_deviation"] for _, _, v in verdicts) < 0.5


async def test_evidence_holds_a_compact_commitment(verify_cache_dir: Path, tmp_path: Path) -> None:
    async with started(verify_cache_dir, tmp_path) as runtime:
        final = await run(runtime, {"prompt": "Once upon a time", "max_tokens": 40, "seed": 1})
    commitment = final.evidence["logit_commitment"]
    assert commitment["scheme"] == "topk-logit-poly/1"
    assert (commitment["chunk_tokens"], commitment["top_k"], commitment["scale"]) == (32, 4, 64)
    parsed = LogitCommitment.from_evidence(commitment)
    assert parsed.positions == final.output["tokens_out"] + (final.evidence["end_token"] is not None)
    assert len(parsed.chunks[0]) == 256  # 32 positions x 4 coefficients x 2 bytes
    assert commitment["sha256"] == parsed.sha256()
    assert len(final.output["token_ids"]) == final.output["tokens_out"]
    assert final.evidence["sampler"] == {"top_k": 40, "min_p": 0.05, "typical_p": 1.0, "repeat_penalty": 1.0}


@pytest.mark.parametrize("model", ["q3_k_m", "q2_k"])
async def test_another_model_under_our_name_fails(
    model: str, verify_cache_dir: Path, cheat_models: dict[str, Path], tmp_path: Path
) -> None:
    payloads = [{"prompt": p, "max_tokens": 32, "temperature": t, "seed": n} for n, p in enumerate(PROMPTS[:6])
                for t in (0.0, 0.8)]
    async with cheat_runtime(verify_cache_dir, cheat_models[model], tmp_path / "cheat") as cheat:
        forged = [await run(cheat, payload) for payload in payloads]
    async with started(verify_cache_dir, tmp_path) as runtime:
        honest = await run(runtime, payloads[0])
        verdicts = [
            await check(runtime, p, cheaters.as_honest(f, honest.evidence))
            for p, f in zip(payloads, forged, strict=True)
        ]
        # Without the lie about the hash, it fails at once, on the hash.
        plain = await check(runtime, payloads[0], forged[0])
    caught = [v for v in verdicts if not v.ok]
    # Detection is statistical for the nearest cheat: bench_verify measured 38/40 for Q3_K_M at 16 tokens.
    assert len(caught) >= (len(payloads) if model == "q2_k" else len(payloads) - 2)
    # Caught on the values, or on the tokens that the other weights' logits made (verifier.judge).
    assert all(any(why in v.reason for why in ("logits differ", "pick", "trails our top-1")) for v in caught)
    assert not plain.ok
    assert "model_sha256" in plain.reason


async def test_sampling_at_another_temperature_fails(verify_cache_dir: Path, tmp_path: Path) -> None:
    async with started(verify_cache_dir, tmp_path) as runtime:
        verdicts = []
        for n, prompt in enumerate(PROMPTS[:8]):
            claimed = {"prompt": prompt, "max_tokens": 24, "temperature": 0.7, "seed": n}
            hotter = await run(runtime, {**claimed, "temperature": 1.4})
            verdicts.append(await check(runtime, claimed, cheaters.claim_temperature(hotter, 0.7)))
            greedy_claim = {**claimed, "temperature": 0.0}
            sampled = await run(runtime, {**claimed, "temperature": 1.0})
            verdicts.append(await check(runtime, greedy_claim, cheaters.claim_temperature(sampled, 0.0)))
    # Statistical at this model's noise level (verifier.py): some, not all, short results are caught alone
    # (bench_verify prints the rates over 100 trials), and the worker's results together are disputed by the
    # sequential test (hyperion_node/verify/evidence.py), as a requester checking each of them would.
    hotter, greedy_claimed = verdicts[0::2], verdicts[1::2]
    assert sum(not v.ok for v in hotter) >= 1
    together, _ = replay(Check(str(n), v.ok, scoring.check_scores(v.details)) for n, v in enumerate(hotter))
    assert together is not None, [scoring.check_scores(v.details) for v in hotter]
    assert sum(not v.ok for v in greedy_claimed) >= 3 * len(greedy_claimed) // 4


async def test_truncated_or_padded_output_fails(verify_cache_dir: Path, tmp_path: Path) -> None:
    async with started(verify_cache_dir, tmp_path) as runtime:
        llm_detok = await _detokenizer(runtime)
        verdicts = []
        for n, prompt in enumerate(PROMPTS[:6]):
            payload = {"prompt": prompt, "max_tokens": 16, "temperature": (0.0, 0.8)[n % 2], "seed": n}
            final = await run(runtime, payload)
            keep = max(1, final.output["tokens_out"] // 2)
            cut = cheaters.truncated(final, keep, end_token=END_OF_TURN, detokenize=llm_detok)
            verdicts.append(await check(runtime, payload, cut))
            text_only = {**final.output, "text": final.output["text"][: len(final.output["text"]) // 2]}
            verdicts.append(await check(runtime, payload, Final(text_only, final.evidence, final.work_units)))
            short = await run(runtime, {**payload, "max_tokens": 8})  # did half the work, bills it all
            donor = await run(runtime, {**payload, "prompt": PROMPTS[-1 - n]})
            pad = list(donor.output["token_ids"])[:8]
            longer = cheaters.padded(short, pad, detokenize=llm_detok, donor=donor)
            verdicts.append(await check(runtime, payload, longer))
    assert [v.reason for v in verdicts if v.ok] == []


async def test_commitments_copied_from_another_task_fail(verify_cache_dir: Path, tmp_path: Path) -> None:
    async with started(verify_cache_dir, tmp_path) as runtime:
        verdicts = []
        for n, prompt in enumerate(PROMPTS[:6]):
            payload = {"prompt": prompt, "max_tokens": 16, "temperature": (0.0, 0.8)[n % 2], "seed": n}
            final = await run(runtime, payload)
            other = await run(runtime, {**payload, "prompt": PROMPTS[n + 6]})
            verdicts.append(await check(runtime, payload, cheaters.copied_commitments(final, other)))
    assert [v.reason for v in verdicts if v.ok] == []
    assert all("logits differ" in v.reason for v in verdicts)


async def test_malformed_evidence_is_a_failed_verdict(verify_cache_dir: Path, tmp_path: Path) -> None:
    payload = {"prompt": "Hi", "max_tokens": 4, "temperature": 0.0}
    async with started(verify_cache_dir, tmp_path) as runtime:
        final = await run(runtime, payload)
        broken = [
            {**final.evidence, "logit_commitment": "garbage"},
            {**final.evidence, "logit_commitment": {**final.evidence["logit_commitment"], "sha256": "0" * 64}},
            {**final.evidence, "seed": -1},
            {**final.evidence, "sampler": {"top_k": 1}},
            {k: v for k, v in final.evidence.items() if k != "logit_commitment"},
        ]
        verdicts = [await verify_inference(runtime, {"model": MODEL, **payload}, final.output, e) for e in broken]
        bad_ids = {**final.output, "token_ids": [-5]}
        verdicts.append(await verify_inference(runtime, {"model": MODEL, **payload}, bad_ids, final.evidence))
    assert [v.ok for v in verdicts] == [False] * 6


async def _detokenizer(runtime: LlamaCppRuntime) -> Any:
    """The packaged model's token -> bytes, from a loaded instance."""
    await run(runtime, {"prompt": "x", "max_tokens": 1})
    holder: list[Any] = []
    runtime._pool.with_loaded(MODEL, lambda llm: holder.append(llm) or 0)  # type: ignore[union-attr]
    llm = holder[0]
    return lambda token: bytes(llm.detokenize([token]))


async def test_a_spot_check_reads_only_the_drawn_chunk(verify_cache_dir: Path, tmp_path: Path) -> None:
    payload = {"prompt": PROMPTS[1], "max_tokens": 96, "temperature": 0.8, "seed": 4}
    async with started(verify_cache_dir, tmp_path) as runtime:
        final = await run(runtime, payload)
        positions = final.output["tokens_out"] + (final.evidence["end_token"] is not None)
        chunks = -(-positions // 32)
        assert chunks >= 3, final.output
        verdicts = [
            await runtime.verify({"model": MODEL, **payload}, final.output, final.evidence,
                                 chunks=1, rng=FixedChunks([c]))
            for c in range(chunks)
        ]
    for c, verdict in enumerate(verdicts):
        assert verdict.ok, (c, verdict.reason, verdict.details)
        expected = [p for p in range(32 * c, min(32 * c + 32, positions))]
        if final.evidence["end_token"] is not None and positions - 1 not in expected:
            expected.append(positions - 1)
        assert verdict.details["checked_chunks"] == [c]
        assert verdict.details["checked_positions"] == len(expected)
        # The prefill stops at the input that produces the last checked position.
        assert verdict.details["prefilled_tokens"] == final.output["tokens_in"] + expected[-1]
        # The sampler replay skipped the unread positions and still follows the worker's random stream: an
        # honest replay picks the claimed token at most positions (~12% differ), a stream out of step at few.
        assert verdict.details["replay_differed"] <= len(expected) // 3, (c, verdict.details)


async def test_a_forged_chunk_is_caught_when_drawn(verify_cache_dir: Path, tmp_path: Path) -> None:
    """Padding forges only the chunks it fills: a spot check catches it when it draws one of them."""
    payload = {"prompt": PROMPTS[1], "max_tokens": 64, "temperature": 0.0}
    async with started(verify_cache_dir, tmp_path) as runtime:
        detok = await _detokenizer(runtime)
        short = await run(runtime, {**payload, "max_tokens": 32})
        assert (short.output["tokens_out"], short.evidence["end_token"]) == (32, None), short.output
        donor = await run(runtime, {**payload, "prompt": PROMPTS[4]})
        longer = cheaters.padded(short, list(donor.output["token_ids"])[:32], detokenize=detok, donor=donor)

        async def verdict(**kwargs: Any) -> Verdict:
            return await runtime.verify({"model": MODEL, **payload}, longer.output, longer.evidence, **kwargs)

        padding_drawn = await verdict(chunks=1, rng=FixedChunks([1]))
        every_chunk = await verdict(chunks=0)
        honest_part_drawn = await verdict(chunks=1, rng=FixedChunks([0]))
    assert not padding_drawn.ok
    assert not every_chunk.ok
    # The trade-off of reading one chunk (README, verifier.py): a forgery confined to undrawn chunks passes.
    assert honest_part_drawn.ok, honest_part_drawn.reason


async def test_a_truncation_is_caught_whichever_chunk_is_drawn(verify_cache_dir: Path, tmp_path: Path) -> None:
    async with started(verify_cache_dir, tmp_path) as runtime:
        detok = await _detokenizer(runtime)
        verdicts = []
        for n, prompt in enumerate(PROMPTS[:4]):
            payload = {"prompt": prompt, "max_tokens": 64, "temperature": (0.0, 0.8)[n % 2], "seed": n}
            final = await run(runtime, payload)
            keep = final.output["tokens_out"] - 1 if final.output["tokens_out"] <= 40 else 40
            cut = cheaters.truncated(final, keep, end_token=END_OF_TURN, detokenize=detok)
            verdicts.append(await runtime.verify({"model": MODEL, **payload}, cut.output, cut.evidence,
                                                 chunks=1, rng=FixedChunks([0])))
    assert [v.reason for v in verdicts if v.ok] == []
    assert all(v.details["checked_positions"] > 32 or v.details["positions"] <= 32 for v in verdicts)
