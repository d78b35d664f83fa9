"""Training data: a pool of random crops held in memory, and batches drawn from it."""

from __future__ import annotations

import multiprocessing
import random
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..image import image_files

__all__ = ["CropPool"]


class CropPool:
    """Random crops of a folder of images, held in memory as uint8.

    Each image is downscaled by a random factor (bicubic; downscaling removes
    camera noise and JPEG artefacts, as is usual for learned-codec training),
    then cropped at random. Batches take random sub-crops with random flips.
    Give each distributed rank its own ``seed`` so ranks see different crops.

    ``workers`` > 1 cuts the images over that many processes (where many cores
    feed one fast device: a GPU's minutes should not wait on one core
    decoding and resizing). Each image then draws from its own generator,
    seeded by ``seed`` and its place in the folder, so the pool is the same for
    any number of workers above one; one worker (the default) keeps the single
    generator of earlier runs, whose pools the recorded benchmarks used.
    """

    def __init__(self, folder: str | Path, crop: int = 256, crops_per_image: int = 20, seed: int = 0, workers: int = 1):
        files = image_files(folder)
        if not files:
            raise ValueError(f"no images in {folder}")
        if workers > 1:
            # spawn, not fork: the training process may already hold a CUDA context
            with ProcessPoolExecutor(min(workers, len(files)), mp_context=multiprocessing.get_context("spawn")) as pool:
                seeds = [f"{seed}:{i}" for i in range(len(files))]
                per_image = pool.map(_crops_of, files, [crop] * len(files), [crops_per_image] * len(files), seeds)
                crops = [c for image_crops in per_image for c in image_crops]
        else:
            rng = random.Random(seed)
            crops = [c for path in files for c in _crops_of(path, crop, crops_per_image, rng)]
        if not crops:
            raise ValueError(f"no image in {folder} is at least {crop}×{crop}")
        self.crops = np.stack(crops)  # (n, crop, crop, 3) uint8
        self.rng = np.random.default_rng(seed)

    def batch(self, size: int, patch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """(size, 3, patch, patch) float32 in [0, 1], contiguous (NCHW), on ``device``.

        Contiguous, not the channels-last view the crops' (h, w, 3) layout gives: torch keeps a
        convolution's memory format, so that view made the whole training step channels-last, where the
        GDNs' 1×1 convolutions fall to a slow reference kernel (``benchmarks/train_parallel.py``).
        The pixels cross to a GPU as uint8 and become floats there (a quarter of the bytes, and no
        conversion on the host between steps); there x/255 may be one ulp from the CPU's (torch's CUDA
        kernel multiplies by 1/255).
        """
        n, c = self.crops.shape[0], self.crops.shape[1]
        patch = min(patch, c)
        idx = self.rng.integers(0, n, size)
        ox = self.rng.integers(0, c - patch + 1, size)
        oy = self.rng.integers(0, c - patch + 1, size)
        out = np.empty((size, patch, patch, 3), np.uint8)
        for k in range(size):
            tile = self.crops[idx[k], oy[k]:oy[k] + patch, ox[k]:ox[k] + patch]
            out[k] = tile[:, ::-1] if self.rng.random() < 0.5 else tile
        pixels = torch.from_numpy(out).to(device, non_blocking=True)
        return pixels.permute(0, 3, 1, 2).float().div_(255.0).contiguous()


def _crops_of(path: Path, crop: int, count: int, rng: random.Random | str) -> list[np.ndarray]:
    """``count`` random crops of one image, each at its own random downscale (``rng``: a generator, or the
    seed of a fresh one)."""
    rng = random.Random(rng) if isinstance(rng, str) else rng
    crops = []
    with Image.open(path) as im:
        im = im.convert("RGB")
        for _ in range(count):
            short = min(im.size)
            if short < crop:
                continue
            f = rng.uniform(max(0.5, crop / short), 1.0)
            size = (max(crop, round(im.size[0] * f)), max(crop, round(im.size[1] * f)))
            small = im.resize(size, Image.BICUBIC) if f < 1 else im
            x0 = rng.randrange(small.size[0] - crop + 1)
            y0 = rng.randrange(small.size[1] - crop + 1)
            crops.append(np.asarray(small.crop((x0, y0, x0 + crop, y0 + crop))))
    return crops
