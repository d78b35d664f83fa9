#!/usr/bin/env python3
"""The transforms' capacity: Kodak PSNR when the latents skip quantization.

    python benchmarks/capacity.py [MODEL_OR_CHECKPOINT ...] [--images DIR] [--count N] [--out FILE]

For each image, ŷ = y (no rounding, no gain) goes through the decoder's own
exact synthesis (12-bit fixed point), and the output is rounded to 8 bits
like a decoded file. No rate can buy more than this PSNR, so it is the
ceiling of the model's high-fidelity end (training-notes §6: 34.35 dB for
vaecodec 0.1). A checkpoint is frozen in memory first (its EMA for annealed
checkpoints, its weights for stable ones).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vaecodec.coding_model import DOWNSAMPLING, CodingModel  # noqa: E402
from vaecodec.fixedpoint import to_fixed  # noqa: E402
from vaecodec.image import load_pixels, to_model_input, to_output_pixels  # noqa: E402
from vaecodec.metrics import psnr  # noqa: E402


def load(path: str | None) -> tuple[str, CodingModel]:
    if path in (None, "shipped"):
        from vaecodec.api import default_codec

        return "shipped", default_codec().model
    if Path(path).suffix == ".pt":
        try:
            return path, CodingModel.load(path)
        except Exception:  # noqa: BLE001 - not a model file: a training checkpoint
            from vaecodec.training import load_checkpoint

            state, _, ema, _ = load_checkpoint(path)
            return f"{path} (step {state.step}, {state.cpu_seconds / 3600:.2f} CPU-h)", \
                CodingModel.from_training_model(ema, "capacity-check")
    raise SystemExit(f"{path}: not a .pt model or checkpoint")


def capacity(model: CodingModel, images: list[Path]) -> list[float]:
    out = []
    for path in images:
        px = load_pixels(path)
        h, w = px.shape[:2]
        y, _ = model.analyze(to_model_input(px, DOWNSAMPLING))
        rgb = model.synthesize(to_fixed(y))
        out.append(psnr(px, to_output_pixels(rgb, h, w, "L" if px.ndim == 2 else "RGB")))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", default=["shipped"], help="model files, checkpoints, or \"shipped\"")
    ap.add_argument("--images", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    ap.add_argument("--count", type=int, default=24)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "capacity.json"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    images = sorted(Path(args.images).glob("*.png"))[:args.count]
    rows = []
    for m in args.models:
        name, model = load(m)
        values = capacity(model, images)
        rows.append({"model": name, "model_id": model.model_id, "weight_hash": model.weight_hash.hex(),
                     "images": len(values), "psnr_unquantized_mean": float(np.mean(values)),
                     "psnr_unquantized_min": float(np.min(values))})
        print(f"{name}: {np.mean(values):.2f} dB mean (min {np.min(values):.2f}) over {len(values)} images")
    Path(args.out).write_text(json.dumps({"command": "python benchmarks/capacity.py " + " ".join(sys.argv[1:]),
                                          "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
