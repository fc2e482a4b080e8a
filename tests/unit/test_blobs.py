"""Blobs as pure code and files: the manifest's address and checks, a download that survives a kill, the
whole-file check, and the requests a provider accepts."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import cbor2
import pytest

from hyperion_node.blobs.manifest import (
    CHUNK_SIZE,
    MAX_CHUNKS,
    BadManifest,
    Manifest,
    chunk_size_for,
    manifest_of_file,
)
from hyperion_node.blobs.store import BlobStore, safe_model_name
from hyperion_node.errors import UserError
from hyperion_node.protocols import blob as blob_protocol
from hyperion_node.protocols.blob import MAX_RUN, Request
from hyperion_node.tasks.messages import MalformedFrame, encode_map


def a_file(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(os.urandom(size))
    return path


def test_the_manifest_names_every_chunk_and_the_whole_file(tmp_path: Path) -> None:
    path = a_file(tmp_path, 2 * CHUNK_SIZE + 123)
    manifest = manifest_of_file(path)
    data = path.read_bytes()
    assert manifest.count == 3
    assert manifest.size == len(data)
    assert manifest.sha256 == hashlib.sha256(data).digest()
    assert manifest.chunk_length(2) == 123
    assert manifest.chunk_ok(1, data[CHUNK_SIZE:2 * CHUNK_SIZE])
    assert not manifest.chunk_ok(1, data[:CHUNK_SIZE])  # another chunk's bytes
    assert not manifest.chunk_ok(2, data[-122:])  # short
    assert Manifest.decode(manifest.encode(), manifest.address) == manifest


def test_a_manifest_that_is_not_the_one_asked_for_is_refused(tmp_path: Path) -> None:
    manifest = manifest_of_file(a_file(tmp_path, CHUNK_SIZE + 1))
    other = Manifest(manifest.size, manifest.chunk_size, (manifest.chunks[1], manifest.chunks[0]), manifest.sha256)
    with pytest.raises(BadManifest, match="wrong_address"):
        Manifest.decode(other.encode(), manifest.address)
    body = {"v": 1, "size": manifest.size, "chunk_size": manifest.chunk_size, "chunks": list(manifest.chunks[:1]),
            "sha256": manifest.sha256}
    with pytest.raises(BadManifest, match="one hash per chunk"):
        Manifest.decode(cbor2.dumps(body, canonical=True))
    with pytest.raises(BadManifest, match="not_canonical"):  # the same map, encoded another way, has another address
        Manifest.decode(cbor2.dumps({**body, "chunks": list(manifest.chunks)}, canonical=False))
    with pytest.raises(BadManifest, match="chunk_size"):
        Manifest.decode(cbor2.dumps({**body, "chunk_size": 7}, canonical=True))


def test_large_files_are_cut_into_larger_chunks_so_the_manifest_stays_bounded() -> None:
    assert chunk_size_for(10 * 1024**3) == CHUNK_SIZE
    assert chunk_size_for(100 * 1024**3) * MAX_CHUNKS >= 100 * 1024**3


def test_a_download_killed_half_way_goes_on_from_its_verified_chunks(tmp_path: Path) -> None:
    source = a_file(tmp_path, 5 * CHUNK_SIZE + 10)
    data = source.read_bytes()
    manifest = manifest_of_file(source)
    store = BlobStore(tmp_path / "b")
    part = store.partial(manifest)
    for index in (0, 1, 3):
        part.write(index, data[index * CHUNK_SIZE:(index + 1) * CHUNK_SIZE])
    part.flush()
    part.write(4, data[4 * CHUNK_SIZE:5 * CHUNK_SIZE])  # received after the last flush: lost with the kill
    del part  # the process dies here: no close()
    again = BlobStore(tmp_path / "b").partial(manifest)
    assert again.missing() == [2, 4, 5]
    assert store.partial_progress(manifest.address) == 3 * CHUNK_SIZE
    for index in again.missing():
        again.write(index, data[index * CHUNK_SIZE:(index + 1) * CHUNK_SIZE])
    target = again.finish(tmp_path / "models" / "model.gguf")
    assert target.read_bytes() == data
    assert not again.have_path.exists()
    assert not again.data_path.exists()


def test_an_assembled_file_that_does_not_match_the_whole_hash_is_discarded(tmp_path: Path) -> None:
    source = a_file(tmp_path, 2 * CHUNK_SIZE)
    data = source.read_bytes()
    honest = manifest_of_file(source)
    lying = Manifest(honest.size, honest.chunk_size, honest.chunks, hashlib.sha256(b"another file").digest())
    part = BlobStore(tmp_path / "b").partial(lying)
    for index in range(2):
        part.write(index, data[index * CHUNK_SIZE:(index + 1) * CHUNK_SIZE])
    with pytest.raises(BadManifest, match="wrong_file_hash"):
        part.finish(tmp_path / "models" / "model.gguf")
    assert not (tmp_path / "models" / "model.gguf").exists()
    assert not part.data_path.exists()


def test_the_whole_file_hash_is_fed_as_chunks_come_in_any_order(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from hyperion_node.blobs import store as store_module

    source = a_file(tmp_path, 6 * CHUNK_SIZE + 5)
    data = source.read_bytes()
    manifest = manifest_of_file(source)

    def chunk(index: int) -> bytes:
        return data[index * CHUNK_SIZE:(index + 1) * CHUNK_SIZE]

    # Out of order, as two providers interleave runs: the chunks past a gap wait, and the hash is whole at the
    # end without the file being read back.
    part = BlobStore(tmp_path / "b").partial(manifest)
    for index in (1, 0, 3, 2, 6, 4, 5):
        part.write(index, chunk(index))
    with part.data_path.open("r+b") as f:  # the bytes on disk no longer matter: they were hashed as written
        f.write(b"x")
    assert part.whole_digest() == manifest.sha256
    part.discard()

    # A gap longer than the bound: what was not held is read back from the file at the end.
    monkeypatch.setattr(store_module, "AHEAD_BYTES", 2 * CHUNK_SIZE)
    part = BlobStore(tmp_path / "c").partial(manifest)
    for index in (6, 5, 4, 3, 2, 1, 0):
        part.write(index, chunk(index))
    target = part.finish(tmp_path / "models" / "model.gguf")
    assert target.read_bytes() == data


def test_a_shared_file_is_hashed_once_and_served_by_chunk(tmp_path: Path) -> None:
    source = a_file(tmp_path, CHUNK_SIZE + 5)
    store = BlobStore(tmp_path / "a")
    shared = store.share(source)
    assert store.read_chunk(shared.address, 1) == source.read_bytes()[CHUNK_SIZE:]
    assert store.read_chunk(shared.address, 2) is None
    assert store.read_chunk("0" * 64, 0) is None
    again = BlobStore(tmp_path / "a")
    assert again.share(source).address == shared.address  # from hashes.json, not hashed again
    assert again.manifest(shared.address) == shared.manifest


def test_a_peers_file_name_never_becomes_a_path() -> None:
    assert safe_model_name("gemma-q8_0.gguf", "gemma") == "gemma-q8_0.gguf"
    for hostile in ("../../.bashrc", "/etc/passwd", "..\\x.gguf", ".hidden.gguf", "a.exe"):
        name = safe_model_name(hostile, "gemma")
        assert name == Path(name).name, name
        assert not name.startswith("."), name
        assert name.endswith(".gguf"), name
    with pytest.raises(UserError):
        safe_model_name("x", "../evil")


def test_the_provider_accepts_only_bounded_requests_for_addresses() -> None:
    address = "ab" * 32
    request = Request(blob_protocol.T_GET, blob=address, index=3, count=MAX_RUN)
    raw = lambda body: encode_map(blob_protocol.T_GET, body, blob_protocol.VERSION)  # noqa: E731
    frame = raw({"blob": address, "index": 3, "count": MAX_RUN})
    assert Request.decode(_body(frame)) == request
    for bad in ({"blob": address, "index": 0, "count": MAX_RUN + 1}, {"blob": address, "index": -1, "count": 1},
                {"blob": "../" + address[3:], "index": 0, "count": 1},
                {"blob": address.upper(), "index": 0, "count": 1}):
        with pytest.raises(MalformedFrame):
            Request.decode(_body(raw(bad)))
    with pytest.raises(MalformedFrame, match="wrong_type"):
        Request.decode(_body(encode_map("chunk", {"blob": address}, blob_protocol.VERSION)))
    lane = Request(blob_protocol.T_LANE, blob=address)
    assert Request.decode(_body(lane.encode())) == lane


def test_a_lane_grant_is_a_port_and_two_32_byte_secrets() -> None:
    secret = b"s" * blob_protocol.LANE_SECRET_BYTES
    kind, body = blob_protocol.decode_answer(_body(blob_protocol.encode_lane(4002, secret, secret)))
    assert (kind, body) == (blob_protocol.T_LANE, {"port": 4002, "token": secret, "key": secret})
    raw = lambda body: encode_map(blob_protocol.T_LANE, body, blob_protocol.VERSION)  # noqa: E731
    for bad in ({"port": 0, "token": secret, "key": secret}, {"port": 70000, "token": secret, "key": secret},
                {"port": 4002, "token": secret[:8], "key": secret}, {"port": 4002, "token": secret, "key": "k" * 32},
                {"port": "4002", "token": secret, "key": secret}):
        with pytest.raises(MalformedFrame, match="bad_schema"):
            blob_protocol.decode_answer(_body(raw(bad)))


def _body(frame: bytes) -> bytes:
    """A frame without its varint length prefix."""
    from hyperion_node.p2p.messages import decode_varint

    header = decode_varint(frame)
    assert header is not None
    return frame[header[1]:]


def test_a_task_names_its_large_fields_by_address_and_nothing_else() -> None:
    from hyperion_node.tasks.messages import TaskRequest, decode_requester, encode_request

    address = "cd" * 32
    request = TaskRequest(task_id="t" * 32, runtime="zk-groth16", item="groth16-bn254", payload={"wtns": b"w"},
                          requester="peer", deadline_s=60.0, blobs={"zkey": (address, 5_000_000)})
    assert decode_requester(_body(encode_request(request))) == request
    for bad in ({"wtns": {"blob": address, "size": 1}},  # a field the payload already has
                {"zkey": {"blob": "../etc/passwd", "size": 1}}, {"zkey": {"blob": address, "size": -1}},
                {f"f{i}": {"blob": address, "size": 1} for i in range(9)}):
        frame = encode_map("task", {"id": "t" * 32, "runtime": "zk-groth16", "item": "groth16-bn254",
                                    "payload": {"wtns": b"w"}, "requester": "peer", "deadline_s": 60.0,
                                    "blobs": bad})
        with pytest.raises(MalformedFrame):
            decode_requester(_body(frame))
