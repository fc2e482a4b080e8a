"""Merkle trees over an epoch's receipts, as Certificate Transparency defines them (RFC 6962 §2.1, RFC 9162
§2.1): SHA-256, leaves hashed as ``H(0x00 || data)`` and inner nodes as ``H(0x01 || left || right)`` so that a
leaf can never pass for a node (second-preimage attacks on unprefixed trees), and a tree of ``n`` leaves split
at the largest power of two below ``n``. Pure functions, no I/O.

Built bottom-up: pairing each level and carrying an odd last node up unchanged gives exactly RFC 6962's
recursive tree (the split at the largest power of two below ``n`` leaves the one unpaired subtree on the
right at every level).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
HASH_BYTES = 32


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


EMPTY_ROOT = hashlib.sha256(b"").digest()  # RFC 6962: the hash of an empty list is the hash of an empty string


class MerkleTree:
    """Every level of the tree over ``leaf_hashes``: the root, and a proof for any leaf in O(log n)."""

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        level = list(leaf_hashes)
        self.levels: list[list[bytes]] = [level]
        while len(level) > 1:
            paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                paired.append(level[-1])
            level = paired
            self.levels.append(level)

    @classmethod
    def of(cls, leaves: Sequence[bytes]) -> MerkleTree:
        """The tree over the raw leaf data."""
        return cls([leaf_hash(leaf) for leaf in leaves])

    @property
    def size(self) -> int:
        return len(self.levels[0])

    @property
    def root(self) -> bytes:
        return self.levels[-1][0] if self.size else EMPTY_ROOT

    def proof(self, index: int) -> list[bytes]:
        """The audit path of leaf ``index`` (RFC 6962 §2.1.1), nearest sibling first."""
        if not 0 <= index < self.size:
            raise IndexError(f"leaf {index} is outside a tree of {self.size}")
        path = []
        for level in self.levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                path.append(level[sibling])
            index //= 2
        return path


def verify_inclusion(leaf: bytes, index: int, size: int, path: Sequence[bytes], root: bytes) -> bool:
    """Whether ``leaf`` (raw data) is leaf ``index`` of the tree of ``size`` leaves with this ``root``.

    The algorithm of RFC 9162 §2.1.3.2, step by step.
    """
    if not 0 <= index < size or any(len(p) != HASH_BYTES for p in path):
        return False
    fn, sn = index, size - 1
    r = leaf_hash(leaf)
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root
