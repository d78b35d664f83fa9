"""What ML code hands the codec: tensors, float arrays, batches, .vae paths; and a readable Encoded."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vaecodec
import vaecodec.api
from vaecodec.api import Codec
from vaecodec.errors import ImageError
from vaecodec.image import load_pixels

from conftest import smooth_image

ROOT = Path(__file__).resolve().parents[1]
ALL_BYTES = np.arange(256, dtype=np.uint8)


# ----- float arrays and tensors convert exactly ---------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_every_uint8_value_survives_division_by_255(dtype):
    floats = ALL_BYTES.astype(np.float64) / 255
    assert np.array_equal(load_pixels(floats.astype(dtype).reshape(16, 16)), ALL_BYTES.reshape(16, 16))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_float_tensors_round_like_arrays(dtype):
    x = torch.linspace(-0.2, 1.2, 300, dtype=torch.float64).reshape(15, 20).to(dtype)
    assert np.array_equal(load_pixels(x), load_pixels(x.double().numpy()))
    if dtype != torch.bfloat16:  # bfloat16 has 8 bits of mantissa: u/255 is not exact in it
        assert np.array_equal(load_pixels((torch.from_numpy(ALL_BYTES) / 255).to(dtype).reshape(16, 16)),
                              ALL_BYTES.reshape(16, 16))


def test_floats_are_rounded_and_clamped():
    x = np.array([[-0.5, 0.0, 0.25, 0.998, 1.0, 1.7]])
    assert load_pixels(x).tolist() == [[0, 0, 64, 254, 255, 255]]  # 63.75 → 64, 254.49 → 254


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_floats_are_refused(bad):
    x = np.full((4, 4, 3), 0.5)
    x[1, 2, 0] = bad
    with pytest.raises(ImageError, match="NaN or infinite"):
        load_pixels(x)
    with pytest.raises(ImageError, match="NaN or infinite"):
        load_pixels(torch.from_numpy(x).permute(2, 0, 1))


def _as_chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1)


def test_tensors_and_float_arrays_give_the_bytes_of_the_uint8_array(tiny_codec, rgb_image):
    expected = tiny_codec.compress(rgb_image, quality=55)
    chw = _as_chw(rgb_image)
    inputs = {
        "float32 HWC array": rgb_image.astype(np.float32) / 255,
        "float64 HWC array": rgb_image / 255.0,
        "uint8 CHW tensor": chw,
        "uint8 CHW tensor, contiguous": chw.contiguous(),
        "float32 CHW tensor": chw.float() / 255,
        "float CHW tensor with grad": (chw.float() / 255).requires_grad_(),
        "float16 CHW tensor": (chw.double() / 255).half(),
    }
    for name, x in inputs.items():
        assert tiny_codec.compress(x, quality=55) == expected, name


def test_grayscale_tensors_and_arrays_stay_grayscale(tiny_codec):
    gray = smooth_image(23, 31, seed=4, channels=1)
    expected = tiny_codec.compress(gray, quality=45)
    t = torch.from_numpy(gray)
    for x in (t, t[None], t.float() / 255, (t.float() / 255)[None], gray / 255.0, (gray / 255.0)[:, :, None]):
        assert tiny_codec.compress(x, quality=45) == expected
    assert tiny_codec.decompress(expected).mode == "L"


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(4, 4, dtype=torch.int64), "uint8, or float"),
    (torch.zeros(4, 4, dtype=torch.bool), "uint8, or float"),
    (torch.zeros(8, 8, 3), r"C×H×W.*permute"),
    (torch.zeros(5, 8, 8), "C×H×W"),
    (torch.zeros(8), "C×H×W"),
    (torch.zeros(3, 0, 8), "empty"),
    (np.zeros((4, 4), np.int64), "uint8, or float"),
    (np.zeros((4, 4), bool), "uint8, or float"),
])
def test_unusable_tensors_and_arrays_say_why(tiny_codec, bad, match):
    with pytest.raises(ImageError, match=match):
        tiny_codec.compress(bad)


@pytest.mark.parametrize("batch", [torch.zeros(2, 3, 8, 8), np.zeros((2, 8, 8, 3), np.uint8)])
def test_a_batch_given_as_one_image_points_to_encode_batch(tiny_codec, batch):
    with pytest.raises(ImageError, match="Codec.encode_batch"):
        tiny_codec.compress(batch)


def test_non_tensor_inputs_do_not_need_torch():
    code = ("import sys; sys.modules['torch'] = None; import numpy as np; from PIL import Image; "
            "from vaecodec.image import load_pixels; "
            "a = load_pixels(np.full((3, 5, 3), 0.5)); b = load_pixels(Image.new('L', (4, 2))); "
            "print(a.dtype, a.shape, a[0, 0, 0], b.shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "uint8 (3, 5, 3) 128 (2, 4)"


# ----- batches ---------------------------------------------------------------------------------------
def test_encode_batch_equals_encode_per_image(tiny_codec, tmp_path):
    rgb, gray = smooth_image(17, 29, seed=5), smooth_image(40, 9, seed=6, channels=1)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    images = [rgb, Image.fromarray(gray), _as_chw(rgb).float() / 255, tmp_path / "a.png", gray / 255.0]
    batch = tiny_codec.encode_batch(images, quality=65)
    assert batch == [tiny_codec.encode(x, quality=65) for x in images]
    assert [e.header.mode for e in batch] == ["RGB", "L", "RGB", "RGB", "L"]


def test_a_4d_batch_is_n_images(tiny_codec):
    imgs = np.stack([smooth_image(16, 24, seed=s) for s in range(3)])  # N×H×W×C
    per_image = [tiny_codec.compress(i, quality=30) for i in imgs]
    assert [e.data for e in tiny_codec.encode_batch(imgs, quality=30)] == per_image
    nchw = torch.from_numpy(imgs).permute(0, 3, 1, 2)
    assert [e.data for e in tiny_codec.encode_batch(nchw, quality=30)] == per_image
    assert [e.data for e in tiny_codec.encode_batch(nchw.float() / 255, quality=30)] == per_image


def test_encode_batch_with_a_target_size(tiny_codec):
    imgs = [smooth_image(16, 16, seed=s) for s in range(2)]
    target = tiny_codec.encode(imgs[0], quality=50).bpp
    assert tiny_codec.encode_batch(imgs, target_bpp=target) == [tiny_codec.encode(i, target_bpp=target) for i in imgs]


def test_a_bad_image_fails_the_batch_before_any_coding(tiny_codec, monkeypatch):
    calls = []
    monkeypatch.setattr(Codec, "_analyze", lambda self, pixels: calls.append(pixels))
    with pytest.raises(ImageError, match="mode"):
        tiny_codec.encode_batch([smooth_image(8, 8), Image.new("CMYK", (8, 8))])
    with pytest.raises(ValueError, match="quality"):
        tiny_codec.encode_batch([smooth_image(8, 8)], quality=0)
    assert calls == []


@pytest.mark.parametrize("single", [smooth_image(8, 8), torch.zeros(3, 8, 8), "photo.png", Image.new("RGB", (4, 4))])
def test_encode_batch_of_a_single_image_says_so(tiny_codec, single):
    with pytest.raises(ImageError, match="use Codec.encode for a single image"):
        tiny_codec.encode_batch(single)


def test_decode_batch_equals_decompress_array_per_file(tiny_codec, tmp_path):
    files = [tiny_codec.compress(smooth_image(12 + s, 20, seed=s, channels=1 + 2 * (s % 2))) for s in range(3)]
    (tmp_path / "f.vae").write_bytes(files[0])
    out = tiny_codec.decode_batch([files[0], bytearray(files[1]), memoryview(files[2]), tmp_path / "f.vae"])
    expected = [tiny_codec.decompress_array(f) for f in files + files[:1]]
    assert len(out) == 4 and all(np.array_equal(a, b) for a, b in zip(out, expected))
    assert tiny_codec.decode_batch([]) == []
    with pytest.raises(TypeError, match="decompress_array for one"):
        tiny_codec.decode_batch(files[0])


# ----- .vae paths ------------------------------------------------------------------------------------
def test_decompress_takes_the_path_of_a_vae_file(tiny_codec, rgb_image, tmp_path, monkeypatch):
    data = tiny_codec.compress(rgb_image)
    path = tmp_path / "x.vae"
    path.write_bytes(data)
    expected = tiny_codec.decompress_array(data)
    for source in (path, str(path), bytearray(data), memoryview(data)):
        assert np.array_equal(tiny_codec.decompress_array(source), expected)
        assert np.array_equal(np.asarray(tiny_codec.decompress(source)), expected)
    monkeypatch.setattr(vaecodec.api, "_default", tiny_codec)
    assert np.array_equal(np.asarray(vaecodec.decompress(str(path))), expected)
    with pytest.raises(FileNotFoundError):
        tiny_codec.decompress(tmp_path / "missing.vae")


# ----- a readable Encoded ----------------------------------------------------------------------------
def test_encoded_repr_is_short_and_equality_is_unchanged(tiny_codec, rgb_image):
    enc = tiny_codec.encode(rgb_image, quality=75)
    assert repr(enc) == f"Encoded({len(enc.data)} bytes, {enc.bpp:.4f} bpp, quality=75, model=tiny-test)"
    assert enc == tiny_codec.encode(rgb_image, quality=75)
    assert enc != tiny_codec.encode(rgb_image, quality=74)


# ----- a folder's images: one rule for training, evaluation, benchmarks ---------------------------
def test_a_folder_lists_its_images_by_suffix_whatever_the_case(tmp_path):
    from vaecodec.bench import collect_images
    from vaecodec.image import image_files

    for name in ["b.PNG", "a.jpg", "c.pgm", "notes.txt", "d.vae"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "e.png").mkdir()  # a folder named like an image is not one
    listed = [p.name for p in image_files(tmp_path)]
    assert listed == ["a.jpg", "b.PNG", "c.pgm"]
    assert [p.name for p in collect_images([tmp_path])] == listed
