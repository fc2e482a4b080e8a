"""One generation on a loaded ``Llama``: ``generate``, blocking, run in a worker thread by the runtime.

Tokens do not wait for the network. ``generate`` hands each decoded piece to ``on_piece`` (the runtime's
hand-over to the event loop, ``TrioToken.run_sync_soon``) and goes on decoding. The hand-over comes right
before the next decode, so that the send, which needs the GIL, runs while this thread is in llama_decode
without it.

It uses ``Llama.generate`` (the token iterator under ``create_completion``) rather than
``create_completion(stream=True)``: the streamed chunks of the latter do not map 1:1 to tokens (it
merges multibyte characters and holds back stop-sequence prefixes), and ``tokens_out`` is what the
receipt bills. Bytes are decoded incrementally and stop prefixes held back by ``text.TextAssembler``.

Reproducibility. Each generation starts from an empty KV cache (``Llama.reset``) and feeds the prompt
in fixed chunks: reusing a cached prefix changes the batch shapes, and so the floating point sums,
and greedy output could then differ between two runs of the same task. The sampler chain is fixed
(``SAMPLER_DEFAULTS``) and recorded in the evidence, because the verifier replays it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from runtimes.inference.commitments import CommitmentBuilder, CommitmentParams, LogitCommitment
from runtimes.inference.request import GenerationRequest
from runtimes.inference.text import TextAssembler

# Prompt tokens per llama_decode call on CPU. Cancellation is checked between calls, so this bounds how
# long a cancelled prompt keeps its slot, at some cost in prompt speed. Measured with the packaged model
# on the 2-core dev box, 1 thread, a second process busy: chunks of 512/64/32/16 tokens ran at
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
    """What a worker thread reports back from one generation."""

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


def generate(
    llm: Any,
    prompt: Sequence[int],
    request: GenerationRequest,
    seed: int,
    *,
    on_piece: Callable[[str], None],
    check_cancelled: Callable[[], None],
    is_eog: Callable[[int], bool],
    prompt_chunk: int = CPU_PROMPT_CHUNK,
    ignore_eog: bool = False,
    commit: Callable[[], npt.NDArray[np.float32]] | None = None,
    params: CommitmentParams = DEFAULT_COMMITMENT,
) -> Generation:
    """Run one generation on a loaded ``Llama``; blocking.

    ``check_cancelled`` raises to stop (``trio.from_thread.check_cancelled`` in the runtime); it runs
    before every llama_decode call, so a cancelled caller waits for one decode step at most.
    ``ignore_eog`` keeps going past end-of-turn, for benchmarks that need a fixed token count.
    The prompt chunk size must not vary between runs of one task: batch shapes change the sums.
    ``commit`` returns the logits row that produced the token just sampled; given, every generated
    position (the end token's included) is committed to (``commitments.py``).
    """
    started = time.perf_counter()
    llm.reset()  # no prefix reuse, for reproducible output (module docstring)
    llm.set_seed(seed)
    for start in range(0, len(prompt), prompt_chunk):
        check_cancelled()
        llm.eval(prompt[start : start + prompt_chunk])
    prompt_done = time.perf_counter()
    text = TextAssembler(request.stop)
    builder = CommitmentBuilder(params) if commit is not None else None
    pieces: list[str] = []
    token_ids: list[int] = []
    finish_reason, end_token = "length", None

    unsent: list[str] = []

    def put(out: str) -> None:
        if out:
            pieces.append(out)
            unsent.append(out)

    def send() -> None:
        # Handed over just before the next decode, when this thread is about to let go of the GIL for it:
        # the event loop, woken by the hand-over, then sends without keeping this thread's per-token Python
        # work (the commitment, the sampler's bookkeeping) waiting for the GIL.
        for out in unsent:
            on_piece(out)
        unsent.clear()

    # The prompt is already in the KV cache with fresh logits, so generate() samples at once (its
    # "exact prompt cached" path) instead of evaluating the prompt again. The sampler settings are
    # spelled out (they are llama-cpp-python's defaults) because the verifier replays the same chain.
    tokens = llm.generate(prompt, temp=request.temperature, top_p=request.top_p, **SAMPLER_DEFAULTS)
    try:
        for token in tokens:
            end = is_eog(token) and not ignore_eog
            if not end:
                token_ids.append(token)
                put(text.push(llm.detokenize([token])))
            if commit is not None and builder is not None:
                # generate() evaluates the token only when resumed: until then the context still holds the
                # logits that produced it (a top-k over them, ~0.1 ms for Gemma's 262,144 logits).
                builder.add(commit())
            if end:
                finish_reason, end_token = "stop", token
                break
            if text.hit_stop:
                finish_reason = "stop"
                break
            if len(token_ids) >= request.max_tokens:
                break
            check_cancelled()  # the next iteration decodes this token
            send()
    finally:
        tokens.close()
    put(text.finish())
    send()
    return Generation(
        text="".join(pieces),
        finish_reason=finish_reason,
        tokens_in=len(prompt),
        tokens_out=len(token_ids),
        prompt_seconds=prompt_done - started,
        generate_seconds=time.perf_counter() - prompt_done,
        token_ids=tuple(token_ids),
        end_token=end_token,
        commitment=builder.build() if builder is not None else None,
    )
