"""The sequential test's dispute as it travels: the checks it rests on, each one re-checkable. Pure code.

When a requester's evidence (``evidence.EvidenceBook``) disputes a worker, no single result proves it: each
passed its own check, and together they lean away from honest work. So what travels is the work itself, as
many of the checked results as fit in a case frame (``MAX_CASE_BYTES``, newest first, at most
``MAX_EVIDENCE_CHECKS``): each settled receipt (both signatures) with the payload and output it commits to.
A node that serves the item checks every one of them again, itself, and runs its own sequential test on what
it measured (``judge_rechecks``): it believes the case only when its own checks dispute the worker too.
Nobody's word is taken -- not the accuser's scores, which travel only to be shown -- and a case that does not
reproduce costs its accuser nothing but the compute it asked of others, which is why a node re-checks only
cases whose requester has standing with it (``service.SpotChecker``).

Wire form: a canonical-CBOR map ``{"v": 1, "kind": "evidence", "statistic", "checks": [{"receipt", "evidence":
{"payload", "output", "sample"?}, "scores"}]}``. It travels on ``/hyperion/cases/1`` beside the dispute cases
(``ledger/dispute.py``), which have no ``kind``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from hyperion_node.ledger import codec
from hyperion_node.ledger.dispute import MAX_CASE_BYTES, Evidence
from hyperion_node.ledger.exceptions import Malformed
from hyperion_node.ledger.receipt import SignedReceipt, content_hash, verify_receipt
from hyperion_node.ledger.signing import PeerKeys
from hyperion_node.verify.evidence import THRESHOLD, Check, EvidenceBook

EVIDENCE_CASE_VERSION = 1
KIND = "evidence"
MAX_EVIDENCE_CHECKS = 16
MAX_STATISTIC = 64


@dataclass(frozen=True)
class EvidenceItem:
    receipt: bytes  # SignedReceipt.encode() of the settled receipt
    evidence: Evidence
    scores: Mapping[str, float]  # the accuser's, shown, never counted


@dataclass(frozen=True)
class EvidenceCase:
    statistic: str
    items: tuple[EvidenceItem, ...]

    def encode(self) -> bytes:
        return codec.encode({
            "v": EVIDENCE_CASE_VERSION, "kind": KIND, "statistic": self.statistic,
            "checks": [{"receipt": i.receipt, "evidence": i.evidence.to_map(),
                        "scores": {k: float(v) for k, v in i.scores.items()}} for i in self.items],
        })

    @classmethod
    def decode(cls, data: bytes) -> EvidenceCase:
        value = codec.decode(data, what="evidence case", max_bytes=MAX_CASE_BYTES)
        if not isinstance(value, dict) or not codec.is_version(value.get("v"), EVIDENCE_CASE_VERSION) or \
                value.get("kind") != KIND:
            raise Malformed("evidence case: expected a map of version 1 and kind 'evidence'")
        if set(value) != {"v", "kind", "statistic", "checks"}:
            raise Malformed("evidence case: unknown or missing fields")
        statistic, checks = value["statistic"], value["checks"]
        if not isinstance(statistic, str) or not 0 < len(statistic) <= MAX_STATISTIC:
            raise Malformed("evidence case: the statistic is a short text")
        if not isinstance(checks, list) or not 1 <= len(checks) <= MAX_EVIDENCE_CHECKS:
            raise Malformed(f"evidence case: 1 to {MAX_EVIDENCE_CHECKS} checks")
        items = []
        for check in checks:
            if not isinstance(check, dict) or set(check) != {"receipt", "evidence", "scores"}:
                raise Malformed("evidence case: a check is {receipt, evidence, scores}")
            receipt, evidence, scores = check["receipt"], check["evidence"], check["scores"]
            if not isinstance(receipt, bytes):
                raise Malformed("evidence case: a receipt is bytes")
            if not isinstance(evidence, dict) or not {"payload", "output"} <= set(evidence) <= \
                    {"payload", "output", "sample"} or not all(isinstance(evidence[k], dict) for k in evidence):
                raise Malformed("evidence case: evidence is {payload, output, sample?}, each a map")
            if not isinstance(scores, dict) or not all(
                    isinstance(k, str) and isinstance(v, float) and math.isfinite(v) for k, v in scores.items()):
                raise Malformed("evidence case: scores are text -> finite number")
            items.append(EvidenceItem(receipt, Evidence(evidence["payload"], evidence["output"],
                                                        evidence.get("sample")), scores))
        return cls(statistic, tuple(items))


def is_evidence_case(data: bytes) -> bool:
    """Whether a case frame holds an evidence case (else a dispute case), read without checking anything."""
    try:
        value = codec.decode(data, what="case", max_bytes=MAX_CASE_BYTES)
    except Malformed:
        return False
    return isinstance(value, dict) and value.get("kind") == KIND


@dataclass(frozen=True)
class CheckedEvidenceCase:
    """An evidence case whose receipts and bindings hold: one worker's work for one requester, one item."""

    case: EvidenceCase
    receipts: tuple[SignedReceipt, ...]

    @property
    def worker(self) -> str:
        return str(self.receipts[0].receipt.worker)

    @property
    def requester(self) -> str:
        return str(self.receipts[0].receipt.requester)

    @property
    def runtime(self) -> str:
        return str(self.receipts[0].receipt.runtime)

    @property
    def item(self) -> str:
        return str(self.receipts[0].receipt.item)


def check_evidence_case(case: EvidenceCase, keys: PeerKeys | None = None) -> CheckedEvidenceCase:
    """What needs no judgement; ``Malformed`` / ``BadSignature`` otherwise: every receipt is settled and both
    its signatures verify; all are distinct and of one worker, one requester, one runtime and item; each
    check's evidence hashes to its receipt's input and output (the work the worker signed)."""
    keys = keys or PeerKeys(capacity=4)
    receipts: list[SignedReceipt] = []
    for item in case.items:
        signed = SignedReceipt.decode(item.receipt)
        verify_receipt(signed, keys, require_countersignature=True)
        receipts.append(signed)
        first = receipts[0].receipt
        r = signed.receipt
        if (r.worker, r.requester, r.runtime, r.item) != (first.worker, first.requester, first.runtime, first.item):
            raise Malformed("evidence case: the checks are not all of one worker, requester and item")
        if content_hash(item.evidence.payload) != r.input_hash or content_hash(item.evidence.output) != r.output_hash:
            raise Malformed("evidence case: the evidence is not the work the receipt commits to")
    if len({s.id for s in receipts}) != len(receipts):
        raise Malformed("evidence case: one receipt twice")
    return CheckedEvidenceCase(case, tuple(receipts))


def judge_rechecks(checks: Iterable[Check], threshold: float = THRESHOLD) -> str | None:
    """This node's own checks of a case's work, in the case's order, through a fresh sequential test: the
    statistic that disputes the worker (a failed check's included), or None when they do not."""
    book = EvidenceBook(threshold=threshold)
    for check in checks:
        found = book.observe("case", "item", check)
        if found is not None:
            return found.statistic
    return None


def build(statistic: str, checked: Iterable[tuple[SignedReceipt, Evidence, Mapping[str, float]]]) -> EvidenceCase:
    """The case of a dispute from its checks, newest first: as many as fit in a case frame."""
    items: list[EvidenceItem] = []
    for settled, evidence, scores in checked:
        candidate = [*items, EvidenceItem(settled.encode(), evidence, dict(scores))]
        if len(candidate) > MAX_EVIDENCE_CHECKS or len(EvidenceCase(statistic, tuple(candidate)).encode()) > \
                MAX_CASE_BYTES:
            break
        items = candidate
    return EvidenceCase(statistic, tuple(items))
