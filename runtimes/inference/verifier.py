"""Checking another worker's inference result: one batched forward pass instead of a generation.

Blocking code for a worker thread, given a loaded ``Llama`` and the ``llama_cpp`` module (injected, as in
``runtime.py``). The runtime's ``verify`` wraps it behind the model's ``CapacityLimiter``.

The pass is a spot check. Drawn after the worker has answered, from the OS's random source, ``chunks`` of
the commitment's chunks (32 positions each; ``[verify] inference_chunks``, default 1) are checked, and the
claimed end token's position whenever one is claimed. The prompt and the generated tokens go through
``llama_decode`` in batches of ``n_batch`` with logits requested only for the rows that produced those
positions, and the prefill stops at the last of them: causal attention means later tokens cannot change
them. That is the worker's own computation without its one-token-at-a-time decode. Each checked row is
then checked three ways:

1. values: the committed polynomial, evaluated at the verifier's certified top-k ids, must give the
   verifier's logits: median deviation over positions under ``MEDIAN_DEVIATION_LIMIT``, few positions past
   ``LOGIT_TOLERANCE`` (``commitments.certified_ids``);
2. tokens: greedy tokens must be the verifier's argmax up to the noise; sampled ones are replayed through
   llama.cpp's own sampler chain, rebuilt with the claimed seed, temperature and top_p. Its ``dist`` sampler
   draws one uniform number per token whatever the logits (llama-sampler.cpp, ``llama_sampler_dist_apply``),
   so the worker's and the verifier's random streams stay aligned and an honest replay mostly picks the
   claimed token; where it does not, the claimed token must at least pass the chain's top_k and min_p
   cuts, and the share of such positions must stay far from what another temperature or seed gives.
   The same chain is also replayed at other temperatures with the same seed: an honest worker's tokens
   are matched best by the claimed temperature's replay, a hotter or colder worker's by another one's.
   Greedy claims must differ from the argmax by near-ties only;
3. text and finish reason (``claims.check_text``).

Batch shape, not the model, is what makes honest logits differ: the worker decodes one token per call, the
verifier hundreds. The bounds below come from measuring those differences: ``judge`` decides on the
statistics alone (``CheckStatistics``), which scripts/bench_verify.py --record writes per trial, honest and
cheating, and scripts/calibrate_verify.py judges again and tabulates.

What a spot check can and cannot catch. Another model or quantization, a temperature lie and another
task's commitments change every position, so any drawn chunk shows them (at a rate per chunk that
bench_verify measures). Length, text and finish-reason lies are checked over the whole output without
logits (``claims.check_text``), and a truncation -- an end token claimed where the model would have gone
on -- is caught at the end position, which is always checked. A forgery confined to some chunks (padding
an honest prefix with another generation's tokens and commitments) is caught only when a forged chunk is
drawn: with one chunk of ``n`` drawn, with probability (forged chunks) / n per check. A worker cannot
tell which chunk will be drawn, so forging a share ``f`` of the work costs it a dispute with probability
about ``f`` each time it is checked; more chunks raise that at the price below.

Cost (bench_verify, this 2-core CPU, 1 thread, 256 tokens; 2026-12-03): the prefill runs ~2.2 ms per token
against ~14 ms per decoded token (~5 against ~38 on slower days: the same ratio), and the vocabulary
projection (262,144 x 640, 168M of the model's ~270M weights), which every decode step pays, costs ~2.5 ms
per row read in a batch. Checking every chunk cost 0.39-0.62 of a generation; one chunk costs ~0.06 of it
when the first chunk is drawn and 0.19-0.25 when the last is, 0.12-0.14 expected. The floor is the prefill
of the prefix (~1/7 of a decode step per token here, where Gemma's 640-wide layers fall back to q5_0
weights); ``n_ubatch`` 64-512 and flash attention on or off measured no different, and 2 threads on 2
shared cores only slower and erratic.

Where a one-chunk check's time goes (256-token claims, each chunk position, thread CPU; bench_verify
--parts cost prints the check beside the whole-row reading): ``llama_decode``, one call of up to n_batch =
n_ubatch = 512 tokens, is ~99% of it. The rest is the per-row work, which read each 262,144-logit row
whole: the certified ids' argpartition (~0.7 ms a row) and, for a sampled claim, six sampler chains each
copying the row into its candidates and sorting out its top-k (~0.4 ms each): ~30 ms a check greedy, ~170
ms sampled. Read through a shortlist (``shortlist``, ``SamplerReplay``) it is ~13 and ~23 ms, with the same
picks and statistics (tests/verify/test_shortlist.py). What remains is the prefill, the same computation
as before: another n_ubatch or thread count would change the batched arithmetic that the bounds were
calibrated on, whatever it did to the speed.
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from hyperion_node.errors import InternalError
from runtimes.inference.claims import Claim, ClaimRejected, Verdict
from runtimes.inference.commitments import certified_ids, check_position, leading, shortlist
from runtimes.interface import JSON

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
# 0.36 at most; a Q3_K_M worker's ranged 0.45-1.7 (20 results), so the limit sits between the two. Reading
# one 32-position chunk of 64-token results the honest median reached 0.531 once in 100 (temperature 1.2,
# code), which a limit of 0.5 disputed. Calibration (scripts/bench_verify.py --record, judged again by
# scripts/calibrate_verify.py; 60 honest 16-token and 48 honest 64-token results, greedy and sampled at
# 0.5-1.4): honest max 0.41, p99 0.38; Q3_K_M 16-token results (40) min 0.45, p10 0.62. No median limit
# separates 0.531 from 0.45, so the limit sits above every honest figure seen (0.531 + 0.07) and the Q3_K_M
# results under it are left to the token statistics below (greedy gaps, temperature test): in calibration
# they caught 2 of the 3 under 0.6, so 38 of 40 were disputed (40 at a limit of 0.5; the one missed, twice
# as it is greedy, has a median of 0.594 and differs from our argmax by near-ties only). Confirmation on other
# seeds: honest max 0.47 over 200 more results, Q3_K_M caught 43 of 50 (misses at 0.32-0.594), 88 of 100
# over seeds 501-600 (README).
MEDIAN_DEVIATION_LIMIT = 0.6
LOGIT_TOLERANCE = 2.0  # 1.5x the largest honest difference seen
# Positions past LOGIT_TOLERANCE allowed (plus one). None was measured in 16-token results, but 64-token
# ones (a 32-position chunk read) showed up to 3 honest outliers of 32, up to 2.34 (bench_verify, 1 of 100
# results, temperature 1.2). Other weights put ~40% of positions past it, so the median decides anyway.
VALUE_MISMATCH_SHARE = 1 / 8
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
# the mean was 2 of 16 but the maximum 7 of 16 (p99 6.6), so the bound was 60% (10 of 16), which a
# worker sampling at 1.4 while claiming 0.8 still reaches in about half the short results. Over 1,000 honest
# 16-token results (2026-12-07, bench_verify --record) one at temperature 1.2 differed at 11 of 16 (p99 9 at
# 1.2): a false dispute in 1,000. Since a close cheat is now caught over many results (the sequential test,
# hyperion_node/verify/evidence.py), a single result is disputed only past 75% (12 of 16); that cost 2 of 100
# single-check catches of a worker sampling at 1.4 while claiming 0.8 (81 to 79).
MAX_REPLAY_DIFFERED = 0.75
# Greedy: the verifier's argmax differed from an honest greedy worker's token at 5 of 160 positions (3%);
# 5 or more of 16 has a binomial probability of ~1e-4 there. A worker that sampled and claims greedy
# differs at a far larger share, often by less than the per-token bound.
MAX_GREEDY_DIFFERED = 0.3
# Sign test on those differences (SamplerReplay.step): honest ones fall either way, a temperature lie all
# one way. A fixed bound (6 more one way than the other, the first calibration on 16-token results) falsely
# disputed 3 of 100 honest 64-token results whose 32 checked positions held 10-14 differences: imbalance
# grows like the square root of their number. So the bound is a two-sided binomial test: dispute when a
# fair coin gives an imbalance this large with probability below SIGN_TEST_P, never on fewer than
# MAX_SIGN_IMBALANCE (then all alike: 2 x 2^-6).
MAX_SIGN_IMBALANCE = 6
SIGN_TEST_P = 1e-3
# Temperature test (SamplerReplay): the claimed chain is replayed beside the same chain, same seed (so the
# same uniform draws), at the claimed temperature times each factor. Calibration and confirmation (above,
# and 100 + 100 more honest results on other seeds; 256 sampled in all): another factor's replay matched the
# claimed tokens more often than the claimed temperature's in 10 honest results, by 1 (6 of 16 positions, 3
# of 32) or 2 (once, 32 positions). Honest noise in that difference grows like the square root of the
# positions, a lie's offset like their number, so a result is disputed when another factor matches
# temperature_margin(n) more positions: 3 at 16 (2 above the honest maximum), and more beyond 16 positions
# (below: first 0.75 sqrt(n), 5 at 32; since 2026-12-07 1.25 sqrt(n)). Against 40 16-token results sampled at
# 1.4 and claimed 0.8 this alone caught 31, against 0.4 claimed as 0.8 27 (the sign test alone: 7 and 6;
# everything together: README). 1.75 and 0.5 are those cheats' exact factors; without them the rule caught 29
# and 7 of 40, so a lie between grid points is caught less (README: 1.2 and 0.5 claimed as 0.8).
TEMPERATURE_FACTORS = (0.5, 0.7, 1.4, 1.75, 2.0)
TEMPERATURE_MARGIN = 3  # at 16 positions or fewer
# Beyond 16 positions: 1.25 sqrt(n) (8 at 32, 10 at 64, 20 at 256), no longer 0.75 sqrt(n). Recorded on
# 2026-12-07 (bench_verify --record): over 1,000 honest 16-token results the excess was 2 at most, but over 733
# honest 32-position checks (32- and 64-token results) it reached 6 once (then 4 and 3), which 5 disputed: a
# chunk late in a generation holds flatter distributions than the first 16 tokens do. A lie's offset grows
# like n (3-5 at 16 positions), so longer checks still show it; the sequential test sums what each misses.
TEMPERATURE_MARGIN_SCALE = 1.25
# Greedy claims: where the verifier's argmax is not the claimed token, honest gaps were near-ties (at most
# 0.22 over 52 greedy results, 16 and 64 tokens; 5 of 160 positions differed before, all near-ties), while a
# worker that sampled at 0.8 and claims greedy left a median of 5 gaps over 0.5 in 16 positions. Two such gaps
# dispute; it caught 2 of 20 greedy Q3_K_M results whose median deviation was under the limit.
GREEDY_GAP = 0.5
MAX_GREEDY_GAPS = 2
MIN_REPLAY_POSITIONS = 8  # fewer positions say too little for the share test
# Chunks checked per result when the caller does not say (``[verify] inference_chunks``); module docstring.
CHECKED_CHUNKS = 1
_SYSTEM_RANDOM = random.SystemRandom()  # chunk draws: from the OS, not a seedable stream a worker could follow


class SamplerReplay:
    """llama.cpp's sampler chain as the worker built it, stepped along the claimed tokens.

    Each checked row runs through the claimed chain and the chains at the other temperatures. They share
    their first members: llama-cpp-python's penalties (neutral here, so an empty sampler, "?penalties") and
    top-k (stateless, the same k). ``llama_sampler_sample`` would copy the whole 262,144-logit row into
    each chain's candidates and sort out its top-k six times; instead the shared members run once per row
    and each chain's remaining members (typical, top-p, min-p, temperature, dist) get a copy of the same
    40 survivors in the same state: a chain is applied member by member (llama-sampler.cpp,
    ``llama_sampler_chain_apply``), so this is the same computation, and the chain then accepts the token it
    picked, as ``llama_sampler_sample`` does. The shared members run on the shortlist (``shortlist``) rather
    than the whole row when the 41 largest logits are distinct: then top-k's survivors and their order are
    the only possible ones, on any candidate list that holds every id at or above the 41st value. With ties
    among them the whole row goes in, as llama.cpp itself would have it. Any other chain (a penalty, no
    top-k) is sampled by ``llama_sampler_sample`` as before, and so is everything when ``shortlisted`` is
    False (tests and scripts/bench_verify.py compare the two).
    """

    def __init__(
        self,
        llm: Any,
        llama: Any,
        claim: Claim,
        sampler: Mapping[str, float | int],
        *,
        shortlisted: bool = True,
    ) -> None:
        self._llm = llm
        self._llama = llama
        self._greedy = claim.temperature == 0.0
        llm.set_seed(claim.seed)
        # Llama.generate builds its chain with _init_sampler; calling the same method is what guarantees
        # the same chain (order and parameters) as the worker's.
        self._chain = llm._init_sampler(
            temp=claim.temperature, top_p=claim.top_p, **{k: v for k, v in sampler.items()}
        )
        # The same chain at other temperatures, same seed (so the same uniform draws): an honest worker's
        # tokens match the claimed temperature's replay best, a worker that sampled hotter or colder matches
        # one of these better (TEMPERATURE_FACTORS).
        self.factors = () if self._greedy else TEMPERATURE_FACTORS
        self._others: list[Any] = []
        for factor in self.factors:
            llm.set_seed(claim.seed)
            self._others.append(
                llm._init_sampler(
                    temp=claim.temperature * factor, top_p=claim.top_p, **{k: v for k, v in sampler.items()}
                )
            )
        self.matched = 0  # checked positions where the claimed temperature's replay picked the claimed token
        self.others_matched = [0] * len(self.factors)
        self.greedy_gaps: list[float] = []  # greedy: argmax - claimed logit where they differ
        self.differed = 0  # positions where the replay picked another token, plausible or not
        self.less_likely = 0  # ... of which the claimed token was less likely than the replay's pick
        self.more_likely = 0
        self._top_k = int(sampler["top_k"])
        self._min_p = float(sampler["min_p"])
        self._skip_data = (llama.llama_token_data * 1)()
        self._skip_array = llama.llama_token_data_array(data=self._skip_data, size=1, selected=-1, sorted=False)
        # The shared members and each chain's rest (class docstring); None: sample as llama.cpp does.
        self._split = self._split_chains() if shortlisted and not self._greedy else None
        self.shortlist_size = self._top_k + 1 if self._split is not None else 0
        if self._split is not None:
            n_vocab = int(llm.n_vocab())
            self._row_data = (llama.llama_token_data * n_vocab)()
            self._row = np.ctypeslib.as_array(self._row_data)  # the same memory, as a structured array
            self._all_ids = np.arange(n_vocab, dtype=self._row.dtype["id"])
            self._row_array = llama.llama_token_data_array(data=self._row_data, size=0, selected=-1, sorted=False)
            self._pick_data = (llama.llama_token_data * self._top_k)()
            self._pick = np.ctypeslib.as_array(self._pick_data)
            self._pick_array = llama.llama_token_data_array(data=self._pick_data, size=0, selected=-1, sorted=False)

    def _split_chains(self) -> tuple[list[Any], list[list[Any]]] | None:
        """The claimed chain's members up to its top-k, and every chain's members after it, when every chain
        starts with empty samplers (names beginning with "?": llama.cpp's stand-in for a neutral setting,
        whose apply and accept do nothing) and then the same top-k; else None."""
        llama = self._llama
        shared: list[Any] = []
        rests: list[list[Any]] = []
        for chain in (self._chain, *self._others):
            count = llama.llama_sampler_chain_n(chain.sampler)
            members = [llama.llama_sampler_chain_get(chain.sampler, i) for i in range(count)]
            names = [bytes(llama.llama_sampler_name(m)) for m in members]
            if b"top-k" not in names or self._top_k <= 0:
                return None
            cut = names.index(b"top-k") + 1
            if not all(name.startswith(b"?") for name in names[: cut - 1]):
                return None
            if not shared:
                shared = members[:cut]
            rests.append(members[cut:])
        return shared, rests

    def close(self) -> None:
        self._chain.close()
        for chain in self._others:
            chain.close()

    def skip(self, claimed: int) -> None:
        """Pass a position that is not checked, without its logits: the chain still samples (its ``dist``
        draws its one uniform number whatever the candidates, a single one included) and accepts the
        claimed token, so that the next checked position sees the worker's random stream.
        """
        if self._greedy:
            return
        for chain in (self._chain, *self._others):
            self._skip_data[0].id = claimed
            self._skip_data[0].logit = 0.0
            self._skip_data[0].p = 0.0
            self._skip_array.size = 1
            self._skip_array.selected = -1
            self._skip_array.sorted = False
            self._llama.llama_sampler_apply(chain.sampler, ctypes.byref(self._skip_array))
            self._llama.llama_sampler_accept(chain.sampler, claimed)

    def _survivors(self, logits: npt.NDArray[np.float32], near: npt.NDArray[np.intp] | None) -> Any:
        """The candidates after the shared members (class docstring): a copy of the entries top-k kept, and
        the array's size, selected and sorted flags as llama.cpp left them."""
        assert self._split is not None
        shared = self._split[0]
        k = self._top_k
        cut = near if near is not None and k < near.size < logits.shape[0] else None
        if cut is not None:
            top = np.sort(logits[cut])[::-1][: k + 1]
            if not bool(np.all(top[:-1] > top[1:])):
                cut = None  # ties among the 41 largest: the whole row, as llama_sampler_sample builds it
        row = self._row
        if cut is None:
            size = logits.shape[0]
            row["id"] = self._all_ids
            row["logit"] = logits
        else:
            size = cut.size
            row["id"][:size] = cut
            row["logit"][:size] = logits[cut]
        row["p"][:size] = 0.0
        array = self._row_array
        array.size, array.selected, array.sorted = size, -1, False
        for member in shared:
            self._llama.llama_sampler_apply(member, ctypes.byref(array))
        return row[: array.size].copy(), int(array.size), int(array.selected), bool(array.sorted)

    def _sample(self, chain: Any, rest: list[Any], survivors: Any) -> int:
        """``llama_sampler_sample`` from the shared members' survivors on: the rest of ``chain``, then accept."""
        data, size, selected, is_sorted = survivors
        self._pick[:size] = data
        array = self._pick_array
        array.size, array.selected, array.sorted = size, selected, is_sorted
        for member in rest:
            self._llama.llama_sampler_apply(member, ctypes.byref(array))
        if not 0 <= array.selected < array.size:
            # llama_sampler_sample asserts the same (GGML_ASSERT); dist always selects one.
            raise InternalError(f"sampler chain selected {array.selected} of {array.size} candidates")
        token = int(self._pick[array.selected]["id"])
        self._llama.llama_sampler_accept(chain.sampler, token)
        return token

    def step(
        self,
        row: int,
        logits: npt.NDArray[np.float32],
        claimed: int,
        tolerance: float,
        near: npt.NDArray[np.intp] | None = None,
    ) -> bool:
        """Replay position ``row`` of the last batch; False if the claimed token cannot be honest.

        ``near``: the row's ``shortlist`` of at least ``shortlist_size`` ids, when the caller has one.
        """
        best = float(logits.max())
        value = float(logits[claimed])
        if self._greedy:
            if value < best:
                self.differed += 1
                self.greedy_gaps.append(best - value)
            return value >= best - 2 * tolerance
        survivors = None
        if self._split is not None:
            survivors = self._survivors(logits, near)
            rests = self._split[1]
            for i, chain in enumerate(self._others):
                if self._sample(chain, rests[i + 1], survivors) == claimed:
                    self.others_matched[i] += 1
            picked = self._sample(self._chain, rests[0], survivors)
        else:
            for i, chain in enumerate(self._others):
                if int(self._llama.llama_sampler_sample(chain.sampler, self._llm.ctx, row)) == claimed:
                    self.others_matched[i] += 1
            picked = int(self._llama.llama_sampler_sample(self._chain.sampler, self._llm.ctx, row))
        if picked == claimed:
            self.matched += 1
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
        # of the largest one's: allow for noise of ``tolerance`` on both sides of each comparison. Top-k's
        # survivors are the k largest, so the smallest of them is the k-th largest value.
        if survivors is not None and survivors[1] == self._top_k:
            kth = float(survivors[0]["logit"].min())
        else:
            kth = float(np.partition(logits, -self._top_k)[-self._top_k])
        return value >= max(kth, best + math.log(self._min_p)) - 2 * tolerance


def temperature_margin(positions: int) -> int:
    """How many more positions another temperature's replay must match to dispute (constants above)."""
    if positions <= 16:
        return TEMPERATURE_MARGIN
    return math.ceil(TEMPERATURE_MARGIN_SCALE * math.sqrt(positions))


def sign_test_fails(less: int, more: int, p: float = SIGN_TEST_P) -> bool:
    """True when ``less`` against ``more`` is too one-sided for honest noise (constants above)."""
    n = less + more
    k = max(less, more)
    if k - min(less, more) < MAX_SIGN_IMBALANCE:
        return False
    tail = sum(math.comb(n, i) for i in range(k, n + 1)) / (1 << n)  # P(at least k of n alike), one side
    return 2 * tail < p


def choose_chunks(n_chunks: int, count: int, rng: random.Random) -> tuple[int, ...]:
    """``count`` of the ``n_chunks`` chunks, uniformly without replacement, in order; all when ``count`` is 0
    or covers them. The worker committed to every chunk before this draw, so it cannot know which are read.
    """
    if count <= 0 or count >= n_chunks:
        return tuple(range(n_chunks))
    return tuple(sorted(rng.sample(range(n_chunks), count)))


def checked_positions(claim: Claim, chunks: Sequence[int]) -> list[int]:
    """The positions of ``chunks``, and the end token's position when one is claimed (module docstring)."""
    size = claim.commitment.params.chunk_tokens
    total = len(claim.positions)
    positions = {p for c in chunks for p in range(c * size, min((c + 1) * size, total))}
    if claim.end_token is not None and total:
        positions.add(total - 1)
    return sorted(positions)


def forward_rows(
    llm: Any,
    llama: Any,
    prompt: Sequence[int],
    generated: Sequence[int],
    positions: Sequence[int],
    on_rows: Callable[[list[int], list[int], list[npt.NDArray[np.float32]]], None],
    *,
    check_cancelled: Callable[[], None],
) -> int:
    """Prefill ``prompt + generated`` up to the last of ``positions`` (sorted generated positions), with
    logits for those positions only, and hand them over one batch at a time as
    ``on_rows(positions, batch_rows, rows)`` (a row is valid only until the next decode). Returns the number
    of tokens prefilled.
    """
    if not positions:
        return 0
    n_batch = int(llm.n_batch)
    n_vocab = int(llm.n_vocab())
    # The row that produced generated position j is the one of input len(prompt) - 1 + j; inputs after the
    # last wanted row cannot change it (causal attention) and are not computed.
    first = len(prompt) - 1
    inputs = [*prompt, *generated][: first + positions[-1] + 1]
    wanted = iter(positions)
    upcoming = next(wanted, None)
    batch = llm._batch.batch
    llm.reset()
    llm._ctx.kv_cache_seq_rm(-1, 0, -1)
    try:
        for start in range(0, len(inputs), n_batch):
            check_cancelled()
            part = inputs[start : start + n_batch]
            batch.n_tokens = len(part)
            at: list[int] = []
            rows_at: list[int] = []
            for i, token in enumerate(part):
                batch.token[i] = token
                batch.pos[i] = start + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                wants = upcoming is not None and start + i == first + upcoming
                batch.logits[i] = wants
                if wants:
                    assert upcoming is not None
                    at.append(upcoming)
                    rows_at.append(i)
                    upcoming = next(wanted, None)
            llm._ctx.decode(llm._batch)
            if at:
                rows = [
                    np.ctypeslib.as_array(llama.llama_get_logits_ith(llm.ctx, i), shape=(n_vocab,)) for i in rows_at
                ]
                on_rows(at, rows_at, rows)
    finally:
        llm.reset()  # what is cached now is no generation's state; the next one must start afresh
    return len(inputs)


def verify_claim(
    llm: Any,
    llama: Any,
    prompt: Sequence[int],
    claim: Claim,
    sampler: Mapping[str, float | int],
    *,
    check_cancelled: Callable[[], None],
    chunks: int = CHECKED_CHUNKS,
    rng: random.Random | None = None,
    tolerance: float = LOGIT_TOLERANCE,
    token_tolerance: float = TOKEN_TOLERANCE,
    median_limit: float = MEDIAN_DEVIATION_LIMIT,
    max_differed: float = MAX_REPLAY_DIFFERED,
    shortlisted: bool = True,
    replay_tokens: bool = True,
) -> Verdict:
    """The forward-pass checks of the module docstring, on a claim that passed ``claims`` checks.

    ``replay_tokens=False`` (a shaped request, ``shaping.py``): the values only; each token's choice
    followed a grammar or penalties that this check does not rebuild, so the token statistics stay empty.

    ``chunks`` of the commitment's chunks are checked (0: all), drawn from ``rng`` (the system's
    unpredictable generator unless a test passes its own). ``shortlisted=False`` reads every row whole
    (argpartition for the certified ids, ``llama_sampler_sample`` per chain), the computation before
    ``shortlist``: the same statistics, slower; tests and scripts/bench_verify.py compare the two.
    """
    started = time.perf_counter()
    params = claim.commitment.params
    limit = int(np.ceil(tolerance * params.scale)) + 1  # +1: both sides rounded to a quantum
    produced = claim.positions
    picked = choose_chunks(len(claim.commitment.chunks), chunks, rng or _SYSTEM_RANDOM)
    wanted = checked_positions(claim, picked)
    deviations: list[int] = []
    value_misses: list[int] = []
    token_misses: list[int] = []
    checked = 0
    replay = SamplerReplay(llm, llama, claim, sampler, shortlisted=shortlisted) if replay_tokens else None
    replayed = 0  # positions the replay has passed, checked or skipped
    count = max(params.top_k + 1, replay.shortlist_size if replay is not None else 0)

    def on_rows(at: list[int], batch_rows: list[int], rows: list[npt.NDArray[np.float32]]) -> None:
        nonlocal checked, replayed
        for position, row, logits in zip(at, batch_rows, rows, strict=True):
            while replay is not None and replayed < position:  # unchecked positions still move the sampler
                replay.skip(produced[replayed])
                replayed += 1
            if shortlisted:
                near = shortlist(logits, count)
                top = leading(logits, near, params.top_k + 1)
                ids, values = certified_ids(logits, params.top_k, CERTIFY_TOLERANCE, top=top)
            else:
                near = None
                ids, values = certified_ids(logits, params.top_k, CERTIFY_TOLERANCE)
            result = check_position(claim.commitment.coefficients(position), ids, values, params.scale)
            checked += result.checked
            if result.checked:
                deviations.append(result.max_deviation)
            if result.max_deviation > limit:
                value_misses.append(position)
            if replay is not None and not replay.step(row, logits, produced[position], token_tolerance, near):
                token_misses.append(position)
            replayed += 1

    try:
        prefilled = forward_rows(
            llm, llama, prompt, claim.token_ids, wanted, on_rows, check_cancelled=check_cancelled
        )
    finally:
        if replay is not None:
            replay.close()
    stats = CheckStatistics(
        positions=len(wanted),
        deviations=tuple(d / params.scale for d in deviations),
        value_mismatches=tuple(value_misses),
        token_mismatches=tuple(token_misses),
        replay_differed=replay.differed if replay is not None else 0,
        replay_less_likely=replay.less_likely if replay is not None else 0,
        replay_more_likely=replay.more_likely if replay is not None else 0,
        replay_matched=replay.matched if replay is not None else 0,
        matched_at_factors=tuple(zip(replay.factors, replay.others_matched, strict=True)) if replay is not None
        else (),
        greedy_gaps=tuple(replay.greedy_gaps) if replay is not None else (),
    )
    details: dict[str, JSON] = {
        "positions": len(produced),
        "checked_chunks": list(picked),
        "prefilled_tokens": prefilled,
        "checked_values": checked,
        "tokens_replayed": replay_tokens,
        **stats.to_details(),
        "tolerance": tolerance,
        "seconds": time.perf_counter() - started,
    }
    ok, reason = judge(stats, claim.temperature, tolerance=tolerance, median_limit=median_limit,
                       max_differed=max_differed)
    return Verdict(ok, reason, details)


@dataclasses.dataclass(frozen=True)
class CheckStatistics:
    """What the forward pass measured on the checked positions: all ``judge`` decides on.

    Kept apart from the pass so that recorded statistics (``scripts/bench_verify.py --record``) can be judged
    again under other bounds by the same code (``scripts/calibrate_verify.py``).
    """

    positions: int  # checked positions
    deviations: tuple[float, ...]  # per checked position with certified ids: largest |committed - ours|
    value_mismatches: tuple[int, ...]  # positions past the value tolerance
    token_mismatches: tuple[int, ...]  # positions whose token no honest sampler could have picked
    replay_differed: int
    replay_less_likely: int
    replay_more_likely: int
    replay_matched: int  # sampled: positions where the claimed temperature's replay picked the claimed token
    matched_at_factors: tuple[tuple[float, int], ...]  # the same at claimed temperature x factor
    greedy_gaps: tuple[float, ...]  # greedy: our argmax logit - the claimed token's, where they differ

    def to_details(self) -> dict[str, JSON]:
        return {
            "checked_positions": self.positions,
            "median_deviation": float(np.median(self.deviations)) if self.deviations else 0.0,
            "max_deviation": max(self.deviations, default=0.0),
            "deviations": list(self.deviations),
            "value_mismatches": len(self.value_mismatches),
            "value_mismatch_positions": list(self.value_mismatches),
            "token_mismatches": len(self.token_mismatches),
            "token_mismatch_positions": list(self.token_mismatches),
            "replay_differed": self.replay_differed,
            "replay_less_likely": self.replay_less_likely,
            "replay_more_likely": self.replay_more_likely,
            "replay_matched": self.replay_matched,
            "replay_matched_at_factors": [[f, m] for f, m in self.matched_at_factors],
            "greedy_gaps": list(self.greedy_gaps),
        }

    @classmethod
    def from_details(cls, details: Mapping[str, Any]) -> CheckStatistics:
        return cls(
            positions=int(details["checked_positions"]),
            deviations=tuple(float(d) for d in details["deviations"]),
            value_mismatches=tuple(int(p) for p in details["value_mismatch_positions"]),
            token_mismatches=tuple(int(p) for p in details["token_mismatch_positions"]),
            replay_differed=int(details["replay_differed"]),
            replay_less_likely=int(details["replay_less_likely"]),
            replay_more_likely=int(details["replay_more_likely"]),
            replay_matched=int(details["replay_matched"]),
            matched_at_factors=tuple((float(f), int(m)) for f, m in details["replay_matched_at_factors"]),
            greedy_gaps=tuple(float(g) for g in details["greedy_gaps"]),
        )


def judge(
    stats: CheckStatistics,
    temperature: float,
    *,
    tolerance: float = LOGIT_TOLERANCE,
    median_limit: float = MEDIAN_DEVIATION_LIMIT,
    max_differed: float = MAX_REPLAY_DIFFERED,
) -> tuple[bool, str]:
    """The verdict on ``stats`` of a claim sampled at ``temperature``: ok, or the first reason it is not."""
    n = stats.positions
    median = float(np.median(stats.deviations)) if stats.deviations else 0.0
    largest = max(stats.deviations, default=0.0)
    misses = stats.value_mismatches
    allowed = 1 + int(n * VALUE_MISMATCH_SHARE)
    if median > median_limit:
        return False, (
            f"logits differ from the committed ones by {median:.3f} at the median position "
            f"(honest noise stays under {median_limit})"
        )
    if len(misses) > allowed:
        return False, (
            f"logits differ from the committed ones at {len(misses)} of {n} checked positions "
            f"(first at {misses[0]}; largest deviation {largest:.3f} > {tolerance})"
        )
    share = MAX_GREEDY_DIFFERED if temperature == 0 else max_differed
    if n >= MIN_REPLAY_POSITIONS and stats.replay_differed >= share * n:
        return False, (
            f"the claimed sampler and seed pick other tokens at {stats.replay_differed} of {n} checked positions "
            f"(honest noise: ~3% greedy, ~12% sampled)"
        )
    if temperature > 0 and n >= MIN_REPLAY_POSITIONS:
        for factor, matched in stats.matched_at_factors:
            if matched - stats.replay_matched >= temperature_margin(n):
                return False, (
                    f"the claimed sampler and seed at temperature {temperature * factor:.2f} pick the claimed "
                    f"tokens at {matched} of {n} checked positions, at the claimed {temperature} only at "
                    f"{stats.replay_matched}: sampled {'hotter' if factor > 1 else 'colder'} than claimed"
                )
    gaps = sum(g > GREEDY_GAP for g in stats.greedy_gaps)
    if temperature == 0 and gaps >= MAX_GREEDY_GAPS:
        return False, (
            f"the claimed token trails our top-1 by more than {GREEDY_GAP} at {gaps} of {n} checked positions: "
            f"sampled, not greedy"
        )
    less, more = stats.replay_less_likely, stats.replay_more_likely
    if temperature > 0 and sign_test_fails(less, more):
        return False, (
            f"sampled tokens are {'less' if less > more else 'more'} likely than the claimed temperature's "
            f"at {abs(less - more)} more positions than the other way: sampled "
            f"{'hotter' if less > more else 'colder'} than claimed"
        )
    if stats.token_mismatches:
        what = "the top-1 token" if temperature == 0.0 else "what the claimed sampler and seed pick"
        return False, (
            f"token at position {stats.token_mismatches[0]} is not {what} "
            f"({len(stats.token_mismatches)} such positions)"
        )
    return True, "ok"


def reject(exc: ClaimRejected) -> Verdict:
    return Verdict(False, str(exc))
