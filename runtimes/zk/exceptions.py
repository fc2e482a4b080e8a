"""Errors of the ZK proving runtime, each saying who is at fault (see ``hyperion_node.errors``)."""

from __future__ import annotations

from hyperion_node.errors import EnvironmentProblem, HyperionError, UserError


class MalformedInput(UserError):
    """A ``.zkey``, ``.wtns``, ``.wasm`` or JSON input that cannot be read: truncated, wrong magic, bad sizes.

    The message names the file (or payload field) and what exactly is wrong with it.
    """


class UnsupportedCurve(MalformedInput):
    """The input is well formed but for another curve or protocol than Groth16 on BN254."""


class WitnessMismatch(MalformedInput):
    """The witness does not fit the proving key (wrong length, other field)."""


class InvalidProof(UserError):
    """A proof that does not verify, or whose points are not on the curve; used where a yes/no is not enough."""


class WorkerCrashed(EnvironmentProblem):
    """A proving worker process died (killed by the OS, out of memory) before it answered."""


class WitnessGenerationFailed(UserError):
    """The circuit's witness generator rejected the inputs (an assert failed, a signal is missing)."""


__all__ = [
    "HyperionError",
    "InvalidProof",
    "MalformedInput",
    "UnsupportedCurve",
    "WitnessGenerationFailed",
    "WitnessMismatch",
    "WorkerCrashed",
]
