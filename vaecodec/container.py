"""The .vae file format: pack and unpack a header, optional metadata and one stream of ANS words.

Pure Python and NumPy: no torch, no constriction, so headers are cheap to read
(``vaecodec info``, Pillow's ``_accept``) and the format is testable alone.

Layout, all integers little-endian (format version 3)::

    offset  size  field
    0       4     magic  b"\\x8bVAE"   (high bit set: catches 7-bit transfers)
    4       1     format version (3; 1 and 2 are still read)
    5       1     flags: bits 0-1 colour (0 = L, 1 = RGB, 2 = LA, 3 = RGBA: an alpha plane
                  coded losslessly at the bottom of the stack), bits 2-3 coding (0 = lossy,
                  1 = lossless), bit 4 metadata sections follow the word count; rest 0
    6       1     quality, 1..100 (100 in lossless files)
    7       1     n = length of the model id, 1..64
    8       n     model id, ASCII [A-Za-z0-9._-]
    8+n     8     weight hash (first 8 bytes of the model's SHA-256)
    16+n    4     width in pixels, 1..65535
    20+n    4     height in pixels, 1..65535
    24+n    4     k = number of 32-bit ANS words
    28+n    m     metadata, only when flags bit 4 is set (else m = 0):
                    1   s = number of sections, 1..3, then s sections, each
                    4   tag: b"ICCP", b"EXIF" or b"XMP " (each at most once, in this order)
                    4   L = length, 1..the tag's limit (ICCP and XMP 1 MiB, EXIF 65527)
                    L   the bytes: an ICC profile (128-byte header or more, b"acsp" at
                        offset 36); an Exif
                        block in TIFF layout (b"II*\\0" or b"MM\\0*" first, no JPEG
                        "Exif\\0\\0"); an XMP packet. At most 2 MiB of them in all.
    28+n+m  4k    ANS words (the last one is never 0)
    28+n+m+4k 4   CRC-32 of every byte before it

Version 2 differs from 1 only inside the payload: its top holds a *content
check* (a CRC-32 of every decoded symbol), so a payload edited where ANS does
not desynchronize (raw escape bits) is refused too. Version 3 differs from 2
only in the order of a lossy payload: its latents are coded in tiles of 1024 ×
1024 pixels (:mod:`vaecodec.latent_codec`), so coders stream tile by tile in
bounded memory. Files of versions 1 (vaecodec 0.1) and 2 are read as they
always were.

Every field is checked, and the total length must match exactly, before any
payload is touched; any defect raises :class:`FormatError`. Section lengths are
checked against their limits before anything is read or allocated for them.

Metadata rides beside the image, not in it: the ANS payload and its check value
do not depend on it, so a file with metadata codes exactly the pixels of the
same file without. A reader older than bit 4 refuses a file that has it
("unknown flags") rather than misreading it.
The EXIF limit is what one JPEG APP1 segment holds after its "Exif\\0\\0", so
every EXIF block a file keeps can go back into a JPEG.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass, field, fields, replace
from typing import Callable

import numpy as np

from .errors import FormatError

__all__ = ["MAGIC", "FORMAT_VERSION", "Header", "Metadata", "NO_METADATA", "METADATA_LIMITS", "MAX_METADATA_BYTES",
           "check_metadata", "pack", "unpack", "read_header", "read_header_from", "accept"]

MAGIC = b"\x8bVAE"
FORMAT_VERSION = 3
READ_VERSIONS = (1, 2, 3)
MAX_SIDE = 65535
MAX_PIXELS = 1 << 26
COLOR_MODES = ("L", "RGB", "LA", "RGBA")
CODINGS = ("lossy", "lossless")
_MODEL_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}\Z")
_HASH_BYTES = 8
_METADATA_FLAG = 0x10
_KNOWN_FLAGS = 0b11111

# Each section: (Metadata field, tag in the file, what messages call it, the most bytes it may hold), in file order.
_SECTIONS = (
    ("icc_profile", b"ICCP", "ICC profile", 1 << 20),
    ("exif", b"EXIF", "EXIF", 65533 - 6),  # one JPEG APP1 segment, less its b"Exif\0\0"
    ("xmp", b"XMP ", "XMP", 1 << 20),
)
_TAGS = tuple(tag for _, tag, _, _ in _SECTIONS)
METADATA_LIMITS = {name: limit for name, _, _, limit in _SECTIONS}
"""The most bytes a file keeps of each metadata section, by :class:`Metadata` field."""
MAX_METADATA_BYTES = 2 << 20
"""The most bytes a file keeps of all its metadata sections together."""
_TIFF_MAGIC = (b"II*\0", b"MM\0*")


@dataclass(frozen=True, repr=False)
class Metadata:
    """What a file keeps of an image besides its pixels, as raw bytes (``b""``: absent).

    The names are Pillow's ``info`` keys. ``exif`` is the Exif block in TIFF
    layout, without the ``b"Exif\\0\\0"`` that JPEG puts before it (and Pillow
    keeps in ``info["exif"]``): one form, whatever the image came from.
    """

    icc_profile: bytes = b""
    exif: bytes = b""
    xmp: bytes = b""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise TypeError(f"metadata {f.name} must be bytes, not {type(value).__name__}")
            object.__setattr__(self, f.name, bytes(value))

    def __bool__(self) -> bool:
        return any(self.sizes().values())

    def sizes(self) -> dict[str, int]:
        """The length of each section present, in file order (what ``info`` reports)."""
        return {name: len(getattr(self, name)) for name, *_ in _SECTIONS if getattr(self, name)}

    def __repr__(self) -> str:
        # Not the dataclass repr: that prints every byte of a profile (kilobytes in a log).
        inner = ", ".join(f"{name}={n} bytes" for name, n in self.sizes().items())
        return f"Metadata({inner})"


NO_METADATA = Metadata()


@dataclass(frozen=True)
class Header:
    """What a .vae file says about itself."""

    width: int
    height: int
    mode: str  # "L", "RGB", "LA" or "RGBA"
    quality: int
    model_id: str
    weight_hash: bytes
    coding: str = "lossy"
    num_words: int = 0
    num_bytes: int = 0  # whole file, header, metadata and CRC included (0 until packed/unpacked)
    metadata: Metadata = field(default=NO_METADATA)
    format_version: int = FORMAT_VERSION  # 3: tiled latents; 2: a content check tops the payload; 1: 0.1's

    @property
    def bpp(self) -> float:
        """Bits per pixel of the whole file (metadata included: it is part of what is stored)."""
        return 8 * self.num_bytes / (self.width * self.height)

    def to_dict(self) -> dict:
        return {
            "format_version": self.format_version, "width": self.width, "height": self.height, "mode": self.mode,
            "coding": self.coding, "quality": self.quality, "model_id": self.model_id,
            "weight_hash": self.weight_hash.hex(), "num_words": self.num_words,
            "num_bytes": self.num_bytes, "bpp": round(self.bpp, 6), "metadata": self.metadata.sizes(),
        }


def accept(prefix: bytes) -> bool:
    """True if ``prefix`` starts like a .vae file (Pillow's ``_accept``)."""
    return prefix[:4] == MAGIC


def check_metadata(m: Metadata) -> None:
    """Raise FormatError unless every section of ``m`` fits its limit and looks like what it claims to be.

    Only the shape is checked (an ICC header's signature, a TIFF byte order
    mark), not the contents: enough that a file never carries, say, a stray
    JPEG segment where a viewer expects a colour profile.
    """
    for name, _, label, limit in _SECTIONS:
        if len(getattr(m, name)) > limit:
            raise FormatError(f"{label} of {len(getattr(m, name))} bytes is over the limit of {limit}")
    total = sum(m.sizes().values())
    if total > MAX_METADATA_BYTES:
        raise FormatError(f"metadata of {total} bytes is over the limit of {MAX_METADATA_BYTES} in all")
    if m.icc_profile and (len(m.icc_profile) < 128 or m.icc_profile[36:40] != b"acsp"):
        raise FormatError("malformed ICC profile (no 'acsp' signature)")
    if m.exif and m.exif[:4] not in _TIFF_MAGIC:
        raise FormatError("malformed EXIF (no TIFF header)")


def _validate(h: Header) -> None:
    if h.format_version not in READ_VERSIONS:
        raise FormatError(f"unsupported format version {h.format_version}")
    if h.format_version == 1 and (h.coding != "lossy" or h.mode not in ("L", "RGB")):
        raise FormatError(f"a version 1 file cannot be {h.coding} {h.mode} (those came with version 2)")
    if not (1 <= h.width <= MAX_SIDE and 1 <= h.height <= MAX_SIDE) or h.width * h.height > MAX_PIXELS:
        raise FormatError(f"image size {h.width}x{h.height} out of range")
    if h.mode not in COLOR_MODES:
        raise FormatError(f"unknown colour mode {h.mode!r}")
    if h.coding not in CODINGS:
        raise FormatError(f"unknown coding {h.coding!r}")
    if not 1 <= h.quality <= 100:
        raise FormatError(f"quality {h.quality} out of range 1..100")
    if h.coding == "lossless" and h.quality != 100:
        raise FormatError(f"lossless file with quality {h.quality} (must be 100)")
    if not _MODEL_ID.match(h.model_id.encode("ascii", "replace")):
        raise FormatError("bad model id")
    if len(h.weight_hash) != _HASH_BYTES:
        raise FormatError("bad weight hash")
    check_metadata(h.metadata)


def _pack_metadata(m: Metadata) -> bytes:
    present = [(tag, getattr(m, name)) for name, tag, _, _ in _SECTIONS if getattr(m, name)]
    if not present:
        return b""
    return bytes([len(present)]) + b"".join(tag + struct.pack("<I", len(value)) + value for tag, value in present)


def pack(header: Header, words: np.ndarray) -> bytes:
    """Header (and its metadata) + ANS words → the bytes of a .vae file."""
    _validate(header)
    words = np.asarray(words)
    if words.dtype != np.uint32 or words.ndim != 1:
        raise ValueError("words must be a 1-D uint32 array")
    if words.size and words[-1] == 0:
        raise ValueError("ANS words never end in 0")
    metadata = _pack_metadata(header.metadata)
    flags = COLOR_MODES.index(header.mode) | (CODINGS.index(header.coding) << 2) | (_METADATA_FLAG * bool(metadata))
    mid = header.model_id.encode("ascii")
    head = (MAGIC + struct.pack("<BBBB", header.format_version, flags, header.quality, len(mid)) + mid
            + header.weight_hash + struct.pack("<III", header.width, header.height, words.size))
    body = head + metadata + words.astype("<u4").tobytes()
    return body + struct.pack("<I", zlib.crc32(body))


class _Truncated(FormatError):
    """The data ends inside the header; ``needed`` is how many bytes the parse needs to go on."""

    def __init__(self, needed: int):
        super().__init__("truncated header")
        self.needed = needed


def _parse_sections(data: memoryview, at: int) -> tuple[list[tuple[str, int, int]], int]:
    """Walk the metadata sections at ``at``: (field, offset, length) of each, and the offset after them.

    Every count, tag and length is checked before the parse moves past it, so
    a hostile length is refused here instead of being read or allocated.
    """
    if len(data) < at + 1:
        raise _Truncated(at + 1)
    count = data[at]
    at += 1
    if not 1 <= count <= len(_SECTIONS):
        raise FormatError(f"bad number of metadata sections ({count})")
    found: list[tuple[str, int, int]] = []
    total, previous = 0, -1
    for _ in range(count):
        if len(data) < at + 8:
            raise _Truncated(at + 8)
        tag = bytes(data[at:at + 4])
        (length,) = struct.unpack_from("<I", data, at + 4)
        if tag not in _TAGS:
            raise FormatError(f"unknown metadata section {tag!r}")
        index = _TAGS.index(tag)
        if index <= previous:
            raise FormatError("metadata sections repeated or out of order")
        name, _, label, limit = _SECTIONS[index]
        if not 1 <= length <= limit:
            raise FormatError(f"{label} section of {length} bytes (allowed: 1..{limit})")
        total += length
        if total > MAX_METADATA_BYTES:
            raise FormatError(f"metadata sections over the limit of {MAX_METADATA_BYTES} bytes in all")
        at += 8
        if len(data) < at + length:
            raise _Truncated(at + length)
        found.append((name, at, length))
        at += length
        previous = index
    return found, at


def _parse(data: bytes, check_payload: bool) -> tuple[Header, int]:
    """Validate everything up to the payload; returns the header and the payload offset."""
    data = memoryview(data)
    if len(data) < 4 or bytes(data[:4]) != MAGIC:
        raise FormatError("not a vaecodec file (bad magic)")
    if len(data) < 8:
        raise _Truncated(8)
    version, flags, quality, n = struct.unpack_from("<BBBB", data, 4)
    if version not in READ_VERSIONS:
        raise FormatError(f"unsupported format version {version} (this vaecodec reads "
                          f"{', '.join(map(str, READ_VERSIONS))})")
    if flags & ~_KNOWN_FLAGS or (flags & 3) >= len(COLOR_MODES) or ((flags >> 2) & 3) >= len(CODINGS):
        raise FormatError(f"unknown flags 0x{flags:02x}")
    if not 1 <= n <= 64:
        raise FormatError("bad model id length")
    fixed = 8 + n + _HASH_BYTES + 12
    if len(data) < fixed:
        raise _Truncated(fixed)
    mid = bytes(data[8:8 + n])
    if not _MODEL_ID.match(mid):
        raise FormatError("bad model id")
    weight_hash = bytes(data[8 + n:8 + n + _HASH_BYTES])
    width, height, num_words = struct.unpack_from("<III", data, 8 + n + _HASH_BYTES)
    header = Header(width, height, COLOR_MODES[flags & 3], quality, mid.decode("ascii"), weight_hash,
                    CODINGS[(flags >> 2) & 3], num_words, len(data), format_version=version)
    _validate(header)
    sections, offset = _parse_sections(data, fixed) if flags & _METADATA_FLAG else ([], fixed)
    if check_payload:
        expected = offset + 4 * num_words + 4
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
    if sections:
        metadata = Metadata(**{name: bytes(data[at:at + length]) for name, at, length in sections})
        check_metadata(metadata)
        header = replace(header, metadata=metadata)
    return header, offset


def unpack(data: bytes) -> tuple[Header, np.ndarray]:
    """The bytes of a .vae file → (header, uint32 ANS words). Raises FormatError on any defect."""
    header, offset = _parse(data, check_payload=True)
    words = np.frombuffer(data, dtype="<u4", count=header.num_words, offset=offset).astype(np.uint32)
    return header, words


def read_header(data: bytes, verify: bool = True) -> Header:
    """The header of a .vae file, metadata included. With ``verify`` the length and CRC are checked too.

    Without ``verify``, ``data`` may be just the file's start, as long as it
    holds the whole header (metadata sections included).
    """
    return _parse(data, check_payload=verify)[0]


def read_header_from(read: Callable[[int], bytes]) -> Header:
    """The header of a .vae file (metadata included) from a stream's ``read``, reading no further.

    The stream is left at the first ANS word. Each read is as long as the
    fields already read say, after they were checked against the format's
    limits, so a hostile file cannot make it read or allocate more than that.
    The payload and the CRC are not checked (:func:`read_header` on the whole
    file does that); ``num_bytes`` is the header's length.
    """
    data = read(8)  # magic, version, flags, quality, model id length
    while True:
        try:
            return _parse(data, check_payload=False)[0]
        except _Truncated as e:
            more = read(e.needed - len(data))
            if not more:
                raise
            data += more
