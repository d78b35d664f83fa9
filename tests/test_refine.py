"""Encode-time refinement (--effort): never worse, decodes as predicted, seeded, same decoder."""

import numpy as np
import pytest
import torch

from vaecodec.api import Codec
from vaecodec.refine import rd_cost

from conftest import make_tiny_model, smooth_image


@pytest.fixture(scope="module", params=["hyperprior", "checkerboard", "channel"])
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


def test_each_effort_is_a_prefix_of_the_next(codec):
    """The schedule depends on the iteration number only, so one run stopped at several levels gives each
    level's own latents: what the effort benchmark relies on to measure nine levels in one run."""
    from vaecodec.refine import refine_latents, refine_path

    img = smooth_image(32, 48, seed=5)
    with torch.no_grad():
        analysed = codec._analyze(img)
    x = analysed.x.tensor()
    path = refine_path(codec.model, x, analysed.latents, 40, [3, 7], 32, 48)
    alone = refine_path(codec.model, x, analysed.latents, 40, [3], 32, 48)[0]
    assert torch.equal(path[0].y, alone.y) and torch.equal(path[0].z_symbols, alone.z_symbols)
    assert not torch.equal(path[0].y, path[1].y)
    calls = []
    refined = refine_latents(codec.model, x, analysed.latents, 40, 2, 32, 48,
                             on_iteration=lambda done, total: calls.append((done, total)))
    from vaecodec.refine import EFFORTS

    n = EFFORTS[2]
    assert calls == [(t, n) for t in range(1, n + 1)]
    again = refine_path(codec.model, x, analysed.latents, 40, [n], 32, 48)[0]
    assert torch.equal(refined.y, again.y)


def test_refinement_stops_must_ascend(codec):
    from vaecodec.refine import refine_path

    img = smooth_image(16, 16, seed=6)
    with torch.no_grad():
        analysed = codec._analyze(img)
    with pytest.raises(ValueError, match="ascending"):
        refine_path(codec.model, analysed.x.tensor(), analysed.latents, 40, [5, 2], 16, 16)


def test_soft_rounding_hardens_as_temperature_falls():
    from vaecodec.refine import _soft_round

    v = torch.linspace(-3.2, 3.2, 1001)
    v = v[(v - v.round()).abs() < 0.45]  # away from the ties, where hard rounding is defined
    g = torch.Generator().manual_seed(0)
    soft = _soft_round(v, 1e-3, g)
    assert torch.allclose(soft, torch.round(v), atol=1e-3)
    warm = _soft_round(v, 0.5, g)
    assert ((warm >= torch.floor(v)) & (warm <= torch.ceil(v))).all()
    assert (warm - torch.round(v)).abs().max() > 0.1


def test_progress_is_reported_per_iteration(codec):
    from vaecodec.refine import EFFORTS

    calls = []
    codec.encode(smooth_image(24, 24, seed=7), quality=30, effort=3, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(t, EFFORTS[3]) for t in range(1, EFFORTS[3] + 1)]
    calls.clear()
    codec.encode(smooth_image(24, 24, seed=7), quality=30, progress=lambda d, t: calls.append((d, t)))
    assert calls == []


def test_schedule_spec_and_holding_z_after_a_switch(codec):
    """The benchmarks' schedule strings parse field by field; with ``hard_z_from`` ẑ stops moving at the switch
    (held at its rounding) while y keeps moving."""
    from vaecodec.refine import Schedule, refine_path

    assert Schedule.parse("0.03,0.5,0.05,160") == Schedule(0.03, 0.5, 0.05, 160, None, None, select_every=None)
    assert Schedule.parse("0.03,0.5,0.05,160,0.003,128") == Schedule(0.03, 0.5, 0.05, 160, 0.003, 128,
                                                                     select_every=None)
    assert Schedule.parse("0.05,0.5,0.1,160,0.003,,,8") == Schedule()
    img = smooth_image(32, 48, seed=6)
    with torch.no_grad():
        analysed = codec._analyze(img)
    held = Schedule(lr=0.5, hard_z_from=2, select_every=None)  # a large step: a moving z would change its rounding
    free = Schedule(lr=0.5, select_every=None)
    args = (codec.model, analysed.x.tensor(), analysed.latents, 40, [2, 12], 32, 48)
    h2, h12 = refine_path(*args, schedule=held)
    f2, f12 = refine_path(*args, schedule=free)
    assert torch.equal(h2.z_symbols, f2.z_symbols) and torch.equal(h2.y, f2.y)  # the same run up to the switch
    assert torch.equal(h12.z_symbols, h2.z_symbols) and not torch.equal(h12.y, h2.y)
    assert not torch.equal(f12.z_symbols, f2.z_symbols)


def test_a_stop_chooses_among_its_candidate_iterations(codec):
    """With ``select_every`` a run stopped at n returns the latents of one of its candidate iterations (the
    optimization itself is unchanged: the estimates take no gradient and no randomness), and stopping at
    several levels still gives each level its own run's latents."""
    from vaecodec.refine import Schedule, refine_path

    img = smooth_image(32, 48, seed=7)
    with torch.no_grad():
        analysed = codec._analyze(img)
    args = (codec.model, analysed.x.tensor(), analysed.latents, 30)
    selecting = Schedule(lr=0.3, select_every=2)
    assert selecting.candidates(12) == [8, 10, 12] and selecting.candidates(1) == [1]
    every = refine_path(*args, list(range(1, 13)), 32, 48, schedule=Schedule(lr=0.3, select_every=None))
    chosen = refine_path(*args, [12], 32, 48, schedule=selecting)[0]
    assert any(torch.equal(chosen.y, every[c - 1].y) and torch.equal(chosen.z_symbols, every[c - 1].z_symbols)
               for c in selecting.candidates(12))
    both = refine_path(*args, [5, 12], 32, 48, schedule=selecting)
    assert torch.equal(both[1].y, chosen.y)
    assert torch.equal(both[0].y, refine_path(*args, [5], 32, 48, schedule=selecting)[0].y)
