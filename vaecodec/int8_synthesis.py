"""The 8-bit synthesis transform: trained as it will be decoded, decoded in exact integers.

Why: the exact float64 program of :mod:`vaecodec.fixedpoint` (14-bit weights,
activations up to 21 bits) is most of a decoder's time, and its cost is float64
products and the memory traffic around them. With 8-bit activations and weights every product
of the synthesis is an int8 × int8 → int32 matrix product, the kind CPUs run
fastest, and still exact on any machine: integer sums do not depend on
summation order, kernel or thread count.

Where the rounding happens (a "point" before every layer; per channel, with a
learned step, LSQ: Esser et al. 2020)::

    ŷ ─p0─▶ deconv ─p1─▶ iGDN ─p2─▶ deconv ─p3─▶ iGDN ─p4─▶ deconv ─p5─▶ iGDN ─p6─▶ deconv ─▶ x̂

* At point i an activation ``a`` becomes the integer ``ã = clamp(round(a/s_i), ±127)``; at point 0, ŷ,
  ``±32512`` (16 bits: the first layer multiplies two int8 digits of it, ``ã = 255·hi + lo``, and adds
  their int32 sums in int64; that layer is ~7 % of the synthesis' products: 3.2 of 43 k per pixel,
  256 → 128 channels at 1/8 resolution).
* A transposed convolution's weights are folded with the steps of its input
  (``w·s_i`` along the input channels) and rounded to ±127 per output channel
  (step ``max|w·s_i| / 127``): its output is an int32 sum times that step.
* The inverse GDN ``v·(β + Γ|v|)`` takes its norm as an int8 product of
  ``|ṽ|`` with Γ folded the same way, kept as a wide integer (it is multiplied,
  not matrix-multiplied, so it needs no rounding to 8 bits).
* Between points an int32 value is re-scaled to the next step by a
  per-channel fixed-point multiplier ``m·2^-shift``, rounded. It is clamped
  first to where the result saturates anyway, so the product stays in int32:
  integer arithmetic only, and the same integers as the exact rescaling.

Two faces, one module:

* :class:`Int8Synthesis` (training): the synthesis layers plus the learned
  log-steps; its forward pass rounds where the decoder rounds (straight-through
  gradients), so quantization-aware training sees the decoder's numbers.
* :class:`Int8SynthesisProgram` (decoding): integer tables computed once, at
  export, from the trained module (``from_module``; the only float math, so
  no machine's ``exp`` decides a decoder's number) and stored in the model
  file (``tables``/``from_tables``). ``run`` maps fixed-point ŷ to fixed-point
  x̂ as :class:`vaecodec.fixedpoint.FixedPointProgram` does, so the codec's tiled
  synthesis is unchanged. Where int8 kernels do not pay (AVX2-only CPUs) it runs
  on float products instead (:mod:`vaecodec.int8_float`): the same integers.

This module knows nothing of files, bytes or entropy coding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .fixedpoint import ACT_FRAC_BITS
from .hardware import float32_products_exact
from .intmm import int_matmul, int_mm_is_exact, int_mm_pays
from .model import SimplifiedGDN

__all__ = ["ACT_TOP", "INPUT_TOP", "Int8Synthesis", "Int8SynthesisProgram", "int_matmul", "int_mm_is_exact"]

ACT_TOP = 127
"""Largest |integer| of an activation or weight (symmetric 8-bit; −128 is never used)."""

INPUT_DIGIT = 2 * ACT_TOP + 1
INPUT_TOP = ACT_TOP * INPUT_DIGIT + ACT_TOP
"""Largest |integer| of ŷ at point 0: 16 bits, two int8 digits q = 255·hi + lo (hi, lo in ±127; every integer
within ±32512 has exactly one such pair). The rate buys ŷ a precision 8 bits cannot hold at high quality."""

MULTIPLIER_BITS = 15
"""Re-scaling multipliers m have at most 15 bits (relative error below 2^-14 where m ≥ 2^14)."""

OUTPUT_LIMIT = 2**14
"""The last layer's clamp, in 2^-ACT_FRAC_BITS units (x̂ within ±4; pixels are clamped to [0, 1] after)."""

NORM_BIAS_BITS = 20
"""Norm steps are at least β/2^20, so |β̃| ≤ 2^20 and ṽ·(β̃ + Γ̃|ṽ|) stays below 2^31 (checked per layer)."""

_INT32_LIMIT = 2**31


def _ste_round(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def _to_grid(a: torch.Tensor, step: torch.Tensor, top: int = ACT_TOP) -> torch.Tensor:
    """The integers ``clamp(round(a/step), ±top)`` (as floats), with LSQ's gradients for ``a`` and ``step``."""
    return _ste_round(a / step).clamp(-top, top)


def _deconv_steps(weight: torch.Tensor, in_step: torch.Tensor, out_step: torch.Tensor):
    """(folded weights w·s_in, per-output-channel weight steps max|w·s_in|/127) of a transposed convolution;
    a channel whose weights are all 0 takes the next point's step (its output is its bias alone)."""
    w = weight * in_step[:, None, None, None]  # (in, out, k, k): fold the input steps
    peak = w.detach().abs().amax(dim=(0, 2, 3))
    return w, torch.where(peak > 0, peak / ACT_TOP, out_step.to(peak.dtype))


def _gdn_steps(gamma: torch.Tensor, beta: torch.Tensor, step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(folded Γ·s_v, per-row norm steps): Γ's largest entry of a row at 127, unless β would need more than
    NORM_BIAS_BITS (a row of Γ that is tiny beside β: its rounding matters little there)."""
    g = gamma * step[None, :]
    return g, torch.maximum(g.detach().amax(dim=1) / ACT_TOP, beta.detach() * 2.0**-NORM_BIAS_BITS)


class Int8Synthesis(nn.Sequential):
    """The synthesis layers (transposed convolutions and inverse simplified GDNs) with a learned
    rounding step per channel before each layer, computing what :class:`Int8SynthesisProgram` computes.

    Its parameters are the float layers' (state-dict keys ``0.weight``, ``1.beta``, ...,
    as in the float synthesis, so a float checkpoint warm-starts it) and
    ``log_step{i}``, ln of point i's per-channel steps. Start the steps with
    :meth:`calibrate` on real latents; training then moves them (LSQ) with
    the rest of the model.
    """

    def __init__(self, *layers: nn.Module):
        super().__init__(*layers)
        kinds = [isinstance(m, nn.ConvTranspose2d) or (isinstance(m, SimplifiedGDN) and m.inverse) for m in self]
        if not all(kinds) or not isinstance(self[-1], nn.ConvTranspose2d):
            raise TypeError("an 8-bit synthesis is transposed convolutions and inverse GDNs, ending in a convolution")
        for i, m in enumerate(self):
            channels = m.in_channels if isinstance(m, nn.ConvTranspose2d) else m.beta.numel()
            self.register_parameter(f"log_step{i}", nn.Parameter(torch.zeros(channels)))

    def steps(self) -> list[torch.Tensor]:
        """Point i's per-channel steps, then the output's (2^-ACT_FRAC_BITS, the fixed-point unit).

        The log-steps are used as a model file stores them, rounded to fp16 (straight through for their
        gradients), so training rounds with the steps the exported program is built from."""
        out = torch.full((self[-1].out_channels,), 2.0**-ACT_FRAC_BITS, device=self.log_step0.device)
        logs = [getattr(self, f"log_step{i}").float() for i in range(len(self))]
        return [torch.exp(v + (v.half().float() - v).detach()) for v in logs] + [out]

    @torch.no_grad()
    def calibrate(self, y: torch.Tensor, quantile: float = 0.9999) -> None:
        """Set every point's steps so that the ``quantile`` of |a| per channel (float forward pass on ``y``,
        latents of real images) lands on ±127: a start that clips almost nothing."""
        a = y.float()
        for i, m in enumerate(self):
            values = a.abs().transpose(0, 1).flatten(1)
            values = values[:, ::max(1, values.shape[1] // 65536)].sort(dim=1).values
            # A floor for channels that are (nearly) silent: their step stays in the program's range.
            top = INPUT_TOP if i == 0 else ACT_TOP
            peak = values[:, min(values.shape[1] - 1, int(quantile * values.shape[1]))].clamp_min(top * 2.0**-20)
            getattr(self, f"log_step{i}").copy_(torch.log(peak / top))
            a = m(a)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        # float32 even under bfloat16 autocast: bf16 sums (8-bit mantissas) would move values by up to a
        # quarter step near ±127, and training would round differently from the decoder.
        # Nor TF32 on a GPU: its 10-bit significands cannot hold the first layer's 16-bit integers.
        cudnn = torch.backends.cudnn
        no_tf32 = cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                              allow_tf32=False)
        with torch.autocast(y.device.type, enabled=False), no_tf32:
            return self._forward(y.float())

    def _forward(self, y: torch.Tensor) -> torch.Tensor:
        a = y
        steps = self.steps()
        for i, m in enumerate(self):
            step = steps[i]
            q = _to_grid(a.float(), _expand(step, 1, 4), INPUT_TOP if i == 0 else ACT_TOP)  # point i's integers
            if isinstance(m, nn.ConvTranspose2d):
                w, s_w = _deconv_steps(m.weight.float(), step, steps[i + 1].detach())
                w_q = _ste_round(w / _expand(s_w, 1, 4))
                acc = F.conv_transpose2d(q, w_q, None, m.stride, m.padding, m.output_padding)
                a = acc.float() * _expand(s_w, 1, 4) + _expand(m.bias.float(), 1, 4)
            else:
                beta, gamma = m.effective_params()
                g, s_g = _gdn_steps(gamma.float(), beta.float(), step)
                g_q = _ste_round(g / s_g[:, None])
                norm = F.conv2d(q.abs(), g_q[:, :, None, None]) * _expand(s_g, 1, 4) + _expand(beta.float(), 1, 4)
                a = q * _expand(step, 1, 4) * norm
        return a


def _expand(v: torch.Tensor, dim: int, ndim: int) -> torch.Tensor:
    shape = [1] * ndim
    shape[dim] = -1
    return v.view(shape)


# ----- the integer program -----------------------------------------------------------------------------------


def _multiplier(ratio: torch.Tensor, limit: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per channel (pre, m, shift) with 2^-pre·m·2^-shift ≈ ratio > 0, for rescaling int32 values whose
    results are clamped to ±limit: (limit + 1)·2^shift stays below 2^30 (so the clamped product fits int32),
    and a rounding pre-shift by ``pre`` bits keeps m at 14–15 bits where the ratio is tiny (the inverse
    GDN's ~28-bit products become 8-bit activations)."""
    _, exp = torch.frexp(ratio.double())  # ratio = mant·2^exp, mant in [0.5, 1)
    top = 30 - math.ceil(math.log2(limit + 1))
    pre = torch.clamp(MULTIPLIER_BITS - exp.long() - top, min=0)
    shift = torch.clamp(MULTIPLIER_BITS - exp.long() - pre, max=top)
    m = torch.round(torch.ldexp(ratio.double(), pre + shift)).long()
    if bool((m < 2**(MULTIPLIER_BITS - 2)).any()) or bool((shift < 1).any()) or bool((pre > 24).any()):
        raise ValueError("a re-scaling factor of the 8-bit synthesis is out of range; weights out of range")
    return pre.to(torch.int32), m.to(torch.int32), shift.to(torch.int32)


def _half(shift: torch.Tensor) -> torch.Tensor:
    """⌊2^shift / 2⌋: the rounding half of a right shift (0 for no shift)."""
    return torch.bitwise_right_shift(torch.bitwise_left_shift(torch.ones_like(shift), shift), 1)


@dataclass
class _Rescale:
    """v (int32, (..., C)) → clamp(floor(v'·m·2^-shift + ½), ±limit) per channel, v' = floor(v·2^-pre + ½);
    int32 and in place.

    v' is clamped first to ±bound, the least magnitude whose result saturates at ±limit anyway, so the
    product v'·m stays below 2^31: the same integers as the exact rescaling of the unclamped v'.
    """

    pre_shift: torch.Tensor  # int32 (C,)
    multiplier: torch.Tensor  # int32 (C,)
    shift: torch.Tensor  # int32 (C,)
    limit: int

    def __post_init__(self):
        m, sh = self.multiplier.long(), self.shift.long()
        if not (len(m) == len(sh) == len(self.pre_shift)) or bool((sh < 1).any()) or bool((sh > 30).any()) \
                or bool((m < 1).any()) or bool((self.pre_shift < 0).any()) or bool((self.pre_shift > 24).any()):
            raise ValueError("8-bit synthesis rescaling out of range")
        self.pre_half, self.half = _half(self.pre_shift), _half(self.shift)
        self.any_pre = bool(self.pre_shift.any())
        # Smallest v' with floor(v'·m·2^-sh + ½) ≥ limit + 1, i.e. v'·m ≥ (limit + ½)·2^sh.
        bound = torch.div(((2 * self.limit + 1) << sh) + 2 * m - 1, 2 * m, rounding_mode="floor")
        if float((bound * m + self.half.long()).max()) >= _INT32_LIMIT:
            raise ValueError("8-bit synthesis rescaling could overflow int32")
        self.bound = bound.to(torch.int32)

    def __call__(self, v: torch.Tensor, channels_first: bool = False) -> torch.Tensor:
        """``v`` is int32 or int64 (the 16-bit input's sums; returned as int32), (..., C), or (C, ...) with
        ``channels_first``."""
        p = [t[:, None] if channels_first else t for t in (self.pre_half, self.pre_shift, self.bound, self.multiplier,
                                                              self.half, self.shift)]
        if self.any_pre:
            v = v.add_(p[0]).bitwise_right_shift_(p[1])
        v = v.clamp_(-p[2], p[2]).to(torch.int32).mul_(p[3]).add_(p[4]).bitwise_right_shift_(p[5])
        return v.clamp_(-self.limit, self.limit)


def _phase_taps(kernel: int, stride: int, padding: int) -> list[list[tuple[int, int]]]:
    """Per output phase a of a transposed convolution: its (kernel index, input offset) pairs."""
    return [[(k, (a + padding - k) // stride) for k in range(kernel) if (a + padding - k) % stride == 0]
            for a in range(stride)]


def _int32(v: torch.Tensor) -> torch.Tensor:
    if float(v.abs().max()) >= 2**30:
        raise ValueError("an 8-bit synthesis bias is out of int32 range; weights out of range")
    return v.to(torch.int32)


@dataclass
class _Int8Deconv:
    """A transposed convolution on int8 channels-last activations (h, w, cin) → (stride·h, stride·w, cout);
    with ``digits`` (the first layer) on 16-bit ones (int16), as two int8 digits.

    Upsampling layers run by phases (each output phase an ordinary correlation with a few taps: their
    shifted inputs side by side, one int8 matrix product). Narrow layers (the last, 3 outputs) take every
    tap's products in one matrix product and add them shifted. Then the bias, and the rescaling to the
    next point (int8), or for the last layer to ``2^-ACT_FRAC_BITS`` units (int32, channels first:
    (cout, stride·h, stride·w)).
    """

    weight: torch.Tensor  # int8 (cin, cout, k, k)
    bias: torch.Tensor  # int32 (cout,), in units of the weight step
    rescale: _Rescale
    stride: int
    padding: int
    last: bool
    digits: bool = False

    def __post_init__(self):
        cin, cout, k, _ = self.weight.shape
        self.taps = _phase_taps(k, self.stride, self.padding)
        offsets = [d for phase in self.taps for _, d in phase]
        self.before, self.after = -min(offsets), max(offsets)
        if self.last:  # the narrow form: every tap's products in one matrix product
            self.all_taps = self.weight.permute(0, 2, 3, 1).reshape(cin, -1).contiguous()  # (cin, k·k·cout)
            return
        self.phases = []  # by phases: each phase's taps side by side
        for py, rows in enumerate(self.taps):
            for px, cols in enumerate(self.taps):
                chosen = [(ky, dy, kx, dx) for ky, dy in rows for kx, dx in cols]
                stacked = torch.cat([self.weight[:, :, ky, kx] for ky, _, kx, _ in chosen]).contiguous()
                self.phases.append((py, px, [(dy, dx) for _, dy, _, dx in chosen], stacked))

    def _flat(self, a: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Zero-padded, flattened row-major, with spare zeros at the end: tap (dy, dx) of every output of a phase
        reads the contiguous rows ``[(b + dy)·w' + b + dx :][:h·w']``."""
        h, w, c = a.shape
        b, f = self.before, self.after
        flat = F.pad(a, (0, 0, b, f, b, f)).reshape(-1, c)
        return torch.cat([flat, flat.new_zeros(b + f, c)]), w + b + f

    def _matmul(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """x @ w exact: int32, or with ``digits`` int64 from x = 255·hi + lo (hi, lo in ±127; floor division
        finds them) as one int8 product of [hi; lo] stacked."""
        if not self.digits:
            return int_matmul(x, w)
        q = x.to(torch.int32)
        hi = torch.div(q + ACT_TOP, INPUT_DIGIT, rounding_mode="floor")
        lo = q - hi * INPUT_DIGIT
        both = int_matmul(torch.cat([hi, lo]).to(torch.int8), w)
        return both[:len(x)].long().mul_(INPUT_DIGIT).add_(both[len(x):])

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        h, w, _ = a.shape
        cout, s = self.weight.shape[1], self.stride
        flat, wp = self._flat(a)
        length, b = h * wp, self.before
        if self.last:  # channels first from here: the 3 output rows stay contiguous
            k = self.weight.shape[2]
            products = self._matmul(flat, self.all_taps).t().reshape(k, k, cout, -1)
            out = torch.empty(cout, h, s, w, s, dtype=torch.int32)
            for py, px in ((py, px) for py in range(s) for px in range(s)):
                acc = None
                for ky, dy in self.taps[py]:
                    for kx, dx in self.taps[px]:
                        x = products[ky, kx, :, (b + dy) * wp + b + dx:][:, :length]
                        acc = x.clone() if acc is None else acc.add_(x)
                acc = self.rescale(acc.add_(self.bias[:, None]), channels_first=True)
                out[:, :, py, :, px] = acc.view(cout, h, wp)[:, :, :w]
            return out.view(cout, s * h, s * w)
        out = torch.empty(h, s, w, s, cout, dtype=torch.int8)
        for py, px, offsets, stacked in self.phases:
            x = torch.cat([flat[(b + dy) * wp + b + dx:][:length] for dy, dx in offsets], 1)
            acc = self.rescale(self._matmul(x, stacked).add_(self.bias))
            out[:, py, :, px] = acc.view(h, wp, cout)[:, :w]
        return out.view(s * h, s * w, cout)

    def max_abs_sum(self) -> float:
        """Largest |sum| in int32 (int64 abs: −2^31 counts): before rescaling, its pre-shift's rounding half
        included; with ``digits`` each digit's product (their sum is int64)."""
        fan_in = self.weight.shape[0] * math.ceil(self.weight.shape[2] / self.stride) ** 2
        products = fan_in * ACT_TOP * float(self.weight.long().abs().max())
        if self.digits:
            return products
        return products + float(self.bias.long().abs().max()) + float(self.rescale.pre_half.max())


@dataclass
class _Int8InverseGDN:
    """ṽ·(β̃ + Γ̃|ṽ|) on int8 channels-last activations, rescaled to the next point (int8)."""

    gamma: torch.Tensor  # int8 (cin, cout): |ṽ| @ gamma
    beta: torch.Tensor  # int32 (cout,)
    rescale: _Rescale

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        h, w, c = a.shape
        flat = a.view(-1, c)
        norm = int_matmul(flat.abs(), self.gamma).add_(self.beta)
        return self.rescale(norm.mul_(flat)).to(torch.int8).view(h, w, c)

    def max_abs_sum(self) -> float:
        norm = self.gamma.shape[0] * ACT_TOP * float(self.gamma.long().abs().max()) + float(self.beta.long().abs().max())
        return ACT_TOP * norm + float(self.rescale.pre_half.max())


class Int8SynthesisProgram:
    """The integer program of an :class:`Int8Synthesis`: fixed-point ŷ (float64 integers in
    ``2^-ACT_FRAC_BITS`` units, N = 1) → fixed-point x̂ (the same units), exact on any machine.

    Build it with :meth:`from_module` at export (computes the integer tables)
    and :meth:`from_tables` when a model file is loaded (no float math).
    Construction checks that no int32 sum can overflow.
    """

    def __init__(self, input_multiplier: torch.Tensor, input_shift: torch.Tensor, layers: list):
        self.input_multiplier, self.input_shift, self.layers = input_multiplier, input_shift, layers
        self._on_floats = None  # the float path, made on first use where int8 kernels do not pay
        if bool((input_shift < 1).any()) or bool((input_shift > 52).any()):
            raise ValueError("the 8-bit synthesis' input step is out of range")
        # m·2^-shift as one float64 per channel (ldexp: exact); ŷ (< 2^21) times it is exact in float64.
        self._input_scale = torch.from_numpy(np.ldexp(input_multiplier.numpy().astype(np.float64),
                                                      -input_shift.numpy().astype(np.int32)))
        for layer in layers:
            if layer.max_abs_sum() >= _INT32_LIMIT:
                raise ValueError("an 8-bit synthesis layer could overflow int32; weights out of range")

    @classmethod
    @torch.no_grad()
    def from_module(cls, module: Int8Synthesis) -> "Int8SynthesisProgram":
        steps = [s.double() for s in module.steps()]
        # The input is rescaled in float64 (|ŷ|·m < 2^36: exact), so its multiplier needs no int32 bound.
        # Its rescaled value (±32512) and the first layer's sums stay within float64's and int64's exact range.
        ratio = 2.0**-ACT_FRAC_BITS / steps[0]
        sh0 = MULTIPLIER_BITS - torch.frexp(ratio)[1].long()
        m0 = torch.round(torch.ldexp(ratio, sh0)).long()
        layers = []
        for i, m in enumerate(module):
            last = i == len(module) - 1
            if isinstance(m, nn.ConvTranspose2d):
                if m.output_padding[0] != m.stride[0] - 1 or m.kernel_size[0] - 2 * m.padding[0] != 1:
                    raise ValueError("8-bit synthesis layers must upsample exactly by their stride")
                w, s_w = _deconv_steps(m.weight.double(), steps[i], steps[i + 1])
                limit = OUTPUT_LIMIT if last else ACT_TOP
                layers.append(_Int8Deconv(torch.round(w / s_w[None, :, None, None]).to(torch.int8),
                                          _int32(torch.round(m.bias.double() / s_w)),
                                          _Rescale(*_multiplier(s_w / steps[i + 1], limit), limit),
                                          m.stride[0], m.padding[0], last, digits=i == 0))
            else:
                beta, gamma = (t.double() for t in m.effective_params())
                g, s_g = _gdn_steps(gamma, beta, steps[i])
                layers.append(_Int8InverseGDN(torch.round(g / s_g[:, None]).t().contiguous().to(torch.int8),
                                              _int32(torch.round(beta / s_g)),
                                              _Rescale(*_multiplier(steps[i] * s_g / steps[i + 1], ACT_TOP), ACT_TOP)))
        return cls(m0.long(), sh0.long(), layers)

    def tables(self) -> dict[str, np.ndarray]:
        """The program as named integer arrays (what a model file stores)."""
        t = {"s8.in.multiplier": self.input_multiplier.numpy(), "s8.in.shift": self.input_shift.numpy()}
        for i, layer in enumerate(self.layers):
            if isinstance(layer, _Int8Deconv):
                t[f"s8.{i}.weight"] = layer.weight.numpy()
                t[f"s8.{i}.stride_padding"] = np.array([layer.stride, layer.padding], np.int64)
                t[f"s8.{i}.bias"] = layer.bias.numpy()
            else:
                t[f"s8.{i}.gamma"] = layer.gamma.numpy()
                t[f"s8.{i}.beta"] = layer.beta.numpy()
            t[f"s8.{i}.pre_shift"] = layer.rescale.pre_shift.numpy()
            t[f"s8.{i}.multiplier"] = layer.rescale.multiplier.numpy()
            t[f"s8.{i}.shift"] = layer.rescale.shift.numpy()
        return t

    @classmethod
    def from_tables(cls, tables: dict[str, np.ndarray], in_channels: int | None = None) -> "Int8SynthesisProgram":
        """The program from a model file's tables, every shape and range checked (a damaged file is a
        ValueError, never a wrong decode): weights in ±127 (Γ in 0..127), square kernels that upsample
        exactly by their stride, layers that chain, 3 output channels, sums that fit int32."""
        def get(name: str, dtype, shape: tuple | None = None) -> torch.Tensor:
            if name not in tables:
                raise ValueError(f"8-bit synthesis table {name} missing")
            a = np.asarray(tables[name])
            if a.dtype.kind not in "iu" or (shape is not None and a.shape != shape):
                raise ValueError(f"8-bit synthesis table {name} has the wrong type or shape")
            t = torch.from_numpy(np.ascontiguousarray(a).astype(np.int64))
            if dtype == torch.int32 and bool((t.abs() >= _INT32_LIMIT).any()):
                raise ValueError(f"8-bit synthesis table {name} is out of int32 range")
            return t.to(dtype)

        m0 = get("s8.in.multiplier", torch.int64)
        channels = len(m0) if in_channels is None else in_channels
        layers, i = [], 0
        while f"s8.{i}.shift" in tables:
            last = f"s8.{i + 1}.shift" not in tables
            if f"s8.{i}.weight" in tables:
                weight = np.asarray(tables[f"s8.{i}.weight"])
                if weight.ndim != 4 or weight.shape[0] != channels or weight.shape[2] != weight.shape[3]:
                    raise ValueError(f"8-bit synthesis layer {i}: weights of the wrong shape")
                out = weight.shape[1]
                stride, padding = (int(v) for v in get(f"s8.{i}.stride_padding", torch.int64, (2,)))
                if stride < 1 or padding < 0 or weight.shape[2] - 2 * padding != 1:
                    raise ValueError(f"8-bit synthesis layer {i}: not an exact upsampling by its stride")
                w = get(f"s8.{i}.weight", torch.int64)
                if bool((w.abs() > ACT_TOP).any()):
                    raise ValueError(f"8-bit synthesis layer {i}: weights beyond ±127")
            else:
                out = channels
                g = get(f"s8.{i}.gamma", torch.int64, (channels, channels))
                if bool((g < 0).any()) or bool((g > ACT_TOP).any()):
                    raise ValueError(f"8-bit synthesis layer {i}: norm weights outside 0..127")
            limit = OUTPUT_LIMIT if last else ACT_TOP
            rescale = _Rescale(get(f"s8.{i}.pre_shift", torch.int32, (out,)), get(f"s8.{i}.multiplier", torch.int32, (out,)),
                               get(f"s8.{i}.shift", torch.int32, (out,)), limit)
            if f"s8.{i}.weight" in tables:
                layers.append(_Int8Deconv(w.to(torch.int8), get(f"s8.{i}.bias", torch.int32, (out,)), rescale, stride,
                                          padding, last, digits=i == 0))
            else:
                layers.append(_Int8InverseGDN(g.to(torch.int8), get(f"s8.{i}.beta", torch.int32, (out,)), rescale))
            channels = out
            i += 1
        if not layers or not isinstance(layers[0], _Int8Deconv) or not isinstance(layers[-1], _Int8Deconv) \
                or channels != 3:
            raise ValueError("8-bit synthesis tables incomplete")
        m0 = get("s8.in.multiplier", torch.int64, (layers[0].weight.shape[0],))
        if bool((m0 < 2**(MULTIPLIER_BITS - 1)).any()) or bool((m0 > 2**MULTIPLIER_BITS).any()):
            raise ValueError("8-bit synthesis input multiplier out of range")
        return cls(m0, get("s8.in.shift", torch.int64, (len(m0),)), layers)

    def quantize_input(self, a: torch.Tensor) -> torch.Tensor:
        """Fixed-point ŷ (1, C, h, w) float64 → point 0's int16 (h, w, C): floor(ŷ·m·2^-shift + ½), clamped
        to ±32512."""
        x = a[0].permute(1, 2, 0) * self._input_scale
        return x.add_(0.5).floor_().clamp_(-INPUT_TOP, INPUT_TOP).to(torch.int16)

    @torch.no_grad()
    def run(self, a: torch.Tensor) -> torch.Tensor:
        """Fixed-point ŷ → fixed-point x̂: on int8 kernels where they pay (:func:`~vaecodec.intmm.int_mm_pays`),
        else on float matrix products (:class:`~vaecodec.int8_float.Int8FloatProgram`, made on first use):
        the same integers either way."""
        if a.dtype != torch.float64 or a.shape[0] != 1:
            raise TypeError("the 8-bit synthesis takes one float64 tensor of fixed-point integers")
        if not int_mm_pays() and float32_products_exact():  # (else the int path: float64 products where needed)
            if self._on_floats is None:
                from .int8_float import Int8FloatProgram

                try:
                    self._on_floats = Int8FloatProgram(self)
                except ValueError:  # a layout the float path does not take (a GDN after a GDN): the int path
                    self._on_floats = False
            if self._on_floats:
                return self._on_floats.run(a)
        x = self.quantize_input(a)
        for layer in self.layers:
            x = layer(x)
        return x[None].double()  # the last layer writes channels first
