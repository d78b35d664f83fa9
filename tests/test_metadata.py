"""Image metadata (ICC profile, EXIF, XMP) through compress → decompress: API, Pillow plugin, command line."""

import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageCms, PngImagePlugin, UnidentifiedImageError

import vaecodec
import vaecodec.api
from vaecodec.cli import cli
from vaecodec.container import METADATA_LIMITS, Metadata, pack, read_header, unpack
from vaecodec.errors import ImageError
from vaecodec.image import read_metadata

from conftest import DATA, smooth_image

ORIENTATION = 0x0112
XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       b'<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/" dc:format="image/png"/></rdf:RDF></x:xmpmeta>')


@pytest.fixture(scope="module")
def icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.fixture(scope="module")
def exif() -> bytes:
    """A camera's EXIF as Pillow keeps it (b"Exif\\0\\0" first): orientation 6, a make, a capture time."""
    e = Image.Exif()
    e[ORIENTATION] = 6
    e[0x010F] = "vaecodec test camera"
    e.get_ifd(0x8769)[0x9003] = "2024:05:06 07:08:09"
    return e.tobytes()


@pytest.fixture
def pixels():
    return smooth_image(24, 40, seed=5)  # wider than high: a rotation would show in the size


@pytest.fixture
def jpeg(tmp_path, pixels, icc, exif):
    """A camera-like JPEG: stored landscape, EXIF orientation 6 (view it rotated), an ICC profile."""
    path = tmp_path / "camera.jpg"
    Image.fromarray(pixels).save(path, quality=95, exif=exif, icc_profile=icc)
    with Image.open(path) as im:
        assert im.info["exif"] == exif and im.info["icc_profile"] == icc  # what the tests compare with
    return path


@pytest.fixture
def png_with_xmp(tmp_path, pixels, icc, exif):
    path = tmp_path / "xmp.png"
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", XMP.decode())
    Image.fromarray(pixels).save(path, icc_profile=icc, exif=exif, pnginfo=info)
    return path


def framing(*sections: bytes) -> int:
    return 1 + sum(8 + len(s) for s in sections)


# ----- reading an image's metadata --------------------------------------------------------------

def test_read_metadata_takes_the_stored_bytes(jpeg, png_with_xmp, icc, exif, pixels):
    m = read_metadata(jpeg)
    assert m == Metadata(icc_profile=icc, exif=exif[6:])  # EXIF in TIFF layout: JPEG's "Exif\0\0" is not kept
    assert read_metadata(jpeg.read_bytes()) == m
    with Image.open(jpeg) as im:
        assert read_metadata(im) == m
    assert read_metadata(png_with_xmp) == Metadata(icc_profile=icc, exif=exif[6:], xmp=XMP)
    webp = io.BytesIO()  # WebP stores EXIF without JPEG's prefix: the same bytes are kept
    Image.fromarray(pixels).save(webp, "WEBP", lossless=True, icc_profile=icc, exif=exif, xmp=XMP)
    assert read_metadata(webp.getvalue()) == Metadata(icc_profile=icc, exif=exif[6:], xmp=XMP)
    assert read_metadata(pixels) == Metadata() and read_metadata(Image.fromarray(pixels)) == Metadata()


def test_exif_built_in_memory_is_kept(pixels):
    im = Image.fromarray(pixels)
    im.getexif()[ORIENTATION] = 8
    m = read_metadata(im)
    assert m.exif[:4] in (b"II*\0", b"MM\0*")
    loaded = Image.Exif()
    loaded.load(b"Exif\0\0" + m.exif)
    assert loaded[ORIENTATION] == 8


def test_an_orientation_that_pillow_copied_from_xmp_is_not_made_into_exif(pixels):
    im = Image.fromarray(pixels)
    im.info["xmp"] = b'<x:xmpmeta xmlns:x="adobe:ns:meta/" tiff:Orientation="6"/>'
    assert im.getexif()[ORIENTATION] == 6  # Pillow's view
    assert read_metadata(im) == Metadata(xmp=im.info["xmp"])  # the XMP carries it; no EXIF is invented


# ----- the API ---------------------------------------------------------------------------------

def test_encode_keeps_metadata_outside_the_payload(tiny_codec, jpeg, icc, exif):
    kept = tiny_codec.encode(jpeg, quality=60)
    stripped = tiny_codec.encode(jpeg, quality=60, metadata=False)
    with Image.open(jpeg) as im:
        as_pixels = tiny_codec.compress(np.asarray(im), quality=60)
    assert stripped.data == as_pixels  # nothing left of it with metadata=False
    header, words = unpack(kept.data)
    assert header.metadata == Metadata(icc_profile=icc, exif=exif[6:])
    assert np.array_equal(words, unpack(stripped.data)[1])  # the model codes the same words
    assert kept.num_bytes == stripped.num_bytes + framing(icc, exif[6:])
    assert kept.bpp == 8 * len(kept.data) / (40 * 24)  # the rate is the whole file's, metadata included
    assert kept.header == header and kept.information_bits == stripped.information_bits


def test_decompress_gives_the_metadata_back_in_info(tiny_codec, jpeg, icc, exif):
    data = tiny_codec.compress(jpeg, quality=60)
    image = tiny_codec.decompress(data)
    assert image.info == {"icc_profile": icc, "exif": exif}  # as Pillow's JPEG reader gave them
    assert image.getexif()[ORIENTATION] == 6
    assert image.size == (40, 24)  # coded as stored, not rotated
    pixels = tiny_codec.decompress_array(data)
    assert isinstance(pixels, np.ndarray) and np.array_equal(np.asarray(image), pixels)
    assert vaecodec.read_header(data).metadata.icc_profile == icc  # without decoding


def test_pil_images_and_batches_keep_their_metadata(tiny_codec, png_with_xmp, pixels, icc):
    with Image.open(png_with_xmp) as im:
        im.load()
        data = tiny_codec.compress(im, quality=40)
        assert tiny_codec.compress(im.convert("RGB"), quality=40) == data  # convert() keeps info
    assert tiny_codec.decompress(data).info["xmp"] == XMP
    batch = tiny_codec.encode_batch([png_with_xmp, pixels], quality=40)
    assert batch[0].data == data and batch[1].header.metadata == Metadata()
    assert tiny_codec.encode_batch([png_with_xmp], quality=40, metadata=False)[0].header.metadata == Metadata()


def test_target_bpp_counts_the_metadata(tiny_codec, jpeg):
    kept = tiny_codec.encode(jpeg, target_bpp=40.0)
    stripped = tiny_codec.encode(jpeg, target_bpp=40.0, metadata=False)
    assert kept.bpp <= 40.0 and kept.header.quality <= stripped.header.quality


def test_metadata_over_the_limits_is_refused_unless_stripped(tiny_codec, pixels, icc):
    im = Image.fromarray(pixels)
    im.info["xmp"] = b" " * (METADATA_LIMITS["xmp"] + 1)
    with pytest.raises(ImageError, match="XMP of .* over the limit.*--strip"):
        tiny_codec.compress(im)
    assert tiny_codec.compress(im, metadata=False) == tiny_codec.compress(pixels)
    im.info = {"icc_profile": b"not an ICC profile" * 10}
    with pytest.raises(ImageError, match="ICC profile"):
        tiny_codec.compress(im)


def test_old_files_decode_unchanged_and_are_still_written_the_same():
    for prefix in ("golden", "golden-cb"):
        data = (DATA / f"{prefix}.vae").read_bytes()
        header, words = unpack(data)
        assert header.metadata == Metadata() and not data[5] & 0x10
        assert pack(header, words) == data  # a file without metadata is written byte for byte as before


# ----- the Pillow plugin ------------------------------------------------------------------------

@pytest.fixture
def default_is_tiny(monkeypatch, tiny_codec):
    monkeypatch.setattr(vaecodec.api, "_default", tiny_codec)
    return tiny_codec


def test_image_open_gives_the_metadata_without_decoding(tmp_path, tiny_codec, png_with_xmp, icc, exif, monkeypatch):
    vae = tmp_path / "x.vae"
    vae.write_bytes(tiny_codec.compress(png_with_xmp))

    def refuse():
        raise AssertionError("the codec was used")

    monkeypatch.setattr(vaecodec.api, "default_codec", refuse)
    with Image.open(vae) as im:
        assert im.info == {"icc_profile": icc, "exif": exif, "xmp": XMP}
        assert im.getexif()[ORIENTATION] == 6 and im.size == (40, 24)
        assert im.header == read_header(vae.read_bytes())


def test_pillow_save_keeps_the_metadata_and_open_load_decodes(tmp_path, default_is_tiny, jpeg, icc, exif):
    with Image.open(jpeg) as im:
        im.save(tmp_path / "x.vae", quality=50)
    assert (tmp_path / "x.vae").read_bytes() == default_is_tiny.compress(jpeg, quality=50)
    with Image.open(tmp_path / "x.vae") as im:
        im.load()
        assert im.info["icc_profile"] == icc and im.info["exif"] == exif
        assert np.array_equal(np.asarray(im), default_is_tiny.decompress_array(tmp_path / "x.vae"))


def test_a_damaged_metadata_section_is_unidentified(tiny_codec, jpeg):
    data = bytearray(tiny_codec.compress(jpeg))
    at = 8 + data[7] + 20  # the section count, then the first section's tag and length
    data[at + 5:at + 9] = (2**32 - 1).to_bytes(4, "little")
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(bytes(data)))


# ----- the command line -------------------------------------------------------------------------

@pytest.fixture
def run(tiny_model_file):
    def invoke(*args, input=None):
        extra = [] if args[0] == "info" else ["--model", str(tiny_model_file)]
        return CliRunner().invoke(cli, [*map(str, args), *extra], input=input)
    return invoke


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_decompress_writes_the_metadata_back(run, jpeg, tmp_path, tiny_codec, icc, exif, suffix):
    vae = tmp_path / "camera.vae"
    assert run("compress", jpeg, "-o", vae, "-q", "60").exit_code == 0
    out = tmp_path / f"out{suffix}"
    r = run("decompress", vae, "-o", out)
    assert r.exit_code == 0 and r.stderr == "", r.output
    with Image.open(out) as im:
        # The same bytes (Pillow's WebP reader gives the EXIF chunk as stored, without JPEG's "Exif\0\0").
        assert im.info["icc_profile"] == icc and im.info["exif"] == (exif[6:] if suffix == ".webp" else exif)
        assert im.getexif()[ORIENTATION] == 6
        assert im.size == (40, 24)  # pixels as stored: a viewer turns them by the EXIF
        if suffix != ".jpg":
            assert np.array_equal(np.asarray(im), tiny_codec.decompress_array(vae))


@pytest.mark.parametrize("suffix", [".png", ".webp", ".jpg"])
def test_xmp_goes_back_into_formats_that_hold_it(run, png_with_xmp, tmp_path, suffix):
    if suffix == ".jpg" and int(Image.__version__.split(".")[0]) < 11:
        pytest.skip("Pillow writes XMP to JPEG from version 11")
    vae = tmp_path / "x.vae"
    assert run("compress", png_with_xmp, "-o", vae).exit_code == 0
    out = tmp_path / f"out{suffix}"
    r = run("decompress", vae, "-o", out)
    assert r.exit_code == 0 and r.stderr == "", r.output
    with Image.open(out) as im:
        assert im.info["xmp"] == XMP


def test_formats_that_cannot_hold_metadata_drop_it_with_one_warning(run, png_with_xmp, tmp_path):
    vae = tmp_path / "x.vae"
    assert run("compress", png_with_xmp, "-o", vae).exit_code == 0
    r = run("decompress", vae, "-o", tmp_path / "out.bmp")
    assert r.exit_code == 0 and (tmp_path / "out.bmp").exists()
    assert r.stderr.splitlines() == [f"vaecodec: warning: {tmp_path / 'out.bmp'}: BMP cannot hold the ICC profile, "
                                     "EXIF and XMP; not written"]
    r = run("decompress", vae, "-o", tmp_path / "out.tif")
    assert r.exit_code == 0
    assert r.stderr.splitlines() == [f"vaecodec: warning: {tmp_path / 'out.tif'}: TIFF cannot hold the XMP; not written"]
    with Image.open(tmp_path / "out.tif") as im:
        assert im.info["icc_profile"] and im.getexif()[ORIENTATION] == 6
    r = run("decompress", vae, "-o", tmp_path / "quiet.bmp", "-q")
    assert r.exit_code == 0 and r.output == ""


def test_strip_leaves_the_metadata_out(run, jpeg, tmp_path, tiny_codec):
    vae = tmp_path / "x.vae"
    assert run("compress", jpeg, "-o", vae, "-q", "60", "--strip").exit_code == 0
    assert read_header(vae.read_bytes()).metadata == Metadata()
    assert vae.read_bytes() == tiny_codec.compress(jpeg, quality=60, metadata=False)
    assert run("decompress", vae, "-o", tmp_path / "x.png").exit_code == 0
    with Image.open(tmp_path / "x.png") as im:
        assert "icc_profile" not in im.info and "exif" not in im.info


def test_info_lists_the_metadata(run, jpeg, tmp_path, icc, exif, pixels):
    vae = tmp_path / "x.vae"
    run("compress", jpeg, "-o", vae)
    r = run("info", vae, "--json")
    assert r.exit_code == 0
    d = json.loads(r.output)
    assert d["metadata"] == {"icc_profile": len(icc), "exif": len(exif) - 6}
    assert d["num_bytes"] == vae.stat().st_size
    line = next(x for x in run("info", vae).output.splitlines() if x.startswith("metadata"))
    assert line.split(None, 1)[1] == f"icc_profile {len(icc)} bytes, exif {len(exif) - 6} bytes"
    plain = tmp_path / "plain.png"
    Image.fromarray(pixels).save(plain)
    run("compress", plain)
    assert json.loads(run("info", plain.with_suffix(".vae"), "--json").output)["metadata"] == {}
    assert "none" in next(x for x in run("info", plain.with_suffix(".vae")).output.splitlines()
                          if x.startswith("metadata"))


def test_png_on_stdout_keeps_the_metadata(run, jpeg, tmp_path, icc):
    vae = tmp_path / "x.vae"
    run("compress", jpeg, "-o", vae)
    r = run("decompress", vae, "-o", "-")
    assert r.exit_code == 0
    with Image.open(io.BytesIO(r.stdout_bytes)) as im:
        assert im.info["icc_profile"] == icc and im.getexif()[ORIENTATION] == 6
