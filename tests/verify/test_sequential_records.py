"""The sequential test against recorded checks of real llama.cpp results (``tests/data/verify_records*.json.gz``).

The records are what ``scripts/bench_verify.py --record`` wrote on 2026-12-07 with the packaged model, kept
compact: ``verify_records.json.gz``, the statistics of 2,000 honest checks (16-, 32- and 64-token results at
temperatures 0 to 1.4) and of 100 forged results for each of the ten cheating strategies of ``cheaters.py``
(16 tokens); ``verify_records_256.json.gz``, 100 honest and 30 forged per strategy (60 for the four temperature
lies, recorded twice), all of 256 tokens (a chat answer's length, where one check reads one chunk of 32 of the
256 positions). These tests replay
them through the scores (``runtimes/inference/scoring.py``), the single-result judgement (``verifier.judge``) and
the evidence (``hyperion_node/verify/evidence.py``) as they are now, so that a change to any bound is checked
against every recorded result. ``bench_verify.py --parts sequential`` adds the sampling and the figures.
"""

from __future__ import annotations

import gzip
import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hyperion_node.verify.evidence import THRESHOLD, Check, replay
from runtimes.inference import scoring, verifier

DATA = Path(__file__).resolve().parent.parent / "data"
# file -> honest checks it holds
RECORDS = {"verify_records.json.gz": 2000, "verify_records_256.json.gz": 100}
# Checks until dispute, every result cheating and every one checked: a few for every cheat, but for a colder
# temperature lie in 256-token results, whose 32 checked positions change few tokens (most positions are
# near-certain, where 0.4 or 0.5 picks what 0.8 picks): median 7-10 of its 60 recorded checks, 39-50 at worst
# over 1,000 orders, so under 55 (docs/performance.md, "Verification over many results").
WITHIN = 10
WITHIN_COLDER_LONG = 55


@dataclass
class Records:
    by_kind: dict[str, list[dict[str, Any]]]  # "honest" or a cheat's name -> its recorded checks
    longest: int  # tokens of the longest recorded result


@pytest.fixture(scope="module", params=sorted(RECORDS))
def records(request: pytest.FixtureRequest) -> Records:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for trial in json.loads(gzip.decompress((DATA / request.param).read_bytes())):
        grouped[trial["kind"]].append(trial)
    assert len(grouped["honest"]) == RECORDS[request.param]
    return Records(dict(grouped), max(t["tokens"] for t in grouped["honest"]))


def as_check(trial: dict[str, Any], n: int) -> Check:
    details = trial["details"]
    ok = (verifier.judge(verifier.CheckStatistics.from_details(details), trial["claimed_temperature"])[0]
          if "deviations" in details else bool(trial["ok"]))
    return Check(f"{trial['kind']}-{n}", ok, scoring.check_scores(details))


def test_no_honest_result_is_disputed_alone_or_together(records: Records) -> None:
    honest = records.by_kind["honest"]
    checks = [as_check(t, n) for n, t in enumerate(honest)]
    assert [c.receipt_id for c in checks if not c.ok] == []
    disputed, peak = replay(checks)
    assert disputed is None, f"honest checks disputed together at check {disputed}"
    assert peak < THRESHOLD / 2  # margin: the highest honest CUSUM stays under half the threshold
    rng = random.Random(11)
    for _ in range(20):  # other orders of the same checks
        rng.shuffle(checks)
        assert replay(checks)[0] is None


def test_every_cheat_is_disputed_within_a_few_checks_of_its_results(records: Records) -> None:
    cheats = {kind: trials for kind, trials in records.by_kind.items() if kind != "honest"}
    assert len(cheats) == 10
    long_results = records.longest >= 256
    rng = random.Random(12)
    for kind, trials in cheats.items():
        colder = kind in ("sampled at 0.5, claimed 0.8", "sampled at 0.4, claimed 0.8")
        within = WITHIN_COLDER_LONG if colder and long_results else WITHIN
        for _ in range(50):  # a worker cheating in every result, every result checked
            order = rng.sample(trials, len(trials))
            disputed, _ = replay(as_check(t, n) for n, t in enumerate(order))
            assert disputed is not None, kind
            assert disputed < within, kind
