"""Encode-time refinement (--effort): never worse, decodes as predicted, seeded, same decoder."""

import numpy as np
import pytest
import torch

from vaecodec.api import Codec
from vaecodec.refine import rd_cost

from conftest import make_tiny_model, smooth_image


@pytest.fixture(scope="module", params=["hyperprior", "checkerboard"])
def codec(request):
    return Codec(make_tiny_model(kind=request.param, model_id=f"tiny-{request.param}"))


def _cost(codec, encoded, img, quality):
    out = codec.decompress_array(encoded.data).astype(np.float64)
    mse = float(np.mean((out - img.astype(np.float64)) ** 2))
    return rd_cost(encoded.num_bytes, mse, codec.model.quality_lambda(quality), img.shape[0] * img.shape[1])


@pytest.mark.parametrize("quality", [20, 80])
def test_refined_file_has_lower_rd_cost_and_decodes_as_predicted(codec, quality):
    img = smooth_image(48, 80, seed=1)
    base = codec.encode(img, quality=quality)
    refined = codec.encode(img, quality=quality, effort=5)
    assert _cost(codec, refined, img, quality) <= _cost(codec, base, img, quality)
    # The decoder is the ordinary one: the file round-trips, and its information bound holds.
    assert codec.decompress_array(refined.data).shape == img.shape
    assert 8 * refined.num_bytes >= refined.information_bits - 1e-6


def test_refinement_actually_improves_the_tiny_model(codec):
    """On a random (badly amortized) tiny model, refinement must find a strictly better file somewhere."""
    img = smooth_image(48, 80, seed=2)
    gains = [_cost(codec, codec.encode(img, quality=q), img, q) - _cost(codec, codec.encode(img, quality=q, effort=7), img, q)
             for q in (10, 90)]
    assert max(gains) > 0


def test_refinement_is_deterministic(codec):
    img = smooth_image(40, 40, seed=3)
    assert codec.compress(img, quality=50, effort=5) == codec.compress(img, quality=50, effort=5)


def test_target_bpp_with_effort_still_fits(codec):
    img = smooth_image(48, 64, seed=4)
    target = codec.encode(img, quality=60).bpp
    refined = codec.encode(img, target_bpp=target, effort=3)
    assert refined.bpp <= target
    assert refined.header.quality >= codec.encode(img, target_bpp=target).header.quality


@pytest.mark.parametrize("effort", [0, 10, 2.5, "9"])
def test_bad_effort_is_refused(codec, effort):
    with pytest.raises(ValueError, match="effort"):
        codec.encode(smooth_image(8, 8), effort=effort)


def test_cli_effort_option(tmp_path, tiny_model_file):
    from click.testing import CliRunner
    from PIL import Image

    from vaecodec.cli import cli

    png = tmp_path / "a.png"
    Image.fromarray(smooth_image(30, 40)).save(png)
    r = CliRunner().invoke(cli, ["compress", str(png), "-e", "4", "--model", str(tiny_model_file)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["compress", str(png), "-e", "12", "--force", "--model", str(tiny_model_file)])
    assert r.exit_code == 2
