"""What an installed vaecodec ships besides code (type marker, licence) and what a missing extra says."""

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_package_is_marked_typed_and_the_marker_is_shipped():
    assert (ROOT / "vaecodec" / "py.typed").is_file()
    assert "py.typed" in _pyproject()["tool"]["setuptools"]["package-data"]["vaecodec"]


def test_the_licence_is_apache_2_and_is_shipped():
    project = _pyproject()["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text


def test_bench_plot_without_matplotlib_fails_before_measuring(tmp_path, monkeypatch):
    import vaecodec.bench
    from vaecodec.cli import cli

    def measure(*args, **kwargs):
        raise AssertionError("the benchmark ran")

    monkeypatch.setattr(vaecodec.bench, "run_benchmark", measure)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    (tmp_path / "a.png").write_bytes(b"")
    result = CliRunner().invoke(cli, ["bench", str(tmp_path / "a.png"), "--codecs", "jpeg",
                                      "--plot", str(tmp_path / "rd.png")])
    assert result.exit_code == 1
    assert result.stderr == "vaecodec: error: --plot needs matplotlib: pip install 'vaecodec[bench]'\n"
    assert not (tmp_path / "rd.png").exists()


@pytest.mark.parametrize("args", [[], ["--plot", "rd.png"]])
def test_bench_without_plot_or_with_matplotlib_gets_past_the_check(tmp_path, monkeypatch, args):
    """The check is for --plot only, and passes where matplotlib imports (it is installed here)."""
    pytest.importorskip("matplotlib")
    import vaecodec.bench
    from vaecodec.cli import cli

    def measure(*a, **kw):
        raise ValueError("measured")  # stop here: the command reached the benchmark

    monkeypatch.setattr(vaecodec.bench, "run_benchmark", measure)
    (tmp_path / "a.png").write_bytes(b"")
    args = [str(tmp_path / a) if a.endswith(".png") else a for a in args]
    result = CliRunner().invoke(cli, ["bench", str(tmp_path / "a.png"), "--codecs", "jpeg", *args])
    assert result.exit_code == 1 and "measured" in result.stderr
