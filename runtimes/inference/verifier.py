"""Checking another worker's inference result: one batched forward pass instead of a generation.

Blocking code for a worker thread, given a loaded ``Llama`` and the ``llama_cpp`` module (injected, as in
``runtime.py``). The runtime's ``verify`` wraps it behind the model's ``CapacityLimiter``.

The pass: the prompt, then the generated tokens, go through ``llama_decode`` in batches of ``n_batch`` with
logits requested for every generated position (the row that produced each generated token, and the end
token). That is the worker's own computation without its one-token-at-a-time decode. Each row is then
checked three ways:

1. values: the committed polynomial, evaluated at the verifier's certified top-k ids, must give the
   verifier's logits: median deviation over positions under ``MEDIAN_DEVIATION_LIMIT``, few positions past
   ``LOGIT_TOLERANCE`` (``commitments.certified_ids``);
2. tokens: greedy tokens must be the verifier's argmax up to the noise; sampled ones are replayed through
   llama.cpp's own sampler chain, rebuilt with the claimed seed, temperature and top_p. Its ``dist`` sampler
   draws one uniform number per token whatever the logits (llama-sampler.cpp, ``llama_sampler_dist_apply``),
   so the worker's and the verifier's random streams stay aligned and an honest replay mostly picks the
   claimed token; where it does not, the claimed token must at least pass the chain's top_k and min_p
   cuts, and the share of such positions must stay far from what another temperature or seed gives;
3. text and finish reason (``claims.check_text``).

Batch shape, not the model, is what makes honest logits differ: the worker decodes one token per call, the
verifier hundreds. The bounds below come from measuring those differences (scripts/bench_verify.py prints
the distributions).

Cost: on this CPU the vocabulary projection (262,144 x 640, 168M of the model's ~270M weights) dominates,
and it must run for every verified position, so a 1-thread prefill with logits reaches only ~3x the
decode rate; verification then costs about half a generation (bench_verify). Spot-checking a random
subset of chunks (logits for those rows only) is the lever left, and is not done yet.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from runtimes.inference.claims import Claim, ClaimRejected, Verdict
from runtimes.inference.commitments import certified_ids, check_position

# Honest noise, measured on the packaged Gemma 3 270M Q4_K_M, CPU, 1 thread, llama-cpp-python 0.3.36: a worker
# decoding one token per call against a verifier prefilling the same tokens in one batch. The arithmetic
# differs with batch shape whatever the settings (batches of 2 already differ as much as 512; weight
# repacking and flash attention on or off change nothing), and the 270M model's logits move a lot with it:
# over 288 positions (6 prompts, greedy and sampled, 48 tokens), |worker - verifier| on the worker's top-8
# logits had median 0.15, 99th percentile 0.77, maximum 1.33; per position (max over its top-4) mean
# 0.25, 90th percentile 0.49, maximum 1.18 (160 positions). The verifier's argmax differed from a greedy
# worker's token at 5 of 160 positions, all near-ties. Against that, a worker on a Q3_K_M requantization
# of the same weights deviates by 2.09 on average per position (57% of positions above 1.5), a pure Q2_K
# one by 2.79 (74%); a Q8_0 requantization, which keeps the Q4_K weights' values, only by 0.38 (and is,
# in effect, the same model).
#
# So values are judged on the median over positions of each position's largest deviation, which separates
# honest (0.22) from other weights (>= 1.65) and shrugs off a rare outlier, with a per-position bound on
# top. Per result of 16 tokens (bench_verify, 70 honest results) the honest median was 0.14 typically and
# 0.36 at most; a Q3_K_M worker's ranged 0.45-1.7 (20 results), so the limit sits between the two:
MEDIAN_DEVIATION_LIMIT = 0.5
LOGIT_TOLERANCE = 2.0  # 1.5x the largest honest difference seen
VALUE_MISMATCH_SHARE = 1 / 64  # positions past LOGIT_TOLERANCE allowed (plus one): none was measured
# Margin for "certified" ids (commitments.certified_ids): an id is checked when it leads the verifier's
# (k+1)-th logit by 2 x this. The 99.9th percentile of honest differences (1.18) rounded down: a wider
# margin would leave most positions with nothing to check, and an id wrongly certified costs one outlier.
CERTIFY_TOLERANCE = 1.0
# Token replay: how far one logit may honestly be off when explaining a token the verifier's own replay
# did not pick (greedy: gap to the argmax <= 2 x this; sampled: the nudge of the module docstring).
TOKEN_TOLERANCE = 1.0
# Sampled tokens. Noise of that size moves the boundaries of the sampler's cumulative distribution, and
# near-tied candidates swap places in its sorted order, so the verifier's replay of an honest sampled
# generation picks another token than the worker at ~12% of positions (bench_verify: 1.98 of 16 on
# average over 40 results), and how far the claimed token lies from the replay's draw proved no safe test
# (5 of 40 honest results would have been disputed at a 0.15 probability-mass bound). So a differing
# token is judged on plausibility (inside the chain's top_k and min_p cuts, with the tolerance), and the
# share of differing positions on a generous bound: a worker sampling at another temperature than claimed
# differs at a larger share. The honest share varies with temperature: over 40 honest 16-token results
# the mean was 2 of 16 but the maximum 7 of 16 (p99 6.6), so the bound is 60% (10 of 16), which a
# worker sampling at 1.4 while claiming 0.8 still reaches in about half the short results.
MAX_REPLAY_DIFFERED = 0.6
# Greedy: the verifier's argmax differed from an honest greedy worker's token at 5 of 160 positions (3%);
# 5 or more of 16 has a binomial probability of ~1e-4 there. A worker that sampled and claims greedy
# differs at a far larger share, often by less than the per-token bound.
MAX_GREEDY_DIFFERED = 0.3
# Sign test on those differences (SamplerReplay.step): honest ones fall either way, a temperature lie all
# one way. 6 more one way than the other needs, honestly, >= 6 differences all alike (<= 2 x 2^-6 even
# then, and >= 6 differences are themselves rare: p99 6.6 of 16 at 1.2 and hotter).
MAX_SIGN_IMBALANCE = 6
MIN_REPLAY_POSITIONS = 8  # fewer positions say too little for the share test


class SamplerReplay:
    """llama.cpp's sampler chain as the worker built it, stepped along the claimed tokens."""

    def __init__(self, llm: Any, llama: Any, claim: Claim, sampler: Mapping[str, float | int]) -> None:
        self._llm = llm
        self._llama = llama
        self._greedy = claim.temperature == 0.0
        llm.set_seed(claim.seed)
        # Llama.generate builds its chain with _init_sampler; calling the same method is what guarantees
        # the same chain (order and parameters) as the worker's.
        self._chain = llm._init_sampler(
            temp=claim.temperature, top_p=claim.top_p, **{k: v for k, v in sampler.items()}
        )
        self.differed = 0  # positions where the replay picked another token, plausible or not
        self.less_likely = 0  # ... of which the claimed token was less likely than the replay's pick
        self.more_likely = 0
        self._top_k = int(sampler["top_k"])
        self._min_p = float(sampler["min_p"])

    def close(self) -> None:
        self._chain.close()

    def step(self, row: int, logits: npt.NDArray[np.float32], claimed: int, tolerance: float) -> bool:
        """Replay position ``row`` of the last batch; False if the claimed token cannot be honest."""
        best = float(logits.max())
        value = float(logits[claimed])
        if self._greedy:
            if value < best:
                self.differed += 1
            return value >= best - 2 * tolerance
        picked = int(self._llama.llama_sampler_sample(self._chain.sampler, self._llm.ctx, row))
        if picked == claimed:
            return True
        self.differed += 1
        # Hotter sampling moves the draw to less likely tokens, always (for a fixed uniform draw, the
        # cumulative mass of the top tokens only falls as temperature rises), colder to more likely
        # ones; honest noise moves it either way.
        if value < float(logits[picked]):
            self.less_likely += 1
        else:
            self.more_likely += 1
        # The chain only ever samples among the top_k largest logits whose probability is at least min_p
        # of the largest one's: allow for noise of ``tolerance`` on both sides of each comparison.
        kth = float(np.partition(logits, -self._top_k)[-self._top_k])
        return value >= max(kth, best + math.log(self._min_p)) - 2 * tolerance


def forward_rows(
    llm: Any,
    llama: Any,
    prompt: Sequence[int],
    generated: Sequence[int],
    positions: int,
    on_rows: Callable[[int, list[npt.NDArray[np.float32]]], None],
    *,
    check_cancelled: Callable[[], None],
) -> None:
    """Prefill ``prompt + generated`` and hand the logits rows of the ``positions`` generated positions to
    ``on_rows(first_position, rows)`` one batch at a time (a row is valid only until the next decode).
    """
    n_batch = int(llm.n_batch)
    n_vocab = int(llm.n_vocab())
    llm.reset()
    head = list(prompt[:-1])
    for start in range(0, len(head), n_batch):
        check_cancelled()
        llm.eval(head[start : start + n_batch])
    # The rows that produced generated token j is the one after input token len(prompt) - 1 + j.
    tail = [prompt[-1], *generated][:positions]
    n_past = len(head)
    for start in range(0, len(tail), n_batch):
        check_cancelled()
        batch = tail[start : start + n_batch]
        llm._batch.set_batch(batch=batch, n_past=n_past, logits_all=True)
        llm._ctx.decode(llm._batch)
        n_past += len(batch)
        rows = [
            np.ctypeslib.as_array(llama.llama_get_logits_ith(llm.ctx, i), shape=(n_vocab,)) for i in range(len(batch))
        ]
        on_rows(start, rows)
    llm.reset()  # what is cached now is no generation's state; the next one must start afresh


def verify_claim(
    llm: Any,
    llama: Any,
    prompt: Sequence[int],
    claim: Claim,
    sampler: Mapping[str, float | int],
    *,
    check_cancelled: Callable[[], None],
    tolerance: float = LOGIT_TOLERANCE,
    token_tolerance: float = TOKEN_TOLERANCE,
    median_limit: float = MEDIAN_DEVIATION_LIMIT,
    max_differed: float = MAX_REPLAY_DIFFERED,
) -> Verdict:
    """The forward-pass checks of the module docstring, on a claim that passed ``claims`` checks."""
    started = time.perf_counter()
    params = claim.commitment.params
    limit = int(np.ceil(tolerance * params.scale)) + 1  # +1: both sides rounded to a quantum
    produced = claim.positions
    deviations: list[int] = []
    value_misses: list[int] = []
    token_misses: list[int] = []
    checked = 0
    replay = SamplerReplay(llm, llama, claim, sampler)

    def on_rows(first: int, rows: list[npt.NDArray[np.float32]]) -> None:
        nonlocal checked
        for offset, logits in enumerate(rows):
            position = first + offset
            ids, values = certified_ids(logits, params.top_k, CERTIFY_TOLERANCE)
            result = check_position(claim.commitment.coefficients(position), ids, values, params.scale)
            checked += result.checked
            if result.checked:
                deviations.append(result.max_deviation)
            if result.max_deviation > limit:
                value_misses.append(position)
            if not replay.step(offset, logits, produced[position], token_tolerance):
                token_misses.append(position)

    try:
        forward_rows(
            llm, llama, prompt, claim.token_ids, len(produced), on_rows, check_cancelled=check_cancelled
        )
    finally:
        replay.close()
    details = {
        "positions": len(produced),
        "checked_values": checked,
        "max_deviation": max(deviations, default=0) / params.scale,
        "median_deviation": float(np.median(deviations)) / params.scale if deviations else 0.0,
        "replay_differed": replay.differed,
        "replay_less_likely": replay.less_likely,
        "value_mismatches": len(value_misses),
        "token_mismatches": len(token_misses),
        "tolerance": tolerance,
        "seconds": time.perf_counter() - started,
    }
    allowed = 1 + int(len(produced) * VALUE_MISMATCH_SHARE)
    if details["median_deviation"] > median_limit:
        return Verdict(
            False,
            f"logits differ from the committed ones by {details['median_deviation']:.3f} at the median position "
            f"(honest noise stays under {median_limit})",
            details,
        )
    if len(value_misses) > allowed:
        return Verdict(
            False,
            f"logits differ from the committed ones at {len(value_misses)} of {len(produced)} positions "
            f"(first at {value_misses[0] if value_misses else '-'}; largest deviation "
            f"{details['max_deviation']:.3f} > {tolerance})",
            details,
        )
    share = MAX_GREEDY_DIFFERED if claim.temperature == 0 else max_differed
    if len(produced) >= MIN_REPLAY_POSITIONS and replay.differed >= share * len(produced):
        return Verdict(
            False,
            f"the claimed sampler and seed pick other tokens at {replay.differed} of {len(produced)} positions "
            f"(honest noise: ~3% greedy, ~12% sampled)",
            details,
        )
    imbalance = replay.less_likely - replay.more_likely
    if claim.temperature > 0 and abs(imbalance) >= MAX_SIGN_IMBALANCE:
        return Verdict(
            False,
            f"sampled tokens are {'less' if imbalance > 0 else 'more'} likely than the claimed temperature's "
            f"at {abs(imbalance)} more positions than the other way: sampled "
            f"{'hotter' if imbalance > 0 else 'colder'} than claimed",
            details,
        )
    if token_misses:
        what = "the top-1 token" if claim.temperature == 0.0 else "what the claimed sampler and seed pick"
        return Verdict(
            False,
            f"token at position {token_misses[0]} is not {what} ({len(token_misses)} such positions)",
            details,
        )
    return Verdict(True, "ok", details)


def reject(exc: ClaimRejected) -> Verdict:
    return Verdict(False, str(exc))
