"""Lossless benchmark: every lossless codec on the same images, in one run.

Per image and codec: the bytes written, bits per sub-pixel (8·bytes / (W·H·3)),
encode and decode CPU seconds (one thread), and whether the decoded pixels
equal the input exactly (a codec that is not exact is reported, never hidden).
Images are benchmarked as RGB.

=========  ===================================================================
vaecodec   ``compress(lossless=True)``: the shipped pixel model (whole file)
png        Pillow / zlib, ``optimize=True``
webp       Pillow / libwebp, ``lossless=True, quality=100, method=6``
jxl-e7     imagecodecs / libjxl, ``lossless=True, effort=7``
jxl-e9     the same, ``effort=9``
jpeg2000   Pillow / OpenJPEG, reversible 5/3 with colour transform
=========  ===================================================================

Typical workflow::

    report = run_lossless_benchmark(paths, LOSSLESS_CODECS, jobs=2)
    print(format_lossless(report))
"""

from __future__ import annotations

import io
import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, features

from .baselines import CodecUnavailable
from .bench import environment

__all__ = ["LOSSLESS_CODECS", "LosslessMeasurement", "LosslessReport", "run_lossless_benchmark", "format_lossless",
           "save_lossless_json", "save_lossless_markdown"]

LOSSLESS_CODECS = ("vaecodec", "png", "webp", "jxl-e7", "jxl-e9", "jpeg2000")


@dataclass
class LosslessMeasurement:
    codec: str
    image: str
    pixels: int
    num_bytes: int
    bpsp: float
    encode_cpu_s: float
    decode_cpu_s: float
    exact: bool


@dataclass
class LosslessReport:
    images: list[str]
    codecs: dict[str, str]  # name → library and settings
    measurements: list[LosslessMeasurement]
    skipped: dict[str, str] = field(default_factory=dict)
    environment: dict = field(default_factory=environment)
    command: str = ""

    def summary(self) -> list[dict]:
        """Per codec: mean bpsp, mean CPU seconds per image, and whether every image came back exactly."""
        rows = []
        for name in self.codecs:
            ms = [m for m in self.measurements if m.codec == name]
            if ms:
                rows.append({"codec": name, "bpsp": float(np.mean([m.bpsp for m in ms])),
                             "encode_cpu_s": float(np.mean([m.encode_cpu_s for m in ms])),
                             "decode_cpu_s": float(np.mean([m.decode_cpu_s for m in ms])),
                             "exact": all(m.exact for m in ms), "images": len(ms)})
        return rows


def _pil(fmt: str, **options) -> tuple[Callable, Callable]:
    def encode(pixels: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, fmt, **options)
        return buf.getvalue()

    def decode(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    return encode, decode


def _make(name: str, pixel_model: str | None) -> tuple[str, Callable, Callable]:
    """(description, encode, decode) of a lossless codec; CodecUnavailable if it is not installed."""
    import PIL

    if name == "vaecodec":
        from . import __version__
        from .api import Codec

        codec = Codec(pixel_model=pixel_model)
        pm = codec.lossless_model
        how = f"a mixture of {pm.components}, bits-back over the component" if pm.components > 1 else "one Laplace"
        return (f"vaecodec {__version__}, pixel model {pm.model_id} ({how})",
                lambda p: codec.compress(p, lossless=True), codec.decompress_array)
    if name == "png":
        return (f"Pillow {PIL.__version__} / zlib, optimize=True", *_pil("PNG", optimize=True))
    if name == "webp":
        return (f"Pillow {PIL.__version__} / libwebp {features.version('webp')}, lossless, quality=100, method=6",
                *_pil("WEBP", lossless=True, quality=100, method=6))
    if name == "jpeg2000":
        if not features.check("jpg_2000"):
            raise CodecUnavailable("Pillow was built without OpenJPEG")
        return (f"Pillow {PIL.__version__} / OpenJPEG {features.version('jpg_2000')}, reversible 5/3, colour transform",
                *_pil("JPEG2000", irreversible=False, mct=1, no_jp2=True))
    if name in ("jxl-e7", "jxl-e9"):
        try:
            import imagecodecs
        except ImportError:
            raise CodecUnavailable("imagecodecs is not installed (pip install 'vaecodec[bench]')") from None
        if not imagecodecs.JPEGXL.available:
            raise CodecUnavailable("imagecodecs was built without JPEG XL")
        effort = int(name[-1])
        return (f"imagecodecs {imagecodecs.__version__} / {imagecodecs.jpegxl_version()}, lossless, "
                f"effort {effort}",
                lambda p: imagecodecs.jpegxl_encode(p, lossless=True, effort=effort, numthreads=1),
                lambda d: imagecodecs.jpegxl_decode(d, numthreads=1))
    raise ValueError(f"unknown lossless codec {name!r} (choose from {', '.join(LOSSLESS_CODECS)})")


_LOADED: dict = {}


def _worker_init() -> None:
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def _measure(task) -> LosslessMeasurement:
    name, pixel_model, path = task
    if (name, pixel_model) not in _LOADED:
        _LOADED[name, pixel_model] = _make(name, pixel_model)
    _, encode, decode = _LOADED[name, pixel_model]
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"))
    c0 = time.process_time()
    data = encode(pixels)
    c1 = time.process_time()
    decoded = decode(data)
    c2 = time.process_time()
    n = pixels.shape[0] * pixels.shape[1]
    return LosslessMeasurement(name, Path(path).name, n, len(data), 8 * len(data) / (3 * n), c1 - c0, c2 - c1,
                               bool(decoded.shape == pixels.shape and np.array_equal(decoded, pixels)))


def run_lossless_benchmark(images, codecs=LOSSLESS_CODECS, pixel_model: str | None = None, jobs: int = 1,
                           progress=None) -> LosslessReport:
    """Measure ``codecs`` on ``images`` (paths); unavailable codecs are listed in ``skipped``."""
    described, skipped = {}, {}
    for name in codecs:
        try:
            described[name] = _make(name, pixel_model)[0]
        except CodecUnavailable as e:
            skipped[name] = str(e)
    tasks = [(name, pixel_model, str(p)) for name in described for p in images]
    if jobs > 1:
        with ProcessPoolExecutor(jobs, initializer=_worker_init) as pool:
            results = []
            for m in pool.map(_measure, tasks):
                results.append(m)
                if progress:
                    progress(1)
    else:
        _worker_init()
        results = []
        for t in tasks:
            results.append(_measure(t))
            if progress:
                progress(1)
    return LosslessReport([Path(p).name for p in images], described, results, skipped)


def format_lossless(report: LosslessReport) -> str:
    lines = [f"{'codec':<10} {'bpsp':>7} {'encode s':>9} {'decode s':>9}  exact",
             "-" * 46]
    for r in sorted(report.summary(), key=lambda r: r["bpsp"]):
        lines.append(f"{r['codec']:<10} {r['bpsp']:7.3f} {r['encode_cpu_s']:9.3f} {r['decode_cpu_s']:9.3f}  "
                     f"{'yes' if r['exact'] else 'NO'}")
    return "\n".join(lines)


def save_lossless_json(report: LosslessReport, path) -> None:
    d = asdict(report)
    d["summary"] = report.summary()
    Path(path).write_text(json.dumps(d, indent=1) + "\n")


def save_lossless_markdown(report: LosslessReport, path) -> None:
    rows = sorted(report.summary(), key=lambda r: r["bpsp"])
    lines = ["# Lossless benchmark", "", f"Command: `{report.command}`", "",
             f"{len(report.images)} images, as RGB. Bits per sub-pixel from the bytes each codec wrote (mean over "
             "images); CPU seconds per image at one thread, on the machine below, all codecs in the same run.", "",
             "| codec | bits/sub-pixel | encode CPU s | decode CPU s | exact | settings |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['codec']} | {r['bpsp']:.3f} | {r['encode_cpu_s']:.3f} | {r['decode_cpu_s']:.3f} | "
                     f"{'yes' if r['exact'] else 'NO'} | {report.codecs[r['codec']]} |")
    vae = next((r for r in rows if r["codec"] == "vaecodec"), None)
    if vae:
        lines += ["", "## vaecodec against the others, same run", ""]
        for r in rows:
            if r["codec"] != "vaecodec":
                lines.append(f"- vs {r['codec']}: {100 * (vae['bpsp'] / r['bpsp'] - 1):+.1f}% size; compress + "
                             f"decompress CPU {(vae['encode_cpu_s'] + vae['decode_cpu_s']):.2f} s vs "
                             f"{(r['encode_cpu_s'] + r['decode_cpu_s']):.2f} s "
                             f"({(vae['encode_cpu_s'] + vae['decode_cpu_s']) / max(r['encode_cpu_s'] + r['decode_cpu_s'], 1e-9):.1f}×)")
    if report.skipped:
        lines += ["", "Skipped: " + "; ".join(f"{k} ({v})" for k, v in report.skipped.items())]
    lines += ["", "## Per image (bits/sub-pixel)", "", "| image | " + " | ".join(r["codec"] for r in rows) + " |",
              "|---|" + "---|" * len(rows)]
    for image in report.images:
        cells = []
        for r in rows:
            m = next(m for m in report.measurements if m.codec == r["codec"] and m.image == image)
            cells.append(f"{m.bpsp:.3f}")
        lines.append(f"| {image} | " + " | ".join(cells) + " |")
    env = report.environment
    lines += ["", f"Machine: {env.get('cpu', '?')}, {env.get('cpus')} CPUs; Python {env.get('python')}, "
                  f"numpy {env.get('numpy')}, constriction {env.get('constriction')}; {env.get('date')}"]
    Path(path).write_text("\n".join(lines) + "\n")
