"""The Pillow plugin: Image.open reads the header only, load() decodes, save() writes compress()'s bytes."""

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

import vaecodec
import vaecodec.api
from vaecodec.api import Codec
from vaecodec.errors import FormatError, ImageError, ModelMismatchError

from conftest import make_tiny_model, smooth_image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def default_is_tiny(monkeypatch, tiny_codec):
    """The plugin decodes and encodes with vaecodec's default codec: make it the tiny one."""
    monkeypatch.setattr(vaecodec.api, "_default", tiny_codec)
    return tiny_codec


@pytest.fixture
def no_codec(monkeypatch):
    """Fail the test if anything asks for a codec (so: loads torch and a model)."""
    def refuse():
        raise AssertionError("the codec was used")

    monkeypatch.setattr(vaecodec.api, "default_codec", refuse)


def write(tmp_path, codec, img, name="x.vae", **kw) -> tuple[Path, bytes]:
    data = codec.compress(img, **kw)
    path = tmp_path / name
    path.write_bytes(data)
    return path, data


def test_import_registers_format_extension_and_mime():
    assert Image.registered_extensions()[".vae"] == "VAECODEC"
    assert Image.MIME["VAECODEC"] == "image/x-vaecodec"
    assert "VAECODEC" in Image.OPEN and "VAECODEC" in Image.SAVE


@pytest.mark.parametrize("channels", [3, 1])
def test_open_gives_size_mode_and_header_without_decoding(tmp_path, tiny_codec, no_codec, channels):
    img = smooth_image(21, 34, channels=channels)
    path, data = write(tmp_path, tiny_codec, img, quality=33)
    with Image.open(path) as im:
        assert (im.format, im.size, im.mode) == ("VAECODEC", (34, 21), "RGB" if channels == 3 else "L")
        assert im.get_format_mimetype() == "image/x-vaecodec"
        assert im.header == vaecodec.read_header(data)
        assert im.header.quality == 33 and im.header.num_bytes == len(data)


def test_open_of_a_corrupted_payload_succeeds_and_only_load_fails(tmp_path, tiny_codec, default_is_tiny):
    path, data = write(tmp_path, tiny_codec, smooth_image(24, 40), quality=50)
    bad = bytearray(data)
    bad[-10] ^= 0x40  # a payload word: the header is intact, the CRC is not
    path.write_bytes(bytes(bad))
    with Image.open(path) as im:
        assert (im.size, im.mode) == ((40, 24), "RGB")
        with pytest.raises(OSError, match="cannot decode vaecodec file: CRC mismatch") as e:
            im.load()
    assert isinstance(e.value.__cause__, FormatError)


def test_a_file_from_other_weights_fails_at_load_with_the_reason(tmp_path, rgb_image, default_is_tiny):
    path, _ = write(tmp_path, Codec(make_tiny_model(seed=1)), rgb_image)
    with Image.open(path) as im:
        assert im.size == (56, 40)
        with pytest.raises(OSError, match="written by model") as e:
            im.load()
    assert isinstance(e.value.__cause__, ModelMismatchError)


@pytest.mark.parametrize("damage", ["version", "flags", "truncated", "model id length"])
def test_a_damaged_header_is_unidentified_like_any_broken_image(tmp_path, tiny_codec, rgb_image, no_codec, damage):
    data = bytearray(tiny_codec.compress(rgb_image))
    if damage == "version":
        data[4] = 9
    elif damage == "flags":
        data[5] = 0x80
    elif damage == "truncated":
        data = data[:12]
    else:
        data[7] = 0
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(bytes(data)))


@pytest.mark.parametrize("channels", [3, 1])
def test_load_decodes_exactly_what_the_api_decodes(tmp_path, default_is_tiny, channels):
    path, data = write(tmp_path, default_is_tiny, smooth_image(19, 45, seed=3, channels=channels), quality=70)
    expected = default_is_tiny.decompress_array(data)
    with Image.open(path) as im:
        assert np.array_equal(np.asarray(im), expected)
    with Image.open(io.BytesIO(data)) as im:  # a file object, not a path
        assert np.array_equal(np.asarray(im), expected)
    assert np.array_equal(np.asarray(vaecodec.decompress(data)), expected)


def test_save_writes_exactly_the_bytes_of_compress(tmp_path, default_is_tiny, rgb_image):
    im = Image.fromarray(rgb_image)
    im.save(tmp_path / "q40.vae", quality=40)
    im.save(tmp_path / "default.vae")
    target_bpp = default_is_tiny.encode(rgb_image, quality=40).bpp
    im.save(tmp_path / "target.vae", target_bpp=target_bpp)
    buf = io.BytesIO()
    im.save(buf, format="VAECODEC", quality=40)
    assert (tmp_path / "q40.vae").read_bytes() == default_is_tiny.compress(rgb_image, quality=40) == buf.getvalue()
    assert (tmp_path / "default.vae").read_bytes() == default_is_tiny.compress(rgb_image)  # quality 75
    target = default_is_tiny.encode(rgb_image, target_bpp=target_bpp)
    assert (tmp_path / "target.vae").read_bytes() == target.data and target.bpp <= target_bpp


def test_save_then_open_round_trips_through_pillow(tmp_path, default_is_tiny):
    gray = Image.fromarray(smooth_image(30, 17, channels=1))
    gray.save(tmp_path / "g.vae", quality=90)
    with Image.open(tmp_path / "g.vae") as im:
        assert (im.mode, im.size, im.header.quality) == ("L", (17, 30), 90)
        assert np.array_equal(np.asarray(im), np.asarray(default_is_tiny.decompress(tmp_path / "g.vae")))
        im.save(tmp_path / "g.png")  # and on to another format
    assert Image.open(tmp_path / "g.png").mode == "L"


@pytest.mark.parametrize("params", [dict(method=6), dict(quality=50, optimize=True)])
def test_unsupported_save_parameters_are_refused_before_any_work(tmp_path, rgb_image, no_codec, params):
    with pytest.raises(ValueError, match=f"cannot save with {sorted(set(params) - {'quality'})[0]}"):
        Image.fromarray(rgb_image).save(tmp_path / "x.vae", **params)
    assert not (tmp_path / "x.vae").exists()  # Pillow removes the file it created


def test_save_refuses_what_compress_refuses(tmp_path, default_is_tiny):
    with pytest.raises(ImageError, match="mode"):
        Image.new("CMYK", (8, 8)).save(tmp_path / "x.vae")
    with pytest.raises(ValueError, match="quality"):
        Image.new("RGB", (8, 8)).save(tmp_path / "x.vae", quality=0)


def test_vae_files_are_accepted_wherever_images_are(tmp_path, default_is_tiny, rgb_image):
    """Through the plugin, compress() reads a .vae file as the image it decodes to (a transcode)."""
    path, data = write(tmp_path, default_is_tiny, rgb_image, quality=60)
    pixels = default_is_tiny.decompress_array(data)
    assert default_is_tiny.compress(path, quality=20) == default_is_tiny.compress(pixels, quality=20)


def test_other_formats_are_unaffected(tmp_path, rgb_image):
    Image.fromarray(rgb_image).save(tmp_path / "x.png")
    with Image.open(tmp_path / "x.png") as im:
        assert im.format == "PNG"


def test_open_imports_neither_torch_nor_the_model(tmp_path, tiny_codec, rgb_image):
    path, _ = write(tmp_path, tiny_codec, rgb_image)
    code = ("import sys, vaecodec; from PIL import Image; im = Image.open(sys.argv[1]); "
            "assert 'torch' not in sys.modules and 'constriction' not in sys.modules; print(im.size, im.mode)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(56, 40) RGB"
