"""Format version 3: latents coded in tiles, decoded band by band, with the whole image's exact numbers."""

import numpy as np
import pytest
import torch

import vaecodec
from vaecodec import entropy
from vaecodec.api import _BandWriter
from vaecodec.container import unpack
from vaecodec.image import to_model_input
from vaecodec.latent_codec import LATENT_TILE, tile_regions

from conftest import smooth_image


def test_tile_regions_cover_the_grid_once_in_raster_order():
    bands = tile_regions(10, 7, 4)
    assert [[(r.start, r.stop, c.start, c.stop) for r, c in band] for band in bands] == [
        [(0, 4, 0, 4), (0, 4, 4, 7)], [(4, 8, 0, 4), (4, 8, 4, 7)], [(8, 10, 0, 4), (8, 10, 4, 7)]]
    assert tile_regions(10, 7, None) == [[(slice(0, 10), slice(0, 7))]]


def test_hyper_parameters_of_a_region_equal_the_whole_images(any_tiny_codec):
    m = any_tiny_codec.model
    z = torch.from_numpy(np.random.default_rng(3).integers(-6, 7, size=(1, m.config.hyper_channels, 9, 7)))
    whole = m.hyper_decode(z)
    for rows, cols in [(slice(0, 36), slice(0, 28)), (slice(8, 20), slice(12, 28)), (slice(32, 36), slice(0, 4))]:
        part = m.hyper_decode_region(z, rows, cols)
        assert torch.equal(part.mean, whole.mean[:, :, rows, cols])
        assert torch.equal(part.log2_scale, whole.log2_scale[:, :, rows, cols])


def test_analysis_of_uint8_pixels_equals_analysis_of_floats(tiny_model):
    px = smooth_image(70, 90, seed=4)
    y8, z8 = tiny_model.analyze(to_model_input(px, 64, torch.uint8))
    yf, zf = tiny_model.analyze(to_model_input(px, 64))
    assert torch.equal(y8, yf) and torch.equal(z8, zf)


@pytest.mark.parametrize("tile", [None, 2, 4, 5, LATENT_TILE])
def test_tiles_round_trip_exactly_and_bands_synthesize_like_the_whole(any_tiny_codec, tile):
    """Any tiling pops what was pushed; bands synthesized one at a time equal the whole ŷ's synthesis."""
    codec, m = any_tiny_codec, any_tiny_codec.model
    h, w = 150, 200  # 12 × 16 latents: tiles of 2 and 4 make several bands, 5 ragged last tiles and band
    latents = codec.latents.analyze(to_model_input(smooth_image(h, w, seed=5), 64, torch.uint8))
    coder = entropy.new_coder()
    code = codec.latents.push(coder, latents, 60, tile=tile, keep_y_hat=True)
    words = coder.get_compressed()
    out = np.empty((h, w, 3), np.uint8)
    writer = _BandWriter(m, out, "RGB")
    bands = []
    popped = codec.latents.pop_code(entropy.new_coder(words), h, w, 60, tile=tile,
                                    on_band=lambda r, b: (bands.append(r), writer.add(r, b)))
    writer.finish()
    assert popped.y_hat is None and popped.symbols_crc == code.symbols_crc
    assert bands == sorted(bands) and len(bands) == (1 if tile is None else -(-code.y_hat.shape[2] // tile))
    assert np.array_equal(out, m.synthesize(code.y_hat)[:h, :w])
    whole = codec.latents.pop(entropy.new_coder(words), h, w, 60, tile=tile)
    assert torch.equal(whole, code.y_hat)


def test_a_multi_tile_file_round_trips_and_says_version_3(tiny_codec):
    """1100 pixels wide: two tiles side by side (the boundary at 1024 pixels is inside the image)."""
    px = smooth_image(40, 1100, seed=6)
    data = tiny_codec.compress(px, quality=70)
    header, _ = unpack(data)
    assert header.format_version == 3
    out = tiny_codec.decompress_array(data)
    assert out.shape == px.shape
    # Band by band, the decoder's pixels are the whole ŷ's synthesis.
    coder = entropy.new_coder(unpack(data)[1])
    entropy.pop_check(coder)
    y_hat = tiny_codec.latents.pop(coder, 40, 1100, 70)
    assert y_hat.shape[3] > LATENT_TILE
    assert np.array_equal(out, tiny_codec.model.synthesize(y_hat)[:40, :1100])
    assert tiny_codec.encode(px, quality=70).data == data  # deterministic


def test_band_synthesis_with_strips_smaller_than_the_band_is_exact(tiny_model, monkeypatch):
    """synthesize_rows cuts a band into strips of synthesis tiles; any strip height gives the same pixels."""
    y_hat = torch.round(torch.randn(1, tiny_model.config.latent_channels, 11, 9,
                                    generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 3000)
    whole = tiny_model.synthesize(y_hat)
    monkeypatch.setattr(tiny_model, "synthesis_tile", 3)
    for cut in ((0, 5, 11), (0, 1, 7, 11), (0, 11)):
        parts = [tiny_model.synthesize_rows(y_hat[:, :, :a], y_hat[:, :, a:b], y_hat[:, :, b:])
                 for a, b in zip(cut, cut[1:])]
        assert np.array_equal(np.concatenate(parts), whole)


@pytest.mark.parametrize("shape", [(70, 90, 3), (64, 64, 3), (1, 1, 3), (65, 130), (3, 200)])
def test_padded_pixels_slice_like_the_padded_copy(shape):
    from vaecodec.image import PaddedPixels

    px = np.random.default_rng(7).integers(0, 256, size=shape, dtype=np.uint8)
    copy = to_model_input(px, 64, torch.uint8)
    view = PaddedPixels(px, 64)
    assert view.shape == tuple(copy.shape)
    h, w = copy.shape[2:]
    rng = np.random.default_rng(8)
    cuts = [(0, h, 0, w), (h - 1, h, w - 1, w)] + [tuple(sorted(rng.integers(0, h + 1, 2))) + tuple(sorted(rng.integers(0, w + 1, 2)))
                                                  for _ in range(40)]
    for r0, r1, c0, c1 in cuts:
        if r1 > r0 and c1 > c0:
            assert torch.equal(view[:, :, r0:r1, c0:c1], copy[:, :, r0:r1, c0:c1]), (r0, r1, c0, c1)
    assert torch.equal(view.tensor(), copy)


def test_a_read_only_image_is_analysed_without_warnings(tiny_codec):
    """Pillow hands out read-only arrays; the analysis tiles must not trip torch's non-writable warning."""
    import warnings

    px = smooth_image(64, 128, seed=10)  # a multiple of 64: no padding, so the tiles are views of the input
    px.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = tiny_codec.compress(px, quality=50)
    px.setflags(write=True)
    assert data == tiny_codec.compress(px, quality=50)
