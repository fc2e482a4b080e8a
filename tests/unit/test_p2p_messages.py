"""Codecs of the P2P layer: every message type round-trips, and garbage always gives our error, never a crash."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.secp256k1 import create_new_key_pair as create_secp256k1_key_pair
from libp2p.peer.id import ID

from hyperion_node.identity import Identity
from hyperion_node.p2p.messages import (
    MAX_DHT_KEY_BYTES,
    MAX_HEARTBEAT_BYTES,
    CapabilityRecord,
    DialbackRequest,
    DialbackResult,
    Heartbeat,
    MalformedMessage,
    OfferAd,
    canonical,
    capability_key,
    decode_varint,
    encode_frame,
    record_key,
    seal,
)
from hyperion_node.p2p.records import dealings_key, epoch_key


def make_identity() -> Identity:
    pair = create_new_key_pair()
    return Identity(key_pair=pair, peer_id=ID.from_pubkey(pair.public_key))


ME = make_identity()
OTHER = make_identity()

text = st.text(max_size=40)
addrs = st.lists(st.from_regex(r"/ip4/127\.0\.0\.1/tcp/[0-9]{1,5}", fullmatch=True), max_size=4).map(tuple)
finite = st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False)
offers = st.builds(OfferAd, runtime=text, item=text, unit=text, price_per_unit=finite,
                   capacity=st.integers(0, 1000), throughput=st.none() | finite)
records = st.builds(
    CapabilityRecord, peer_id=st.just(str(ME.peer_id)), seq=st.integers(0, 2**62), expires_at=finite, name=text,
    addrs=addrs, hardware=st.fixed_dictionaries({"cpu": text, "cores": st.integers(1, 512)}),
    offers=st.lists(offers, max_size=5).map(tuple), load=finite, node_version=text,
)
gpu = st.fixed_dictionaries({"util": st.none() | st.integers(0, 100), "temp_c": st.none() | finite})
heartbeats = st.builds(
    Heartbeat, peer_id=st.just(str(ME.peer_id)), seq=st.integers(0, 2**62), time=finite, name=text, addrs=addrs,
    health=st.sampled_from(["ok", "draining", "leaving"]), queue_depth=st.integers(0, 10**6),
    active_tasks=st.integers(0, 10**6), ram_available_bytes=st.integers(0, 2**50),
    gpus=st.lists(gpu, max_size=4).map(tuple),
)


@given(records)
def test_capability_record_round_trips(record: CapabilityRecord) -> None:
    data = record.seal(ME)
    decoded = CapabilityRecord.decode(data)
    assert decoded == record
    assert decoded.raw == data


@given(heartbeats)
def test_heartbeat_round_trips(hb: Heartbeat) -> None:
    assert Heartbeat.decode(hb.seal(ME)) == hb


@given(addrs)
def test_dialback_round_trips(addresses: tuple[str, ...]) -> None:
    sender, request = DialbackRequest.decode(DialbackRequest(addresses).seal(ME))
    assert sender == str(ME.peer_id)
    assert request.addrs == addresses
    result = DialbackResult(tuple((a, i % 2 == 0, "" if i % 2 == 0 else "refused") for i, a in enumerate(addresses)))
    assert DialbackResult.decode(result.seal(ME)) == (str(ME.peer_id), result)


@given(st.binary(max_size=2048))
@settings(max_examples=300)
def test_garbage_gives_malformed_message_never_a_crash(data: bytes) -> None:
    for decode in (CapabilityRecord.decode, Heartbeat.decode, DialbackRequest.decode, DialbackResult.decode):
        with pytest.raises(MalformedMessage):
            decode(data)


@given(heartbeats, st.data())
@settings(max_examples=100)
def test_any_flipped_byte_is_rejected(hb: Heartbeat, data: st.DataObject) -> None:
    sealed = bytearray(hb.seal(ME))
    index = data.draw(st.integers(0, len(sealed) - 1))
    sealed[index] ^= data.draw(st.integers(1, 255))
    try:
        decoded = Heartbeat.decode(bytes(sealed))
    except MalformedMessage:
        return
    # A flip that still decodes can only be one that canonical CBOR maps to the same message.
    assert decoded == hb  # pragma: no cover - never observed


def test_signature_from_another_key_is_rejected() -> None:
    envelope = cbor2.loads(Heartbeat(peer_id=str(ME.peer_id), seq=1, time=1.0, name="", addrs=(), health="ok",
                                     queue_depth=0, active_tasks=0, ram_available_bytes=0).seal(ME))
    envelope["p"] = OTHER.peer_id.to_bytes()  # claims to be OTHER, signed by ME
    with pytest.raises(MalformedMessage) as info:
        Heartbeat.decode(canonical(envelope))
    assert info.value.reason == "bad_signature"


def test_an_envelope_naming_another_peer_than_the_gossip_origin_is_refused() -> None:
    """With ``signed_by`` (gossipsub has checked the origin's signature over the bytes) the envelope's own
    signature is not checked again, so the envelope must name that origin: a peer cannot pass its message
    off as another's by sealing it with the other's peer ID."""
    envelope = cbor2.loads(Heartbeat(peer_id=str(ME.peer_id), seq=1, time=1.0, name="", addrs=(), health="ok",
                                     queue_depth=0, active_tasks=0, ram_available_bytes=0).seal(ME))
    envelope["p"] = OTHER.peer_id.to_bytes()  # claims to be OTHER, sent (and signed at the gossip layer) by ME
    with pytest.raises(MalformedMessage) as info:
        Heartbeat.decode(canonical(envelope), signed_by=str(ME.peer_id))
    assert info.value.reason == "sender_mismatch"


@given(heartbeats)
def test_a_heartbeat_opened_for_its_gossip_origin_is_the_same_as_verified(hb: Heartbeat) -> None:
    data = hb.seal(ME)
    assert Heartbeat.decode(data, signed_by=str(ME.peer_id)) == Heartbeat.decode(data)


def test_a_signature_for_one_type_is_not_valid_for_another() -> None:
    data = seal(ME, "heartbeat", {"addrs": []})
    envelope = cbor2.loads(data)
    envelope["t"] = "dialback-request"
    with pytest.raises(MalformedMessage) as info:
        DialbackRequest.decode(canonical(envelope))
    assert info.value.reason == "bad_signature"


def test_non_ed25519_peer_ids_are_refused() -> None:
    pair = create_secp256k1_key_pair()
    secp = Identity(key_pair=pair, peer_id=ID.from_pubkey(pair.public_key))
    with pytest.raises(MalformedMessage) as info:
        DialbackRequest.decode(DialbackRequest(()).seal(secp))
    assert info.value.reason == "bad_peer_id"


def test_oversized_is_refused_before_decoding() -> None:
    with pytest.raises(MalformedMessage) as info:
        Heartbeat.decode(b"\x00" * (MAX_HEARTBEAT_BYTES + 1))
    assert info.value.reason == "oversized"


@pytest.mark.parametrize(
    ("field", "value"),
    [("health", "sleepy"), ("seq", -1), ("seq", True), ("addrs", ["not-a-multiaddr"]),
     ("gpus", [{"util": "hot"}]), ("queue", 1.5)],
)
def test_schema_violations_are_named(field: str, value: object) -> None:
    body = Heartbeat(peer_id=str(ME.peer_id), seq=1, time=1.0, name="", addrs=(), health="ok", queue_depth=0,
                     active_tasks=0, ram_available_bytes=0).to_body()
    body[field] = value
    with pytest.raises(MalformedMessage) as info:
        Heartbeat.decode(seal(ME, "heartbeat", body))
    assert info.value.reason == "bad_schema"


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_numbers_are_refused_anywhere(bad: float) -> None:
    """A poisoned record (vram_bytes = +inf) once made every requester that read it answer 500."""
    heartbeat = Heartbeat(peer_id=str(ME.peer_id), seq=1, time=1.0, name="", addrs=(), health="ok", queue_depth=0,
                          active_tasks=0, ram_available_bytes=0).to_body()
    for body in ({**heartbeat, "time": bad}, {**heartbeat, "gpus": [{"util": 1.0, "vram_free": bad}]}):
        with pytest.raises(MalformedMessage) as info:
            Heartbeat.decode(seal(ME, "heartbeat", body))
        assert info.value.reason == "non_finite"
    record = CapabilityRecord(peer_id=str(ME.peer_id), seq=1, expires_at=2e9, name="x", addrs=(),
                              hardware={"cpu": "c", "cores": 2, "ram_bytes": 1, "gpus": [{"name": "g"}]},
                              offers=()).to_body()
    record["hardware"]["gpus"][0]["vram_bytes"] = bad
    with pytest.raises(MalformedMessage) as info:
        CapabilityRecord.decode(seal(ME, "capability", record))
    assert info.value.reason == "non_finite"


@pytest.mark.parametrize("hardware", [{"cores": "many"}, {"ram_bytes": 1.5}, {"gpus": [{"vram_bytes": "8G"}]},
                                      {"gpus": "one"}, {"gpus": [1]}, {"cpu": 7}, {"ram_bytes": 2**70}])
def test_a_records_hardware_summary_is_typed(hardware: dict[str, object]) -> None:
    record = CapabilityRecord(peer_id=str(ME.peer_id), seq=1, expires_at=2e9, name="x", addrs=(),
                              hardware=hardware, offers=()).to_body()
    with pytest.raises(MalformedMessage) as info:
        CapabilityRecord.decode(seal(ME, "capability", record))
    assert info.value.reason == "bad_schema"


@given(st.binary(max_size=5000))
def test_frames_round_trip(payload: bytes) -> None:
    frame = encode_frame(payload)
    header = decode_varint(frame)
    assert header is not None
    length, used = header
    assert frame[used : used + length] == payload


def test_incomplete_and_overlong_varints() -> None:
    assert decode_varint(b"\x80") is None
    with pytest.raises(MalformedMessage):
        decode_varint(b"\xff\xff\xff\xff\x0f")


def test_capability_keys_are_sha256_multihashes_per_item() -> None:
    key = capability_key("inference", "gemma-3-270m-q4_k_m")
    assert key.startswith("1220")
    assert len(key) == 68
    assert key != capability_key("inference", "other-model")
    assert key == capability_key("inference", "gemma-3-270m-q4_k_m")


def test_every_dht_value_key_fits_find_node_and_names_one_peer() -> None:
    """py-libp2p resets a FIND_NODE whose key is over 50 bytes and no multihash: a value key longer than that
    could not be looked up over the network. Keys name the peer by a digest: distinct peers, distinct keys."""
    peers = [str(ID.from_pubkey(create_new_key_pair().public_key)) for _ in range(50)]
    for make in (record_key, epoch_key, dealings_key):
        keys = [make(peer) for peer in peers]
        assert max(len(key.encode()) for key in keys) <= MAX_DHT_KEY_BYTES
        assert len(set(keys)) == len(peers)
        assert all(key.startswith("/hyperion/") for key in keys)
    assert len({record_key(peers[0]), epoch_key(peers[0]), dealings_key(peers[0])}) == 3
