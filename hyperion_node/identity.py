"""The node's identity: an Ed25519 libp2p key pair kept in the data dir with mode 0600.

Created on first start, reused afterwards. A key file that is corrupt, that others can read or that another
user owns stops the node with a clear error (the API token gets the same check, ``datadir.api_token``) and
is never replaced: a node that quietly got a new identity would lose its reputation and orphan every
receipt it signed.
"""

from __future__ import annotations

from dataclasses import dataclass

from libp2p.crypto.ed25519 import Ed25519PrivateKey, create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID

from hyperion_node.datadir import DataDir, write_private
from hyperion_node.keyfile import read_key_seed


@dataclass(frozen=True)
class Identity:
    key_pair: KeyPair
    peer_id: ID

    def sign(self, data: bytes) -> bytes:
        return bytes(self.key_pair.private_key.sign(data))


def load_identity(data_dir: DataDir, *, create: bool) -> Identity:
    """Load the key, or create it when absent and ``create`` is true."""
    path = data_dir.key_path
    if not path.exists() and create:
        key_pair = create_new_key_pair()
        write_private(path, key_pair.private_key.serialize())
        return Identity(key_pair=key_pair, peer_id=ID.from_pubkey(key_pair.public_key))

    private_key = Ed25519PrivateKey.from_bytes(read_key_seed(path))
    public_key = private_key.get_public_key()
    return Identity(key_pair=KeyPair(private_key, public_key), peer_id=ID.from_pubkey(public_key))
