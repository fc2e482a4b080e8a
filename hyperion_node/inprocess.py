"""What many nodes in one process would each redo on the same bytes, done once for all of them.

On the demo's memory fabric (``hyperion_demo/fabric.py``) N virtual nodes share a process, and a provider's heartbeat
reaches each of its subscribers, a settled receipt both its parties: the same envelope, heartbeat and
receipt decoded and their Ed25519 signatures checked once per node that receives them (when every message
was gossiped to every node, at 50 nodes and 100 tasks/s, ~10,000 checks a second, more than the process's
one core). Inside ``shared_checks()`` those results are kept by their exact inputs, so each is computed once
per process: a signature that verified, an envelope, heartbeat or signed receipt that decoded. Each node still runs
every check of its code path; the answer to a repeated one is the first one's. A failure is never kept:
bad input is checked, and refused, every time.

A daemon is one node and never turns this on.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

CAPACITY = 16384  # entries of each kind, oldest out first


class ProcessMemo:
    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self.signatures: OrderedDict[tuple[str, bytes, bytes, bytes], None] = OrderedDict()
        self.decoded: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self.hits = 0

    def verified(self, key: tuple[str, bytes, bytes, bytes]) -> bool:
        if key in self.signatures:
            self.hits += 1
            return True
        return False

    def remember_verified(self, key: tuple[str, bytes, bytes, bytes]) -> None:
        self.signatures[key] = None
        if len(self.signatures) > self.capacity:
            self.signatures.popitem(last=False)

    def decoded_value(self, key: tuple[Any, ...]) -> Any:
        """What decoding gave for ``key`` (the kind, the bytes and whatever else the decoding depends on)."""
        value = self.decoded.get(key)
        if value is not None:
            self.hits += 1
        return value

    def remember_decoded(self, key: tuple[Any, ...], value: Any) -> None:
        """``value`` must not be changed by its readers: every node in the process gets the same object."""
        self.decoded[key] = value
        if len(self.decoded) > self.capacity:
            self.decoded.popitem(last=False)


_active: ProcessMemo | None = None


def active() -> ProcessMemo | None:
    return _active


def shared_decode(key: tuple[Any, ...], decode: Callable[[], T]) -> T:
    """``decode()``; inside ``shared_checks()``, what it gave for ``key`` earlier in this process, if it
    succeeded. ``key`` names the kind of decoding, the bytes and whatever else the result depends on."""
    memo = _active
    if memo is None:
        return decode()
    known: T | None = memo.decoded_value(key)
    if known is None:
        known = decode()
        memo.remember_decoded(key, known)
    return known


@contextmanager
def shared_checks() -> Iterator[ProcessMemo]:
    """While the block runs, signature checks and heartbeat and receipt decodes are shared by the process."""
    global _active
    previous, _active = _active, ProcessMemo()
    try:
        yield _active
    finally:
        _active = previous
