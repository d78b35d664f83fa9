"""Training lossless mode's pixel model: a table of contexts, one small MLP per channel.

Why it is cheap: the model sees one sub-pixel's causal context at a time, so
training needs no images in memory, only a table of contexts sampled at random
positions of the training photos (:func:`sample_contexts`, the same
:func:`~vaecodec.pixel_model.gather_context` the coder uses). A few minutes on
one CPU thread get most of the way; the export quantizes to the integer
program of :class:`~vaecodec.pixel_model.PixelModel`.

The loss is the coder's: −log2 of the discretized Laplace's mass at the true
grey level, tails on 0 and 255, in bits per sub-pixel; for a mixture of K
(``components``), of the mixture's marginal mass, which bits-back over the
component approaches.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..pixel_model import PixelModel, context_size, gather_context, padded_tile
from ..image import image_files

__all__ = ["PixelTrainOptions", "PixelNet", "sample_contexts", "laplace_bits", "train_pixel_model"]


@dataclass
class PixelTrainOptions:
    hidden: int = 32
    layers: int = 2
    steps: int = 12000
    batch: int = 4096
    learning_rate: float = 2e-3
    decay_from: float = 0.7
    """Fraction of the steps after which the learning rate drops 4×."""
    samples_per_image: int = 20000
    seed: int = 0
    model_id: str = "px12-h32"
    components: int = 1
    """1: one discretized Laplace per sub-pixel; K > 1: a mixture of K, coded by bits-back over the component."""


class PixelNet(nn.Module):
    """One channel's MLP: context/32 → ((mean − ref)/32, ln scale), or for K components K of each and then
    K log-weights (nats)."""

    def __init__(self, inputs: int, hidden: int, layers: int, components: int = 1):
        super().__init__()
        mods: list[nn.Module] = []
        width = inputs
        for _ in range(layers):
            mods += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.components = components
        mods.append(nn.Linear(width, 2 if components == 1 else 3 * components))
        self.net = nn.Sequential(*mods)

    def forward(self, context: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(mean, scale), each (n,); for a mixture (mean, scale, log-weight), each (n, K)."""
        out = self.net(context / 32.0)
        if self.components == 1:
            return ref + 32.0 * out[:, 0], torch.exp(out[:, 1].clamp(-40 / 16, 72 / 16))
        k = self.components
        return (ref[:, None] + 32.0 * out[:, :k], torch.exp(out[:, k:2 * k].clamp(-40 / 16, 72 / 16)),
                out[:, 2 * k:])

    def bits(self, context: torch.Tensor, ref: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        """−log2 P(level) per sub-pixel (for a mixture, of the marginal over components)."""
        if self.components == 1:
            return laplace_bits(levels, *self(context, ref))
        mean, scale, log_weight = self(context, ref)
        log_mass = -laplace_bits(levels[:, None], mean, scale) * math.log(2.0)
        return -torch.logsumexp(log_mass + torch.log_softmax(log_weight, 1), 1) / math.log(2.0)

    def float_layers(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(weight (in, out), bias) per Linear, as PixelModel.from_float takes them."""
        return [(m.weight.detach().double().numpy().T, m.bias.detach().double().numpy())
                for m in self.net if isinstance(m, nn.Linear)]


def laplace_bits(x: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """−log2 P(x) under the discretized Laplace on 0..255, tails on the edge levels."""
    def cdf(v):
        z = (v - mean) / scale
        return torch.where(z < 0, 0.5 * torch.exp(z.clamp(max=0)), 1 - 0.5 * torch.exp(-z.clamp(min=0)))
    upper = torch.where(x >= 255, torch.ones_like(mean), cdf(x + 0.5))
    lower = torch.where(x <= 0, torch.zeros_like(mean), cdf(x - 0.5))
    return -torch.log2((upper - lower).clamp_min(2.0**-24))


def sample_contexts(files: list[Path], num_channels: int, per_image: int, seed: int
                    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per channel k: (context int32 (n, F), ref (n,), grey level (n,)) at random positions of ``files``."""
    rng = np.random.default_rng(seed)
    parts: list[list[tuple]] = [[] for _ in range(num_channels)]
    for path in files:
        with Image.open(path) as im:
            pixels = np.asarray(im.convert("RGB" if num_channels == 3 else "L"), dtype=np.int32)
        height, width = pixels.shape[:2]
        buf = padded_tile(pixels, height, width, num_channels)
        rows = rng.integers(0, height, per_image)
        cols = rng.integers(0, width, per_image)
        levels = pixels.reshape(height, width, num_channels)[rows, cols]
        for k in range(num_channels):
            context, ref = gather_context(buf, rows, cols, k)
            parts[k].append((context, ref, levels[:, k]))
    return [tuple(np.concatenate([p[i] for p in per_k]) for i in range(3)) for per_k in parts]


def train_pixel_model(data: str | Path, options: PixelTrainOptions = PixelTrainOptions(),
                      log: Callable[[str], None] = print) -> PixelModel:
    """Train the RGB nets and the greyscale net on the images in ``data``; returns the exact model."""
    files = image_files(data)
    if not files:
        raise ValueError(f"no images in {data}")
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed + 1)
    float_nets: dict[int, list] = {}
    for num_channels in (3, 1):
        start = time.process_time()
        table = sample_contexts(files, num_channels, options.samples_per_image, options.seed + num_channels)
        tensors = [tuple(torch.from_numpy(a.astype(np.float32)) for a in per_k) for per_k in table]
        nets = [PixelNet(context_size(num_channels, k), options.hidden, options.layers, options.components)
                for k in range(num_channels)]
        params = [p for net in nets for p in net.parameters()]
        opt = torch.optim.Adam(params, lr=options.learning_rate)
        n = len(table[0][0])
        log(f"pixel model, {num_channels} channel(s): {n} contexts from {len(files)} images")
        running = []
        for step in range(options.steps):
            if step == int(options.decay_from * options.steps):
                for group in opt.param_groups:
                    group["lr"] = options.learning_rate / 4
            idx = torch.from_numpy(rng.integers(0, n, options.batch))
            loss = sum(net.bits(c[idx], ref[idx], x[idx]).mean() for net, (c, ref, x) in zip(nets, tensors)) / num_channels
            opt.zero_grad()
            loss.backward()
            opt.step()
            running.append(loss.item())
            if (step + 1) % 1000 == 0 or step + 1 == options.steps:
                log(f"  step {step + 1}: {np.mean(running):.4f} bits/sub-pixel (train), "
                    f"{time.process_time() - start:.0f} CPU-s")
                running = []
        float_nets[num_channels] = [net.float_layers() for net in nets]
    return PixelModel.from_float(float_nets, options.model_id)
