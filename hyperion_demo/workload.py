"""The demo's workload: seeded task specs at a fixed rate, each submitted through a node's real
orchestrator (``Orchestrator.submit``), and what became of each one, for the live line and the summary.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from hyperion_demo.profiles import INFERENCE_ITEM, RENDER_ITEM, ZK_ITEM
from hyperion_node.tasks.events import Assigned, Failed, Final, Partial
from hyperion_node.tasks.model import TaskSpec
from hyperion_node.tasks.service import Job

KINDS = ("inference", "zk", "render")
WEIGHTS = (0.6, 0.25, 0.15)  # chat traffic dominates a public network; proofs and renders are batch work
# --real-inference: the packaged model's id, and what its tasks ask. Short answers, greedy decoding (the same
# text every run on the same build, so a replay can check it); one task at a time, as one chat user sends them.
REAL_MODEL = "gemma-3-270m-q4_k_m"
REAL_MAX_TOKENS = 24
# Openings to complete rather than chat turns: a 270M model continues text far better than it follows orders.
REAL_PROMPTS = ("The sky is blue because", "A graphics card is", "The capital of France is",
                "Peer-to-peer networks are", "A lighthouse is", "The fastest land animal is")
PROMPTS = ("Explain proof of work", "Write a haiku about GPUs", "Summarise the libp2p spec",
           "What is a Merkle tree?", "Translate 'hello' to French", "Why is the sky blue?")


@dataclass(frozen=True)
class PlannedTask:
    seq: int
    requester: int  # an index into the live nodes at submission time
    spec: TaskSpec


def plan_task(rng: random.Random, seq: int) -> PlannedTask:
    """The ``seq``-th task of the workload; the same seed gives the same sequence."""
    kind = rng.choices(KINDS, WEIGHTS)[0]
    requester = rng.randrange(1 << 30)
    if kind == "inference":
        tokens = rng.choice((32, 64, 96, 128))
        spec = TaskSpec(runtime="inference", item=INFERENCE_ITEM, timeout_s=30.0, expected_units=tokens,
                        payload={"prompt": f"{rng.choice(PROMPTS)} #{seq}", "max_tokens": tokens, "seq": seq})
    elif kind == "zk":
        constraints = rng.choice((2**18, 2**19, 2**20))
        spec = TaskSpec(runtime="zk", item=ZK_ITEM, timeout_s=60.0, expected_units=constraints,
                        payload={"constraints": constraints, "seq": seq})
    else:
        frames = rng.choice((1, 2, 3))
        spec = TaskSpec(runtime="render", item=RENDER_ITEM, timeout_s=60.0, expected_units=frames,
                        payload={"frames": frames, "seq": seq})
    return PlannedTask(seq, requester, spec)


def plan_real_task(rng: random.Random, seq: int) -> PlannedTask:
    """The ``seq``-th task for the node that serves the packaged model for real."""
    prompt = rng.choice(REAL_PROMPTS)
    spec = TaskSpec(runtime="inference", item=REAL_MODEL, timeout_s=60.0, expected_units=REAL_MAX_TOKENS,
                    payload={"model": REAL_MODEL, "prompt": prompt, "max_tokens": REAL_MAX_TOKENS,
                             "deterministic": True})
    return PlannedTask(seq, rng.randrange(1 << 30), spec)


@dataclass
class Outcome:
    seq: int
    runtime: str
    requester: str
    task_id: str
    submitted: float
    state: str = "running"  # completed, failed, lost (its requester died)
    worker: str = ""
    latency_s: float | None = None
    first_output_s: float | None = None
    error: str = ""  # the error event's type (no_worker (all-busy), worker_failed, deadline, ...)
    message: str = ""  # and its message, which says why
    assigned: list[str] = field(default_factory=list)  # every worker it was sent to, in order
    real: bool = False  # for the real llama.cpp node (--real-inference)
    payload: dict[str, Any] = field(default_factory=dict)  # a real task's payload (what the model was asked)
    final: Final | None = None  # a real task's final event: output, evidence, receipt

    @property
    def kind(self) -> str:
        return "real" if self.real else self.runtime


class Tracker:
    """Every task the workload submitted, and how it ended."""

    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []
        self.running = 0  # added and not yet followed to their end (the end of a demo waits for these)

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        self.running += 1

    def counts(self) -> Counter[str]:
        return Counter(o.state for o in self.outcomes)

    async def follow(self, outcome: Outcome, job: Job) -> None:
        """Read the job's events to the end, as an API client would (``outcome`` was ``add``-ed)."""
        try:
            await self._follow(outcome, job)
        finally:
            self.running -= 1

    async def _follow(self, outcome: Outcome, job: Job) -> None:
        async with job.events:
            async for event in job.events:
                now = trio.current_time() - outcome.submitted
                match event:
                    case Assigned():
                        outcome.assigned.append(event.worker)
                    case Partial() if outcome.first_output_s is None:
                        outcome.first_output_s = now
                    case Final():
                        outcome.state, outcome.worker, outcome.latency_s = "completed", event.worker, now
                        if outcome.real:
                            outcome.final = event
                    case Failed(kind=kind, reason=reason):  # reason: a no_worker's (all-busy, no-provider, ...)
                        outcome.state = "failed"
                        outcome.error = kind.value + (f" ({reason})" if reason else "")
                        outcome.message = event.message
        if outcome.state == "running":
            outcome.state = "lost"  # the stream ended with no answer: the requesting node died under it


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]
