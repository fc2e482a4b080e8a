"""PNG decoding to raw pixels and the pixel hash that goes into render receipts. No I/O, no trio.

Why not hash the file: Blender writes the date, the render time and the file name into tEXt chunks, and
zlib's output depends on the encoder's version and level, so two renders with identical pixels give
different files. The receipt commits instead to the decoded pixels::

    pixels_sha256 = SHA-256( b"hyperion-pixels/1 " + f"{width}x{height} {channels}x{bit_depth}\\n"
                             + every scanline, unfiltered, without its filter-type byte )

Anyone can recompute it from the PNG with this module (stdlib zlib plus numpy), without Blender.

Supported: what Blender writes and a bit more -- 8- and 16-bit greyscale, grey+alpha, RGB and RGBA,
non-interlaced. Anything else is refused with ``MalformedImage`` (never decoded wrongly). Filter
reversal follows the PNG specification (ISO/IEC 15948, section 9): None, Sub and Up are vectorised
with numpy; Average and Paeth depend on the pixel just decoded to their left, so they run per byte.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from runtimes.render.exceptions import MalformedImage

SIGNATURE = b"\x89PNG\r\n\x1a\n"
HASH_DOMAIN = b"hyperion-pixels/1 "
# Channels per PNG colour type (spec table 11.1); palette (3) is left out on purpose: Blender never
# writes one, and hashing palette indices would not be a hash of the pixels.
CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}
# A decoded frame is held in memory whole: 16k x 16k RGBA8 (1 GiB) is the most we agree to inflate, so a
# small hostile file (a zlib bomb) cannot exhaust memory.
MAX_DECODED_BYTES = 1 << 30


@dataclass(frozen=True)
class DecodedImage:
    width: int
    height: int
    channels: int
    bit_depth: int
    pixels: bytes  # scanlines, unfiltered, top to bottom

    def sha256(self) -> str:
        header = HASH_DOMAIN + f"{self.width}x{self.height} {self.channels}x{self.bit_depth}\n".encode()
        return hashlib.sha256(header + self.pixels).hexdigest()


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    if not data.startswith(SIGNATURE):
        raise MalformedImage("not a PNG file (the PNG signature is missing)")
    chunks, pos = [], len(SIGNATURE)
    while pos < len(data):
        if pos + 12 > len(data):
            raise MalformedImage(f"PNG truncated at byte {pos}: a chunk header needs 12 bytes")
        (length,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if len(body) != length or pos + 12 + length > len(data):
            raise MalformedImage(f"PNG truncated in chunk {kind!r} at byte {pos}")
        (crc,) = struct.unpack_from(">I", data, pos + 8 + length)
        if zlib.crc32(kind + body) != crc:
            raise MalformedImage(f"PNG chunk {kind!r} at byte {pos} fails its CRC")
        chunks.append((kind, body))
        pos += 12 + length
        if kind == b"IEND":
            break
    return chunks


def decode_png(data: bytes) -> DecodedImage:
    """The PNG's pixels; ``MalformedImage`` naming the problem if it is not a PNG this module reads."""
    chunks = _chunks(data)
    if not chunks or chunks[0][0] != b"IHDR" or len(chunks[0][1]) != 13:
        raise MalformedImage("PNG does not start with a 13-byte IHDR chunk")
    width, height, depth, colour, compression, filter_method, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    if colour not in CHANNELS or depth not in (8, 16):
        raise MalformedImage(f"PNG colour type {colour} at {depth} bits is not supported (8/16-bit grey/RGB/alpha)")
    if compression != 0 or filter_method != 0 or interlace != 0:
        raise MalformedImage("PNG uses a non-standard compression or filter method, or interlacing")
    if width == 0 or height == 0:
        raise MalformedImage(f"PNG has an empty image ({width}x{height})")
    channels = CHANNELS[colour]
    bpp = channels * depth // 8  # bytes per complete pixel: the filters' "left" distance
    stride = width * bpp
    expected = (stride + 1) * height
    if expected > MAX_DECODED_BYTES:
        raise MalformedImage(f"PNG of {width}x{height} is over the {MAX_DECODED_BYTES >> 20} MiB decode limit")
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"), expected + 1)
    except zlib.error as exc:
        raise MalformedImage(f"PNG image data does not inflate: {exc}") from exc
    if len(raw) != expected:
        raise MalformedImage(f"PNG image data is {len(raw)} bytes, its header says {expected}")
    return DecodedImage(width, height, channels, depth, _unfilter(raw, height, stride, bpp))


def _unfilter(raw: bytes, height: int, stride: int, bpp: int) -> bytes:
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, stride + 1)
    out = np.empty((height, stride), dtype=np.uint8)
    prior = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
        kind, line = int(rows[y, 0]), rows[y, 1:]
        if kind == 0:
            out[y] = line
        elif kind == 1:  # Sub: a running sum along each channel, modulo 256 (uint8 wraps)
            out[y] = np.cumsum(line.reshape(-1, bpp), axis=0, dtype=np.uint8).reshape(-1)
        elif kind == 2:  # Up
            out[y] = line + prior
        elif kind == 3:
            out[y] = np.frombuffer(_average(line.tobytes(), prior.tobytes(), bpp), dtype=np.uint8)
        elif kind == 4:
            out[y] = np.frombuffer(_paeth(line.tobytes(), prior.tobytes(), bpp), dtype=np.uint8)
        else:
            raise MalformedImage(f"PNG scanline {y} has filter type {kind} (0 to 4 exist)")
        prior = out[y]
    return out.tobytes()


def _average(line: bytes, prior: bytes, bpp: int) -> bytearray:
    row = bytearray(line)
    for i in range(len(row)):
        left = row[i - bpp] if i >= bpp else 0
        row[i] = (row[i] + ((left + prior[i]) >> 1)) & 0xFF
    return row


def _paeth(line: bytes, prior: bytes, bpp: int) -> bytearray:
    row = bytearray(line)
    for i in range(bpp):  # no left neighbour: the predictor reduces to "up"
        row[i] = (row[i] + prior[i]) & 0xFF
    for i in range(bpp, len(row)):
        a, b, c = row[i - bpp], prior[i], prior[i - bpp]
        pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
        if pa <= pb and pa <= pc:
            row[i] = (row[i] + a) & 0xFF
        elif pb <= pc:
            row[i] = (row[i] + b) & 0xFF
        else:
            row[i] = (row[i] + c) & 0xFF
    return row


def pixels_sha256(png: bytes) -> str:
    """The receipt's pixel hash of a PNG file (see the module docstring)."""
    return decode_png(png).sha256()
