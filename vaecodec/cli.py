"""The ``vaecodec`` command: a thin click layer over the public API.

Rules every command keeps: errors are one line on stderr with a non-zero exit
(1 for bad input or files, 2 for bad usage); outputs are written to a temporary
file and renamed into place, so a failure never leaves a partial file; an
existing file is never overwritten without ``--force``. ``info`` reads only the
header and never imports torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

import click

from . import __version__
from .container import read_header
from .errors import VaecodecError

STDIO = "-"
_IMAGE_SUFFIXES = {".png", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".webp", ".jpg", ".jpeg"}


class _Failure(click.ClickException):
    """A user-facing failure: printed as one line, exit code 1."""

    def show(self, file=None):
        click.echo(f"vaecodec: error: {self.format_message()}", err=True)


def _read_input(path: str) -> bytes:
    try:
        if path == STDIO:
            return sys.stdin.buffer.read()
        return Path(path).read_bytes()
    except OSError as e:
        raise _Failure(f"{path}: {e.strerror or e}") from None


def _write_output(path: str, data: bytes, force: bool) -> None:
    """Write all of ``data`` or nothing: temp file in the same folder, then rename."""
    if path == STDIO:
        out = sys.stdout.buffer
        out.write(data)
        out.flush()
        return
    target = Path(path)
    if target.exists() and not force:
        raise _Failure(f"{path} exists (use --force to overwrite)")
    if target.exists() and target.is_dir():
        raise _Failure(f"{path} is a directory")
    fd, tmp = None, None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent or ".")
        with os.fdopen(fd, "wb") as f:
            fd = None
            f.write(data)
        # mkstemp creates 0600; give the file the mode a plain open() would (or keep the replaced file's).
        os.chmod(tmp, target.stat().st_mode & 0o7777 if target.exists() else 0o666 & ~_umask())
        os.replace(tmp, target)
        tmp = None
    except OSError as e:
        raise _Failure(f"{path}: {e.strerror or e}") from None
    finally:
        if fd is not None:
            os.close(fd)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _outputs(inputs: tuple[str, ...], output: str | None, suffix: str) -> list[str]:
    targets = _output_paths(inputs, output, suffix)
    real = [os.path.realpath(t) for t in targets if t != STDIO]
    if len(set(real)) < len(real):
        raise click.UsageError("two inputs would be written to the same output file")
    return targets


def _output_paths(inputs: tuple[str, ...], output: str | None, suffix: str) -> list[str]:
    """Output path per input: -o as a file (one input) or a folder (several), else beside the input."""
    if len(inputs) > 1:
        if STDIO in inputs:
            raise click.UsageError("'-' (stdin) can only be used as the single input")
        if output is None:
            return [str(Path(p).with_suffix(suffix)) for p in inputs]
        folder = Path(output)
        if not folder.is_dir():
            raise _Failure(f"with several inputs, -o must name an existing folder: {output}")
        return [str(folder / Path(p).with_suffix(suffix).name) for p in inputs]
    (source,) = inputs
    if output is not None:
        if output != STDIO and Path(output).is_dir():
            name = "stdin" if source == STDIO else Path(source).name
            return [str(Path(output) / Path(name).with_suffix(suffix).name)]
        return [output]
    return [STDIO if source == STDIO else str(Path(source).with_suffix(suffix))]


def _progress(items, label: str):
    if len(items) > 1 and sys.stderr.isatty():
        return click.progressbar(items, label=label, file=sys.stderr)
    return contextlib.nullcontext(items)


def _codec(model: str | None):
    from .api import Codec, default_codec

    try:
        return default_codec() if model is None else Codec(model)
    except (VaecodecError, OSError) as e:
        raise _Failure(f"cannot load model: {e}") from None


def _refuse_terminal(path: str) -> None:
    if path == STDIO and sys.stdout.isatty():
        raise _Failure("refusing to write binary data to a terminal; redirect it or use -o")


model_option = click.option("--model", type=click.Path(dir_okay=False), envvar="VAECODEC_MODEL",
                            help="Model file to use instead of the shipped one [env: VAECODEC_MODEL].")
force_option = click.option("-f", "--force", is_flag=True, help="Overwrite existing output files.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=__version__, prog_name="vaecodec")
def cli():
    """vaecodec: a learned image codec (hyperprior VAE + ANS).

    \b
    vaecodec compress photo.png            -> photo.vae
    vaecodec decompress photo.vae          -> photo.png
    vaecodec info photo.vae [--json]
    """


@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", help="Output file, or folder with several inputs; '-' for stdout.")
@click.option("-q", "--quality", type=click.IntRange(1, 100), default=75, show_default=True,
              help="1..100, higher is better and larger.")
@click.option("--target-bpp", type=click.FloatRange(min=0, min_open=True),
              help="Use the highest quality whose file fits in this many bits per pixel.")
@force_option
@model_option
def compress(inputs, output, quality, target_bpp, force, model):
    """Compress images (PNG, JPEG, ...; '-' for stdin) to .vae files."""
    targets = _outputs(inputs, output, ".vae")
    for t in targets:
        _refuse_terminal(t)
        if t != STDIO and Path(t).exists() and not force:
            raise _Failure(f"{t} exists (use --force to overwrite)")
    codec = _codec(model)
    with _progress(list(zip(inputs, targets)), "compressing") as items:
        for source, target in items:
            raw = _read_input(source)
            try:
                encoded = codec.encode(raw, quality=quality, target_bpp=target_bpp)
            except (VaecodecError, ValueError) as e:
                raise _Failure(f"{source}: {e}") from None
            _write_output(target, encoded.data, force)
            if target != STDIO and len(inputs) == 1:
                h = encoded.header
                click.echo(f"{target}: {h.width}x{h.height} {h.mode}, quality {h.quality}, "
                           f"{encoded.num_bytes} bytes, {encoded.bpp:.4f} bpp", err=True)


@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", help="Output image (format from its extension: .png default, .bmp, .tif, .ppm, "
                                     "lossless .webp, or lossy .jpg), or folder with several inputs; '-' for PNG on stdout.")
@force_option
@model_option
def decompress(inputs, output, force, model):
    """Decompress .vae files ('-' for stdin) to images."""
    targets = _outputs(inputs, output, ".png")
    for t in targets:
        _refuse_terminal(t)
        if t != STDIO and Path(t).suffix.lower() not in _IMAGE_SUFFIXES:
            raise _Failure(f"{t}: unknown image format (use .png, .bmp, .tif, .ppm, .webp or .jpg)")
        if t != STDIO and Path(t).exists() and not force:
            raise _Failure(f"{t} exists (use --force to overwrite)")
    codec = _codec(model)
    import io

    with _progress(list(zip(inputs, targets)), "decompressing") as items:
        for source, target in items:
            raw = _read_input(source)
            try:
                image = codec.decompress(raw)
            except VaecodecError as e:
                raise _Failure(f"{source}: {e}") from None
            buf = io.BytesIO()
            fmt = "PNG" if target == STDIO else _pil_format(target)
            try:
                # WebP is written losslessly; JPEG output is lossy by nature (quality 95).
                image.save(buf, format=fmt, **{"WEBP": {"lossless": True}, "JPEG": {"quality": 95}}.get(fmt, {}))
            except (OSError, ValueError) as e:
                raise _Failure(f"{target}: {e}") from None
            _write_output(target, buf.getvalue(), force)


def _pil_format(path: str) -> str:
    from PIL import Image

    Image.init()
    return Image.EXTENSION[Path(path).suffix.lower()]


@cli.command()
@click.argument("file")
@click.option("--json", "as_json", is_flag=True, help="Print the header as JSON.")
def info(file, as_json):
    """Print the header of a .vae file (checks length and CRC; needs no model)."""
    try:
        header = read_header(_read_input(file))
    except VaecodecError as e:
        raise _Failure(f"{file}: {e}") from None
    d = header.to_dict()
    if as_json:
        click.echo(json.dumps(d, indent=2))
    else:
        width = max(map(len, d))
        for k, v in d.items():
            click.echo(f"{k:<{width}}  {v}")


@cli.command()
@click.argument("images", nargs=-1, required=True)
@click.option("--codecs", default="vaecodec,jpeg,webp,avif,avif-psnr,jxl,jpeg2000", show_default=True,
              help="Comma-separated codecs to measure.")
@click.option("--reference", default="jpeg", show_default=True, help="Codec the BD-rates are relative to.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write every measurement and the summary as JSON.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write PSNR and MS-SSIM curves as a PNG.")
@click.option("--markdown", type=click.Path(dir_okay=False), help="Write a markdown summary (tables, command, versions).")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Worker processes (one thread each).")
@click.option("--published/--no-published", default=None,
              help="Include the published learned-codec Kodak curves [default: only when IMAGES are the Kodak set].")
@force_option
@model_option
def bench(images, codecs, reference, output, plot, markdown, jobs, published, force, model):
    """Rate–distortion benchmark of vaecodec and classical codecs on IMAGES (files or folders).

    \b
    Rate is measured from the bytes each codec writes; PSNR and MS-SSIM on the
    decoded pixels. Prints per-setting tables, BD-rates against --reference and
    PSNR at 0.25/0.5/0.75/1.0 bpp.
    """
    from .baselines import CODEC_NAMES
    from .bench import collect_images, format_table, run_benchmark, save_json, save_markdown, save_plot

    names = [c.strip() for c in codecs.split(",") if c.strip()]
    unknown = [c for c in names if c not in CODEC_NAMES]
    if unknown:
        raise click.UsageError(f"unknown codec(s): {', '.join(unknown)} (choose from {', '.join(CODEC_NAMES)})")
    for path in (output, plot, markdown):
        if path and Path(path).exists() and not force:
            raise _Failure(f"{path} exists (use --force to overwrite)")
    try:
        paths = collect_images(images)
    except FileNotFoundError as e:
        raise _Failure(str(e)) from None
    total = len(paths) * len(names)
    bar = click.progressbar(length=total, label="benchmarking", file=sys.stderr) if sys.stderr.isatty() else None
    try:
        if bar:
            with bar:
                report = run_benchmark(paths, names, reference, model, jobs, progress=bar.update, published=published)
        else:
            report = run_benchmark(paths, names, reference, model, jobs, published=published)
    except (VaecodecError, OSError, ValueError) as e:
        raise _Failure(str(e)) from None
    report.command = "vaecodec bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else report.command
    for name, why in report.skipped.items():
        click.echo(f"vaecodec: skipping {name}: {why}", err=True)
    click.echo(format_table(report))
    if output:
        save_json(report, output)
    if plot:
        save_plot(report, plot)
    if markdown:
        save_markdown(report, markdown, plot)


def main() -> None:
    """Console entry point: click's handling, plus no tracebacks for the unexpected."""
    try:
        cli.main(prog_name="vaecodec", standalone_mode=True)
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - a Rust panic is a BaseException
        if os.environ.get("VAECODEC_DEBUG"):
            raise
        if isinstance(e, KeyboardInterrupt):
            click.echo("vaecodec: interrupted", err=True)
            sys.exit(130)
        first = (str(e).splitlines() or [""])[0][:200]
        click.echo(f"vaecodec: internal error: {type(e).__name__}: {first} (set VAECODEC_DEBUG=1 for details)", err=True)
        sys.exit(3)


if __name__ == "__main__":
    main()
