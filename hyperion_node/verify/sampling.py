"""Which results a requester checks: a random share, sized by a compute budget. Pure code.

A check costs a share of the work it checks (``check_share`` on the runtime's class, ``runtimes.interface``:
an inference check ~0.1 of a 256-token generation here, a render check one frame of the job). A requester that
checks each result with probability ``budget / share`` spends, in expectation, ``budget`` of the compute it
buys on checks, whatever mix of work it buys: checks of cheap-to-check work are drawn more often, of dear
ones less. ``[verify] budget`` is 0.01 by default.

The rate rises where checks are worth more:

* **new workers**: the first ``new_worker_results`` results of a worker at this node are checked
  ``new_worker_boost`` times as often, so that a worker cheating from the start meets checks early;
* **drifting workers**: once a worker's evidence (``evidence.WorkerEvidence.drift``) is ``evidence.DRIFT`` of
  the way to a dispute, ``drift_boost`` times as often, so that the sequential test settles quickly either way.

The draw comes from the OS's random source after the worker has answered (``SpotChecker.after_task``): a
worker cannot tell checked results from the others while it works, nor predict the next draw.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from hyperion_node.verify.evidence import DRIFT

MIN_SHARE = 1e-4  # a check is never free: a share below this is taken as this (the rate stays finite)


@dataclass(frozen=True)
class SamplingPolicy:
    budget: float = 0.01
    new_worker_results: int = 32
    new_worker_boost: float = 10.0
    drift_boost: float = 10.0

    def probability(self, share: float, *, results_seen: int, drift: float) -> float:
        """The chance to check one result whose check costs ``share`` of its work, from a worker that has
        delivered ``results_seen`` results to this node before and whose evidence stands at ``drift``."""
        if self.budget <= 0:
            return 0.0
        boost = 1.0
        if results_seen < self.new_worker_results:
            boost = max(boost, self.new_worker_boost)
        if drift >= DRIFT:
            boost = max(boost, self.drift_boost)
        return min(1.0, self.budget * boost / max(share, MIN_SHARE))


class Sampler:
    """A ``SamplingPolicy`` with its unpredictable draw and the account of what it decided."""

    def __init__(self, policy: SamplingPolicy, rng: random.Random | None = None) -> None:
        self.policy = policy
        self._rng = rng or random.SystemRandom()
        self.results = 0  # results offered for a check
        self.checked = 0
        self.bought = 0.0  # work units of those results
        self.spent = 0.0  # work units' worth of the checks drawn (share x units)

    def draw(self, share: float, units: float, *, results_seen: int, drift: float) -> bool:
        p = self.policy.probability(share, results_seen=results_seen, drift=drift)
        self.results += 1
        self.bought += units
        if p <= 0.0 or self._rng.random() >= p:
            return False
        self.checked += 1
        self.spent += share * units
        return True

    def to_map(self) -> dict[str, float]:
        return {"budget": self.policy.budget, "results": self.results, "checked": self.checked,
                "spent_share": round(self.spent / self.bought, 6) if self.bought else 0.0}
