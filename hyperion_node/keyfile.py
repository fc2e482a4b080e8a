"""The node key file and the peer ID it stands for, without libp2p (whose import costs most of a second):
``hyperion-node id`` reads it at once, and ``identity.py`` builds the libp2p key pair from what it returns.

The file is py-libp2p's serialised private key: the protobuf ``PrivateKey {Type = Ed25519 (1), Data = the
32-byte seed}``, i.e. ``08 01 12 20`` and the seed. An Ed25519 peer ID is the identity multihash of the
protobuf public key (``08 01 12 20`` and the 32-byte public key), written in base58btc: ``12D3KooW...``.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from hyperion_node.datadir import private_file_problem
from hyperion_node.errors import IdentityError

ED25519_KEY_PREFIX = b"\x08\x01\x12\x20"  # protobuf: field 1 (type) = 1 (Ed25519), field 2 (data), 32 bytes
_IDENTITY_MULTIHASH = b"\x00\x24"  # multihash code 0 (identity), length 36
_OTHER_KEY_TYPES = (0, 2, 3)  # RSA, Secp256k1, ECDSA in libp2p's KeyType
_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def read_key_seed(path: Path) -> bytes:
    """The Ed25519 seed in the node's key file, after the same checks the daemon makes: present, private
    to this user, well formed. Raises ``IdentityError`` with the fix."""
    if not path.exists():
        raise IdentityError(f"no identity key at {path}", hint="run `hyperion-node start` once to create it")
    problem = private_file_problem(path)
    if problem is not None:
        raise IdentityError(f"identity key {path} {problem.detail}", hint=f"run `{problem.fix}`")
    data = path.read_bytes()
    if len(data) == 36 and data[:4] == ED25519_KEY_PREFIX:
        return data[4:]
    if len(data) > 4 and data[0] == 0x08 and data[1] in _OTHER_KEY_TYPES:
        raise IdentityError(f"identity key {path} is not an Ed25519 key", hint="restore the node's original key")
    raise IdentityError(
        f"identity key {path} is corrupt and cannot be read ({len(data)} bytes)",
        hint="restore it from a backup; moving it away creates a new identity and loses this one's reputation",
    )


def peer_id_of_seed(seed: bytes) -> str:
    """The libp2p peer ID (base58btc) of the Ed25519 key with this seed."""
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base58btc(_IDENTITY_MULTIHASH + ED25519_KEY_PREFIX + public)


def base58btc(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    digits = []
    while number:
        number, rest = divmod(number, 58)
        digits.append(_BASE58[rest])
    zeros = len(data) - len(data.lstrip(b"\x00"))
    return "1" * zeros + "".join(reversed(digits))
