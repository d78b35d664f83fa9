#!/usr/bin/env python3
"""Short head-to-head training runs of two architectures at equal CPU time (one thread each).

    python benchmarks/arch_compare.py NAME MINUTES LAMBDA > benchmarks/results/arch-NAME.jsonl

NAME is ``v1`` (vaecodec 0.1's hyperprior, N=64, M=128), ``v2`` (the checkerboard
model with the wide bottleneck, N=64, 128 at 1/8–1/16, M=256) or ``v2h`` (the
same transforms without the context). Each run starts from random weights
(seed 0), trains at one fixed λ on 128² × 8 batches for MINUTES of its own CPU
time, and prints the running loss, bpp and PSNR every 100 steps as JSON lines.
Run two at once on the two cores to compare them at equal CPU time.
"""

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vaecodec.model import ModelConfig, build_model  # noqa: E402
from vaecodec.training import CropPool, rd_loss  # noqa: E402

CONFIGS = {
    "v1": ModelConfig(),
    "v2": ModelConfig(kind="checkerboard", bottleneck_channels=128, latent_channels=256, context_channels=128),
    "v2h": ModelConfig(kind="hyperprior", bottleneck_channels=128, latent_channels=256),
}


def main() -> None:
    name, minutes, lam = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(CONFIGS[name])
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    pool = CropPool(Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "train", crops_per_image=6, seed=0)
    t0, step, running = time.process_time(), 0, None
    while time.process_time() - t0 < minutes * 60:
        for g in opt.param_groups:
            g["lr"] = 1e-3 * min(1, (step + 1) / 100)
        x = pool.batch(8, 128)
        loss, stats = rd_loss(model, model.config, x, torch.full((8,), lam))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        running = stats if running is None else {k: 0.98 * running[k] + 0.02 * stats[k] for k in stats}
        if step % 100 == 0:
            print(json.dumps({"step": step, "cpu_s": round(time.process_time() - t0, 1),
                              **{k: round(v, 4) for k, v in running.items()}}), flush=True)


if __name__ == "__main__":
    main()
