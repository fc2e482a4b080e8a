"""The demo's closing report, from the tracker's outcomes and every node's own ledger (dead ones too)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from hyperion_demo.workload import KINDS, REAL_MODEL, Outcome, percentile
from hyperion_node.cli.top_view import fmt_ms
from hyperion_node.ledger.money import atto_to_credits


@dataclass(frozen=True)
class NodeRewards:
    name: str
    board: str
    alive: bool
    served: int  # receipts as worker
    earned: float  # settled credits
    pending: float


def failovers(outcomes: Sequence[Outcome], dead: set[str]) -> tuple[int, int]:
    """(tasks sent to a node that then died and completed on another, tasks lost because it died after
    output had started -- the orchestrator fails over only before the first output)."""
    moved = sum(1 for o in outcomes if o.state == "completed" and o.worker not in dead
                and any(w in dead for w in o.assigned))
    broken = sum(1 for o in outcomes if o.state == "failed" and o.assigned and o.assigned[-1] in dead)
    return moved, broken


def report(outcomes: Sequence[Outcome], rewards: Sequence[NodeRewards], events: Sequence[str],
           dead: set[str], *, elapsed_s: float, interrupted: bool, real_node: str | None = None) -> list[str]:
    states = Counter(o.state for o in outcomes)
    finished = states["completed"] + states["failed"] + states["lost"]
    rate = 100 * states["completed"] / finished if finished else 0.0
    lines = [f"hyperion-node demo summary ({'interrupted' if interrupted else 'finished'} after {elapsed_s:.1f} s)",
             f"  tasks     {len(outcomes)} submitted, {states['completed']} completed, {states['failed']} failed, "
             f"{states['lost']} lost with their requester, {states['running']} unfinished at the end",
             f"  success   {rate:.1f}% of finished tasks"]
    for kind in (*KINDS, "real") if real_node else KINDS:
        done = [o.latency_s for o in outcomes if o.kind == kind and o.latency_s is not None]
        of_kind = sum(1 for o in outcomes if o.kind == kind)
        lines.append(f"  {kind:<9} {len(done)}/{of_kind} completed  latency p50 {fmt_ms(_ms(percentile(done, 50)))}"
                     f"  p95 {fmt_ms(_ms(percentile(done, 95)))}  p99 {fmt_ms(_ms(percentile(done, 99)))}")
    if real_node:
        said = next((o.final.output.get("text") for o in outcomes if o.real and o.final is not None), None)
        lines.append(f"            {real_node} ran {REAL_MODEL} with llama.cpp"
                     + (f"; its first answer: {_one_line(said)}" if isinstance(said, str) else ": no answer"))
    failed = Counter(o.error or o.state for o in outcomes if o.state in ("failed", "lost"))
    if failed:
        lines.append("  failures  " + ", ".join(f"{n} {reason}" for reason, n in failed.most_common()))
    moved, broken = failovers(outcomes, dead)
    if dead:
        lines.append(f"  failover  {moved} tasks of the dead node completed elsewhere; {broken} failed because "
                     "it died after their output had started")
    lines.append("  events")
    lines += [f"    {e}" for e in events] or ["    none"]
    lines.append("  rewards (credits, from each node's ledger)")
    for r in sorted(rewards, key=lambda r: -r.earned - r.pending):
        lines.append(f"    {r.name:<12} {r.board:<26} {'alive' if r.alive else 'dead ':<5} served {r.served:>4}"
                     f"  earned {r.earned:.6f}  pending {r.pending:.6f}")
    return lines


def _one_line(text: str, width: int = 60) -> str:
    """A model's answer on one summary line: whitespace folded, control characters dropped, cut at ``width``."""
    flat = " ".join("".join(c for c in text if c.isprintable() or c.isspace()).split())
    return repr(flat if len(flat) <= width else flat[:width - 1] + "…")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def node_rewards(name: str, board: str, alive: bool, rows: Sequence[tuple[str, str, int]]) -> NodeRewards:
    """(role, status, total atto) ledger rows to one node's reward line."""
    worker = [(status, total) for role, status, total in rows if role == "worker"]
    return NodeRewards(name, board, alive, len(worker),
                       atto_to_credits(sum(t for s, t in worker if s == "settled")),
                       atto_to_credits(sum(t for s, t in worker if s == "pending")))
