"""The periodic Kodak estimate of the training log (the model's own rate, not files)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..image import image_files, to_model_input
from ..model import DOWNSAMPLING

__all__ = ["evaluate_estimate", "image_estimates", "interleave"]


@torch.no_grad()
def evaluate_estimate(model, folder: str | Path, lambdas: list[float], max_images: int = 24,
                      shard: tuple[int, int] = (0, 1), gather=None) -> list[dict]:
    """Estimated bpp (Σ −log2 p of the rounded latents) and PSNR per λ, averaged over images.

    Uses the model's own forward pass with hard rounding, so the estimate is
    the rate model the coder uses (up to table precision and padding). An
    estimate for the training log only; real rates come from files
    (``benchmarks/``).

    ``shard`` (rank, world size) and ``gather``: the ranks of a distributed run
    split the images (rank r takes images r, r + world, …, every λ) instead of
    one rank evaluating all of them while the others wait; ``gather`` takes this
    rank's per-image values and returns every rank's (``all_gather_object``).
    The average is taken over the images in their folder order, so the rows are
    the same as one process evaluating every image.
    """
    rank, world = shard
    if world > 1 and gather is None:
        raise ValueError("a shard of the images needs gather (every rank's values)")
    files = image_files(folder)[:max_images]
    mine = image_estimates(model, files[rank::world], lambdas)
    per_image = interleave(gather(mine), len(files)) if world > 1 else mine
    return [{"lambda": lam,
             "bpp": float(np.mean([image[k][0] for image in per_image])),
             "psnr": float(np.mean([image[k][1] for image in per_image]))} for k, lam in enumerate(lambdas)]


def interleave(shards: list[list], count: int) -> list:
    """The ``count`` items in their original order, from the shards ``items[r::len(shards)]`` of each rank r."""
    if sum(map(len, shards)) != count:
        raise ValueError(f"the ranks evaluated {sum(map(len, shards))} images, not {count}: do they read the same folder?")
    return [shards[i % len(shards)][i // len(shards)] for i in range(count)]


@torch.no_grad()
def image_estimates(model, files: list, lambdas: list[float]) -> list[list[tuple[float, float]]]:
    """Per image, per λ: (estimated bpp, PSNR in dB) of ``model`` in eval mode (its mode is restored)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    per_image = []
    for path in files:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
        h, w = arr.shape[:2]
        xp = to_model_input(arr, DOWNSAMPLING).to(device)
        values = []
        for lam in lambdas:
            out = model(xp, torch.tensor([lam], device=device), hard=True)
            x_hat = torch.round(out.x_hat[:, :, :h, :w].clamp(0, 1) * 255) / 255
            mse = (x_hat - xp[:, :, :h, :w]).pow(2).mean().item()
            values.append(((out.bits_y + out.bits_z).item() / (h * w), 10 * math.log10(1 / max(mse, 1e-10))))
        per_image.append(values)
    model.train(was_training)
    return per_image
