"""Merkle trees: RFC 6962's known answers, the recursive definition, and proofs that fail when anything moves."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hyperion_node.ledger.merkle import EMPTY_ROOT, MerkleTree, leaf_hash, node_hash, verify_inclusion

# The Certificate Transparency reference tests' inputs and expected roots for trees of 1 to 8 leaves
# (kSHA256Roots in google/certificate-transparency's merkle_tree_test.cc; also RFC 9162's test data).
CT_LEAVES = [b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43", bytes(range(0x50, 0x58)),
             bytes(range(0x60, 0x70))]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def mth(leaves: Sequence[bytes]) -> bytes:
    """RFC 6962 §2.1's definition, written out recursively as a reference."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaf_hash(leaves[0])
    k = 1 << ((n - 1).bit_length() - 1)  # the largest power of two smaller than n
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


def path(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    """RFC 6962 §2.1.1's PATH(m, D[n])."""
    n = len(leaves)
    if n <= 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return [*path(m, leaves[:k]), mth(leaves[k:])]
    return [*path(m - k, leaves[k:]), mth(leaves[:k])]


@pytest.mark.parametrize("n", range(1, 9))
def test_known_roots_from_the_certificate_transparency_tests(n: int) -> None:
    assert MerkleTree.of(CT_LEAVES[:n]).root.hex() == CT_ROOTS[n - 1]


def test_empty_tree() -> None:
    assert MerkleTree([]).root == EMPTY_ROOT == hashlib.sha256(b"").digest()


@given(st.lists(st.binary(max_size=8), min_size=1, max_size=70))
def test_root_and_every_proof_match_the_rfc_definition(leaves: list[bytes]) -> None:
    tree = MerkleTree.of(leaves)
    assert tree.root == mth(leaves)
    for i, leaf in enumerate(leaves):
        proof = tree.proof(i)
        assert proof == path(i, leaves)
        assert verify_inclusion(leaf, i, len(leaves), proof, tree.root)


@given(st.lists(st.binary(min_size=1, max_size=8), min_size=2, max_size=40, unique=True), st.data())
def test_proofs_fail_for_anything_altered(leaves: list[bytes], data: st.DataObject) -> None:
    tree = MerkleTree.of(leaves)
    n = len(leaves)
    i = data.draw(st.integers(0, n - 1))
    leaf, proof = leaves[i], tree.proof(i)
    altered = bytearray(leaf)
    altered[data.draw(st.integers(0, len(leaf) - 1))] ^= data.draw(st.integers(1, 255))
    assert not verify_inclusion(bytes(altered), i, n, proof, tree.root)
    assert not verify_inclusion(leaf, data.draw(st.integers(0, n - 1).filter(lambda j: j != i)), n, proof, tree.root)
    assert not verify_inclusion(leaf, i, n, proof[:-1], tree.root)
    assert not verify_inclusion(leaf, i, n, [*proof, proof[0]], tree.root)
    assert not verify_inclusion(leaf, i, n, proof, node_hash(tree.root, tree.root))
    if proof:
        bent = list(proof)
        bent[0] = bytes(32)
        assert not verify_inclusion(leaf, i, n, bent, tree.root)


def test_a_leaf_cannot_pass_for_an_inner_node() -> None:
    """Domain separation (RFC 6962 §2.1): the two children's hashes, as one leaf, do not give the root."""
    leaves = [b"a", b"b"]
    tree = MerkleTree.of(leaves)
    forged_leaf = leaf_hash(b"a") + leaf_hash(b"b")
    assert MerkleTree.of([forged_leaf]).root != tree.root
    assert not verify_inclusion(forged_leaf, 0, 1, [], tree.root)


def test_out_of_range_index() -> None:
    tree = MerkleTree.of([b"a"])
    with pytest.raises(IndexError):
        tree.proof(1)
    assert not verify_inclusion(b"a", 1, 1, [], tree.root)
