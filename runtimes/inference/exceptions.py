"""Errors of the inference runtime, each saying who is at fault (see ``hyperion_node.errors``)."""

from __future__ import annotations

from hyperion_node.errors import RemoteError


class MalformedCommitment(RemoteError):
    """A worker's logit commitment that cannot be read: wrong scheme, sizes, base64 or digest.

    The worker that wrote the evidence is at fault; a verifier turns this into a failed verdict.
    """


__all__ = ["MalformedCommitment"]
