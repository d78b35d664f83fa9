#!/usr/bin/env python3
"""What the channel context of a training checkpoint contributes now: the model against itself without it.

    python benchmarks/channel_ablation.py [CHECKPOINT] [--images 24] \
        [--out benchmarks/results/channel-context/ablation.json]

The checkpoint's model (raw weights of a stable checkpoint, as the training
log evaluates it) and the same weights with every slice's correction switched
off (the last layer of each ``channel_parameters`` network zeroed: the
checkerboard alone, with the transforms and entropy networks that trained
beside the branch). Both by the training log's Kodak estimate (Σ −log2 p of the
rounded latents; PSNR through the float synthesis) at its five λ; the PSNR is
the same up to the means' effect on rounding, so the rate change per λ and the
BD-rate (PSNR) of "with" against "without" say what the branch saves.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LAMBDAS = (0.0008, 0.0064, 0.0512, 0.4096, 3.2768)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", nargs="?", default=str(ROOT / "checkpoints" / "cc-stable.pt"))
    ap.add_argument("--kodak", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "channel-context" / "ablation.json"))
    args = ap.parse_args()

    import torch

    from vaecodec.metrics import bd_rate
    from vaecodec.training.evaluate import evaluate_estimate
    from vaecodec.training.loop import load_checkpoint

    torch.set_num_threads(1)
    state, model, _, _ = load_checkpoint(args.checkpoint)
    if not state.config.channel_slices:
        raise SystemExit(f"{args.checkpoint} has no channel slices")
    with_branch = evaluate_estimate(model, args.kodak, list(LAMBDAS), args.images)
    with torch.no_grad():
        for layers in model.channel_parameters:
            layers[-1].weight.zero_()
            layers[-1].bias.zero_()
    without = evaluate_estimate(model, args.kodak, list(LAMBDAS), args.images)
    change = [100 * (a["bpp"] / b["bpp"] - 1) for a, b in zip(with_branch, without)]
    bd = bd_rate([r["bpp"] for r in without], [r["psnr"] for r in without],
                 [r["bpp"] for r in with_branch], [r["psnr"] for r in with_branch])
    out = {"command": "python benchmarks/channel_ablation.py " + " ".join(sys.argv[1:]), "step": state.step,
           "cpu_hours": state.cpu_seconds / 3600, "images": args.images, "with_channel_context": with_branch,
           "without": without, "rate_change_percent": change, "bd_rate_with_vs_without": bd}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"step {state.step} ({state.cpu_seconds / 3600:.2f} CPU-h): channel context BD-rate {bd:+.2f}% vs without; "
          "rate change per λ " + " ".join(f"{c:+.2f}%" for c in change))


if __name__ == "__main__":
    main()
