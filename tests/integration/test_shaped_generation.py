"""Shaped generations on the real packaged model: JSON schemas by grammar, penalties, logit_bias, logprobs.

What a requester relies on: output under a schema parses and follows it, batched beside other streams too;
a bias of -100 keeps a token out; logprobs are a distribution's, the chosen token's among them; a shaped
result passes the verifier's check (values, text, finish, JSON), and a forged one does not; a schema that
cannot become a grammar fails its own request alone, with a one-line error.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import trio

from hyperion_node.errors import UserError
from runtimes.inference.runtime import verify_inference
from tests.integration.test_batching import N_CTX, run, run_together
from tests.integration.test_inference_runtime import MODEL, started

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"},
                   "colour": {"enum": ["red", "green", "blue"]}},
    "required": ["name", "age", "colour"],
}
ASK = [{"role": "user", "content": "Describe a person as JSON with a name, an age and a favourite colour."}]


async def test_a_json_schema_is_followed_batched_and_alone_and_passes_the_verifier(
    inference_cache_dir: Path, tmp_path: Path
) -> None:
    shaped = {"messages": ASK, "max_tokens": 60, "temperature": 0.7, "seed": 5, "json_schema": PERSON}
    greedy = {"messages": ASK, "max_tokens": 60, "temperature": 0.0, "json_schema": {"type": "object"}}
    free = {"prompt": "Once upon a time", "max_tokens": 30, "temperature": 0.0}
    async with started(inference_cache_dir, tmp_path, n_ctx=N_CTX, max_streams=4) as runtime:
        results = await run_together(runtime, [shaped, greedy, free])
        verdicts = [await verify_inference(runtime, {"model": MODEL, **p}, f.output, f.evidence, chunks=0)
                    for p, f in zip([shaped, greedy, free], results, strict=True)]
        # A forger that swaps the text for other JSON keeps the tokens: the text check catches it.
        forged = {**results[0].output, "text": json.dumps({"name": "x", "age": 1, "colour": "red"})}
        forged_verdict = await verify_inference(runtime, {"model": MODEL, **shaped}, forged, results[0].evidence)
    person = json.loads(results[0].output["text"])
    assert set(person) == {"name", "age", "colour"}
    assert person["colour"] in ("red", "green", "blue")
    assert isinstance(person["age"], int)
    assert isinstance(person["name"], str)
    assert isinstance(json.loads(results[1].output["text"]), dict)
    assert [f.output["finish_reason"] for f in results[:2]] == ["stop", "stop"]
    assert [(v.ok, v.reason) for v in verdicts] == [(True, "ok")] * 3
    assert [v.details["tokens_replayed"] for v in verdicts] == [False, False, True]
    assert not forged_verdict.ok
    assert "text" in forged_verdict.reason


async def test_logit_bias_penalties_and_logprobs(inference_cache_dir: Path, tmp_path: Path) -> None:
    count = {"prompt": "1, 2, 3, 4,", "max_tokens": 8, "temperature": 0.0}
    async with started(inference_cache_dir, tmp_path, n_ctx=N_CTX) as runtime:
        plain = await run(runtime, {**count, "logprobs": True, "top_logprobs": 3})
        first = plain.output["token_ids"][0]
        banned = await run(runtime, {**count, "logit_bias": {str(first): -100}})
        penalised = await run(runtime, {**count, "frequency_penalty": 2.0, "presence_penalty": 2.0})
        verdict = await verify_inference(runtime, {"model": MODEL, **count, "frequency_penalty": 2.0,
                                                   "presence_penalty": 2.0}, penalised.output, penalised.evidence,
                                         chunks=0)
    assert first not in banned.output["token_ids"]
    assert penalised.output["token_ids"] != plain.output["token_ids"]
    assert verdict.ok, verdict.reason
    entries = plain.output["logprobs"]
    assert len(entries) == len(plain.output["token_ids"])
    assert "".join(e["token"] for e in entries) == plain.output["text"]
    # Greedy: the chosen token is the top alternative; the probabilities are a distribution's.
    for entry in entries:
        assert len(entry["top_logprobs"]) == 3
        assert entry["top_logprobs"][0]["logprob"] == entry["logprob"] <= 0
        assert sum(math.exp(t["logprob"]) for t in entry["top_logprobs"]) <= 1.0001


async def test_a_schema_that_is_no_grammar_fails_alone(inference_cache_dir: Path, tmp_path: Path) -> None:
    async with started(inference_cache_dir, tmp_path, n_ctx=N_CTX, max_streams=2) as runtime:
        ok: list[Any] = []

        async def honest() -> None:
            ok.append(await run(runtime, {"prompt": "Hello", "max_tokens": 12, "temperature": 0.0}))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(honest)
            with pytest.raises(UserError, match="json_schema") as raised:
                await run(runtime, {"prompt": "x", "max_tokens": 4, "json_schema": {"type": "no-such-type"}})
        assert "\n" not in str(raised.value)
        with pytest.raises(UserError, match="logit_bias"):
            await run(runtime, {"prompt": "x", "max_tokens": 4, "logit_bias": {"99999999": 5}})
    assert ok[0].output["tokens_out"] == 12
