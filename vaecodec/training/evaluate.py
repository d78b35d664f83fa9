"""The periodic Kodak estimate of the training log (the model's own rate, not files)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..image import image_files, to_model_input
from ..model import DOWNSAMPLING

__all__ = ["evaluate_estimate"]


@torch.no_grad()
def evaluate_estimate(model, folder: str | Path, lambdas: list[float], max_images: int = 24) -> list[dict]:
    """Estimated bpp (Σ −log2 p of the rounded latents) and PSNR per λ, averaged over images.

    Uses the model's own forward pass with hard rounding, so the estimate is
    the rate model the coder uses (up to table precision and padding). An
    estimate for the training log only; real rates come from files
    (``benchmarks/``).
    """
    files = image_files(folder)[:max_images]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows = []
    for lam in lambdas:
        bpps, psnrs = [], []
        for path in files:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"))
            h, w = arr.shape[:2]
            xp = to_model_input(arr, DOWNSAMPLING).to(device)
            out = model(xp, torch.tensor([lam], device=device), hard=True)
            x_hat = torch.round(out.x_hat[:, :, :h, :w].clamp(0, 1) * 255) / 255
            mse = (x_hat - xp[:, :, :h, :w]).pow(2).mean().item()
            bpps.append(((out.bits_y + out.bits_z).item()) / (h * w))
            psnrs.append(10 * math.log10(1 / max(mse, 1e-10)))
        rows.append({"lambda": lam, "bpp": float(np.mean(bpps)), "psnr": float(np.mean(psnrs))})
    model.train(was_training)
    return rows
