"""Lossless mode: exact round trips, the rate against the model's information, hostile files."""

import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import kodak_crop, make_tiny_pixel_model, smooth_image
from vaecodec import FormatError, ModelMismatchError, read_header
from vaecodec.api import Codec
from vaecodec.container import pack, unpack
from vaecodec.entropy import new_coder
from vaecodec.lossless_codec import (TILE, BitsBackPixelCodec, PixelCodec, pixel_codec, pop_image, push_image,
                                     required_bits)
from vaecodec.pixel_model import gather_context, padded_tile


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 1), (3, 7, 3), (17, 5), (2, 9, 3), (9, 2)])
def test_round_trip_is_exact_for_odd_sizes_and_modes(any_lossless_codec, shape):
    rng = np.random.default_rng(sum(shape))
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    data = any_lossless_codec.compress(img, lossless=True)
    h = read_header(data)
    assert (h.coding, h.quality, h.mode, h.width, h.height) == ("lossless", 100, "L" if len(shape) == 2 else "RGB",
                                                                  shape[1], shape[0])
    assert np.array_equal(any_lossless_codec.decompress_array(data), img)


@pytest.mark.parametrize("shape", [(TILE + 3, 2, 3), (2, TILE + 5), (TILE + 1, TILE + 2, 1)])
def test_round_trip_is_exact_across_tiles(any_lossless_codec, shape):
    img = smooth_image(shape[0], shape[1], seed=3, channels=shape[2] if len(shape) == 3 else 1)
    data = any_lossless_codec.compress(img, lossless=True)
    assert np.array_equal(any_lossless_codec.decompress_array(data), img)


def test_saturated_and_flat_images_round_trip(any_lossless_codec):
    for value in (0, 255, 77):
        img = np.full((6, 11, 3), value, np.uint8)
        assert np.array_equal(any_lossless_codec.decompress_array(any_lossless_codec.compress(img, lossless=True)), img)


def test_file_size_is_the_information_plus_documented_overheads(any_lossless_codec):
    img = smooth_image(48, 40, seed=5)
    enc = any_lossless_codec.encode(img, lossless=True)
    header, words = unpack(enc.data)
    header_bytes = enc.num_bytes - 4 * words.size
    payload_bits = 32 * words.size
    # ANS: at most 64 bits of state plus a partly used word over Σ −log2 p (check value included).
    assert enc.information_bits - 32 <= payload_bits <= enc.information_bits + 96
    assert header_bytes == enc.num_bytes - 4 * header.num_words


def test_encoder_and_decoder_compute_the_same_parameters_whatever_the_batch(tiny_pixel_model):
    """The coder's premise: a sub-pixel's (mean, scale) do not depend on which others are computed with it."""
    img = smooth_image(9, 13, seed=2).astype(np.int32)
    buf = padded_tile(img, 9, 13, 3)
    rows, cols = np.divmod(np.arange(9 * 13), 13)
    for k in range(3):
        ctx, ref = gather_context(buf, rows, cols, k)
        mean, scale = tiny_pixel_model.params(ctx, ref, 3, k)
        for i in (0, 5, 60, 116):
            m1, s1 = tiny_pixel_model.params(ctx[i:i + 1], ref[i:i + 1], 3, k)
            assert m1[0] == mean[i] and s1[0] == scale[i]


@pytest.mark.parametrize("kind", ["laplace", "mixture"])
def test_push_pop_codec_leaves_the_stack_as_it_found_it(tiny_pixel_model, tiny_mixture_model, kind):
    """What lies beneath is untouched; bits-back borrows from it and gives it back."""
    model = tiny_pixel_model if kind == "laplace" else tiny_mixture_model
    codec = pixel_codec(model)
    assert isinstance(codec, PixelCodec if kind == "laplace" else BitsBackPixelCodec)
    coder = new_coder()
    coder.encode_reverse(np.array([1, 2, 3], np.int32), __import__("constriction").stream.model.Uniform(8))
    below = coder.get_compressed()
    img = smooth_image(20, 30, seed=4)
    push_image(coder, img, codec)
    assert codec.information_bits > 0
    out = pop_image(coder, 20, 30, 3, pixel_codec(model))
    assert np.array_equal(out, img) and np.array_equal(coder.get_compressed(), below)


def test_mixture_parameters_and_posteriors_do_not_depend_on_the_batch(tiny_mixture_model):
    m = tiny_mixture_model
    img = smooth_image(9, 13, seed=2).astype(np.int32)
    buf = padded_tile(img, 9, 13, 3)
    rows, cols = np.divmod(np.arange(9 * 13), 13)
    for k in range(3):
        ctx, ref = gather_context(buf, rows, cols, k)
        params = m.mixture_params(ctx, ref, 3, k)
        levels = img[rows, cols, k]
        prior, post = m.prior_weights(params), m.posterior_weights(params, levels)
        assert prior.dtype == post.dtype == np.int64 and prior.min() >= 1 and post.min() >= 1
        assert np.all(prior.max(axis=1) == 2**20) and np.all(post.max(axis=1) == 2**20)
        for i in (0, 5, 60, 116):
            one = m.mixture_params(ctx[i:i + 1], ref[i:i + 1], 3, k)
            assert np.array_equal(one.mean[0], params.mean[i])
            assert np.array_equal(m.posterior_weights(one, levels[i:i + 1])[0], post[i])
    # The posterior leans towards the component whose mean is nearest the grey level.
    near = m.posterior_weights(params, np.round(params.mean[:, 0]).astype(np.int32))
    far = m.posterior_weights(params, np.round(params.mean[:, 0]).astype(np.int32) + 40)
    assert np.mean(near[:, 0] / near.sum(1)) > np.mean(far[:, 0] / far.sum(1))


def test_corrupted_payload_is_refused(any_lossless_codec):
    data = bytearray(any_lossless_codec.compress(smooth_image(30, 30, seed=6), lossless=True))
    header, words = unpack(bytes(data))
    rng = np.random.default_rng(0)
    for _ in range(10):
        w = words.copy()
        w[rng.integers(0, w.size - 1)] ^= np.uint32(1 << int(rng.integers(0, 32)))
        if w[-1] == 0:
            continue
        with pytest.raises(FormatError):
            any_lossless_codec.decompress(pack(header, w))


def test_truncated_file_is_refused(any_lossless_codec):
    data = any_lossless_codec.compress(smooth_image(30, 30, seed=7), lossless=True)
    for cut in (1, 5, len(data) // 2):
        with pytest.raises(FormatError):
            any_lossless_codec.decompress(data[:-cut])
    header, words = unpack(data)
    with pytest.raises(FormatError):  # re-CRC'd, cut to half its words
        any_lossless_codec.decompress(pack(header, words[words.size // 2:]))


def test_forged_tiny_file_declaring_a_huge_image_is_refused_at_once(any_lossless_codec):
    data = any_lossless_codec.compress(np.zeros((4, 4, 3), np.uint8), lossless=True)
    header = unpack(data)[0]
    words = np.random.default_rng(0).integers(1, 2**32, 8, dtype=np.uint32)
    for w, h in ((8192, 8192), (65535, 1024), (1024, 65535), (300, 300)):
        from dataclasses import replace
        forged = pack(replace(header, width=w, height=h), words)
        assert len(forged) < 80
        start = time.process_time()
        with pytest.raises(FormatError, match="too short"):
            any_lossless_codec.decompress(forged)
        assert time.process_time() - start < 1.0


def test_payload_under_another_header_is_refused(tiny_codec):
    from dataclasses import replace
    data = tiny_codec.compress(smooth_image(12, 16, seed=8), lossless=True)
    header, words = unpack(data)
    with pytest.raises(FormatError):
        tiny_codec.decompress(pack(replace(header, width=12, height=16), words))


def test_file_of_another_pixel_model_is_refused(tiny_codec, tiny_model):
    data = tiny_codec.compress(smooth_image(8, 8, seed=9), lossless=True)
    other = Codec(tiny_model, make_tiny_pixel_model(seed=1, model_id="px-other"))
    with pytest.raises(ModelMismatchError, match="pixel model"):
        other.decompress(data)


def test_lossless_with_a_target_size_is_refused(tiny_codec):
    with pytest.raises(ValueError, match="lossless"):
        tiny_codec.compress(smooth_image(8, 8), lossless=True, target_bpp=2.0)


def test_lossless_header_must_say_quality_100(tiny_codec):
    data = bytearray(tiny_codec.compress(smooth_image(8, 8), lossless=True))
    data[6] = 50
    data[-4:] = struct.pack("<I", zlib.crc32(bytes(data[:-4])))
    with pytest.raises(FormatError, match="lossless"):
        read_header(bytes(data))


def test_metadata_rides_beside_lossless_pixels(tiny_codec):
    img = Image.fromarray(smooth_image(10, 12, seed=10))
    exif = Image.Exif()
    exif[0x0112] = 6
    img.info["exif"] = exif.tobytes()
    buf = __import__("io").BytesIO()
    img.save(buf, "PNG", exif=img.info["exif"])
    out = tiny_codec.decompress(tiny_codec.compress(buf.getvalue(), lossless=True))
    assert np.array_equal(np.asarray(out), np.asarray(img))
    assert Image.Exif().load(out.info["exif"]) if False else out.getexif()[0x0112] == 6


def test_codec_with_pixel_model_pickles(tiny_codec):
    import pickle
    img = smooth_image(8, 9, seed=11)
    again = pickle.loads(pickle.dumps(tiny_codec))
    assert again.compress(img, lossless=True) == tiny_codec.compress(img, lossless=True)


def test_required_bits_bound_holds_for_a_flat_image(any_lossless_codec):
    img = np.zeros((64, 64, 3), np.uint8)
    enc = any_lossless_codec.encode(img, lossless=True)
    assert 32 * unpack(enc.data)[1].size >= required_bits(64, 64, 3)


def test_shipped_pixel_model_beats_png_on_a_photo(shipped_codec):
    """The real behaviour: a crop of a Kodak photo, exactly back, in fewer bytes than PNG's best."""
    img = kodak_crop(200, 150, 96, 80)
    data = shipped_codec.compress(img, lossless=True)
    assert np.array_equal(shipped_codec.decompress_array(data), img)
    buf = __import__("io").BytesIO()
    Image.fromarray(img).save(buf, "PNG", optimize=True)
    assert len(data) < 0.85 * len(buf.getvalue())


def test_new_lossless_files_use_the_mixture_and_earlier_ones_still_decode(shipped_codec):
    """0.2's lossless files name the single-Laplace pixel model; a default codec finds it by that id."""
    from vaecodec.api import LOSSLESS_MODEL_ID

    img = kodak_crop(40, 32, 120, 60)
    earlier = Codec(pixel_model=shipped_codec._shipped_pixel_model("px12-h64"))
    old = earlier.compress(img, lossless=True)
    assert read_header(old).model_id == "px12-h64"
    assert np.array_equal(shipped_codec.decompress_array(old), img)
    new = shipped_codec.compress(img, lossless=True)
    assert read_header(new).model_id == LOSSLESS_MODEL_ID and shipped_codec.lossless_model.components == 3
    assert np.array_equal(shipped_codec.decompress_array(new), img)
    with pytest.raises(ModelMismatchError):  # a codec told to use one pixel model uses that one
        earlier.decompress_array(new)


@pytest.mark.parametrize("shape", [(2, 190, 3), (7, 111, 3)])
def test_bits_back_files_whose_stack_dips_below_its_start_still_decode(shipped_codec, shape):
    """Saturated images where drawn components give back more than their pixels cost partway through a tile:
    without the cushion beneath each tile, the stack fell below its floor and a valid file was refused."""
    img = np.full(shape, 255, np.uint8)
    assert np.array_equal(shipped_codec.decompress_array(shipped_codec.compress(img, lossless=True)), img)


def test_a_pickled_default_codec_keeps_choosing_the_shipped_pixel_models():
    import pickle

    from vaecodec.api import LOSSLESS_MODEL_ID

    codec = Codec()
    codec.pixel_model  # noqa: B018 - the alpha planes' model, loaded by any lossy RGBA file
    clone = pickle.loads(pickle.dumps(codec))
    assert clone.lossless_model.model_id == LOSSLESS_MODEL_ID
    img = kodak_crop(10, 10, 24, 16)
    assert clone.compress(img, lossless=True) == codec.compress(img, lossless=True)


def test_cli_round_trip_is_exact(tmp_path):
    from click.testing import CliRunner

    from vaecodec.cli import cli

    img = smooth_image(30, 45, seed=12)
    Image.fromarray(img).save(tmp_path / "in.png")
    r = CliRunner().invoke(cli, ["compress", "--lossless", str(tmp_path / "in.png"), "-o", str(tmp_path / "x.vae")])
    assert r.exit_code == 0 and "lossless" in r.output, r.output
    r = CliRunner().invoke(cli, ["info", str(tmp_path / "x.vae")])
    assert "lossless" in r.output
    r = CliRunner().invoke(cli, ["decompress", str(tmp_path / "x.vae"), "-o", str(tmp_path / "out.png")])
    assert r.exit_code == 0, r.output
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), img)


def test_cli_refuses_lossless_with_a_target_size(tmp_path):
    from click.testing import CliRunner

    from vaecodec.cli import cli

    Image.fromarray(smooth_image(8, 8)).save(tmp_path / "in.png")
    r = CliRunner().invoke(cli, ["compress", "--lossless", "--target-bpp", "2", str(tmp_path / "in.png")])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1 and "lossless" in r.output
    assert not (tmp_path / "in.vae").exists()


def test_pillow_saves_and_opens_lossless(tmp_path, monkeypatch, tiny_codec):
    import vaecodec.api

    monkeypatch.setattr(vaecodec.api, "_default", tiny_codec)
    img = smooth_image(21, 13, seed=13)
    Image.fromarray(img).save(tmp_path / "x.vae", lossless=True)
    with Image.open(tmp_path / "x.vae") as im:
        assert im.header.coding == "lossless"
        assert np.array_equal(np.asarray(im), img)


@pytest.mark.parametrize("lossless", [False, True])
@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_plane_round_trips_exactly(any_lossless_codec, mode, lossless):
    colour = smooth_image(19, 23, seed=14, channels=3 if mode == "RGBA" else 1)
    alpha = np.zeros((19, 23), np.uint8)
    alpha[3:15, 4:20] = 255
    alpha[9, 2:22] = np.arange(20) * 12
    px = np.dstack([colour, alpha])
    data = any_lossless_codec.compress(Image.fromarray(px, mode), lossless=lossless, quality=40)
    assert read_header(data).mode == mode
    out = any_lossless_codec.decompress(data)
    assert out.mode == mode and np.array_equal(np.asarray(out)[:, :, -1], alpha)
    if lossless:
        assert np.array_equal(np.asarray(out), px)
    else:  # the colour is the colour of the same image coded without alpha
        assert np.array_equal(np.asarray(out)[:, :, :-1].squeeze(), any_lossless_codec.decompress_array(
            any_lossless_codec.compress(colour, quality=40)))


def test_a_target_size_codes_alpha_the_same_prepared_or_not(tiny_codec, monkeypatch):
    """A target size tries several files; an alpha plane too large to hold prepared is modelled per try, same bytes."""
    from vaecodec import api

    alpha = np.tile((np.arange(30) * 8).astype(np.uint8), (20, 1))
    px = np.dstack([smooth_image(20, 30, seed=16), alpha])
    prepared = tiny_codec.compress(px, target_bpp=12.0)
    monkeypatch.setattr(api, "_PREPARED_ALPHA_LIMIT", 0)
    assert tiny_codec.compress(px, target_bpp=12.0) == prepared
    assert np.array_equal(tiny_codec.decompress_array(prepared)[:, :, 3], alpha)


def test_alpha_files_refuse_a_truncated_alpha_plane(tiny_codec):
    px = np.dstack([smooth_image(12, 12, seed=15), np.full((12, 12), 100, np.uint8)])
    data = tiny_codec.compress(px, quality=30)
    header, words = unpack(data)
    with pytest.raises(FormatError):
        tiny_codec.decompress(pack(header, words[1:]))


def test_bench_lossless_measures_every_codec_exactly(tmp_path):
    from click.testing import CliRunner

    from vaecodec.cli import cli

    for i in range(2):
        Image.fromarray(smooth_image(24, 32, seed=20 + i)).save(tmp_path / f"{i}.png")
    r = CliRunner().invoke(cli, ["bench", "--lossless", str(tmp_path / "0.png"), str(tmp_path / "1.png"),
                                 "--codecs", "vaecodec,png,webp", "-o", str(tmp_path / "r.json"),
                                 "--markdown", str(tmp_path / "r.md")])
    assert r.exit_code == 0, r.output
    import json
    d = json.loads((tmp_path / "r.json").read_text())
    assert {row["codec"] for row in d["summary"]} == {"vaecodec", "png", "webp"}
    assert all(row["exact"] and row["images"] == 2 and row["bpsp"] > 0 for row in d["summary"])
    png = next(m for m in d["measurements"] if m["codec"] == "png" and m["image"] == "0.png")
    buf = __import__("io").BytesIO()
    Image.open(tmp_path / "0.png").save(buf, "PNG", optimize=True)
    assert png["num_bytes"] == len(buf.getvalue())  # rate from the bytes the codec wrote
    assert "vaecodec" in (tmp_path / "r.md").read_text()


def test_pillow_opens_alpha_files(tmp_path, monkeypatch, tiny_codec):
    import vaecodec.api

    monkeypatch.setattr(vaecodec.api, "_default", tiny_codec)
    px = np.dstack([smooth_image(10, 14, seed=16), np.arange(140, dtype=np.uint8).reshape(10, 14)])
    Image.fromarray(px, "RGBA").save(tmp_path / "a.vae", quality=50)
    with Image.open(tmp_path / "a.vae") as im:
        assert im.mode == "RGBA" and np.array_equal(np.asarray(im)[:, :, 3], px[:, :, 3])
    la = np.dstack([smooth_image(10, 14, seed=17, channels=1), px[:, :, 3]])
    Image.fromarray(la, "LA").save(tmp_path / "b.vae", lossless=True)
    with Image.open(tmp_path / "b.vae") as im:
        assert im.mode == "LA" and np.array_equal(np.asarray(im), la)


def test_content_check_refuses_edits_that_ans_decodes_in_step(tiny_codec, monkeypatch):
    """Raw escape bits decode to another value without desynchronizing ANS (the stack stays in step, so
    the check value under the payload still matches): simulated by changing one decoded latent."""
    import vaecodec.entropy as entropy_module

    data = tiny_codec.compress(smooth_image(16, 16, seed=18), quality=60)
    real = entropy_module.IndexedPmfs.decode
    calls = []

    def one_symbol_off(self, coder, indexes):  # ẑ first, then ŷ: change one latent of ŷ
        out = real(self, coder, indexes)
        calls.append(1)
        if len(calls) == 2:
            out[0] += 1
        return out

    monkeypatch.setattr(entropy_module.IndexedPmfs, "decode", one_symbol_off)
    with pytest.raises(FormatError, match="content check"):
        tiny_codec.decompress(data)


def test_lossy_alpha_read_with_another_pixel_model_is_refused(tiny_codec, tiny_model):
    px = np.dstack([smooth_image(12, 12, seed=19), np.full((12, 12), 90, np.uint8)])
    data = tiny_codec.compress(px, quality=50)
    other = Codec(tiny_model, make_tiny_pixel_model(seed=2, model_id="px-other"))
    with pytest.raises(FormatError, match="pixel model"):
        other.decompress(data)
    assert np.array_equal(other.decompress_array(tiny_codec.compress(px[:, :, :3], quality=50)),
                          tiny_codec.decompress_array(tiny_codec.compress(px[:, :, :3], quality=50)))


def test_version_1_cannot_claim_what_came_with_version_2(tiny_codec):
    from dataclasses import replace
    for image, kw in ((smooth_image(8, 8), dict(lossless=True)),
                      (np.dstack([smooth_image(8, 8), np.full((8, 8), 7, np.uint8)]), dict(quality=50))):
        header, words = unpack(tiny_codec.compress(image, **kw))
        with pytest.raises(FormatError, match="version 1"):
            read_header(pack(replace(header, format_version=1), words))


def test_pillow_refuses_a_lossless_that_is_not_a_bool(tmp_path, monkeypatch, tiny_codec):
    import vaecodec.api

    monkeypatch.setattr(vaecodec.api, "_default", tiny_codec)
    with pytest.raises(TypeError, match="lossless"):
        Image.fromarray(smooth_image(8, 8)).save(tmp_path / "x.vae", lossless="false")


def test_version_1_files_still_decode():
    """vaecodec 0.1's files (format version 1, no content check) decode as before: see test_golden.py."""
    from conftest import DATA
    assert read_header((DATA / "golden.vae").read_bytes()).format_version == 1


def test_cli_pixel_model_option(tmp_path, tiny_pixel_model):
    from click.testing import CliRunner

    from vaecodec.cli import cli

    tiny_pixel_model.save(tmp_path / "px.npz")
    img = smooth_image(12, 17, seed=21)
    Image.fromarray(img).save(tmp_path / "in.png")
    r = CliRunner().invoke(cli, ["compress", "--lossless", str(tmp_path / "in.png"), "--pixel-model",
                                 str(tmp_path / "px.npz")])
    assert r.exit_code == 0, r.output
    assert read_header((tmp_path / "in.vae").read_bytes()).model_id == tiny_pixel_model.model_id
    r = CliRunner().invoke(cli, ["decompress", str(tmp_path / "in.vae"), "-o", str(tmp_path / "a.png")])
    assert r.exit_code == 1 and "pixel model" in r.output  # the shipped pixel model did not write it
    r = CliRunner().invoke(cli, ["decompress", str(tmp_path / "in.vae"), "-o", str(tmp_path / "b.png"),
                                 "--pixel-model", str(tmp_path / "px.npz")])
    assert r.exit_code == 0 and np.array_equal(np.asarray(Image.open(tmp_path / "b.png")), img)
    (tmp_path / "bad.npz").write_bytes(b"not a model")
    r = CliRunner().invoke(cli, ["compress", "--lossless", str(tmp_path / "in.png"), "-o", str(tmp_path / "c.vae"),
                                 "--pixel-model", str(tmp_path / "bad.npz")])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output


def test_the_pixel_models_products_run_on_one_blas_thread(any_lossless_codec, monkeypatch):
    """Coding limits numpy's BLAS to one thread around the MLP (small products: other threads only spin), and
    gives the caller's setting back afterwards."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from vaecodec.pixel_model import _ExactMLP

    def blas_threads() -> set[int]:
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    seen = []
    mlp = _ExactMLP.__call__

    def spy(self, a):
        seen.append(blas_threads())
        return mlp(self, a)

    monkeypatch.setattr(_ExactMLP, "__call__", spy)
    img = smooth_image(20, 24, seed=8)
    with threadpool_limits(limits=2, user_api="blas"):  # as numpy starts on a 2-core machine
        before = blas_threads()
        assert before == {2}  # threadpoolctl sees numpy's BLAS (else the check below would hold vacuously)
        data = any_lossless_codec.compress(img, lossless=True)
        assert np.array_equal(any_lossless_codec.decompress_array(data), img)
        assert blas_threads() == before
    assert seen and all(s <= {1} for s in seen)


def test_coding_in_other_threads_leaves_blas_as_the_application_set_it(tiny_codec):
    """Only the main thread limits BLAS (one process-wide pool; a limit cannot be given back from another
    thread): two threads coding at once see, and leave, the application's setting."""
    import threading

    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads() -> set[int]:
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    img = smooth_image(16, 20, seed=9)
    results = []

    def work():
        data = Codec(tiny_codec.model, pixel_model=tiny_codec.pixel_model).compress(img, lossless=True)
        results.append(np.array_equal(tiny_codec.decompress_array(data), img))

    with threadpool_limits(limits=2, user_api="blas"):
        threads = [threading.Thread(target=work) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results == [True, True]
        assert blas_threads() == {2}
