"""Why a task did not complete, by who is at fault (see hyperion_node/errors.py).

The control API maps each to an HTTP status: ``TaskRejected`` 400 (no worker can run it as asked),
``NoWorker`` 503 (nobody can take it now: the reason says who was excluded and why), ``TaskFailed`` 502 (a
worker failed after its output had started), ``LimitReached`` 429 (a spending limit of this node), a passed
deadline 504.
"""

from __future__ import annotations

from hyperion_node.errors import EnvironmentProblem, HyperionError, UserError


class TaskRejected(UserError):
    """Every worker that looked at the task refused it as asked (unknown model, prompt past the context)."""


class NoWorker(EnvironmentProblem):
    """No peer can take the task now."""

    def __init__(self, message: str, *, status: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status  # the scheduler's DecisionStatus value, or "all-busy"
        self.retry_after_s = retry_after_s


class LimitReached(UserError):
    """A spending limit of this node refuses the task (tasks/spending.py); ``retry_after_s``: when it resets."""

    def __init__(self, message: str, *, hint: str, retry_after_s: float | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retry_after_s = retry_after_s


class TaskFailed(HyperionError):
    """A worker failed after part of the result had reached the client: not retried elsewhere."""


class BadRenderJob(TaskRejected):
    """A distributed render job asked for something no worker can do (a bad range, resolution or scene)."""


class RenderJobFailed(TaskFailed):
    """Frames of a render job are left that no live worker can render: every worker failed or stalled."""

    def __init__(self, message: str, *, missing: list[int]) -> None:
        super().__init__(message, hint="the frames already written stand; submit the missing ones again")
        self.missing = missing
