"""Narrow exact programs for the latent side: 10-bit integers, summed on float32 products.

Why: the networks that turn side information into each latent's mean and
scale (the hyper-synthesis, the checkerboard context, the entropy parameters,
the channel contexts and their parameter networks) run on both sides of the
codec, for every image, and must give the decoder the encoder's numbers bit
for bit. The exact programs of :mod:`vaecodec.fixedpoint` do that with 14-bit
weights and up to 21-bit activations in float64, far more precision than the
rate needs: with these programs `-r5`'s weights code Kodak at −34.4 % BD-rate
against JPEG from files, where the float64 ones give −34.5 % (``benchmarks/kodak.py
--model``). A product
of two 10-bit integers is below 2^18, and float32, with twice float64's
products per cycle, sums such products exactly while every partial sum stays
below 2^24. So these programs compute the same integers on every machine at
about half the cost.

Where the rounding happens (a "point" before every convolution; per channel,
a power-of-two step 2^e, the exponents calibrated on training images at export
and stored in the model file)::

    fixed point (2^-12 units) ─p0─▶ conv [ReLU] ─p1─▶ conv [ReLU] ─p2─▶ … conv ─▶ fixed point (2^-12 units)

* At point i a channel's value v (2^-12 units) becomes the integer
  ``a = clamp(floor(v·2^(-12-e) + ½), ±ACT_TOP)``; after a ReLU the clamp is 0..ACT_TOP.
* A convolution's weights are folded with its input's steps (``w·2^e`` along
  the input channels: exact) and rounded per output channel o with a
  power-of-two step 2^-k_o so that ``|w̃| ≤ 2^(WEIGHT_BITS-1)`` (``frexp``:
  exact), its bias to ``b̃ = round(b·2^k_o)``. Its sums ``S = Σ w̃·a`` are integers.
* The next point's integer is ``floor((S + b̃)·2^(-k_o - e'_o) + ½)`` clamped (the last
  layer's: ``2^(12 - k_o)``, into 2^-12 units, clamped to ±ACT_LIMIT). Every
  scale is a power of two: no multiplier tables, and every number follows
  from the fp16 weights and the exponents by exact float64 operations, so the
  program is built at load and is the same integers everywhere.

How it runs: each convolution as a sum over taps of shifted slices of its
zero-padded, row-major input (an upsampling by its output phases, as
:mod:`vaecodec.fixedpoint` does), the products in float32 in runs of taps and
input channels whose bound (ACT_TOP times the largest Σ|w̃| of one output over
the run, computed at construction) stays below 2^24, the runs joined in
float64; the rescaling in float64 (every intermediate a dyadic number below
2^53: checked per layer). Activations between layers are float32 (±511: exact).
Where float32 products are not IEEE ones (a user lowered them to bfloat16 or
TF32: :func:`vaecodec.hardware.float32_products_exact`, checked at every run),
the products run in float64 instead: the same integers.

This module knows nothing of files, bytes or entropy coding.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .fixedpoint import ACT_FRAC_BITS, ACT_LIMIT, _flat_padded, checkerboard_inputs, checkerboard_weights
from .hardware import float32_products_exact
from .int8_synthesis import _phase_taps

__all__ = ["ACT_TOP", "WEIGHT_BITS", "NarrowProgram", "exponents_for_peaks"]

ACT_TOP = 511
"""Largest |integer| of an activation at a point (10 bits, symmetric)."""

WEIGHT_BITS = 10
"""Weights are rounded to |w̃| ≤ 2^(WEIGHT_BITS−1) per output channel."""

EXPONENT_LIMIT = 40
"""Exponents of the activation steps lie within ±EXPONENT_LIMIT (a model file's tables are checked)."""

FLOAT32_EXACT_LIMIT = 2.0**24
"""Integers below this are exact in float32, and so is every sum that stays below it."""

_FLOAT64_EXACT_LIMIT = 2.0**52


def _pow2(k: torch.Tensor) -> torch.Tensor:
    """2^k (float64) for integer exponents ``k``: C's ldexp, exact."""
    return torch.from_numpy(np.ldexp(np.ones(k.shape), k.numpy().astype(np.int32)))


def exponents_for_peaks(peaks: torch.Tensor, headroom: float = 1.0) -> torch.Tensor:
    """Per channel, the exponent e of the step 2^e that puts ``peaks·2^headroom`` (the largest |value| seen in
    calibration, real units) just inside ±ACT_TOP: ``e = −floor(log2(ACT_TOP / (peak·2^headroom)))``; silent
    channels get the smallest exponent."""
    p = peaks.double() * 2.0**headroom
    e = -torch.floor(torch.log2(ACT_TOP / p.clamp_min(2.0**-EXPONENT_LIMIT)))
    return e.clamp_(-EXPONENT_LIMIT, EXPONENT_LIMIT).long()


def _runs(weights: torch.Tensor, top: float, nonnegative: bool = False) -> list[tuple[int, int]]:
    """Consecutive ranges [k0, k1) of the columns of ``weights`` (cout, K), float64 integers, whose products
    with inputs |x| ≤ ``top`` sum below 2^24 for every output, whatever the order and grouping of the
    additions: the float32 runs. With ``nonnegative`` inputs (after a ReLU) a partial sum lies between
    ``top`` times its negative weights' sum and times its positive ones', so a run's bound is the larger
    of the two, not their sum: about half as many runs."""
    if nonnegative:
        sums = (weights.clamp_min(0), -weights.clamp_max(0))
    else:
        sums = (weights.abs(),)
    cums = [torch.cat([weights.new_zeros(weights.shape[0], 1), v.cumsum(1)], 1) for v in sums]
    runs, start, count = [], 0, weights.shape[1]
    while start < count:
        # the bound of [start, end) for every end, non-decreasing in the end
        reach = torch.stack([(cum[:, start + 1:] - cum[:, start:start + 1]).amax(0) for cum in cums]).amax(0) * top
        fits = int((reach < FLOAT32_EXACT_LIMIT).sum())
        if fits == 0:
            raise ValueError("a 10-bit weight times a 10-bit activation passes 2^24; weights out of range")
        runs.append((start, start + fits))
        start += fits
    return runs


class _Conv:
    """One convolution of a :class:`NarrowProgram` with its rounding to the next point (see module docstring).

    ``weight`` is the float layer's (Conv2d (out, in, k, k): stride 1, odd k, 'same'; or ConvTranspose2d
    (in, out, k, k) that upsamples exactly by its stride), ``in_exponents`` its input's, ``out_exponents`` the
    next point's (None: the program's output, in 2^-12 units), ``relu``: a ReLU follows.
    """

    def __init__(self, layer: nn.Conv2d | nn.ConvTranspose2d, in_exponents: torch.Tensor,
                 out_exponents: torch.Tensor | None, relu: bool, nonnegative_input: bool = False):
        transposed = isinstance(layer, nn.ConvTranspose2d)
        w = layer.weight.detach().double()
        w = w.transpose(0, 1) if transposed else w  # (out, in, k, k) from here
        cout, cin, k, _ = w.shape
        s, p = layer.stride[0], layer.padding[0]
        if in_exponents.shape != (cin,) or (out_exponents is not None and out_exponents.shape != (cout,)):
            raise ValueError("10-bit program exponents do not match the layer's channels")
        if (layer.groups != 1 or any(d != 1 for d in layer.dilation) or layer.padding_mode != "zeros"
                or len(set(layer.kernel_size)) != 1 or len(set(layer.stride)) != 1 or len(set(layer.padding)) != 1
                or (transposed and len(set(layer.output_padding)) != 1)):
            raise ValueError("10-bit programs take plain square convolutions (no groups, dilation or other padding)")
        folded = w * _pow2(in_exponents)[None, :, None, None]
        peak = folded.abs().amax(dim=(1, 2, 3))
        _, e = torch.frexp(peak)  # peak = mant·2^e, mant in [0.5, 1): peak·2^(9 − e) in [256, 512)
        k_out = torch.where(peak > 0, (WEIGHT_BITS - 1) - e.long(), torch.zeros_like(e.long()))
        self.weight = torch.round(folded * _pow2(k_out)[:, None, None, None])
        bias = layer.bias.detach().double() if layer.bias is not None else torch.zeros(cout, dtype=torch.float64)
        self.bias = torch.round(bias * _pow2(k_out))
        if out_exponents is None:
            power, self.low, self.high = ACT_FRAC_BITS - k_out, -float(ACT_LIMIT), float(ACT_LIMIT)
            self.store = torch.float64
        else:
            power, self.low, self.high = -k_out - out_exponents.long(), 0.0 if relu else -float(ACT_TOP), float(ACT_TOP)
            self.store = torch.float32
        self.scale = _pow2(power)[:, None]
        self.offset = self.bias[:, None] * self.scale + 0.5  # floor((S + b̃)·2^p + ½) = floor(S·2^p + offset)
        total = self.weight.abs().sum((1, 2, 3)) * ACT_TOP + self.bias.abs()
        if bool((total * _pow2((power + 1).clamp_min(0))
                 >= _FLOAT64_EXACT_LIMIT).any()):
            raise ValueError("a 10-bit layer's sums could pass float64's exact range; weights out of range")
        self.cout, self.cin, self.k, self.stride, self.transposed = cout, cin, k, s, transposed
        if transposed:
            if k + layer.output_padding[0] - 2 * p != s:
                raise ValueError("10-bit transposed convolutions must upsample exactly by their stride")
            taps = _phase_taps(k, s, p)
            # ConvTranspose: output s·m + a sums inputs m + d with kernel index k = a + p − s·d; as a
            # correlation per phase, the weight at that kernel index (transposed convolutions do not flip).
            phases = [(py, px, [(dy, dx) for _, dy in rows for _, dx in cols],
                       [self.weight[:, :, ky, kx] for ky, _ in rows for kx, _ in cols])
                      for py, rows in enumerate(taps) for px, cols in enumerate(taps)]
            offsets = [d for phase in taps for _, d in phase]
            self.before, self.after = -min(offsets), max(offsets)
        else:
            if s != 1 or k % 2 == 0 or p != k // 2:
                raise ValueError("10-bit convolutions must be stride-1 'same' with an odd kernel")
            phases = [(0, 0, [(ky - p, kx - p) for ky in range(k) for kx in range(k)],
                       [self.weight[:, :, ky, kx] for ky in range(k) for kx in range(k)])]
            self.before = self.after = p
        # Each phase's taps side by side (tap-major), cut into float32 runs; a run is a list of pieces
        # (tap, first channel, last channel + 1, their weights in float32).
        self.phases = []
        for py, px, offsets, weights in phases:
            runs = []
            for k0, k1 in _runs(torch.cat(weights, 1), ACT_TOP, nonnegative_input):
                pieces = []
                for t in range(k0 // cin, (k1 - 1) // cin + 1):
                    c0, c1 = max(k0 - t * cin, 0), min(k1 - t * cin, cin)
                    pieces.append((t, c0, c1, weights[t][:, c0:c1].float().contiguous()))
                runs.append(pieces)
            self.phases.append((py, px, offsets, runs))
        self._checkerboard = {}

    def requantize(self, sums: torch.Tensor) -> torch.Tensor:
        """Sums (cout, n), float32 or float64 integers → the next point's integers, float64."""
        out = torch.addcmul(self.offset, sums, self.scale)
        return out.floor_().clamp_(self.low, self.high)

    def __call__(self, a: torch.Tensor, f64: bool = False) -> torch.Tensor:
        """(cin, h, w) float32 integers within ±ACT_TOP → (cout, s·h, s·w) integers as ``self.store``;
        ``f64``: the products in float64 (where float32 products are not IEEE ones here)."""
        cin, h, w = a.shape
        s, before, after = self.stride, self.before, self.after
        # zero-padded, row-major, with spare zeros at the end: tap (dy, dx) reads one contiguous slice
        flat = _flat_padded(a[None], before, after, torch.float64 if f64 else torch.float32)[0]
        wp = w + before + after
        length = h * wp
        out = a.new_empty(self.cout, h, s, w, s, dtype=self.store)
        for py, px, offsets, runs in self.phases:
            total = None
            for pieces in runs:
                acc = None
                for t, c0, c1, weight in pieces:
                    dy, dx = offsets[t]
                    start = (before + dy) * wp + before + dx
                    x, weight = flat[c0:c1, start:start + length], weight.double() if f64 else weight
                    acc = torch.mm(weight, x) if acc is None else acc.addmm_(weight, x)
                total = acc if len(runs) == 1 else (acc.double() if total is None else total.add_(acc))
            out[:, :, py, :, px] = self.requantize(total).view(self.cout, h, wp)[:, :, :w]
        return out.view(self.cout, s * h, s * w)

    def at_checkerboard(self, a: torch.Tensor, positions: torch.Tensor, same_colour: bool, f64: bool = False) -> torch.Tensor:
        """The layer at ``positions`` of one colour only, on an input zero on the other colour (or, with
        ``same_colour``, read at its own colour): as :func:`vaecodec.fixedpoint.conv_of_checkerboard_at`,
        from ``a`` (1, cin, h, w) float32 integers; (cout, len(positions)) float64."""
        parity = 0 if same_colour else 1
        cached = self._checkerboard.get(parity)
        if cached is None:
            taps, weights = checkerboard_weights(self.weight, parity)
            runs = [(k0, k1, weights[:, k0:k1].float().contiguous()) for k0, k1 in _runs(weights, ACT_TOP)]
            cached = self._checkerboard[parity] = (taps, runs)
        taps, runs = cached
        inputs, wanted = checkerboard_inputs(a, positions, self.k, taps, torch.float64 if f64 else torch.float32)
        total = None
        for k0, k1, weight in runs:
            acc = torch.mm(weight.double() if f64 else weight, inputs[k0:k1])
            total = acc if len(runs) == 1 else (acc.double() if total is None else total.add_(acc))
        if wanted is not None:
            total = total[:, wanted]
        return self.requantize(total)


class NarrowProgram:
    """A stack of convolutions and ReLUs as a 10-bit integer program (see module docstring): ``run`` maps
    fixed-point integers (float64, 2^-12 units) to fixed-point integers, as
    :meth:`vaecodec.fixedpoint.FixedPointProgram.run` does, so the codec's tiling and passes are unchanged.

    Build it with :meth:`from_sequential` from the float layers (fp16 weights) and each convolution's
    input exponents (a model file's tables; :func:`exponents_for_peaks` at export).
    """

    def __init__(self, convs: list[_Conv], in_exponents: torch.Tensor):
        self.convs = convs
        # floor(v·2^(-12-e) + ½): v < 2^21 and the scale a power of two, exact in float64.
        self._input_scale = _pow2(-ACT_FRAC_BITS - in_exponents.long())[:, None, None]

    @classmethod
    def from_sequential(cls, seq: nn.Sequential, exponents: list[torch.Tensor]) -> "NarrowProgram":
        """``exponents[i]``: the input exponents (per channel) of the i-th convolution of ``seq``."""
        convs = [(i, m) for i, m in enumerate(seq) if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        if len(exponents) != len(convs):
            raise ValueError("10-bit program exponents do not match the network")
        for m in seq:
            if not isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.ReLU)):
                raise TypeError(f"no 10-bit form for {type(m).__name__}")
        if not isinstance(seq[0], (nn.Conv2d, nn.ConvTranspose2d)) or not isinstance(seq[-1], (nn.Conv2d, nn.ConvTranspose2d)):
            raise TypeError("a 10-bit program starts and ends with a convolution")
        for e in exponents:
            if e.dim() != 1 or bool(((e < -EXPONENT_LIMIT) | (e > EXPONENT_LIMIT)).any()):
                raise ValueError("10-bit program exponents out of range")
        layers, relu = [], False
        for n, (i, m) in enumerate(convs):
            follows = i + 1 < len(seq) and isinstance(seq[i + 1], nn.ReLU)
            after = exponents[n + 1] if n + 1 < len(convs) else None
            layers.append(_Conv(m, exponents[n].long(), after, follows, nonnegative_input=relu))
            relu = follows
        return cls(layers, exponents[0])

    @property
    def out_channels(self) -> int:
        return self.convs[-1].cout

    def quantize_input(self, a: torch.Tensor) -> torch.Tensor:
        """Fixed-point (n, c, h, w) float64 → point 0's integers, float32."""
        if a.dtype != torch.float64:
            raise TypeError("10-bit programs take float64 tensors holding fixed-point integers")
        x = a * self._input_scale
        return x.add_(0.5).floor_().clamp_(-ACT_TOP, ACT_TOP).float()

    @torch.no_grad()
    def run(self, a: torch.Tensor) -> torch.Tensor:
        x = self.quantize_input(a)
        f64 = not float32_products_exact()
        outs = []
        for i in range(x.shape[0]):
            v = x[i]
            for conv in self.convs:
                v = conv(v, f64)
            outs.append(v)
        return torch.stack(outs)

    @torch.no_grad()
    def at_checkerboard(self, a: torch.Tensor, positions: torch.Tensor, same_colour: bool = False) -> torch.Tensor:
        """A one-convolution program at some positions of one colour of the checkerboard only (see
        :func:`vaecodec.fixedpoint.conv_of_checkerboard_at`): (1, cout, len(positions)) float64."""
        if len(self.convs) != 1 or self.convs[0].transposed:
            raise ValueError("at_checkerboard takes a program of one stride-1 convolution")
        if a.shape[0] != 1:
            raise ValueError("at_checkerboard takes one image")
        if len(positions) == 0:
            return a.new_empty(1, self.out_channels, 0)
        f64 = not float32_products_exact()
        return self.convs[0].at_checkerboard(self.quantize_input(a), positions, same_colour, f64)[None]

    def bound_report(self) -> list[int]:
        """Float32 runs per layer (the most over its phases): how often sums are joined in float64."""
        return [max(len(runs) for *_, runs in conv.phases) for conv in self.convs]
