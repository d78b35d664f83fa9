"""The ``vaecodec`` command: a thin click layer over the public API.

Rules every command keeps: errors are one line on stderr with a non-zero exit
(1 for bad input or files, 2 for bad usage, 3 for an internal error, 130 when
interrupted); outputs are written to a temporary file and renamed into place,
so a failure never leaves a partial file; an existing file is never overwritten
without ``--force``. A batch attempts every file and exits 1 at the end if any
failed. ``info`` reads only the header and never imports torch. An image's ICC
profile, EXIF and XMP go into the .vae file (unless ``--strip``) and back into
the decompressed image where its format holds them; what it cannot hold is
dropped with a one-line warning.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gc
import json
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import click

from . import __version__
from .container import read_header
from .errors import VaecodecError

STDIO = "-"
_SEPARATORS = tuple(s for s in (os.sep, os.altsep) if s)


class _Failure(click.ClickException):
    """A user-facing failure: printed as one line, exit code 1."""

    def show(self, file=None):
        click.echo(f"vaecodec: error: {self.format_message()}", err=True)


class _StdoutFailure(_Failure):
    """Stdout itself failed (reader gone, disk full): nothing more can be reported there, so a batch stops."""


def _shown(path: str, stream: str) -> str:
    """A path as messages name it: '-' is 'stdin' or 'stdout'."""
    return stream if path == STDIO else path


def _read_input(path: str) -> bytes:
    try:
        if path == STDIO:
            return sys.stdin.buffer.read()
        return Path(path).read_bytes()
    except OSError as e:
        raise _Failure(f"{_shown(path, 'stdin')}: {e.strerror or e}") from None


def _binary_stdout():
    """The byte stream under stdout (its own function so tests can make it fail)."""
    if sys.stdout is None:  # started with stdout closed
        raise _StdoutFailure("stdout: closed")
    return sys.stdout.buffer


def _write_stdout(data: bytes) -> None:
    """Write to stdout; a closed pipe or a full disk is one line and exit 1, not a traceback.

    A write can take only part of the data without raising (the reader
    exited while it was blocked on a full pipe); the rest is written again, so
    that failure is seen instead of a silently cut output. After a failure
    stdout is pointed at the null device, so the interpreter's own flush at
    exit (of what is still buffered) cannot fail a second time and print an
    error of its own.
    """
    try:
        out = _binary_stdout()
        rest = memoryview(data)
        while rest:
            taken = out.write(rest)
            if not taken:
                raise OSError(errno.EIO, "stdout takes no more data")
            rest = rest[taken:]
        out.flush()
    except OSError as e:
        _silence_stdout()
        why = "the reader closed the pipe early" if e.errno == errno.EPIPE else (e.strerror or str(e))
        raise _StdoutFailure(f"stdout: {why}") from None


def _silence_stdout() -> None:
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, sys.stdout.fileno())
        finally:
            os.close(null)
    except (OSError, ValueError, AttributeError):
        pass  # no file descriptor behind stdout (captured, or closed): nothing is flushed to one at exit


def _write_output(path: str, data: bytes, force: bool) -> None:
    """Write all of ``data`` or nothing: temp file in the same folder, then rename."""
    if path == STDIO:
        _write_stdout(data)
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


def _outputs(inputs: tuple[str, ...], output: str | None, suffix: str) -> tuple[list[str], Path | None]:
    """Output path per input, and the folder -o names when it must still be created (else None).

    Refuses (before anything is written) what concerns the whole batch: stdin
    or stdout with several files, two inputs mapped to one output.
    """
    if len(inputs) > 1 and STDIO in inputs:
        raise click.UsageError("'-' (stdin) can only be used as the single input")
    if len(inputs) > 1 and output == STDIO:
        raise click.UsageError("'-o -' (stdout) takes a single input")
    folder = _output_folder(inputs, output)
    if folder is not None:
        targets = [str(folder / _with_suffix("stdin" if p == STDIO else p, suffix).name) for p in inputs]
    elif output is not None:
        targets = [output]
    else:
        targets = [STDIO if p == STDIO else str(_with_suffix(p, suffix)) for p in inputs]
    real = [os.path.realpath(t) for t in targets if t != STDIO]
    if len(set(real)) < len(real):
        raise click.UsageError("two inputs would be written to the same output file")
    return targets, folder if folder is not None and not folder.is_dir() else None


def _with_suffix(path: str, suffix: str) -> Path:
    if not Path(path).name:  # '/', '' or the like: no name to give the output
        raise _Failure(f"{path or repr(path)}: not a file name")
    return Path(path).with_suffix(suffix)


def _output_folder(inputs: tuple[str, ...], output: str | None) -> Path | None:
    """The folder -o names: with several inputs, when it ends in a separator, or when it is one already."""
    if output is None or output == STDIO:
        return None
    folder = Path(output)
    if len(inputs) > 1 or output.endswith(_SEPARATORS) or folder.is_dir():
        if folder.exists() and not folder.is_dir():
            raise _Failure(f"{output} is not a folder (with several inputs, -o names a folder)")
        return folder
    return None


def _make_folder(folder: Path | None) -> None:
    if folder is None:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _Failure(f"{folder}: cannot create folder: {e.strerror or e}") from None


def _progress(items, label: str, show: bool):
    """A progress bar over the items on a terminal (advanced with :func:`_advance`), else nothing."""
    if show and len(items) > 1 and sys.stderr.isatty():
        return click.progressbar(length=len(items), label=label, file=sys.stderr)
    return contextlib.nullcontext(None)


class _RefinementBar:
    """``progress(done, total)`` for :meth:`vaecodec.Codec.encode`: a bar per refinement run (a target
    size may refine twice), on stderr."""

    def __init__(self, label: str):
        self.label = label
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None or done == 1:
            self.close()
            self.bar = click.progressbar(length=total, label=self.label, file=sys.stderr)
            self.bar.__enter__()
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def _advance(bar) -> None:
    if bar is not None:
        bar.update(1)


def _codec(model: str | None, pixel_model: str | None = None):
    # Importing torch creates ~10^5 objects: collecting during the import only slows it, and freezing
    # them afterwards keeps later collections from walking them again.
    gc.disable()
    try:
        from .api import Codec, default_codec

        if model is None and pixel_model is None:
            return default_codec()
        codec = Codec(model, pixel_model)
        if pixel_model is not None:
            codec.pixel_model  # noqa: B018 - load now, so a bad file fails before any work
        return codec
    except (VaecodecError, OSError) as e:
        raise _Failure(f"cannot load model: {e}") from None
    finally:
        gc.freeze()
        gc.enable()


def _refuse_terminal(path: str) -> None:
    if path == STDIO and sys.stdout.isatty():
        raise _Failure("refusing to write binary data to a terminal; redirect it or use -o")


def _interruptible(command: Callable) -> Callable:
    """Ctrl-C is one line and exit 130 (click alone prints 'Aborted!' and exits 1)."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            click.echo("vaecodec: interrupted", err=True)
            raise click.exceptions.Exit(130) from None
    return run


@dataclass(frozen=True)
class _Done:
    """One file converted and written: what --json, --verbose and the summary report of it."""

    record: dict
    line: str
    bytes_in: int
    bytes_out: int
    bpp: float | None = None


@dataclass
class _Tally:
    """What a batch did, for its summary line (its bpp is the mean of the files' bpp, each file counting once)."""

    done: int = 0
    failed: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    bpps: list[float] = field(default_factory=list)

    def add(self, d: _Done) -> None:
        self.done += 1
        self.bytes_in += d.bytes_in
        self.bytes_out += d.bytes_out
        if d.bpp is not None:
            self.bpps.append(d.bpp)

    def summary(self, verb: str) -> str:
        line = f"vaecodec: {verb} {self.done} file{'s' * (self.done != 1)}"
        if self.failed:
            line += f", {self.failed} failed"
        if self.done:
            line += f": {self.bytes_in} -> {self.bytes_out} bytes"
            if self.bpps:
                line += f", mean {sum(self.bpps) / len(self.bpps):.4f} bpp"
        return line


_WORKER: tuple = ()


def _init_worker(fn, codec, opts) -> None:
    """A -j worker: one thread (or --threads), the codec unpickled once (a Codec pickles as its model)."""
    global _WORKER
    import torch

    torch.set_num_threads(opts.get("threads") or 1)
    warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
    _WORKER = (fn, codec, opts)


def _work(pair: tuple[str, str]) -> _Done:
    fn, codec, opts = _WORKER
    return fn(codec, opts, *pair)


def _results(pairs, fn, codec, opts, jobs: int):
    """(pair, outcome) in input order; the outcome is a _Done or the _Failure it raised."""
    if jobs > 1 and len(pairs) > 1 and STDIO not in (t for _, t in pairs):
        import concurrent.futures
        import multiprocessing

        with concurrent.futures.ProcessPoolExecutor(min(jobs, len(pairs)), mp_context=multiprocessing.get_context("spawn"),
                                                    initializer=_init_worker, initargs=(fn, codec, opts)) as pool:
            futures = [pool.submit(_work, pair) for pair in pairs]
            for pair, future in zip(pairs, futures):
                try:
                    yield pair, future.result()
                except _Failure as e:
                    yield pair, e
        return
    if opts.get("threads"):
        import torch

        # Why a user may want 1: torch's OpenMP threads spin while they wait for each other, so when other
        # work holds the cores they take up to ~2× as long as one thread (python benchmarks/threads_under_load.py).
        torch.set_num_threads(opts["threads"])
    for pair in pairs:
        try:
            yield pair, fn(codec, opts, *pair)
        except _StdoutFailure:
            raise
        except _Failure as e:
            yield pair, e


def _run_batch(pairs: list[tuple[str, str]], fn: Callable[..., _Done], codec, opts: dict, jobs: int, *, label: str,
               verb: str, verbose: bool, quiet: bool, as_json: bool, announce_single: bool) -> None:
    """Convert every (input, output) pair with ``fn(codec, opts, source, target)``, in ``jobs`` processes;
    a failed file is one error line and the rest still go.

    Exits 1 at the end if any file failed. A failure of stdout itself ends the
    batch at once: the reader is gone or the disk is full, so nothing after it
    could be delivered. (-j does not apply when stdout is an output.)
    """
    tally = _Tally()
    with warnings.catch_warnings(), _progress(pairs, label, show=not (verbose or quiet)) as bar:
        # Pillow warns about damaged metadata of hostile files; the file's own error line is what counts.
        warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
        for (source, target), outcome in _results(pairs, fn, codec, opts, jobs):
            _advance(bar)
            try:
                if isinstance(outcome, _Failure):
                    raise outcome
                done = outcome
            except _StdoutFailure:
                raise
            except _Failure as e:
                e.show()
                tally.failed += 1
                continue
            tally.add(done)
            if as_json:
                _write_stdout((json.dumps(done.record) + "\n").encode())
            if verbose or (announce_single and not quiet and len(pairs) == 1 and target != STDIO):
                click.echo(done.line, err=True)
    if len(pairs) > 1 and not quiet:
        click.echo(tally.summary(verb), err=True)
    if tally.failed:
        raise click.exceptions.Exit(1)


def _refuse_bad_reporting(targets: list[str], verbose: bool, quiet: bool, as_json: bool) -> None:
    if verbose and quiet:
        raise click.UsageError("--verbose and --quiet exclude each other")
    if as_json and STDIO in targets:
        raise click.UsageError("--json prints to stdout, which already carries the output data; use -o FILE")


model_option = click.option("--model", type=click.Path(dir_okay=False), envvar="VAECODEC_MODEL",
                            help="Model file to use instead of the shipped one [env: VAECODEC_MODEL].")
force_option = click.option("-f", "--force", is_flag=True, help="Overwrite existing output files.")
pixel_model_option = click.option("--pixel-model", type=click.Path(dir_okay=False), envvar="VAECODEC_PIXEL_MODEL",
                                  help="Lossless mode's pixel model (from train-lossless) instead of the shipped one "
                                       "[env: VAECODEC_PIXEL_MODEL].")
verbose_option = click.option("-v", "--verbose", is_flag=True, help="Print a line per file (sizes, bpp) on stderr.")
jobs_option = click.option("-j", "--jobs", type=click.IntRange(1, 256), default=1, show_default=True,
                           help="Worker processes for several files (one model load each; one thread each unless "
                                "--threads).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object per file written on stdout.")
threads_option = click.option("--threads", type=click.IntRange(1, 256),
                              help="Threads per process [default: one per core; 1 in each -j worker]. On a machine "
                                   "busy with other work, 1 is faster.")


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
@click.option("-o", "--output", help="Output file, or folder (created if missing) with several inputs or a "
                                     "trailing '/'; '-' for stdout.")
@click.option("-q", "--quality", type=click.IntRange(1, 100), default=75, show_default=True,
              help="1..100, higher is better and larger; the shipped model's quality q gives about JPEG's PSNR "
                   "at quality q, in fewer bytes.")
@click.option("--target-bpp", type=click.FloatRange(min=0, min_open=True),
              help="Use the highest quality whose file fits in this many bits per pixel.")
@click.option("-e", "--effort", type=click.IntRange(1, 9), default=1, show_default=True,
              help="Encoder effort: above 1 the latents of each image are refined at encode time (smaller or "
                   "better files, same decoder; effort 9 costs ~330× an AVIF speed-6 encode).")
@click.option("--frame", type=click.IntRange(0), help="Frame to code from a multi-frame input (animation, "
                                                      "multi-page TIFF); such inputs are refused without it.")
@click.option("--strip", is_flag=True, help="Leave out the inputs' ICC profile, EXIF and XMP (kept by default).")
@click.option("--lossless", is_flag=True, help="Keep every pixel exactly (--quality and --effort do not apply).")
@force_option
@model_option
@pixel_model_option
@verbose_option
# -q is --quality here (as it has always been), so quiet has only its long name.
@click.option("--quiet", is_flag=True, help="Print nothing but errors.")
@json_option
@jobs_option
@threads_option
@_interruptible
def compress(inputs, output, quality, target_bpp, effort, frame, strip, lossless, force, model, pixel_model, verbose,
             quiet, as_json, jobs, threads):
    """Compress images (PNG, JPEG, ...; '-' for stdin) to .vae files.

    Every input is attempted; a failed one is reported and the others are still
    written (exit code 1 if any failed).
    """
    if lossless and target_bpp is not None:
        raise _Failure("--lossless and --target-bpp exclude each other (a lossless file's size is what it is)")
    targets, new_folder = _outputs(inputs, output, ".vae")
    _refuse_bad_reporting(targets, verbose, quiet, as_json)
    for t in targets:
        _refuse_terminal(t)
        if t != STDIO and Path(t).exists() and not force:
            raise _Failure(f"{t} exists (use --force to overwrite)")
    codec = _codec(model, pixel_model)
    _make_folder(new_folder)

    opts = dict(quality=quality, target_bpp=target_bpp, effort=effort, frame=frame, strip=strip, force=force,
                lossless=lossless, threads=threads,
                # One file's refinement takes seconds to minutes: show its iterations (a batch shows files).
                show_refinement=effort > 1 and not lossless and len(inputs) == 1 and not quiet and not as_json
                and sys.stderr.isatty())
    _run_batch(list(zip(inputs, targets)), _compress_file, codec, opts, jobs, label="compressing", verb="compressed",
               verbose=verbose, quiet=quiet, as_json=as_json, announce_single=True)


@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", help="Output image (format from its extension: .png default, .bmp, .tif, .ppm, "
                                     "lossless .webp, or lossy .jpg), or folder (created if missing) with several "
                                     "inputs or a trailing '/'; '-' for PNG on stdout.")
@force_option
@model_option
@pixel_model_option
@verbose_option
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@json_option
@jobs_option
@threads_option
@_interruptible
def decompress(inputs, output, force, model, pixel_model, verbose, quiet, as_json, jobs, threads):
    """Decompress .vae files ('-' for stdin) to images.

    Every input is attempted; a failed one is reported and the others are still
    written (exit code 1 if any failed). A file's ICC profile, EXIF and XMP are
    written into PNG, JPEG and WebP outputs (TIFF: ICC and EXIF); what the
    output format cannot hold is dropped with a warning.
    """
    from .image import IMAGE_SUFFIXES

    targets, new_folder = _outputs(inputs, output, ".png")
    _refuse_bad_reporting(targets, verbose, quiet, as_json)
    for t in targets:
        _refuse_terminal(t)
        if t != STDIO and Path(t).suffix.lower() not in IMAGE_SUFFIXES:
            raise _Failure(f"{t}: unknown image format (use .png, .bmp, .tif, .ppm, .webp or .jpg)")
        if t != STDIO and Path(t).exists() and not force:
            raise _Failure(f"{t} exists (use --force to overwrite)")
    codec = _codec(model, pixel_model)
    _make_folder(new_folder)
    opts = dict(force=force, quiet=quiet, threads=threads)
    _run_batch(list(zip(inputs, targets)), _decompress_file, codec, opts, jobs, label="decompressing",
               verb="decompressed", verbose=verbose, quiet=quiet, as_json=as_json, announce_single=False)


def _compress_file(codec, opts: dict, source: str, target: str) -> _Done:
    raw = _read_input(source)
    bar = _RefinementBar(f"refining {_shown(source, 'stdin')}") if opts.get("show_refinement") else None
    try:
        encoded = codec.encode(raw, quality=opts["quality"], target_bpp=opts["target_bpp"], effort=opts["effort"],
                               frame=opts["frame"], metadata=not opts["strip"], lossless=opts["lossless"],
                               progress=bar)
    except (VaecodecError, ValueError) as e:
        raise _Failure(f"{_shown(source, 'stdin')}: {e}") from None
    finally:
        if bar is not None:
            bar.close()
    _write_output(target, encoded.data, opts["force"])
    h = encoded.header
    record = dict(input=source, output=target, bytes=encoded.num_bytes, bpp=encoded.bpp,
                  width=h.width, height=h.height, quality=h.quality, coding=h.coding)
    setting = "lossless" if h.coding == "lossless" else f"quality {h.quality}"
    line = (f"{_shown(source, 'stdin')} -> {_shown(target, 'stdout')}: {h.width}x{h.height} {h.mode}, "
            f"{setting}, {encoded.num_bytes} bytes, {encoded.bpp:.4f} bpp")
    return _Done(record, line, len(raw), encoded.num_bytes, encoded.bpp)


def _decompress_file(codec, opts: dict, source: str, target: str) -> _Done:
    import io

    raw = _read_input(source)
    try:
        image = codec.decompress(raw)
    except VaecodecError as e:
        raise _Failure(f"{_shown(source, 'stdin')}: {e}") from None
    buf = io.BytesIO()
    fmt = "PNG" if target == STDIO else _pil_format(target)
    if image.mode in ("RGBA", "LA") and fmt in ("JPEG", "PPM"):
        raise _Failure(f"{_shown(source, 'stdin')}: has an alpha channel, which {fmt} cannot hold; "
                       "write .png, .webp or .tif")
    # Taken out of info so that only what _metadata_options chose is written (PNG would take the ICC by itself).
    kept = {key: image.info.pop(key) for key in _METADATA_LABELS if key in image.info}
    options, dropped = _metadata_options(kept, fmt)
    if dropped and not opts["quiet"]:
        click.echo(f"vaecodec: warning: {_shown(target, 'stdout')}: {'; '.join(dropped)}; not written", err=True)
    try:
        # WebP is written losslessly; JPEG output is lossy by nature (quality 95).
        options.update({"WEBP": {"lossless": True}, "JPEG": {"quality": 95}}.get(fmt, {}))
        image.save(buf, format=fmt, **options)
    except (OSError, ValueError) as e:
        raise _Failure(f"{target}: {e}") from None
    data = buf.getvalue()
    _write_output(target, data, opts["force"])
    width, height = image.size
    bpp = 8 * len(raw) / (width * height)
    record = dict(input=source, output=target, width=width, height=height)
    line = (f"{_shown(source, 'stdin')} ({len(raw)} bytes, {bpp:.4f} bpp) -> {_shown(target, 'stdout')}: "
            f"{width}x{height} {image.mode}, {len(data)} bytes")
    return _Done(record, line, len(raw), len(data))


def _pil_format(path: str) -> str:
    from PIL import Image

    Image.init()
    return Image.EXTENSION[Path(path).suffix.lower()]


_METADATA_LABELS = {"icc_profile": "ICC profile", "exif": "EXIF", "xmp": "XMP"}
# What each output format holds, through Pillow's save options; the others (BMP, PPM) hold none.
_HOLDS = {"PNG": ("icc_profile", "exif", "xmp"), "JPEG": ("icc_profile", "exif", "xmp"),
          "WEBP": ("icc_profile", "exif", "xmp"), "TIFF": ("icc_profile", "exif")}
_JPEG_XMP_BYTES = 65504  # one APP1 segment, less its "http://ns.adobe.com/xap/1.0/\0"


def _metadata_options(kept: dict, fmt: str) -> tuple[dict, list[str]]:
    """Pillow save options that write ``kept`` (a decoded image's ``info`` metadata) in format ``fmt``,
    and a phrase for each part that cannot be written there."""
    import PIL
    from PIL import PngImagePlugin

    options: dict = {}
    dropped: list[str] = []
    cannot = [key for key in kept if key not in _HOLDS.get(fmt, ())]
    if cannot:
        labels = [_METADATA_LABELS[key] for key in cannot]
        dropped.append(f"{fmt} cannot hold the {', '.join(labels[:-1]) + ' and ' * (len(labels) > 1) + labels[-1]}")
    for key, value in kept.items():
        if key in cannot:
            continue
        if key == "xmp" and fmt == "JPEG" and len(value) > _JPEG_XMP_BYTES:
            dropped.append(f"the XMP ({len(value)} bytes) is more than a JPEG holds ({_JPEG_XMP_BYTES})")
        elif key == "xmp" and fmt == "JPEG" and int(PIL.__version__.split(".")[0]) < 11:
            dropped.append("writing XMP to JPEG needs Pillow 11 or later")
        elif key == "xmp" and fmt == "PNG":
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                dropped.append("the XMP is not UTF-8 text, which PNG requires")
                continue
            options["pnginfo"] = PngImagePlugin.PngInfo()
            options["pnginfo"].add_itxt("XML:com.adobe.xmp", text)
        else:
            options[key] = value
    return options, dropped


@cli.command()
@click.argument("file")
@click.option("--json", "as_json", is_flag=True, help="Print the header as JSON.")
@_interruptible
def info(file, as_json):
    """Print the header of a .vae file and the metadata it keeps (checks length and CRC; needs no model)."""
    try:
        header = read_header(_read_input(file))
    except VaecodecError as e:
        raise _Failure(f"{_shown(file, 'stdin')}: {e}") from None
    d = header.to_dict()
    if as_json:
        text = json.dumps(d, indent=2)
    else:
        shown = dict(d, metadata=", ".join(f"{k} {n} bytes" for k, n in d["metadata"].items()) or "none")
        width = max(map(len, shown))
        text = "\n".join(f"{k:<{width}}  {v}" for k, v in shown.items())
    _write_stdout((text + "\n").encode())


@cli.command()
@click.argument("images", nargs=-1, required=True)
@click.option("--codecs", help="Comma-separated codecs to measure [default: vaecodec,jpeg,webp,avif,avif-psnr,jxl,"
                                "jpeg2000; with --lossless: vaecodec,png,webp,jxl-e7,jxl-e9,jpeg2000].")
@click.option("--lossless", is_flag=True, help="Benchmark the lossless codecs: bits per sub-pixel, CPU time, exactness.")
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
@pixel_model_option
@_interruptible
def bench(images, codecs, lossless, reference, output, plot, markdown, jobs, published, force, model, pixel_model):
    """Rate–distortion benchmark of vaecodec and classical codecs on IMAGES (files or folders).

    \b
    Rate is measured from the bytes each codec writes; PSNR and MS-SSIM on the
    decoded pixels. Prints per-setting tables, BD-rates against --reference and
    PSNR at 0.25/0.5/0.75/1.0 bpp. With --lossless: bits per sub-pixel and
    encode/decode CPU seconds of each lossless codec, each checked exact.
    """
    if lossless:
        if plot:
            raise _Failure("--plot applies to the lossy benchmark only")
        return _bench_lossless(images, codecs, output, markdown, jobs, force, pixel_model)
    codecs = codecs or "vaecodec,jpeg,webp,avif,avif-psnr,jxl,jpeg2000"
    if plot:
        # Checked first: a missing optional dependency must not surface after minutes of measuring.
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise _Failure("--plot needs matplotlib: pip install 'vaecodec[bench]'") from None
    from .baselines import CODEC_NAMES
    from .bench import format_table, run_benchmark, save_json, save_markdown, save_plot

    names, paths = _bench_inputs(images, codecs, CODEC_NAMES, "codec", (output, plot, markdown), force)
    report = _measure(len(paths) * len(names), functools.partial(run_benchmark, paths, names, reference, model, jobs,
                                                                 published=published))
    click.echo(format_table(report))
    if output:
        save_json(report, output)
    if plot:
        save_plot(report, plot)
    if markdown:
        save_markdown(report, markdown, plot)


def _bench_inputs(images, codecs: str, known, what: str, outputs, force: bool):
    """The codec names (checked against ``known``) and image paths of a benchmark; outputs not overwritten."""
    from .bench import collect_images

    names = [c.strip() for c in codecs.split(",") if c.strip()]
    unknown = [c for c in names if c not in known]
    if unknown:
        raise click.UsageError(f"unknown {what}(s): {', '.join(unknown)} (choose from {', '.join(known)})")
    for path in outputs:
        if path and Path(path).exists() and not force:
            raise _Failure(f"{path} exists (use --force to overwrite)")
    try:
        return names, collect_images(images)
    except FileNotFoundError as e:
        raise _Failure(str(e)) from None


def _measure(total: int, run: Callable):
    """Run a benchmark (a progress bar on a terminal); its errors become one-line failures, its skips warnings."""
    bar = click.progressbar(length=total, label="benchmarking", file=sys.stderr) if sys.stderr.isatty() else None
    try:
        if bar:
            with bar:
                report = run(progress=bar.update)
        else:
            report = run(progress=None)
    except (VaecodecError, OSError, ValueError) as e:
        raise _Failure(str(e)) from None
    report.command = "vaecodec bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else report.command
    for name, why in report.skipped.items():
        click.echo(f"vaecodec: skipping {name}: {why}", err=True)
    return report


def _bench_lossless(images, codecs, output, markdown, jobs, force, pixel_model) -> None:
    from .bench_lossless import (LOSSLESS_CODECS, format_lossless, run_lossless_benchmark, save_lossless_json,
                                 save_lossless_markdown)

    names, paths = _bench_inputs(images, codecs or ",".join(LOSSLESS_CODECS), LOSSLESS_CODECS, "lossless codec",
                                 (output, markdown), force)
    report = _measure(len(paths) * len(names), functools.partial(run_lossless_benchmark, paths, names,
                                                                 pixel_model=pixel_model, jobs=jobs))
    click.echo(format_lossless(report))
    if output:
        save_lossless_json(report, output)
    if markdown:
        save_lossless_markdown(report, markdown)


MODEL_PRESETS = {
    # vaecodec 0.1's shipped architecture.
    "hp64": dict(kind="hyperprior"),
    # vaecodec 0.2: wide bottleneck (cheap per pixel), M=256, checkerboard context, λ up to high fidelity.
    "cb64-w128-m256": dict(kind="checkerboard", channels=64, bottleneck_channels=128, latent_channels=256,
                           context_channels=128, hyper_hidden=192, num_scales=72,
                           lambdas=tuple(0.0008 * 2**k for k in range(11))),
    # The same with N = 96 at 1/2 and 1/4 resolution, where fidelity is decided (benchmarks/ceiling.py).
    "cb96-w128-m256": dict(kind="checkerboard", channels=96, bottleneck_channels=128, latent_channels=256,
                           context_channels=128, hyper_hidden=192, num_scales=72,
                           lambdas=tuple(0.0008 * 2**k for k in range(11))),
    # The stable run today: cb64-w128-m256 re-anchored up to λ 3.2768 and grown a channel context (ELIC's slices).
    "cc64-w128-m256": dict(kind="checkerboard", channels=64, bottleneck_channels=128, latent_channels=256,
                           context_channels=128, hyper_hidden=192, num_scales=72,
                           lambdas=tuple(0.0008 * 2**k for k in range(13)), channel_slices=(16, 16, 32, 64, 128)),
    # For tests and smoke runs only.
    "tiny": dict(kind="checkerboard", channels=8, bottleneck_channels=12, latent_channels=12, hyper_channels=8,
                 context_channels=8, lambdas=(0.004, 0.016, 0.064)),
}


def _train_log(log_file: str | None):
    import time

    sink = open(log_file, "a", buffering=1) if log_file else None  # noqa: SIM115 - lives as long as the run

    def log(msg: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}"
        if int(os.environ.get("RANK", 0)) == 0:
            click.echo(line, err=True)
            if sink:
                sink.write(line + "\n")
    return log


train_options = [
    click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="Folder of training images."),
    click.option("--eval", "eval_folder", type=click.Path(exists=True, file_okay=False),
                 help="Folder for the periodic estimate in the log (e.g. Kodak; never train on it)."),
    click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True),
    click.option("--threads", type=click.IntRange(0, 256), default=1, show_default=True,
                 help="CPU threads per process (0: re-probe 1 vs 2 as the load changes)."),
    click.option("--precision", type=click.Choice(["auto", "float32", "bfloat16"]), default="auto", show_default=True,
                 help="bfloat16 autocast for the transforms (auto: where the GPU or CPU (AMX, AVX512-BF16) runs it natively)."),
    click.option("--compile", "compile_step", is_flag=True,
                 help="torch.compile the training step (minutes to compile, then faster steps; needs a C++ compiler on CPU)."),
    # --log-file too: torchrun reads "--log" as an abbreviation of its own --log-dir and --logs-specs.
    click.option("--log", "--log-file", "log_file", type=click.Path(dir_okay=False),
                 help="Append the log to this file too (--log-file under torchrun)."),
    click.option("--save-every", type=click.FloatRange(min=1), default=300, show_default=True, help="Seconds between saves."),
    click.option("--eval-every", type=click.FloatRange(min=1), default=1800, show_default=True,
                 help="Seconds between estimates."),
    click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True, help="Small-patch batch."),
    click.option("--patch", type=click.IntRange(64), default=128, show_default=True, help="Small-patch size."),
    click.option("--crops-per-image", type=click.IntRange(1), default=20, show_default=True),
    click.option("--data-workers", type=click.IntRange(1), default=1, show_default=True,
                 help="Processes that build the crop pool (more than 1: a per-image seeding, other crops)."),
    click.option("--lr", type=click.FloatRange(min=0, min_open=True),
                 help="train: the stable phase's learning rate; default the run's own, which a resume keeps "
                      "(1e-3 for a new run); another value changes the run from here on, recorded in its history. "
                      "anneal: the rate the decay starts from; default the stable run's."),
]


def _apply(options):
    def wrap(f):
        for opt in reversed(options):
            f = opt(f)
        return f
    return wrap


def _train_options(device, threads, precision, compile_step, save_every, eval_every, batch_size, patch, crops_per_image,
                   data_workers, lr, **extra):
    from .training import TrainOptions

    return TrainOptions(device=device, threads=threads, precision=precision, compile=compile_step,
                        save_every_s=save_every, eval_every_s=eval_every,
                        batch_size=batch_size, patch=patch, large_batch=max(1, batch_size // 4),
                        crops_per_image=crops_per_image, data_workers=data_workers, lr=lr, **extra)


@cli.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@_apply(train_options)
@click.option("--model", "preset", type=click.Choice(sorted(MODEL_PRESETS)), default="cb64-w128-m256", show_default=True,
              help="Architecture of a new run (ignored when resuming).")
@click.option("--widen-from", type=click.Path(exists=True, dir_okay=False),
              help="Start a new run from this trained checkpoint, widened into --model (same function at first).")
@click.option("--steps", type=click.IntRange(1), help="Stop after this many more steps.")
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True), help="Stop after this much wall time.")
def train(checkpoint, data, eval_folder, log_file, preset, widen_from, steps, minutes, **kw):
    """Train at a constant learning rate, starting or continuing CHECKPOINT.

    \b
    Resumable and cumulative: CHECKPOINT is saved atomically every few minutes
    and a later run continues it at full learning rate. Export an annealed
    copy (vaecodec anneal), never this one. Runs unchanged under
    `torchrun --nproc_per_node N -m vaecodec train ...` and with --device cuda.
    """
    from .model import ModelConfig
    from .training import train as run

    config = ModelConfig(**MODEL_PRESETS[preset])
    try:
        state = run(data, checkpoint, config=config, steps=steps, minutes=minutes, options=_train_options(**kw),
                    eval_folder=eval_folder, log=_train_log(log_file), widen_from=widen_from)
    except (ValueError, OSError) as e:
        raise _Failure(str(e)) from None
    _train_log(log_file)(f"stopped at step {state.step}, {state.cpu_seconds / 3600:.3f} CPU-h")


@cli.command()
@click.argument("stable", type=click.Path(exists=True, dir_okay=False))
@click.argument("annealed", type=click.Path(dir_okay=False))
@_apply(train_options)
@click.option("--steps", type=click.IntRange(1), default=6000, show_default=True, help="Length of the decay.")
def anneal(stable, annealed, data, eval_folder, log_file, steps, **kw):
    """Decay a copy of STABLE's learning rate into ANNEALED, the checkpoint to export.

    STABLE is only read, so training can continue from it at full rate.
    An unfinished ANNEALED of the same run is continued.
    """
    from .training import anneal as run

    try:
        state = run(data, stable, annealed, steps, options=_train_options(**kw, large_fraction=1.0),
                    eval_folder=eval_folder, log=_train_log(log_file))
    except (ValueError, OSError) as e:
        raise _Failure(str(e)) from None
    _train_log(log_file)(f"annealed to step {state.step}, {state.cpu_seconds / 3600:.3f} CPU-h")


@cli.command("fork-int8")
@click.argument("stable", type=click.Path(exists=True, dir_okay=False))
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False),
              help="Training images; a few crops calibrate the rounding steps.")
@click.option("--log", "log_file", type=click.Path(dir_okay=False), help="Append the log to this file too.")
def fork_int8(stable, output, data, log_file):
    """Fork STABLE into OUTPUT, whose synthesis trains as the 8-bit integer decoder computes.

    \b
    OUTPUT is a new stable checkpoint with every weight of STABLE (of an
    annealed checkpoint: its EMA): continue it with `vaecodec train OUTPUT ...`
    (quantization-aware training), or fine-tune it with a short
    `vaecodec anneal OUTPUT FINAL --lr 1e-4 ...`, and export; its files decode
    through int8 products (the synthesis in ~0.4× the exact one's time).
    """
    from .training.int8 import fork_int8_synthesis

    try:
        fork_int8_synthesis(stable, output, data, log=_train_log(log_file))
    except (ValueError, OSError) as e:
        raise _Failure(str(e)) from None


@cli.command()
@click.argument("stable", type=click.Path(exists=True, dir_okay=False))
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--lambdas", required=True, help="The new λ anchors, ascending, comma-separated (e.g. the old ones "
              "and 1.6384,3.2768 to reach higher qualities).")
@click.option("--log", "log_file", type=click.Path(dir_okay=False), help="Append the log to this file too.")
def reanchor(stable, output, lambdas, log_file):
    """Copy STABLE into OUTPUT with other λ anchors: the span of qualities the model trains and offers.

    \b
    The weights stay; the gains are read off at the new anchors (extrapolated
    along the end segments), so the model is unchanged inside the old span.
    Continue OUTPUT with `vaecodec train OUTPUT ...`: training then samples λ
    over the new span. OUTPUT may be STABLE itself (replaced atomically).
    """
    from .training.warm_start import reanchor as run

    try:
        values = tuple(float(v) for v in lambdas.split(","))
    except ValueError:
        raise click.BadParameter(f"{lambdas!r} is not a comma-separated list of numbers") from None
    try:
        state = run(stable, output, values)
    except (ValueError, OSError, KeyError) as e:
        raise _Failure(str(e)) from None
    _train_log(log_file)(f"re-anchored {stable} at step {state.step} ({state.cpu_seconds / 3600:.3f} CPU-h) into "
                         f"{output}: λ {', '.join(f'{v:g}' for v in values)}")


@cli.command("add-channel-context")
@click.argument("stable", type=click.Path(exists=True, dir_okay=False))
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--slices", default="16,16,32,64,128", show_default=True,
              help="Channel slice sizes in coding order, comma-separated; they sum to the latent channels.")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False),
              help="Training images (a few crops order the channels by rate; never the test set).")
@click.option("--log", "log_file", type=click.Path(dir_okay=False), help="Append the log to this file too.")
def add_channel_context(stable, output, slices, data, log_file):
    """Copy the checkerboard STABLE into OUTPUT with a channel context (ELIC's slices).

    \b
    The latent channels are reordered by rate (costliest first) and the new
    networks start at zero, so OUTPUT codes exactly as STABLE until training
    teaches it more. Continue OUTPUT with `vaecodec train OUTPUT ...`; steps
    and CPU-hours carry on. OUTPUT may be STABLE itself (replaced atomically).
    """
    from .training.warm_start import add_channel_context as run

    try:
        sizes = tuple(int(v) for v in slices.split(","))
    except ValueError:
        raise click.BadParameter(f"{slices!r} is not a comma-separated list of integers") from None
    log = _train_log(log_file)
    try:
        state = run(stable, output, sizes, data, log=log)
    except (ValueError, OSError, KeyError) as e:
        raise _Failure(str(e)) from None
    log(f"grew {stable} at step {state.step} ({state.cpu_seconds / 3600:.3f} CPU-h) a channel context into {output}: "
        f"slices {', '.join(str(v) for v in sizes)}")


def _size(value: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not WIDTHxHEIGHT (e.g. 256x256)") from None
    if not (1 <= w <= 4096 and 1 <= h <= 4096):
        raise click.BadParameter(f"{value!r}: each side must be 1..4096")
    return w, h


@cli.command()
@click.option("-n", "count", type=click.IntRange(1, 1000), default=8, show_default=True, help="How many images.")
@click.option("-o", "--output", required=True, help="Folder for the PNGs (created if missing).")
@click.option("--seed", type=int, default=0, show_default=True, help="Image i uses seed SEED + i.")
@click.option("--size", default="256x256", show_default=True, help="WIDTHxHEIGHT.")
@click.option("-q", "--quality", type=click.IntRange(1, 100), default=75, show_default=True,
              help="The quality whose prior is sampled.")
@force_option
@model_option
@_interruptible
def sample(count, output, seed, size, quality, force, model):
    """Draw images from the model's prior: the decoder run on random bits (see Codec.sample).

    Writes sample-SEED.png files into OUTPUT.
    """
    width, height = _size(size)
    folder = Path(output)
    targets = [folder / f"sample-{seed + i}.png" for i in range(count)]
    existing = [t for t in targets if t.exists()]
    if existing and not force:
        raise _Failure(f"{existing[0]} exists (use --force to overwrite)")
    codec = _codec(model)
    _make_folder(folder)
    for i, target in enumerate(targets):
        import io

        buf = io.BytesIO()
        codec.sample(width, height, quality=quality, seed=seed + i).save(buf, "PNG")
        _write_output(str(target), buf.getvalue(), force)
    click.echo(f"vaecodec: wrote {count} samples of {width}x{height} (quality {quality}) to {folder}", err=True)


@cli.command("train-lossless")
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="Folder of training images.")
@click.option("--hidden", type=click.IntRange(4, 512), default=64, show_default=True, help="Width of each channel's MLP.")
@click.option("--steps", type=click.IntRange(1), default=30000, show_default=True)
@click.option("--samples-per-image", type=click.IntRange(1), default=40000, show_default=True,
              help="Random contexts drawn from each training image.")
@click.option("--components", type=click.IntRange(1, 8), default=1, show_default=True,
              help="Discretized Laplaces per sub-pixel; above 1 a mixture, coded by bits-back over the component.")
@click.option("--model-id", default=None, help="Model id written into files (default px12-h<hidden>[-m<components>]).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--log", "log_file", type=click.Path(dir_okay=False), help="Append the log to this file too.")
@click.option("-f", "--force", is_flag=True, help="Overwrite OUTPUT.")
def train_lossless(output, data, hidden, steps, samples_per_image, components, model_id, seed, log_file, force):
    """Train lossless mode's pixel model (RGB and greyscale) and write it to OUTPUT (.npz).

    Minutes of one CPU thread, not hours: the model learns from a table of
    sampled contexts. OUTPUT is the integer-exact model files are coded with.
    """
    import torch

    from .training.pixel import PixelTrainOptions, train_pixel_model

    if Path(output).exists() and not force:
        raise _Failure(f"{output} exists (use --force to overwrite)")
    torch.set_num_threads(1)
    options = PixelTrainOptions(hidden=hidden, steps=steps, samples_per_image=samples_per_image, seed=seed,
                                components=components,
                                model_id=model_id or f"px12-h{hidden}" + (f"-m{components}" if components > 1 else ""))
    try:
        model = train_pixel_model(data, options, log=_train_log(log_file))
        tmp = Path(f"{output}.{os.getpid()}.tmp")
        model.save(tmp)
        os.replace(tmp, output)
    except (ValueError, OSError) as e:
        raise _Failure(str(e)) from None
    _train_log(log_file)(f"wrote {output} ({model.model_id})")


def main() -> None:
    """Console entry point: click's handling, plus no tracebacks for the unexpected."""
    try:
        cli.main(prog_name="vaecodec", standalone_mode=True)
    except SystemExit as e:
        _exit(e.code)
    except BaseException as e:  # noqa: BLE001 - a Rust panic is a BaseException
        if os.environ.get("VAECODEC_DEBUG"):
            raise
        if isinstance(e, KeyboardInterrupt):
            click.echo("vaecodec: interrupted", err=True)
            sys.exit(130)
        first = (str(e).splitlines() or [""])[0][:200]
        click.echo(f"vaecodec: internal error: {type(e).__name__}: {first} (set VAECODEC_DEBUG=1 for details)", err=True)
        sys.exit(3)


_FAST_EXIT_COMMANDS = {"compress", "decompress", "info", "sample"}


def _exit(code) -> None:
    """Exit with ``code``; after a one-shot coding command, without the interpreter's teardown.

    Tearing down an interpreter that imported torch costs ~0.35 s of wall time
    (``benchmarks/startup.py``: ``python -c 'import torch'`` 1.29 s, 0.93 s
    through ``os._exit``), a third of compressing a small image from the shell.
    Those commands have closed and renamed every output and joined their worker
    pools before returning, so once stdout and stderr are flushed nothing is
    left for the teardown to do.
    Other commands (training, benchmarks) exit normally.
    """
    command = sys.argv[1] if len(sys.argv) > 1 else None
    if "torch" in sys.modules and command in _FAST_EXIT_COMMANDS:
        if not isinstance(code, int):
            if code is not None:
                print(code, file=sys.stderr)
            code = 0 if code is None else 1
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (BrokenPipeError, OSError):
            code = code or 1
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
