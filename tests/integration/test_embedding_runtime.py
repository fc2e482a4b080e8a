"""The embedding runtime on the real packaged model: unit vectors, a bill the requester can check, spot checks.

An honest result passes the verifier's re-embedding; a vector swapped for another text's, a vector from
another model's space (scaled noise) and a wrong count fail it; a text past n_ctx is refused in one line.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from hyperion_node.errors import UserError
from runtimes.inference.embedding import EmbeddingTally, LlamaEmbeddingRuntime, cosine
from runtimes.interface import Final, Partial, RuntimeContext, Task
from tests.integration.test_inference_runtime import HW, MODEL

TEXTS = ["The cat sat on the mat.", "Stock prices fell today.", "The cat sat on the mat."]


@asynccontextmanager
async def embedder(cache_dir: Path, data_dir: Path, **settings: Any) -> AsyncIterator[LlamaEmbeddingRuntime]:
    context = RuntimeContext(data_dir=data_dir, cache_dir=cache_dir, hardware=HW,
                             settings={"include_packaged_model": True, "n_threads": 1, **settings})
    runtime = LlamaEmbeddingRuntime(context)
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.aclose()


async def run(runtime: LlamaEmbeddingRuntime, payload: dict[str, Any]) -> Final:
    async def emit(_partial: Partial) -> None:
        raise AssertionError("an embedding streams nothing")

    return await runtime.run(Task(task_id="t", runtime="embedding", payload=payload), emit)


async def test_vectors_bills_and_spot_checks(inference_cache_dir: Path, tmp_path: Path) -> None:
    payload = {"model": MODEL, "input": TEXTS}
    async with embedder(inference_cache_dir, tmp_path, max_inputs=4) as runtime:
        [offer] = runtime.offers(None)
        assert (offer.runtime, offer.item, offer.unit) == ("embedding", MODEL, "token")
        final = await run(runtime, payload)
        vectors = final.output["embeddings"]
        honest = await runtime.verify(payload, final.output, final.evidence, chunks=0)
        swapped = {**final.output, "embeddings": [vectors[1], vectors[0], vectors[2]]}
        noise = random.Random(1)
        foreign = {**final.output, "embeddings": [[x + noise.gauss(0, 0.01) for x in v] for v in vectors]}
        short = {**final.output, "embeddings": vectors[:2]}
        verdicts = [await runtime.verify(payload, output, final.evidence, chunks=0)
                    for output in (swapped, foreign, short)]
        with pytest.raises(UserError, match="at most 4") as too_many:
            await run(runtime, {"model": MODEL, "input": ["x"] * 5})
        with pytest.raises(UserError, match="tokens; this node embeds at most 16"):
            async with embedder(inference_cache_dir, tmp_path / "small", n_ctx=16) as small:
                await run(small, {"model": MODEL, "input": ["word " * 40]})
    assert "\n" not in too_many.value.one_line()
    assert final.output["dimensions"] == 640
    assert all(math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, abs_tol=1e-4) for v in vectors)
    assert cosine(vectors[0], vectors[2]) > 0.998  # one text at two places in a batch
    assert cosine(vectors[0], vectors[1]) < 0.99
    assert honest.ok, honest.reason
    assert min(honest.details["cosines"]) > 0.998
    assert [v.ok for v in verdicts] == [False, False, False]
    assert "cosine" in verdicts[0].reason
    assert "cosine" in verdicts[1].reason
    tally = EmbeddingTally(payload)
    assert tally.units(final.output) == (final.output["tokens_in"],) * 2
    assert final.work_units == final.output["tokens_in"]
    assert isinstance(tally.units({**final.output, "tokens_in": 10_000}), str)
    assert isinstance(tally.units(short), str)
