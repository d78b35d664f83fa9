"""The .vae file format: pack and unpack a header and one stream of ANS words.

Pure Python and NumPy: no torch, no constriction, so headers are cheap to read
(``vaecodec info``, Pillow's ``_accept``) and the format is testable alone.

Layout, all integers little-endian (format version 1)::

    offset  size  field
    0       4     magic  b"\\x8bVAE"   (high bit set: catches 7-bit transfers)
    4       1     format version (1)
    5       1     flags: bits 0-1 colour (0 = L, 1 = RGB), bits 2-3 coding (0 = lossy); rest 0
    6       1     quality, 1..100
    7       1     n = length of the model id, 1..64
    8       n     model id, ASCII [A-Za-z0-9._-]
    8+n     8     weight hash (first 8 bytes of the model's SHA-256)
    16+n    4     width in pixels, 1..65535
    20+n    4     height in pixels, 1..65535
    24+n    4     k = number of 32-bit ANS words
    28+n    4k    ANS words (the last one is never 0)
    28+n+4k 4     CRC-32 of every byte before it

Every field is checked, and the total length must match exactly, before any
payload is touched; any defect raises :class:`FormatError`.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from .errors import FormatError

__all__ = ["MAGIC", "FORMAT_VERSION", "Header", "pack", "unpack", "read_header", "accept"]

MAGIC = b"\x8bVAE"
FORMAT_VERSION = 1
MAX_SIDE = 65535
MAX_PIXELS = 1 << 26
COLOR_MODES = ("L", "RGB")
CODINGS = ("lossy",)
_MODEL_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}\Z")
_HASH_BYTES = 8


@dataclass(frozen=True)
class Header:
    """What a .vae file says about itself."""

    width: int
    height: int
    mode: str  # "L" or "RGB"
    quality: int
    model_id: str
    weight_hash: bytes
    coding: str = "lossy"
    num_words: int = 0
    num_bytes: int = 0  # whole file, header and CRC included (0 until packed/unpacked)

    @property
    def bpp(self) -> float:
        """Bits per pixel of the whole file."""
        return 8 * self.num_bytes / (self.width * self.height)

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION, "width": self.width, "height": self.height, "mode": self.mode,
            "coding": self.coding, "quality": self.quality, "model_id": self.model_id,
            "weight_hash": self.weight_hash.hex(), "num_words": self.num_words,
            "num_bytes": self.num_bytes, "bpp": round(self.bpp, 6),
        }


def accept(prefix: bytes) -> bool:
    """True if ``prefix`` starts like a .vae file (Pillow's ``_accept``)."""
    return prefix[:4] == MAGIC


def _validate(h: Header) -> None:
    if not (1 <= h.width <= MAX_SIDE and 1 <= h.height <= MAX_SIDE) or h.width * h.height > MAX_PIXELS:
        raise FormatError(f"image size {h.width}x{h.height} out of range")
    if h.mode not in COLOR_MODES:
        raise FormatError(f"unknown colour mode {h.mode!r}")
    if h.coding not in CODINGS:
        raise FormatError(f"unknown coding {h.coding!r}")
    if not 1 <= h.quality <= 100:
        raise FormatError(f"quality {h.quality} out of range 1..100")
    if not _MODEL_ID.match(h.model_id.encode("ascii", "replace")):
        raise FormatError("bad model id")
    if len(h.weight_hash) != _HASH_BYTES:
        raise FormatError("bad weight hash")


def pack(header: Header, words: np.ndarray) -> bytes:
    """Header + ANS words → the bytes of a .vae file."""
    _validate(header)
    words = np.asarray(words)
    if words.dtype != np.uint32 or words.ndim != 1:
        raise ValueError("words must be a 1-D uint32 array")
    if words.size and words[-1] == 0:
        raise ValueError("ANS words never end in 0")
    flags = COLOR_MODES.index(header.mode) | (CODINGS.index(header.coding) << 2)
    mid = header.model_id.encode("ascii")
    head = (MAGIC + struct.pack("<BBBB", FORMAT_VERSION, flags, header.quality, len(mid)) + mid
            + header.weight_hash + struct.pack("<III", header.width, header.height, words.size))
    body = head + words.astype("<u4").tobytes()
    return body + struct.pack("<I", zlib.crc32(body))


def _parse(data: bytes, check_payload: bool) -> tuple[Header, int]:
    """Validate everything up to the payload; returns the header and the payload offset."""
    data = memoryview(data)
    if len(data) < 4 or bytes(data[:4]) != MAGIC:
        raise FormatError("not a vaecodec file (bad magic)")
    if len(data) < 8:
        raise FormatError("truncated header")
    version, flags, quality, n = struct.unpack_from("<BBBB", data, 4)
    if version != FORMAT_VERSION:
        raise FormatError(f"unsupported format version {version} (this vaecodec reads {FORMAT_VERSION})")
    if flags & ~0b1111 or (flags & 3) >= len(COLOR_MODES) or (flags >> 2) >= len(CODINGS):
        raise FormatError(f"unknown flags 0x{flags:02x}")
    if not 1 <= n <= 64:
        raise FormatError("bad model id length")
    fixed = 8 + n + _HASH_BYTES + 12
    if len(data) < fixed:
        raise FormatError("truncated header")
    mid = bytes(data[8:8 + n])
    if not _MODEL_ID.match(mid):
        raise FormatError("bad model id")
    weight_hash = bytes(data[8 + n:8 + n + _HASH_BYTES])
    width, height, num_words = struct.unpack_from("<III", data, 8 + n + _HASH_BYTES)
    header = Header(width, height, COLOR_MODES[flags & 3], quality, mid.decode("ascii"), weight_hash,
                    CODINGS[flags >> 2], num_words, len(data))
    _validate(header)
    if check_payload:
        expected = fixed + 4 * num_words + 4
        if len(data) < expected:
            raise FormatError(f"truncated file ({len(data)} of {expected} bytes)")
        if len(data) > expected:
            raise FormatError(f"{len(data) - expected} unexpected bytes after the end of the file")
        (crc,) = struct.unpack_from("<I", data, expected - 4)
        if zlib.crc32(data[:expected - 4]) != crc:
            raise FormatError("CRC mismatch: the file is corrupted")
        if num_words == 0:
            raise FormatError("empty payload")
        if bytes(data[expected - 8:expected - 4]) == b"\0\0\0\0":
            raise FormatError("malformed payload (ends in a zero word)")
    return header, fixed


def unpack(data: bytes) -> tuple[Header, np.ndarray]:
    """The bytes of a .vae file → (header, uint32 ANS words). Raises FormatError on any defect."""
    header, offset = _parse(data, check_payload=True)
    words = np.frombuffer(data, dtype="<u4", count=header.num_words, offset=offset).astype(np.uint32)
    return header, words


def read_header(data: bytes, verify: bool = True) -> Header:
    """The header of a .vae file. With ``verify`` the length and CRC are checked too."""
    return _parse(data, check_payload=verify)[0]
