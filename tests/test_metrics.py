"""Metrics against hand-checked values, and a smoke run of the benchmark command."""

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from vaecodec.cli import cli
from vaecodec.metrics import bd_rate, ms_ssim, ms_ssim_db, pchip, psnr, quality_at_rate

from conftest import smooth_image

RATES = [0.2, 0.4, 0.8, 1.6]
PSNRS = [28.0, 31.0, 34.0, 37.0]


def test_bd_rate_of_identical_curves_is_zero():
    assert bd_rate(RATES, PSNRS, RATES, PSNRS) == pytest.approx(0, abs=1e-9)


def test_bd_rate_of_a_curve_at_half_the_rate_is_minus_50_percent():
    assert bd_rate(RATES, PSNRS, [r / 2 for r in RATES], PSNRS) == pytest.approx(-50, abs=1e-9)
    assert bd_rate(RATES, PSNRS, [r * 2 for r in RATES], PSNRS) == pytest.approx(100, abs=1e-9)


def test_bd_rate_needs_overlap():
    assert bd_rate(RATES, PSNRS, RATES, [p + 20 for p in PSNRS]) is None


def test_bd_rate_window_narrows_the_average():
    half_below_31 = [0.1, 0.2, 0.8, 1.6]  # half the rate at 28 and 31 dB, the same at 34 and 37
    full = bd_rate(RATES, PSNRS, half_below_31, PSNRS)
    low = bd_rate(RATES, PSNRS, half_below_31, PSNRS, quality_window=(28.0, 31.0))
    high = bd_rate(RATES, PSNRS, half_below_31, PSNRS, quality_window=(34.0, 37.0))
    assert low < full < high
    assert bd_rate(RATES, PSNRS, [r / 2 for r in RATES], PSNRS, quality_window=(29.0, 33.0)) == pytest.approx(-50, abs=1e-9)
    assert bd_rate(RATES, PSNRS, RATES, PSNRS, quality_window=(40.0, 45.0)) is None


def test_pchip_interpolates_and_stays_monotone():
    f = pchip([0, 1, 2, 3], [0, 1, 1, 2])
    assert f(np.array([0, 1, 2, 3])) == pytest.approx([0, 1, 1, 2])
    t = np.linspace(0, 3, 301)
    assert np.all(np.diff(f(t)) >= -1e-12)  # no overshoot on the flat segment


def test_quality_at_rate_on_a_log_linear_curve():
    assert quality_at_rate(RATES, PSNRS, 0.4) == pytest.approx(31.0)
    assert quality_at_rate(RATES, PSNRS, math.sqrt(0.4 * 0.8)) == pytest.approx(32.5, abs=1e-6)
    assert quality_at_rate(RATES, PSNRS, 5.0) is None


def test_psnr_known_values():
    a = np.zeros((4, 4, 3), np.uint8)
    assert psnr(a, a + 1) == pytest.approx(10 * math.log10(255**2))  # 48.13 dB
    assert psnr(a, a + 255) == pytest.approx(0.0)
    assert psnr(a, a) == math.inf


def test_ms_ssim_is_one_for_identical_and_falls_with_noise():
    img = smooth_image(200, 200, seed=5)
    rng = np.random.default_rng(0)
    assert ms_ssim(img, img) == pytest.approx(1.0)
    values = [ms_ssim(img, np.clip(img + rng.normal(0, s, img.shape), 0, 255).astype(np.uint8)) for s in (2, 8, 32)]
    assert 1 > values[0] > values[1] > values[2] > 0
    assert ms_ssim_db(0.99) == pytest.approx(20.0)


def test_bench_command_smoke(tmp_path, tiny_model_file):
    for i in range(2):
        Image.fromarray(smooth_image(24 + i, 30, seed=i)).save(tmp_path / f"im{i}.png")
    out = tmp_path / "r.json"
    md = tmp_path / "s.md"
    r = CliRunner().invoke(cli, ["bench", str(tmp_path), "--codecs", "vaecodec,jpeg", "-o", str(out),
                                 "--markdown", str(md), "--model", str(tiny_model_file)])
    assert r.exit_code == 0, r.output
    blob = json.loads(out.read_text())
    assert len(blob["images"]) == 2
    names = [c["name"] for c in blob["curves"]]
    assert names == ["vaecodec", "jpeg"]
    jpeg = next(row for row in blob["summary"] if row["codec"] == "jpeg")
    assert jpeg["bd_rate_psnr"] == pytest.approx(0, abs=1e-9)
    vae = [m for m in blob["measurements"] if m["codec"] == "vaecodec"]
    assert all(m["bpp"] == 8 * m["num_bytes"] / m["pixels"] for m in vae)
    assert all(m["information_bits"] <= 8 * m["num_bytes"] for m in vae)
    assert "BD-rate" in r.output and "vaecodec" in md.read_text()
    assert "mbt2018-mean" not in names  # published Kodak curves only appear for the Kodak set
    assert "NaN" not in out.read_text() and "Infinity" not in out.read_text()
    r = CliRunner().invoke(cli, ["bench", str(tmp_path), "--codecs", "nope"])
    assert r.exit_code == 2
    r = CliRunner().invoke(cli, ["bench", str(tmp_path), "--codecs", "jpeg", "--reference", "webp"])
    assert r.exit_code == 1 and "reference" in r.output


def test_published_curves_can_be_asked_for(tmp_path):
    from vaecodec.bench import run_benchmark

    Image.fromarray(smooth_image(20, 20)).save(tmp_path / "a.png")
    report = run_benchmark([tmp_path], ["jpeg"], settings={"jpeg": (("quality", 50), ("quality", 90))}, published=True)
    pub = [c for c in report.curves if c.published]
    assert {c.name for c in pub} == {"bmshj2018-factorized", "bmshj2018-hyperprior", "mbt2018-mean", "mbt2018", "vtm"}
    assert all("3d3c9bbd92" in c.source for c in pub)
