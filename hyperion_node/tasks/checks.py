"""Runtime-specific checks the requester makes before it countersigns a peer's result.

A countersignature says "I received this and it is right". For a ZK proof that can be decided at once and
cheaply (verifying takes ~0.1 s against seconds of proving), so the requester verifies the proof against
the proving key it sent before it signs. Inference and render results are checked later and by sampling
(spot checks), because checking them costs a share of the work itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import trio

from hyperion_node.errors import RemoteError

# Payload fields that name files on the worker's disk. From a peer they would let anyone read any file the
# node can read; only the local user's own requests may use them (the runtime then runs here).
PATH_SUFFIX = "_path"


class ResultRejected(RemoteError):
    """The worker's result does not stand up to the check: it is not countersigned."""

    reason = "bad_result"


def path_fields(payload: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in payload if k.endswith(PATH_SUFFIX))


def _check_groth16(payload: Mapping[str, Any], output: Mapping[str, Any], evidence: Mapping[str, Any]) -> None:
    from runtimes.zk.exceptions import MalformedInput
    from runtimes.zk.runtime import check_final
    from runtimes.zk.verifier import verifying_key_from_zkey
    from runtimes.zk.zkey import parse_zkey

    zkey = payload.get("zkey")
    if not isinstance(zkey, bytes):
        raise ResultRejected("a ZK result can only be checked against the proving key bytes that were sent")
    try:
        ok = check_final(verifying_key_from_zkey(parse_zkey(zkey, label="task zkey")), output, evidence)
    except (MalformedInput, ValueError, TypeError, KeyError) as exc:
        raise ResultRejected(f"the proof in the result is malformed: {exc}") from exc
    if not ok:
        raise ResultRejected("the proof does not verify against the task's key, or the evidence does not match it")


_CHECKS = {"zk-groth16": _check_groth16}


async def check_result(runtime: str, payload: Mapping[str, Any], output: Mapping[str, Any],
                       evidence: Mapping[str, Any]) -> None:
    """Raise ``ResultRejected`` if the runtime has a cheap check and the result fails it."""
    check = _CHECKS.get(runtime)
    if check is not None:
        await trio.to_thread.run_sync(check, payload, output, evidence)
