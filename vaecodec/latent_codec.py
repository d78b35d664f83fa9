"""Latent codecs: where the bits of the latents are made, in one place per architecture.

Each class owns the push/pop order of its latents on the ANS stack (craystack's
view: a codec is a ``(push, pop)`` pair). The encoder (:mod:`vaecodec.api`),
the decoder, ``benchmarks/speed.py`` and the tests all call these, so the
order is written once. ``pop`` is the exact inverse of ``push``; everything
that decides a coding distribution on the way is computed by the model's
integer-exact programs, identically on both sides.

Stack order, bottom → top (ANS is LIFO: the decoder pops from the top):

* :class:`HyperpriorLatentCodec` — ``y`` (all latents, y_pmfs[scale index]),
  ``ẑ`` (z_pmfs[channel]);
* :class:`CheckerboardLatentCodec` — ``y`` non-anchors, ``y`` anchors, ``ẑ``.
  The decoder pops ẑ, then the anchors with the hyper's parameters, then the
  non-anchors with parameters that see the decoded anchors (two parallel passes).

Typical workflow::

    codec = latent_codec(model)
    latents = codec.analyze(x)                  # encoder only: float analysis
    code = codec.push(coder, latents, quality)  # → LatentCode (ŷ, information bits)
    ...
    y_hat = codec.pop(coder, height, width, quality)   # same ŷ, bit for bit
    pixels = model.synthesize(y_hat)

This module knows nothing of files; :mod:`vaecodec.api` adds the check value
under these and the container around them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import entropy
from .coding_model import CodingModel, HyperParams
from .errors import FormatError

__all__ = ["Latents", "LatentCode", "HyperpriorLatentCodec", "CheckerboardLatentCodec", "latent_codec"]


@dataclass(frozen=True)
class Latents:
    """The encoder's analysis of one image, independent of quality.

    ``y`` float latents, ``z_symbols`` the rounded hyper-latents, ``hyper``
    their exact decoded parameters (shared by every quality tried).
    """

    y: torch.Tensor
    z_symbols: torch.Tensor
    hyper: HyperParams


@dataclass(frozen=True)
class LatentCode:
    """What one ``push`` wrote (or ``pop_code`` read): the decoder's exact ŷ (fixed point), Σ −log2 p of the
    symbols (0 when popped), and the symbols themselves (q, ẑ), which the content check covers."""

    y_hat: torch.Tensor
    information_bits: float
    symbols: tuple = ()


class HyperpriorLatentCodec:
    """Mean-scale hyperprior: all latents in one pass. Stack (bottom → top): y, ẑ."""

    def __init__(self, model: CodingModel):
        self.model = model

    @torch.no_grad()
    def analyze(self, x: torch.Tensor) -> Latents:
        """x (1, 3, H, W) float32 in [0, 1], H and W multiples of 64."""
        y, z_symbols = self.model.analyze(x)
        return Latents(y, z_symbols, self.model.hyper_decode(z_symbols))

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

    def _push_y(self, coder, q: torch.Tensor, params: HyperParams, quality: int, where=None) -> float:
        m = self.model
        j = m.scale_indexes(params, quality)
        sym, idx = (q, j) if where is None else (q[where.expand_as(q)], j[where.expand_as(j)])
        m.y_pmfs.encode(coder, sym.numpy(), idx.numpy())
        return m.y_pmfs.information_bits(sym.numpy(), idx.numpy())

    def _pop_y(self, coder, params: HyperParams, quality: int, out: torch.Tensor, where=None) -> None:
        m = self.model
        j = m.scale_indexes(params, quality)
        if where is None:
            out[...] = torch.from_numpy(m.y_pmfs.decode(coder, j.numpy()).reshape(out.shape))
        else:
            mask = where.expand_as(out)
            out[mask] = torch.from_numpy(m.y_pmfs.decode(coder, j[mask].numpy()))

    @torch.no_grad()
    def push(self, coder, latents: Latents, quality: int) -> LatentCode:
        m, p = self.model, latents.hyper
        q = m.quantize(latents.y, p, quality)
        bits = self._push_y(coder, q, p, quality)
        bits += self._push_z(coder, latents.z_symbols)
        return LatentCode(m.dequantize(q, p, quality), bits, (q.numpy(), latents.z_symbols.numpy()))

    def pop(self, coder, height: int, width: int, quality: int, floor: int = 0) -> torch.Tensor:
        """Exact ŷ of a ``height`` × ``width`` image; ``floor``: :func:`entropy.state_floor` of the
        check value under the latents (0: no early check), so a stack that runs dry is refused
        before the next expensive pass."""
        return self.pop_code(coder, height, width, quality, floor).y_hat

    @torch.no_grad()
    def pop_code(self, coder, height: int, width: int, quality: int, floor: int = 0) -> LatentCode:
        """:meth:`pop`, with the symbols read."""
        m = self.model
        y_shape, z_shape = m.latent_shapes(height, width)
        z = self._pop_z(coder, z_shape, floor)
        p = m.hyper_decode(z)
        q = torch.empty(y_shape, dtype=torch.long)
        self._pop_y(coder, p, quality, q)
        return LatentCode(m.dequantize(q, p, quality), 0.0, (q.numpy(), z.numpy()))


class CheckerboardLatentCodec(HyperpriorLatentCodec):
    """Checkerboard context (two parallel passes). Stack (bottom → top): y non-anchors, y anchors, ẑ.

    The encoder has to know the non-anchors' parameters before it can push
    them, and those depend on the anchors' ŷ: so it computes both passes
    first (exactly as the decoder will) and then pushes in reverse order.
    """

    @torch.no_grad()
    def push(self, coder, latents: Latents, quality: int) -> LatentCode:
        m = self.model
        anchor = m.anchor_mask(latents.y.shape)
        p_a = m.context_params(latents.hyper, None)
        q_a = m.quantize(latents.y, p_a, quality)
        y_hat_a = m.dequantize(q_a, p_a, quality) * anchor
        p_n = m.context_params(latents.hyper, y_hat_a)
        q_n = m.quantize(latents.y, p_n, quality)
        bits = self._push_y(coder, q_n, p_n, quality, ~anchor)
        bits += self._push_y(coder, q_a, p_a, quality, anchor)
        bits += self._push_z(coder, latents.z_symbols)
        y_hat = torch.where(anchor, y_hat_a, m.dequantize(q_n, p_n, quality))
        q = torch.where(anchor.expand_as(q_a), q_a, q_n)
        return LatentCode(y_hat, bits, (q.numpy(), latents.z_symbols.numpy()))

    @torch.no_grad()
    def pop_code(self, coder, height: int, width: int, quality: int, floor: int = 0) -> LatentCode:
        m = self.model
        y_shape, z_shape = m.latent_shapes(height, width)
        anchor = m.anchor_mask(y_shape)
        z = self._pop_z(coder, z_shape, floor)
        hyper = m.hyper_decode(z)
        p_a = m.context_params(hyper, None)
        q = torch.zeros(y_shape, dtype=torch.long)
        self._pop_y(coder, p_a, quality, q, anchor)
        _require_bits(coder, floor)
        y_hat_a = m.dequantize(q, p_a, quality) * anchor
        p_n = m.context_params(hyper, y_hat_a)
        self._pop_y(coder, p_n, quality, q, ~anchor)
        return LatentCode(torch.where(anchor, y_hat_a, m.dequantize(q, p_n, quality)), 0.0, (q.numpy(), z.numpy()))


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
