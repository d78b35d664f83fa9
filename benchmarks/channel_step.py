#!/usr/bin/env python3
"""What a channel context costs a training step.

    python benchmarks/channel_step.py [CHECKPOINT] [--steps 5] [--out benchmarks/results/channel-context/step-cost.json]

One training step (forward + backward of the R–D loss and Adam's update, one
thread, float32) of a checkpoint's model with its channel slices and of the
same weights without them (the plain checkerboard), on both kinds of batch the
training alternates (8 crops of 128², 2 of 256², from the training set), timed
alternately; the median CPU-seconds of each.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", nargs="?", default=str(ROOT / "checkpoints" / "cc-stable.pt"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "train"))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "channel-context" / "step-cost.json"))
    args = ap.parse_args()

    import torch

    from vaecodec.model import build_model
    from vaecodec.training.data import CropPool
    from vaecodec.training.loop import load_checkpoint
    from vaecodec.training.loss import rd_loss, sample_lambdas

    torch.set_num_threads(1)
    state, model, _, _ = load_checkpoint(args.checkpoint)
    if not state.config.channel_slices:
        raise SystemExit(f"{args.checkpoint} has no channel slices")
    configs = {"checkerboard": replace(state.config, channel_slices=()), "channel slices": state.config}
    nets = {}
    for name, config in configs.items():
        net = build_model(config)
        net.load_state_dict(model.state_dict(), strict=False)
        nets[name] = (net, torch.optim.Adam(net.parameters(), lr=1e-6))
    pool = CropPool(args.data, crop=256, crops_per_image=1, seed=0)
    gen = torch.Generator().manual_seed(0)
    batches = {"8 x 128²": (8, 128), "2 x 256²": (2, 256)}
    seconds = {(n, b): [] for n in nets for b in batches}
    for i in range(args.steps + 1):  # the first round warms up
        for b, (count, size) in batches.items():
            x = pool.batch(count, size)
            lam = sample_lambdas(state.config, count, gen)
            for n, (net, opt) in nets.items():
                t = time.process_time()
                loss, _ = rd_loss(net, configs[n], x, lam)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if i:
                    seconds[(n, b)].append(time.process_time() - t)
    rows = [{"model": n, "batch": b, "cpu_s_per_step": float(np.median(s))} for (n, b), s in seconds.items()]
    mean = {n: float(np.mean([r["cpu_s_per_step"] for r in rows if r["model"] == n])) for n in nets}
    out = {"command": "python benchmarks/channel_step.py " + " ".join(sys.argv[1:]), "checkpoint_step": state.step,
           "slices": list(state.config.channel_slices), "torch": torch.__version__, "rows": rows,
           "mean_cpu_s_per_step": mean, "slowdown": mean["channel slices"] / mean["checkerboard"]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
