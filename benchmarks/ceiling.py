#!/usr/bin/env python3
"""Which part of the transforms limits fidelity? Short autoencoder-only runs from the 0.1 weights.

    python benchmarks/ceiling.py NAME MINUTES [--out benchmarks/results/ceiling-NAME.json]

The shipped model's Kodak PSNR without quantization (benchmarks/capacity.py) is
the ceiling no rate can pass. Here the 0.1 model's EMA weights are widened
(function-preserving, :mod:`vaecodec.training.warm_start`) into NAME and the
analysis + synthesis alone are trained to reconstruct 128² crops *without*
quantization (MSE only, Adam 3e-4, one thread) for MINUTES of CPU time; the
unquantized PSNR on 6 Kodak images is measured before and after. A variant
whose ceiling rises faster per CPU-minute has its capacity where the
bottleneck is. NAME: ``hp64`` (0.1 as is), ``hp96`` (N = 96 at 1/2 and 1/4
resolution), ``hp64-w128-m256`` (wider at 1/8, 1/16 and in the latents only).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vaecodec.image import load_pixels, to_model_input  # noqa: E402
from vaecodec.metrics import psnr  # noqa: E402
from vaecodec.model import ModelConfig  # noqa: E402
from vaecodec.training import CropPool, load_checkpoint  # noqa: E402
from vaecodec.training.warm_start import widen  # noqa: E402

VARIANTS = {
    "hp64": dict(),
    "hp96": dict(channels=96),
    "hp64-w128-m256": dict(bottleneck_channels=128, latent_channels=256),
}


def kodak_ceiling(net, images) -> float:
    values = []
    with torch.no_grad():
        for path in images:
            px = load_pixels(path)
            h, w = px.shape[:2]
            out = net.synthesis(net.analysis(to_model_input(px, 64)))[0, :, :h, :w].clamp(0, 1)
            values.append(psnr(px, (out * 255).round().permute(1, 2, 0).numpy().astype(np.uint8)))
    return float(np.mean(values))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=sorted(VARIANTS))
    ap.add_argument("minutes", type=float)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    state, _, ema, _ = load_checkpoint(ROOT / "checkpoints" / "train-state.pt")
    config = ModelConfig(**{**state.config.to_dict(), "lambdas": state.config.lambdas, **VARIANTS[args.name]})
    net = widen(ema, config) if VARIANTS[args.name] else ema
    images = sorted((ROOT.parent / "shared" / "data" / "kodak").glob("*.png"))[:6]
    before = kodak_ceiling(net.eval(), images)
    params = [*net.analysis.parameters(), *net.synthesis.parameters()]
    opt = torch.optim.Adam(params, 3e-4)
    pool = CropPool(ROOT.parent / "shared" / "data" / "train", crops_per_image=6, seed=0)
    net.train()
    t0, steps, log = time.process_time(), 0, []
    while time.process_time() - t0 < args.minutes * 60:
        x = pool.batch(8, 128)
        loss = (net.synthesis(net.analysis(x)) - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
        if steps % 200 == 0:
            log.append({"step": steps, "cpu_s": time.process_time() - t0, "train_psnr": float(-10 * torch.log10(loss.detach()))})
            print(json.dumps(log[-1]), flush=True)
    after = kodak_ceiling(net.eval(), images)
    result = {"command": "python benchmarks/ceiling.py " + " ".join(sys.argv[1:]), "variant": args.name,
              "config": config.to_dict(), "cpu_minutes": args.minutes, "steps": steps,
              "kodak6_unquantized_psnr_before": before, "kodak6_unquantized_psnr_after": after, "log": log}
    print(f"{args.name}: {before:.2f} → {after:.2f} dB unquantized (6 Kodak images) after {steps} steps")
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"ceiling-{args.name}.json")
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
