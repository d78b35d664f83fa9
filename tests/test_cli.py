"""The vaecodec command, in-process with click's CliRunner, on the tiny model."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from vaecodec.cli import cli

from conftest import smooth_image


@pytest.fixture
def run(tiny_model_file):
    def invoke(*args, input=None):
        return CliRunner().invoke(cli, [*map(str, args)] if args[0] == "info" else [*map(str, args), "--model", str(tiny_model_file)], input=input)
    return invoke


@pytest.fixture
def png(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(smooth_image(30, 45)).save(path)
    return path


def assert_one_line_error(result, code=1):
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output


def test_compress_then_decompress_beside_the_input(run, png):
    r = run("compress", png, "-q", "30")
    assert r.exit_code == 0, r.output
    vae = png.with_suffix(".vae")
    assert vae.exists() and "bpp" in r.output
    png.unlink()
    r = run("decompress", vae)
    assert r.exit_code == 0, r.output
    assert Image.open(png).size == (45, 30)


def test_info_prints_the_header_as_text_and_json(run, png):
    run("compress", png)
    vae = png.with_suffix(".vae")
    r = run("info", vae, "--json")
    assert r.exit_code == 0
    d = json.loads(r.output)
    assert (d["width"], d["height"], d["quality"], d["num_bytes"]) == (45, 30, 75, vae.stat().st_size)
    assert "model_id" in run("info", vae).output


def test_never_overwrites_without_force(run, png):
    assert run("compress", png).exit_code == 0
    vae = png.with_suffix(".vae")
    before = vae.read_bytes()
    r = run("compress", png, "-q", "10")
    assert_one_line_error(r)
    assert "exists" in r.output and vae.read_bytes() == before
    assert run("compress", png, "-q", "10", "--force").exit_code == 0
    assert vae.read_bytes() != before


def test_several_inputs_go_to_a_folder(run, tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / f"im{i}.png"
        Image.fromarray(smooth_image(20, 20 + i, seed=i)).save(p)
        paths.append(p)
    out = tmp_path / "out"
    assert_one_line_error(run("compress", *paths, "-o", out))  # folder must exist
    out.mkdir()
    assert run("compress", *paths, "-o", out).exit_code == 0
    vaes = sorted(out.glob("*.vae"))
    assert [v.stem for v in vaes] == ["im0", "im1", "im2"]
    dec = tmp_path / "dec"
    dec.mkdir()
    assert run("decompress", *vaes, "-o", dec).exit_code == 0
    assert Image.open(dec / "im2.png").size == (22, 20)


def test_stdin_to_stdout(run, png):
    r = run("compress", "-", "-o", "-", input=png.read_bytes())
    assert r.exit_code == 0
    data = r.stdout_bytes
    assert data[:4] == b"\x8bVAE"
    r = run("decompress", "-", "-o", "-", input=data)
    assert r.exit_code == 0 and r.stdout_bytes[:8] == b"\x89PNG\r\n\x1a\n"


def test_output_format_follows_the_extension(run, png, tmp_path):
    run("compress", png)
    out = tmp_path / "x.bmp"
    assert run("decompress", png.with_suffix(".vae"), "-o", out).exit_code == 0
    assert Image.open(out).format == "BMP"
    assert_one_line_error(run("decompress", png.with_suffix(".vae"), "-o", tmp_path / "x.xyz"))


@pytest.mark.parametrize("content", [b"", b"garbage", b"\x8bVAE\x01\x01"])
def test_bad_vae_files_give_one_line_errors_and_no_output(run, tmp_path, content):
    bad = tmp_path / "bad.vae"
    bad.write_bytes(content)
    r = run("decompress", bad)
    assert_one_line_error(r)
    assert not (tmp_path / "bad.png").exists()
    assert list(tmp_path.glob("*.part")) == [] and list(tmp_path.glob(".*")) == []
    assert_one_line_error(run("info", bad))


def test_bad_images_give_one_line_errors(run, tmp_path):
    rgba = tmp_path / "alpha.png"
    Image.new("RGBA", (4, 4)).save(rgba)
    r = run("compress", rgba)
    assert_one_line_error(r)
    assert "alpha" in r.output and not rgba.with_suffix(".vae").exists()
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert_one_line_error(run("compress", text))
    assert_one_line_error(run("compress", tmp_path / "missing.png"))


def test_bad_options_are_usage_errors(run, png):
    assert run("compress", png, "-q", "0").exit_code == 2
    assert run("compress", png, "--target-bpp", "-1").exit_code == 2


def test_target_bpp(run, png):
    r = run("compress", png, "--target-bpp", "3")
    assert r.exit_code == 0, r.output
    bpp = float(r.output.split(",")[-1].split()[0])
    assert bpp <= 3


def test_decoded_pixels_match_the_api(run, png, tiny_codec):
    run("compress", png, "-q", "55")
    run("decompress", png.with_suffix(".vae"), "-o", png.with_name("out.png"))
    api = tiny_codec.decompress(tiny_codec.compress(png, quality=55))
    assert np.array_equal(np.asarray(Image.open(png.with_name("out.png"))), np.asarray(api))


def test_a_bad_model_file_is_a_one_line_error(png, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    r = CliRunner().invoke(cli, ["compress", str(png), "--model", str(bad)])
    assert_one_line_error(r)
    assert "model" in r.output


def test_colliding_outputs_are_refused_before_writing(run, tmp_path):
    for d in ("d1", "d2"):
        (tmp_path / d).mkdir()
        Image.fromarray(smooth_image(10, 10)).save(tmp_path / d / "x.png")
    out = tmp_path / "out"
    out.mkdir()
    r = run("compress", tmp_path / "d1" / "x.png", tmp_path / "d2" / "x.png", "-o", out, "--force")
    assert r.exit_code == 2 and list(out.iterdir()) == []


def test_outputs_get_ordinary_file_permissions(run, png):
    import os
    import stat

    old = os.umask(0o022)
    try:
        assert run("compress", png).exit_code == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(png.with_suffix(".vae").stat().st_mode) == 0o644


def test_version():
    r = CliRunner().invoke(cli, ["--version"])
    assert r.exit_code == 0 and "0.1.0" in r.output
