"""The public API: images ↔ bytes. The one place that wires model, entropy coder and container.

Typical workflow::

    codec = vaecodec.Codec()                      # loads the shipped model once
    data = codec.compress("photo.png", quality=75)
    image = codec.decompress(data)                # PIL.Image, "RGB" or "L"
    header = vaecodec.read_header(data)           # no model, no torch

Where the bits are made (``Codec.encode``), one ANS stack per image::

    pixels ─pad─▶ x ─analyze─▶ y, ẑ
    push  check = CRC-32 of the header fields (bottom of the stack, popped last)
    push  q = quantize(y)   with y_pmfs[scale index]
    push  ẑ                 with z_pmfs[channel]       (top of the stack, popped first)
    Header + words ─container.pack─▶ bytes (rate = len(bytes), header included)

Decoding mirrors it: pop ẑ, compute the scale indexes exactly, pop q, pop and
compare the check value, require an empty stack, reconstruct exactly, crop.
The check catches what the file's CRC cannot: a payload put under another
header (size, mode, quality) or cut short and re-CRC'd.
"""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import entropy
from .coding_model import DOWNSAMPLING, NUM_QUALITIES, CodingModel
from .container import Header, pack, unpack
from .errors import FormatError, ModelMismatchError, VaecodecError
from .image import load_pixels, to_model_input, to_output_pixels

__all__ = ["Codec", "Encoded", "compress", "decompress", "default_codec", "DEFAULT_QUALITY", "SHIPPED_MODEL"]

DEFAULT_QUALITY = 75
SHIPPED_MODEL = "vaecodec-hp64.pt"


@dataclass(frozen=True)
class Encoded:
    """A compressed image and what it cost.

    Attributes:
      data: the .vae file's bytes.
      header: its header (``header.num_bytes == len(data)``).
      information_bits: the model's own estimate of the payload, Σ −log2 p over
        the coded symbols (escapes included); ``8·len(data)`` minus this is the
        container and coder overhead.
    """

    data: bytes
    header: Header
    information_bits: float

    @property
    def num_bytes(self) -> int:
        return len(self.data)

    @property
    def bpp(self) -> float:
        return self.header.bpp


class Codec:
    """A loaded model and the operations on images and bytes.

    Args:
      model: a :class:`CodingModel`, a path to a model file, or None for the
        shipped model.

    Instances are safe to share between threads (coding is serialized).
    """

    def __init__(self, model: CodingModel | str | Path | None = None):
        if model is None:
            with resources.as_file(resources.files("vaecodec") / "weights" / SHIPPED_MODEL) as path:
                model = CodingModel.load(path)
        elif not isinstance(model, CodingModel):
            model = CodingModel.load(model)
        self.model = model
        self._lock = threading.Lock()

    # ----- encoding ---------------------------------------------------------------
    def compress(self, image, quality: int = DEFAULT_QUALITY, target_bpp: float | None = None) -> bytes:
        """Image (path, PIL image or uint8 array) → .vae bytes. See :meth:`encode`."""
        return self.encode(image, quality, target_bpp).data

    def encode(self, image, quality: int = DEFAULT_QUALITY, target_bpp: float | None = None) -> Encoded:
        """Compress, and report the size and the model's information estimate.

        Args:
          image: a path, PIL image, or uint8 array (H×W or H×W×3).
          quality: 1..100, higher is better and larger.
          target_bpp: if given, ``quality`` is ignored and the highest quality
            whose whole file fits in this many bits per pixel is used.
        """
        pixels = load_pixels(image)
        with self._lock, torch.no_grad():
            analysed = self._analyze(pixels)
            if target_bpp is None:
                if not (isinstance(quality, (int, np.integer)) and 1 <= quality <= NUM_QUALITIES):
                    raise ValueError(f"quality must be an integer in 1..{NUM_QUALITIES}, not {quality!r}")
                return self._encode_at(analysed, int(quality))
            return self._encode_to_target(analysed, float(target_bpp))

    def _analyze(self, pixels: np.ndarray):
        h, w = pixels.shape[:2]
        y, z_symbols = self.model.analyze(to_model_input(pixels, DOWNSAMPLING))
        params = self.model.hyper_decode(z_symbols)
        mode = "L" if pixels.ndim == 2 else "RGB"
        return h, w, mode, y, z_symbols, params

    def _encode_at(self, analysed, quality: int) -> Encoded:
        h, w, mode, y, z_symbols, params = analysed
        m = self.model
        y_symbols = m.quantize(y, params, quality)
        scale_idx = m.scale_indexes(params, quality)
        z_idx = m.hyper_latent_indexes(z_symbols.shape)
        header = Header(w, h, mode, quality, m.model_id, m.weight_hash)
        coder = entropy.new_coder()
        entropy.push_check(coder, _header_check(header))
        m.y_pmfs.encode(coder, y_symbols.numpy(), scale_idx.numpy())
        m.z_pmfs.encode(coder, z_symbols.numpy(), z_idx)
        words = coder.get_compressed()
        info = (m.y_pmfs.information_bits(y_symbols.numpy(), scale_idx.numpy())
                + m.z_pmfs.information_bits(z_symbols.numpy(), z_idx))
        header = Header(w, h, mode, quality, m.model_id, m.weight_hash, num_words=int(words.size))
        data = pack(header, words)
        info += 32  # the check value
        return Encoded(data, replace(header, num_bytes=len(data)), info)

    def _encode_to_target(self, analysed, target_bpp: float) -> Encoded:
        if not target_bpp > 0:
            raise ValueError(f"target bpp must be positive, not {target_bpp}")
        # File size grows with quality, so bisect for the largest quality that fits.
        lo, hi = 1, NUM_QUALITIES
        best = self._encode_at(analysed, lo)
        if best.bpp > target_bpp:
            raise VaecodecError(f"cannot reach {target_bpp:g} bpp: the smallest file (quality 1) is {best.bpp:.4f} bpp")
        while lo < hi:
            mid = (lo + hi + 1) // 2
            trial = self._encode_at(analysed, mid)
            if trial.bpp <= target_bpp:
                lo, best = mid, trial
            else:
                hi = mid - 1
        return best

    # ----- decoding ---------------------------------------------------------------
    def decompress(self, data: bytes) -> Image.Image:
        """.vae bytes → PIL image ("RGB" or "L"). Raises FormatError on any defect."""
        pixels = self.decompress_array(data)
        return Image.fromarray(pixels, mode="L" if pixels.ndim == 2 else "RGB")

    def decompress_array(self, data: bytes) -> np.ndarray:
        """.vae bytes → uint8 array (H, W, 3) or (H, W)."""
        header, words = unpack(bytes(data))
        m = self.model
        if header.model_id != m.model_id or header.weight_hash != m.weight_hash:
            raise ModelMismatchError(
                f"file was written by model {header.model_id} ({header.weight_hash.hex()}), "
                f"loaded model is {m.model_id} ({m.weight_hash.hex()})")
        y_shape, z_shape = m.latent_shapes(header.height, header.width)
        with self._lock, torch.no_grad():
            coder = entropy.new_coder(words)
            z_idx = m.hyper_latent_indexes(z_shape)
            z_symbols = torch.from_numpy(m.z_pmfs.decode(coder, z_idx).reshape(z_shape))
            params = m.hyper_decode(z_symbols)
            scale_idx = m.scale_indexes(params, header.quality)
            y_symbols = torch.from_numpy(m.y_pmfs.decode(coder, scale_idx.numpy()).reshape(y_shape))
            if entropy.pop_check(coder) != _header_check(header) or not coder.is_empty():
                raise FormatError("payload does not match its header (corrupted or truncated data)")
            rgb = m.reconstruct(y_symbols, params, header.quality)
        return to_output_pixels(rgb, header.height, header.width, header.mode)


def _header_check(h: Header) -> int:
    """32-bit value tying a payload to the header fields that shape its decoding."""
    return zlib.crc32(f"{h.width}x{h.height}:{h.mode}:{h.quality}:{h.model_id}:".encode() + h.weight_hash)


_default: Codec | None = None
_default_lock = threading.Lock()


def default_codec() -> Codec:
    """The shipped model, loaded on first use and then kept."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Codec()
        return _default


def compress(image, quality: int = DEFAULT_QUALITY, target_bpp: float | None = None) -> bytes:
    """Compress with the shipped model. See :meth:`Codec.encode`."""
    return default_codec().compress(image, quality, target_bpp)


def decompress(data: bytes) -> Image.Image:
    """Decompress with the shipped model. See :meth:`Codec.decompress`."""
    return default_codec().decompress(data)
