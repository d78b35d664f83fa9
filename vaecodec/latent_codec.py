"""Latent codecs: where the bits of the latents are made, in one place per architecture.

Each class owns the push/pop order of its latents on the ANS stack (craystack's
view: a codec is a ``(push, pop)`` pair). The encoder (:mod:`vaecodec.api`),
the decoder, ``benchmarks/speed.py`` and the tests all call these, so the
order is written once. ``pop`` is the exact inverse of ``push``; everything
that decides a coding distribution on the way is computed by the model's
integer-exact programs, identically on both sides.

Tiles (format version 3): the latent grid is cut into ``LATENT_TILE`` ×
``LATENT_TILE`` tiles (1024 × 1024 pixels), coded one after another, so the
decoder holds one band of tiles at a time and a file whose stack runs dry is refused within
its first tile. Each tile's parameters come from the hyper-latents around it
(exactly the whole image's), and a checkerboard context sees only its own
tile. Files of versions 1 and 2 are one tile the size of the image
(``tile=None``).

Stack order, bottom → top (ANS is LIFO: the decoder pops from the top)::

    tile n−1 · … · tile 1 · tile 0 · ẑ        (tiles in raster order from the top)

and within a tile:

* :class:`HyperpriorLatentCodec` — its latents, y_pmfs[scale index];
* :class:`CheckerboardLatentCodec` — non-anchors, then anchors (each slice by
  slice, last slice lowest, for models with channel slices). The decoder pops
  the anchors with the hyper's parameters, then the non-anchors with
  parameters that see the decoded anchors (two parallel passes; a pass per
  slice with channel slices, each slice's parameters seeing the ones before).

Typical workflow::

    codec = latent_codec(model)
    latents = codec.analyze(x)                  # encoder only: float analysis
    code = codec.push(coder, latents, quality)  # → LatentCode (information bits, symbols' CRC)
    ...
    y_hat = codec.pop(coder, height, width, quality)   # the decoder's ŷ, bit for bit
    pixels = model.synthesize(y_hat)

This module knows nothing of files; :mod:`vaecodec.api` adds the check values
around these and the container around them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from . import entropy
from .coding_model import CodingModel, HyperParams
from .errors import FormatError
from .model import checkerboard_anchor_mask

__all__ = ["Latents", "LatentCode", "HyperpriorLatentCodec", "CheckerboardLatentCodec", "latent_codec",
           "LATENT_TILE", "tile_regions"]

LATENT_TILE = 64
"""Latents per side of a tile in format version 3 (1024 pixels)."""


@dataclass(frozen=True)
class Latents:
    """The encoder's analysis of one image, independent of quality: ``y`` float latents, ``z_symbols`` the
    rounded hyper-latents."""

    y: torch.Tensor
    z_symbols: torch.Tensor


@dataclass(frozen=True)
class LatentCode:
    """What one ``push`` wrote (or ``pop_code`` read).

    ``y_hat``: the decoder's exact ŷ (fixed point), when asked for (None
    otherwise: a large image's ŷ need not be held); ``information_bits``:
    Σ −log2 p of the symbols (0 when popped); ``symbols_crc``: the CRC-32 of
    the symbols that the content check covers (:meth:`HyperpriorLatentCodec.symbols_crc`).
    """

    y_hat: torch.Tensor | None
    information_bits: float
    symbols_crc: int


def tile_regions(height: int, width: int, tile: int | None) -> list[list[tuple[slice, slice]]]:
    """Latent (rows, cols) of each tile, a list per band of tiles, in raster order (``None``: one tile)."""
    t_h, t_w = (height, width) if tile is None else (tile, tile)
    return [[(slice(r, min(r + t_h, height)), slice(c, min(c + t_w, width))) for c in range(0, width, t_w)]
            for r in range(0, height, t_h)]


class HyperpriorLatentCodec:
    """Mean-scale hyperprior: all latents of a tile in one pass. Stack (bottom → top): tiles, ẑ."""

    def __init__(self, model: CodingModel):
        self.model = model

    @torch.no_grad()
    def analyze(self, x: torch.Tensor) -> Latents:
        """x (1, 3, H, W) uint8, or float32 in [0, 1]; H and W multiples of 64."""
        return Latents(*self.model.analyze(x))

    # ----- one tile ---------------------------------------------------------------
    def _push_tile(self, coder, y: torch.Tensor, hyper: HyperParams, quality: int) -> tuple[float, torch.Tensor, torch.Tensor]:
        """Push one tile's latents; (information bits, symbols q, exact ŷ)."""
        m = self.model
        q = m.quantize(y, hyper, quality)
        return self._push_y(coder, q, hyper, quality), q, m.dequantize(q, hyper, quality)

    def _pop_tile(self, coder, hyper: HyperParams, quality: int, floor: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pop one tile's latents; (symbols q, exact ŷ)."""
        q = self._pop_y(coder, hyper, quality)
        return q, self.model.dequantize(q, hyper, quality)

    def _push_z(self, coder, z_symbols: torch.Tensor) -> float:
        m = self.model
        z_idx = m.hyper_latent_indexes(z_symbols.shape)
        m.z_pmfs.encode(coder, z_symbols.numpy(), z_idx)
        return m.z_pmfs.information_bits(z_symbols.numpy(), z_idx)

    def _pop_z(self, coder, z_shape: tuple[int, ...], floor: int) -> torch.Tensor:
        m = self.model
        z = torch.from_numpy(m.z_pmfs.decode(coder, m.hyper_latent_indexes(z_shape)).reshape(z_shape))
        _require_bits(coder, floor)
        return z

    def _push_y(self, coder, q: torch.Tensor, params: HyperParams, quality: int, channels: slice = slice(None)) -> float:
        """Push latents ``q`` (a grid or (1, M, positions), or of the latent ``channels``), channel by channel,
        positions in order."""
        m = self.model
        j = m.scale_indexes(params, quality, channels).numpy()
        m.y_pmfs.encode(coder, q.numpy(), j)
        return m.y_pmfs.information_bits(q.numpy(), j)

    def _pop_y(self, coder, params: HyperParams, quality: int, channels: slice = slice(None)) -> torch.Tensor:
        """Pop what :meth:`_push_y` pushed with these parameters: int64, their shape."""
        j = self.model.scale_indexes(params, quality, channels)
        return torch.from_numpy(self.model.y_pmfs.decode(coder, j.numpy()).reshape(j.shape))

    # ----- the whole image ----------------------------------------------------------
    @staticmethod
    def symbols_crc(z_symbols, tile_crcs: list[int], tile: int | None) -> int:
        """What the content check covers of the latents: for ``tile=None`` (versions 1–2) the CRC of q
        then ẑ; for tiles, the CRC of the CRCs of ẑ and of each tile's q in raster order (so the
        encoder, which pushes the tiles last to first, need not hold every tile's symbols)."""
        if tile is None:
            return entropy.content_check(z_symbols, start=tile_crcs[0])
        return entropy.content_check(np.array([entropy.content_check(z_symbols), *tile_crcs], np.uint32))

    @torch.no_grad()
    def push(self, coder, latents: Latents, quality: int, tile: int | None = LATENT_TILE,
             keep_y_hat: bool = False) -> LatentCode:
        """Push the tiles last to first, then ẑ; ``keep_y_hat``: also return the decoder's whole ŷ."""
        m, y, z = self.model, latents.y, latents.z_symbols
        bands = tile_regions(y.shape[2], y.shape[3], tile)
        regions = [r for band in bands for r in band]
        y_hat = torch.empty(y.shape, dtype=torch.float64) if keep_y_hat else None
        crcs, bits = [0] * len(regions), 0.0
        for i in reversed(range(len(regions))):
            rows, cols = regions[i]
            b, q, tile_y_hat = self._push_tile(coder, y[:, :, rows, cols], m.hyper_decode_region(z, rows, cols), quality)
            bits += b
            crcs[i] = entropy.content_check(q)
            if y_hat is not None:
                y_hat[:, :, rows, cols] = tile_y_hat
        bits += self._push_z(coder, z)
        return LatentCode(y_hat, bits, self.symbols_crc(z, crcs, tile))

    def pop(self, coder, height: int, width: int, quality: int, floor: int = 0,
            tile: int | None = LATENT_TILE) -> torch.Tensor:
        """Exact ŷ of a ``height`` × ``width`` image; ``floor``: :func:`entropy.state_floor` of the
        check value under the latents (0: no early check), so a stack that runs dry is refused
        before the next expensive pass."""
        return self.pop_code(coder, height, width, quality, floor, tile).y_hat

    @torch.no_grad()
    def pop_code(self, coder, height: int, width: int, quality: int, floor: int = 0,
                 tile: int | None = LATENT_TILE,
                 on_band: Callable[[int, torch.Tensor], None] | None = None) -> LatentCode:
        """:meth:`pop`, with the symbols' CRC. ``on_band(first_row, ŷ rows)``: hand each band of tiles
        over as it is decoded, top to bottom (as float32, which holds ŷ's integers exactly), instead of
        returning the whole ŷ (then ``y_hat`` is None)."""
        m = self.model
        y_shape, z_shape = m.latent_shapes(height, width)
        z = self._pop_z(coder, z_shape, floor)
        y_hat = None if on_band is not None else torch.empty(y_shape, dtype=torch.float64)
        crcs = []
        for band in tile_regions(y_shape[2], y_shape[3], tile):
            rows = band[0][0]
            # float32 holds ŷ exactly (fixed-point integers within ±2^20 < 2^24) in half the memory.
            band_y_hat = torch.empty((1, y_shape[1], rows.stop - rows.start, y_shape[3]),
                                     dtype=torch.float64 if on_band is None else torch.float32)
            for rows, cols in band:
                _require_bits(coder, floor)
                q, band_y_hat[:, :, :, cols] = self._pop_tile(coder, m.hyper_decode_region(z, rows, cols), quality, floor)
                crcs.append(entropy.content_check(q))
            if on_band is None:
                y_hat[:, :, rows] = band_y_hat
            else:
                on_band(rows.start, band_y_hat)
        return LatentCode(y_hat, 0.0, self.symbols_crc(z, crcs, tile))


class CheckerboardLatentCodec(HyperpriorLatentCodec):
    """Checkerboard context (two parallel passes per tile), each pass slice by slice along the channels
    where the model has channel slices. Stack (bottom → top): tiles, ẑ; within a tile, the reverse of the
    decoding order::

        non-anchors slice n−1 · … · non-anchors slice 0 · anchors slice n−1 · … · anchors slice 0

    (a model without channel slices has one slice, all channels: non-anchors, then anchors). The decoder
    pops the anchors slice by slice, each slice's parameters from the hyper's and (slice s > 0) the
    slices before it; then the non-anchors the same way, their parameters also seeing every decoded anchor.

    The encoder has to know each slice's parameters before it can push it,
    and those depend on ŷ decoded before: so it computes every pass of a tile
    first (exactly as the decoder will) and then pushes in reverse order.
    Tiles start at even latents, so the anchor pattern is the image's.
    """

    def _passes(self, hyper: HyperParams, quality: int, y_hat: torch.Tensor, code_slice, check=None):
        """Run a tile's passes in decoding order, filling ``y_hat`` (1, M, h·w); ``code_slice(positions,
        channels, params)`` codes one (pass, slice) and returns its symbols; ``check()`` runs before each
        exact network that reads decoded latents."""
        m = self.model
        n, c, h, w = hyper.mean.shape
        grid = y_hat.view(n, c, h, w)
        q = torch.empty((n, c, h * w), dtype=torch.long)
        for k, positions in enumerate(_checkerboard_positions(h, w)):
            if k and check:
                check()
            p = m.context_params_at(hyper, grid if k else None, positions)  # non-anchors see every anchor
            for s, ch in enumerate(m.slice_bounds):
                if s and check:
                    check()
                p_s = m.channel_params_at(s, p.channels(ch), grid[:, :ch.start], positions) if s else p.channels(ch)
                q[:, ch, positions] = q_s = code_slice(positions, ch, p_s)
                y_hat[:, ch, positions] = m.dequantize(q_s, p_s, quality, ch)
        return q.view(n, c, h, w)

    def _push_tile(self, coder, y: torch.Tensor, hyper: HyperParams, quality: int) -> tuple[float, torch.Tensor, torch.Tensor]:
        m = self.model
        n, c, h, w = y.shape
        y_flat = y.reshape(n, c, h * w)
        y_hat = torch.zeros((n, c, h * w), dtype=torch.float64)
        coded = []

        def quantize(positions, ch, p_s):
            q_s = m.quantize(y_flat[:, ch, positions], p_s, quality, ch)
            coded.append((q_s, p_s, ch))
            return q_s

        q = self._passes(hyper, quality, y_hat, quantize)
        bits = sum(self._push_y(coder, q_s, p_s, quality, ch) for q_s, p_s, ch in reversed(coded))
        return bits, q, y_hat.view(n, c, h, w)

    def _pop_tile(self, coder, hyper: HyperParams, quality: int, floor: int) -> tuple[torch.Tensor, torch.Tensor]:
        n, c, h, w = hyper.mean.shape
        y_hat = torch.zeros((n, c, h * w), dtype=torch.float64)
        q = self._passes(hyper, quality, y_hat, lambda positions, ch, p_s: self._pop_y(coder, p_s, quality, ch),
                         check=lambda: _require_bits(coder, floor))
        return q, y_hat.view(n, c, h, w)


@functools.lru_cache(maxsize=64)
def _checkerboard_positions(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices (y·w + x, ascending) of a tile's anchors and of its other latents: the two passes.
    Their order is the bitstream's: within a pass, latents go channel by channel, positions in order."""
    anchor = checkerboard_anchor_mask(h, w).bool().reshape(-1)
    return anchor.nonzero().squeeze(1), (~anchor).nonzero().squeeze(1)


def _require_bits(coder, floor: int) -> None:
    """Refuse a stack that ran dry before its end: the check value always lies under the latents.

    ANS pops from an exhausted stack without complaint, so without this a tiny
    forged file declaring a huge image would run the exact networks on
    nothing before the check value refused it. Checked between passes, before
    each expensive exact network runs. (A *valid* file of a huge, flat image
    can itself be tiny; the container's pixel limit bounds that work.)
    """
    if coder.is_empty() or not entropy.holds_check(coder, floor):
        raise FormatError("payload too short for the declared image (corrupted, truncated or forged file)")


def latent_codec(model: CodingModel) -> HyperpriorLatentCodec:
    """The latent codec for a model's architecture."""
    return CheckerboardLatentCodec(model) if model.has_context else HyperpriorLatentCodec(model)
