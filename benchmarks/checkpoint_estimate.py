#!/usr/bin/env python3
"""Compare training checkpoints by the model's own Kodak estimate (fast; not files).

    python benchmarks/checkpoint_estimate.py CHECKPOINT [CHECKPOINT ...] [--images 4] \
        [--lambdas 0.0016,0.0128,0.1024,0.8192] [--kodak ../shared/data/kodak] [--out FILE.json]

For each checkpoint (an annealed one is measured by its EMA, a stable one by
its raw weights): estimated bpp (Σ −log2 p of the rounded latents) and PSNR
on the first ``--images`` Kodak images at each λ, through the model's own
forward pass, as the training log's periodic estimate computes it. For an
8-bit synthesis that forward pass rounds where the integer decoder rounds.
A few minutes at 1 thread: a screen before exporting a checkpoint and
measuring it from files (``benchmarks/kodak.py``, ``benchmarks/int8_synthesis.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--lambdas", default="0.0016,0.0128,0.1024,0.8192")
    ap.add_argument("--kodak", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    ap.add_argument("--out", default=None, help="also write the rows as JSON")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from vaecodec.training import load_checkpoint
    from vaecodec.training.evaluate import evaluate_estimate

    lambdas = [float(v) for v in args.lambdas.split(",")]
    results = []
    for path in args.checkpoints:
        state, model, ema, _ = load_checkpoint(path)
        net = ema if state.phase == "annealed" else model
        rows = evaluate_estimate(net, args.kodak, lambdas, max_images=args.images)
        results.append({"checkpoint": path, "step": state.step, "phase": state.phase,
                         "synthesis_bits": net.config.synthesis_bits, "rows": rows})
        print(f"{path} (step {state.step}, {state.phase}, synthesis_bits {net.config.synthesis_bits}): "
              + "  ".join(f"λ {r['lambda']:g}: {r['bpp']:.3f} bpp / {r['psnr']:.2f} dB" for r in rows), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({
            "command": "python benchmarks/checkpoint_estimate.py " + " ".join(sys.argv[1:]),
            "images": args.images, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
