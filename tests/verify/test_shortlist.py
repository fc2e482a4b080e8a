"""The verifier's shortlisted reading of a row gives what reading it whole gave: the same picks, statistics, verdicts.

The judge's bounds were calibrated on statistics recorded with the whole-row computation
(``shortlisted=False``: argpartition for the certified ids, ``llama_sampler_sample`` per sampler chain), so the
faster one must not move any of them: checked here on synthetic rows (ties included) and on the real model,
chain by chain and result by result, honest and cheating.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtimes.inference import LlamaCppRuntime
from runtimes.inference.claims import Claim
from runtimes.inference.commitments import (
    PRIME,
    CommitmentParams,
    LogitCommitment,
    certified_ids,
    leading,
    shortlist,
    top_k,
)
from runtimes.inference.generation import SAMPLER_DEFAULTS
from runtimes.inference.verifier import CheckStatistics, SamplerReplay, forward_rows
from runtimes.interface import Final
from tests.verify import cheaters
from tests.verify.draws import FixedChunks
from tests.verify.test_verify_inference import MODEL, PROMPTS, cheat_runtime, run, started

VOCAB = 262_144  # Gemma's


def rows() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    out = [rng.normal(scale=s, size=VOCAB).astype(np.float32) for s in (0.5, 2.0, 6.0)]
    flat = np.zeros(VOCAB, dtype=np.float32)  # ties everywhere below a few leaders
    flat[[3, 70_000, 9]] = [5.0, 4.0, 4.0]
    out.append(flat)
    quantized = np.round(rng.normal(scale=3, size=VOCAB)).astype(np.float32)  # many exact ties at the top
    out.append(quantized)
    twins = rng.normal(size=VOCAB).astype(np.float32)
    twins[[11, 11 + PRIME, 12 + 2 * PRIME]] = [30.0, 29.9, 29.0]  # residue twins in the top-k
    out.append(twins)
    return out


@pytest.mark.parametrize("count", [5, 41, 300])
def test_the_shortlist_holds_every_id_at_or_above_the_count_th_largest(count: int) -> None:
    for logits in rows():
        near = shortlist(logits, count)
        kth = np.partition(logits, -count)[-count]
        assert set(np.flatnonzero(logits >= kth)) <= set(near.tolist())
        assert np.all(np.diff(near) > 0)
    nan = rows()[0].copy()
    nan[5] = np.nan
    assert shortlist(nan, 5).size == VOCAB  # not finite: the whole row


def test_certified_ids_from_the_shortlist_are_those_of_the_whole_row() -> None:
    for logits, k, tolerance in itertools.product(rows(), (1, 4, 8), (0.0, 0.05, 1.0)):
        near = shortlist(logits, k + 1)
        assert certified_ids(logits, k, tolerance, top=leading(logits, near, k + 1)) == certified_ids(
            logits, k, tolerance
        )
        if len(set(np.sort(logits)[-(k + 2):].tolist())) == k + 2:  # no tie at the boundary: top_k itself
            assert leading(logits, near, k + 1) == top_k(logits, k + 1)


# --- the real model ---------------------------------------------------------------------------------------


def loaded(runtime: LlamaCppRuntime) -> Any:
    holder: list[Any] = []
    runtime._pool.with_loaded(MODEL, lambda llm: holder.append(llm) or 0)  # type: ignore[union-attr]
    return holder[0]


def claim_for(temperature: float, seed: int) -> Claim:
    """What ``SamplerReplay`` reads of a claim: its seed, temperature and top_p."""
    empty = LogitCommitment(params=CommitmentParams(), positions=0, chunks=())
    return Claim(token_ids=(), end_token=None, commitment=empty, seed=seed, temperature=temperature, top_p=0.95)


async def test_every_chain_picks_the_same_token_as_llama_sampler_sample(
    verify_cache_dir: Path, tmp_path: Path
) -> None:
    """Each temperature's chain, stepped along real rows, picks what llama.cpp's own sampling picks, token by
    token; also where the 41 largest logits tie (the whole-row path), written into llama.cpp's logits."""
    import llama_cpp

    async with started(verify_cache_dir, tmp_path) as runtime:
        await run(runtime, {"prompt": "x", "max_tokens": 1})
        llm = loaded(runtime)
        n_vocab = int(llm.n_vocab())
        picks = 0
        for n, prompt in enumerate(PROMPTS[:6]):
            llm.reset()
            llm.eval(llm.tokenize(prompt.encode(), add_bos=True))
            row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
            if n == 5:  # ties among the top: a row llama.cpp cannot have been given a shortlist of
                row[:] = np.round(row)
            logits = row.copy()
            for temperature in (0.3, 0.8, 1.4):
                fast = SamplerReplay(llm, llama_cpp, claim_for(temperature, n), SAMPLER_DEFAULTS)
                slow = SamplerReplay(llm, llama_cpp, claim_for(temperature, n), SAMPLER_DEFAULTS, shortlisted=False)
                try:
                    assert fast._split is not None
                    for _ in range(24):  # the same row again and again: the random streams move on
                        survivors = fast._survivors(logits, shortlist(logits, fast.shortlist_size))
                        for i, (a, b) in enumerate(zip((fast._chain, *fast._others), (slow._chain, *slow._others),
                                                       strict=True)):
                            mine = fast._sample(a, fast._split[1][i], survivors)
                            theirs = int(llama_cpp.llama_sampler_sample(b.sampler, llm.ctx, -1))
                            assert mine == theirs, (prompt, temperature, i)
                            picks += 1
                        kth = np.partition(logits, -fast._top_k)[-fast._top_k]
                        assert survivors[0]["logit"].min() == kth
                finally:
                    fast.close()
                    slow.close()
        assert picks == 6 * 3 * 24 * 6


async def test_the_shortlist_of_real_rows_is_short(verify_cache_dir: Path, tmp_path: Path) -> None:
    """What makes it fast: a few hundred ids of 262,144 on every row of a generation (a margin below the top
    logit, the first attempt, kept up to 240,000 on rows late in a generation, as slow as the whole row)."""
    import llama_cpp

    payload = {"prompt": PROMPTS[1], "max_tokens": 96, "temperature": 0.0}
    async with started(verify_cache_dir, tmp_path) as runtime:
        final = await run(runtime, payload)
        llm = loaded(runtime)
        prompt = llm.tokenize(PROMPTS[1].encode(), add_bos=True)
        generated = final.output["token_ids"]
        sizes: list[int] = []

        def on_rows(_at: list[int], _rows_at: list[int], rows: list[np.ndarray]) -> None:
            sizes.extend(shortlist(logits, 41).size for logits in rows)

        forward_rows(llm, llama_cpp, prompt, generated, list(range(len(generated))), on_rows,
                     check_cancelled=lambda: None)
    assert len(sizes) == len(generated) > 64
    assert min(sizes) >= 41
    assert max(sizes) <= 2048, sorted(sizes)


def same(a: Any, b: Any) -> None:
    """Two verdicts with equal verdicts, reasons and statistics (all but the time taken)."""
    assert (a.ok, a.reason) == (b.ok, b.reason)
    assert CheckStatistics.from_details(a.details) == CheckStatistics.from_details(b.details)
    assert {k: v for k, v in a.details.items() if k != "seconds"} == {
        k: v for k, v in b.details.items() if k != "seconds"
    }


async def test_verdicts_and_statistics_are_those_of_the_whole_row_reading(
    verify_cache_dir: Path, cheat_models: dict[str, Path], tmp_path: Path
) -> None:
    """Honest results greedy and sampled, every chunk read, and the cheats whose statistics the bounds rest on."""
    payloads: list[dict[str, Any]] = [
        {"prompt": PROMPTS[n], "max_tokens": 40, "temperature": t, "seed": 50 + n}
        for n, t in enumerate((0.0, 0.5, 0.8, 1.0, 1.2, 1.4))
    ]
    async with cheat_runtime(verify_cache_dir, cheat_models["q3_k_m"], tmp_path / "cheat") as cheat:
        other_weights = [await run(cheat, p) for p in payloads[:2]]
    async with started(verify_cache_dir, tmp_path) as runtime:
        results: list[tuple[Mapping[str, Any], Final]] = [(p, await run(runtime, p)) for p in payloads]
        claimed = {**payloads[2], "temperature": 0.8}
        for sampled in (1.4, 0.4):  # temperature lies: the other temperatures' replays decide these
            hotter = await run(runtime, {**claimed, "temperature": sampled})
            results.append((claimed, cheaters.claim_temperature(hotter, 0.8)))
        greedy = {**payloads[0], "temperature": 0.0}
        results.append((greedy, cheaters.claim_temperature(await run(runtime, {**greedy, "temperature": 0.8}), 0.0)))
        results += [(p, cheaters.as_honest(f, results[0][1].evidence)) for p, f in zip(payloads, other_weights,
                                                                                      strict=False)]
        disputed = 0
        for (payload, final), chunk in itertools.product(results, (None, 1)):
            verdicts = []
            for shortlisted in (True, False):
                draw = {"chunks": 0} if chunk is None else {"chunks": 1, "rng": FixedChunks([chunk])}
                verdicts.append(await runtime.verify({"model": MODEL, **payload}, final.output, final.evidence,
                                                     shortlisted=shortlisted, **draw))
            same(*verdicts)
            disputed += not verdicts[0].ok
    assert disputed >= 4  # failing verdicts compared too, not only passing ones
