"""Malformed inputs fail fast with an error that names the problem; nothing hangs."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hyperion_node.errors import UserError
from runtimes.zk import prove_files
from runtimes.zk.exceptions import MalformedInput, UnsupportedCurve, WitnessMismatch
from runtimes.zk.field import R
from runtimes.zk.wtns import encode_wtns, parse_wtns
from runtimes.zk.zkey import parse_zkey
from tests.zk.conftest import Circuit

FAST_S = 5.0  # every failure below is a parse error: it must come long before any proving work


def fails_fast(zkey: Path, wtns: Path, match: str, error: type[Exception] = MalformedInput) -> None:
    started = time.monotonic()
    with pytest.raises(error, match=match) as info:
        prove_files(zkey, wtns, None, workers=2)
    assert time.monotonic() - started < FAST_S
    assert isinstance(info.value, UserError)  # the CLI prints one line and exits 2


def test_truncated_zkey(chain: Circuit, tmp_path: Path) -> None:
    data = chain.zkey.read_bytes()
    cut = tmp_path / "cut.zkey"
    cut.write_bytes(data[: len(data) * 2 // 3])
    fails_fast(cut, chain.wtns, rf"{cut}: truncated: section \d+ needs \d+ bytes")


def test_zkey_that_is_not_a_zkey(chain: Circuit, tmp_path: Path) -> None:
    fails_fast(chain.wtns, chain.wtns, r"chain\.wtns: not a \.zkey file \(starts with b'wtns'")


def test_witness_of_the_wrong_size(chain: Circuit, tmp_path: Path) -> None:
    values = parse_wtns(chain.wtns.read_bytes())
    short = tmp_path / "short.wtns"
    short.write_bytes(encode_wtns(values[:-5]))
    message = rf"witness has {len(values) - 5} values but .* {len(values)} signals"
    fails_fast(chain.zkey, short, message, WitnessMismatch)


def test_witness_whose_header_lies_about_its_size(chain: Circuit, tmp_path: Path) -> None:
    data = bytearray(chain.wtns.read_bytes())
    # Section 1 starts at 12 + 12; its count follows n8 (4 bytes) and the 32-byte prime.
    struct.pack_into("<I", data, 24 + 4 + 32, 7)
    bad = tmp_path / "lying.wtns"
    bad.write_bytes(bytes(data))
    fails_fast(chain.zkey, bad, r"announces 7 values")


@pytest.mark.parametrize(
    ("section", "name", "size", "message"),
    [(5, "A", 64, "not on BN254 G1"), (7, "B2", 128, "not on the BN254 G2 twist"), (9, "H", 64, "not on BN254 G1")],
)
def test_point_off_the_curve_is_named(
    chain: Circuit, tmp_path: Path, section: int, name: str, size: int, message: str
) -> None:
    """Point sections are checked once, in a decode job; a bad point still fails the proof, naming it."""
    data = bytearray(chain.zkey.read_bytes())
    points = getattr(parse_zkey(bytes(data)), name.lower())
    start = data.index(points)
    data[start + 3 * size + 1] ^= 0x40  # point 3's x
    bad = tmp_path / "offcurve.zkey"
    bad.write_bytes(bytes(data))
    fails_fast(bad, chain.wtns, rf"offcurve\.zkey: section {section} \({name}\): point 3 is {message}")


def test_key_for_another_curve(chain: Circuit, bls_zkey: Path) -> None:
    fails_fast(bls_zkey, chain.wtns, r"tiny\.zkey: the key is for bls12-381", UnsupportedCurve)


def test_witness_for_another_field(chain: Circuit, tmp_path: Path) -> None:
    data = bytearray(chain.wtns.read_bytes())
    data[28] ^= 1  # a byte of the prime
    bad = tmp_path / "field.wtns"
    bad.write_bytes(bytes(data))
    fails_fast(chain.zkey, bad, r"field\.wtns: the witness is over a 254-bit prime field", UnsupportedCurve)


def test_missing_file_is_named(chain: Circuit, tmp_path: Path) -> None:
    fails_fast(tmp_path / "nope.zkey", chain.wtns, r"proving key .*nope\.zkey: cannot read")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_bytes_give_our_error_never_a_crash(data: bytes) -> None:
    for parse in (parse_zkey, parse_wtns):
        with pytest.raises(MalformedInput):
            parse(data)
        with pytest.raises(MalformedInput):
            parse(b"zkey" + data[4:] if parse is parse_zkey else b"wtns" + data[4:])


@given(st.lists(st.integers(min_value=0, max_value=R - 1), min_size=1, max_size=40))
def test_wtns_round_trip(values: list[int]) -> None:
    values = [1, *values[1:]]
    assert parse_wtns(encode_wtns(values)) == values


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_mutated_zkey_never_crashes(chain: Circuit, data: st.DataObject) -> None:
    key = bytearray(chain.zkey.read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        key[data.draw(st.integers(0, len(key) - 1))] = data.draw(st.integers(0, 255))
    try:
        parse_zkey(bytes(key))
    except MalformedInput:
        pass  # the expected outcome for most mutations; a point-section byte change may still parse
