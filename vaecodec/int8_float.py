"""The 8-bit synthesis program on float matrix products: its integers, where int8 kernels do not pay.

Why: :class:`~vaecodec.int8_synthesis.Int8SynthesisProgram` multiplies int8 by
int8 into int32, the fastest products a CPU with int8 dot-product instructions
(VNNI, AMX) has. A CPU without them (AVX2 only) runs torch's int8 kernel as a
slow reference one, and the program's fallback (float32 products over operands
made per call, then int32 passes) took 1.65× the exact float64 synthesis' time.
Yet an int8 × int8 product is a small integer (at most 127² = 16 129), and
float32 (24-bit significands, twice float64's products per cycle on AVX2) sums
such products exactly as long as every partial sum stays below 2^24. So here:

* a layer's products run in float32, each phase's taps summed in runs whose
  bound (127 times the largest Σ|w| of one output over the run's taps and
  input channels, computed at construction) stays below 2^24, the runs joined
  in float64 (one run for an 8-bit layer's usual weights; more would let
  wider weights or activations keep float32 products); a layer where one tap
  alone could reach 2^24 multiplies in float64. The first layer's 16-bit
  input (±32 512) is split into two int8 digit planes, or multiplied by
  Winograd's phases in float64. An integer sum is exact in any order below
  the significand's limit;
* every rescaling (int32 sums times 15-bit multipliers, pre- and post-shifts)
  runs in float64: every intermediate is an integer below 2^53 (or so far
  past the clamp that rounding cannot bring it back, see :class:`_Requantize`)
  and every scaling a power of two, so ``floor`` gives the int32 program's
  integers.

The layout is :mod:`vaecodec.fixedpoint`'s taps path: activations channels
first (c, h, w), each phase of an upsampling a few taps' products over
contiguous slices of its padded, row-major input, band by band of output rows,
the inverse GDN after it applied while the band is in cache; the last, 3-output
layer as columns added into the image (col2im). Activations between layers are
float32 (±127: exact). The result equals :meth:`Int8SynthesisProgram.run`'s on
the int8 kernels bit for bit (``tests/test_int8_synthesis.py`` compares them).

This module knows nothing of files, models or entropy coding.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .fixedpoint import BAND_POSITIONS, COLUMN_POSITIONS, EXACT_LIMIT, _block, _padded_rows_into, winograd_by_bands
from .int8_synthesis import ACT_TOP, INPUT_DIGIT, INPUT_TOP, _Int8Deconv, _Int8InverseGDN, _Rescale
from .winograd import WinogradPhase

__all__ = ["FLOAT32_EXACT_LIMIT", "Int8FloatProgram"]

FLOAT32_EXACT_LIMIT = 2.0**24
"""Integers below this are exact in float32, and so is every sum that stays below it."""


class _Requantize:
    """:class:`~vaecodec.int8_synthesis._Rescale` of sums plus a bias, from float32 or float64 integers (c, L)
    into float64 ones: the same integers in three passes where it has no pre-shift, five where it has.

    The int32 program computes v = Σ + b, v' = floor((v + ½·2^pre)·2^-pre) (its rounding right shift),
    clamps v' to ±bound (only so that v'·m fits int32: the result saturates there anyway), then
    floor((v'·m + ½·2^shift)·2^-shift) clamped to ±limit. In float64 no clamp is needed before the product
    where it is exact, and without a pre-shift the bias and the rounding half fold into one offset:
    floor(Σ·(m·2^-shift) + (b·m + ½·2^shift)·2^-shift), every term an integer multiple of 2^-shift.
    Below 2^53 of them every step is exact; beyond (the first layer's 16-bit sums without a pre-shift can
    reach it) the value is at least 2^(53 − shift) ≥ 2^23, far past ±limit, where rounding, being
    monotone, cannot move it back: the clamp gives the same integer.
    """

    def __init__(self, r: _Rescale, bias: torch.Tensor | None = None):
        f64 = dict(dtype=torch.float64)
        b = torch.zeros(len(r.shift), **f64) if bias is None else bias.to(**f64)
        scale = torch.ldexp(torch.ones(len(r.shift), **f64), -r.shift.long())
        m = r.multiplier.to(**f64)
        self.any_pre = r.any_pre
        self.multiplier = (m * scale)[:, None]  # m·2^-shift: exact (a power of two)
        if self.any_pre:  # (Σ + b + ½·2^pre)·2^-pre as Σ·2^-pre + (b + ½·2^pre)·2^-pre: exact (powers of two)
            self.pre_scale = torch.ldexp(torch.ones(len(r.pre_shift), **f64), -r.pre_shift.long())[:, None]
            self.pre_offset = (b + r.pre_half.to(**f64))[:, None] * self.pre_scale
            self.offset = (r.half.to(**f64) * scale)[:, None]
        else:
            self.offset = ((b * m + r.half.to(**f64)) * scale)[:, None]
        self.limit = float(r.limit)

    def __call__(self, sums: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out`` (float64, the shape of ``sums``; may be ``sums`` itself if float64) ← the rescaled integers."""
        if self.any_pre:
            torch.addcmul(self.pre_offset, sums, self.pre_scale, out=out).floor_()
            sums = out
        return torch.addcmul(self.offset, sums, self.multiplier, out=out).floor_().clamp_(-self.limit, self.limit)


class _Norm:
    """The inverse GDN on a band (c, L) of float64 integers (±127), in place: v·(β̃ + Γ̃|v|), rescaled.

    The norm is one matrix product with β̃ as its bias, in float32 where 127·ΣΓ̃ + β̃ of every row stays below
    2^24, else float64. Where the rescaling has a pre-shift, Γ̃ and β̃ come scaled by its power of two (exact:
    every sum is then an integer multiple of 2^-pre below 2^24 of them), so the shift's first step is the
    product with v itself: floor(v·norm·2^-pre + ½) in one pass and a floor. The rest is
    :class:`_Requantize`'s."""

    def __init__(self, layer: _Int8InverseGDN):
        r = layer.rescale
        f64 = dict(dtype=torch.float64)
        scale = torch.ldexp(torch.ones(len(r.pre_shift), **f64), -r.pre_shift.long())[:, None]
        gamma, beta = layer.gamma.t().double(), layer.beta.double()[:, None]  # (cout, cin): Γ̃ |v|
        exact32 = float((ACT_TOP * gamma.abs().sum(1, keepdim=True) + beta.abs()).max()) < FLOAT32_EXACT_LIMIT
        self.dtype = torch.float32 if exact32 else torch.float64
        self.gamma = (gamma * scale).to(self.dtype).contiguous()
        self.beta = (beta * scale).to(self.dtype)
        self.pre_half = r.pre_half.to(**f64)[:, None] * scale
        self.requantize = _Requantize(dataclasses.replace(r, pre_shift=torch.zeros_like(r.pre_shift)))

    def apply_(self, v: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
        """``scratch``: two rows of float64 room for at least ``v.numel()`` each."""
        c, n = v.shape
        if self.dtype == torch.float64:
            magnitude, norm = _block(scratch[0], c, n), _block(scratch[1], c, n)
        else:  # float32, in the rows' room
            magnitude, norm = _block(scratch[0].view(torch.float32), c, n), _block(scratch[1].view(torch.float32), c, n)
        torch.addmm(self.beta, self.gamma, magnitude.copy_(v).abs_(), out=norm)
        torch.addcmul(self.pre_half, v, norm, out=v).floor_()  # v·norm·2^-pre + ½·… (exact), floored
        return self.requantize(v, v)


@dataclass
class _Phase:
    row: int  # output phase (py, px) of the upsampling
    col: int
    offsets: list  # the taps' input offsets (dy, dx)
    weights: list  # per tap, (cout, cin) in the products' dtype
    groups: list  # runs of consecutive taps (start, stop) whose sums stay below the products' exact limit


def _tap_groups(tap_sums: list[torch.Tensor], input_top: float) -> list[tuple[int, int]] | None:
    """Consecutive runs of taps whose partial sums, for every output, stay below 2^24 (``tap_sums``: per tap,
    Σ|w| over the input channels of each output); None where one tap alone could reach it."""
    groups, start, running = [], 0, torch.zeros_like(tap_sums[0])
    for t, sums in enumerate(tap_sums):
        if float(sums.max()) * input_top >= FLOAT32_EXACT_LIMIT:
            return None
        if float((running + sums).max()) * input_top >= FLOAT32_EXACT_LIMIT:
            groups.append((start, t))
            start, running = t, torch.zeros_like(running)
        running = running + sums
    return groups + [(start, len(tap_sums))]


class _Upsampling:
    """One transposed convolution of the program that upsamples exactly by its stride, by phases and taps
    (or, with few outputs, by columns), its bias and rescaling, and the inverse GDN after it."""

    def __init__(self, layer: _Int8Deconv, norm: _Norm | None, input_top: int):
        cin, cout, k, _ = layer.weight.shape
        w = layer.weight.double()
        self.stride, self.cout, self.k, self.padding = layer.stride, cout, k, layer.padding
        self.before, self.after = layer.before, layer.after
        self.columns_form = layer.last
        # The first layer's 16-bit input (±32 512) as two planes of int8 digits, x = 255·hi + lo, each
        # multiplied alone and the sums joined in float64: float32 products, exact, instead of float64 ones.
        self.digits = layer.digits and not layer.last  # (a one-layer program's columns take the input whole)
        input_top = ACT_TOP if self.digits else input_top
        self.requantize = _Requantize(layer.rescale, layer.bias)
        self.norm = norm
        taps = layer.taps
        # Per phase, each tap's Σ|w| over the input channels, per output: times the input's largest magnitude,
        # what its products add to a sum. A phase's taps are summed in float32 in runs that stay below 2^24
        # (one run for an 8-bit layer's usual weights), the runs joined in float64; where a single tap could
        # reach 2^24 the layer multiplies in float64.
        phase_taps = [[(ky, dy, kx, dx) for ky, dy in rows for kx, dx in cols] for rows in taps for cols in taps]
        tap_sums = [[w[:, :, ky, kx].abs().sum(0) for ky, _, kx, _ in chosen] for chosen in phase_taps]
        groups = [_tap_groups(sums, input_top) for sums in tap_sums]
        self.dtype = torch.float32 if None not in groups else torch.float64
        if self.columns_form:  # (cout·k², cin): a band's columns are one product; col2im adds a phase's taps
            self.columns = w.permute(1, 2, 3, 0).reshape(cout * k * k, cin).to(self.dtype).contiguous()
            whole = max(float(sum(sums).max()) for sums in tap_sums) * input_top
            self.fold_dtype = torch.float32 if whole < FLOAT32_EXACT_LIMIT else torch.float64
            self.winograd = None
            return
        self.phases = [_Phase(i // len(taps), i % len(taps), [(dy, dx) for _, dy, _, dx in chosen],
                              [w[:, :, ky, kx].t().to(self.dtype).contiguous() for ky, _, kx, _ in chosen],
                              groups[i] or [(0, len(chosen))])
                       for i, chosen in enumerate(phase_taps)]
        self.runs = max(len(p.groups) for p in self.phases)
        self.winograd = self._winograd(layer) if layer.digits else None

    def _winograd(self, layer: _Int8Deconv) -> list[WinogradPhase] | None:
        """The first layer's phases in Winograd's domain, on its 16-bit input in float64 (as the exact
        program's widest layers: :func:`vaecodec.fixedpoint.winograd_by_bands`), the bias and the rounding
        half of the pre-shift inside the sums; None where a phase cannot take it (bound or taps)."""
        r = layer.rescale
        f64 = dict(dtype=torch.float64)
        offset = (layer.bias.to(**f64) + r.pre_half.to(**f64))[:, None]
        phases = [WinogradPhase.of(p.offsets, torch.cat([t.double() for t in p.weights], 1), offset, INPUT_TOP, EXACT_LIMIT)
                  for p in self.phases]
        if None in phases:
            return None
        pre_scale = torch.ldexp(torch.ones(len(r.pre_shift), **f64), -r.pre_shift.long())[:, None]
        self.winograd_scale = {p.log2: pre_scale * 2.0**-p.log2 for p in phases}  # undoes the transform's 2^log2 too
        self.after_pre_shift = _Requantize(dataclasses.replace(r, pre_shift=torch.zeros_like(r.pre_shift)))
        return phases

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        if self.columns_form:
            return self._by_columns(a)
        return self._by_taps(a) if self.winograd is None else self._by_winograd(a)

    def _by_winograd(self, a: torch.Tensor) -> torch.Tensor:
        """(cin, h, w) → (cout, s·h, s·w) float32 integers (±127) through the Winograd phases."""
        scratch = []  # the inverse GDN's, made for the first (largest) block

        def finish(block: torch.Tensor, phase: WinogradPhase) -> None:
            # (Σ + b + ½·2^pre)·2^log2 → floor(·2^-(pre + log2)): the pre-shift's result, then the rest
            v = self.after_pre_shift(block.mul_(self.winograd_scale[phase.log2]).floor_(), block)
            if self.norm is not None:
                scratch or scratch.append(block.new_empty(2, block.numel()))
                self.norm.apply_(v, scratch[0])

        positions = [(p.row, p.col) for p in self.phases]
        return winograd_by_bands(a[None], self.stride, self.before, self.after, positions, self.winograd, finish,
                                 torch.float32)[0]

    def _by_taps(self, a: torch.Tensor) -> torch.Tensor:
        """(cin, h, w) → (cout, s·h, s·w) float32 integers (±127), phase by phase, band by band."""
        cin, h, w = a.shape
        s, before, after, cout = self.stride, self.before, self.after, self.cout
        planes = _digit_planes(a) if self.digits else (a,)
        wp = w + before + after
        rows = max(1, BAND_POSITIONS // wp)
        windows = [a.new_zeros(cin, (min(h, rows) + before + after) * wp + before + after, dtype=self.dtype)
                   for _ in planes]
        band = min(h, rows) * wp
        products = a.new_empty(len(planes) * self.runs, cout * band, dtype=self.dtype)
        scratch = a.new_empty(3, cout * band, dtype=torch.float64)  # the sums, then the norm's two
        out = a.new_empty(cout, h, s, w, s, dtype=torch.float32)
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            length = (r1 - r0) * wp
            for window, plane in zip(windows, planes):
                _padded_rows_into(window, plane, r0 - before, r1 + after, before, wp)
            for phase in self.phases:
                sums = []  # (run's sums, its factor): Σ·x = 255·(Σ·hi) + Σ·lo for digit planes
                for plane, (window, factor) in enumerate(zip(windows, (INPUT_DIGIT, 1) if self.digits else (1,))):
                    for run, (start, stop) in enumerate(phase.groups):
                        acc = _block(products[plane * self.runs + run], cout, length)
                        for j in range(start, stop):
                            dy, dx = phase.offsets[j]
                            t = (before + dy) * wp + before + dx
                            x = window[:, t:t + length]
                            torch.mm(phase.weights[j], x, out=acc) if j == start else acc.addmm_(phase.weights[j], x)
                        sums.append((acc, factor))
                v = _block(scratch[0], cout, length)
                if len(sums) == 1:
                    v = self.requantize(sums[0][0], v)
                else:  # joined in float64, exact (below 2^53): in-place additions compute in float64
                    (first, factor), rest = sums[-1], sums[:-1]
                    v.copy_(first).mul_(factor)
                    for acc, factor in rest:
                        v.add_(acc, alpha=factor)
                    v = self.requantize(v, v)
                if self.norm is not None:
                    self.norm.apply_(v, scratch[1:])
                out[:, r0:r1, phase.row, :, phase.col] = v.view(cout, r1 - r0, wp)[:, :, :w]
        return out.view(cout, s * h, s * w)

    def _by_columns(self, a: torch.Tensor) -> torch.Tensor:
        """(cin, h, w) → (cout, s·h, s·w) float64 integers: each band of input rows' columns ``W @ X``
        (cout·k² rows), added where their taps land by col2im into one accumulator, then the bias and the
        rescaling (the same sums as the phases', in another order: exact below the layer's bound)."""
        cin, h, w = a.shape
        s, p, k, cout = self.stride, self.padding, self.k, self.cout
        rows = max(1, COLUMN_POSITIONS // w)
        acc = a.new_zeros(cout, s * h + k, s * w + k, dtype=self.fold_dtype)  # output row o at o + p
        flat = a.reshape(cin, h * w)
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            columns = (self.columns @ flat[:, r0 * w:r1 * w].to(self.dtype)).to(self.fold_dtype)
            acc[:, s * r0:s * r1 + k - s, :s * w + k - s] += F.fold(
                columns[None], (s * (r1 - r0) + k - s, s * w + k - s), k, stride=s)[0]
        sums = acc[:, p:p + s * h, p:p + s * w].reshape(cout, s * h * s * w)
        return self.requantize(sums, sums.new_empty(sums.shape, dtype=torch.float64)).view(cout, s * h, s * w)


def _digit_planes(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Integers ``a`` within ±32 512 → (hi, lo) with a = 255·hi + lo, both within ±127 (the int8 program's
    digits: hi = ⌊(a + 127)/255⌋), as float32."""
    hi = torch.div(a + ACT_TOP, INPUT_DIGIT, rounding_mode="floor")
    return hi.float(), (a - hi * INPUT_DIGIT).float()


class Int8FloatProgram:
    """An :class:`~vaecodec.int8_synthesis.Int8SynthesisProgram` run on float32 and float64 matrix products:
    ``run`` maps fixed-point ŷ (1, C, h, w) float64 to fixed-point x̂ (1, 3, 16·h, 16·w) float64, the same
    integers as the program's own int8 path. Built from the program's integer tables once (no float math
    decides a number: every conversion is of an integer)."""

    def __init__(self, program):
        layers = program.layers
        self.input_scale = program._input_scale[:, None, None]
        self.steps: list[_Upsampling] = []
        top = INPUT_TOP
        for i, layer in enumerate(layers):
            if isinstance(layer, _Int8Deconv):
                follows = layers[i + 1] if i + 1 < len(layers) else None
                norm = _Norm(follows) if isinstance(follows, _Int8InverseGDN) else None
                self.steps.append(_Upsampling(layer, norm, top))
                top = ACT_TOP
            elif i == 0 or not isinstance(layers[i - 1], _Int8Deconv):
                raise ValueError("the float path takes inverse GDNs right after transposed convolutions only")

    @torch.no_grad()
    def run(self, a: torch.Tensor) -> torch.Tensor:
        # Point 0: floor(ŷ·m·2^-shift + ½) clamped to ±32 512 (the product is exact in float64).
        x = (a[0] * self.input_scale).add_(0.5).floor_().clamp_(-INPUT_TOP, INPUT_TOP)
        for step in self.steps:
            x = step(x)
        return x[None].double()
