"""Images in and out: what vaecodec accepts, how it converts, padding and cropping.

Accepted, coded as RGB: 8-bit RGB; palette images without transparency
(expanded to RGB, which loses nothing). Coded as L (grayscale, decoded as
grayscale): 8-bit L and 1-bit images (expanded to 0/255, which loses nothing).
Alpha (RGBA, LA, PA, RGBa, palette or gray with transparency): opaque
everywhere, it is coded as RGB or L, which loses nothing; otherwise the image
is RGBA or LA (straight alpha: premultiplied RGBa is un-premultiplied by
Pillow first) and the alpha plane is coded losslessly beside the colour.
Multi-frame files (animations, multi-page TIFFs) need a chosen ``frame``.
Refused with an :class:`ImageError` that says what to do, never silently
converted with loss: 16- and 32-bit and float PIL images (modes I;16, I, F),
CMYK, YCbCr, LAB, HSV.

Array input, what ML code holds:

- NumPy: uint8, or float in [0, 1], of shape (H, W) or (H, W, C), C = 1, 2
  (gray + alpha), 3 or 4 (RGB + alpha);
- torch tensors: uint8, or float in [0, 1], of shape (C, H, W) with C = 1..4
  as above, or (H, W) for grayscale; on any device, with or without grad.

Loaded images are uint8 (H, W) or (H, W, C) with C = 2, 3 or 4: the last
channel of 2 and 4 is alpha (never all opaque: that is dropped);
:func:`split_alpha` separates it.

Floats become ``round(x · 255)`` clamped to 0..255, so ``u / 255`` gives back
``u`` exactly for every uint8 ``u`` (in float32, float64 and float16); values a
little outside [0, 1], as networks output, are clamped like
``torchvision.utils.save_image`` does; NaN and infinity are refused.
A 4-D batch is refused by :func:`load_pixels` (``Codec.encode_batch`` takes it:
:func:`split_batch`).

Metadata (:func:`read_metadata`, :func:`load_image`): the ICC profile, EXIF and
XMP of a file or PIL image are kept as the raw bytes they were stored as, and
the pixels are coded as stored, never rotated: the EXIF orientation stays in
the EXIF (as cjxl does), so a viewer shows the decoded image the right way up.
Arrays and tensors have none.

torch is imported only for a tensor (and by :func:`to_model_input`), so this
module's other inputs work without it.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
from PIL import Image

from .container import MAX_PIXELS, MAX_SIDE, NO_METADATA, Metadata, check_metadata
from .errors import FormatError, ImageError

if TYPE_CHECKING:
    import torch

__all__ = ["IMAGE_SUFFIXES", "image_files", "load_pixels", "load_image", "read_metadata", "metadata_info",
           "split_batch", "split_alpha", "with_alpha", "mode_of", "to_model_input", "to_output_pixels", "PaddedPixels"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
"""File suffixes taken as images: a folder's images (training, evaluation, benchmarks) and the
formats ``vaecodec decompress`` writes."""


def image_files(folder: str | Path) -> list[Path]:
    """The image files directly in ``folder``, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


_BATCH_HINT = "use Codec.encode_batch for a batch"

_ALPHA_MODES = {"RGBA": "RGB", "LA": "L", "PA": "RGB", "RGBa": "RGB", "La": "L"}
_LOSSY_CONVERSIONS = {
    "CMYK": "is CMYK; convert it to RGB first (that conversion is lossy, so vaecodec will not do it silently)",
}


def _alpha_or_opaque(im: Image.Image) -> Image.Image:
    """An image with an alpha channel (or a transparent palette colour) as RGBA or LA, or as RGB or L
    when it is opaque everywhere (which loses nothing)."""
    base = _ALPHA_MODES.get(im.mode, "L" if im.mode in ("L", "1", "I;16") else "RGB")
    with_alpha = im.convert("LA" if base == "L" else "RGBA")
    if with_alpha.getchannel("A").getextrema()[0] != 255:
        return with_alpha
    return with_alpha.convert(base)


def _drop_opaque_alpha_channel(a: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 2 or 4) → the same, or (H, W[, 3]) without its alpha when that is 255 everywhere."""
    if a.ndim == 3 and a.shape[2] in (2, 4) and a[:, :, -1].min() == 255:
        a = a[:, :, :-1]
        return np.ascontiguousarray(a[:, :, 0] if a.shape[2] == 1 else a)
    return a


def split_alpha(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Loaded pixels → (colour (H, W) or (H, W, 3), alpha (H, W) or None)."""
    if pixels.ndim == 3 and pixels.shape[2] in (2, 4):
        colour = pixels[:, :, :-1]
        return np.ascontiguousarray(colour[:, :, 0] if colour.shape[2] == 1 else colour), \
            np.ascontiguousarray(pixels[:, :, -1])
    return pixels, None


def with_alpha(colour: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """The inverse of :func:`split_alpha`."""
    if alpha is None:
        return colour
    return np.concatenate([colour.reshape(*colour.shape[:2], -1), alpha[:, :, None]], axis=2)


def mode_of(pixels: np.ndarray) -> str:
    """The PIL mode of loaded pixels: L, LA, RGB or RGBA."""
    return "L" if pixels.ndim == 2 else {2: "LA", 3: "RGB", 4: "RGBA"}[pixels.shape[2]]


def _check_size(width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise ImageError("empty image")
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise ImageError(f"image of {width}x{height} is too large (at most {MAX_SIDE} per side and {MAX_PIXELS} pixels)")


def _select_frame(im: Image.Image, frame: int | None) -> None:
    """Multi-frame inputs (animations, multi-page TIFFs) need a chosen frame: never a silent first one."""
    frames = getattr(im, "n_frames", 1)
    if frame is None:
        if frames > 1:
            raise ImageError(f"image has {frames} frames (animated or multi-page); choose one with --frame N "
                             f"(0..{frames - 1}; frame= in the API)")
        return
    if not (isinstance(frame, (int, np.integer)) and 0 <= frame < frames):
        raise ImageError(f"frame {frame!r} does not exist: the image has {frames} frame{'s' * (frames > 1)} "
                         f"(0..{frames - 1})")
    im.seek(int(frame))


def _from_pil(im: Image.Image, frame: int | None = None) -> np.ndarray:
    _select_frame(im, frame)
    mode = im.mode
    _check_size(*im.size)
    if mode in _LOSSY_CONVERSIONS:
        raise ImageError(f"image mode {mode} {_LOSSY_CONVERSIONS[mode]}")
    if mode in _ALPHA_MODES or "transparency" in im.info:
        im = _alpha_or_opaque(im)
        mode = im.mode
    if mode == "P":
        im = im.convert("RGB")
    elif mode == "1":
        im = im.convert("L")
    elif mode.startswith("I") or mode == "F":
        raise ImageError(f"image mode {mode} is more than 8 bits per sample; vaecodec codes 8-bit images only")
    elif mode not in ("RGB", "L", "RGBA", "LA"):
        raise ImageError(f"image mode {mode} is not supported; convert to RGB or L first")
    return np.asarray(im)


def load_pixels(image, frame: int | None = None) -> np.ndarray:
    """A path, bytes, PIL image, array or tensor → uint8 array (H, W), (H, W, 2), (H, W, 3) or (H, W, 4).

    ``frame``: which frame of a multi-frame file (animated GIF/PNG/WebP,
    multi-page TIFF) to code; such a file without one is refused.
    """
    return load_image(image, frame, metadata=False)[0]


def load_image(image, frame: int | None = None, metadata: bool = True) -> tuple[np.ndarray, Metadata]:
    """:func:`load_pixels`, and with ``metadata`` the image's ICC profile, EXIF and XMP (:func:`read_metadata`).

    A file is opened once for both.
    """
    if isinstance(image, _FILE_TYPES):
        with _opened(image) as im:
            # Pillow opens 16-bit RGB PNGs as 8-bit "RGB"; only the undecoded tile still says so.
            if any(";16" in str(getattr(t, "args", t[3] if len(t) > 3 else "")) for t in im.tile):
                raise ImageError("image has 16 bits per sample; vaecodec codes 8-bit images only")
            _check_size(*im.size)
            _select_frame(im, frame)
            im.load()
            pixels = _from_pil(im, frame)
            return pixels, _metadata_of(im) if metadata else NO_METADATA
    if isinstance(image, Image.Image):
        pixels = _from_pil(image, frame)
        return pixels, _metadata_of(image) if metadata else NO_METADATA
    if isinstance(image, np.ndarray):
        return _from_array(image), NO_METADATA
    if _is_tensor(image):
        return _from_tensor(image), NO_METADATA
    raise ImageError(f"cannot code an object of type {type(image).__name__}")


def read_metadata(image) -> Metadata:
    """The ICC profile, EXIF and XMP of an image file (path or bytes) or PIL image, as stored.

    Read from what Pillow's readers put in ``info``: ``icc_profile``;
    ``exif`` (else, but for TIFF, ``getexif()``: an Exif that Pillow parsed
    from elsewhere, or one built in memory); ``xmp`` (else PNG's
    ``XML:com.adobe.xmp`` text). EXIF is kept in TIFF layout, without JPEG's
    ``Exif\\0\\0``. Arrays and tensors have none. A section over vaecodec's
    limits (:data:`vaecodec.container.METADATA_LIMITS`) or malformed is
    refused with an :class:`ImageError`, not dropped.
    """
    if isinstance(image, Image.Image):
        return _metadata_of(image)
    if isinstance(image, _FILE_TYPES):
        with _opened(image) as im:
            return _metadata_of(im)
    return NO_METADATA


_FILE_TYPES = (str, os.PathLike, bytes, bytearray, memoryview)


@contextlib.contextmanager
def _opened(image) -> Iterator[Image.Image]:
    """``Image.open`` of a path or an encoded image's bytes; Pillow's failures, then or while the
    image is read inside the block, become one-line ImageErrors."""
    source = image if isinstance(image, (str, os.PathLike)) else io.BytesIO(image)
    try:
        with Image.open(source) as im:
            yield im
    except Image.UnidentifiedImageError:
        # Pillow's own message names the file object (a repr like <_io.BytesIO object at 0x…>).
        raise ImageError("not an image vaecodec can read") from None
    except (OSError, Image.DecompressionBombError, SyntaxError) as e:
        raise ImageError(f"cannot read image: {getattr(e, 'strerror', None) or e}") from None


_EXIF_PREFIX = b"Exif\0\0"
_ORIENTATION = 0x0112


def _metadata_of(im: Image.Image) -> Metadata:
    icc = im.info.get("icc_profile") or b""
    exif = im.info.get("exif") or b""
    if isinstance(exif, Image.Exif):
        exif = exif.tobytes()
    if not exif and im.format != "TIFF":
        # A TIFF's getexif() is its own image directory (strip offsets and all), not an Exif block to carry.
        exif = _exif_from_pillow(im)
    if isinstance(exif, (bytes, bytearray)) and exif.startswith(_EXIF_PREFIX):
        exif = exif[len(_EXIF_PREFIX):]
    xmp = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp") or b""
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    try:
        metadata = Metadata(icc_profile=icc, exif=exif, xmp=xmp)
        check_metadata(metadata)
    except (FormatError, TypeError) as e:
        raise ImageError(f"image metadata: {e}; drop it with --strip (metadata=False in the API)") from None
    return metadata


def _exif_from_pillow(im: Image.Image) -> bytes:
    """EXIF that Pillow knows without a raw block in ``info``: parsed from a PNG's text chunks, or built in memory."""
    try:
        exif = im.getexif()
    except Exception:  # noqa: BLE001 - Pillow's Exif parser raises many kinds on damaged data: nothing to keep then
        return b""
    if not len(exif) or (set(exif) == {_ORIENTATION} and ("xmp" in im.info or "XML:com.adobe.xmp" in im.info)):
        # An orientation alone next to XMP is Pillow's copy of the XMP's tiff:Orientation: the XMP keeps it.
        return b""
    return exif.tobytes()


def metadata_info(metadata: Metadata) -> dict:
    """A file's metadata as Pillow's readers put it in ``Image.info`` (EXIF with its ``Exif\\0\\0``)."""
    info: dict = {}
    if metadata.icc_profile:
        info["icc_profile"] = metadata.icc_profile
    if metadata.exif:
        info["exif"] = _EXIF_PREFIX + metadata.exif
    if metadata.xmp:
        info["xmp"] = metadata.xmp
    return info


def split_batch(images) -> list:
    """``Codec.encode_batch``'s input → a list of single images, in order.

    A batch is a list (or tuple) of anything :func:`load_pixels` takes, or one
    4-D array whose items are single images of its type: an N×C×H×W tensor, an
    N×H×W×C NumPy array (NumPy images are H×W×C everywhere in vaecodec).
    """
    if isinstance(images, (list, tuple)):
        return list(images)
    if (isinstance(images, np.ndarray) or _is_tensor(images)) and images.ndim == 4:
        return list(images)
    raise ImageError("a batch is a list of images or one 4-D array or tensor "
                     f"(N×H×W×C array, N×C×H×W tensor), not {_describe(images)}; "
                     "use Codec.encode for a single image")


def _describe(x) -> str:
    shape = getattr(x, "shape", None)
    return f"a {type(x).__name__} of shape {tuple(shape)}" if shape is not None else f"a {type(x).__name__}"


def _is_tensor(x) -> bool:
    """True for a torch tensor, without importing torch for anything else."""
    if not type(x).__module__.startswith("torch"):
        return False
    import torch

    return isinstance(x, torch.Tensor)


def _floats_to_uint8(a: np.ndarray) -> np.ndarray:
    """Float samples in [0, 1] → uint8: round(x · 255), clamped; x · 255 is exact in float64."""
    if not np.isfinite(a).all():
        raise ImageError("float image has NaN or infinite values; floats must be in [0, 1]")
    return np.ascontiguousarray(np.clip(np.rint(a.astype(np.float64) * 255.0), 0, 255).astype(np.uint8))


def _from_array(a: np.ndarray) -> np.ndarray:
    if a.ndim == 4:
        raise ImageError(f"array of shape {a.shape} is a batch; {_BATCH_HINT}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (2, 3, 4))):
        raise ImageError(f"arrays must be H×W or H×W×C with C = 1..4 (gray, gray+alpha, RGB, RGBA), not shape {a.shape}")
    _check_size(a.shape[1], a.shape[0])
    if a.dtype.kind == "f":
        return _drop_opaque_alpha_channel(_floats_to_uint8(a))
    if a.dtype != np.uint8:
        raise ImageError(f"arrays must be uint8, or float in [0, 1], not {a.dtype}")
    return _drop_opaque_alpha_channel(np.ascontiguousarray(a))


def _from_tensor(t: torch.Tensor) -> np.ndarray:
    import torch

    if t.ndim == 4:
        raise ImageError(f"tensor of shape {tuple(t.shape)} is a batch; {_BATCH_HINT}")
    if t.ndim == 3:
        if t.shape[0] not in (1, 2, 3, 4):
            hint = "; permute an H×W×C tensor with .permute(2, 0, 1)" if t.shape[2] in (1, 2, 3, 4) else ""
            raise ImageError(f"tensors must be C×H×W with 1..4 channels, or H×W, not shape {tuple(t.shape)}{hint}")
        t = t[0] if t.shape[0] == 1 else t.permute(1, 2, 0)
    elif t.ndim != 2:
        raise ImageError(f"tensors must be C×H×W with 1..4 channels, or H×W, not shape {tuple(t.shape)}")
    _check_size(t.shape[1], t.shape[0])
    t = t.detach()
    if t.dtype.is_floating_point:
        # float64 holds every float dtype exactly (bfloat16 and float16 have no NumPy twin in common).
        return _drop_opaque_alpha_channel(_floats_to_uint8(t.to("cpu", torch.float64).numpy()))
    if t.dtype != torch.uint8:
        raise ImageError(f"tensors must be uint8, or float in [0, 1], not {t.dtype}")
    return _drop_opaque_alpha_channel(np.ascontiguousarray(t.cpu().numpy()))


def to_model_input(pixels: np.ndarray, multiple: int, dtype: "torch.dtype | None" = None) -> torch.Tensor:
    """uint8 (H, W[, 3]) → float32 (1, 3, H', W') in [0, 1], edge-padded to multiples of ``multiple``.

    Grayscale is replicated to three channels. ``dtype=torch.uint8`` keeps the
    padded pixels as they are (a quarter of the memory; the analysis
    converts them one tile at a time).
    """
    import torch

    rgb = pixels if pixels.ndim == 3 else np.repeat(pixels[:, :, None], 3, axis=2)
    h, w = rgb.shape[:2]
    padded = np.pad(rgb, ((0, -h % multiple), (0, -w % multiple), (0, 0)), mode="edge")
    x = torch.from_numpy(padded).permute(2, 0, 1)[None]
    return x if dtype == torch.uint8 else x.float().div_(255.0)


class PaddedPixels:
    """uint8 pixels seen as their edge-padded model input (1, 3, H', W'), without the padded copy.

    What :func:`vaecodec.coding_model.run_tiled` needs of an input: ``shape``
    and 4-D slicing, which returns that part of ``to_model_input(pixels,
    multiple, torch.uint8)`` (padded on the fly at the right and bottom edges).
    A 64-Mpixel image is then held once, not twice, while it is analysed.
    """

    def __init__(self, pixels: np.ndarray, multiple: int):
        self.pixels = pixels if pixels.ndim == 3 else pixels[:, :, None]
        h, w = self.pixels.shape[:2]
        self.shape = (1, 3, h + (-h % multiple), w + (-w % multiple))

    def __getitem__(self, index) -> torch.Tensor:
        import torch

        _, _, rows, cols = index
        r0, r1, r_step = rows.indices(self.shape[2])
        c0, c1, c_step = cols.indices(self.shape[3])
        if r_step != 1 or c_step != 1 or r1 <= r0 or c1 <= c0:
            raise ValueError("PaddedPixels gives non-empty, contiguous tiles only")
        h, w = self.pixels.shape[:2]
        part = self.pixels[min(r0, h - 1):min(r1, h), min(c0, w - 1):min(c1, w)]
        pad_r, pad_c = (r1 - r0) - part.shape[0], (c1 - c0) - part.shape[1]
        if r0 >= h:  # wholly inside the bottom padding: the last row, repeated
            pad_r = r1 - r0 - 1
        if c0 >= w:
            pad_c = c1 - c0 - 1
        if pad_r or pad_c:
            part = np.pad(part, ((0, pad_r), (0, pad_c), (0, 0)), mode="edge")
        if part.shape[2] == 1:
            part = np.repeat(part, 3, axis=2)
        part = np.ascontiguousarray(part)
        if not part.flags.writeable:  # a view of a read-only image (torch warns on those): copy the tile
            part = part.copy()
        return torch.from_numpy(part).permute(2, 0, 1)[None]

    def tensor(self) -> torch.Tensor:
        """The whole padded input as one uint8 tensor (it may share memory with the pixels: do not write to it)."""
        return self[:, :, 0:self.shape[2], 0:self.shape[3]]


def to_output_pixels(rgb: np.ndarray, height: int, width: int, mode: str) -> np.ndarray:
    """Padded uint8 RGB from the decoder → cropped (H, W, 3), or (H, W) for grayscale (mode L or LA).

    Grayscale is the rounded mean of the three channels, in integers (exact).
    """
    rgb = rgb[:height, :width]
    if mode in ("L", "LA"):
        total = rgb.astype(np.uint16).sum(axis=2)
        return ((total + 1) // 3).astype(np.uint8)
    return np.ascontiguousarray(rgb)
