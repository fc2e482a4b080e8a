"""The sequential test's dispute as it travels (``verify/evidence_case.py``): real signed receipts, real codec.

What it must hold: every check it carries is a settled receipt of one worker, for one requester and item, with
the very work the receipt commits to; a node believes it only on its own re-checks (``judge_rechecks``).
"""

from __future__ import annotations

import pytest

from hyperion_node.ledger.dispute import DisputeCase, Evidence
from hyperion_node.ledger.exceptions import Malformed, ReceiptRejected
from hyperion_node.ledger.receipt import SignedReceipt
from hyperion_node.testing.receipts import ReceiptFactory, new_identity
from hyperion_node.verify.evidence import Check
from hyperion_node.verify.evidence_case import (
    MAX_EVIDENCE_CHECKS,
    EvidenceCase,
    EvidenceItem,
    build,
    check_evidence_case,
    is_evidence_case,
    judge_rechecks,
)


def work(factory: ReceiptFactory, **kwargs: object) -> tuple[SignedReceipt, Evidence, dict[str, float]]:
    settled = factory.settled(**kwargs)
    n = settled.receipt.task_id.split("-")[1]
    return settled, Evidence({"prompt": f"hello {n}"}, {"text": f"world {n}"}), {"values": 1.5}


def test_a_case_round_trips_and_checks() -> None:
    factory = ReceiptFactory()
    case = build("values", [work(factory) for _ in range(5)])
    data = case.encode()
    assert is_evidence_case(data)
    assert EvidenceCase.decode(data) == case
    checked = check_evidence_case(EvidenceCase.decode(data))
    assert (checked.worker, checked.requester) == (str(factory.worker.peer_id), str(factory.requester.peer_id))
    assert len(checked.receipts) == 5
    assert checked.runtime == "inference"


def test_a_dispute_case_is_not_an_evidence_case() -> None:
    factory = ReceiptFactory()
    settled, evidence, _ = work(factory)
    assert not is_evidence_case(DisputeCase(settled.encode(), (b"x",), evidence).encode())
    assert not is_evidence_case(b"\xff garbage")


def test_only_as_many_checks_as_fit_travel_newest_first() -> None:
    factory = ReceiptFactory()
    case = build("values", [work(factory) for _ in range(MAX_EVIDENCE_CHECKS + 5)])
    assert len(case.items) == MAX_EVIDENCE_CHECKS
    big = [(s, Evidence({"prompt": "x" * 20_000}, e.output), sc) for s, e, sc in (work(factory) for _ in range(5))]
    assert 1 <= len(build("values", big).items) < 5  # 60 KiB in all


def test_checks_of_another_worker_or_requester_are_refused() -> None:
    factory = ReceiptFactory()
    mixed = build("values", [work(factory), work(factory, worker=new_identity())])
    with pytest.raises(ReceiptRejected):  # the second is signed by another worker: another worker's receipts
        check_evidence_case(mixed)
    other_requester = build("values", [work(factory), work(factory, requester=new_identity())])
    with pytest.raises(Malformed, match="one worker, requester and item"):
        check_evidence_case(other_requester)


def test_evidence_that_is_not_the_receipts_work_is_refused() -> None:
    factory = ReceiptFactory()
    settled, evidence, scores = work(factory)
    forged = EvidenceCase("values", (EvidenceItem(settled.encode(), Evidence({"prompt": "other"}, evidence.output),
                                                  scores),))
    with pytest.raises(Malformed, match="not the work"):
        check_evidence_case(forged)
    twice = EvidenceCase("values", (EvidenceItem(settled.encode(), evidence, scores),) * 2)
    with pytest.raises(Malformed, match="one receipt twice"):
        check_evidence_case(twice)


def test_an_unsettled_receipt_is_refused() -> None:
    factory = ReceiptFactory()
    signed = factory.signed()
    n = signed.receipt.task_id.split("-")[1]
    case = EvidenceCase("values", (EvidenceItem(signed.encode(), Evidence({"prompt": f"hello {n}"},
                                                                          {"text": f"world {n}"}), {}),))
    with pytest.raises(ReceiptRejected):
        check_evidence_case(case)


@pytest.mark.parametrize("body", [
    {"v": 1, "kind": "evidence", "statistic": "values", "checks": []},
    {"v": 1, "kind": "evidence", "statistic": "", "checks": [{"receipt": b"r", "evidence": {}, "scores": {}}]},
    {"v": 1, "kind": "evidence", "statistic": "values", "checks": [{"receipt": "r", "evidence": {}, "scores": {}}]},
    {"v": 1, "kind": "evidence", "statistic": "values", "checks": [
        {"receipt": b"r", "evidence": {"payload": {}, "output": {}}, "scores": {"values": 1}}]},
    {"v": 2, "kind": "evidence", "statistic": "values", "checks": []},
    {"v": 1, "kind": "evidence", "statistic": "values", "checks": [], "extra": 1},
])
def test_malformed_cases_are_refused(body: dict[str, object]) -> None:
    from hyperion_node.ledger import codec

    with pytest.raises(Malformed):
        EvidenceCase.decode(codec.encode(body))


def test_a_node_believes_a_case_only_when_its_own_rechecks_dispute_the_worker() -> None:
    leaning = [Check(f"r{i}", True, {"values": 1.8}) for i in range(8)]
    assert judge_rechecks(leaning) == "values"
    assert judge_rechecks([Check(f"r{i}", True, {"values": 0.4}) for i in range(16)]) is None
    assert judge_rechecks([Check("a", True, {}), Check("b", False, {})]) == "failed_check"
    assert judge_rechecks([]) is None
