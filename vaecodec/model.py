"""The variable-rate mean-scale hyperprior VAE, as torch modules for training.

This module knows nothing of files, bytes or entropy coders. It holds the
transforms and the distribution parameters, and a differentiable
rate–distortion forward pass. Coding uses :mod:`vaecodec.coding_model`, which
freezes these weights into integer tables and integer-exact programs.

Glossary (Ballé et al. 2018, Minnen et al. 2018; the gains of Cui et al. 2021)::

    x ─analysis─▶ y ─hyper_analysis─▶ z ─round─▶ ẑ ─hyper_synthesis─▶ μ, log2 σ
    r = (y − μ)·g(λ)       latent residual in "gained" units, coded as round(r)
    ŷ = round(r)/g(λ) + μ  ─synthesis─▶ x̂

``g(λ)`` is a per-channel gain vector: log-linear between ``K`` trained anchor
vectors, so one model covers a continuous range of λ (and thus of qualities).
The rate of ``round(r)`` is modelled by a zero-mean Gaussian of std σ·g, and the
rate of ẑ by a per-channel non-parametric ("deep factorized") density.

Training uses the usual proxies: additive uniform noise for the likelihoods
and straight-through rounding for what the decoder sees.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ModelConfig", "HyperpriorModel", "SimplifiedGDN", "RDOutput"]

DOWNSAMPLING = 64
"""Total stride from pixels to hyper-latents (16 for y, then 4 for z)."""

SCALE_STEPS_PER_OCTAVE = 6
"""Resolution of the scale table: std_j = 2^(j / 6) for the integer scale index j."""

SCALE_MIN_INDEX = -19
"""Exponent index of the smallest std: 2^(-19/6) ≈ 0.111."""

SCALE_MIN = 2.0 ** (SCALE_MIN_INDEX / SCALE_STEPS_PER_OCTAVE)
"""Smallest std the rate model may use, in gained units (the scale table's first entry)."""

LN2 = math.log(2.0)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the module tree; stored with the weights.

    Attributes:
      channels: N, width of the (hyper-)transforms.
      latent_channels: M, channels of y.
      hyper_channels: channels of z.
      lambdas: the anchor λ values (distortion weight of 255²·MSE, per bpp),
        increasing; one gain vector is trained per anchor.
    """

    channels: int = 64
    latent_channels: int = 128
    hyper_channels: int = 64
    lambdas: tuple[float, ...] = (0.0016, 0.0032, 0.0064, 0.0128, 0.0256, 0.0512, 0.1024, 0.2048)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lambdas"] = list(self.lambdas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        d["lambdas"] = tuple(float(v) for v in d["lambdas"])
        return cls(**d)


class SimplifiedGDN(nn.Module):
    """Simplified GDN (Johnston et al. 2019): ``x / (β + Γ|x|)``, or ``x·(β + Γ|x|)`` inverted.

    Chosen over Ballé's GDN because it needs no square root: the inverse form is
    a 1×1 convolution and a product, both exact in integer arithmetic, which
    keeps the decoder bit-exact (see :mod:`vaecodec.fixedpoint`).
    """

    def __init__(self, channels: int, inverse: bool = False):
        super().__init__()
        self.inverse = inverse
        self.beta = nn.Parameter(torch.ones(channels))
        self.gamma = nn.Parameter(0.1 * torch.eye(channels))

    def effective_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(β ≥ 1e-3, Γ ≥ 0) as used in the forward pass."""
        return self.beta.clamp_min(1e-3), self.gamma.clamp_min(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta, gamma = self.effective_params()
        norm = F.conv2d(x.abs(), gamma[:, :, None, None], beta)
        return x * norm if self.inverse else x / norm


def _conv(cin: int, cout: int, k: int = 5, stride: int = 2) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, k // 2)


def _deconv(cin: int, cout: int, k: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, k, stride, k // 2, output_padding=stride - 1)


class FactorizedDensity(nn.Module):
    """Per-channel learned density of the hyper-latents (Ballé et al. 2018, appendix 6.1).

    ``cdf_logits(v)`` is a monotone function per channel built from softplus-
    positive matrices and tanh "factors"; the likelihood of a unit bin is
    ``sigmoid(upper) − sigmoid(lower)``. Used for training and, once, to build
    the integer pmf tables shipped with a coding model.
    """

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0):
        super().__init__()
        dims = (1, *filters, 1)
        scale = init_scale ** (1 / (len(dims) - 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(dims) - 1):
            init = math.log(math.expm1(1 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[i + 1], 1) - 0.5))
            if i < len(dims) - 2:
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))

    def cdf_logits(self, v: torch.Tensor) -> torch.Tensor:
        """v: (C, 1, L) values per channel -> (C, 1, L) logits of the CDF."""
        h = v
        for i, (m, b) in enumerate(zip(self.matrices, self.biases)):
            h = torch.matmul(F.softplus(m), h) + b
            if i < len(self.factors):
                h = h + torch.tanh(self.factors[i]) * torch.tanh(h)
        return h

    def likelihood(self, z: torch.Tensor) -> torch.Tensor:
        """Probability mass of the unit bin centred on each element of z (B, C, H, W)."""
        b, c, hgt, wid = z.shape
        v = z.permute(1, 0, 2, 3).reshape(c, 1, -1)
        lower = self.cdf_logits(v - 0.5)
        upper = self.cdf_logits(v + 0.5)
        sign = -torch.sign(lower + upper).detach()  # evaluate in the numerically stable tail
        lik = (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs()
        return lik.reshape(c, b, hgt, wid).permute(1, 0, 2, 3)


def _ste_round(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


class _LowerBound(torch.autograd.Function):
    """max(x, bound) whose gradient still flows when it would push x upward."""

    @staticmethod
    def forward(ctx, x, bound):
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp_min(bound)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        passes = (x >= ctx.bound) | (grad < 0)
        return grad * passes, None


def gaussian_bin_likelihood(r: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Mass of N(0, scale²) on [r − ½, r + ½], evaluated on the stable (left) tail."""
    a = r.abs()
    inv = 1.0 / (scale * math.sqrt(2.0))
    return 0.5 * (torch.erfc((a - 0.5) * inv) - torch.erfc((a + 0.5) * inv))


@dataclass
class RDOutput:
    """Result of a training forward pass (all per batch element, shape (B,))."""

    x_hat: torch.Tensor
    bits_y: torch.Tensor
    bits_z: torch.Tensor
    mse: torch.Tensor


class HyperpriorModel(nn.Module):
    """Mean-scale hyperprior with λ-conditioned gains (one model, every quality).

    Typical workflow:
      * train: ``out = model(x, lmbda)``; loss = ``mean(λ·255²·mse + bpp)``;
      * freeze: :func:`vaecodec.coding_model.CodingModel.from_training_model`
        builds the integer tables and programs the coder needs;
      * the frozen weights ship in fp16 with their tables.

    Cost: about 25 kMAC per pixel (analysis ≈ synthesis ≈ 12 k), dominated by
    the second stride-2 layer of each transform.
    """

    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        self.config = config
        n, m, h = config.channels, config.latent_channels, config.hyper_channels
        self.analysis = nn.Sequential(
            _conv(3, n), SimplifiedGDN(n), _conv(n, n), SimplifiedGDN(n),
            _conv(n, n), SimplifiedGDN(n), _conv(n, m),
        )
        self.synthesis = nn.Sequential(
            _deconv(m, n), SimplifiedGDN(n, inverse=True), _deconv(n, n), SimplifiedGDN(n, inverse=True),
            _deconv(n, n), SimplifiedGDN(n, inverse=True), _deconv(n, 3),
        )
        self.hyper_analysis = nn.Sequential(
            _conv(m, n, 3, 1), nn.LeakyReLU(inplace=True), _conv(n, n), nn.LeakyReLU(inplace=True), _conv(n, h),
        )
        # ReLU (not leaky) so the fixed-point program needs no multiply by a non-power-of-two slope.
        self.hyper_synthesis = nn.Sequential(
            _deconv(h, n), nn.ReLU(inplace=True), _deconv(n, m * 3 // 2), nn.ReLU(inplace=True),
            _conv(m * 3 // 2, 2 * m, 3, 1),
        )
        self.hyper_prior = FactorizedDensity(h)
        lam = torch.tensor(config.lambdas, dtype=torch.float64)
        # sqrt(λ) scaling of step size is the high-rate optimum for MSE; a good start.
        init = 0.5 * torch.log(lam / lam[len(lam) // 2])
        self.log_gains = nn.Parameter(init.float()[:, None].repeat(1, m))

    def log_gain(self, lmbda: torch.Tensor) -> torch.Tensor:
        """Per-channel ln g for each λ in (B,): log-linear interpolation between anchors."""
        anchors = torch.log(torch.tensor(self.config.lambdas, device=lmbda.device))
        pos = (torch.log(lmbda) - anchors[0]) / (anchors[-1] - anchors[0]) * (len(anchors) - 1)
        return interpolate_rows(self.log_gains, pos)

    def forward(self, x: torch.Tensor, lmbda: torch.Tensor) -> RDOutput:
        """x: (B, 3, H, W) in [0, 1], H and W multiples of 64; lmbda: (B,)."""
        y = self.analysis(x)
        z = self.hyper_analysis(y)
        bits_z = -torch.log2(self.hyper_prior.likelihood(z + torch.empty_like(z).uniform_(-0.5, 0.5)).clamp_min(1e-9))
        mu, log2_scale = self.hyper_synthesis(_ste_round(z)).chunk(2, dim=1)
        log_g = self.log_gain(lmbda)[:, :, None, None]
        g = torch.exp(log_g)
        r = (y - mu) * g
        scale = _LowerBound.apply(torch.exp2(log2_scale + log_g / LN2), SCALE_MIN)
        r_noisy = r + torch.empty_like(r).uniform_(-0.5, 0.5)
        bits_y = -torch.log2(gaussian_bin_likelihood(r_noisy, scale).clamp_min(1e-9))
        y_hat = _ste_round(r) / g + mu
        x_hat = self.synthesis(y_hat)
        return RDOutput(
            x_hat=x_hat,
            bits_y=bits_y.flatten(1).sum(1),
            bits_z=bits_z.flatten(1).sum(1),
            mse=(x_hat - x).pow(2).flatten(1).mean(1),
        )


def interpolate_rows(table: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Linear interpolation between rows of ``table`` (K, C) at fractional row positions ``pos``.

    Positions outside [0, K−1] extrapolate along the first or last segment.
    """
    k = table.shape[0]
    i = pos.floor().clamp(0, k - 2).long()
    f = (pos - i.to(pos.dtype))[:, None].to(table.dtype)
    return table[i] * (1 - f) + table[i + 1] * f
