"""The vaecodec command, in-process with click's CliRunner, on the tiny model."""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from vaecodec.cli import cli

from conftest import smooth_image

CHECKOUT = Path(__file__).resolve().parents[1]


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
    assert run("compress", *paths, "-o", out).exit_code == 0  # the folder is created
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
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (4, 4)).save(cmyk)
    r = run("compress", cmyk)
    assert_one_line_error(r)
    assert "CMYK" in r.output and not cmyk.with_suffix(".vae").exists()
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


# ----- batches, reporting, hostile files, stdout ---------------------------------------------------

def make_pngs(folder, *names):
    paths = []
    for i, name in enumerate(names):
        path = folder / name
        Image.fromarray(smooth_image(16, 20 + i, seed=i)).save(path)
        paths.append(path)
    return paths


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("vaecodec: error:")]


def test_a_batch_attempts_every_file_and_exits_1_if_any_failed(run, tmp_path):
    a, c = make_pngs(tmp_path, "a.png", "c.png")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.png"
    out = tmp_path / "out"
    r = run("compress", a, notes, empty, c, missing, "-o", out)
    assert r.exit_code == 1, r.output
    assert sorted(p.name for p in out.iterdir()) == ["a.vae", "c.vae"]
    assert error_lines(r) == [f"vaecodec: error: {notes}: not an image vaecodec can read",
                              f"vaecodec: error: {empty}: not an image vaecodec can read",
                              f"vaecodec: error: {missing}: No such file or directory"]
    assert r.stderr.splitlines()[-1].startswith("vaecodec: compressed 2 files, 3 failed: ")
    assert "Traceback" not in r.output and " at 0x" not in r.output

    bad = out / "b.vae"
    bad.write_bytes(b"\x8bVAE\x01\x01")
    dec = tmp_path / "dec"
    r = run("decompress", out / "a.vae", bad, out / "c.vae", "-o", dec)
    assert r.exit_code == 1, r.output
    assert sorted(p.name for p in dec.iterdir()) == ["a.png", "c.png"]
    (line,) = error_lines(r)
    assert line.startswith(f"vaecodec: error: {bad}: ")
    assert r.stderr.splitlines()[-1].startswith("vaecodec: decompressed 2 files, 1 failed: ")


def test_a_batch_without_failures_exits_0_with_a_summary_of_bytes_and_bpp(run, tmp_path):
    paths = make_pngs(tmp_path, "a.png", "b.png")
    out = tmp_path / "new" / "deeper"
    r = run("compress", *paths, "-o", out)
    assert r.exit_code == 0, r.output
    vaes = [out / "a.vae", out / "b.vae"]
    size_in = sum(p.stat().st_size for p in paths)
    size_out = sum(v.stat().st_size for v in vaes)
    mean_bpp = sum(8 * v.stat().st_size / (16 * w) for v, w in zip(vaes, (20, 21))) / 2
    assert r.stderr.strip() == f"vaecodec: compressed 2 files: {size_in} -> {size_out} bytes, mean {mean_bpp:.4f} bpp"
    r = run("decompress", *vaes, "-o", tmp_path / "dec")
    assert r.exit_code == 0, r.output
    size_dec = sum(p.stat().st_size for p in (tmp_path / "dec").iterdir())
    assert r.stderr.strip() == f"vaecodec: decompressed 2 files: {size_out} -> {size_dec} bytes"


def test_o_ending_in_a_separator_is_a_folder_created_for_a_single_input(run, png, tmp_path):
    r = run("compress", png, "-o", f"{tmp_path / 'made'}/")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "made" / "photo.vae").is_file()
    # Without the separator a single -o is still a file name; its folder is not made.
    assert run("compress", png, "-o", tmp_path / "x.vae").exit_code == 0 and (tmp_path / "x.vae").is_file()
    assert_one_line_error(run("compress", png, "-o", tmp_path / "nodir" / "x.vae"))
    assert not (tmp_path / "nodir").exists()


def test_o_naming_a_file_with_several_inputs_is_refused(run, tmp_path):
    paths = make_pngs(tmp_path, "a.png", "b.png")
    afile = tmp_path / "afile"
    afile.write_bytes(b"")
    r = run("compress", *paths, "-o", afile)
    assert_one_line_error(r)
    assert "not a folder" in r.output
    assert run("compress", *paths, "-o", "-").exit_code == 2


def test_whole_batch_refusals_come_before_anything_is_written(run, tmp_path):
    paths = make_pngs(tmp_path, "a.png", "b.png", "c.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.vae").write_bytes(b"old")
    r = run("compress", *paths, "-o", out)
    assert_one_line_error(r)
    assert "exists" in r.output and sorted(p.name for p in out.iterdir()) == ["b.vae"]
    (tmp_path / "d").mkdir()
    twin = make_pngs(tmp_path / "d", "a.png")[0]
    r = run("compress", paths[0], twin, "-o", tmp_path / "new")
    assert r.exit_code == 2 and not (tmp_path / "new").exists()


def test_verbose_prints_a_line_per_file_and_quiet_only_errors(run, tmp_path):
    paths = make_pngs(tmp_path, "a.png", "b.png")
    r = run("compress", *paths, "-o", tmp_path / "v", "-v")
    assert r.exit_code == 0, r.output
    lines = r.stderr.splitlines()
    assert len(lines) == 3 and lines[-1].startswith("vaecodec: compressed 2 files")
    for line, p in zip(lines, paths):
        size = (tmp_path / "v" / p.with_suffix(".vae").name).stat().st_size
        assert line.startswith(f"{p} -> ") and f", {size} bytes, " in line and line.endswith(" bpp")
    r = run("decompress", tmp_path / "v" / "a.vae", "-o", tmp_path / "a.png", "-v", "--force")
    assert r.exit_code == 0 and "bpp) -> " in r.stderr and len(r.stderr.splitlines()) == 1

    r = run("compress", *paths, "-o", tmp_path / "q", "--quiet")
    assert r.exit_code == 0 and r.output == ""
    r = run("compress", paths[0], "-o", tmp_path / "q1.vae", "--quiet")  # not even the single-file line
    assert r.exit_code == 0 and r.output == ""
    r = run("decompress", *sorted((tmp_path / "q").iterdir()), "-o", tmp_path / "dq", "-q")
    assert r.exit_code == 0 and r.output == ""
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    r = run("compress", paths[0], notes, "-o", tmp_path / "q2", "--quiet")
    assert r.exit_code == 1 and r.stderr.splitlines() == [f"vaecodec: error: {notes}: not an image vaecodec can read"]
    assert run("compress", paths[0], "-v", "--quiet", "-o", tmp_path / "q3.vae").exit_code == 2


def test_json_prints_one_object_per_file_on_stdout(run, tmp_path):
    paths = make_pngs(tmp_path, "a.png", "b.png")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    out = tmp_path / "out"
    r = run("compress", paths[0], notes, paths[1], "-o", out, "-q", "40", "--json")
    assert r.exit_code == 1
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert [d["input"] for d in records] == [str(p) for p in paths]
    for d, width in zip(records, (20, 21)):
        vae = out / (d["input"].rsplit("/", 1)[-1][:-4] + ".vae")
        assert d == {"input": d["input"], "output": str(vae), "bytes": vae.stat().st_size,
                     "bpp": pytest.approx(8 * vae.stat().st_size / (16 * width)),
                     "width": width, "height": 16, "quality": 40, "coding": "lossy"}
    r = run("decompress", out / "a.vae", "-o", tmp_path / "a-dec.png", "--json")
    assert r.exit_code == 0
    assert json.loads(r.stdout) == {"input": str(out / "a.vae"), "output": str(tmp_path / "a-dec.png"),
                                    "width": 20, "height": 16}


def test_json_with_data_on_stdout_is_a_usage_error(run, png):
    r = run("compress", png, "-o", "-", "--json")
    assert r.exit_code == 2 and "--json" in r.output and r.stdout_bytes == b""
    assert run("compress", "-", "--json", input=png.read_bytes()).exit_code == 2  # stdin in, stdout out
    run("compress", png)
    assert run("decompress", png.with_suffix(".vae"), "-o", "-", "--json").exit_code == 2


@pytest.mark.parametrize("content", [b"", b"hello", b"\x89PNG\r\n\x1a\n", b"GIF89a\x01"])
def test_unreadable_images_are_named_with_a_plain_reason(run, tmp_path, content):
    bad = tmp_path / "notes.txt"
    bad.write_bytes(content)
    r = run("compress", bad)
    assert_one_line_error(r)
    assert r.stderr.strip() == f"vaecodec: error: {bad}: not an image vaecodec can read"
    r = run("compress", "-", "-o", tmp_path / "x.vae", input=content)
    assert r.stderr.strip() == "vaecodec: error: stdin: not an image vaecodec can read"


def test_a_truncated_image_says_so_without_object_reprs(run, tmp_path, png):
    cut = tmp_path / "cut.png"
    cut.write_bytes(png.read_bytes()[:120])
    r = run("compress", cut)
    assert_one_line_error(r)
    assert r.stderr.startswith(f"vaecodec: error: {cut}: ") and "truncated" in r.stderr
    assert "<" not in r.stderr and " at 0x" not in r.stderr


class _FailingStdout:
    def __init__(self, error):
        self.error = error

    def write(self, data):
        raise self.error

    def flush(self):
        pass


@pytest.mark.parametrize("error, reason", [
    (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    (BrokenPipeError(errno.EPIPE, "Broken pipe"), "the reader closed the pipe early"),
])
def test_stdout_failures_are_one_line_and_exit_1(run, png, monkeypatch, error, reason):
    import vaecodec.cli

    monkeypatch.setattr(vaecodec.cli, "_binary_stdout", lambda: _FailingStdout(error))
    r = run("compress", png, "-o", "-")
    assert r.exit_code == 1, r.output
    assert r.stderr.splitlines() == [f"vaecodec: error: stdout: {reason}"]
    run("compress", png, "-o", png.with_name("p.vae"))
    r = run("decompress", png.with_name("p.vae"), "-o", "-")
    assert r.exit_code == 1 and r.stderr.splitlines() == [f"vaecodec: error: stdout: {reason}"]
    r = run("info", png.with_name("p.vae"))
    assert r.exit_code == 1 and r.stderr.splitlines() == [f"vaecodec: error: stdout: {reason}"]


def test_a_failing_stdout_ends_a_json_batch(run, tmp_path, monkeypatch):
    import vaecodec.cli

    paths = make_pngs(tmp_path, "a.png", "b.png", "c.png")
    monkeypatch.setattr(vaecodec.cli, "_binary_stdout", lambda: _FailingStdout(BrokenPipeError(errno.EPIPE, "x")))
    r = run("compress", *paths, "-o", tmp_path / "out", "--json")
    assert r.exit_code == 1
    assert r.stderr.splitlines() == ["vaecodec: error: stdout: the reader closed the pipe early"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.vae"]


def _vaecodec_process(*args, stdout):
    """``python -m vaecodec`` from this checkout (not the installed package), as a shell pipeline would run it."""
    env = {k: v for k, v in os.environ.items() if k != "VAECODEC_DEBUG"} | {"PYTHONPATH": str(CHECKOUT)}
    return subprocess.Popen([sys.executable, "-m", "vaecodec", *map(str, args)], stdout=stdout,
                            stderr=subprocess.PIPE, env=env, cwd=CHECKOUT)


def test_a_reader_that_closed_the_pipe_is_one_line_and_exit_1(tmp_path, tiny_codec, tiny_model_file):
    vae = tmp_path / "x.vae"
    vae.write_bytes(tiny_codec.compress(smooth_image(24, 24), quality=50))
    proc = _vaecodec_process("decompress", vae, "-o", "-", "--model", tiny_model_file, stdout=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before vaecodec has written a byte
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1, err
    # One line: neither a traceback nor Python's "Exception ignored ... BrokenPipeError" from the flush at exit.
    assert err.splitlines() == ["vaecodec: error: stdout: the reader closed the pipe early"], err


@pytest.mark.skipif(shutil.which("head") is None, reason="needs head(1)")
def test_decompress_into_head_stops_cleanly(tmp_path, tiny_codec, tiny_model_file):
    vae = tmp_path / "big.vae"
    # About 165 kB of PNG: more than a pipe holds, so the write is still going when head exits.
    vae.write_bytes(tiny_codec.compress(smooth_image(384, 512), quality=100))
    proc = _vaecodec_process("decompress", vae, "-o", "-", "--model", tiny_model_file, stdout=subprocess.PIPE)
    head = subprocess.Popen(["head", "-c", "10"], stdin=proc.stdout, stdout=subprocess.PIPE)
    proc.stdout.close()
    first, _ = head.communicate(timeout=120)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1, err
    assert first == b"\x89PNG\r\n\x1a\n\x00\x00"
    assert err.splitlines() == ["vaecodec: error: stdout: the reader closed the pipe early"], err


def test_an_interrupt_is_exit_130_and_leaves_no_partial_file(run, tmp_path, monkeypatch):
    import vaecodec.cli

    paths = make_pngs(tmp_path, "a.png", "b.png")
    real_write = vaecodec.cli._write_output

    def interrupted(path, data, force):
        real_write(path, data, force)
        raise KeyboardInterrupt

    monkeypatch.setattr(vaecodec.cli, "_write_output", interrupted)
    r = run("compress", *paths, "-o", tmp_path / "out")
    assert r.exit_code == 130 and r.stderr.splitlines() == ["vaecodec: interrupted"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.vae"]


def test_an_input_that_names_no_file_is_a_one_line_error(run, tmp_path):
    r = run("compress", "/")
    assert_one_line_error(r)
    assert r.stderr.strip() == "vaecodec: error: /: not a file name"
    assert_one_line_error(run("compress", tmp_path))  # a folder: "Is a directory", not a traceback


def test_animated_input_is_refused_without_frame_and_coded_with_one(run, tmp_path):
    frames = [Image.fromarray(smooth_image(16, 16, seed=s)).convert("P") for s in range(2)]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=50)
    r = run("compress", gif)
    assert_one_line_error(r)
    assert "2 frames" in r.output and "--frame" in r.output and not gif.with_suffix(".vae").exists()
    r = run("compress", gif, "--frame", "1")
    assert r.exit_code == 0, r.output
    assert gif.with_suffix(".vae").exists()


def test_jobs_run_files_in_worker_processes(run, tmp_path):
    """-j 2: the same files as one process, failures still reported per file, exit 1 at the end."""
    pngs = []
    for i in range(3):
        pngs.append(tmp_path / f"p{i}.png")
        Image.fromarray(smooth_image(20, 24 + i, seed=i)).save(pngs[-1])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    one, many = tmp_path / "one", tmp_path / "many"
    assert run("compress", *pngs, "-o", one).exit_code == 0
    r = run("compress", *pngs, bad, "-o", many, "-j", "2")
    assert r.exit_code == 1 and "bad.png: not an image" in r.output
    for p in pngs:
        assert (one / f"{p.stem}.vae").read_bytes() == (many / f"{p.stem}.vae").read_bytes()
    out = tmp_path / "decoded"
    r = run("decompress", *sorted(many.glob("*.vae")), "-o", out, "-j", "2")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["p0.png", "p1.png", "p2.png"]


def test_threads_sets_the_thread_count_and_changes_no_pixel(run, png, tmp_path):
    """--threads N runs the coding on N threads (1 is faster when other work holds the cores); a file
    decodes to the same pixels whatever N."""
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        r = run("compress", png, "-o", tmp_path / "one.vae", "--threads", "1")
        assert r.exit_code == 0, r.output
        assert torch.get_num_threads() == 1
        r = run("decompress", tmp_path / "one.vae", "-o", tmp_path / "three.png", "--threads", "3")
        assert r.exit_code == 0, r.output
        assert torch.get_num_threads() == 3
        assert run("decompress", tmp_path / "one.vae", "-o", tmp_path / "one.png", "--threads", "1").exit_code == 0
        assert np.array_equal(np.asarray(Image.open(tmp_path / "three.png")), np.asarray(Image.open(tmp_path / "one.png")))
        assert run("compress", png, "-o", tmp_path / "zero.vae", "--threads", "0").exit_code == 2  # usage error
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["compress", "--help"], ["train", "--help"]])
def test_help_and_version_import_no_torch(args):
    """Start-up: what needs no model needs no torch (importing it costs seconds)."""
    import subprocess
    import sys

    code = ("import sys, runpy; sys.argv = ['vaecodec'] + %r\n"
            "try:\n    runpy.run_module('vaecodec', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n" % (args,))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_alpha_round_trips_exactly_and_is_not_dropped_silently(run, tmp_path):
    rgba = np.dstack([smooth_image(16, 24), np.tile(np.arange(0, 240, 10, dtype=np.uint8), (16, 1))])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert run("compress", tmp_path / "a.png", "-q", "60").exit_code == 0
    r = run("decompress", tmp_path / "a.vae", "-o", tmp_path / "b.png")
    assert r.exit_code == 0, r.output
    out = np.asarray(Image.open(tmp_path / "b.png"))
    assert out.shape == (16, 24, 4) and np.array_equal(out[:, :, 3], rgba[:, :, 3])
    r = run("decompress", tmp_path / "a.vae", "-o", tmp_path / "b.jpg")
    assert_one_line_error(r)
    assert "alpha" in r.output and not (tmp_path / "b.jpg").exists()


def test_sample_writes_images_from_the_prior(run, tmp_path):
    r = run("sample", "-n", "3", "-o", tmp_path / "s", "--size", "40x24", "--seed", "5")
    assert r.exit_code == 0, r.output
    files = sorted((tmp_path / "s").glob("*.png"))
    assert [f.name for f in files] == ["sample-5.png", "sample-6.png", "sample-7.png"]
    assert Image.open(files[0]).size == (40, 24)
    assert not np.array_equal(np.asarray(Image.open(files[0])), np.asarray(Image.open(files[1])))
    assert_one_line_error(run("sample", "-n", "1", "-o", tmp_path / "s", "--seed", "5", "--size", "40x24"))
    assert run("sample", "-o", tmp_path / "s", "--size", "big").exit_code == 2


def test_one_shot_commands_deliver_everything_before_their_fast_exit(tmp_path, tiny_codec, tiny_model_file):
    """compress/decompress leave through os._exit (no interpreter teardown): stdout must still arrive whole."""
    img = smooth_image(40, 56, seed=3)
    png = tmp_path / "a.png"
    Image.fromarray(img).save(png)
    proc = _vaecodec_process("compress", png, "-o", "-", "--model", tiny_model_file, "-q", "60", stdout=subprocess.PIPE)
    data, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert data == tiny_codec.compress(img, quality=60)
    proc = _vaecodec_process("compress", png, "-o", tmp_path / "a.vae", "--json", "--model", tiny_model_file,
                             stdout=subprocess.PIPE)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert json.loads(out)["bytes"] == (tmp_path / "a.vae").stat().st_size
    proc = _vaecodec_process("compress", tmp_path / "missing.png", "--model", tiny_model_file, stdout=subprocess.PIPE)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and err.decode().startswith("vaecodec: error:")


def test_refinement_bar_restarts_for_a_second_run():
    from vaecodec.cli import _RefinementBar

    bar = _RefinementBar("refining x")
    for total in (4, 3):  # a target size can refine twice
        for done in range(1, total + 1):
            bar(done, total)
    assert bar.bar is not None and bar.bar.length == 3 and bar.bar.pos == 3
    bar.close()
    assert bar.bar is None
