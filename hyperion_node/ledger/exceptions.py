"""Why a receipt, a signature, a peer's record or the ledger itself was rejected.

Each reason is its own class with a short ``reason`` code, so that callers can count rejections per reason
(and score a peer down) without parsing messages. Records that arrive from elsewhere -- a peer, a gossip
message, a file handed to ``receipts verify`` -- fail with a :class:`ReceiptRejected` subclass: the sender is
at fault (``RemoteError``). A ledger whose stored chain no longer verifies is an :class:`ChainBroken`: the
machine's state is not what we wrote (a disk fault or a hand edit), an environment problem.
"""

from __future__ import annotations

from hyperion_node.errors import EnvironmentProblem, InternalError, RemoteError, UserError


class ReceiptRejected(RemoteError):
    """A record that failed verification. ``reason`` is a stable code for counters and logs."""

    reason = "rejected"


class Malformed(ReceiptRejected):
    """Not a well-formed, canonically encoded record of a known version, or over the size cap."""

    reason = "malformed"


class BadSignature(ReceiptRejected):
    """The worker's signature (or an epoch's or a dispute's signer's) does not verify under its peer ID."""

    reason = "bad_signature"


class BadCountersignature(ReceiptRejected):
    """The countersignature does not verify under the requester's peer ID named in the receipt."""

    reason = "bad_countersignature"


class Replayed(ReceiptRejected):
    """A receipt (or epoch root) already seen: a duplicate delivery or a replay."""

    reason = "replayed"


class Stale(ReceiptRejected):
    """Older than the replay window: it cannot be told apart from a replay any more."""

    reason = "stale"


class NotInProof(ReceiptRejected):
    """An inclusion proof that does not lead to the signed epoch root."""

    reason = "bad_inclusion_proof"


class InvalidTransition(UserError):
    """A status change the ledger does not allow: settling an unknown or disputed receipt, settling twice."""


class ReceiptNotFound(UserError):
    """No receipt with this id (or id prefix) in the ledger, or it is in no closed epoch yet."""


class WrongSigner(InternalError):
    """Our own misuse: signing a receipt as someone the receipt does not name."""


class LedgerClosed(EnvironmentProblem):
    """A receipt handed to the ledger after its writer stopped (the node is shutting down): not recorded."""


class ChainBroken(EnvironmentProblem):
    """The stored hash chain does not verify; ``position`` is the first entry that is wrong."""

    def __init__(self, position: int, reason: str) -> None:
        super().__init__(
            f"ledger chain broken at position {position}: {reason}",
            hint="the database was altered outside hyperion-node or the disk is failing; keep a copy for "
            "investigation and restore the data dir from a backup",
        )
        self.position = position
        self.reason = reason
