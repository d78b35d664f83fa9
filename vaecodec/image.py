"""Images in and out: what vaecodec accepts, how it converts, padding and cropping.

Accepted, coded as RGB: 8-bit RGB; palette images without transparency
(expanded to RGB, which loses nothing). Coded as L (grayscale, decoded as
grayscale): 8-bit L and 1-bit images (expanded to 0/255, which loses nothing).
Refused with an :class:`ImageError` that says what to do, never silently
converted with loss: alpha (RGBA, LA, PA, palette with transparency), 16- and
32-bit and float images, CMYK, YCbCr, LAB, HSV.

NumPy input: uint8 arrays of shape (H, W), (H, W, 1) or (H, W, 3).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .container import MAX_PIXELS, MAX_SIDE
from .errors import ImageError

__all__ = ["load_pixels", "to_model_input", "to_output_pixels"]

_LOSSY_CONVERSIONS = {
    "RGBA": "has an alpha channel; vaecodec codes RGB or grayscale only: flatten it or drop alpha first",
    "LA": "has an alpha channel; vaecodec codes RGB or grayscale only: flatten it or drop alpha first",
    "PA": "has an alpha channel; vaecodec codes RGB or grayscale only: flatten it or drop alpha first",
    "RGBa": "has an alpha channel; vaecodec codes RGB or grayscale only: flatten it or drop alpha first",
    "La": "has an alpha channel; vaecodec codes RGB or grayscale only: flatten it or drop alpha first",
    "CMYK": "is CMYK; convert it to RGB first (that conversion is lossy, so vaecodec will not do it silently)",
}


def _check_size(width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise ImageError("empty image")
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise ImageError(f"image of {width}x{height} is too large (at most {MAX_SIDE} per side and {MAX_PIXELS} pixels)")


def _from_pil(im: Image.Image) -> np.ndarray:
    mode = im.mode
    _check_size(*im.size)
    if mode in _LOSSY_CONVERSIONS:
        raise ImageError(f"image mode {mode} {_LOSSY_CONVERSIONS[mode]}")
    if "transparency" in im.info:
        raise ImageError("image has transparency; vaecodec codes opaque RGB or grayscale only: flatten it first")
    if mode == "P":
        im = im.convert("RGB")
    elif mode == "1":
        im = im.convert("L")
    elif mode.startswith("I") or mode == "F":
        raise ImageError(f"image mode {mode} is more than 8 bits per sample; vaecodec codes 8-bit images only")
    elif mode not in ("RGB", "L"):
        raise ImageError(f"image mode {mode} is not supported; convert to RGB or L first")
    return np.asarray(im)


def load_pixels(image) -> np.ndarray:
    """A path, bytes, PIL image or uint8 array → uint8 array (H, W, 3) or (H, W)."""
    if isinstance(image, (str, Path, bytes, bytearray)):
        source = io.BytesIO(image) if isinstance(image, (bytes, bytearray)) else image
        try:
            with Image.open(source) as im:
                # Pillow opens 16-bit RGB PNGs as 8-bit "RGB"; only the undecoded tile still says so.
                if any(";16" in str(getattr(t, "args", t[3] if len(t) > 3 else "")) for t in im.tile):
                    raise ImageError("image has 16 bits per sample; vaecodec codes 8-bit images only")
                _check_size(*im.size)
                im.load()
                return _from_pil(im)
        except (OSError, Image.DecompressionBombError, SyntaxError) as e:
            raise ImageError(f"cannot read image: {e}") from None
    if isinstance(image, Image.Image):
        return _from_pil(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ImageError(f"arrays must be uint8, not {image.dtype}")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise ImageError(f"arrays must be H×W or H×W×3, not shape {image.shape}")
        _check_size(image.shape[1], image.shape[0])
        return np.ascontiguousarray(image)
    raise ImageError(f"cannot code an object of type {type(image).__name__}")


def to_model_input(pixels: np.ndarray, multiple: int) -> torch.Tensor:
    """uint8 (H, W[, 3]) → float32 (1, 3, H', W') in [0, 1], edge-padded to multiples of ``multiple``.

    Grayscale is replicated to three channels.
    """
    rgb = pixels if pixels.ndim == 3 else np.repeat(pixels[:, :, None], 3, axis=2)
    h, w = rgb.shape[:2]
    padded = np.pad(rgb, ((0, -h % multiple), (0, -w % multiple), (0, 0)), mode="edge")
    return torch.from_numpy(padded).permute(2, 0, 1)[None].float().div_(255.0)


def to_output_pixels(rgb: np.ndarray, height: int, width: int, mode: str) -> np.ndarray:
    """Padded uint8 RGB from the decoder → cropped (H, W, 3), or (H, W) for grayscale.

    Grayscale is the rounded mean of the three channels, in integers (exact).
    """
    rgb = rgb[:height, :width]
    if mode == "L":
        total = rgb.astype(np.uint16).sum(axis=2)
        return ((total + 1) // 3).astype(np.uint8)
    return np.ascontiguousarray(rgb)
