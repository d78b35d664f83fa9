"""The codecs a benchmark compares, configured as their users would configure them.

Each :class:`BenchCodec` encodes a uint8 image at one setting of its sweep to
bytes and decodes them back; the benchmark measures the bytes, not anything
the codec reports. Classical codecs run single-threaded so CPU times compare.

=========  =====================================================================
jpeg       Pillow / libjpeg-turbo, 4:2:0, ``optimize=True``, quality sweep
webp       Pillow / libwebp, ``method=6``, quality sweep
avif       Pillow / libavif + libaom, speed 6, 4:4:4, default tuning
avif-psnr  same, ``tune=psnr``
jxl        imagecodecs / libjxl, effort 7, distance sweep (optional dependency)
jpeg2000   Pillow / OpenJPEG, irreversible 9/7, target-rate sweep
vaecodec   this codec (shipped model or ``--model``), quality sweep
=========  =====================================================================
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, features

__all__ = ["BenchCodec", "CODEC_NAMES", "make_codec", "CodecUnavailable"]

CODEC_NAMES = ("vaecodec", "jpeg", "webp", "avif", "avif-psnr", "jxl", "jpeg2000")


class CodecUnavailable(Exception):
    """An optional codec is not installed here; the benchmark skips it."""


@dataclass
class BenchCodec:
    name: str
    library: str
    settings: str
    sweep: tuple
    encode: Callable[[np.ndarray, object], tuple[bytes, float | None]]
    """pixels, setting → (file bytes, the codec's own Σ −log2 p estimate or None)."""
    decode: Callable[[bytes], np.ndarray]
    learned: bool = False


def _pil_encode(fmt: str, **fixed):
    def encode(pixels: np.ndarray, setting) -> bytes:
        buf = io.BytesIO()
        key, value = setting
        Image.fromarray(pixels).save(buf, fmt, **fixed, **{key: value})
        return buf.getvalue(), None
    return encode


def _pil_decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _pillow(lib: str) -> str:
    import PIL

    return f"Pillow {PIL.__version__} / {lib} {features.version(lib.split()[0].lower()) or ''}".strip()


def _jpeg() -> BenchCodec:
    q = (5, 10, 15, 20, 25, 30, 40, 50, 60, 70, 80, 85, 90, 95)
    return BenchCodec("jpeg", f"{_pillow('jpg')} (libjpeg-turbo)", "4:2:0, optimize=True",
                      tuple(("quality", v) for v in q), _pil_encode("JPEG", subsampling=2, optimize=True), _pil_decode)


def _webp() -> BenchCodec:
    q = (0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)
    return BenchCodec("webp", _pillow("webp"), "method=6", tuple(("quality", v) for v in q),
                      _pil_encode("WEBP", method=6), _pil_decode)


def _avif(tune: str | None) -> BenchCodec:
    if not features.check("avif"):
        raise CodecUnavailable("Pillow was built without AVIF")
    from PIL import AvifImagePlugin

    versions = AvifImagePlugin._avif.codec_versions()
    fixed = dict(speed=6, subsampling="4:4:4", codec="aom", max_threads=1)
    if tune:
        fixed["advanced"] = {"tune": tune}
    q = (5, 15, 25, 35, 45, 55, 65, 75, 85, 92)
    return BenchCodec("avif" if tune is None else f"avif-{tune}", f"{_pillow('avif')} ({versions})",
                      f"libaom speed 6, 4:4:4, tune={tune or 'default'}", tuple(("quality", v) for v in q),
                      _pil_encode("AVIF", **fixed), _pil_decode)


def _jxl() -> BenchCodec:
    try:
        import imagecodecs
    except ImportError:
        raise CodecUnavailable("imagecodecs is not installed (pip install 'vaecodec[bench]')") from None
    if not imagecodecs.JPEGXL.available:
        raise CodecUnavailable("imagecodecs was built without JPEG XL")

    def encode(pixels, setting):
        return imagecodecs.jpegxl_encode(pixels, distance=setting[1], effort=7, numthreads=1), None

    def decode(data):
        out = imagecodecs.jpegxl_decode(data, numthreads=1)
        return out if out.ndim == 3 else np.repeat(out[:, :, None], 3, 2)

    d = (0.5, 0.8, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0)
    return BenchCodec("jxl", f"imagecodecs {imagecodecs.__version__} / libjxl {imagecodecs.jpegxl_version()}",
                      "effort 7", tuple(("distance", v) for v in d), encode, decode)


def _jpeg2000() -> BenchCodec:
    if not features.check("jpg_2000"):
        raise CodecUnavailable("Pillow was built without OpenJPEG")

    def encode(pixels, setting):
        buf = io.BytesIO()
        ratio = 24.0 / setting[1]
        Image.fromarray(pixels).save(buf, "JPEG2000", quality_mode="rates", quality_layers=[ratio],
                                     irreversible=True, mct=1, no_jp2=True)
        return buf.getvalue(), None

    rates = (0.1, 0.15, 0.25, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0)
    return BenchCodec("jpeg2000", _pillow("jpg_2000"), "irreversible 9/7 with colour transform, codestream, rate sweep",
                      tuple(("bpp", v) for v in rates), encode, _pil_decode)


def rd_sweep_qualities(model, points: int = 11) -> tuple[int, ...]:
    """Qualities that sample the model's RD curve evenly: the ones nearest to ``points`` evenly spaced anchor
    positions from quality 1's to quality 100's (a JPEG-matched quality scale is not even in position)."""
    from .coding_model import NUM_QUALITIES

    positions = np.array([model.quality_position(q) for q in range(1, NUM_QUALITIES + 1)])
    targets = np.linspace(positions[0], positions[-1], points)
    return tuple(sorted({int(np.argmin(np.abs(positions - t))) + 1 for t in targets}))


def _vaecodec(model: str | None) -> BenchCodec:
    from . import __version__
    from .api import Codec

    codec = Codec(model)
    m = codec.model
    q = rd_sweep_qualities(m)

    def encode(pixels, setting):
        encoded = codec.encode(pixels, quality=setting[1])
        return encoded.data, encoded.information_bits

    return BenchCodec("vaecodec", f"vaecodec {__version__} / model {m.model_id} ({m.weight_hash.hex()})",
                      "quality sweep", tuple(("quality", v) for v in q), encode,
                      lambda data: codec.decompress_array(data), learned=True)


def make_codec(name: str, model: str | None = None) -> BenchCodec:
    """Build a codec by name; raises CodecUnavailable for a missing optional codec."""
    makers = {
        "vaecodec": lambda: _vaecodec(model), "jpeg": _jpeg, "webp": _webp,
        "avif": lambda: _avif(None), "avif-psnr": lambda: _avif("psnr"), "jxl": _jxl, "jpeg2000": _jpeg2000,
    }
    if name not in makers:
        raise ValueError(f"unknown codec {name!r} (choose from {', '.join(CODEC_NAMES)})")
    return makers[name]()
