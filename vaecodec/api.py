"""The public API: images ↔ bytes. The one place that wires model, entropy coder and container.

Typical workflow::

    codec = vaecodec.Codec()                      # loads the shipped model once
    data = codec.compress("photo.png", quality=75)
    image = codec.decompress(data)                # PIL.Image, "RGB" or "L"
    header = vaecodec.read_header(data)           # no model, no torch

Where the bits are made (``Codec.encode``), one ANS stack per image::

    pixels ─pad─▶ x ─analyze─▶ y, ẑ
    push  check = CRC-32 of the header fields (bottom of the stack, popped last)
    push  the latents: the model's latent codec owns their order
          (:mod:`vaecodec.latent_codec`: tiles of 1024² pixels last to first, then ẑ;
          within a tile y, or y non-anchors then anchors, each slice by slice with channel slices)
    Header + metadata + words ─container.pack─▶ bytes (rate = len(bytes), header and metadata included)

Decoding mirrors it: the latent codec pops ŷ exactly, band of tiles by band,
and each band is synthesized exactly as soon as the band below it is known
(so memory holds bands, not the whole ŷ); then pop and compare the check
value, require an empty stack.

Lossless files (``lossless=True``) put the pixels themselves on the stack,
above the same check value, under the autoregressive pixel model
(:mod:`vaecodec.lossless_codec`, :mod:`vaecodec.pixel_model`), tile by tile.

Images with a real alpha channel (modes RGBA and LA) keep it exactly, lossy or
lossless: the alpha plane goes on the stack above the check value and under the
colour, coded like a lossless grey image::

    bottom  check value · alpha plane (RGBA/LA only) · colour (latents or pixels) · content check  top

The content check (format version 2 on) is a CRC-32 of every decoded symbol,
popped first and compared last: it catches edits that ANS decodes without
losing step (raw escape bits), which the check value at the bottom cannot.
The check catches what the file's CRC cannot: a payload put under another
header (size, mode, quality) or cut short and re-CRC'd.

The image's ICC profile, EXIF and XMP (``metadata=True``, the default) travel
in the container beside the payload, never through the model: the words are
the same with or without them. ``decompress`` gives them back in the image's
``info``, as Pillow's own readers do.
"""

from __future__ import annotations

import os
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import entropy
from .coding_model import DOWNSAMPLING, DOWNSAMPLING_LATENT, NUM_QUALITIES, SYNTHESIS_HALO, CodingModel
from .container import NO_METADATA, Header, Metadata, pack, unpack
from .errors import FormatError, ModelMismatchError, VaecodecError
from .image import (PaddedPixels, load_image, metadata_info, mode_of, split_alpha, split_batch, to_output_pixels,
                    with_alpha)
from .latent_codec import LATENT_TILE, Latents, latent_codec
from .lossless_codec import pixel_codec, pop_image, prepare_image, push_image, required_bits
from .pixel_model import PixelModel
from .refine import DEFAULT_EFFORT, EFFORTS, MAX_REFINE_PIXELS, rd_cost, refine_latents

__all__ = ["Codec", "Encoded", "compress", "decompress", "default_codec", "DEFAULT_QUALITY", "SHIPPED_MODEL"]

DEFAULT_QUALITY = 75
SHIPPED_MODELS = {"hp64-m128-vr": "vaecodec-hp64.pt", "cb64-w128-m256-vr": "vaecodec-cb64.pt",
                  "cb64-w128-m256-vr-r2": "vaecodec-cb64-r2.pt", "cb64-w128-m256-vr-r3": "vaecodec-cb64-r3.pt",
                  "cc64-w128-m256-vr-r4": "vaecodec-cc64-r4.pt",
                  "cc64-w128-m256-vr-r5": "vaecodec-cc64-r5.pt", "cc64-w128-m256-vr-r5n": "vaecodec-cc64-r5n.pt",
                  "cc64-w128-m256-vr-r5s": "vaecodec-cc64-r5s.pt", "cc64-w128-m256-vr-r5w": "vaecodec-cc64-r5w.pt",
                  "cc64-w128-m256-vr-r6": "vaecodec-cc64-r6.pt", "cc64-w128-m256-vr-r6w": "vaecodec-cc64-r6w.pt"}
"""Every model the package ships, by model id. Files name the model that wrote them, so a file
written by an earlier shipped model still decodes after the default changes. ``-r5n``, ``-r5s`` and ``-r5w``
are derived model files over ``-r5``'s weights (``-r5n``: its 10-bit latent programs' tables; ``-r5s``: those
and the 11-bit synthesis'; ``-r5w``: with 12-bit activations in the synthesis). ``-r6`` is a full model
(later weights of the same run) and ``-r6w``, the default, a derived file over it made as ``-r5w`` was over
``-r5``. A derived file needs the file it names, so all must ship."""
SHIPPED_MODEL = "vaecodec-cc64-r6w.pt"
"""The default model: what new files are written with."""
SHIPPED_PIXEL_MODEL = "vaecodec-px12-h64.npz"
"""The pixel model of lossy files' alpha planes (one discretized Laplace per sub-pixel)."""
LOSSLESS_MODEL_ID = "px12-h64-m3"
"""The pixel model new lossless files are written with (a mixture of 3, coded by bits-back)."""
SHIPPED_PIXEL_MODELS = {"px12-h64": SHIPPED_PIXEL_MODEL, "px12-h64-m3": "vaecodec-px12-h64-m3.npz"}
"""Every pixel model the package shipped, by the id lossless files name: a file written by an earlier default
still decodes."""
_PREPARED_ALPHA_LIMIT = 4 << 20
"""Largest alpha plane (pixels) held prepared across a target size's trials (~20 bytes per pixel)."""


def _load_shipped(filename: str) -> CodingModel:
    with resources.as_file(resources.files("vaecodec") / "weights" / filename) as path:
        return CodingModel.load(path)


def _load_pixel_model(model: PixelModel | str | Path | None, shipped: str = SHIPPED_PIXEL_MODEL) -> PixelModel:
    if isinstance(model, PixelModel):
        return model
    if model is not None:
        return PixelModel.load(model)
    with resources.as_file(resources.files("vaecodec") / "weights" / shipped) as path:
        return PixelModel.load(path)


@dataclass(frozen=True, repr=False)
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

    def __repr__(self) -> str:
        # Not the dataclass repr: that prints every byte of the file (tens of kB in a log or a notebook).
        h = self.header
        return f"Encoded({len(self.data)} bytes, {self.bpp:.4f} bpp, quality={h.quality}, model={h.model_id})"


class Codec:
    """A loaded model and the operations on images and bytes.

    Args:
      model: a :class:`CodingModel`, a path to a model file, or None for the
        shipped model.
      pixel_model: the :class:`PixelModel` of lossless files and alpha
        planes, a path to one, or None for the shipped ones (loaded on first
        use): new lossless files get the mixture model, alpha planes of lossy
        files the single-Laplace one, and a lossless file decodes with the
        shipped model it names.

    Instances are safe to share between threads (coding is serialized), and
    pickle as their model, so they can be handed to process pools::

        with concurrent.futures.ProcessPoolExecutor() as pool:
            files = list(pool.map(codec.compress, paths))
    """

    def __init__(self, model: CodingModel | str | Path | None = None,
                 pixel_model: PixelModel | str | Path | None = None):
        self._pixel_source = pixel_model
        self._pixel_model: PixelModel | None = pixel_model if isinstance(pixel_model, PixelModel) else None
        self._pixel_models: dict[str, PixelModel] = {}
        self._shipped = model is None
        self._earlier: dict[str, Codec] = {}
        if model is None:
            model = _load_shipped(SHIPPED_MODEL)
        elif not isinstance(model, CodingModel):
            model = CodingModel.load(model)
        self.model = model
        self.latents = latent_codec(model)
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        """A codec pickles as its model, so it can be handed to process pools (the lock stays behind)."""
        # The pixel model as given (None: the shipped ones, chosen per use), never a shipped one loaded since.
        return {"model": self.model, "shipped": self._shipped, "pixel_model": self._pixel_source}

    def __setstate__(self, state: dict) -> None:
        self.model, self._shipped = state["model"], state["shipped"]
        self._pixel_source = state["pixel_model"]
        self._pixel_model = self._pixel_source if isinstance(self._pixel_source, PixelModel) else None
        self._pixel_models = {}
        self.latents = latent_codec(self.model)
        self._earlier = {}
        self._lock = threading.Lock()

    @property
    def pixel_model(self) -> PixelModel:
        """The pixel model of lossy files' alpha planes (the given one, if any), loaded on first use."""
        if self._pixel_model is None:
            self._pixel_model = _load_pixel_model(self._pixel_source)
        return self._pixel_model

    @property
    def lossless_model(self) -> PixelModel:
        """The pixel model new lossless files are written with (the given one, if any)."""
        if self._pixel_source is not None:
            return self.pixel_model
        return self._shipped_pixel_model(LOSSLESS_MODEL_ID)

    def _shipped_pixel_model(self, model_id: str) -> PixelModel | None:
        """A shipped pixel model by id (None if the package never shipped one of that id), kept once loaded."""
        if model_id not in SHIPPED_PIXEL_MODELS:
            return None
        if model_id not in self._pixel_models:
            self._pixel_models[model_id] = _load_pixel_model(None, SHIPPED_PIXEL_MODELS[model_id])
        return self._pixel_models[model_id]

    # ----- encoding ---------------------------------------------------------------
    def compress(self, image, quality: int = DEFAULT_QUALITY, target_bpp: float | None = None,
                 effort: int = DEFAULT_EFFORT, frame: int | None = None, metadata: bool = True,
                 lossless: bool = False, progress: Callable[[int, int], None] | None = None) -> bytes:
        """Image (path, PIL image, array or tensor) → .vae bytes. See :meth:`encode`."""
        return self.encode(image, quality, target_bpp, effort, frame, metadata, lossless, progress).data

    def encode(self, image, quality: int = DEFAULT_QUALITY, target_bpp: float | None = None,
               effort: int = DEFAULT_EFFORT, frame: int | None = None, metadata: bool = True,
               lossless: bool = False, progress: Callable[[int, int], None] | None = None) -> Encoded:
        """Compress, and report the size and the model's information estimate.

        Args:
          image: a path, encoded image bytes, PIL image, NumPy array (H×W or
            H×W×3; uint8, or float in [0, 1]) or torch tensor (C×H×W or H×W;
            uint8, or float in [0, 1]). See :mod:`vaecodec.image`.
          quality: 1..100, higher is better and larger.
          target_bpp: if given, ``quality`` is ignored and the highest quality
            whose whole file fits in this many bits per pixel is used.
          effort: 1..9. Above 1 the latents of this image are refined at
            encode time (:mod:`vaecodec.refine`): smaller or better files for
            more encoder CPU; decoding is unchanged. Never worse than effort 1.
          frame: the frame of a multi-frame file (animation, multi-page
            TIFF) to code; such files are refused without one.
          metadata: keep the image's ICC profile, EXIF and XMP (a file or
            PIL image's; arrays have none) in the file, as stored: pixels are
            never rotated, the EXIF orientation stays in the EXIF. They count
            in the file's size (and so against ``target_bpp``). False drops them.
            See :func:`vaecodec.image.read_metadata`.
          lossless: code every pixel exactly (``quality`` and ``effort`` do
            not apply; ``target_bpp`` cannot be met and is refused). Float
            inputs are rounded to 8 bits first, as for lossy coding.
          progress: called as ``progress(done, total)`` after each refinement
            iteration (effort above 1), for a progress bar.
        """
        _check_lossless(lossless, target_bpp)
        pixels, kept = load_image(image, frame, metadata)
        return self._encode_loaded(pixels, kept, quality, target_bpp, effort, lossless, progress)

    def _encode_loaded(self, pixels: np.ndarray, metadata: Metadata, quality: int, target_bpp: float | None,
                       effort: int, lossless: bool = False, progress=None) -> Encoded:
        if lossless:
            return self._encode_lossless(pixels, metadata)
        if target_bpp is None:
            _check_quality(quality)
        _check_effort(effort)
        with self._lock, torch.no_grad():
            analysed = self._analyze(pixels, metadata, several_files=target_bpp is not None)
            if target_bpp is None:
                return self._encode_at(analysed, int(quality), int(effort), progress)
            return self._encode_to_target(analysed, float(target_bpp), int(effort), progress)

    def encode_batch(self, images, quality: int = DEFAULT_QUALITY, target_bpp: float | None = None,
                     effort: int = DEFAULT_EFFORT, metadata: bool = True, lossless: bool = False) -> list[Encoded]:
        """Compress several images with this one loaded model; one :class:`Encoded` each, in order.

        Args:
          images: a list of anything :meth:`encode` takes (sizes and modes may
            differ), or one 4-D batch: an N×C×H×W tensor or an N×H×W×C array.
          quality, target_bpp, effort, metadata, lossless: as in :meth:`encode`, the same for every image.

        Every image is checked before any is coded, so a bad one fails the
        batch at once. Each result is exactly ``encode(image)``: images are
        analysed one at a time, because the float analysis transform does not
        give bit-identical latents when run on a stacked batch.
        """
        _check_lossless(lossless, target_bpp)
        loaded = [load_image(image, None, metadata) for image in split_batch(images)]
        if target_bpp is None:
            _check_quality(quality)
        _check_effort(effort)
        return [self._encode_loaded(p, m, quality, target_bpp, effort, lossless) for p, m in loaded]

    def _encode_lossless(self, pixels: np.ndarray, metadata: Metadata) -> Encoded:
        """Check value, [alpha plane,] the tiles' sub-pixels under the pixel model, content check (bottom → top)."""
        pm = self.lossless_model
        height, width = pixels.shape[:2]
        header = Header(width, height, mode_of(pixels), 100, pm.model_id, pm.weight_hash,
                        coding="lossless", metadata=metadata)
        colour, alpha = split_alpha(pixels)
        codec = pixel_codec(pm)
        with self._lock:
            coder = entropy.new_coder()
            entropy.push_check(coder, _header_check(header))
            alpha_codec = pixel_codec(pm)
            if alpha is not None:  # pushed once, tile by tile: no need to hold it prepared
                push_image(coder, alpha[:, :, None], alpha_codec)
            push_image(coder, colour.reshape(height, width, -1), codec)
            entropy.push_check(coder, entropy.content_check(colour, *_planes(alpha)))
            words = coder.get_compressed()
        data = pack(header, words)
        return Encoded(data, replace(header, num_words=int(words.size), num_bytes=len(data)),
                       codec.information_bits + alpha_codec.information_bits + 2 * entropy.CHECK_BITS)

    def _prepare_alpha(self, alpha: np.ndarray | None, several_files: bool) -> tuple | None:
        """The alpha plane, and its tiles ready to push when several files will be tried (a target size).

        Prepared tiles hold ~20 bytes per pixel, so only planes up to ``_PREPARED_ALPHA_LIMIT`` pixels
        are prepared; a larger plane is modelled again for each file tried, in bounded memory.
        """
        if alpha is None:
            return None
        if several_files and alpha.size <= _PREPARED_ALPHA_LIMIT:
            return alpha, prepare_image(alpha[:, :, None], pixel_codec(self.pixel_model))
        return alpha, alpha[:, :, None]

    def _push_alpha(self, coder, prepared: tuple | None) -> float:
        """Push a prepared alpha plane (if any); its information bits."""
        if prepared is None:
            return 0.0
        codec = pixel_codec(self.pixel_model)
        push_image(coder, prepared[1], codec)
        return codec.information_bits

    def _pop_alpha(self, coder, header: Header, floor: int, model: PixelModel | None = None) -> np.ndarray | None:
        """Pop an RGBA/LA file's alpha plane (after its colour, before its check value); ``model``: a lossless
        file's pixel model (default: the alpha planes' one)."""
        if header.mode not in ("RGBA", "LA"):
            return None
        model = model or self.pixel_model
        if coder.num_valid_bits() < required_bits(header.height, header.width, 1, model):
            raise FormatError("payload too short for the declared alpha plane (corrupted, truncated or forged file)")
        return pop_image(coder, header.height, header.width, 1, pixel_codec(model), floor=floor)[:, :, 0]

    def _analyze(self, pixels: np.ndarray, metadata: Metadata = NO_METADATA, several_files: bool = False) -> "_Analysed":
        h, w = pixels.shape[:2]
        colour, alpha = split_alpha(pixels)
        x = PaddedPixels(colour, DOWNSAMPLING)
        return _Analysed(h, w, mode_of(pixels), self.latents.analyze(x), x, colour, metadata,
                         self._prepare_alpha(alpha, several_files))

    def _code(self, analysed: "_Analysed", latents: Latents, quality: int,
              keep_y_hat: bool = False) -> tuple[Encoded, torch.Tensor | None]:
        """The file for these latents, and (``keep_y_hat``) the decoder's exact ŷ."""
        m = self.model
        header = Header(analysed.width, analysed.height, analysed.mode, quality, m.model_id, m.weight_hash,
                        metadata=analysed.metadata)
        coder = entropy.new_coder()
        entropy.push_check(coder, _header_check(header, _alpha_model_hash(header, self.pixel_model)
                                                if analysed.alpha else b""))
        alpha_bits = self._push_alpha(coder, analysed.alpha)
        code = self.latents.push(coder, latents, quality, keep_y_hat=keep_y_hat)
        alpha_plane = analysed.alpha[0] if analysed.alpha else None
        entropy.push_check(coder, entropy.content_check(*_planes(alpha_plane), start=code.symbols_crc))
        words = coder.get_compressed()
        header = replace(header, num_words=int(words.size))
        data = pack(header, words)
        encoded = Encoded(data, replace(header, num_bytes=len(data)),
                          code.information_bits + alpha_bits + 2 * entropy.CHECK_BITS)
        return encoded, code.y_hat

    def _encode_at(self, analysed: "_Analysed", quality: int, effort: int = DEFAULT_EFFORT,
                   progress=None) -> Encoded:
        return self._encode_full(analysed, quality, effort, progress)[0]

    def _encode_full(self, analysed: "_Analysed", quality: int, effort: int = DEFAULT_EFFORT,
                     progress=None) -> tuple[Encoded, torch.Tensor]:
        """The file at ``quality`` and ``effort``, with the decoder's exact ŷ when refinement compared files
        (None at the default effort: a large image's ŷ is never held whole)."""
        refining = effort != DEFAULT_EFFORT
        base = self._code(analysed, analysed.latents, quality, keep_y_hat=refining)
        x = analysed.x.tensor() if refining and analysed.height * analysed.width <= MAX_REFINE_PIXELS else None
        refined = refine_latents(self.model, x, analysed.latents, quality, effort, analysed.height, analysed.width,
                                 on_iteration=progress)
        return base if refined is None else self._better(analysed, quality, base, refined)

    def _better(self, analysed: "_Analysed", quality: int, base: tuple[Encoded, torch.Tensor],
                refined: Latents) -> tuple[Encoded, torch.Tensor]:
        """The refined file if its real RD cost (file bytes, exactly decoded pixels) is lower, else ``base``."""
        candidate = self._code(analysed, refined, quality, keep_y_hat=True)
        lam = self.model.quality_lambda(quality)
        costs = [rd_cost(e.num_bytes, self._mse(analysed, yh), lam, analysed.height * analysed.width)
                 for e, yh in (base, candidate)]
        return candidate if costs[1] < costs[0] else base

    def _mse(self, analysed: "_Analysed", y_hat: torch.Tensor) -> float:
        out = to_output_pixels(self.model.synthesize(y_hat), analysed.height, analysed.width, analysed.mode)
        return float(np.mean((out.astype(np.float64) - analysed.pixels.astype(np.float64)) ** 2))

    def _encode_to_target(self, analysed, target_bpp: float, effort: int = DEFAULT_EFFORT,
                          progress=None) -> Encoded:
        if not target_bpp > 0:
            raise ValueError(f"target bpp must be positive, not {target_bpp}")
        unrefined: dict[int, tuple[Encoded, torch.Tensor | None]] = {}  # quality → (file, None), coded once

        def at(quality: int) -> Encoded:
            if quality not in unrefined:
                unrefined[quality] = self._code(analysed, analysed.latents, quality)
            return unrefined[quality][0]

        # File size grows with quality, so bisect for the largest quality that fits.
        lo, hi = 1, NUM_QUALITIES
        if at(lo).bpp > target_bpp and effort == DEFAULT_EFFORT:
            raise VaecodecError(f"cannot reach {target_bpp:g} bpp: the smallest file (quality 1) is {at(lo).bpp:.4f} bpp")
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if at(mid).bpp <= target_bpp else (lo, mid - 1)
        if effort == DEFAULT_EFFORT:
            return at(lo)
        # Refinement lowers the rate, so a higher quality may fit once refined: refine at the unrefined
        # fit, predict from the saving which quality should fit, and try that one too. Of the files that
        # fit, the one with the least distortion wins.
        # The unrefined fit again, with its ŷ (not kept for every quality tried: one whole ŷ is enough).
        fits = [self._code(analysed, analysed.latents, lo, keep_y_hat=True)] if at(lo).bpp <= target_bpp else []
        first = self._encode_full(analysed, lo, effort, progress)
        if first[0].bpp <= target_bpp:
            fits.append(first)
        ratio = min(1.0, first[0].bpp / at(lo).bpp)
        q = lo
        while q < NUM_QUALITIES and at(q + 1).bpp * ratio <= target_bpp:
            q += 1
        if q > lo:
            trial = self._encode_full(analysed, q, effort, progress)
            if trial[0].bpp <= target_bpp:
                fits.append(trial)
        if not fits:
            raise VaecodecError(f"cannot reach {target_bpp:g} bpp: the smallest file (quality 1, effort {effort}) "
                                f"is {first[0].bpp:.4f} bpp")

        return min(fits, key=lambda item: self._mse(analysed, item[1]))[0]

    # ----- decoding ---------------------------------------------------------------
    def decompress(self, data: bytes | bytearray | memoryview | str | os.PathLike) -> Image.Image:
        """.vae bytes, or the path of a .vae file → PIL image ("RGB" or "L").

        The file's metadata is in the image's ``info`` as Pillow's readers put
        it: ``icc_profile``, ``exif`` (with its ``Exif\\0\\0``), ``xmp``; only
        those present. Pass them to ``save`` to keep them (the ``vaecodec
        decompress`` command does). Raises FormatError on any defect of the
        data (OSError if a path cannot be read).
        """
        header, pixels = self._decode(_read_vae(data))
        image = Image.fromarray(pixels, mode=mode_of(pixels))
        image.info.update(metadata_info(header.metadata))
        return image

    def decompress_array(self, data: bytes | bytearray | memoryview | str | os.PathLike) -> np.ndarray:
        """.vae bytes, or the path of a .vae file → uint8 array (H, W, 3) or (H, W); pixels only.

        The metadata, without decoding: ``vaecodec.read_header(data).metadata``.
        """
        return self._decode(_read_vae(data))[1]

    def _decode(self, raw: bytes) -> tuple[Header, np.ndarray]:
        header, words = unpack(raw)
        if header.coding == "lossless":
            return header, self._decode_lossless(header, words)
        m = self.model
        if header.model_id != m.model_id or header.weight_hash != m.weight_hash:
            earlier = self._earlier_shipped(header)
            if earlier is not None:
                return earlier._decode(raw)
            raise ModelMismatchError(
                f"file was written by model {header.model_id} ({header.weight_hash.hex()}), "
                f"loaded model is {m.model_id} ({m.weight_hash.hex()})")
        with self._lock, torch.no_grad():
            coder = entropy.new_coder(words)
            alpha_hash = _alpha_model_hash(header, self.pixel_model) if header.mode in ("LA", "RGBA") else b""
            check = _header_check(header, alpha_hash)
            seal = entropy.pop_check(coder) if header.format_version >= 2 else None
            floor = entropy.state_floor(check)
            # Bands of ŷ are synthesized as they are decoded (each once the one below it is there), so
            # the decoder holds two bands of latents and the output pixels, not the whole ŷ.
            channels = 1 if header.mode in ("L", "LA") else 3
            out = np.empty((header.height, header.width, channels), np.uint8)
            bands = _BandWriter(m, out, header.mode)
            code = self.latents.pop_code(coder, header.height, header.width, header.quality, floor,
                                         tile=LATENT_TILE if header.format_version >= 3 else None, on_band=bands.add)
            alpha = self._pop_alpha(coder, header, floor)
            _require_checks(coder, check, seal, code.symbols_crc, alpha)
            bands.finish()
        return header, with_alpha(out[:, :, 0] if channels == 1 else out, alpha)

    def _decode_lossless(self, header: Header, words: np.ndarray) -> np.ndarray:
        pm = (self.pixel_model if self._pixel_source is not None else
              self._shipped_pixel_model(header.model_id) or self.lossless_model)
        if header.model_id != pm.model_id or header.weight_hash != pm.weight_hash:
            raise ModelMismatchError(
                f"lossless file was written by pixel model {header.model_id} ({header.weight_hash.hex()}), "
                f"loaded pixel model is {pm.model_id} ({pm.weight_hash.hex()})")
        channels = 1 if header.mode in ("L", "LA") else 3
        planes = channels + (header.mode in ("LA", "RGBA"))
        if 32 * words.size < required_bits(header.height, header.width, planes, pm):
            raise FormatError("payload too short for the declared image (corrupted, truncated or forged file)")
        check = _header_check(header)
        with self._lock:
            coder = entropy.new_coder(words)
            seal = entropy.pop_check(coder) if header.format_version >= 2 else None
            floor = entropy.state_floor(check)
            pixels = pop_image(coder, header.height, header.width, channels, pixel_codec(pm), floor=floor)
            alpha = self._pop_alpha(coder, header, floor, pm)
            _require_checks(coder, check, seal, entropy.content_check(pixels), alpha)
        return with_alpha(pixels[:, :, 0] if channels == 1 else pixels, alpha)

    # ----- the generative side ----------------------------------------------------
    def sample(self, width: int, height: int, quality: int = DEFAULT_QUALITY, seed: int = 0) -> Image.Image:
        """An image drawn from the model's prior: the decoder run on random bits.

        Decoding ANS from uniformly random words draws every symbol from the
        distribution it would have been coded with, so popping the latents
        off a random stack *is* sampling ẑ from the hyperprior's density and ŷ
        from p(ŷ | ẑ) (and the context, for checkerboard models), and the
        synthesis turns that into pixels: the receiver's half of the VAE with
        no sender. Compression models spend their capacity on the rate of
        real images, not on a good prior, so expect textures, not photos.
        """
        _check_quality(quality)
        if not (isinstance(width, (int, np.integer)) and isinstance(height, (int, np.integer))
                and 1 <= width <= 4096 and 1 <= height <= 4096):
            raise ValueError(f"sample size must be integers in 1..4096, not {width!r}×{height!r}")
        y_shape, z_shape = self.model.latent_shapes(height, width)
        # 64 random bits per symbol is far more than any table or escape can draw.
        words = np.random.default_rng(seed).integers(1, 2**32, size=2 * (int(np.prod(y_shape)) + int(np.prod(z_shape))),
                                                     dtype=np.uint32)
        with self._lock, torch.no_grad():
            y_hat = self.latents.pop(entropy.new_coder(words), height, width, quality)
            rgb = self.model.synthesize(y_hat)
        return Image.fromarray(to_output_pixels(rgb, height, width, "RGB"), mode="RGB")

    def _earlier_shipped(self, header: Header) -> "Codec | None":
        """The shipped codec that wrote this file, when this codec is the shipped default (loaded once)."""
        filename = SHIPPED_MODELS.get(header.model_id)
        if not self._shipped or filename is None or filename == SHIPPED_MODEL:
            return None
        with self._lock:
            if filename not in self._earlier:
                self._earlier[filename] = Codec(_load_shipped(filename))
        codec = self._earlier[filename]
        return codec if codec.model.weight_hash == header.weight_hash else None

    def decode_batch(self, files) -> list[np.ndarray]:
        """Several .vae files (bytes or paths) → one uint8 array each, in order. See :meth:`decompress_array`."""
        if isinstance(files, (bytes, bytearray, memoryview, str, os.PathLike)):
            raise TypeError("decode_batch takes a list of .vae files; use decompress_array for one")
        return [self.decompress_array(data) for data in files]


@dataclass(frozen=True)
class _Analysed:
    """An image's size, mode and quality-independent latents (reused across target-size trials)."""

    height: int
    width: int
    mode: str
    latents: Latents
    x: PaddedPixels  # the padded model input, padded on demand
    pixels: np.ndarray  # the original uint8 colour pixels (no alpha)
    metadata: Metadata  # what the file keeps beside the pixels
    alpha: tuple | None  # (alpha plane, its prepared tiles or the plane itself as (H, W, 1)): see _prepare_alpha


class _BandWriter:
    """Synthesizes bands of ŷ handed over top to bottom into the output pixels.

    A band's pixels see ±2 latents, so band k is synthesized when band k+1
    arrives (or at the end), with the last rows of band k−1 above it: the
    pixels equal the whole image's synthesis, bit for bit.
    """

    def __init__(self, model: CodingModel, out: np.ndarray, mode: str):
        self.model, self.out, self.mode = model, out, mode
        self.above: torch.Tensor | None = None
        self.pending: tuple[int, torch.Tensor] | None = None

    def add(self, first_row: int, band: torch.Tensor) -> None:
        if self.pending is not None:
            self._write(band)
        self.pending = (first_row, band)

    def finish(self) -> None:
        if self.pending is not None:
            self._write(self.pending[1][:, :, :0])
            self.pending = None

    def _write(self, below: torch.Tensor) -> None:
        first_row, band = self.pending
        above = self.above if self.above is not None else band[:, :, :0]
        rgb = self.model.synthesize_rows(above, band, below)
        top = first_row * DOWNSAMPLING_LATENT
        rows = max(0, min(rgb.shape[0], self.out.shape[0] - top))
        if rows:
            self.out[top:top + rows] = to_output_pixels(rgb[:rows], rows, self.out.shape[1], self.mode).reshape(
                rows, self.out.shape[1], -1)
        self.above = band[:, :, -SYNTHESIS_HALO:].clone()  # all the next band's pixels see of this one


def _check_quality(quality) -> None:
    if not (isinstance(quality, (int, np.integer)) and 1 <= quality <= NUM_QUALITIES):
        raise ValueError(f"quality must be an integer in 1..{NUM_QUALITIES}, not {quality!r}")


def _check_lossless(lossless, target_bpp) -> None:
    if not isinstance(lossless, (bool, np.bool_)):
        raise TypeError(f"lossless must be True or False, not {lossless!r}")
    if lossless and target_bpp is not None:
        raise ValueError("a target size cannot be met losslessly: give lossless or target_bpp, not both")


def _check_effort(effort) -> None:
    if not (isinstance(effort, (int, np.integer)) and int(effort) in EFFORTS):
        raise ValueError(f"effort must be an integer in {min(EFFORTS)}..{max(EFFORTS)}, not {effort!r}")


def _read_vae(data: bytes | bytearray | memoryview | str | os.PathLike) -> bytes:
    """The bytes of a .vae file, given them or its path (as :func:`compress` takes an image's path)."""
    if isinstance(data, (str, os.PathLike)):
        return Path(data).read_bytes()
    return bytes(data)


def _planes(alpha: np.ndarray | None) -> tuple:
    return () if alpha is None else (alpha,)


def _require_checks(coder, check: int, seal: int | None, symbols_crc: int, alpha: np.ndarray | None) -> None:
    """The stack's end: its bottom check value matches the header, nothing is left, and the decoded
    symbols (their CRC, then the alpha plane) match the content check popped first (``seal``; None in
    version-1 files, which have none)."""
    if entropy.pop_check(coder) != check or not coder.is_empty():
        also = (" or its alpha plane was coded with another pixel model than the loaded one"
                if alpha is not None else "")
        raise FormatError(f"payload does not match its header (corrupted or truncated data{also})")
    if seal is not None and entropy.content_check(*_planes(alpha), start=symbols_crc) != seal:
        raise FormatError("payload does not match its content check (corrupted data)")


def _header_check(h: Header, alpha_model_hash: bytes = b"") -> int:
    """32-bit value tying a payload to the header fields that shape its decoding.

    Version 2 also binds the version and the coding, and for a lossy file with
    alpha the pixel model that coded the alpha plane (the header names only
    the lossy model), so a file read with another pixel model is refused.
    """
    fields = f"{h.width}x{h.height}:{h.mode}:{h.quality}:{h.model_id}:".encode() + h.weight_hash
    if h.format_version >= 2:
        fields += f":v{h.format_version}:{h.coding}:".encode() + alpha_model_hash
    return zlib.crc32(fields)


def _alpha_model_hash(header: Header, pixel_model: PixelModel) -> bytes:
    return pixel_model.weight_hash if header.coding == "lossy" and header.mode in ("LA", "RGBA") else b""


_default: Codec | None = None
_default_lock = threading.Lock()


def default_codec() -> Codec:
    """The shipped model, loaded on first use and then kept."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Codec()
        return _default


def compress(image, quality: int = DEFAULT_QUALITY, target_bpp: float | None = None,
             effort: int = DEFAULT_EFFORT, frame: int | None = None, metadata: bool = True,
             lossless: bool = False) -> bytes:
    """Compress with the shipped model. See :meth:`Codec.encode`."""
    return default_codec().compress(image, quality, target_bpp, effort, frame, metadata, lossless)


def decompress(data: bytes | bytearray | memoryview | str | os.PathLike) -> Image.Image:
    """Decompress .vae bytes or a .vae file with the shipped model. See :meth:`Codec.decompress`."""
    return default_codec().decompress(data)
