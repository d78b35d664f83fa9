"""Training: a crop pool, the rate–distortion loss, and a resumable loop.

Library code (not a script) so that tests can run a step on a tiny model and
``bin/train-model`` stays a thin wrapper. Design choices, each measured in
``../shared/docs/training-notes.md`` on this 2-core CPU:

* small 128² crops, batch 8: progress is limited by steps, not samples;
* Adam 1e-3 after a 100-step warm-up, cosine decay over the last 30 % of the
  planned total steps; the plan spans sessions, so the state is resumable;
* an exponential moving average (EMA) of the weights is kept and shipped: it
  gives most of the benefit of a decayed learning rate while training goes on;
* one λ per sample, log-uniform over the anchor range: one model, all rates;
* the thread count (1 or 2) is re-probed now and then, because two OpenMP
  threads are much slower than one when other work shares the CPU.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .model import HyperpriorModel, ModelConfig

__all__ = ["CropPool", "TrainState", "rd_loss", "train"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


class CropPool:
    """Random crops of a folder of images, held in memory as uint8.

    Each image is downscaled by a random factor (bicubic; downscaling removes
    camera noise and JPEG artefacts, as is usual for learned-codec training),
    then cropped at random. Batches take random sub-crops with random flips.
    """

    def __init__(self, folder: str | Path, crop: int = 256, crops_per_image: int = 20, seed: int = 0):
        rng = random.Random(seed)
        files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"no images in {folder}")
        crops = []
        for path in files:
            with Image.open(path) as im:
                im = im.convert("RGB")
                for _ in range(crops_per_image):
                    short = min(im.size)
                    if short < crop:
                        continue
                    f = rng.uniform(max(0.5, crop / short), 1.0)
                    size = (max(crop, round(im.size[0] * f)), max(crop, round(im.size[1] * f)))
                    small = im.resize(size, Image.BICUBIC) if f < 1 else im
                    x0 = rng.randrange(small.size[0] - crop + 1)
                    y0 = rng.randrange(small.size[1] - crop + 1)
                    crops.append(np.asarray(small.crop((x0, y0, x0 + crop, y0 + crop))))
        self.crops = np.stack(crops)  # (n, crop, crop, 3) uint8
        self.rng = np.random.default_rng(seed)

    def batch(self, size: int, patch: int) -> torch.Tensor:
        n, c = self.crops.shape[0], self.crops.shape[1]
        idx = self.rng.integers(0, n, size)
        ox = self.rng.integers(0, c - patch + 1, size)
        oy = self.rng.integers(0, c - patch + 1, size)
        out = np.empty((size, patch, patch, 3), np.uint8)
        for k in range(size):
            tile = self.crops[idx[k], oy[k]:oy[k] + patch, ox[k]:ox[k] + patch]
            out[k] = tile[:, ::-1] if self.rng.random() < 0.5 else tile
        return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0)


def rd_loss(model: HyperpriorModel, x: torch.Tensor, lmbda: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Weighted mean over the batch of λ·255²·MSE + bpp (noise proxy for the rate).

    Each sample's Lagrangian is scaled by sqrt(λ_mid/λ): this leaves the optimum
    for each λ unchanged but keeps the high-λ samples (whose Lagrangian is ~10×
    larger) from dominating the gradient of the shared transforms.
    """
    out = model(x, lmbda)
    pixels = x.shape[2] * x.shape[3]
    bpp = (out.bits_y + out.bits_z) / pixels
    lam = model.config.lambdas
    weight = torch.sqrt(math.sqrt(lam[0] * lam[-1]) / lmbda)
    loss = (weight * (lmbda * 255**2 * out.mse + bpp)).mean()
    psnr = (10 * torch.log10(1 / out.mse.clamp_min(1e-10))).mean()
    return loss, {"loss": loss.item(), "bpp": bpp.mean().item(), "psnr": psnr.item()}


def sample_lambdas(config: ModelConfig, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    lo, hi = math.log(config.lambdas[0]), math.log(config.lambdas[-1])
    return torch.exp(torch.rand(n, generator=generator) * (hi - lo) + lo)


@dataclass
class TrainState:
    """Everything needed to resume; saved atomically as one file."""

    config: ModelConfig
    step: int = 0
    cpu_seconds: float = 0.0
    history: list = field(default_factory=list)  # evaluation rows (dicts, JSON-able)


def learning_rate(step: int, total_steps: int, base: float = 1e-3, warmup: int = 100, decay_fraction: float = 0.3) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    start = total_steps * (1 - decay_fraction)
    if step < start:
        return base
    t = min(1.0, (step - start) / max(1.0, total_steps - start))
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def save_checkpoint(path: Path, state: TrainState, model, ema, optimizer) -> None:
    """Atomic save. Adam's moments are kept in bfloat16 to halve the file."""
    opt = optimizer.state_dict()
    # state_dict() shares the live per-parameter dicts: convert copies, never the optimizer's own.
    opt["state"] = {
        i: {k: (v.to(torch.bfloat16) if k in ("exp_avg", "exp_avg_sq") else v) for k, v in s.items()}
        for i, s in opt["state"].items()
    }
    blob = {
        "config": state.config.to_dict(), "step": state.step, "cpu_seconds": state.cpu_seconds,
        "history": state.history, "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path):
    blob = torch.load(path, map_location="cpu", weights_only=True)
    config = ModelConfig.from_dict(blob["config"])
    model = HyperpriorModel(config)
    model.load_state_dict(blob["model"])
    ema = HyperpriorModel(config)
    ema.load_state_dict(blob["ema"])
    state = TrainState(config, blob["step"], blob["cpu_seconds"], blob["history"])
    return state, model, ema, blob["optimizer"]


@torch.no_grad()
def evaluate_estimate(model: HyperpriorModel, folder: str | Path, lambdas: list[float], max_images: int = 24) -> list[dict]:
    """Estimated bpp (Σ −log2 p of rounded latents under the float model) and PSNR per λ.

    An estimate for the training log only; real rates come from files
    (``benchmarks/``).
    """
    from .image import to_model_input
    from .model import DOWNSAMPLING, LN2, SCALE_MIN, gaussian_bin_likelihood

    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:max_images]
    rows = []
    model.eval()
    for lam in lambdas:
        bpps, psnrs = [], []
        for path in files:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"))
            h, w = arr.shape[:2]
            xp = to_model_input(arr, DOWNSAMPLING)
            x = xp[:, :, :h, :w]
            y = model.analysis(xp)
            z_hat = torch.round(model.hyper_analysis(y))
            bits_z = -torch.log2(model.hyper_prior.likelihood(z_hat).clamp_min(1e-9)).sum()
            mu, log2_scale = model.hyper_synthesis(z_hat).chunk(2, 1)
            log_g = model.log_gain(torch.tensor([lam]))[:, :, None, None]
            g = torch.exp(log_g)
            q = torch.round((y - mu) * g)
            scale = torch.exp2(log2_scale + log_g / LN2).clamp_min(SCALE_MIN)
            bits_y = -torch.log2(gaussian_bin_likelihood(q, scale).clamp_min(1e-9)).sum()
            x_hat = model.synthesis(q / g + mu)[:, :, :h, :w].clamp(0, 1)
            x_hat = torch.round(x_hat * 255) / 255
            mse = (x_hat - x).pow(2).mean().item()
            bpps.append(((bits_y + bits_z) / (h * w)).item())
            psnrs.append(10 * math.log10(1 / max(mse, 1e-10)))
        rows.append({"lambda": lam, "bpp": float(np.mean(bpps)), "psnr": float(np.mean(psnrs))})
    model.train()
    return rows


def _probe_threads(step_fn, steps: int = 6) -> int:
    times = {}
    for n in (1, 2):
        torch.set_num_threads(n)
        step_fn()  # warm
        t = time.perf_counter()
        for _ in range(steps):
            step_fn()
        times[n] = (time.perf_counter() - t) / steps
    best = min(times, key=times.get)
    torch.set_num_threads(best)
    return best


def train(
    data: str | Path,
    checkpoint: str | Path,
    total_steps: int,
    config: ModelConfig = ModelConfig(),
    batch_size: int = 8,
    patch: int = 128,
    minutes: float | None = None,
    save_every_s: float = 300.0,
    eval_every_s: float = 1200.0,
    eval_folder: str | Path | None = None,
    log=print,
    seed: int = 0,
    crop: int = 256,
    final_fraction: float = 0.2,
    final_patch: int = 256,
    final_batch: int = 2,
) -> TrainState:
    """Train (or resume) until ``total_steps`` or ``minutes`` of wall time have passed.

    The last ``final_fraction`` of the steps use larger patches (``final_patch``,
    batch ``final_batch``), so the hyperprior also learns from hyper-latent
    maps of realistic size rather than only 2×2 ones.
    """
    checkpoint = Path(checkpoint)
    if checkpoint.exists():
        state, model, ema, opt_state = load_checkpoint(checkpoint)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        optimizer.load_state_dict(opt_state)
        for s in optimizer.state.values():
            for k in ("exp_avg", "exp_avg_sq"):
                if k in s:
                    s[k] = s[k].float()
        log(f"resumed at step {state.step} ({state.cpu_seconds / 3600:.2f} CPU-h)")
    else:
        torch.manual_seed(seed)
        model = HyperpriorModel(config)
        ema = copy.deepcopy(model)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        state = TrainState(config)
    ema.requires_grad_(False)
    torch.manual_seed(seed + state.step)
    pool = CropPool(data, crop=crop, seed=seed + state.step)
    log(f"crop pool: {pool.crops.shape[0]} crops")

    def one_step():
        final = state.step >= total_steps * (1 - final_fraction)
        size, n = (min(final_patch, crop), final_batch) if final else (patch, batch_size)
        x = pool.batch(n, size)
        lam = sample_lambdas(state.config, n)
        loss, stats = rd_loss(model, x, lam)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return stats

    t_start = time.time()
    t_saved = t_eval = t_start
    cpu_mark = time.process_time()
    threads = _probe_threads(one_step)
    running = None
    window_start, window_steps, reference = time.perf_counter(), 0, None
    while state.step < total_steps:
        if minutes is not None and time.time() - t_start > minutes * 60:
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(state.step, total_steps)
        stats = one_step()
        with torch.no_grad():
            decay = min(0.999, (1 + state.step) / (10 + state.step))
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        state.step += 1
        running = stats if running is None else {k: 0.98 * running[k] + 0.02 * stats[k] for k in stats}
        now = time.time()
        state.cpu_seconds += time.process_time() - cpu_mark
        cpu_mark = time.process_time()
        if state.step % 100 == 0:
            log(f"step {state.step} cpu_h {state.cpu_seconds / 3600:.3f} threads {threads} "
                f"lr {optimizer.param_groups[0]['lr']:.2e} loss {running['loss']:.4f} "
                f"bpp {running['bpp']:.3f} psnr {running['psnr']:.2f}")
        # Re-probe the thread count every 1000 steps, and at once when steps slow down
        # (other work on the CPU makes two OpenMP threads several times slower than one).
        window_steps += 1
        if window_steps == 50:
            per_step = (time.perf_counter() - window_start) / window_steps
            reference = per_step if reference is None else min(reference, per_step)
            if state.step % 1000 < 50 or per_step > 1.5 * reference:
                threads = _probe_threads(one_step)
                reference = None
            window_start, window_steps = time.perf_counter(), 0
        if eval_folder and now - t_eval > eval_every_s:
            rows = evaluate_estimate(ema, eval_folder, [state.config.lambdas[1], state.config.lambdas[3], state.config.lambdas[5]])
            state.history.append({"step": state.step, "cpu_hours": state.cpu_seconds / 3600, "estimate": rows})
            log("eval " + json.dumps(state.history[-1]))
            t_eval = time.time()
            cpu_mark = time.process_time()  # evaluation is not training time
        if now - t_saved > save_every_s:
            save_checkpoint(checkpoint, state, model, ema, optimizer)
            t_saved = now
    save_checkpoint(checkpoint, state, model, ema, optimizer)
    return state
