"""The .vae container alone: pure Python, every defect is a FormatError."""

import subprocess
import sys
import zlib

import numpy as np
import pytest

from vaecodec.container import MAGIC, Header, pack, read_header, unpack
from vaecodec.errors import FormatError

HASH = bytes(range(8))


def make_file(num_words=5, **kw):
    fields = dict(width=17, height=31, mode="RGB", quality=42, model_id="tiny-test", weight_hash=HASH)
    fields.update(kw)
    words = np.random.default_rng(0).integers(1, 2**32, num_words, dtype=np.uint64).astype(np.uint32)
    return pack(Header(**fields), words), words


def test_round_trip_keeps_every_field():
    data, words = make_file(mode="L", quality=100, width=65535, height=1)
    header, out = unpack(data)
    assert np.array_equal(out, words) and out.dtype == np.uint32
    assert (header.width, header.height, header.mode, header.quality) == (65535, 1, "L", 100)
    assert header.model_id == "tiny-test" and header.weight_hash == HASH
    assert header.num_bytes == len(data) and header.num_words == 5
    assert header.bpp == pytest.approx(8 * len(data) / 65535)


def test_layout_is_little_endian_with_magic_first():
    data, words = make_file()
    assert data[:4] == MAGIC and data[4] == 3
    assert data[-4:] == zlib.crc32(data[:-4]).to_bytes(4, "little")
    assert data[-8:-4] == int(words[-1]).to_bytes(4, "little")


def test_every_truncation_is_a_format_error():
    data, _ = make_file()
    for n in range(len(data)):
        with pytest.raises(FormatError):
            unpack(data[:n])


def test_every_bit_flip_is_a_format_error():
    data, _ = make_file()
    for i in range(len(data) * 8):
        bad = bytearray(data)
        bad[i // 8] ^= 1 << (i % 8)
        with pytest.raises(FormatError):
            unpack(bytes(bad))


def test_trailing_bytes_are_rejected():
    data, _ = make_file()
    with pytest.raises(FormatError, match="unexpected bytes"):
        unpack(data + b"\0")


@pytest.mark.parametrize("foreign", [b"", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b"GIF89a", b"\x8bVA"])
def test_foreign_data_is_rejected(foreign):
    with pytest.raises(FormatError):
        unpack(foreign)


def _refresh_crc(body: bytes) -> bytes:
    return body + zlib.crc32(body).to_bytes(4, "little")


@pytest.mark.parametrize("offset,value,message", [
    (4, 4, "version"), (4, 0, "version"), (5, 0x20, "flags"), (5, 0x80, "flags"), (5, 0x0C, "flags"), (6, 0, "quality"),
    (6, 101, "quality"), (7, 0, "model id"), (7, 65, "model id"), (8, ord(" "), "model id"),
    (5, 0x11, "metadata sections"),  # bit 4 (metadata follows) on a file without: its first word is no section list
])
def test_bad_fields_are_rejected_even_with_a_valid_crc(offset, value, message):
    data, _ = make_file()
    body = bytearray(data[:-4])
    body[offset] = value
    with pytest.raises(FormatError, match=message):
        unpack(_refresh_crc(bytes(body)))


def test_oversized_dimensions_are_rejected_before_allocation():
    data, _ = make_file()
    body = bytearray(data[:-4])
    n = body[7]
    body[8 + n + 8:8 + n + 12] = (0).to_bytes(4, "little")  # width 0
    with pytest.raises(FormatError, match="size"):
        unpack(_refresh_crc(bytes(body)))
    body[8 + n + 8:8 + n + 16] = (65535).to_bytes(4, "little") * 2  # 4 Gpx
    with pytest.raises(FormatError, match="size"):
        unpack(_refresh_crc(bytes(body)))


def test_word_count_must_match_the_length():
    data, _ = make_file()
    body = bytearray(data[:-4])
    n = body[7]
    body[8 + n + 16:8 + n + 20] = (2**32 - 1).to_bytes(4, "little")
    with pytest.raises(FormatError, match="truncated"):
        unpack(_refresh_crc(bytes(body)))


def test_pack_refuses_invalid_headers():
    with pytest.raises(FormatError):
        make_file(quality=0)
    with pytest.raises(FormatError):
        make_file(model_id="has space")
    with pytest.raises(ValueError):
        pack(Header(1, 1, "RGB", 1, "m", HASH), np.array([1, 0], np.uint32))


def test_read_header_can_skip_payload_checks():
    data, _ = make_file()
    header = read_header(data[:40], verify=False)
    assert header.width == 17
    with pytest.raises(FormatError):
        read_header(data[:40])


def test_reading_a_header_does_not_import_torch(tmp_path):
    data, _ = make_file()
    (tmp_path / "x.vae").write_bytes(data)
    code = ("import sys, vaecodec; h = vaecodec.read_header(open(sys.argv[1], 'rb').read()); "
            "from vaecodec.cli import cli; from click.testing import CliRunner; "
            "r = CliRunner().invoke(cli, ['info', sys.argv[1], '--json']); assert r.exit_code == 0, r.output; "
            "assert 'torch' not in sys.modules and 'constriction' not in sys.modules; print(h.width)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.vae")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "17"


# ----- metadata sections ------------------------------------------------------------------------

from vaecodec.container import (  # noqa: E402
    MAX_METADATA_BYTES, METADATA_LIMITS, Metadata, check_metadata, read_header_from,
)

ICC = b"\0\0\0\x80" + b"\0" * 32 + b"acsp" + bytes(range(88))  # the shape of an ICC header: 128 bytes, 'acsp' at 36
EXIF = b"II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0\x06\0\0\0\0\0\0\0"  # little-endian TIFF: Orientation = 6
XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"/>'
ALL = Metadata(icc_profile=ICC, exif=EXIF, xmp=XMP)
TAGS = {"icc_profile": b"ICCP", "exif": b"EXIF", "xmp": b"XMP "}


def framing(m: Metadata) -> int:
    """Bytes the metadata adds to a file: a count byte, then a tag and a length per section."""
    sizes = m.sizes()
    return (1 + 8 * len(sizes) + sum(sizes.values())) if sizes else 0


def sections_at(data: bytes) -> int:
    """Offset of the metadata sections (the section count byte) in a packed file."""
    return 8 + data[7] + 8 + 12


@pytest.mark.parametrize("m", [Metadata(icc_profile=ICC), Metadata(exif=EXIF), Metadata(xmp=XMP),
                               Metadata(icc_profile=ICC, xmp=XMP), ALL], ids=repr)
def test_metadata_round_trips_beside_unchanged_words(m):
    data, words = make_file(metadata=m)
    plain, _ = make_file()
    header, out = unpack(data)
    assert header.metadata == m and np.array_equal(out, words)
    assert data[5] & 0x10 and not plain[5] & 0x10
    assert len(data) == len(plain) + framing(m) and header.num_bytes == len(data)
    # The sections sit between the word count and the words; the rest of the file is the plain one's.
    at = sections_at(data)
    assert data[at] == len(m.sizes()) and data[at + 1:at + 5] == TAGS[next(iter(m.sizes()))]
    assert data[at + framing(m):-4] == plain[at:-4] and data[6:at] == plain[6:at]
    assert read_header(data).metadata == m and read_header(data, verify=False).metadata == m
    assert read_header(data).to_dict()["metadata"] == m.sizes()


def test_a_file_without_metadata_is_written_as_before():
    plain, words = make_file()
    assert make_file(metadata=Metadata())[0] == plain
    assert unpack(plain)[0].metadata == Metadata() and not unpack(plain)[0].metadata
    assert read_header(plain).to_dict()["metadata"] == {}


def test_every_truncation_of_a_file_with_metadata_is_a_format_error():
    data, _ = make_file(metadata=ALL)
    for n in range(len(data)):
        with pytest.raises(FormatError):
            unpack(data[:n])
        with pytest.raises(FormatError):
            read_header(data[:n])


def test_every_bit_flip_of_a_file_with_metadata_is_a_format_error():
    data, _ = make_file(metadata=ALL)
    for i in range(len(data) * 8):
        bad = bytearray(data)
        bad[i // 8] ^= 1 << (i % 8)
        with pytest.raises(FormatError):
            unpack(bytes(bad))


@pytest.mark.parametrize("name", ["icc_profile", "exif", "xmp"])
def test_an_oversize_section_is_refused_at_write(name):
    limit = METADATA_LIMITS[name]
    start = {"icc_profile": ICC, "exif": EXIF, "xmp": XMP}[name]
    at_limit = Metadata(**{name: start + b"\0" * (limit - len(start))})
    assert unpack(make_file(metadata=at_limit)[0])[0].metadata == at_limit  # the limit itself is allowed
    with pytest.raises(FormatError, match="over the limit"):
        make_file(metadata=Metadata(**{name: start + b"\0" * (limit + 1 - len(start))}))


def test_metadata_over_the_total_limit_is_refused_at_write():
    big = Metadata(icc_profile=ICC + b"\0" * (METADATA_LIMITS["icc_profile"] - len(ICC)),
                   xmp=b" " * METADATA_LIMITS["xmp"], exif=EXIF)
    assert sum(big.sizes().values()) > MAX_METADATA_BYTES
    with pytest.raises(FormatError, match="in all"):
        make_file(metadata=big)


def _with_sections(sections: bytes, count: int | None = None, extra: bytes = b"") -> bytes:
    """A file whose metadata sections are ``sections`` as given (framing and all), with a valid CRC."""
    plain, _ = make_file()
    at = sections_at(plain)
    body = bytearray(plain[:-4])
    body[5] |= 0x10
    n = count if count is not None else 1
    return _refresh_crc(bytes(body[:at]) + bytes([n]) + sections + extra + bytes(body[at:]))


def section(tag: bytes, payload: bytes, length: int | None = None) -> bytes:
    return tag + (len(payload) if length is None else length).to_bytes(4, "little") + payload


@pytest.mark.parametrize("tag,limit", [(b"ICCP", METADATA_LIMITS["icc_profile"]), (b"EXIF", METADATA_LIMITS["exif"]),
                                       (b"XMP ", METADATA_LIMITS["xmp"])])
def test_an_oversize_section_is_refused_at_read_before_allocation(tag, limit):
    # The length says limit + 1 (and the bytes are there, CRC valid): refused for its size, not read.
    payload = {b"ICCP": ICC, b"EXIF": EXIF, b"XMP ": XMP}[tag]
    data = _with_sections(section(tag, payload + b"\0" * (limit + 1 - len(payload))))
    with pytest.raises(FormatError, match=f"{limit + 1} bytes"):
        unpack(data)
    # A hostile length with nothing behind it: the same refusal, not a "truncated" one after a huge read.
    data = _with_sections(section(tag, b"", length=2**32 - 1))
    with pytest.raises(FormatError, match="allowed"):
        unpack(data)
    with pytest.raises(FormatError, match="allowed"):
        read_header(data, verify=False)


def test_sections_over_the_total_limit_are_refused_at_read():
    icc = ICC + b"\0" * (METADATA_LIMITS["icc_profile"] - len(ICC))
    data = _with_sections(section(b"ICCP", icc) + section(b"EXIF", EXIF) + section(b"XMP ", b"", METADATA_LIMITS["xmp"]),
                          count=3)
    with pytest.raises(FormatError, match="in all"):
        unpack(data)


@pytest.mark.parametrize("sections,count,message", [
    (section(b"ICCP", ICC), 0, "number of metadata sections"),
    (section(b"ICCP", ICC), 4, "number of metadata sections"),
    (section(b"JUNK", b"xyz"), 1, "unknown metadata section"),
    (section(b"iccp", ICC), 1, "unknown metadata section"),
    (section(b"EXIF", EXIF) + section(b"ICCP", ICC), 2, "out of order"),
    (section(b"EXIF", EXIF) + section(b"EXIF", EXIF), 2, "repeated"),
    (section(b"XMP ", b""), 1, "allowed: 1"),
    (section(b"ICCP", b"\0" * 128), 1, "ICC profile"),
    (section(b"ICCP", ICC[:100]), 1, "ICC profile"),
    (section(b"EXIF", b"Exif\0\0" + EXIF), 1, "EXIF"),
    (section(b"ICCP", ICC), 2, "unknown metadata section"),  # a count too high reads the words as a section
])
def test_bad_sections_are_rejected_even_with_a_valid_crc(sections, count, message):
    with pytest.raises(FormatError, match=message):
        unpack(_with_sections(sections, count))


def test_malformed_sections_are_refused_at_write():
    with pytest.raises(FormatError, match="ICC"):
        make_file(metadata=Metadata(icc_profile=b"not a profile" * 20))
    with pytest.raises(FormatError, match="EXIF"):
        make_file(metadata=Metadata(exif=b"Exif\0\0" + EXIF))  # JPEG's prefix is not part of the block
    check_metadata(ALL)
    with pytest.raises(TypeError):
        Metadata(xmp="<x/>")


def test_metadata_repr_gives_sizes_not_bytes():
    h = unpack(make_file(metadata=ALL)[0])[0]
    assert repr(h.metadata) == f"Metadata(icc_profile=128 bytes, exif={len(EXIF)} bytes, xmp={len(XMP)} bytes)"
    assert "acsp" not in repr(h)


class _CountingStream:
    def __init__(self, data: bytes):
        self.data, self.at, self.reads = data, 0, []

    def read(self, n: int) -> bytes:
        self.reads.append(n)
        out = self.data[self.at:self.at + n]
        self.at += len(out)
        return out


def test_read_header_from_a_stream_stops_at_the_words():
    for m in (Metadata(), ALL):
        data, _ = make_file(metadata=m)
        stream = _CountingStream(data)
        header = read_header_from(stream.read)
        assert header.metadata == m and header.width == 17
        assert stream.at == sections_at(data) + framing(m)  # the first ANS word is next
        assert header == read_header(data[:stream.at], verify=False)


def test_read_header_from_a_stream_never_reads_a_hostile_length():
    stream = _CountingStream(_with_sections(section(b"XMP ", b"", length=2**32 - 1)))
    with pytest.raises(FormatError, match="allowed"):
        read_header_from(stream.read)
    assert max(stream.reads) < 100
    stream = _CountingStream(make_file(metadata=ALL)[0][:60])
    with pytest.raises(FormatError, match="truncated"):
        read_header_from(stream.read)
