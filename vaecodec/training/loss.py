"""The rate–distortion objective: one λ per sample, one model for every rate."""

from __future__ import annotations

import math

import torch

from ..model import ModelConfig

__all__ = ["rd_loss", "sample_lambdas"]


def rd_loss(net, config: ModelConfig, x: torch.Tensor, lmbda: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Weighted mean over the batch of λ·255²·MSE + bpp (noise proxy for the rate).

    ``net`` is the model or its distributed wrapper (anything returning an
    :class:`~vaecodec.model.RDOutput`). Each sample's Lagrangian is scaled by
    sqrt(λ_mid/λ): this leaves the optimum for each λ unchanged but keeps the
    high-λ samples (whose Lagrangian is much larger) from dominating the
    gradient of the shared transforms.
    """
    out = net(x, lmbda)
    pixels = x.shape[2] * x.shape[3]
    bpp = (out.bits_y + out.bits_z) / pixels
    lam = config.lambdas
    weight = torch.sqrt(math.sqrt(lam[0] * lam[-1]) / lmbda)
    loss = (weight * (lmbda * 255**2 * out.mse + bpp)).mean()
    psnr = (10 * torch.log10(1 / out.mse.detach().clamp_min(1e-10))).mean()
    return loss, {"loss": loss.item(), "bpp": bpp.mean().item(), "psnr": psnr.item()}


def sample_lambdas(config: ModelConfig, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n values of λ, log-uniform over the anchor range (every anchor equally served)."""
    lo, hi = math.log(config.lambdas[0]), math.log(config.lambdas[-1])
    return torch.exp(torch.rand(n, generator=generator) * (hi - lo) + lo)
