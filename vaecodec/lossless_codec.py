"""Lossless mode's push/pop codecs: pixels under the autoregressive pixel model, tile by tile.

A codec here is a (push, pop) pair over one ANS stack (craystack's view): what
``push`` puts on the stack, ``pop`` takes off in reverse, exactly. The image is
cut into ``TILE``×``TILE`` tiles, each coded on its own (its context stops at
its edges), so memory is bounded by a tile and a tile is the unit that later
layers (bits-back over latents) chain on.

Stack order, bottom to top (the decoder pops from the top)::

    what the caller pushed before (its check value, an alpha plane)
    tile 0, tile 1, …, tile n-1          (raster order of tiles)

and inside one tile, :class:`PixelCodec` pushes the sub-pixels so that
``pop`` takes them in wavefront order: step t = 0, 1, … (pixels with
``col + 3·row = t``), within a step channel 0, 1, 2, within a channel by row.

A mixture pixel model is coded by :class:`BitsBackPixelCodec` in the same
order, batch by batch (one channel of one wavefront step): each batch pops its
components under the prior, then the grey levels, then pushes the components
back under the posterior (bits-back). :func:`pixel_codec` picks the codec a
model needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from .entropy import (PROBABILITY_BITS, holds_check, pop_check, pop_choices, pop_grey_levels, push_check, push_choices,
                      push_grey_levels)
from .errors import FormatError
from .pixel_model import (PAD, WAVEFRONT_SLOPE, MixtureParams, PixelModel, gather_context, one_blas_thread, padded_tile,
                          wavefront_steps)

__all__ = ["TILE", "PixelCodec", "BitsBackPixelCodec", "PreparedTile", "pixel_codec", "tiles", "prepare_image",
           "push_image", "pop_image", "required_bits"]

TILE = 512
"""Side of the square tiles an image is coded in (edge tiles are smaller)."""
_ENCODE_CHUNK = 4096
"""Pixels per batch of the encoder's (order-free) parameter computation: small enough to stay in cache."""
_CHECK_EVERY = 64
"""Wavefront steps between checks that a popping stack has not run dry."""
MIN_BITS_PER_SUBPIXEL = -math.log2(1 - 255 / 2**PROBABILITY_BITS)
"""No sub-pixel costs less: each of the 255 other grey levels keeps at least 2^-24 of the mass."""


def required_bits(height: int, width: int, num_channels: int, model: PixelModel | None = None) -> int:
    """A lower bound on the payload of any lossless file of this size (the ANS state may hide 64 bits).

    Checked before decoding, it refuses a tiny forged file that declares a huge
    image at once; a valid file of a flat image is still far above it. A
    mixture ``model`` codes by bits-back, where one sub-pixel's net cost has no
    such floor (bits given back can exceed it): 0 then, and a forged file is
    refused by the stack's floor checks as it runs dry.
    """
    if model is not None and model.components > 1:
        return 0
    return max(0, math.floor(height * width * num_channels * MIN_BITS_PER_SUBPIXEL) - 64)


def tiles(height: int, width: int) -> Iterator[tuple[int, int, int, int]]:
    """(top, left, tile height, tile width) in raster order."""
    for top in range(0, height, TILE):
        for left in range(0, width, TILE):
            yield top, left, min(TILE, height - top), min(TILE, width - left)


@dataclass(frozen=True)
class PreparedTile:
    """A tile's sub-pixels in pop order with their exact (mean, scale): pushing it is one cheap call."""

    levels: np.ndarray  # int32
    mean: np.ndarray  # float64
    scale: np.ndarray  # float64
    information_bits: float


def _contexts(pixels: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, int, np.ndarray, np.ndarray]]:
    """(rows, cols, channel, context, ref) of every sub-pixel of a tile, in chunks of ``_ENCODE_CHUNK`` pixels.

    The encoder's parameter pass: every context is known, so order does not matter and large chunks keep
    the MLP's products efficient.
    """
    height, width, num_channels = pixels.shape
    buf = padded_tile(pixels.astype(np.int32), height, width, num_channels)
    everything = np.arange(height * width)
    for chunk in np.array_split(everything, max(1, everything.size // _ENCODE_CHUNK)):
        rows, cols = np.divmod(chunk, width)
        for k in range(num_channels):
            yield (rows, cols, k, *gather_context(buf, rows, cols, k))


def _decode_order(height: int, width: int, num_channels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, channels) of every sub-pixel in the order pop returns them."""
    rows, cols = np.divmod(np.arange(height * width), width)
    t = cols + WAVEFRONT_SLOPE * rows
    rows = np.repeat(rows, num_channels)
    cols = np.repeat(cols, num_channels)
    t = np.repeat(t, num_channels)
    channels = np.tile(np.arange(num_channels), height * width)
    order = np.lexsort((rows, channels, t))
    return rows[order], cols[order], channels[order]


class PixelCodec:
    """Push/pop the sub-pixels of one tile under a :class:`PixelModel`.

    ``information_bits`` after a push is Σ −log2 p of what was pushed, under
    the float64 Laplace (the coder's 24-bit probabilities add a few bits).
    """

    def __init__(self, model: PixelModel):
        self.model = model
        self.information_bits = 0.0

    def push(self, coder, pixels: np.ndarray) -> None:
        """Push a tile: uint8 (height, width, C), C = 1 or 3."""
        self.push_prepared(coder, self.prepare(pixels))

    def push_prepared(self, coder, tile: PreparedTile) -> None:
        """Push a tile that :meth:`prepare` made ready."""
        self.information_bits += tile.information_bits
        push_grey_levels(coder, tile.levels, tile.mean, tile.scale)

    def prepare(self, pixels: np.ndarray) -> PreparedTile:
        """The work of :meth:`push` that does not touch the stack (done once when a tile is pushed many times)."""
        height, width, num_channels = pixels.shape
        mean = np.empty((height, width, num_channels))
        scale = np.empty((height, width, num_channels))
        for rows, cols, k, context, ref in _contexts(pixels):
            mean[rows, cols, k], scale[rows, cols, k] = self.model.params(context, ref, num_channels, k)
        r, c, k = _decode_order(height, width, num_channels)
        symbols = pixels[r, c, k].astype(np.int32)
        mean, scale = mean[r, c, k], scale[r, c, k]
        return PreparedTile(symbols, mean, scale, float(_laplace_bits(symbols, mean, scale).sum()))

    def pop(self, coder, height: int, width: int, num_channels: int, floor: int = 0) -> np.ndarray:
        """Pop a tile: returns uint8 (height, width, C).

        ``floor``: :func:`~vaecodec.entropy.state_floor` of the check value under
        the image (0: no check); a stack that runs dry is refused with
        FormatError within ``_CHECK_EVERY`` wavefront steps.
        """
        buf = padded_tile(None, height, width, num_channels)
        for t, rows, cols in _wavefront(height, width):
            if floor and t % _CHECK_EVERY == 0 and not holds_check(coder, floor):
                raise FormatError("payload too short for the declared image (corrupted, truncated or forged file)")
            for k in range(num_channels):
                context, ref = gather_context(buf, rows, cols, k)
                mean, scale = self.model.params(context, ref, num_channels, k)
                buf[rows + PAD, cols + PAD, k] = pop_grey_levels(coder, mean, scale)
        return buf[PAD:, PAD:PAD + width].astype(np.uint8)


def _wavefront(height: int, width: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(t, rows, cols) of each wavefront step that has pixels (``col + 3·row = t``), in pop order."""
    for t in range(wavefront_steps(height, width)):
        first = max(0, -(-(t - width + 1) // WAVEFRONT_SLOPE))
        rows = np.arange(first, min(height - 1, t // WAVEFRONT_SLOPE) + 1)
        if rows.size:  # tiles narrower than the slope skip some steps
            yield t, rows, t - WAVEFRONT_SLOPE * rows


CUSHION_WORDS = 2
"""Known 32-bit words beneath each bits-back tile (see :class:`BitsBackPixelCodec`)."""
_CUSHION_VALUE = 0x5A5A5A5A


@dataclass(frozen=True)
class _PreparedMixtureTile:
    """A tile's sub-pixels in pop order with their exact mixture parameters; ``cuts``: where each batch
    (one channel of one wavefront step) starts, and the end."""

    levels: np.ndarray  # int32 (n,)
    mean: np.ndarray  # float64 (n, K)
    scale: np.ndarray  # float64 (n, K)
    prior: np.ndarray  # int64 weights (n, K)
    posterior: np.ndarray  # int64 weights (n, K)
    cuts: np.ndarray
    marginal_bits: float


class BitsBackPixelCodec:
    """Push/pop the sub-pixels of one tile under a *mixture* pixel model, by bits-back over the component.

    Each sub-pixel has K discretized Laplaces and a prior over them. Coding the
    mixture's marginal directly would need a 256-entry table per sub-pixel;
    instead the component c is a latent, and three codecs compose (BB-ANS, as
    craystack writes it). What ``pop`` does for one batch of sub-pixels, in order:

        c ← pop under the prior π(c)                 (prior codec)
        x ← pop under Laplace(mean_c, scale_c)         (likelihood codec)
        push c under the posterior q(c | x)           (posterior codec: the bits given back)

    and ``push`` does the inverse, batch by batch from the last: pop c under
    q(c | x) (a sample drawn with the bits already on the stack), push x, push
    c under π. Net cost per sub-pixel: −log2 π(c) − log2 p(x | c) + log2 q(c | x),
    on average the mixture's −log2 p(x) plus KL(q ‖ true posterior); q is an
    integer approximation (:meth:`PixelModel.posterior_weights`).

    Initial bits: beneath each tile, ``push`` first puts :data:`CUSHION_WORDS`
    known words, which ``pop`` takes back last and checks. A bits-back stream
    can hold fewer bits partway through a tile than where it started (a drawn
    component may give back more than its pixel cost), and the cushion keeps
    such a dip above everything beneath the tile, so the decoder's check that
    the stack has not run dry (the state above its floor) stays valid. The
    first batch ``push`` handles (the tile's last in pop order, one sub-pixel)
    takes the most probable component under q instead of popping, and ``pop``
    gives nothing back for it. Cost per tile: 32·CUSHION_WORDS bits, plus at
    most −log2 q(c | x) of one sub-pixel.
    """

    def __init__(self, model: PixelModel):
        if model.components < 2:
            raise ValueError("bits-back needs a mixture pixel model")
        self.model = model
        self.information_bits = 0.0
        """Σ of the net cost of what was pushed (float64 models; the coder's 24-bit probabilities add a little)."""
        self.marginal_bits = 0.0
        """Σ −log2 p(x) under the mixture's marginal: what an exact posterior would cost."""

    def push(self, coder, pixels: np.ndarray) -> None:
        self.push_prepared(coder, self.prepare(pixels))

    def prepare(self, pixels: np.ndarray) -> _PreparedMixtureTile:
        """Every sub-pixel's parameters, prior and posterior, computed in large chunks (order-free), then
        put in pop order."""
        model = self.model
        height, width, num_channels = pixels.shape
        shape = (height, width, num_channels, model.components)
        mean, index, log_weight = np.empty(shape), np.empty(shape, np.int64), np.empty(shape, np.int64)
        for rows, cols, k, context, ref in _contexts(pixels):
            p = model.mixture_params(context, ref, num_channels, k)
            mean[rows, cols, k], index[rows, cols, k], log_weight[rows, cols, k] = p.mean, p.scale_index, p.log_weight
        r, c, k = _decode_order(height, width, num_channels)
        params = MixtureParams(mean[r, c, k], index[r, c, k], log_weight[r, c, k])
        levels = pixels[r, c, k].astype(np.int32)
        prior = model.prior_weights(params)
        scale = model.scales[params.scale_index - model.scale_min]
        batch = (c + WAVEFRONT_SLOPE * r) * num_channels + k  # pop order is sorted by it
        cuts = np.concatenate([[0], np.flatnonzero(np.diff(batch)) + 1, [batch.size]])
        p = prior / prior.sum(axis=1, keepdims=True)
        mass = 2.0 ** -_laplace_bits(levels[:, None], params.mean, scale)
        marginal = float(-np.log2(np.maximum((p * mass).sum(axis=1), 2.0**-24)).sum())
        return _PreparedMixtureTile(levels, params.mean, scale, prior, model.posterior_weights(params, levels),
                                    cuts, marginal)

    def push_prepared(self, coder, tile: _PreparedMixtureTile) -> None:
        self.marginal_bits += tile.marginal_bits
        for _ in range(CUSHION_WORDS):
            push_check(coder, _CUSHION_VALUE)
        self.information_bits += 32 * CUSHION_WORDS
        last = tile.cuts.size - 2
        chosen = np.empty(tile.levels.size, np.int32)
        for b in range(last, -1, -1):
            sel = slice(tile.cuts[b], tile.cuts[b + 1])
            post = tile.posterior[sel]
            c = post.argmax(axis=1).astype(np.int32) if b == last else pop_choices(coder, post)
            at = np.arange(c.size)
            push_grey_levels(coder, tile.levels[sel], tile.mean[sel][at, c], tile.scale[sel][at, c])
            push_choices(coder, c, tile.prior[sel])
            chosen[sel] = c
        at = np.arange(chosen.size)
        mean, scale = tile.mean[at, chosen], tile.scale[at, chosen]
        bits = _laplace_bits(tile.levels, mean, scale) - np.log2(tile.prior[at, chosen] / tile.prior.sum(axis=1))
        given_back = np.log2(tile.posterior[at, chosen] / tile.posterior.sum(axis=1))
        given_back[tile.cuts[last]:] = 0.0  # the first batch pushed borrowed nothing
        self.information_bits += float((bits + given_back).sum())

    def pop(self, coder, height: int, width: int, num_channels: int, floor: int = 0) -> np.ndarray:
        """Pop a tile: returns uint8 (height, width, C). ``floor``: as :meth:`PixelCodec.pop`."""
        buf = padded_tile(None, height, width, num_channels)
        last_step = wavefront_steps(height, width) - 1  # never empty: it holds the bottom-right pixel
        for t, rows, cols in _wavefront(height, width):
            if floor and t % _CHECK_EVERY == 0 and not holds_check(coder, floor):
                raise FormatError("payload too short for the declared image (corrupted, truncated or forged file)")
            for k in range(num_channels):
                self._pop_batch(coder, buf, rows, cols, num_channels, k, last=t == last_step and k == num_channels - 1)
        if any(pop_check(coder) != _CUSHION_VALUE for _ in range(CUSHION_WORDS)):
            raise FormatError("lossless tile does not decode to its own end (corrupted or forged file)")
        return buf[PAD:, PAD:PAD + width].astype(np.uint8)

    def _pop_batch(self, coder, buf: np.ndarray, rows: np.ndarray, cols: np.ndarray, num_channels: int, k: int,
                   last: bool) -> None:
        """One channel of one wavefront step: components, grey levels, components given back (not for the last)."""
        model = self.model
        context, ref = gather_context(buf, rows, cols, k)
        params = model.mixture_params(context, ref, num_channels, k)
        c = pop_choices(coder, model.prior_weights(params))
        at = np.arange(rows.size)
        levels = pop_grey_levels(coder, params.mean[at, c], model.scales[params.scale_index[at, c] - model.scale_min])
        buf[rows + PAD, cols + PAD, k] = levels
        if not last:
            push_choices(coder, c, model.posterior_weights(params, levels))


def pixel_codec(model: PixelModel) -> "PixelCodec | BitsBackPixelCodec":
    """The push/pop codec for a pixel model: bits-back over the component for a mixture, direct otherwise."""
    return BitsBackPixelCodec(model) if model.components > 1 else PixelCodec(model)


def _laplace_bits(x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """−log2 P(x) for the discretized Laplace on 0..255 with the tails on the edge symbols (float64)."""
    def cdf(v):
        z = (v - mean) / scale
        return np.where(z < 0, 0.5 * np.exp(np.minimum(z, 0)), 1 - 0.5 * np.exp(-np.maximum(z, 0)))
    upper = np.where(x >= 255, 1.0, cdf(x + 0.5))
    lower = np.where(x <= 0, 0.0, cdf(x - 0.5))
    return -np.log2(np.maximum(upper - lower, 2.0**-24))


def prepare_image(pixels: np.ndarray, codec: PixelCodec) -> list:
    """Every tile of uint8 (H, W, C) pixels made ready to push, in raster order."""
    height, width, _ = pixels.shape
    with one_blas_thread():
        return [codec.prepare(pixels[top:top + h, left:left + w]) for top, left, h, w in tiles(height, width)]


def push_image(coder, pixels: np.ndarray | list[PreparedTile], codec: PixelCodec,
               progress: Callable[[int], None] | None = None) -> None:
    """Push every tile of uint8 (H, W, C) pixels (or of their :func:`prepare_image`), in raster order."""
    if isinstance(pixels, list):
        for tile in pixels:
            codec.push_prepared(coder, tile)
        return
    height, width, _ = pixels.shape
    with one_blas_thread():
        for top, left, h, w in tiles(height, width):
            codec.push(coder, pixels[top:top + h, left:left + w])
            if progress:
                progress(h * w)


def pop_image(coder, height: int, width: int, num_channels: int, codec: PixelCodec,
              progress: Callable[[int], None] | None = None, floor: int = 0) -> np.ndarray:
    """Pop the tiles :func:`push_image` pushed (last tile first) into uint8 (H, W, C). ``floor``: see PixelCodec.pop."""
    out = np.empty((height, width, num_channels), dtype=np.uint8)
    with one_blas_thread():
        for top, left, h, w in reversed(list(tiles(height, width))):
            out[top:top + h, left:left + w] = codec.pop(coder, h, w, num_channels, floor)
            if progress:
                progress(h * w)
    return out
