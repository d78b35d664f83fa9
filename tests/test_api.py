"""The public API on the tiny model: round trips, modes, errors, determinism."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

import vaecodec
from vaecodec import entropy
from vaecodec.api import Codec, _header_check
from vaecodec.container import Header, pack, unpack
from vaecodec.errors import FormatError, ImageError, ModelMismatchError

from conftest import make_tiny_model, smooth_image


@pytest.mark.parametrize("shape", [(1, 1, 3), (17, 31, 3), (65, 257, 3), (1, 1), (33, 20)])
def test_round_trip_keeps_size_and_mode(any_tiny_codec, shape):
    img = smooth_image(shape[0], shape[1], channels=shape[2] if len(shape) == 3 else 1)
    data = any_tiny_codec.compress(img, quality=60)
    out = any_tiny_codec.decompress(data)
    assert out.size == (shape[1], shape[0])
    assert out.mode == ("RGB" if len(shape) == 3 else "L")
    assert vaecodec.read_header(data).num_bytes == len(data)


def test_decoder_recovers_exactly_what_the_encoder_predicted(any_tiny_codec, rgb_image):
    """pop(push(x)) gives the encoder's own ŷ, bit for bit, and the check value closes the stack."""
    from vaecodec.image import to_model_input

    codec, m = any_tiny_codec, any_tiny_codec.model
    latents = codec.latents.analyze(to_model_input(rgb_image, 64))
    for quality in (1, 50, 100):
        coder = entropy.new_coder()
        code = codec.latents.push(coder, latents, quality, keep_y_hat=True)
        y_hat = codec.latents.pop(entropy.new_coder(coder.get_compressed()), rgb_image.shape[0], rgb_image.shape[1], quality)
        assert torch.equal(y_hat, code.y_hat)
        header, words = unpack(codec.compress(rgb_image, quality=quality))
        coder = entropy.new_coder(words)
        seal = entropy.pop_check(coder)  # the content check tops the stack
        popped = codec.latents.pop_code(coder, header.height, header.width, quality)
        assert torch.equal(popped.y_hat, code.y_hat)
        assert entropy.pop_check(coder) == _header_check(header) and coder.is_empty()
        assert popped.symbols_crc == code.symbols_crc == seal
        pixels = np.asarray(codec.decompress(pack(header, words)))
        h, w = rgb_image.shape[:2]
        assert np.array_equal(pixels, m.synthesize(code.y_hat)[:h, :w])


def test_checkerboard_context_changes_the_coding_distribution():
    """The tiny checkerboard model's context is live: the non-anchors' parameters differ from the hyper's, and
    equal the whole grid's context and entropy-parameter programs at every position of the pass."""
    from vaecodec.image import to_model_input

    codec = Codec(make_tiny_model(kind="checkerboard"))
    m = codec.model
    lat = codec.latents.analyze(to_model_input(smooth_image(64, 80), 64))
    hyper = m.hyper_decode(lat.z_symbols)
    anchor = m.anchor_mask(lat.y.shape)
    q = m.quantize(lat.y, m.context_params(hyper, None, anchor), 80)
    y_hat_a = m.dequantize(q, m.context_params(hyper, None, anchor), 80) * anchor
    with_ctx = m.context_params(hyper, y_hat_a, ~anchor)
    without = m.context_params(hyper, None, ~anchor)
    assert not torch.equal(with_ctx.mean, without.mean)
    p = torch.cat([hyper.mean, hyper.log2_scale], 1)
    for ctx, got, where in [(m.context.run(y_hat_a), with_ctx, ~anchor),
                            (torch.zeros_like(m.context.run(y_hat_a)), m.context_params(hyper, None, anchor), anchor)]:
        full = p + m.entropy_parameters.run(torch.cat([p, ctx], 1))
        mask = where.expand_as(got.mean)
        assert torch.equal(got.mean[mask], full.chunk(2, 1)[0][mask])
        assert torch.equal(got.log2_scale[mask], full.chunk(2, 1)[1][mask])


def test_inputs_as_array_pil_path_and_bytes_agree(tiny_codec, rgb_image, tmp_path):
    path = tmp_path / "in.png"
    Image.fromarray(rgb_image).save(path)
    outs = {tiny_codec.compress(x, quality=40) for x in
            (rgb_image, Image.fromarray(rgb_image), path, str(path), path.read_bytes())}
    assert len(outs) == 1


def test_same_input_gives_identical_bytes_across_codecs(rgb_image):
    a = Codec(make_tiny_model()).compress(rgb_image, quality=30)
    b = Codec(make_tiny_model()).compress(rgb_image, quality=30)
    assert a == b


def test_encoded_reports_honest_size_and_information(tiny_codec, rgb_image):
    enc = tiny_codec.encode(rgb_image, quality=80)
    assert enc.num_bytes == len(enc.data) and enc.bpp == 8 * len(enc.data) / (40 * 56)
    assert 0 < enc.information_bits <= 8 * len(enc.data)


def test_target_bpp_picks_the_highest_quality_that_fits(tiny_codec, rgb_image):
    sizes = {q: len(tiny_codec.compress(rgb_image, quality=q)) for q in range(1, 101)}
    target = 8 * sizes[60] / (40 * 56) + 1e-9
    enc = tiny_codec.encode(rgb_image, target_bpp=target)
    assert enc.bpp <= target
    assert all(8 * sizes[q] / (40 * 56) > target for q in range(enc.header.quality + 1, 101))


def test_unreachable_target_bpp_is_a_clear_error(tiny_codec, rgb_image):
    with pytest.raises(vaecodec.VaecodecError, match="cannot reach"):
        tiny_codec.encode(rgb_image, target_bpp=1e-6)


@pytest.mark.parametrize("quality", [0, 101, 50.5, "75"])
def test_bad_quality_is_a_value_error(tiny_codec, rgb_image, quality):
    with pytest.raises(ValueError):
        tiny_codec.compress(rgb_image, quality=quality)


@pytest.mark.parametrize("mode", ["CMYK", "I;16", "I", "F", "YCbCr"])
def test_lossy_conversions_are_refused(tiny_codec, mode):
    im = Image.new(mode, (8, 8))
    with pytest.raises(ImageError):
        tiny_codec.compress(im)


def test_palette_and_bilevel_images_convert_without_loss(tiny_codec):
    rgb = Image.fromarray(smooth_image(16, 16))
    pal = rgb.convert("P")
    assert tiny_codec.decompress(tiny_codec.compress(pal)).mode == "RGB"
    bw = Image.fromarray(smooth_image(16, 16, channels=1)).convert("1")
    assert tiny_codec.decompress(tiny_codec.compress(bw)).mode == "L"
    pal.info["transparency"] = int(np.asarray(pal)[0, 0])  # an index the image uses: real transparency
    out = tiny_codec.decompress(tiny_codec.compress(pal))
    assert out.mode == "RGBA"
    assert np.array_equal(np.asarray(out)[:, :, 3], np.asarray(pal.convert("RGBA"))[:, :, 3])


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint16), np.zeros((4, 4, 5), np.uint8),
                                 np.zeros((0, 4, 3), np.uint8), b"not an image", 3.5])
def test_bad_arrays_and_objects_are_image_errors(tiny_codec, bad):
    with pytest.raises(ImageError):
        tiny_codec.compress(bad)


def test_a_file_from_other_weights_is_refused(tiny_codec, rgb_image):
    other = Codec(make_tiny_model(seed=1))
    with pytest.raises(ModelMismatchError):
        tiny_codec.decompress(other.compress(rgb_image))


def test_every_truncation_and_bit_flip_of_a_real_file_is_a_format_error(tiny_codec):
    data = tiny_codec.compress(smooth_image(9, 13), quality=50)
    for n in range(len(data)):
        with pytest.raises(FormatError):
            tiny_codec.decompress(data[:n])
    for i in range(len(data) * 8):
        bad = bytearray(data)
        bad[i // 8] ^= 1 << (i % 8)
        with pytest.raises(FormatError):
            tiny_codec.decompress(bytes(bad))


def test_decoded_png_round_trips_through_pillow(tiny_codec, rgb_image):
    buf = io.BytesIO()
    tiny_codec.decompress(tiny_codec.compress(rgb_image)).save(buf, "PNG")
    assert Image.open(buf).size == (56, 40)


def _repack(data: bytes, **changes) -> bytes:
    header, words = unpack(data)
    fields = {k: v for k, v in header.__dict__.items() if k not in ("num_words", "num_bytes")}
    fields.update(changes)
    words = words[:changes.pop("keep_words")] if "keep_words" in changes else words
    fields.pop("keep_words", None)
    return pack(Header(**fields), words)


@pytest.mark.parametrize("changes", [dict(width=57), dict(height=41), dict(mode="L"), dict(quality=51),
                                     dict(keep_words=1), dict(keep_words=-1)])
def test_a_payload_under_another_header_is_refused(tiny_codec, rgb_image, changes):
    # The file's CRC is valid here (repacked); only the check value inside the stream can tell.
    data = tiny_codec.compress(rgb_image, quality=50)
    with pytest.raises(FormatError):
        tiny_codec.decompress(_repack(data, **changes))


def _png16(path, channels=3):
    import struct
    import zlib

    a = np.random.default_rng(0).integers(0, 65535, (8, 8 * channels)).astype(">u2")

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    raw = b"".join(b"\0" + row.tobytes() for row in a)
    color = {1: 0, 3: 2}[channels]
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 16, color, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_pngs_are_refused_not_truncated(tiny_codec, tmp_path, channels):
    with pytest.raises(ImageError, match="bit"):
        tiny_codec.compress(_png16(tmp_path / "deep.png", channels))


def test_colour_key_transparency_is_kept_when_a_pixel_uses_it(tiny_codec):
    px = smooth_image(8, 8)
    im = Image.fromarray(px)
    im.info["transparency"] = tuple(int(v) for v in px[3, 4])
    out = tiny_codec.decompress(tiny_codec.compress(im))
    assert out.mode == "RGBA" and np.array_equal(np.asarray(out)[:, :, 3], np.asarray(im.convert("RGBA"))[:, :, 3])
    im.info["transparency"] = (1, 2, 3) if not (px == (1, 2, 3)).all(axis=2).any() else (4, 5, 6)
    assert tiny_codec.compress(im) == tiny_codec.compress(px)  # the key colour is unused: opaque


@pytest.mark.parametrize("mode", ["RGBA", "LA", "RGBa", "PA"])
def test_opaque_alpha_is_coded_as_rgb_or_gray_and_real_alpha_kept(tiny_codec, mode):
    gray = mode in ("LA",)
    px = smooth_image(12, 20, channels=1 if gray else 3)
    base = Image.fromarray(px)
    opaque = base.convert("RGBA" if not gray else "LA")
    if mode in ("RGBa", "PA"):
        opaque = opaque.convert(mode)
        px = np.asarray(opaque.convert("RGB"))
    assert tiny_codec.compress(opaque) == tiny_codec.compress(px)
    assert tiny_codec.decompress(tiny_codec.compress(opaque)).mode == ("L" if gray else "RGB")
    holes = np.array(opaque.convert("LA" if gray else "RGBA"))
    holes[0, 0, -1] = 254
    out = tiny_codec.decompress(tiny_codec.compress(Image.fromarray(holes, mode="LA" if gray else "RGBA")))
    assert out.mode == ("LA" if gray else "RGBA")
    assert np.array_equal(np.asarray(out)[:, :, -1], holes[:, :, -1])


def test_multi_frame_inputs_need_a_chosen_frame(tiny_codec, tmp_path):
    frames = [Image.fromarray(smooth_image(16, 16, seed=s)).convert("P") for s in range(3)]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=50)
    with pytest.raises(ImageError, match="3 frames"):
        tiny_codec.compress(gif)
    with Image.open(gif) as im:
        im.seek(2)
        second = np.asarray(im.convert("RGB"))
    assert tiny_codec.compress(gif, frame=2) == tiny_codec.compress(second)
    with pytest.raises(ImageError, match="does not exist"):
        tiny_codec.compress(gif, frame=3)


def test_oversized_images_are_refused_before_any_work(tiny_codec):
    with pytest.raises(ImageError, match="too large"):
        tiny_codec.compress(np.zeros((1, 70000), np.uint8))


def test_a_damaged_model_file_is_a_model_file_error(tmp_path):
    from vaecodec.errors import ModelFileError

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelFileError):
        Codec(bad)
    with pytest.raises(ModelFileError):
        Codec(tmp_path / "missing.pt")


def test_files_of_an_earlier_shipped_model_still_decode(monkeypatch):
    """When the default model changes, files written by the previous shipped model keep decoding."""
    from vaecodec import api

    old, new = make_tiny_model(model_id="tiny-old"), make_tiny_model(kind="checkerboard", model_id="tiny-new")
    monkeypatch.setattr(api, "SHIPPED_MODELS", {"tiny-old": "old.pt", "tiny-new": "new.pt"})
    monkeypatch.setattr(api, "SHIPPED_MODEL", "new.pt")
    monkeypatch.setattr(api, "_load_shipped", lambda name: {"old.pt": old, "new.pt": new}[name])
    img = smooth_image(40, 56)
    old_file = Codec(old).compress(img, quality=50)
    shipped = Codec()
    assert shipped.model is new
    assert np.array_equal(shipped.decompress_array(old_file), Codec(old).decompress_array(old_file))
    assert vaecodec.read_header(shipped.compress(img)).model_id == "tiny-new"
    with pytest.raises(ModelMismatchError):  # an explicitly chosen model stays strict
        Codec(new).decompress_array(old_file)
    other = make_tiny_model(seed=5, model_id="tiny-old")  # same id, other weights: refused
    with pytest.raises(ModelMismatchError):
        shipped.decompress_array(Codec(other).compress(img, quality=50))


def test_sampling_from_the_prior_is_seeded_and_sized(any_tiny_codec):
    """Decoding random bits is sampling: the right size, deterministic per seed, different across seeds."""
    a = any_tiny_codec.sample(40, 24, quality=50, seed=1)
    assert a.size == (40, 24) and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(any_tiny_codec.sample(40, 24, quality=50, seed=1)))
    assert not np.array_equal(np.asarray(a), np.asarray(any_tiny_codec.sample(40, 24, quality=50, seed=2)))
    with pytest.raises(ValueError):
        any_tiny_codec.sample(0, 10)


@pytest.mark.parametrize("size", [(8192, 8192), (65535, 1024)])
def test_a_tiny_file_declaring_a_huge_image_is_refused_at_once(any_tiny_codec, size):
    """A decompression bomb: valid header and CRC, one word of payload, 67 Mpixel declared."""
    import time
    from dataclasses import replace

    header, _ = unpack(any_tiny_codec.compress(smooth_image(16, 16), quality=50))
    words = np.array([0x9E3779B9], np.uint32)
    forged = pack(replace(header, width=size[0], height=size[1], num_words=1), words)
    t = time.perf_counter()
    with pytest.raises(FormatError, match="too short"):
        any_tiny_codec.decompress_array(forged)
    assert time.perf_counter() - t < 5, "refused, but only after running the decoder"


def test_a_codec_goes_to_worker_processes(any_tiny_codec, tmp_path):
    """The README's process-pool example: a pickled codec gives the same files as the original."""
    import concurrent.futures
    import multiprocessing
    import pickle

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(smooth_image(20 + i, 30, seed=i)).save(paths[-1])
    clone = pickle.loads(pickle.dumps(any_tiny_codec))
    assert clone.model.weight_hash == any_tiny_codec.model.weight_hash
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=torch.set_num_threads, initargs=(1,)) as pool:  # as README
        files = list(pool.map(any_tiny_codec.compress, paths))
    assert files == [any_tiny_codec.compress(p) for p in paths]


def test_the_channel_context_shapes_the_bits():
    """A channel model's slices code with their corrected parameters: zeroing the branch changes the file."""
    from conftest import make_tiny_model

    img = smooth_image(48, 64, seed=5)
    model = make_tiny_model(seed=2, kind="channel")
    weights = {k: (v * 0 if k.startswith("channel_parameters") and k.endswith(("4.weight", "4.bias")) else v)
               for k, v in model.weights.items()}
    plain = type(model)(model.config, weights, model.tables, "tiny-channel-zero")
    a, b = Codec(model).compress(img, quality=50), Codec(plain).compress(img, quality=50)
    assert a != b
    assert np.asarray(Codec(model).decompress(a)).shape == np.asarray(Codec(plain).decompress(b)).shape == img.shape
