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
    assert data[:4] == MAGIC and data[4] == 1
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
    (4, 2, "version"), (5, 0x10, "flags"), (5, 3, "flags"), (6, 0, "quality"), (6, 101, "quality"),
    (7, 0, "model id"), (7, 65, "model id"), (8, ord(" "), "model id"),
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
