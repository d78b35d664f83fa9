"""Narrow exact programs: 10- to 12-bit integers, summed on float32 products.

Why: the networks that turn side information into each latent's mean and
scale (the hyper-synthesis, the checkerboard context, the entropy parameters,
the channel contexts and their parameter networks) run on both sides of the
codec, for every image, and must give the decoder the encoder's numbers bit
for bit; the synthesis transform must give every decoder the same pixels. The
exact programs of :mod:`vaecodec.fixedpoint` do that with 14-bit weights and
up to 21-bit activations in float64, far more precision than the rate or the
pixels need: with 10-bit latent programs `-r5`'s weights code Kodak at −34.4 %
BD-rate against JPEG from files, where the float64 ones give −34.5 %, and with
the 11-bit synthesis too at −34.2 % (MS-SSIM +2.28 % against the 10-bit latents
alone: ``benchmarks/kodak.py``, ``benchmarks/compare_models.py``). A product of two 10-bit integers is
below 2^18 (two 11-bit ones, 2^20), and float32, with twice float64's products
per cycle, sums such products exactly while every partial sum stays below
2^24. So these programs compute the same integers on every machine at about
half the cost.

Where the rounding happens (a "point" before every convolution and inverse
GDN; per channel, a power-of-two step 2^e, the exponents calibrated on
training images at export and stored in the model file; B = 10 or 11 bits,
``ACT_TOP`` = 2^(B−1) − 1, or with 11-bit weights 2^11 − 1 for 12-bit activations)::

    fixed point (2^-12 units) ─p0─▶ conv [ReLU] ─p1─▶ conv [iGDN ─p2─▶] … conv ─▶ fixed point (2^-12 units)

* At point i a channel's value v (2^-12 units) becomes the integer
  ``a = clamp(floor(v·2^(-12-e) + ½), ±ACT_TOP)``; after a ReLU the clamp is 0..ACT_TOP.
* A convolution's weights are folded with its input's steps (``w·2^e`` along
  the input channels: exact) and rounded per output channel o with a
  power-of-two step 2^-k_o so that ``|w̃| ≤ 2^(B-1)`` (``frexp``:
  exact), its bias to ``b̃ = round(b·2^k_o)``. Its sums ``S = Σ w̃·a`` are integers.
* The next point's integer is ``floor((S + b̃)·2^(-k_o - e'_o) + ½)`` clamped (the last
  layer's: ``2^(12 - k_o)``, into 2^-12 units, clamped to ±ACT_LIMIT). Every
  scale is a power of two: no multiplier tables, and every number follows
  from the fp16 weights and the exponents by exact float64 operations, so the
  program is built at load and is the same integers everywhere.
* An inverse GDN ``v·(β + Γ|v|)`` (right after a convolution) folds Γ with its
  input's steps and rounds it per row the same way (Γ̃ ≥ 0, β̃ = round(β·2^k_o)), except that
  k_o never puts β̃ past 2^(2B−2) (a row whose Γ is tiny beside β), and a row of zeros
  takes k_o from β (``β·2^k_o`` in [2^(B−2), 2^(B−1))):
  its norm ``N = β̃ + Σ Γ̃·|a|`` is an integer, and the next point's integer is
  ``floor(a·N·2^(e_o - k_o - e'_o) + ½)`` clamped: one rounding, as wide as float64 holds.

How it runs: each convolution as a sum over taps of shifted slices of its
zero-padded, row-major input (an upsampling by its output phases, as
:mod:`vaecodec.fixedpoint` does), band by band of output rows (the inverse GDN
after it applied while the band is in cache), the products in float32 in runs of taps and
input channels whose bound (the largest Σ|w̃|·|a| of one output over the run, |a| at ACT_TOP
at construction and, where that takes more than one run, at each call's own per-channel
peaks) stays below 2^24, the runs joined in float64; a transposed convolution with few
outputs (the synthesis' last, 3) as one product into columns per band of input rows,
added into place by col2im in float64. Between points the rescaling rides in the float32
products (weights times 2^p, the bias and rounding half as one more column: all integer
multiples of 2^p); else, and for a program's output, it runs in float64 (every
intermediate a dyadic number below 2^53: checked per layer). Activations between layers are float32 (±ACT_TOP: exact).
Where float32 products are not IEEE ones (a user lowered them to bfloat16 or
TF32: :func:`vaecodec.hardware.float32_products_exact`, checked at every run),
the products run in float64 instead: the same integers.

This module knows nothing of files, bytes or entropy coding.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import torch.nn.functional as F

from .fixedpoint import ACT_FRAC_BITS, ACT_LIMIT, _flat_padded, checkerboard_inputs, checkerboard_weights
from .hardware import float32_products_exact
from .int8_synthesis import _phase_taps
from .model import SimplifiedGDN

__all__ = ["ACT_TOP", "SYNTHESIS_BITS", "WEIGHT_BITS", "NarrowProgram", "exponents_for_peaks"]

WEIGHT_BITS = 10
"""The latent programs' width B: weights are rounded to |w̃| ≤ 2^(B−1) per output channel, activations to
±(2^(B−1) − 1)."""

ACT_TOP = 2 ** (WEIGHT_BITS - 1) - 1
"""Largest |integer| of an activation at a point of a latent program (10 bits, symmetric)."""

SYNTHESIS_BITS = 11
"""The synthesis program's width: 11/11 bits lost within 0.02 dB where 10/10 lost 0.5 dB at quality 100 in
simulation (``benchmarks/results/synthesis-precision-folded.json``); from files −0.005 to −0.029 dB and +0.41 %
BD-rate (``benchmarks/results/model-comparison-r5s.json``). A product stays below 2^20."""

BITS = (WEIGHT_BITS, SYNTHESIS_BITS)
"""The weight widths a program may have."""

ACT_BITS = (WEIGHT_BITS, SYNTHESIS_BITS, SYNTHESIS_BITS + 1)
"""The activation widths a program may have: as its weights', or 12 with 11-bit weights (products below 2^21)."""

EXPONENT_LIMIT = 40
"""Exponents of the activation steps lie within ±EXPONENT_LIMIT (a model file's tables are checked)."""

FLOAT32_EXACT_LIMIT = 2.0**24
"""Integers below this are exact in float32, and so is every sum that stays below it."""

_FLOAT64_EXACT_LIMIT = 2.0**52

_POWER_LIMIT = 50
"""Rescaling powers of two 2^p stay above 2^-50, so ½ and the sums (below 2^52 units of 2^p) meet in float64 exactly."""

_OFFSET_LIMIT = 2.0**22
"""A bias (with its rounding half) joins a layer's float32 products only below this many units: it leaves the
products ¾ of float32's exact range."""


def _pow2(k: torch.Tensor) -> torch.Tensor:
    """2^k (float64) for integer exponents ``k``: C's ldexp, exact."""
    return torch.from_numpy(np.ldexp(np.ones(k.shape), k.numpy().astype(np.int32)))


def _top(bits: int, widths: tuple[int, ...] = ACT_BITS) -> int:
    """2^(bits−1) − 1, for a width the programs take."""
    if bits not in widths:
        raise ValueError(f"narrow programs are {' or '.join(map(str, widths))} bits wide, not {bits}")
    return 2 ** (bits - 1) - 1


def _widths(bits: int, act_bits: int | None) -> int:
    """The activations' top for weights of ``bits`` and activations of ``act_bits`` (None: ``bits``)."""
    _top(bits, BITS)
    act_bits = bits if act_bits is None else act_bits
    if act_bits not in (bits, bits + 1) or act_bits not in ACT_BITS:
        raise ValueError(f"narrow programs with {bits}-bit weights take {bits}- or {bits + 1}-bit activations, "
                         f"not {act_bits}")
    return _top(act_bits)


def exponents_for_peaks(peaks: torch.Tensor, headroom: float = 1.0, bits: int = WEIGHT_BITS) -> torch.Tensor:
    """Per channel, the exponent e of the step 2^e that puts ``peaks·2^headroom`` (the largest |value| seen in
    calibration, real units) just inside ±top (2^(bits−1) − 1): ``e = −floor(log2(top / (peak·2^headroom)))``;
    silent channels get the smallest exponent."""
    p = peaks.double() * 2.0**headroom
    e = -torch.floor(torch.log2(_top(bits) / p.clamp_min(2.0**-EXPONENT_LIMIT)))
    return e.clamp_(-EXPONENT_LIMIT, EXPONENT_LIMIT).long()


def _runs(weights: torch.Tensor, top: float | torch.Tensor, nonnegative: bool = False) -> list[tuple[int, int]]:
    """Consecutive ranges [k0, k1) of the columns of ``weights`` (cout, K), float64 integers, whose products
    with inputs |x| ≤ ``top`` (one bound for every column, or a (K,) tensor of integers: one per column)
    sum below 2^24 for every output, whatever the order and grouping of the additions: the float32 runs.
    With ``nonnegative`` inputs (after a ReLU) a partial sum lies between its negative weights' products'
    sum and its positive ones', so a run's bound is the larger of the two, not their sum: about half as
    many runs. (Every product and sum here is an integer below 2^53: exact.)"""
    scaled = weights * (top[None, :] if isinstance(top, torch.Tensor) else float(top))
    if nonnegative:
        sums = (scaled.clamp_min(0), -scaled.clamp_max(0))
    else:
        sums = (scaled.abs(),)
    cums = [torch.cat([weights.new_zeros(weights.shape[0], 1), v.cumsum(1)], 1) for v in sums]
    runs, start, count = [], 0, weights.shape[1]
    while start < count:
        # the bound of [start, end) for every end, non-decreasing in the end
        reach = torch.stack([(cum[:, start + 1:] - cum[:, start:start + 1]).amax(0) for cum in cums]).amax(0)
        fits = int((reach < FLOAT32_EXACT_LIMIT).sum())
        if fits == 0:
            raise ValueError("a narrow program's weight times an activation passes 2^24; weights out of range")
        runs.append((start, start + fits))
        start += fits
    return runs


def _pieces(runs: list[tuple[int, int]], taps: list[torch.Tensor], cin: int, lead: int = 0) -> list[tuple[list, bool]]:
    """Runs over a phase's columns as (pieces, whether the run holds the offset): the first ``lead`` columns are
    the offset's (see :class:`_Conv`), then the taps side by side (tap-major); a piece is (tap, first channel,
    last channel + 1, those weights: a view of the tap's (cout, cin) float32 ones)."""
    out = []
    for k0, k1 in runs:
        pieces, a, b = [], max(k0 - lead, 0), k1 - lead
        if b > a:
            for t in range(a // cin, (b - 1) // cin + 1):
                c0, c1 = max(a - t * cin, 0), min(b - t * cin, cin)
                pieces.append((t, c0, c1, taps[t][:, c0:c1]))
        out.append((pieces, k0 < lead))
    return out


def _joined(total: torch.Tensor | None, acc: torch.Tensor) -> torch.Tensor:
    """Float32 runs' sums joined in float64 (integers below 2^53: exact in any order): the first run's
    converted, each next one added in place."""
    return acc.double() if total is None else total.add_(acc)


BAND_POSITIONS = 2048
"""Positions (row-major, on the padded width) per band of a layer's output: a band's float32 accumulator
(~0.5 MB at 64 channels) stays in cache through its runs' joins, its rounding and an inverse GDN after it."""

COLUMN_POSITIONS = 4096
"""Input positions per band of a thin transposed convolution (its columns, outputs × k² per position)."""

COLUMNS_FORM_OUTPUTS = 4
"""A transposed convolution with at most this many outputs runs by columns: by phases each product would be
a few rows thin."""


class _InverseGDN:
    """The inverse GDN ``v·(β + Γ|v|)`` right after a convolution of a narrow program, with its rounding to
    the next point (see module docstring): ``in_exponents`` its input's (the convolution's output point),
    ``out_exponents`` the next point's.

    The rescaling's power of two 2^p is folded into Γ̃ and β̃ (exact): the products give N·2^p, every term an
    integer multiple of 2^p, so float32 sums it exactly while it stays below 2^24 of them (β̃ a column of its
    own, with input 1); then ``floor(v·N·2^p + ½)`` in float64 (below 2^52: checked).
    """

    def __init__(self, layer: SimplifiedGDN, in_exponents: torch.Tensor, out_exponents: torch.Tensor, bits: int,
                 act_bits: int | None = None):
        beta, gamma = (t.detach().double() for t in layer.effective_params())
        c = beta.numel()
        if in_exponents.shape != (c,) or out_exponents.shape != (c,) or gamma.shape != (c, c):
            raise ValueError("narrow program exponents do not match the inverse GDN's channels")
        self.top = _widths(bits, act_bits)
        folded = gamma * _pow2(in_exponents)[None, :]  # Γ ≥ 0, (out, in)
        peak = folded.amax(1)
        # A row's step puts its largest Γ at 2^(B−1) (as a convolution's weights), unless that would put β̃
        # past 2^(2B−2) (a row whose Γ is tiny beside β); a row of zeros (its norm is β alone) puts β̃ in
        # [2^(B−2), 2^(B−1)).
        k_beta = (bits - 1) - torch.frexp(beta)[1].long()
        k_gamma = (bits - 1) - torch.frexp(peak)[1].long()
        k_out = torch.where(peak > 0, torch.minimum(k_gamma, k_beta + (bits - 1)), k_beta)
        self.gamma = torch.round(folded * _pow2(k_out)[:, None])
        self.beta = torch.round(beta * _pow2(k_out))[:, None]  # below 2^(2B−2) ≤ 2^20
        power = in_exponents.long() - k_out - out_exponents.long()
        norm = self.gamma.sum(1) * self.top + self.beta[:, 0]
        if bool((norm * self.top * _pow2((power + 1).clamp_min(0)) >= _FLOAT64_EXACT_LIMIT).any()) \
                or bool((power < -_POWER_LIMIT).any()) or float(self.beta.max()) >= _OFFSET_LIMIT:
            raise ValueError("an inverse GDN's products could pass float64's exact range; weights out of range")
        self.scale = scale = _pow2(power)[:, None]
        # β̃ a column of the first run, its input 1 (below 2^20: the run holds it and Γ̃'s first columns).
        columns = torch.cat([self.beta, self.gamma], 1)
        tops = torch.cat([torch.ones(1, dtype=torch.float64), torch.full((c,), float(self.top), dtype=torch.float64)])
        self.runs = []
        for k0, k1 in _runs(columns, tops, nonnegative=True):
            c0, c1 = max(k0 - 1, 0), k1 - 1
            bias = (self.beta * scale).float() if k0 == 0 else None
            self.runs.append((bias, c0, c1, (self.gamma[:, c0:c1] * scale).float().contiguous()))

    def __call__(self, v: torch.Tensor, f64: bool = False) -> torch.Tensor:
        """``v`` (c, n) float32 or float64 integers within ±ACT_TOP → the next point's integers, float64."""
        magnitude = v.abs().to(torch.float64 if f64 else torch.float32)
        total = None
        for bias, c0, c1, gamma in self.runs:
            gamma = gamma.double() if f64 else gamma
            if bias is not None:
                acc = torch.addmm(bias.double() if f64 else bias, gamma, magnitude[c0:c1])
            else:
                acc = torch.mm(gamma, magnitude[c0:c1])
            total = _joined(total, acc)
        # N·2^p (exact) times v, plus ½, in float64: exact below 2^52 (checked at construction).
        return total.mul_(v).add_(0.5).floor_().clamp_(-self.top, self.top)


class _Conv:
    """One convolution of a :class:`NarrowProgram` with its rounding to the next point (see module docstring).

    ``weight`` is the float layer's (Conv2d (out, in, k, k): stride 1, odd k, 'same'; or ConvTranspose2d
    (in, out, k, k) that upsamples exactly by its stride), ``in_exponents`` its input's, ``out_exponents`` the
    next point's (None: the program's output, in 2^-12 units), ``relu``: a ReLU follows; ``norm``: an inverse
    GDN follows (``out_exponents`` are then its input's), applied band by band.
    """

    def __init__(self, layer: nn.Conv2d | nn.ConvTranspose2d, in_exponents: torch.Tensor,
                 out_exponents: torch.Tensor | None, relu: bool, nonnegative_input: bool = False,
                 bits: int = WEIGHT_BITS, norm: _InverseGDN | None = None, act_bits: int | None = None):
        transposed = isinstance(layer, nn.ConvTranspose2d)
        w = layer.weight.detach().double()
        w = w.transpose(0, 1) if transposed else w  # (out, in, k, k) from here
        cout, cin, k, _ = w.shape
        s, p = layer.stride[0], layer.padding[0]
        self.top = top = _widths(bits, act_bits)
        if in_exponents.shape != (cin,) or (out_exponents is not None and out_exponents.shape != (cout,)):
            raise ValueError("narrow program exponents do not match the layer's channels")
        if (layer.groups != 1 or any(d != 1 for d in layer.dilation) or layer.padding_mode != "zeros"
                or len(set(layer.kernel_size)) != 1 or len(set(layer.stride)) != 1 or len(set(layer.padding)) != 1
                or (transposed and len(set(layer.output_padding)) != 1)):
            raise ValueError("narrow programs take plain square convolutions (no groups, dilation or other padding)")
        if norm is not None and (out_exponents is None or relu):
            raise ValueError("an inverse GDN follows a convolution inside a narrow program, without a ReLU")
        folded = w * _pow2(in_exponents)[None, :, None, None]
        peak = folded.abs().amax(dim=(1, 2, 3))
        _, e = torch.frexp(peak)  # peak = mant·2^e, mant in [0.5, 1): peak·2^(B − 1 − e) in [2^(B−2), 2^(B−1))
        k_out = torch.where(peak > 0, (bits - 1) - e.long(), torch.zeros_like(e.long()))
        self.weight = torch.round(folded * _pow2(k_out)[:, None, None, None])
        bias = layer.bias.detach().double() if layer.bias is not None else torch.zeros(cout, dtype=torch.float64)
        self.bias = torch.round(bias * _pow2(k_out))
        if out_exponents is None:
            power, self.low, self.high = ACT_FRAC_BITS - k_out, -float(ACT_LIMIT), float(ACT_LIMIT)
            self.store = torch.float64
        else:
            power, self.low, self.high = -k_out - out_exponents.long(), 0.0 if relu else -float(top), float(top)
            self.store = torch.float32
        self.norm = norm
        self.scale = _pow2(power)[:, None]
        self.offset = self.bias[:, None] * self.scale + 0.5  # floor((S + b̃)·2^p + ½) = floor(S·2^p + offset)
        total = self.weight.abs().sum((1, 2, 3)) * top + self.bias.abs()
        if bool((total * _pow2((power + 1).clamp_min(0)) >= _FLOAT64_EXACT_LIMIT).any()) \
                or bool((power < -_POWER_LIMIT).any()):
            raise ValueError("a narrow layer's sums could pass float64's exact range; weights out of range")
        self.cout, self.cin, self.k, self.stride, self.transposed, self.padding = cout, cin, k, s, transposed, p
        self.columns = None
        if transposed:
            if k + layer.output_padding[0] - 2 * p != s:
                raise ValueError("narrow transposed convolutions must upsample exactly by their stride")
            if cout <= COLUMNS_FORM_OUTPUTS and norm is None:
                # (out·k², in) rows in col2im's order (channel, ky, kx): a transposed convolution scatters input
                # (i, j) times weight (ky, kx) onto output (s·i + ky − p, s·j + kx − p), no flip.
                columns = self.weight.permute(0, 2, 3, 1).reshape(cout * k * k, cin)
                self.columns = [(c0, c1, columns[:, c0:c1].float().contiguous())
                                for c0, c1 in _runs(columns, top, nonnegative_input)]
                self.phases, self.fused, self.dynamic = [], False, False
                self._checkerboard = {}
                return
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
                raise ValueError("narrow convolutions must be stride-1 'same' with an odd kernel")
            phases = [(0, 0, [(ky - p, kx - p) for ky in range(k) for kx in range(k)],
                       [self.weight[:, :, ky, kx] for ky in range(k) for kx in range(k)])]
            self.before = self.after = p
        # Each phase's taps side by side (tap-major), cut into float32 runs at this layer's activation bound
        # ``top`` (ACT_TOP for the latent programs, 2^(bits−1) − 1 for the synthesis). Where that
        # takes more than one run, a call cuts them again at its input's own largest |value| per channel
        # (runs are a way of summing, not part of the integers: any cut whose bound holds is exact).
        # Between points (2^p ≤ ½) the rescaling is folded into the products: w̃·2^p and the offset
        # b̃·2^p + ½ are integer multiples of 2^p, so a run's float32 sum is exact below 2^24 of them, the
        # offset a column of its own with input 1 (first in the first run); one run's sum is then floored
        # and clamped in float32 as it stands.
        self.fused = out_exponents is not None and bool((power <= -1).all()) \
            and float((self.bias.abs() + _pow2((-1 - power).clamp_min(0))).max()) < _OFFSET_LIMIT
        self.nonnegative_input = nonnegative_input
        self.lead = 1 if self.fused else 0
        if self.fused:
            self.offset_column = (self.bias + _pow2(-1 - power))[:, None]  # the offset in units of 2^p
            self.offset32 = self.offset.float()
        self.phases = []
        for py, px, offsets, weights in phases:
            cat = torch.cat(([self.offset_column] if self.fused else []) + weights, 1)
            taps = [(t * self.scale if self.fused else t).float().contiguous() for t in weights]
            tops = self._tops(torch.full((cin,), float(top), dtype=torch.float64), len(taps))
            self.phases.append((py, px, offsets, taps, cat, _pieces(_runs(cat, tops, nonnegative_input), taps, cin,
                                                                    self.lead)))
        self.dynamic = any(len(phase[-1]) > 1 for phase in self.phases)
        self._checkerboard = {}

    def _tops(self, peaks: torch.Tensor, taps: int) -> torch.Tensor:
        """Per column of a phase (the offset's, then the taps' side by side) its input's bound."""
        tops = peaks.repeat(taps)
        return torch.cat([tops.new_ones(1), tops]) if self.fused else tops

    def _plan(self, a: torch.Tensor) -> list[tuple]:
        """(py, px, offsets, runs) per phase for the input ``a`` (cin, h, w)."""
        if not self.dynamic:
            return [(py, px, offsets, runs) for py, px, offsets, _, _, runs in self.phases]
        peaks = a.abs().amax((1, 2)).double()  # integers: exact in any dtype
        plan = []
        for py, px, offsets, taps, cat, _ in self.phases:
            runs = _runs(cat, self._tops(peaks, len(taps)), self.nonnegative_input)
            plan.append((py, px, offsets, _pieces(runs, taps, self.cin, self.lead)))
        return plan

    def requantize(self, sums: torch.Tensor) -> torch.Tensor:
        """Sums (cout, n), float32 or float64 integers → the next point's integers, float64."""
        out = torch.addcmul(self.offset, sums, self.scale)
        return out.floor_().clamp_(self.low, self.high)

    def __call__(self, a: torch.Tensor, f64: bool = False) -> torch.Tensor:
        """(cin, h, w) float32 integers within ±ACT_TOP → (cout, s·h, s·w) integers as ``self.store``;
        ``f64``: the products in float64 (where float32 products are not IEEE ones here)."""
        if self.columns is not None:
            return self._by_columns(a, f64)
        cin, h, w = a.shape
        s, before, after = self.stride, self.before, self.after
        # zero-padded, row-major, with spare zeros at the end: tap (dy, dx) reads one contiguous slice
        flat = _flat_padded(a[None], before, after, torch.float64 if f64 else torch.float32)[0]
        wp = w + before + after
        rows = max(1, BAND_POSITIONS // wp)
        out = a.new_empty(self.cout, h, s, w, s, dtype=self.store)
        plan = self._plan(a)
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            length, base = (r1 - r0) * wp, r0 * wp
            for py, px, offsets, runs in plan:
                total = None
                for pieces, with_offset in runs:
                    acc = None
                    for t, c0, c1, weight in pieces:
                        dy, dx = offsets[t]
                        start = base + (before + dy) * wp + before + dx
                        x, weight = flat[c0:c1, start:start + length], weight.double() if f64 else weight
                        if acc is not None:
                            acc.addmm_(weight, x)
                        elif with_offset:
                            acc = torch.addmm(self.offset if f64 else self.offset32, weight, x)
                        else:
                            acc = torch.mm(weight, x)
                    total = acc if len(runs) == 1 else _joined(total, acc)
                v = total.floor_().clamp_(self.low, self.high) if self.fused else self.requantize(total)
                if self.norm is not None:
                    v = self.norm(v, f64)
                out[:, r0:r1, py, :, px] = v.view(self.cout, r1 - r0, wp)[:, :, :w]
        return out.view(self.cout, s * h, s * w)

    def _by_columns(self, a: torch.Tensor, f64: bool) -> torch.Tensor:
        """A thin transposed convolution (see :func:`vaecodec.fixedpoint._conv_transpose_by_columns`): per band
        of input rows its columns (the products of every tap, float32 runs over the input channels joined in
        float64), added where their taps land by col2im in float64, then the rounding: the same integer sums
        in another order, exact (below 2^53)."""
        cin, h, w = a.shape
        s, p, k, cout = self.stride, self.padding, self.k, self.cout
        rows = max(1, COLUMN_POSITIONS // w)
        acc = a.new_zeros(cout, s * h + k, s * w + k, dtype=torch.float64)  # output row o at o + p
        flat = a.reshape(cin, h * w).to(torch.float64 if f64 else torch.float32)
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            x = flat[:, r0 * w:r1 * w]
            columns = None
            for c0, c1, weight in self.columns:
                part = torch.mm(weight.double() if f64 else weight, x[c0:c1])
                columns = _joined(columns, part)
            acc[:, s * r0:s * r1 + k - s, :s * w + k - s] += F.fold(
                columns[None], (s * (r1 - r0) + k - s, s * w + k - s), k, stride=s)[0]
        sums = acc[:, p:p + s * h, p:p + s * w].reshape(cout, s * h * s * w)
        return self.requantize(sums).to(self.store).view(cout, s * h, s * w)

    def at_checkerboard(self, a: torch.Tensor, positions: torch.Tensor, same_colour: bool, f64: bool = False) -> torch.Tensor:
        """The layer at ``positions`` of one colour only, on an input zero on the other colour (or, with
        ``same_colour``, read at its own colour): as :func:`vaecodec.fixedpoint.conv_of_checkerboard_at`,
        from ``a`` (1, cin, h, w) float32 integers; (cout, len(positions)) float64."""
        parity = 0 if same_colour else 1
        cached = self._checkerboard.get(parity)
        if cached is None:
            taps, weights = checkerboard_weights(self.weight, parity)  # (out, c·t), (channel, tap) order
            cached = self._checkerboard[parity] = (taps, weights, weights.float(), _runs(weights, self.top))
        taps, weights, weights32, runs = cached
        if len(runs) > 1:  # cut again at the input's own peaks (as __call__ does)
            runs = _runs(weights, a.abs().amax((0, 2, 3)).double().repeat_interleave(len(taps)))
        inputs, wanted = checkerboard_inputs(a, positions, self.k, taps, torch.float64 if f64 else torch.float32)
        total = None
        for k0, k1 in runs:
            weight = weights32[:, k0:k1]
            acc = torch.mm(weight.double() if f64 else weight, inputs[k0:k1])
            total = acc if len(runs) == 1 else _joined(total, acc)
        if wanted is not None:
            total = total[:, wanted]
        return self.requantize(total)


class NarrowProgram:
    """A stack of convolutions, ReLUs and inverse GDNs as a B-bit integer program (see module docstring):
    ``run`` maps fixed-point integers (float64, 2^-12 units) to fixed-point integers, as
    :meth:`vaecodec.fixedpoint.FixedPointProgram.run` does, so the codec's tiling and passes are unchanged.

    Build it with :meth:`from_sequential` from the float layers (fp16 weights) and each convolution's and
    inverse GDN's input exponents (a model file's tables; :func:`exponents_for_peaks` at export).
    """

    def __init__(self, convs: list[_Conv], in_exponents: torch.Tensor, bits: int = WEIGHT_BITS,
                 act_bits: int | None = None):
        self.convs, self.bits, self.top = convs, bits, _widths(bits, act_bits)
        # floor(v·2^(-12-e) + ½): v < 2^21 and the scale a power of two, exact in float64.
        self._input_scale = _pow2(-ACT_FRAC_BITS - in_exponents.long())[:, None, None]

    @classmethod
    def from_sequential(cls, seq: nn.Sequential, exponents: list[torch.Tensor], bits: int = WEIGHT_BITS,
                        act_bits: int | None = None) -> "NarrowProgram":
        """``exponents[i]``: the input exponents (per channel) of the i-th convolution or inverse GDN of ``seq``;
        ``bits`` the weights' width, ``act_bits`` the activations' (default: the same; or one more)."""
        _widths(bits, act_bits)
        layers = [(i, m) for i, m in enumerate(seq) if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, SimplifiedGDN))]
        if len(exponents) != len(layers):
            raise ValueError("narrow program exponents do not match the network")
        for i, m in enumerate(seq):
            if isinstance(m, SimplifiedGDN) and not (m.inverse and i > 0 and isinstance(seq[i - 1], (nn.Conv2d, nn.ConvTranspose2d))):
                raise TypeError("a narrow program takes inverse GDNs right after a convolution only")
            if not isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.ReLU, SimplifiedGDN)):
                raise TypeError(f"no narrow form for {type(m).__name__}")
            if isinstance(m, nn.ReLU) and not (i > 0 and isinstance(seq[i - 1], (nn.Conv2d, nn.ConvTranspose2d))):
                raise TypeError("a narrow program takes a ReLU right after a convolution only")
        if not isinstance(seq[0], (nn.Conv2d, nn.ConvTranspose2d)) or not isinstance(seq[-1], (nn.Conv2d, nn.ConvTranspose2d)):
            raise TypeError("a narrow program starts and ends with a convolution")
        for e in exponents:
            if e.dim() != 1 or bool(((e < -EXPONENT_LIMIT) | (e > EXPONENT_LIMIT)).any()):
                raise ValueError("narrow program exponents out of range")
        convs, relu = [], False
        for n, (i, m) in enumerate(layers):
            if isinstance(m, SimplifiedGDN):
                continue
            follows = seq[i + 1] if i + 1 < len(seq) else None
            after = exponents[n + 1].long() if n + 1 < len(layers) else None
            norm = None
            if isinstance(follows, SimplifiedGDN):
                following = exponents[n + 2].long() if n + 2 < len(layers) else None
                if following is None:
                    raise TypeError("a narrow program ends with a convolution")
                norm = _InverseGDN(follows, after, following, bits, act_bits)
            is_relu = isinstance(follows, nn.ReLU)
            convs.append(_Conv(m, exponents[n].long(), after, is_relu, nonnegative_input=relu, bits=bits, norm=norm,
                               act_bits=act_bits))
            relu = is_relu
        return cls(convs, exponents[0], bits, act_bits)

    @property
    def out_channels(self) -> int:
        return self.convs[-1].cout

    def quantize_input(self, a: torch.Tensor) -> torch.Tensor:
        """Fixed-point (n, c, h, w) float64 → point 0's integers, float32."""
        if a.dtype != torch.float64:
            raise TypeError("narrow programs take float64 tensors holding fixed-point integers")
        x = a * self._input_scale
        return x.add_(0.5).floor_().clamp_(-self.top, self.top).float()

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
        """Float32 runs per layer (the most over its phases; a columns-form layer's channel runs): how often
        sums are joined in float64."""
        return [len(conv.columns) if conv.columns is not None else max(len(phase[-1]) for phase in conv.phases)
                for conv in self.convs]
