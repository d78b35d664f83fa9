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

__all__ = ["ModelConfig", "HyperpriorModel", "CheckerboardModel", "ChannelCheckerboardModel", "SimplifiedGDN",
           "RDOutput", "build_model", "checkerboard_anchor_mask", "runs_in_bfloat16"]

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
      kind: ``"hyperprior"`` (mean-scale hyperprior, vaecodec 0.1) or
        ``"checkerboard"`` (the same plus a two-pass checkerboard context model,
        He et al. 2021, which keeps decoding parallel).
      channels: N, width of the transforms at 1/2 and 1/4 resolution (where
        the MACs per pixel are spent).
      latent_channels: M, channels of y.
      hyper_channels: channels of z.
      lambdas: the anchor λ values (distortion weight of 255²·MSE, per bpp),
        increasing; one gain vector is trained per anchor.
      bottleneck_channels: width at 1/8 and 1/16 resolution and of the hyper
        networks (0: same as ``channels``). Width there is cheap per pixel
        (a layer at 1/8 resolution costs 1/16 of one at 1/2), and it is what
        lifts the capacity ceiling at high fidelity.
      context_channels: output width of the checkerboard context network.
      hyper_hidden: width of the hyper-synthesis' last hidden layer (0: 3M/2).
      num_scales: entries of the scale table (std 2^((j − 19)/6), j < num_scales);
        models reaching high fidelity need larger stds than 0.1's 64 entries.
      synthesis_bits: 0: the synthesis decodes as the exact fixed-point program
        of :mod:`vaecodec.fixedpoint` (14-bit weights, float64); 8: it trains
        and decodes as the 8-bit integer program of :mod:`vaecodec.int8_synthesis`
        (int8 products: the synthesis in ~0.4× the exact one's time); 11: it
        decodes as the 11-bit program of :mod:`vaecodec.narrow` (float32
        products; its activation steps are tables of the model file). A coding
        choice only, as ``latent_bits``: training is the same; 12: the same
        program with 12-bit activations (11-bit weights).
      channel_slices: checkerboard models only; empty: none. Sizes of the
        channel slices of y, in coding order (ELIC's uneven slices, He et al.
        2022, e.g. 16, 16, 32, 64, 128): within each checkerboard pass, slice
        s is coded after slices < s and its parameters also see them
        (:class:`ChannelCheckerboardModel`).
      latent_bits: 0: the networks that feed the entropy coder (hyper-synthesis,
        contexts, entropy parameters) decode as exact fixed-point programs in
        float64; 10: as the 10-bit programs of :mod:`vaecodec.narrow` (float32
        products; their activation steps are tables of the model file). A
        coding choice only: training is the same.
    """

    channels: int = 64
    latent_channels: int = 128
    hyper_channels: int = 64
    lambdas: tuple[float, ...] = (0.0016, 0.0032, 0.0064, 0.0128, 0.0256, 0.0512, 0.1024, 0.2048)
    kind: str = "hyperprior"
    bottleneck_channels: int = 0
    context_channels: int = 0
    hyper_hidden: int = 0
    num_scales: int = 64
    synthesis_bits: int = 0
    channel_slices: tuple[int, ...] = ()
    latent_bits: int = 0

    def __post_init__(self):
        if self.synthesis_bits not in (0, 8, 11, 12):
            raise ValueError(f"synthesis_bits is 0 (fixed point), 8, 11 or 12, not {self.synthesis_bits}")
        if self.latent_bits not in (0, 10):
            raise ValueError(f"latent_bits is 0 (fixed point) or 10, not {self.latent_bits}")
        if self.channel_slices:
            if self.kind != "checkerboard":
                raise ValueError("channel slices need a checkerboard model")
            if min(self.channel_slices) < 1 or sum(self.channel_slices) != self.latent_channels:
                raise ValueError(f"channel slices {list(self.channel_slices)} must be positive and sum to the "
                                 f"{self.latent_channels} latent channels")

    @property
    def slice_bounds(self) -> list[slice]:
        """The latent channels of each channel slice, in coding order (one slice of all M without slices)."""
        sizes = self.channel_slices or (self.latent_channels,)
        starts = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        return [slice(a, b) for a, b in zip(starts, starts[1:])]

    @property
    def wide(self) -> int:
        """Width at 1/8 and 1/16 resolution and of the hyper networks."""
        return self.bottleneck_channels or self.channels

    def to_dict(self) -> dict:
        """JSON-able fields. Fields added after 0.1 are left out at their defaults, so a
        0.1 model's dict (which its weight hash covers) is unchanged."""
        d = asdict(self)
        d["lambdas"] = list(self.lambdas)
        d["channel_slices"] = list(self.channel_slices)
        for name, default in _LATER_FIELDS.items():
            if d[name] == (list(default) if isinstance(default, tuple) else default):
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        d["lambdas"] = tuple(float(v) for v in d["lambdas"])
        if "channel_slices" in d:
            d["channel_slices"] = tuple(int(v) for v in d["channel_slices"])
        return cls(**d)


_LATER_FIELDS = {"kind": "hyperprior", "bottleneck_channels": 0, "context_channels": 0, "hyper_hidden": 0,
                 "num_scales": 64, "synthesis_bits": 0, "channel_slices": (), "latent_bits": 0}


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
        if _float32_here(x):  # float32 under mixed precision: see _KeepsFloat32
            with _full_precision(x):
                return self.forward(x.float())
        beta, gamma = self.effective_params()
        norm = F.conv2d(x.abs(), gamma[:, :, None, None], beta)
        return x * norm if self.inverse else x / norm

    def forward_(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` overwriting ``x`` (inference, no autograd): the same values up to float rounding (a
        matrix product sums in its own order), without a tensor as large as ``x``. A channels-last ``x`` (the encoder's analysis) is normalized ``GDN_BAND_POSITIONS``
        positions at a time, each band's norm one matrix product ``|x| Γᵀ + β`` while the band is in cache.

        Why: torch runs this 1×1 convolution on channels-last input by its slow
        reference kernel, and ``|x|`` and the norm were two fresh tensors as large as
        ``x``. By bands the analysis takes less time; on the Kodak image of
        ``benchmarks/coding_paths.py`` its latents came out bit-identical.
        """
        beta, gamma = self.effective_params()
        if x.dim() != 4 or not x.is_contiguous(memory_format=torch.channels_last):
            norm = F.conv2d(x.abs(), gamma[:, :, None, None], beta)
            return x.mul_(norm) if self.inverse else x.div_(norm)
        positions = x.permute(0, 2, 3, 1).view(-1, x.shape[1])  # channels-last memory as (n·h·w, c), no copy
        gamma_t = gamma.t().contiguous()
        band = min(GDN_BAND_POSITIONS, positions.shape[0])
        magnitude, norm = x.new_empty(band, x.shape[1]), x.new_empty(band, x.shape[1])
        for p0 in range(0, positions.shape[0], band):
            part = positions[p0:p0 + band]
            k = part.shape[0]
            torch.addmm(beta, torch.abs(part, out=magnitude[:k]), gamma_t, out=norm[:k])
            part.mul_(norm[:k]) if self.inverse else part.div_(norm[:k])
        return x


GDN_BAND_POSITIONS = 4096
"""Positions per band of :meth:`SimplifiedGDN.forward_` on channels-last input (1 MB of |x| at 64 channels)."""


KEEP_FLOAT32 = True
"""Whether the layers :class:`_KeepsFloat32` names (and every GDN) stay float32 under bfloat16 autocast and in
the encoder's bfloat16 analysis. False only to measure the alternative, every layer in bfloat16
(``benchmarks/bf16_step.py --all-bfloat16``, ``benchmarks/analysis_precision.py --all-bfloat16``)."""


class _KeepsFloat32:
    """Mixin for a layer that computes in float32 under mixed-precision autocast (a no-op without it).

    Why: bfloat16 keeps 8 bits of mantissa. Under ``torch.autocast`` every layer
    of the transforms ran in it, and at high λ that cost the forward pass up to
    0.12 dB of PSNR with the latents rounded (``benchmarks/bf16_step.py``,
    ``results/bf16-step-avx512-all.json``), and the encoder's analysis 0.22 dB at
    quality 100 (``benchmarks/analysis_precision.py``): pixels (u/255) are not
    exact in bfloat16, the latents are quantized with a step far finer than it
    resolves at their magnitude, and the GDNs' divisions amplify rounding. So
    the layers at the pixels (the analysis' first convolution, the synthesis'
    last), at the latents (the analysis' last, the synthesis' first) and every
    GDN stay float32; the convolutions between them, where most MACs are, run in
    bfloat16 (``results/bf16-step-avx512.json``, ``results/analysis-precision-r6w-mixed.json``).
    The weights and names are a plain convolution's: model files do not change.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _float32_here(x):
            with _full_precision(x):
                return super().forward(x.float())
        return super().forward(x)


def _float32_here(x: torch.Tensor) -> bool:
    """Whether a layer kept float32 (:class:`_KeepsFloat32`, every GDN) must leave autocast on ``x``'s device."""
    return KEEP_FLOAT32 and torch.is_autocast_enabled(x.device.type)


def runs_in_bfloat16(layer: nn.Module) -> bool:
    """Whether mixed precision runs ``layer`` of a transform in bfloat16: a convolution not kept float32
    (:class:`_KeepsFloat32`). Training's autocast and the encoder's bfloat16 analysis follow the same rule."""
    if not KEEP_FLOAT32:
        return isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, SimplifiedGDN))
    return isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)) and not isinstance(layer, _KeepsFloat32)


class _Float32Conv2d(_KeepsFloat32, nn.Conv2d):
    pass


class _Float32ConvTranspose2d(_KeepsFloat32, nn.ConvTranspose2d):
    pass


def _conv(cin: int, cout: int, k: int = 5, stride: int = 2, float32: bool = False) -> nn.Conv2d:
    """A 'same'-padded convolution; ``float32``: it stays float32 under autocast (:class:`_KeepsFloat32`)."""
    return (_Float32Conv2d if float32 else nn.Conv2d)(cin, cout, k, stride, k // 2)


def _deconv(cin: int, cout: int, k: int = 5, stride: int = 2, float32: bool = False) -> nn.ConvTranspose2d:
    """The transposed twin of :func:`_conv` (an exact ×``stride`` upsampling of the size)."""
    return (_Float32ConvTranspose2d if float32 else nn.ConvTranspose2d)(cin, cout, k, stride, k // 2,
                                                                       output_padding=stride - 1)


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
        """Probability mass of the unit bin centred on each element of z (B, C, H, W).

        Always float32, also under mixed-precision autocast: a rate is a
        difference of two CDFs, which bfloat16's 8-bit mantissa would wipe out.
        """
        b, c, hgt, wid = z.shape
        v = z.float().permute(1, 0, 2, 3).reshape(c, 1, -1)
        with _full_precision(z):
            lower = self.cdf_logits(v - 0.5)
            upper = self.cdf_logits(v + 0.5)
        sign = -torch.sign(lower + upper).detach()  # evaluate in the numerically stable tail
        lik = (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs()
        return lik.reshape(c, b, hgt, wid).permute(1, 0, 2, 3)


def _full_precision(t: torch.Tensor):
    """Autocast off on ``t``'s device: the rate terms stay float32 in mixed-precision training."""
    return torch.autocast(t.device.type, enabled=False)


def _proxy(v: torch.Tensor, hard: bool) -> torch.Tensor:
    """What the rate model sees: v + U(−½, ½) in training, round(v) for estimates."""
    return torch.round(v) if hard else v + torch.empty_like(v).uniform_(-0.5, 0.5)


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
        n, m, h, w = config.channels, config.latent_channels, config.hyper_channels, config.wide
        self.analysis = nn.Sequential(
            _conv(3, n, float32=True), SimplifiedGDN(n), _conv(n, n), SimplifiedGDN(n),
            _conv(n, w), SimplifiedGDN(w), _conv(w, m, float32=True),
        )
        self.synthesis = nn.Sequential(
            _deconv(m, w, float32=True), SimplifiedGDN(w, inverse=True), _deconv(w, n), SimplifiedGDN(n, inverse=True),
            _deconv(n, n), SimplifiedGDN(n, inverse=True), _deconv(n, 3, float32=True),
        )
        if config.synthesis_bits == 8:
            from .int8_synthesis import Int8Synthesis

            self.synthesis = Int8Synthesis(*self.synthesis)
        self.hyper_analysis = nn.Sequential(
            _conv(m, w, 3, 1), nn.LeakyReLU(inplace=True), _conv(w, w), nn.LeakyReLU(inplace=True), _conv(w, h),
        )
        self.hyper_synthesis = self._build_hyper_synthesis()
        self.hyper_prior = FactorizedDensity(h)
        lam = torch.tensor(config.lambdas, dtype=torch.float64)
        # sqrt(λ) scaling of step size is the high-rate optimum for MSE; a good start.
        init = 0.5 * torch.log(lam / lam[len(lam) // 2])
        self.log_gains = nn.Parameter(init.float()[:, None].repeat(1, m))

    def _build_hyper_synthesis(self) -> nn.Sequential:
        m, h, w = self.config.latent_channels, self.config.hyper_channels, self.config.wide
        hidden = self.config.hyper_hidden or m * 3 // 2
        # ReLU (not leaky) so the fixed-point program needs no multiply by a non-power-of-two slope.
        return nn.Sequential(
            _deconv(h, w), nn.ReLU(inplace=True), _deconv(w, hidden), nn.ReLU(inplace=True),
            _conv(hidden, 2 * m, 3, 1),
        )

    def latent_params(self, y: torch.Tensor, hyper: torch.Tensor, gain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, log2 σ) of every latent in training; the hyperprior's are the hyper-synthesis output."""
        return hyper.chunk(2, dim=1)

    def coded_passes(self, y: torch.Tensor, hyper: torch.Tensor, gain: torch.Tensor,
                     quantize=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(μ, log2 σ, r̂) of every latent as the decoder sees them, r̂ = ``quantize((y − μ)·g)`` (default:
        straight-through rounding), each latent's from its own coding pass. Encoder-side optimisation
        (:mod:`vaecodec.refine`) passes its own (soft) rounding; with context models the rounded values
        of earlier passes are what later passes' parameters see."""
        quantize = quantize or _ste_round
        mu, log2_scale = self.latent_params(y, hyper, gain)
        return mu, log2_scale, quantize((y.float() - mu.float()) * gain)

    def log_gain(self, lmbda: torch.Tensor) -> torch.Tensor:
        """Per-channel ln g for each λ in (B,): log-linear interpolation between anchors."""
        anchors = torch.log(torch.tensor(self.config.lambdas, device=lmbda.device))
        pos = (torch.log(lmbda) - anchors[0]) / (anchors[-1] - anchors[0]) * (len(anchors) - 1)
        return interpolate_rows(self.log_gains, pos)

    def forward(self, x: torch.Tensor, lmbda: torch.Tensor, hard: bool = False) -> RDOutput:
        """x: (B, 3, H, W) in [0, 1], H and W multiples of 64; lmbda: (B,).

        ``hard``: rates of the rounded latents instead of the noisy proxy
        (for estimates; the coder's real rate differs only by table precision).
        """
        y = self.analysis(x)
        z = self.hyper_analysis(y)
        bits_z = -torch.log2(self.hyper_prior.likelihood(_proxy(z.float(), hard)).clamp_min(1e-9))
        log_g = self.log_gain(lmbda)[:, :, None, None]
        g = torch.exp(log_g)
        mu, log2_scale = self.latent_params(y, self.hyper_synthesis(_ste_round(z)), g)
        # Under autocast the transforms run in bfloat16; the rates and the distortion are float32
        # (no-ops in float32 training).
        y, mu, log2_scale = y.float(), mu.float(), log2_scale.float()
        with _full_precision(y):
            r = (y - mu) * g
            scale = _LowerBound.apply(torch.exp2(log2_scale + log_g / LN2), SCALE_MIN)
            r_noisy = _proxy(r, hard)
            bits_y = -torch.log2(gaussian_bin_likelihood(r_noisy, scale).clamp_min(1e-9))
            y_hat = _ste_round(r) / g + mu
        x_hat = self.synthesis(y_hat).float()
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


def checkerboard_anchor_mask(height: int, width: int, device=None) -> torch.Tensor:
    """(1, 1, H, W) float mask, 1 at the anchors: latents with (row + column) even.

    Anchors are coded first with the hyperprior alone; every non-anchor's four
    nearest neighbours are anchors, which the context network reads.
    """
    rows = torch.arange(height, device=device)[:, None]
    cols = torch.arange(width, device=device)[None, :]
    return ((rows + cols) % 2 == 0).float()[None, None]


class CheckerboardModel(HyperpriorModel):
    """Mean-scale hyperprior with a two-pass checkerboard context (He et al. 2021).

    Decoding stays parallel: pass 1 codes the anchors (half the latents) with
    parameters from the hyperprior and a zero context; pass 2 codes the rest
    with parameters that also see the decoded anchors::

        ẑ ─hyper_synthesis─▶ p = (μ, log2 σ)                   as in the hyperprior
        (p, 0)            ─entropy_parameters─▶ Δ;  p + Δ      for the anchors
        ŷ_anchors ─context─▶ c
        (p, c)            ─entropy_parameters─▶ Δ;  p + Δ      for the non-anchors

    The correction Δ is residual, and its last layer starts at zero, so a new
    model codes exactly as its hyperprior until the context has learned
    something (and a trained hyperprior can be widened into one, see
    :mod:`vaecodec.training.warm_start`). Every network here is a plain stack
    of convolutions and ReLUs, so the decoder runs them as exact integer programs.
    """

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        m, c = config.latent_channels, config.context_channels or config.wide
        self.context = nn.Sequential(_conv(m, c, 5, 1))
        e = m
        self.entropy_parameters = nn.Sequential(
            _conv(2 * m + c, e, 1, 1), nn.ReLU(inplace=True), _conv(e, e, 1, 1), nn.ReLU(inplace=True),
            _conv(e, 2 * m, 1, 1),
        )
        nn.init.zeros_(self.entropy_parameters[-1].weight)
        nn.init.zeros_(self.entropy_parameters[-1].bias)

    @property
    def context_width(self) -> int:
        return self.context[0].out_channels

    def params_from(self, hyper: torch.Tensor, ctx: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, log2 σ) from the hyper's parameters and context features (None: the anchors' zero context)."""
        if ctx is None:
            ctx = hyper.new_zeros(hyper.shape[0], self.context_width, *hyper.shape[2:])
        return (hyper + self.entropy_parameters(torch.cat([hyper, ctx], 1))).chunk(2, dim=1)

    def latent_params(self, y: torch.Tensor, hyper: torch.Tensor, gain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both passes at once in training (:meth:`coded_passes` with straight-through rounding)."""
        return self.coded_passes(y, hyper, gain)[:2]

    def slice_params(self, s: int, mu: torch.Tensor, log2_scale: torch.Tensor,
                     y_hat_before: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, log2 σ) of channel slice ``s`` in a pass; the checkerboard's own (one slice, no correction)."""
        return mu, log2_scale

    def coded_passes(self, y: torch.Tensor, hyper: torch.Tensor, gain: torch.Tensor,
                     quantize=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Both passes on the whole grid, each slice by slice (one slice without channel slices): the
        anchors' ŷ (``quantize``d, default straight-through) is masked and fed to the context network, as
        in He et al.; each latent takes the parameters of its own pass and slice."""
        quantize = quantize or _ste_round
        anchor = checkerboard_anchor_mask(y.shape[2], y.shape[3], y.device)
        y = y.float()  # rounding in float32, also under autocast (bfloat16 cannot hold r to ±½)
        passes, y_hat_anchors = [], None
        for own in (anchor, 1 - anchor):
            ctx = None if y_hat_anchors is None else self.context(y_hat_anchors * anchor)
            mu_all, log2_scale_all = self.params_from(hyper, ctx)
            mus, log2_scales, rs, y_hats = [], [], [], []
            for s, ch in enumerate(self.config.slice_bounds):
                before = torch.cat(y_hats, 1) * own if s > 0 else None
                mu, log2_scale = self.slice_params(s, mu_all[:, ch].float(), log2_scale_all[:, ch], before)
                mu = mu.float()
                r = quantize((y[:, ch] - mu) * gain[:, ch])
                mus.append(mu)
                log2_scales.append(log2_scale)
                rs.append(r)
                y_hats.append(r / gain[:, ch] + mu)
            if y_hat_anchors is None:
                y_hat_anchors = torch.cat(y_hats, 1)
            passes.append([torch.cat(v, 1) for v in (mus, log2_scales, rs)])
        (mu_a, ls_a, r_a), (mu_n, ls_n, r_n) = passes
        return _by_pass(mu_a, mu_n, anchor), _by_pass(ls_a, ls_n, anchor), _by_pass(r_a, r_n, anchor)


def _by_pass(anchors: torch.Tensor, others: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """Each latent's value from its own checkerboard pass."""
    return anchors * anchor + others * (1 - anchor)


CHANNEL_CONTEXT_WIDTH = 64
"""Features the channel context extracts from the slices already coded in a pass."""

CHANNEL_HIDDEN = 128
"""Width of the hidden layers of each slice's parameter correction."""


class ChannelCheckerboardModel(CheckerboardModel):
    """Checkerboard passes, each coded slice by slice along the channels (ELIC: He et al. 2022).

    Decoding stays parallel over positions; each checkerboard pass becomes one
    pass per channel slice (``config.channel_slices``, e.g. 16, 16, 32, 64, 128)::

        pass 1, the anchors; then pass 2, the non-anchors (context as in CheckerboardModel):
          p = (μ, log2 σ) of every channel, as CheckerboardModel computes them
          slice 0:      p_0
          slice s > 0:  p_s + channel_parameters[s]([p_s, channel_context[s](ŷ of slices < s, this pass)])

    The channel context reads the slices already decoded *in this pass*, at
    the positions of the pass (ŷ masked to the pass's colour of the board: a
    3×3 convolution of it sees the centre and the four diagonal neighbours).
    Small first slices: the first channels (the costliest, see
    :func:`vaecodec.training.warm_start.add_channel_context`) give the later,
    larger slices most of what they can predict. Every correction is
    residual with a zero last layer, so a new model codes exactly as the
    checkerboard it was grown from. All plain convolutions and ReLUs: the
    decoder runs them as exact integer programs.
    """

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.channel_context = nn.ModuleList()
        self.channel_parameters = nn.ModuleList()
        for bounds in config.slice_bounds[1:]:
            c = bounds.stop - bounds.start
            last = _conv(CHANNEL_HIDDEN, 2 * c, 1, 1)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.channel_context.append(_conv(bounds.start, CHANNEL_CONTEXT_WIDTH, 3, 1))
            self.channel_parameters.append(nn.Sequential(
                _conv(2 * c + CHANNEL_CONTEXT_WIDTH, CHANNEL_HIDDEN, 1, 1), nn.ReLU(inplace=True),
                _conv(CHANNEL_HIDDEN, CHANNEL_HIDDEN, 1, 1), nn.ReLU(inplace=True), last))

    def slice_params(self, s: int, mu: torch.Tensor, log2_scale: torch.Tensor,
                     y_hat_before: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, log2 σ) of slice ``s`` from the checkerboard's and ŷ of the slices before it in this pass
        (zero elsewhere than the pass's positions). The passes are :meth:`CheckerboardModel.coded_passes`."""
        if s == 0:
            return mu, log2_scale
        features = self.channel_context[s - 1](y_hat_before)
        d_mu, d_log2_scale = self.channel_parameters[s - 1](torch.cat([mu, log2_scale, features], 1)).chunk(2, dim=1)
        return mu + d_mu, log2_scale + d_log2_scale


MODEL_KINDS = {"hyperprior": HyperpriorModel, "checkerboard": CheckerboardModel}


def build_model(config: ModelConfig) -> HyperpriorModel:
    """The training module for a config, by its ``kind`` (and its channel slices)."""
    if config.channel_slices:
        return ChannelCheckerboardModel(config)
    try:
        return MODEL_KINDS[config.kind](config)
    except KeyError:
        raise ValueError(f"unknown model kind {config.kind!r}") from None
