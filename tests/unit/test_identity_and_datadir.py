"""The node key (create, reuse, never replace a bad one) and the one-daemon-per-data-dir lock."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hyperion_node.datadir import DataDir, daemon_lock, running_pid, write_private
from hyperion_node.errors import AlreadyRunning, EnvironmentProblem, IdentityError, NodeNotRunning
from hyperion_node.identity import load_identity
from hyperion_node.keyfile import peer_id_of_seed, read_key_seed


@pytest.fixture
def data_dir(tmp_path: Path) -> DataDir:
    dd = DataDir(tmp_path / "node")
    dd.ensure()
    return dd


def test_key_is_created_private_and_reused(data_dir: DataDir) -> None:
    first = load_identity(data_dir, create=True)
    assert stat.S_IMODE(data_dir.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.root.stat().st_mode) == 0o700
    again = load_identity(data_dir, create=True)
    assert again.peer_id == first.peer_id
    assert str(first.peer_id).startswith("12D3KooW")  # Ed25519 peer IDs are identity-multihashed
    signature = first.sign(b"receipt")
    assert again.key_pair.public_key.verify(b"receipt", signature)


def test_no_key_without_create_is_a_clear_error(data_dir: DataDir) -> None:
    with pytest.raises(IdentityError, match="run `hyperion-node start` once"):
        load_identity(data_dir, create=False)
    assert not data_dir.key_path.exists()


def test_corrupt_key_is_reported_and_never_replaced(data_dir: DataDir) -> None:
    data_dir.key_path.write_bytes(b"\x08\x01\x12garbage")
    os.chmod(data_dir.key_path, 0o600)
    with pytest.raises(IdentityError, match="corrupt"):
        load_identity(data_dir, create=True)
    assert data_dir.key_path.read_bytes() == b"\x08\x01\x12garbage"


def test_the_cli_reads_the_same_peer_id_as_libp2p_without_loading_it(tmp_path: Path) -> None:
    """``hyperion-node id`` derives the peer ID with ``cryptography`` alone; it must be libp2p's, key by key."""
    for n in range(20):
        dd = DataDir(tmp_path / f"n{n}")
        dd.ensure()
        identity = load_identity(dd, create=True)
        assert peer_id_of_seed(read_key_seed(dd.key_path)) == str(identity.peer_id)


def test_a_key_of_another_type_is_named_as_such(data_dir: DataDir) -> None:
    from libp2p.crypto.secp256k1 import create_new_key_pair

    write_private(data_dir.key_path, create_new_key_pair().private_key.serialize())
    with pytest.raises(IdentityError, match="not an Ed25519 key"):
        load_identity(data_dir, create=True)


def test_key_readable_by_others_is_refused_with_the_fix(data_dir: DataDir) -> None:
    load_identity(data_dir, create=True)
    os.chmod(data_dir.key_path, 0o644)
    with pytest.raises(IdentityError, match=r"chmod 600 .*identity.key"):
        load_identity(data_dir, create=True)


def test_second_lock_names_the_running_pid(data_dir: DataDir) -> None:
    assert running_pid(data_dir) is None
    with daemon_lock(data_dir):
        assert running_pid(data_dir) == os.getpid()
        with pytest.raises(AlreadyRunning, match=f"PID {os.getpid()}"), daemon_lock(data_dir):
            pass
    assert running_pid(data_dir) is None
    with daemon_lock(data_dir):  # released: can be taken again
        pass


def test_api_info_without_daemon_says_how_to_start(data_dir: DataDir) -> None:
    with pytest.raises(NodeNotRunning, match="hyperion-node start"):
        data_dir.read_api_info()


def test_api_token_is_private_and_stable(data_dir: DataDir) -> None:
    token = data_dir.api_token(create=True)
    assert len(token) >= 32
    assert stat.S_IMODE(data_dir.token_path.stat().st_mode) == 0o600
    assert data_dir.api_token(create=False) == token


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_api_token_readable_by_others_is_refused_with_the_fix_as_the_key_is(data_dir: DataDir, mode: int) -> None:
    data_dir.api_token(create=True)
    os.chmod(data_dir.token_path, mode)
    for create in (True, False):  # the daemon at start, the CLI before it sends the token
        with pytest.raises(EnvironmentProblem, match=rf"mode {mode:04o}.*run `chmod 600 {data_dir.token_path}`"):
            data_dir.api_token(create=create)
    os.chmod(data_dir.token_path, 0o600)
    assert data_dir.api_token(create=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
@pytest.mark.parametrize("secret", ["key", "token"])
def test_a_secret_another_user_owns_is_refused(data_dir: DataDir, secret: str) -> None:
    load_identity(data_dir, create=True)
    data_dir.api_token(create=True)
    path = data_dir.key_path if secret == "key" else data_dir.token_path
    os.chown(path, 65534, -1)  # nobody: it could read the secret, and chmod it back open
    # Root is told to run the command as the owner, never to take the file (a service could not start then).
    with pytest.raises(EnvironmentProblem, match=r"another user \(uid 65534.*run `sudo -u '#65534' hyperion-node"):
        load_identity(data_dir, create=False) if secret == "key" else data_dir.api_token(create=False)


@pytest.mark.parametrize("text", [b"", b"short", "t\u00f6ken-with-umlaut-and-more".encode(),
                                  b"two words here, sixteen+", b"x" * 513])
def test_a_token_file_without_a_usable_token_is_refused(data_dir: DataDir, text: bytes) -> None:
    write_private(data_dir.token_path, text)
    with pytest.raises(EnvironmentProblem, match=r"does not hold a usable token.*delete it and restart"):
        data_dir.api_token(create=True)
    assert data_dir.token_path.read_bytes() == text  # never replaced behind the operator's back


def test_only_our_errors_in_a_group_are_unwrapped() -> None:
    from hyperion_node.errors import EnvironmentProblem, only_hyperion_error

    ours = EnvironmentProblem("port 1 in use")
    nested = BaseExceptionGroup("start", [BaseExceptionGroup("api", [ours])])
    assert only_hyperion_error(nested) is ours
    assert only_hyperion_error(BaseExceptionGroup("bug", [ours, KeyError("x")])) is None
