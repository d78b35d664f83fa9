"""A quality scale that reads like JPEG's: quality q gives about the PSNR JPEG gives at quality q.

Why: a model's qualities 1..100 are positions along its trained λ anchors.
Spaced evenly over 13 anchors, quality 75 of the model shipped before this
scale (``cb64-w128-m256-vr-r3``) was a 39.7 dB, 2.5 bpp setting on Kodak where
JPEG's 75 gives 34.5 dB at 1.34 bpp: someone who typed the quality they know
from JPEG got a file nearly twice the size of JPEG's, at a quality they did not
ask for. So at export each quality gets the anchor position where the model's
PSNR matches JPEG's (4:2:0, libjpeg-turbo via Pillow) at that quality,
measured on *training* images (never the Kodak test set). Where JPEG's PSNR
lies beyond what the anchors reach (its lowest qualities, and its highest,
above the model's top anchor), those qualities spread evenly in position to the
model's first and last anchor: quality 1 and 100 stay the model's ends, and no
quality is extrapolated beyond the trained λ.

Workflow (``bin/export-model --jpeg-quality-scale DIR``)::

    probe = CodingModel.from_training_model(net, model_id)          # evenly spaced qualities
    images = calibration_images(DIR, count=8)
    curve = measure_model_psnr(probe, images)                       # PSNR by anchor position
    jpeg = measure_jpeg_psnr(images)                                # PSNR at JPEG qualities 1..100
    positions = jpeg_matched_positions(curve, jpeg, top=len(net.config.lambdas) - 1)
    model = CodingModel.from_training_model(net, model_id, quality_positions=positions)

Everything is measured from real files (the codec's bytes decoded back).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..coding_model import NUM_QUALITIES, CodingModel
from ..metrics import psnr
from ..image import image_files

__all__ = ["PsnrCurve", "calibration_images", "jpeg_matched_positions", "measure_jpeg_psnr", "measure_model_psnr"]

CALIBRATION_CROP = 512
"""Side of the centre crop taken of each calibration image (pixels)."""

MIN_STEP_FRACTION = 0.25
"""Near the ends of the scale, each quality lies at least this fraction of an even step (top/99) above the one
before it."""


@dataclass
class PsnrCurve:
    """Mean PSNR (dB, RGB, mean of per-image values) of a model at anchor positions (ascending)."""

    positions: np.ndarray
    psnr_db: np.ndarray
    bpp: np.ndarray


def calibration_images(folder: str | Path, count: int = 8, crop: int = CALIBRATION_CROP) -> list[tuple[str, np.ndarray]]:
    """``count`` images spread evenly over the sorted folder, each halved (2×2 box average, which removes the
    camera noise and JPEG blocks of training photos, as the training crops' downscaling does; JPEG re-coding its
    own blocks would flatter it) and centre-cropped to at most ``crop``²: (name, uint8 RGB) pairs.
    Deterministic, so an export can be repeated."""
    files = image_files(folder)
    if len(files) < count:
        raise ValueError(f"{folder}: {len(files)} images, {count} needed for the quality scale")
    chosen = [files[round(i * (len(files) - 1) / max(1, count - 1))] for i in range(count)]
    out = []
    for path in chosen:
        with Image.open(path) as im:
            pixels = np.asarray(im.convert("RGB").reduce(2))
        h, w = pixels.shape[:2]
        top, left = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
        out.append((path.name, np.ascontiguousarray(pixels[top:top + crop, left:left + crop])))
    return out


def measure_model_psnr(model: CodingModel, images: list[tuple[str, np.ndarray]],
                       qualities: tuple[int, ...] = (*range(1, NUM_QUALITIES, 4), NUM_QUALITIES)) -> PsnrCurve:
    """The model's PSNR and bpp (from file bytes) at the anchor positions of ``qualities``."""
    from ..api import Codec  # the codec is the measuring instrument, not a dependency of the scale's maths

    codec = Codec(model)
    positions, db, rates = [], [], []
    for q in sorted(set(qualities)):
        values, bits = [], []
        for _, pixels in images:
            data = codec.compress(pixels, quality=q)
            values.append(psnr(pixels, codec.decompress_array(data)))
            bits.append(8 * len(data) / (pixels.shape[0] * pixels.shape[1]))
        positions.append(model.quality_position(q))
        db.append(float(np.mean(values)))
        rates.append(float(np.mean(bits)))
    return PsnrCurve(np.array(positions), np.array(db), np.array(rates))


def measure_jpeg_psnr(images: list[tuple[str, np.ndarray]]) -> np.ndarray:
    """JPEG's mean PSNR at qualities 1..100, configured as the benchmarks' ``jpeg`` (4:2:0, ``optimize=True``)."""
    from ..baselines import make_codec

    jpeg = make_codec("jpeg")
    return np.array([np.mean([psnr(pixels, jpeg.decode(jpeg.encode(pixels, ("quality", q))[0])) for _, pixels in images])
                     for q in range(1, NUM_QUALITIES + 1)])


def jpeg_matched_positions(curve: PsnrCurve, jpeg_psnr: np.ndarray, top: float) -> np.ndarray:
    """Anchor position of each quality 1..100: where ``curve`` reaches ``jpeg_psnr`` at that quality.

    The curve is read piecewise-linearly between its points (made non-decreasing
    first); qualities whose JPEG PSNR lies below the curve's first point or above
    its last spread evenly from position 0 (quality 1) or to ``top`` (quality
    100), and quality 1 and 100 are always the first and last anchor. Near the
    ends quality q lies at least q·step above the first anchor and (99 − q)·step
    below the last (step = ``MIN_STEP_FRACTION``·top/99): the first anchor beats
    JPEG's ~10, so JPEG's qualities 1..10 would otherwise all sit on it, one file
    for ten qualities; there the model gives a little more than JPEG's PSNR. The
    result is non-decreasing from 0 to ``top`` (increasing wherever JPEG's
    measured PSNR rises with quality, as it does on a few images).
    """
    jpeg_psnr = np.maximum.accumulate(np.asarray(jpeg_psnr, dtype=np.float64))
    if jpeg_psnr.shape != (NUM_QUALITIES,):
        raise ValueError(f"need JPEG's PSNR at each of the {NUM_QUALITIES} qualities")
    order = np.argsort(curve.positions)
    positions, db = curve.positions[order], np.maximum.accumulate(curve.psnr_db[order])
    keep = np.concatenate([[True], np.diff(db) > 0])  # np.interp needs increasing sample points
    positions, db = positions[keep], db[keep]
    if len(db) < 2:
        raise ValueError("the model's PSNR does not rise along its anchors; no quality scale can be read off it")
    inside = (jpeg_psnr >= db[0]) & (jpeg_psnr <= db[-1])
    if not inside.any():
        raise ValueError("JPEG's PSNR range and the model's do not overlap; no quality can be matched")
    out = np.interp(jpeg_psnr, db, positions)
    first, last = int(np.argmax(inside)), NUM_QUALITIES - 1 - int(np.argmax(inside[::-1]))
    if first > 0:  # JPEG below the model's lowest anchor: qualities 1..first spread up to the first match
        out[:first + 1] = np.linspace(0.0, out[first], first + 1)
    if last < NUM_QUALITIES - 1:  # JPEG above the model's reach: spread from the last match to the top anchor
        out[last:] = np.linspace(out[last], top, NUM_QUALITIES - last)
    step = MIN_STEP_FRACTION * top / (NUM_QUALITIES - 1)
    q = np.arange(NUM_QUALITIES)
    out = np.clip(np.maximum.accumulate(out), q * step, top - (NUM_QUALITIES - 1 - q) * step)
    out[0], out[-1] = 0.0, top  # even where JPEG's 1 or 100 falls inside the model's range
    return out
