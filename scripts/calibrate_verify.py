"""Judge recorded verifier statistics again, and show how far honest results lie from each cheat.

    .venv/bin/python scripts/calibrate_verify.py RECORD.json [...]

The records come from ``scripts/bench_verify.py --record``: per trial, the claim's kind (honest, or the
cheating strategy), its length, the claimed temperature, the verdict then, and the statistics the verdict was
decided on (``verifier.CheckStatistics``). Each trial is judged again by ``verifier.judge`` with the bounds in
verifier.py now, so that a change of bounds can be checked against every recorded trial before a new run
confirms it; the tables give, per kind, the distribution of each statistic a bound applies to.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runtimes.inference import verifier


def temperature_statistic(stats: verifier.CheckStatistics) -> int:
    """The temperature test's statistic (``verifier.judge``): the best other temperature's replay matches
    minus the claimed temperature's."""
    return max((m for _, m in stats.matched_at_factors), default=stats.replay_matched) - stats.replay_matched


STATISTICS = {
    "checked positions": lambda s: s.positions,
    "median deviation": lambda s: float(np.median(s.deviations)) if s.deviations else 0.0,
    "values past tolerance": lambda s: len(s.value_mismatches),
    "replay differed": lambda s: s.replay_differed,
    "less - more likely": lambda s: s.replay_less_likely - s.replay_more_likely,
    "other temperature - claimed matches": temperature_statistic,
    f"greedy gaps > {verifier.GREEDY_GAP}": lambda s: sum(g > verifier.GREEDY_GAP for g in s.greedy_gaps),
}


def main(paths: list[str]) -> None:
    groups: dict[tuple[str, int, str], list[tuple[dict[str, Any], verifier.CheckStatistics | None]]] = (
        defaultdict(list)
    )
    for path in paths:
        for trial in json.loads(Path(path).read_text()):
            details = trial["details"]
            stats = verifier.CheckStatistics.from_details(details) if "deviations" in details else None
            claimed = "greedy" if trial["claimed_temperature"] == 0 else "sampled"
            groups[(trial["kind"], trial["tokens"], claimed)].append((trial, stats))
    for (kind, tokens, claimed), trials in sorted(groups.items(), key=lambda g: (g[0][0] != "honest", g[0])):
        judged = [verifier.judge(s, t["claimed_temperature"]) if s else (t["ok"], t["reason"]) for t, s in trials]
        disputed = sum(not ok for ok, _ in judged)
        print(f"{kind}, {tokens} tokens, claimed {claimed}: {len(trials)} trials; disputed then "
              f"{sum(not t['ok'] for t, _ in trials)}, now {disputed}")
        reasons: dict[str, int] = defaultdict(int)
        for ok, reason in judged:
            if not ok:
                reasons[reason.split(" at ")[0].split(" by ")[0][:60]] += 1
        for reason, count in sorted(reasons.items(), key=lambda r: -r[1]):
            print(f"    {count:4d}  {reason}")
        measured = [s for _, s in trials if s is not None]
        if not measured:
            continue
        for name, statistic in STATISTICS.items():
            values = np.array([statistic(s) for s in measured], dtype=float)
            print(f"    {name:38s} min {values.min():6.2f}  p10 {np.quantile(values, 0.1):6.2f}  "
                  f"median {np.median(values):6.2f}  p90 {np.quantile(values, 0.9):6.2f}  max {values.max():6.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", nargs="+")
    main(parser.parse_args().records)
