"""What an inference spot check costs, and how its statistics count over many results.

``check_share`` prices one check as a share of the generation it checks, for the sampling budget
(``hyperion_node/verify/sampling.py``); ``check_scores`` turns one check's statistics (``verifier.CheckStatistics``,
the ``Verdict.details`` of ``verify_claim``) into the scores that the node sums over a worker's checks
(``hyperion_node/verify/evidence.py``: a CUSUM per score, reference 1, dispute at ``evidence.THRESHOLD``).

Each score is a statistic the single-result judgement (``verifier.judge``) already bounds, divided by a scale
set from recorded honest results (``scripts/bench_verify.py --record``, replayed by ``--parts sequential``), so
that honest checks score below 1 nearly always and sit at a fraction of it typically, while a close cheat --
one that single checks pass often -- scores above 1 on average:

* ``values``: the median logit deviation over the checked positions. Honest results have it at 0.14 typically;
  a lower quantization at 0.45-1.7 (above ``MEDIAN_DEVIATION_LIMIT`` 0.6 it fails the check at once).
* ``temperature``: how many more positions the best other temperature's replay matched than the claimed
  one's, over sqrt(positions) (an honest worker's tokens match its claimed temperature best).
* ``hotter`` / ``colder``: the sign test's imbalance as a z-score, (less likely - more likely) / sqrt(n), one
  score per direction: a worker sampling hotter than it claims picks less likely tokens than the replay.
* ``greedy_gaps``: for greedy claims, positions where the claimed token trails the verifier's argmax by more
  than ``GREEDY_GAP`` (honest: near-ties only).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from runtimes.inference.verifier import CHECKED_CHUNKS, GREEDY_GAP, CheckStatistics

# Cost model of one check against its generation, in units of one generated token's CPU on the worker (its
# decode step and its logit commitment: ~40 ms here, 1 thread, the packaged model). Fitted on recorded honest
# results (bench_verify --record, process CPU; 2026-12-07): a check cost 0.293 of a 16-token generation, 0.252
# of a 32-token, 0.150 of a 64-token and 0.053 of a 256-token one (median of 1,000 / 600 / 400 / 100), which
# this model gives within 7 %: a fixed 0.75, 0.05 per prefilled token (~2 ms) and 0.185 per checked row (~7 ms:
# the row's 262,144 logits, its shortlist, certified ids and sampler replays). The first fit (0.5, 0.16, 0.04)
# matched the short results but priced a 256-token check at twice its cost, so long results were checked half
# as often as the budget pays for.
PREFILL_PER_DECODE = 0.05
ROW_PER_DECODE = 0.185
CHECK_OVERHEAD = 0.75
CHUNK_TOKENS = 32

# Scales of the scores (module docstring), from recorded results (bench_verify --record, 2026-12-07: 1,000 honest
# 16-token results at temperatures 0-1.4, 100 per cheat). Per check, honest | close cheats (means):
#   values (median deviation / 0.3): honest mean 0.56, p99 1.17, max 1.61 | Q3_K_M 3.5-3.8 (94% fail alone)
#   temperature (excess / sqrt(n) / 0.5): honest max 1.0 | temperature lies 1.6-2.0
#   hotter / colder (z / 1.5): the sign test's z is about standard normal for honest results (max 2.8 over 500
#     32-token ones), so a CUSUM of max(0, z) / 1.5 raised no alarm in 2 million simulated honest checks (at
#     1.2: 2.5 per million) | sampling at 1.2-1.4 claimed 0.8: z 2.0-2.4 at 16 tokens, growing with sqrt(n);
#     at 0.4-0.5 claimed 0.8: colder, the same
#   greedy_gaps (gaps over 0.5, / 0.5): honest never one | sampled at 0.8 claimed greedy: 9.4 (93% fail alone)
VALUES_SCALE = 0.3
TEMPERATURE_SCALE = 0.5
SIGN_SCALE = 1.5
GREEDY_GAPS_SCALE = 0.5


def check_share(tokens_in: int, tokens_out: int, *, chunks: int = CHECKED_CHUNKS) -> float:
    """Expected CPU of one check ÷ CPU of the generation, for a result of ``tokens_out`` tokens after a prompt
    of ``tokens_in``: the prefill runs to the end of the last drawn chunk (module docstring of verifier.py)."""
    tokens_out = max(1, tokens_out)
    n_chunks = max(1, math.ceil(tokens_out / CHUNK_TOKENS))
    drawn = n_chunks if chunks <= 0 else min(chunks, n_chunks)
    # The last of ``drawn`` chunks out of n drawn uniformly ends, on average, at chunk drawn*(n+1)/(drawn+1).
    prefix = min(tokens_out, CHUNK_TOKENS * drawn * (n_chunks + 1) / (drawn + 1))
    rows = min(tokens_out, CHUNK_TOKENS * drawn)
    check = CHECK_OVERHEAD + PREFILL_PER_DECODE * (tokens_in + prefix) + ROW_PER_DECODE * rows
    generation = tokens_out + PREFILL_PER_DECODE * tokens_in
    return check / generation


def share_of(output: Mapping[str, Any]) -> float:
    """``check_share`` of an inference output (its token counts); 1.0 when it has none to read."""
    try:
        tokens_in, tokens_out = int(output["tokens_in"]), int(output["tokens_out"])
    except (KeyError, TypeError, ValueError):
        return 1.0
    if tokens_in < 0 or tokens_out < 0:
        return 1.0
    return check_share(tokens_in, tokens_out)


def check_scores(details: Mapping[str, Any]) -> dict[str, float]:
    """One check's scores (module docstring); empty for a check that read no logits (a claim refused before
    the forward pass, or a shaped result whose tokens were not replayed count by their values only)."""
    try:
        stats = CheckStatistics.from_details(details)
    except (KeyError, TypeError, ValueError):
        return {}
    scores: dict[str, float] = {}
    if stats.deviations:
        deviations = sorted(stats.deviations)
        median = deviations[len(deviations) // 2] if len(deviations) % 2 else (
            (deviations[len(deviations) // 2 - 1] + deviations[len(deviations) // 2]) / 2)
        scores["values"] = median / VALUES_SCALE
    if not details.get("tokens_replayed", True):
        return scores
    if stats.matched_at_factors:  # a sampled claim
        n = max(1, stats.positions)
        best_other = max(m for _, m in stats.matched_at_factors)
        scores["temperature"] = max(0, best_other - stats.replay_matched) / math.sqrt(n) / TEMPERATURE_SCALE
        signed = stats.replay_less_likely + stats.replay_more_likely
        z = (stats.replay_less_likely - stats.replay_more_likely) / math.sqrt(signed) if signed else 0.0
        scores["hotter"] = max(0.0, z) / SIGN_SCALE
        scores["colder"] = max(0.0, -z) / SIGN_SCALE
    elif stats.positions:  # a greedy claim
        scores["greedy_gaps"] = sum(g > GREEDY_GAP for g in stats.greedy_gaps) / GREEDY_GAPS_SCALE
    return scores
