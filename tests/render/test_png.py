"""The PNG decoder behind the pixel hash: every filter type round-trips, garbage is our error, never a crash."""

from __future__ import annotations

import contextlib
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtimes.render.exceptions import MalformedImage
from runtimes.render.png import CHANNELS, SIGNATURE, decode_png

COLOUR_TYPE = {channels: colour for colour, channels in CHANNELS.items()}


def _predict(kind: int, a: int, b: int, c: int) -> int:
    if kind == 1:
        return a
    if kind == 2:
        return b
    if kind == 3:
        return (a + b) // 2
    if kind == 4:  # Paeth, as the PNG specification writes it (section 9.4)
        p = a + b - c
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
        return a if pa <= pb and pa <= pc else b if pb <= pc else c
    return 0


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def encode(width: int, height: int, channels: int, depth: int, pixels: bytes, filters: list[int]) -> bytes:
    """A straightforward PNG encoder, written independently of the decoder under test."""
    bpp = channels * depth // 8
    stride = width * bpp
    raw = bytearray()
    prior = bytes(stride)
    for y in range(height):
        line = pixels[y * stride : (y + 1) * stride]
        kind = filters[y % len(filters)]
        raw.append(kind)
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            c = prior[i - bpp] if i >= bpp else 0
            raw.append((line[i] - _predict(kind, a, prior[i], c)) & 0xFF)
        prior = line
    header = struct.pack(">IIBBBBB", width, height, depth, COLOUR_TYPE[channels], 0, 0, 0)
    return (SIGNATURE + chunk(b"IHDR", header) + chunk(b"tEXt", b"Date\x002026/01/01")
            + chunk(b"IDAT", zlib.compress(bytes(raw))) + chunk(b"IEND", b""))  # fmt: skip


@st.composite
def images(draw: st.DrawFn) -> tuple[int, int, int, int, bytes, list[int]]:
    width, height = draw(st.integers(1, 9)), draw(st.integers(1, 6))
    channels, depth = draw(st.sampled_from(sorted(COLOUR_TYPE))), draw(st.sampled_from([8, 16]))
    size = width * height * channels * depth // 8
    pixels = draw(st.binary(min_size=size, max_size=size))
    filters = draw(st.lists(st.integers(0, 4), min_size=1, max_size=height))
    return width, height, channels, depth, pixels, filters


@given(images())
@settings(max_examples=300, deadline=None)
def test_every_filter_round_trips(image: tuple[int, int, int, int, bytes, list[int]]) -> None:
    width, height, channels, depth, pixels, filters = image
    decoded = decode_png(encode(width, height, channels, depth, pixels, filters))
    assert (decoded.width, decoded.height, decoded.channels, decoded.bit_depth) == (width, height, channels, depth)
    assert decoded.pixels == pixels


def test_the_hash_ignores_metadata_and_compression() -> None:
    pixels = bytes(range(256)) * 3
    one = encode(16, 12, 4, 8, pixels, [0, 1, 2, 3, 4])
    two = encode(16, 12, 4, 8, pixels, [4, 3])
    assert one != two
    assert decode_png(one).sha256() == decode_png(two).sha256()
    other = encode(16, 12, 4, 8, pixels[:-1] + b"\x00", [0])
    assert decode_png(other).sha256() != decode_png(one).sha256()
    # Same bytes, other shape: the header is part of what is hashed.
    assert decode_png(encode(12, 16, 4, 8, pixels, [0])).sha256() != decode_png(one).sha256()


@given(st.binary(max_size=400))
def test_garbage_is_our_error(data: bytes) -> None:
    with pytest.raises(MalformedImage):
        decode_png(data)


@given(st.data())
@settings(max_examples=300)
def test_a_damaged_png_is_our_error_or_decodes(data: st.DataObject) -> None:
    png = bytearray(encode(5, 4, 3, 8, bytes(range(60)), [0, 1, 2, 4]))
    for _ in range(data.draw(st.integers(1, 4))):
        png[data.draw(st.integers(0, len(png) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(png)))
    # MalformedImage is the expected outcome of almost all damage (CRCs catch it); any other exception fails.
    with contextlib.suppress(MalformedImage):
        decode_png(bytes(png[:cut]))


@pytest.mark.parametrize(
    ("png", "message"),
    [
        (b"GIF89a", "not a PNG file"),
        (SIGNATURE + chunk(b"IDAT", b""), "does not start with a 13-byte IHDR"),
        (SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 3, 0, 0, 0)), "colour type 3"),
        (SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 1)), "interlacing"),
        (SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", 1 << 16, 1 << 16, 8, 6, 0, 0, 0)), "decode limit"),
        (SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)) + chunk(b"IDAT", b"xx"),
         "does not inflate"),
        (encode(2, 2, 3, 8, bytes(12), [0])[:-3], "truncated"),
        (encode(2, 2, 3, 8, bytes(12), [0]).replace(b"IEND\xae", b"IEND\xaf"), "fails its CRC"),
    ],
)
def test_each_problem_is_named(png: bytes, message: str) -> None:
    with pytest.raises(MalformedImage, match=message):
        decode_png(png)


def test_a_zlib_bomb_is_not_inflated_past_the_header_size() -> None:
    header = struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0)
    bomb = zlib.compress(bytes(50 << 20))  # 50 MiB of zeros in ~50 KB
    png = SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", bomb) + chunk(b"IEND", b"")
    with pytest.raises(MalformedImage, match="header says 52"):
        decode_png(png)
