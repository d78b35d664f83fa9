"""Integer-exact inference for the decoder side: the same numbers on every machine.

Why: a one-ulp difference in a coding parameter silently corrupts the rest of an
ANS stream, and torch's float kernels differ across BLAS, oneDNN on/off, CPUs
and GPUs (design.md §3). So everything the *decoder* computes (the hyper-
synthesis that yields each latent's mean and scale index, and the synthesis
that yields the pixels) runs as a fixed-point integer program.

How: activations are integers ``a`` standing for ``a·2^-ACT_FRAC_BITS``; weights
are integers with a per-layer power-of-two scale. The program runs in float64,
where every product and partial sum is an integer of magnitude below 2^53, so
it is exact whatever the summation order, kernel or thread count. Between
layers activations are re-quantized with ``floor(v·2^-s + ½)`` (a power-of-two
scaling, exact) and clamped to ``±ACT_LIMIT``; this clamp is what makes the
2^53 bound a guarantee rather than a hope (checked per layer at construction).

Speed, with the same integers: convolutions run as sums over taps of shifted
slices of the padded input, band by band so that each band's accumulator is
rounded (and an inverse GDN after it applied) while it is in cache; the widest
layers multiply on exact int8 kernels as sums of int8 digits where the
machine has them (:mod:`vaecodec.intmm`), else in Winograd's domain
(:class:`~vaecodec.winograd.WinogradPhase`: fewer float64 products, integer transforms, bounds
proven at construction). Between layers activations are stored as float32,
which holds them exactly (:class:`_Step`). Any path gives the same integers,
so which one ran never shows in the pixels.

Supported layers: Conv2d, ConvTranspose2d, ReLU and the inverse simplified
GDN (a product with a 1×1 convolution of ``|a|``, no square root).

Typical workflow::

    program = FixedPointProgram.from_sequential(model.synthesis)   # exact from fp16/fp32 weights
    a = to_fixed(y_hat)          # or integers computed exactly upstream
    out = program.run(a)         # float64 tensor holding integers

This module knows nothing of files, bytes or entropy coding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .intmm import DigitMatrix, digits_of, int_mm_pays
from .model import SimplifiedGDN
from .winograd import WinogradPhase

__all__ = ["ACT_FRAC_BITS", "ACT_LIMIT", "FixedPointProgram", "checkerboard_inputs", "checkerboard_weights",
           "conv_of_checkerboard_at", "round_shift"]

ACT_FRAC_BITS = 12
ACT_LIMIT = 2**20
WEIGHT_BITS = 14
EXACT_LIMIT = 2.0**53
_HALF = torch.tensor(0.5, dtype=torch.float64)


def round_shift(v: torch.Tensor, shift: int) -> torch.Tensor:
    """floor(v·2^-shift + ½) for float64 tensors holding integers (exact, round half up)."""
    return torch.floor(v * (2.0**-shift) + 0.5)


def _round_shift_(v: torch.Tensor, shift: int) -> torch.Tensor:
    """In-place round_shift, for intermediates nobody else holds."""
    return v.mul_(2.0**-shift).add_(0.5).floor_()


def _weight_shift(w: torch.Tensor) -> int:
    """Power-of-two scale so that max|round(w·2^s)| ≤ 2^WEIGHT_BITS (frexp: exact)."""
    peak = float(w.abs().max())
    if peak == 0.0:
        return 0
    _, exponent = math.frexp(peak)  # peak = m·2^e, m in [0.5, 1)
    return WEIGHT_BITS - exponent


@dataclass
class _IntConv:
    weight: torch.Tensor  # float64 integers
    bias: torch.Tensor  # float64 integers, in units of 2^-(shift + ACT_FRAC_BITS)
    shift: int
    stride: int
    padding: int
    output_padding: int
    transposed: bool

    def __post_init__(self):
        self._checkerboard = {}  # parity → checkerboard_taps(parity)
        self._taps = _taps_of(self)
        # The bias joins the rounding's half: floor((Σ + b)·2^-s + ½) = floor((Σ + b + 2^(s-1))·2^-s), every
        # partial sum an integer below 2^53 (the layer's bound) and the scaling a power of two: exact.
        self._bias_half = (self.bias + 2.0 ** (self.shift - 1))[:, None]
        k = self.weight.shape[2]
        self._upsamples = self.transposed and k + self.output_padding - 2 * self.padding == self.stride
        if self.transposed and self._upsamples and self._taps is None:  # the weights as _conv_transpose_by_columns reads them: (cout·k², cin)
            cin, cout = self.weight.shape[:2]
            self._columns = self.weight.permute(1, 2, 3, 0).reshape(cout * k * k, cin).contiguous()

    def __call__(self, a: torch.Tensor, store: torch.dtype = torch.float64) -> torch.Tensor:
        """The layer's rounded, clamped output as ``store`` (float64, or float32: see :class:`_Step`) from
        ``a`` in either."""
        # Integer sums are exact in any order, so the bias may be added inside the kernel, and the
        # tap decomposition below gives the same integers as torch's kernel.
        if self._taps is not None:
            return _correlate_by_taps(a, self._taps, self.shift, self._bias_half, store=store)
        elif self.transposed and self._upsamples:
            return _conv_transpose_by_columns(a, self, store)
        a = a.to(torch.float64)
        if self.transposed:
            acc = F.conv_transpose2d(a, self.weight, self.bias, self.stride, self.padding, self.output_padding)
        else:
            acc = F.conv2d(a, self.weight, self.bias, self.stride, self.padding)
        return _round_shift_(acc, self.shift).clamp_(-ACT_LIMIT, ACT_LIMIT).to(store)

    def checkerboard_taps(self, parity: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The taps (ky, kx) with ky + kx of ``parity`` (t, 2), and their weights (out, c·t) in (channel, tap)
        order: what :func:`conv_of_checkerboard_at` multiplies, made once per layer and parity."""
        cached = self._checkerboard.get(parity)
        if cached is None:
            cached = self._checkerboard[parity] = checkerboard_weights(self.weight, parity)
        return cached

    def bound(self) -> float:
        fan_in = self.weight[0].numel() if not self.transposed else self.weight[:, 0].numel()
        # The rounding's half joins the sums on the tap paths (see __post_init__).
        return fan_in * float(self.weight.abs().max()) * ACT_LIMIT + float(self.bias.abs().max()) + 2.0 ** self.shift


PHASE_MIN_OUT_CHANNELS = 16
"""Transposed convolutions with at least this many outputs run by phases (below, a GEMM is too thin to pay)."""

INT8_MIN_OUT_CHANNELS = 128
INT8_MIN_TERMS = 1024
"""Layers with at least this many outputs, and at least this many terms in every output's sum (taps × input
channels), multiply on exact int8 kernels where the machine has them (:mod:`vaecodec.intmm`). Measured
on the shipped model (1 thread, a Kodak image): the synthesis' first upsampling (256 → 128, 1024 to 2304
terms) 16 ms a tile instead of 26, the hyper-synthesis' last convolution (192 → 512, 1728 terms) 25 ms
instead of 38 for the whole hyper-decoder; narrower or shorter products gained nothing or lost (the
entropy parameters' 1×1 layers, 256 to 640 terms: 8 ms more a pass), too small to pay for splitting
into digits and joining them."""


@dataclass
class _Taps:
    """A convolution as ``stride``² output phases, each a sum over a few taps of stride-1 shifted inputs.

    ``phases``: (row phase, column phase, the taps' input offsets (dy, dx), their weights side by side
    (cout, taps·cin), float64 integers); ``digits``: the same weights as :class:`~vaecodec.intmm.DigitMatrix`
    per phase where the layer runs on int8 kernels, else None; ``winograd``: each phase's
    :class:`~vaecodec.winograd.WinogradPhase` where the float64 path multiplies in Winograd's domain, else None.
    """

    stride: int
    before: int  # zero padding before the input, rows and columns
    after: int
    phases: list
    digits: list | None
    winograd: "list[WinogradPhase] | None" = None  # per phase, where the layer multiplies in Winograd's domain


def _taps_of(conv: _IntConv) -> _Taps | None:
    """The taps of a transposed convolution whose output is exactly ``stride`` × its input (the decoder's
    upsampling layers), or of a stride-1 'same' convolution (one phase); None where torch's kernel is kept.

    Transposed: output row ``stride·m + a`` (phase ``a``) sums input rows ``m + d``
    weighted by kernel row ``k = a + padding − stride·d``: each phase is an ordinary
    stride-1 correlation with a few taps. Stride 1: tap (ky, kx) reads offset
    (ky − padding, kx − padding).
    """
    s, p = conv.stride, conv.padding
    if conv.transposed:
        _, cout, kh, kw = conv.weight.shape
        if cout < PHASE_MIN_OUT_CHANNELS or kh != kw or kh + conv.output_padding - 2 * p != s:
            return None
        taps = [[(k, (a + p - k) // s) for k in range(kh) if (a + p - k) % s == 0] for a in range(s)]
        offsets = [d for phase in taps for _, d in phase]
        if not all(taps) or min(offsets) > 0 or max(offsets) < 0:  # a phase without taps, or one-sided padding
            return None
        phases = [(py, px, [(dy, dx) for _, dy in rows for _, dx in cols],
                   torch.cat([conv.weight[:, :, ky, kx].t() for ky, _ in rows for kx, _ in cols], 1).contiguous())
                  for py, rows in enumerate(taps) for px, cols in enumerate(taps)]
        before, after = -min(offsets), max(offsets)
    else:
        cout, _, kh, kw = conv.weight.shape
        if s != 1 or kh != kw or kh % 2 == 0 or p != kh // 2:
            return None
        chosen = [(ky, kx) for ky in range(kh) for kx in range(kw)]
        phases = [(0, 0, [(ky - p, kx - p) for ky, kx in chosen],
                   torch.cat([conv.weight[:, :, ky, kx] for ky, kx in chosen], 1).contiguous())]
        before = after = p
    wide = cout >= INT8_MIN_OUT_CHANNELS and min(w.shape[1] for *_, w in phases) >= INT8_MIN_TERMS
    digits = [DigitMatrix(w) for *_, w in phases] if wide else None
    winograd = None
    cin = phases[0][3].shape[1] // len(phases[0][2])
    if cin >= WINOGRAD_MIN_IN_CHANNELS:
        bias_half = conv.bias[:, None] + 2.0 ** (conv.shift - 1)
        winograd = [WinogradPhase.of(offsets, w, bias_half, ACT_LIMIT, EXACT_LIMIT) for *_, offsets, w in phases]
        winograd = None if None in winograd else winograd
    return _Taps(s, before, after, phases, digits, winograd)


WINOGRAD_MIN_IN_CHANNELS = 192
"""Layers on the taps path with at least this many input channels multiply in Winograd's domain on the
float64 path (:class:`~vaecodec.winograd.WinogradPhase`). Below it the transforms' elementwise passes cost
about what the products they save. On the shipped model (1 thread, this project's AVX2 machine) the hyper-synthesis'
192 → 512 3×3 layer and the synthesis' 256 → 128 upsampling gain; Winograd also on the 128 → 64 and
64 → 64 upsamplings gained nothing more (``benchmarks/exact_paths.py`` pairs the forms), so only these
two layers hold transformed weights (~13 MB each)."""

WINOGRAD_BAND_TILES = 512
"""2×2 output tiles per band of a Winograd phase: a band's transformed inputs and products stay in cache."""


def _correlate_by_winograd(a: torch.Tensor, taps: _Taps, shift: int, epilogue: "_IntInverseGDN | None" = None,
                           store: torch.dtype = torch.float64) -> torch.Tensor:
    """:func:`_correlate_by_taps` on the float64 path for a layer with Winograd phases: the same integers,
    each phase's 2×2 output tiles band by band (rounded, clamped and the epilogue applied while in cache)."""
    scratch = []  # the epilogue's, made for the first block (a first band's are the largest)

    def finish(block: torch.Tensor, phase: WinogradPhase) -> None:
        block.mul_(2.0 ** -(shift + phase.log2)).floor_().clamp_(-ACT_LIMIT, ACT_LIMIT)
        if epilogue is not None:
            scratch or scratch.append(block.new_empty(2, block.numel()))
            epilogue.apply_(block, scratch[0])

    positions = [(py, px) for py, px, *_ in taps.phases]
    return winograd_by_bands(a, taps.stride, taps.before, taps.after, positions, taps.winograd, finish, store)


def winograd_by_bands(a: torch.Tensor, stride: int, before: int, after: int, positions: list, phases: list,
                      finish, store: torch.dtype) -> torch.Tensor:
    """A stride-``stride`` upsampling (or, with ``stride`` 1, a correlation) of ``a`` (n, cin, h, w) whose
    output phases ``positions`` ((row, column) each) are Winograd ``phases``
    (:class:`~vaecodec.winograd.WinogradPhase`): each phase's 2×2 output tiles band by band, every block
    (cout, tiles) handed to ``finish(block, phase)`` while in cache, to turn its sums (×2^phase.log2, with
    the phase's bias) into the stored values in place. The first band's blocks are the largest.

    The input is zero-padded once more row and column than the taps read, so
    that an odd height or width makes whole tiles; their extra outputs are
    dropped at the end.
    """
    n, cin, h, w = a.shape
    s = stride
    cout = phases[0].weights.shape[2]
    tiles_y, tiles_x = (h + 1) // 2, (w + 1) // 2
    band = max(1, WINOGRAD_BAND_TILES // tiles_x)
    count = min(band, tiles_y) * tiles_x
    rows = 2 * min(band, tiles_y) + 3  # the most rows a band's patches cover (α ≤ 4)
    f64 = dict(dtype=torch.float64)
    buffers = (a.new_empty(4, cin * rows * tiles_x, **f64), a.new_empty(cin * count, **f64),
               a.new_empty(4, cout * count, **f64), a.new_empty(2, cout * count, **f64),
               a.new_empty(4, cout * count, **f64))
    out = a.new_empty(n, cout, tiles_y, 2, s, tiles_x, 2, s, dtype=store)
    for i in range(n):
        padded = F.pad(a[i].to(torch.float64), (before, after + 1, before, after + 1))
        for t0 in range(0, tiles_y, band):
            t1 = min(tiles_y, t0 + band)
            for (py, px), phase in zip(positions, phases):
                blocks = phase.band(padded, before + 2 * t0, before, t1 - t0, tiles_x, buffers)
                for k, block in enumerate(blocks):
                    finish(block, phase)
                    out[i, :, t0:t1, k // 2, py, :, k % 2, px] = block.view(cout, t1 - t0, tiles_x)
    out = out.view(n, cout, 2 * tiles_y * s, 2 * tiles_x * s)
    return out if (2 * tiles_y, 2 * tiles_x) == (h, w) else out[:, :, :h * s, :w * s].contiguous()


def _padded_rows_into(window: torch.Tensor, a: torch.Tensor, first: int, stop: int, before: int, wp: int) -> None:
    """Rows ``first`` … ``stop − 1`` of ``a`` (c, h, w), zero outside 0 … h − 1, into ``window`` (c, L) as float64
    rows of width ``wp`` starting at column ``before``: what the taps of one band of output rows read, laid out
    as :func:`_flat_padded` lays out the whole input.

    Why: the float64 copy of a whole layer's padded input was the decoder's
    largest buffer (64 channels at half the output resolution: 51 MB for a
    Kodak image), written once and read back from memory band by band, its
    pages faulted in on every call. A band's rows are a window of ~1.4 MB,
    filled just before its products read it (in cache) and reused. Its padding
    columns are never written (zero since the window was made); rows past
    ``stop − first`` keep an earlier band's values, which only the outputs in
    the padding columns read (computed, then dropped, as on the whole input).
    """
    c, h, w = a.shape
    grid = window[:, :(stop - first) * wp].view(c, stop - first, wp)
    y0, y1 = max(first, 0), min(stop, h)
    grid[:, :y0 - first].zero_()
    grid[:, y1 - first:].zero_()
    grid[:, y0 - first:y1 - first, before:before + w] = a[:, y0:y1]


def _flat_padded(a: torch.Tensor, before: int, after: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``a`` (n, c, h, w) zero-padded on every side and flattened row-major to (n, c, L) as ``dtype``, with
    ``before + after`` more zeros at the end: the slice a tap at offset (dy, dx) reads for a whole row-major
    output, ``[(before + dy)·w' + before + dx :][:h·w']`` with w' = w + before + after, then stays inside."""
    n, c, h, w = a.shape
    if before == after == 0:  # 1×1 layers: the input as it is
        return a.reshape(n, c, h * w).to(dtype)
    wp = w + before + after
    flat = a.new_zeros(n, c, (h + before + after) * wp + before + after, dtype=dtype)  # one tensor, one copy
    flat[:, :, :(h + before + after) * wp].view(n, c, -1, wp)[:, :, before:before + h, before:before + w] = a
    return flat


BAND_POSITIONS = 2048
"""Positions (row-major, on the padded width) per band of a layer's output: each band's accumulator
(channels × band, ~1 MB in float64 at 64 channels) stays in cache through its rounding, clamping and an
inverse GDN after it, instead of each pass streaming a whole tile's activations through memory (and a
fresh tile-sized tensor per pass costing its page faults). Measured on the shipped model (1 thread, a
Kodak tile): the inverse GDN at 1/2 resolution 21 ms instead of 52, the upsampling before it 73 instead
of 80."""


def _correlate_by_taps(a: torch.Tensor, taps: _Taps, shift: int, bias: torch.Tensor,
                       epilogue: "_IntInverseGDN | None" = None, store: torch.dtype = torch.float64) -> torch.Tensor:
    """The layer's output, rounded (``floor((Σ + bias)·2^-shift)``, ``bias`` (cout, 1) including the
    rounding's half) and clamped, then ``epilogue`` (an inverse GDN) applied: phase by phase, band by band.

    Why: torch's float64 kernels (a GEMM, then col2im scattering a 25× larger
    column buffer; or im2col, then a GEMM) ran the decoder's widest layers at a
    third of this speed. With the input padded and flattened row-major, the
    input seen by tap (dy, dx) for every output of a phase is one contiguous
    slice, so in float64 each tap is a plain ``addmm`` into the phase's
    accumulator; on int8 kernels the taps' slices of the input's digits are
    stacked into one operand and the phase is one exact digit product
    (:class:`~vaecodec.intmm.DigitMatrix`). On the float64 path the padded
    input is laid out one band of rows at a time, in a window the band's
    products then read from cache (:func:`_padded_rows_into`). Rows are computed on the padded
    width and the extra columns dropped when the phase is written into its
    interleaved place. Every value is an integer sum below 2^53 (the layer's
    bound), so the result equals torch's kernel's exactly, on either path. A
    layer with Winograd phases runs them instead on the float64 path
    (:func:`_correlate_by_winograd`). ``store``: the output's dtype (see :class:`_Step`).
    """
    on_int8 = taps.digits is not None and int_mm_pays()
    if taps.winograd is not None and not on_int8:
        return _correlate_by_winograd(a, taps, shift, epilogue, store)
    n, cin, h, w = a.shape
    s, before, after = taps.stride, taps.before, taps.after
    cout = taps.phases[0][3].shape[0]
    wp = w + before + after
    rows = max(1, BAND_POSITIONS // wp)
    f64 = dict(dtype=torch.float64)
    flat = window = None
    if on_int8 or before == after == 0:  # the digits of the whole input; or a 1×1 layer's input as it is
        flat = _flat_padded(a, before, after)
    else:  # one band's padded input rows at a time, in float64 (see _padded_rows_into); zero where never written
        window = a.new_zeros(cin, (min(h, rows) + before + after) * wp + before + after, **f64)
    out = a.new_empty(n, cout, h, s, w, s, dtype=store)
    scratch = a.new_empty(3, cout * min(h, rows) * wp, **f64)  # the accumulator and the epilogue's two, reused
    for i in range(n):
        digits = digits_of(flat[i]) if on_int8 else None  # (cin, digits, L), made once for every band and phase
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            length = (r1 - r0) * wp
            if window is not None:
                _padded_rows_into(window, a[i], r0 - before, r1 + after, before, wp)
            src, base = (window, 0) if window is not None else (flat[i], r0 * wp)  # where padded row r0 starts
            for k, (py, px, offsets, weights) in enumerate(taps.phases):
                if digits is not None:
                    starts = [(before + dy + r0) * wp + before + dx for dy, dx in offsets]
                    acc = taps.digits[k].matmul_digits(torch.cat([digits[:, :, t:t + length] for t in starts]))
                    acc.add_(bias)
                else:  # the first tap's product starts from the bias
                    acc = _block(scratch[0], cout, length)
                    for j, (dy, dx) in enumerate(offsets):
                        t = base + (before + dy) * wp + before + dx
                        x, wt = src[:, t:t + length], weights[:, j * cin:(j + 1) * cin]
                        torch.addmm(bias, wt, x, out=acc) if j == 0 else acc.addmm_(wt, x)
                acc.mul_(2.0**-shift).floor_().clamp_(-ACT_LIMIT, ACT_LIMIT)
                if epilogue is not None:
                    epilogue.apply_(acc, scratch[1:])
                out[i, :, r0:r1, py, :, px] = acc.view(cout, r1 - r0, wp)[:, :, :w]
    return out.view(n, cout, h * s, w * s)


COLUMN_POSITIONS = 4096
"""Input positions per band of a thin transposed convolution: its columns (outputs × k² of them per position,
75 for the synthesis' last layer) stay ~2.5 MB in float64: timed on that layer against 2048 (more bands, more
small additions) and 8192 (the product's output leaves the cache), 4096 was the fastest here, and again with the
col2im form against 2048, 8192 and 16384 (scratch timing)."""


def _conv_transpose_by_columns(a: torch.Tensor, conv: _IntConv, store: torch.dtype = torch.float64) -> torch.Tensor:
    """A transposed convolution whose output is ``stride`` × its input and which has few outputs (the decoder's
    last layer, too thin for phases), rounded and clamped: one matrix product per band of input rows into
    columns, each column added into the output where its tap lands.

    Why: the layer has 3 outputs, so by phases each product would be 3 rows
    thin, and torch's float64 kernel for it was the decoder's slowest step
    per multiply–accumulate (``benchmarks/decoder_layers.py``). Seen from the input, every position meets
    every weight once: the columns ``W^T @ X`` (outputs × k² rows, an
    ordinary product with the input channels as its inner dimension) hold all
    the products, and output ``(s·i + ky − p, s·j + kx − p)`` is the sum of
    column ``(c, ky, kx)`` at input ``(i, j)`` over the taps that land there:
    torch's col2im (``F.fold``) per band, added into one padded accumulator
    (faster than k² strided additions per band, the same integers:
    ``benchmarks/coding_paths.py`` pairs the two). Integer sums below 2^53 (the
    layer's bound), so the values equal torch's kernel's in any order of bands
    and taps.
    """
    n, cin, h, w = a.shape
    s, p, k = conv.stride, conv.padding, conv.weight.shape[2]
    cout = conv.weight.shape[1]
    rows = max(1, COLUMN_POSITIONS // w)
    out = a.new_empty(n, cout, s * h, s * w, dtype=store)
    for i in range(n):
        # Output row o = s·i + ky − p sits at row o + p.
        acc = a.new_zeros(cout, s * h + k, s * w + k, dtype=torch.float64)
        flat = a[i].reshape(cin, h * w)
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            columns = conv._columns @ flat[:, r0 * w:r1 * w].to(torch.float64)
            # col2im: column (c, ky, kx) at input (i, j) lands on (s·i + ky, s·j + kx) of the band's rows
            acc[:, s * r0:s * r1 + k - s, :s * w + k - s] += F.fold(
                columns[None], (s * (r1 - r0) + k - s, s * w + k - s), k, stride=s)[0]
        # floor((Σ + b)·2^-shift + ½) as floor((Σ + b + 2^(shift−1))·2^-shift): the same integers (see _IntConv)
        mine = acc[:, p:p + s * h, p:p + s * w].add_(conv._bias_half[:, :, None])
        mine.mul_(2.0**-conv.shift).floor_()
        if store == torch.float64:
            torch.clamp(mine, -ACT_LIMIT, ACT_LIMIT, out=out[i])
        else:
            out[i] = mine.clamp_(-ACT_LIMIT, ACT_LIMIT)
    return out


def _block(buffer: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """A contiguous (rows, cols) view at the start of a flat scratch buffer."""
    return buffer[:rows * cols].view(rows, cols)


def conv_of_checkerboard_at(layer: _IntConv, a: torch.Tensor, positions: torch.Tensor,
                            same_colour: bool = False) -> torch.Tensor:
    """The integer layer (stride 1, odd square kernel, 'same' padding) of one image ``a`` (1, c, h, w) that is
    zero on one colour of a checkerboard, at the given positions (flat indices y·w + x) of the other colour
    (``same_colour``: of the colour where ``a`` is not zero) only: (1, out, len(positions)), exact.

    Why: the context network reads the anchors' ŷ, which is zero at every
    non-anchor, and its output is used only at the non-anchors. Seen from
    there, only the taps at an odd offset (dy + dx) touch an anchor: 12 of a
    5×5 kernel's 25; and only half the positions are wanted. So the 12 taps'
    inputs at the wanted positions are gathered side by side and the layer is
    one matrix product: a quarter of the full convolution's work. Integer sums
    are exact in any order, so the values equal the full convolution's. A
    channel context reads its own pass's colour: the taps at an even offset
    (5 of a 3×3 kernel's 9).

    The gather is whole rows of contiguous copies, not an index per input: along
    a row the positions of one colour are every second column, so split by
    column parity every tap reads a contiguous run of its half for all of a
    row's positions (faster than one index per tap and position, and the same
    words: ``benchmarks/coding_paths.py`` pairs the two).
    """
    k = layer.weight.shape[2]
    if layer.transposed or layer.stride != 1 or k % 2 == 0 or layer.padding != k // 2:
        raise ValueError("conv_of_checkerboard_at takes a stride-1 'same' convolution with an odd kernel")
    if a.shape[0] != 1:
        raise ValueError("conv_of_checkerboard_at takes one image")
    if len(positions) == 0:
        return a.new_empty(1, layer.weight.shape[0], 0)
    taps, weights = layer.checkerboard_taps(1 if not same_colour else 0)  # tap parity: ky + kx, as dy + dx
    inputs, wanted = checkerboard_inputs(a, positions, k, taps, torch.float64)
    acc = torch.addmm(layer.bias[:, None], weights, inputs)
    if wanted is not None:
        acc = acc[:, wanted]
    return _round_shift_(acc, layer.shift).clamp_(-ACT_LIMIT, ACT_LIMIT)[None]


def checkerboard_weights(weight: torch.Tensor, parity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A convolution's taps (ky, kx) with ky + kx of ``parity`` (t, 2), and its ``weight`` (out, c, k, k) at
    them as (out, c·t) in (channel, tap) order: the rows :func:`checkerboard_inputs` lays out."""
    k = weight.shape[2]
    taps = [(ky, kx) for ky in range(k) for kx in range(k) if (ky + kx) % 2 == parity]
    stacked = torch.stack([weight[:, :, ky, kx] for ky, kx in taps], 2)
    return torch.tensor(taps), stacked.reshape(stacked.shape[0], -1)


def checkerboard_inputs(a: torch.Tensor, positions: torch.Tensor, k: int, taps: torch.Tensor,
                        dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What a k×k 'same' convolution's ``taps`` (t, 2) read of one image ``a`` (1, c, h, w) for the output
    ``positions`` (flat, ascending, one colour of the checkerboard): (inputs (c·t, rows·count) as ``dtype``,
    in (channel, tap) order, the columns of whole rows of that colour; ``wanted``: the columns that are
    ``positions``, or None where they all are). See :func:`conv_of_checkerboard_at`."""
    n, c, h, w = a.shape
    if n != 1:
        raise ValueError("conv_of_checkerboard_at takes one image")
    p = k // 2
    rows, cols = positions // w, positions % w
    r0, r1 = int(rows.min()), int(rows.max()) + 1
    colour = int(rows[0] + cols[0]) % 2  # of y + x at the positions asked for
    if not bool(((rows + cols) % 2 == colour).all()):
        raise ValueError("conv_of_checkerboard_at takes positions of one colour of the checkerboard")
    # Only the rows these positions read (r0 − p .. r1 + p), zero-padded (one more column on the right, so
    # every row's slices below have the same length), split by column parity: memory follows the positions.
    band = a[0, :, max(0, r0 - p):min(h, r1 + p)]
    padded = F.pad(band, (p, p + 1, max(0, p - r0), max(0, r1 + p - h)))
    halves = (padded[:, :, 0::2].contiguous(), padded[:, :, 1::2].contiguous())
    # Row y's positions of this colour are x = first(y) + 2j, j < count = ⌈w/2⌉ (one past the row's end where
    # w is odd: computed, then dropped). Tap (ky, kx) reads padded column first(y) + kx + 2j: in one of the
    # halves, a contiguous run of columns. So the taps' inputs for every such position of the rows are
    # copied tap by tap and row parity, whole rows at a time: (c, taps, rows, count), read as (c·taps,
    # rows·count), the weights' order.
    n_rows, count = r1 - r0, (w + 1) // 2
    inputs = a.new_empty(c, len(taps), n_rows, count, dtype=dtype)
    for e in range(min(2, n_rows)):  # rows r0 + e, r0 + e + 2, …
        first = (colour - r0 - e) % 2
        for t, (ky, kx) in enumerate(taps.tolist()):
            start = first + kx
            inputs[:, t, e::2] = halves[start % 2][:, ky + e:ky + n_rows:2, start // 2:start // 2 + count]
    wanted = (rows - r0) * count + (cols - (colour - rows) % 2) // 2
    if len(positions) == n_rows * count and bool((wanted == torch.arange(len(positions))).all()):
        wanted = None  # else a chunk's partial first and last rows, or the extra column of an odd width
    return inputs.view(c * len(taps), n_rows * count), wanted


@dataclass
class _IntReLU:
    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        return a.clamp_(min=0)

    def bound(self) -> float:
        return ACT_LIMIT


@dataclass
class _IntInverseGDN:
    """out = a·(β + Γ|a|), with the norm re-quantized to ACT_FRAC_BITS first."""

    gamma: torch.Tensor  # (C, C, 1, 1) float64 integers
    beta: torch.Tensor  # (C,) float64 integers, in units of 2^-(shift + ACT_FRAC_BITS)
    shift: int

    def __post_init__(self):
        self._matrix = self.gamma[:, :, 0, 0].contiguous()
        self._bias = (self.beta + 2.0 ** (self.shift - 1))[:, None]  # with the rounding's half (exact)

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        """In place (on a float64 ``a``; float32 comes back as a float64 copy), ``BAND_POSITIONS`` positions at a
        time (see there)."""
        a = a.to(torch.float64)
        n, c, h, w = a.shape
        flat = a.view(n, c, h * w)
        scratch = a.new_empty(2, c * min(h * w, BAND_POSITIONS))
        for i in range(n):
            for p0 in range(0, h * w, BAND_POSITIONS):
                self.apply_(flat[i, :, p0:p0 + BAND_POSITIONS], scratch)
        return a

    def apply_(self, x: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
        """The layer on a (C, positions) block, in place; ``scratch``: two flat float64 buffers of at least
        its size for the intermediates (else fresh ones)."""
        c, p = x.shape
        if scratch is None:
            scratch = x.new_empty(2, c * p)
        magnitude = torch.abs(x, out=_block(scratch[0], c, p))
        norm = torch.addmm(self._bias, self._matrix, magnitude, out=_block(scratch[1], c, p))
        norm.mul_(2.0**-self.shift).floor_().clamp_(0, ACT_LIMIT)
        # floor(norm·x·2^-12 + ½) in one fused pass: the product (≤ 2^40) and the power-of-two scalings
        # are exact in any order.
        return torch.addcmul(_HALF, norm, x, value=2.0**-ACT_FRAC_BITS, out=x).floor_().clamp_(-ACT_LIMIT, ACT_LIMIT)

    def bound(self) -> float:
        c = self.gamma.shape[1]
        return max(c * float(self.gamma.abs().max()) * ACT_LIMIT + float(self.beta.abs().max()), float(ACT_LIMIT) ** 2)


@dataclass
class _Step:
    """What :meth:`FixedPointProgram.run` calls: a layer, or a convolution by taps with the inverse GDN after it
    applied to each band while in cache (``epilogue``: the same integers as one layer after the other).

    ``store``: the dtype of a convolution step's output (a ReLU keeps its input's,
    a lone inverse GDN gives float64). Between a program's layers it is float32,
    which holds the activations' integers (|a| ≤ 2^20 < 2^24) exactly in half
    the memory: the widest activations (64 channels at half the output
    resolution, 24 MiB for a Kodak image instead of 48) are written and read at
    half the bandwidth, and stay under glibc's largest mmap threshold, so their
    memory is reused instead of freshly mapped and page-faulted on every call
    (``benchmarks/exact_paths.py`` counts the page faults). The products still
    run in float64 (or as exact int8 digits); the last step stores float64.
    """

    layer: "_IntConv | _IntReLU | _IntInverseGDN"
    epilogue: "_IntInverseGDN | None" = None
    store: torch.dtype = torch.float64

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        if self.epilogue is not None:
            conv = self.layer
            return _correlate_by_taps(a, conv._taps, conv.shift, conv._bias_half, self.epilogue, self.store)
        if isinstance(self.layer, _IntConv):
            return self.layer(a, self.store)
        return self.layer(a)


def _quantize_conv(layer: nn.Conv2d | nn.ConvTranspose2d) -> _IntConv:
    w = layer.weight.detach().to(torch.float64)
    b = layer.bias.detach().to(torch.float64)
    s = _weight_shift(w)
    transposed = isinstance(layer, nn.ConvTranspose2d)
    return _IntConv(
        weight=torch.round(w * 2.0**s),
        bias=torch.round(b * 2.0 ** (s + ACT_FRAC_BITS)),
        shift=s,
        stride=layer.stride[0],
        padding=layer.padding[0],
        output_padding=layer.output_padding[0] if transposed else 0,
        transposed=transposed,
    )


def _quantize_igdn(layer: SimplifiedGDN) -> _IntInverseGDN:
    if not layer.inverse:
        raise ValueError("only the inverse simplified GDN runs in fixed point (the forward one divides)")
    beta, gamma = (t.detach().to(torch.float64) for t in layer.effective_params())
    s = _weight_shift(gamma)
    return _IntInverseGDN(
        gamma=torch.round(gamma * 2.0**s)[:, :, None, None],
        beta=torch.round(beta * 2.0 ** (s + ACT_FRAC_BITS)),
        shift=s,
    )


class FixedPointProgram:
    """A feed-forward stack of layers evaluated exactly in integers (see module docstring).

    Construction quantizes the weights (deterministically: power-of-two scales
    from ``frexp`` and round-half-even), and checks that no partial sum can
    reach 2^53. ``run`` takes and returns float64 tensors holding integers in
    units of ``2^-ACT_FRAC_BITS``.
    """

    def __init__(self, layers: list):
        self.layers = layers
        for layer in layers:
            if layer.bound() >= EXACT_LIMIT:
                raise ValueError(f"fixed-point layer {layer!r:.60} could exceed 2^53; weights out of range")
        # What run() calls: a convolution by taps followed by an inverse GDN runs as one step, the GDN on
        # each band while it is in cache (the same integers as one layer after the other).
        self._steps: list[_Step] = []
        for layer in layers:
            previous = self._steps[-1] if self._steps else None
            if (isinstance(layer, _IntInverseGDN) and previous is not None and previous.epilogue is None
                    and isinstance(previous.layer, _IntConv) and previous.layer._taps is not None):
                previous.epilogue = layer
            else:
                self._steps.append(_Step(layer))
        # float32 between layers; the last step that is not a ReLU (which keeps its input's dtype) stores float64.
        last = max((i for i, step in enumerate(self._steps) if not isinstance(step.layer, _IntReLU)), default=-1)
        for step in self._steps[:last]:
            step.store = torch.float32

    @classmethod
    def from_sequential(cls, seq: nn.Sequential) -> "FixedPointProgram":
        layers = []
        for m in seq:
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                layers.append(_quantize_conv(m))
            elif isinstance(m, nn.ReLU):
                layers.append(_IntReLU())
            elif isinstance(m, SimplifiedGDN):
                layers.append(_quantize_igdn(m))
            else:
                raise TypeError(f"no fixed-point form for {type(m).__name__}")
        return cls(layers)

    @property
    def out_channels(self) -> int:
        conv = [layer for layer in self.layers if isinstance(layer, _IntConv)][-1]
        return conv.weight.shape[1] if conv.transposed else conv.weight.shape[0]

    def at_checkerboard(self, a: torch.Tensor, positions: torch.Tensor, same_colour: bool = False) -> torch.Tensor:
        """A one-convolution program at some positions of one colour of the checkerboard only:
        :func:`conv_of_checkerboard_at` of its layer."""
        return conv_of_checkerboard_at(self.layers[0], a, positions, same_colour)

    @torch.no_grad()
    def run(self, a: torch.Tensor) -> torch.Tensor:
        if a.dtype != torch.float64:
            raise TypeError("fixed-point programs take float64 tensors holding integers")
        for step in self._steps:
            a = step(a)
        return a


def to_fixed(v: torch.Tensor) -> torch.Tensor:
    """Float values → fixed-point integers (float64), clamped to the activation range."""
    return torch.round(v.to(torch.float64) * 2.0**ACT_FRAC_BITS).clamp_(-ACT_LIMIT, ACT_LIMIT)
