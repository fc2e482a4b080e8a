"""What one generation is made of and reports: its sampler chain, prompt chunking, and ``Generation``.

The generations themselves run in ``batching.py``'s engine, several to a decode step. Every token is one
sampled token (``tokens_out`` is what the receipt bills); bytes are decoded incrementally and stop
prefixes held back by ``text.TextAssembler``. Each generation starts from empty KV cells: a reused prompt
prefix would save the prefill but change the batch shapes of it, and the commitments would then rest on
arithmetic the verifier cannot rebuild from the task alone. The sampler chain is fixed
(``SAMPLER_DEFAULTS``) and recorded in the evidence, because the verifier replays it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runtimes.inference.commitments import CommitmentParams, LogitCommitment

# Prompt tokens per decode step on CPU, for all prompts being prefilled together. A step also carries a
# token of every running stream, which waits for the step: this bounds how long a newcomer's prefill holds
# them up (and how long a cancelled prompt keeps its place), at some cost in prompt speed. Measured with the
# packaged model on the 2-core dev box, 1 thread, a second process busy: chunks of 512/64/32/16 tokens ran at
# 209/196/160/122 tokens/s, 32 tokens taking ~200 ms (about half that with the box to itself).
CPU_PROMPT_CHUNK = 32
# With layers on a GPU a 512-token batch (llama-cpp-python's n_batch) takes milliseconds; smaller
# chunks would only slow it down.
GPU_PROMPT_CHUNK = 512
# The sampler chain beyond temperature and top_p, as Llama.generate builds it (llama-cpp-python 0.3.x
# defaults: top_k 40 -> typical -> top_p -> min_p 0.05 -> temperature -> dist(seed)). Fixed here and
# recorded in the evidence, because the verifier rebuilds the same chain to replay the sampling.
SAMPLER_DEFAULTS: Mapping[str, float | int] = {
    "top_k": 40,
    "min_p": 0.05,
    "typical_p": 1.0,
    "repeat_penalty": 1.0,
}
DEFAULT_COMMITMENT = CommitmentParams()


@dataclass(frozen=True)
class Generation:
    """What the engine reports back from one generation."""

    text: str
    finish_reason: str  # "stop" (end of turn or a stop sequence) | "length" (max_tokens reached)
    tokens_in: int
    tokens_out: int  # tokens that became text; the end-of-generation token is not counted
    prompt_seconds: float
    generate_seconds: float
    load_seconds: float | None = None  # None: the model was already loaded
    token_ids: tuple[int, ...] = ()  # the tokens_out generated tokens
    end_token: int | None = None  # the end-of-generation token that ended it, if one did
    commitment: LogitCommitment | None = None  # one position per generated token, end_token included
    logprobs: tuple[dict[str, Any], ...] = ()  # OpenAI's entry per generated token, when asked (shaping.py)
