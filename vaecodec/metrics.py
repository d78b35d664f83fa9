"""Quality and rate metrics: PSNR, MS-SSIM, bits per pixel, Bjøntegaard deltas.

Conventions (those of the learned-compression literature, e.g. CompressAI's
results): PSNR on 8-bit RGB over all three channels, averaged over images as
the mean of per-image PSNR; MS-SSIM (Wang et al. 2003; 5 scales, 11×11
Gaussian window, σ = 1.5) on RGB, averaged over channels; MS-SSIM in dB is
``−10·log10(1 − MS-SSIM)``; bpp is 8·(file bytes)/(pixels).

BD-rate (Bjøntegaard 2001, with the piecewise cubic interpolation used since
VCEG-AL22): log-rate as a monotone cubic (PCHIP) function of quality,
integrated over the overlapping quality range; the mean difference, back in
the linear domain, is the average rate change at equal quality.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["psnr", "ms_ssim", "ms_ssim_db", "bpp", "bd_rate", "pchip", "quality_at_rate"]

_MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def bpp(num_bytes: int, height: int, width: int) -> float:
    return 8.0 * num_bytes / (height * width)


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """PSNR in dB of two uint8 images of the same shape (inf if identical)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _ssim_parts(x: torch.Tensor, y: torch.Tensor, win: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c = x.shape[1]
    wh = win.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    wv = win.view(1, 1, -1, 1).repeat(c, 1, 1, 1)

    def blur(t):
        return F.conv2d(F.conv2d(t, wh, groups=c), wv, groups=c)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    return (lum * cs).mean(dim=(2, 3)), cs.mean(dim=(2, 3))


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM of two uint8 images (H×W or H×W×C), averaged over channels.

    Uses as many of the 5 scales as the image allows (the coarsest scale must
    still hold the 11×11 window); images smaller than 11 pixels fall back to a
    window of their own size. The standard weights are renormalized over the
    scales used.
    """
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    to_t = lambda v: torch.from_numpy(np.array(v if v.ndim == 3 else v[:, :, None], np.float64)).permute(2, 0, 1)[None]  # noqa: E731
    x, y = to_t(a), to_t(b)
    side = min(x.shape[2], x.shape[3])
    size = min(11, side)
    levels = max(1, min(5, 1 + int(math.floor(math.log2(side / size))) if side >= size else 1))
    win = _gaussian_window(size)
    weights = torch.tensor(_MS_SSIM_WEIGHTS[:levels], dtype=torch.float64)
    weights = weights / weights.sum()
    values = []
    for level in range(levels):
        ssim, cs = _ssim_parts(x, y, win)
        values.append(ssim if level == levels - 1 else cs)
        if level < levels - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    stack = torch.stack(values, dim=0).clamp_min(0)  # (levels, 1, C)
    return float(torch.prod(stack ** weights[:, None, None], dim=0).mean())


def ms_ssim_db(value: float) -> float:
    return math.inf if value >= 1 else -10 * math.log10(1 - value)


def pchip(x: np.ndarray, y: np.ndarray):
    """Monotone piecewise-cubic Hermite interpolant (Fritsch–Carlson); returns a callable.

    ``x`` must be strictly increasing. Evaluation outside [x0, xn] is undefined
    (clamped to the ends).
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.size < 2 or np.any(np.diff(x) <= 0):
        raise ValueError("pchip needs at least two strictly increasing x")
    h = np.diff(x)
    delta = np.diff(y) / h
    d = np.zeros_like(y)
    if x.size == 2:
        d[:] = delta[0]
    else:
        for k in range(1, x.size - 1):
            if delta[k - 1] * delta[k] > 0:
                w1, w2 = 2 * h[k] + h[k - 1], h[k] + 2 * h[k - 1]
                d[k] = (w1 + w2) / (w1 / delta[k - 1] + w2 / delta[k])
        for k, (hh, dd) in ((0, (h[0], h[1])), (-1, (h[-1], h[-2]))):
            i0, i1 = (0, 1) if k == 0 else (-1, -2)
            e = ((2 * hh + dd) * delta[i0] - hh * delta[i1]) / (hh + dd)
            if np.sign(e) != np.sign(delta[i0]):
                e = 0.0
            elif np.sign(delta[i0]) != np.sign(delta[i1]) and abs(e) > abs(3 * delta[i0]):
                e = 3 * delta[i0]
            d[k] = e

    def f(t):
        t = np.clip(np.asarray(t, np.float64), x[0], x[-1])
        i = np.clip(np.searchsorted(x, t, side="right") - 1, 0, x.size - 2)
        s = (t - x[i]) / h[i]
        h00, h10, h01, h11 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s, -2 * s**3 + 3 * s**2, s**3 - s**2
        return h00 * y[i] + h10 * h[i] * d[i] + h01 * y[i + 1] + h11 * h[i] * d[i + 1]

    return f


def _monotone(rates, qualities):
    """Sort by quality, keep the points where quality strictly increases."""
    r = np.asarray(rates, np.float64)
    q = np.asarray(qualities, np.float64)
    order = np.argsort(q, kind="stable")
    r, q = r[order], q[order]
    keep = np.concatenate([[True], np.diff(q) > 0])
    return r[keep], q[keep]


def bd_rate(rates_ref, quality_ref, rates_test, quality_test, samples: int = 1000,
            quality_window: tuple[float, float] | None = None) -> float | None:
    """Average rate difference of test vs reference at equal quality, in percent.

    Negative is better (fewer bits). The average runs over the quality range
    both curves cover, narrowed to ``quality_window`` if given (to compare
    curves whose ranges differ on one footing). None when nothing overlaps.
    """
    r1, q1 = _monotone(rates_ref, quality_ref)
    r2, q2 = _monotone(rates_test, quality_test)
    if q1.size < 2 or q2.size < 2:
        return None
    lo, hi = max(q1[0], q2[0]), min(q1[-1], q2[-1])
    if quality_window is not None:
        lo, hi = max(lo, quality_window[0]), min(hi, quality_window[1])
    if not hi > lo:
        return None
    grid = np.linspace(lo, hi, samples)
    f1, f2 = pchip(q1, np.log(r1)), pchip(q2, np.log(r2))
    diff = np.trapezoid(f2(grid) - f1(grid), grid) / (hi - lo)
    return float((math.exp(diff) - 1) * 100)


def quality_at_rate(rates, qualities, rate: float) -> float | None:
    """Quality interpolated (PCHIP in log-rate) at ``rate``; None outside the measured range."""
    r = np.asarray(rates, np.float64)
    q = np.asarray(qualities, np.float64)
    order = np.argsort(r, kind="stable")
    r, q = r[order], q[order]
    keep = np.concatenate([[True], np.diff(r) > 0])
    r, q = r[keep], q[keep]
    if r.size < 2 or not r[0] <= rate <= r[-1]:
        return None
    return float(pchip(np.log(r), q)(math.log(rate)))
