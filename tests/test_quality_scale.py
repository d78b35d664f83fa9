"""The JPEG-matched quality scale: positions from measured curves, and models built with them."""

import numpy as np
import pytest
import torch
from PIL import Image

from vaecodec.coding_model import NUM_QUALITIES, CodingModel, even_quality_positions
from vaecodec.model import HyperpriorModel, ModelConfig
from vaecodec.training.quality_scale import (MIN_STEP_FRACTION, PsnrCurve, calibration_images, jpeg_matched_positions,
                                             measure_jpeg_psnr, measure_model_psnr)

from conftest import TINY_CONFIG, smooth_image

TOP = 12.0


def _curve(positions, db):
    positions = np.asarray(positions, dtype=np.float64)
    return PsnrCurve(positions, np.asarray(db, dtype=np.float64), np.zeros(len(positions)))


def test_each_quality_inside_the_models_range_lands_where_the_model_gives_jpegs_psnr():
    positions = np.linspace(0, TOP, 25)
    curve = _curve(positions, 27 + 1.1 * positions)  # 27 … 40.2 dB
    quality = np.arange(1, NUM_QUALITIES + 1)
    jpeg = 22 + 0.2 * quality  # 22.2 … 42 dB: JPEG's lowest and highest qualities lie outside the model's range
    out = jpeg_matched_positions(curve, jpeg, TOP)
    inside = (jpeg >= 27) & (jpeg <= 27 + 1.1 * TOP)
    step = MIN_STEP_FRACTION * TOP / 99
    free = inside & (out > (quality - 1) * step + 1e-9) & (out < TOP - (100 - quality) * step - 1e-9)
    assert free.sum() >= 0.8 * inside.sum()  # only near the ends does the minimum step decide
    assert np.allclose(27 + 1.1 * out[free], jpeg[free])
    assert np.all(27 + 1.1 * out[:50][inside[:50]] >= jpeg[:50][inside[:50]] - 1e-9)  # at the low end: at least JPEG's
    assert out[0] == 0.0 and out[-1] == TOP  # the model's ends stay quality 1 and 100: nothing extrapolated
    assert np.all(np.diff(out) > 0)
    # Below the first match (JPEG's 25 is the model's first anchor) no two qualities share a position: each is a
    # quarter of an even step above the one before.
    first = int(np.argmax(inside))
    assert first == 24 and np.allclose(np.diff(out[:first + 1]), step)


def test_a_noisy_curve_or_jpeg_dip_still_gives_non_decreasing_positions():
    positions = np.linspace(0, TOP, 13)
    db = 27 + 1.1 * positions
    db[5] -= 2.0  # a measurement below its neighbour
    jpeg = 22 + 0.2 * np.arange(1, NUM_QUALITIES + 1)
    jpeg[80] -= 3.0
    out = jpeg_matched_positions(_curve(positions[::-1], db[::-1]), jpeg, TOP)  # given in any order
    assert np.all(np.diff(out) >= 0) and out.min() >= 0 and out.max() <= TOP


def test_quality_1_and_100_stay_the_models_ends_when_jpegs_range_lies_inside_it():
    positions = np.linspace(0, TOP, 25)
    curve = _curve(positions, 20 + 2.0 * positions)  # 20 … 44 dB: wider than JPEG's 26 … 40
    out = jpeg_matched_positions(curve, np.linspace(26, 40, NUM_QUALITIES), TOP)
    assert out[0] == 0.0 and out[-1] == TOP and np.all(np.diff(out) > 0)
    assert np.allclose(20 + 2.0 * out[40:60], np.linspace(26, 40, NUM_QUALITIES)[40:60])


def test_a_flat_model_curve_or_ranges_that_do_not_overlap_are_refused():
    with pytest.raises(ValueError, match="does not rise"):
        jpeg_matched_positions(_curve([0, 6, TOP], [30, 30, 30]), np.linspace(20, 40, NUM_QUALITIES), TOP)
    with pytest.raises(ValueError, match="overlap"):
        jpeg_matched_positions(_curve([0, TOP], [50, 60]), np.linspace(20, 40, NUM_QUALITIES), TOP)


def test_a_model_built_on_given_positions_puts_each_quality_there():
    torch.manual_seed(0)
    net = HyperpriorModel(ModelConfig(**TINY_CONFIG))
    k = len(net.config.lambdas)
    positions = (k - 1) * np.linspace(0, 1, NUM_QUALITIES) ** 2
    model = CodingModel.from_training_model(net, "t", quality_positions=positions)
    assert [model.quality_position(q) for q in (1, 50, 100)] == pytest.approx([0, positions[49], k - 1], abs=1e-4)
    assert np.all(np.diff(model.tables["log2_gain"].mean(axis=1)) > 0)
    even = CodingModel.from_training_model(net, "t")
    assert np.array_equal(even.tables["quality_positions"], np.round(even_quality_positions(k) * 65536))
    for bad in (positions[::-1], positions[:50], np.where(np.arange(NUM_QUALITIES) == 3, np.nan, positions)):
        with pytest.raises(ValueError, match="non-decreasing"):
            CodingModel.from_training_model(net, "t", quality_positions=bad)
    with pytest.raises(ValueError, match="not both"):
        CodingModel.from_training_model(net, "t", quality_span=(0, 1), quality_positions=positions)


def test_measurements_come_from_real_files(tmp_path, tiny_model):
    for i, (h, w) in enumerate([(80, 120), (180, 60), (128, 128)]):
        Image.fromarray(smooth_image(h, w, seed=i)).save(tmp_path / f"{i}.png")
    images = calibration_images(tmp_path, count=2, crop=48)
    assert [name for name, _ in images] == ["0.png", "2.png"]
    assert images[0][1].shape == (40, 48, 3) and images[1][1].shape == (48, 48, 3)  # halved, then cropped
    jpeg = measure_jpeg_psnr(images)
    assert jpeg.shape == (NUM_QUALITIES,) and jpeg[94] > jpeg[49] > jpeg[9]
    curve = measure_model_psnr(tiny_model, images, qualities=(1, 50, 100))
    assert list(curve.positions) == [tiny_model.quality_position(q) for q in (1, 50, 100)]
    assert np.all(curve.bpp > 0) and np.all(np.isfinite(curve.psnr_db))
    with pytest.raises(ValueError, match="3 images, 4 needed"):
        calibration_images(tmp_path, count=4)


def test_the_rd_sweep_samples_the_curve_evenly_whatever_the_scale():
    from vaecodec.baselines import rd_sweep_qualities

    torch.manual_seed(0)
    net = HyperpriorModel(ModelConfig(**TINY_CONFIG))
    k = len(net.config.lambdas)
    assert rd_sweep_qualities(CodingModel.from_training_model(net, "t")) == (1, 11, 21, 31, 41, 50, 60, 70, 80, 90, 100)
    skewed = CodingModel.from_training_model(net, "t", quality_positions=(k - 1) * np.linspace(0, 1, NUM_QUALITIES) ** 2)
    qualities = rd_sweep_qualities(skewed)
    gaps = np.diff([skewed.quality_position(q) for q in qualities])
    assert qualities[0] == 1 and qualities[-1] == 100 and len(qualities) == 11
    assert gaps.max() < 1.6 * (k - 1) / 10  # evenly spread in position, not in quality
