"""Runtime-specific checks the requester makes before it countersigns a peer's result.

A countersignature says "I received this and it is right". Where that can be decided at once and cheaply,
the runtime's class says so with ``check_result`` (``runtimes.interface``; a Groth16 proof verifies in ~0.1 s
against seconds of proving), and the requester runs it before it signs. Other results (inference, render) are
checked later and by sampling (spot checks), because checking them costs a share of the work itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import trio

from hyperion_node.errors import RemoteError
from hyperion_node.runtime_registry import RuntimeRegistry

# Payload fields that name files on the worker's disk. From a peer they would let anyone read any file the
# node can read; only the local user's own requests may use them (the runtime then runs here).
PATH_SUFFIX = "_path"


class ResultRejected(RemoteError):
    """The worker's result does not stand up to the check: it is not countersigned."""

    reason = "bad_result"


def path_fields(payload: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in payload if k.endswith(PATH_SUFFIX))


async def check_result(runtimes: RuntimeRegistry, runtime: str, payload: Mapping[str, Any],
                       output: Mapping[str, Any], evidence: Mapping[str, Any]) -> None:
    """Raise ``ResultRejected`` if the runtime has a cheap check (``check_result`` on its class,
    ``runtimes.interface``) and the result fails it."""
    check = runtimes.result_check(runtime)
    if check is not None:
        reason = await trio.to_thread.run_sync(check, payload, output, evidence)
        if reason:
            raise ResultRejected(reason)
