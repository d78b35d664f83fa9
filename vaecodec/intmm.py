"""Exact integer matrix products on int8 kernels: the decoder's matrix products, faster, same integers.

Why: the exact programs (:mod:`vaecodec.fixedpoint`) hold integers in float64,
where a CPU multiplies ~16 pairs per cycle; an int8 × int8 → int32 kernel
(VNNI, AMX) multiplies hundreds. An integer of the fixed-point programs (14-bit
weights, activations up to 21 bits) is a short sum of int8 *digits*,
``v = Σ_i 256^i·d_i`` with every ``d_i`` in [−128, 127], so

    W @ X = Σ_i Σ_j 256^(i+j) · (W_j @ X_i)

where each ``W_j @ X_i`` is an int8 product summed exactly in int32 (at most
K·2^14 per term; K is checked), and the digit products are joined in float64,
where the result (below 2^53, the programs' own bound) is exact. Integer sums do
not depend on order, kernel or thread count, so the result is the float64
product's, bit for bit: files decode the same with this path or without it.

How many digits an activation needs is read from the data (its largest
magnitude): 2 for most of the synthesis (|v| < 32 640, i.e. below ~8 in
2^-12 units), 3 where a value is larger, 1 for small integers. Weights always
take 2 (|w| ≤ 2^14 < 128·256).

``torch._int_mm`` is used only where a probe finds it exact (some int8 kernels
without VNNI saturate 16-bit intermediates) and fast (:func:`int_mm_pays`: on
CPUs without int8 dot-product instructions, such as AVX2-only ones, torch runs
a reference kernel 13–40× slower than float64); elsewhere, and with
``VAECODEC_INT8_KERNEL=float32`` in the environment, callers keep their float64
path (the same integers). ``VAECODEC_INT8_KERNEL=int8`` uses an exact kernel
however slow (for tests that compare the paths).

This module knows nothing of models, files or bytes.
"""

from __future__ import annotations

import os
import time

import torch

from .hardware import float32_products_exact

__all__ = ["DigitMatrix", "digits_of", "int_matmul", "int_mm_is_exact", "int_mm_pays"]

DIGIT_BASE = 256
DIGIT_BITS = 8
TWO_DIGIT_LIMIT = 127 * DIGIT_BASE + 127
"""Largest |v| with two digits: v = lo + 256·hi, lo in [−128, 127], hi in [−128, 127] (−32 896 … 32 639)."""

THREE_DIGIT_LIMIT = 127 * (1 + DIGIT_BASE + DIGIT_BASE**2)
"""Largest |v| with three digits (8 355 711, just under 2^23); the programs' activations stop at 2^20."""

_ACT_TOP = 127
_INT32_LIMIT = 2**31
_FLOAT32_EXACT_K = 1040
"""127²·1040 < 2^24: int8 products of the ±127 range summed over this many terms are exact in float32."""

_INT_MM_EXACT: dict = {}
"""Probe results by oneDNN setting (``torch._int_mm`` may pick another kernel when it changes)."""


def int_mm_is_exact() -> bool:
    """Whether ``torch._int_mm`` gives exact int32 sums here (probed once per oneDNN setting, on sums that
    saturate 16-bit intermediates, which some int8 kernels without VNNI use, with −128 digits, and on thin
    and tiny shapes); if not, :func:`int_matmul` runs exact float32. ``VAECODEC_INT8_KERNEL=float32`` in
    the environment chooses float32 without probing."""
    if os.environ.get("VAECODEC_INT8_KERNEL") == "float32":
        return False  # forced: the float path (for checking that both give the same integers)
    key = torch.backends.mkldnn.is_available() and torch._C._get_mkldnn_enabled()
    if key not in _INT_MM_EXACT:
        g = torch.Generator().manual_seed(0)

        def rand(*shape):
            return torch.randint(-128, 128, shape, generator=g, dtype=torch.int8)

        top = torch.full((32, 2304), _ACT_TOP, dtype=torch.int8)
        bottom = torch.full((2304, 24), _ACT_TOP, dtype=torch.int8)
        low = torch.full((24, 1728), -128, dtype=torch.int8)
        cases = [(top, bottom), (-top, bottom), (low, low.t().contiguous()), (low, -bottom[:1728]),
                 (rand(40, 600), rand(600, 75)), (rand(1, 64), rand(64, 3)), (rand(3, 2304), rand(2304, 128)),
                 (rand(17, 128), rand(128, 128)), (rand(256, 576), rand(576, 300))]
        try:
            _INT_MM_EXACT[key] = all(torch.equal(torch._int_mm(x, w).long(), x.long() @ w.long()) for x, w in cases)
        except (RuntimeError, AttributeError):
            _INT_MM_EXACT[key] = False
    return _INT_MM_EXACT[key]


INT8_SPEEDUP_NEEDED = 6.0
"""How much faster than float64 an int8 product must run for the digit products to pay: a product of
two-digit integers is four int8 products, plus splitting into digits and joining (on AMX, the shipped
model's widest decoder layer ran 1.6× faster so; float64 would need the int8 kernel 4–6× faster)."""

_INT_MM_PAYS: dict = {}


def _best_of(fn, runs: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def int_mm_pays() -> bool:
    """Whether to multiply on ``torch._int_mm``: it is exact here (:func:`int_mm_is_exact`) and at least
    ``INT8_SPEEDUP_NEEDED`` × faster than a float64 product of the same shape (timed once per process and
    oneDNN setting, ~10 ms where int8 kernels are native). Only speed depends on the answer: both paths give
    the same integers. ``VAECODEC_INT8_KERNEL=int8`` skips the timing, ``=float32`` says no."""
    setting = os.environ.get("VAECODEC_INT8_KERNEL")
    if setting == "float32":
        return False
    key = torch.backends.mkldnn.is_available() and torch._C._get_mkldnn_enabled()
    if setting != "int8" and key not in _INT_MM_PAYS:
        g = torch.Generator().manual_seed(0)
        a = torch.randint(-128, 128, (96, 768), generator=g, dtype=torch.int8)
        b = torch.randint(-128, 128, (768, 128), generator=g, dtype=torch.int8)
        a64, b64 = a.double(), b.double()
        try:
            int8_s = _best_of(lambda: torch._int_mm(a, b))
        except (RuntimeError, AttributeError):
            int8_s = float("inf")
        _INT_MM_PAYS[key] = _best_of(lambda: a64 @ b64) > INT8_SPEEDUP_NEEDED * int8_s
    return (setting == "int8" or _INT_MM_PAYS[key]) and int_mm_is_exact()


def int_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Exact (L, K) int8 @ (K, N) int8 → int32 with operands in ±127: ``torch._int_mm`` where it pays
    (:func:`int_mm_pays`), else float32 products over chunks of at most 1040 terms (each partial sum an
    integer below 2^24) added in float64; float64 products where float32 ones are not IEEE ones here
    (:func:`vaecodec.hardware.float32_products_exact`)."""
    if int_mm_pays():
        return torch._int_mm(x, w)
    if not float32_products_exact():  # float32 products lowered to bfloat16 or TF32 here: float64 ones, exact
        return (x.double() @ w.double()).to(torch.int32)
    acc = None
    for k0 in range(0, x.shape[1], _FLOAT32_EXACT_K):
        part = (x[:, k0:k0 + _FLOAT32_EXACT_K].float() @ w[k0:k0 + _FLOAT32_EXACT_K].float()).double()
        acc = part if acc is None else acc.add_(part)
    return acc.to(torch.int32)


def num_digits(peak: float) -> int:
    """Digits that hold every integer of magnitude ≤ ``peak``."""
    if peak <= 127:
        return 1
    if peak <= TWO_DIGIT_LIMIT:
        return 2
    if peak <= THREE_DIGIT_LIMIT:
        return 3
    raise ValueError(f"an integer beyond ±{THREE_DIGIT_LIMIT} has no int8 digits here")


def digits_of(x: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """Integers ``x`` (K, ...) (float64 or an integer dtype) → their int8 digits (K, n, ...), low first:
    ``x = Σ_i 256^i·d[:, i]``, each digit in [−128, 127]. ``n`` defaults to the fewest that hold ``x``
    (:func:`num_digits`); a caller who gives ``n`` vouches that they hold it (not checked: a pass fewer).

    The digit axis sits after the first so that slicing along the last axis, then concatenating along
    the first, lays a matrix product's right operand out as (K, n·L), digit-major columns."""
    if n is None:
        n = num_digits(float(x.abs().max())) if x.numel() else 1
    q = x.to(torch.int32)
    out = torch.empty((x.shape[0], n) + tuple(x.shape[1:]), dtype=torch.int8)
    for i in range(n - 1):
        # high = floor((q + 128) / 256) (arithmetic shift), low = q − 256·high in [−128, 127]; in place where
        # possible: these passes run at memory speed, and a fresh large tensor costs more than its pass.
        high = torch.bitwise_right_shift(q.add_(128), DIGIT_BITS)
        out[:, i] = q.bitwise_and_(DIGIT_BASE - 1).sub_(128)
        q = high
    out[:, n - 1] = q  # in range: n was chosen (or checked by the caller) to hold x
    return out


class DigitMatrix:
    """An integer matrix W (N, K) with |W| ≤ 32 639, held as its two int8 digits stacked, [W_0; W_1]
    (2N, K) with ``W = W_0 + 256·W_1``, ready for exact products with digit operands.

    Typical use (the right operand's digits made once, shared by several products)::

        w = DigitMatrix(weight_integers)          # float64 (N, K)
        d = digits_of(x)                          # x: float64 integers (K, L) → int8 (K, n, L)
        y = w.matmul_digits(d)                    # float64 (N, L) == weight_integers @ x, exactly
    """

    def __init__(self, w: torch.Tensor):
        if w.dim() != 2:
            raise ValueError("DigitMatrix takes a matrix")
        n, k = w.shape
        if (float(w.abs().max()) if w.numel() else 0.0) > TWO_DIGIT_LIMIT:
            raise ValueError("a weight beyond ±32 639 has no two int8 digits")
        if 2 * k * 128 * 128 >= _INT32_LIMIT:  # two products of digits added in int32 (the Horner join)
            raise ValueError(f"{k} terms could overflow an int32 sum of digit products")
        d = digits_of(w.t().contiguous(), 2)  # (K, 2, N)
        self.stacked = d.permute(1, 2, 0).reshape(2 * n, k).contiguous()  # [W_0; W_1]
        self.shape = (n, k)

    def matmul_digits(self, d: torch.Tensor) -> torch.Tensor:
        """W @ X for X given as digits ``d`` (K, n, L) (:func:`digits_of`): float64 (N, L), exact."""
        k, n, length = d.shape
        rows = self.shape[0]
        p = torch._int_mm(self.stacked, d.view(k, n * length)).view(2, rows, n, length)
        # Σ_p 256^p·C_p with C_p = Σ_{i+j=p} W_j·X_i, joined high power first (Horner) in float64.
        y = p[1, :, n - 1].double()
        for power in range(n - 1, -1, -1):
            c = p[0, :, power] if power == 0 else torch.add(p[0, :, power], p[1, :, power - 1])
            y = torch.add(c, y, alpha=DIGIT_BASE)
        return y

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """W @ X for float64 integers X (K, L): float64 (N, L), exact."""
        return self.matmul_digits(digits_of(x))
