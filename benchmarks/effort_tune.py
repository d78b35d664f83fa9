#!/usr/bin/env python3
"""Tune the refinement schedule (``vaecodec.refine.Schedule``) on training crops, never on Kodak.

    python benchmarks/effort_tune.py [--images ../shared/data/train] [--count 3] [--crop 256x384] \
        [--qualities 25,75] [--stops 8,16,32,48,64,96,128,160] \
        [--variant LR,TAU_START,TAU_END,ANNEAL ...] [--out benchmarks/results/effort-tune.json]

For each variant, crop and quality: one seeded refinement run, stopped at
every iteration count in ``--stops``; each stop's latents are coded by the
ordinary exact encoder and decoded, and its real RD cost (file bits per pixel
+ λ·MSE) is compared with the unrefined file's. Prints and saves the mean
change per stop and variant (negative = better), and the CPU seconds per
iteration. Crops are taken from the centre of every (N/count)-th image.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=str(ROOT.parent / "shared" / "data" / "train"))
    ap.add_argument("--count", type=int, default=3)
    ap.add_argument("--crop", default="256x384")
    ap.add_argument("--qualities", default="25,75")
    ap.add_argument("--stops", default="8,16,32,48,64,96,128,160")
    ap.add_argument("--variant", action="append", default=None,
                    help="lr,tau_start,tau_end,anneal_iterations[,lr_end[,hard_z_from[,straight_through_from[,select_every]]]] (repeatable; default: the shipped schedule)")
    ap.add_argument("--bf16", action="store_true", help="the shadow's convolutions in bfloat16 (autocast)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "effort-tune.json"))
    args = ap.parse_args()

    import torch
    from PIL import Image

    torch.set_num_threads(1)
    import vaecodec
    from vaecodec.image import load_pixels
    from vaecodec.refine import SCHEDULE, Schedule, rd_cost, refine_path

    codec = vaecodec.Codec(args.model)
    ch, cw = (int(v) for v in args.crop.split("x"))
    qualities = [int(q) for q in args.qualities.split(",")]
    stops = [int(s) for s in args.stops.split(",")]
    variants = [Schedule.parse(spec) for spec in args.variant] if args.variant else [SCHEDULE]

    def fits(path):
        with Image.open(path) as im:
            return im.mode == "RGB" and im.height >= ch and im.width >= cw

    paths = [p for p in sorted(Path(args.images).glob("*")) if p.suffix.lower() in (".png", ".jpg") and fits(p)]
    paths = paths[:: max(1, len(paths) // args.count)][:args.count]
    crops = []
    for p in paths:
        px = load_pixels(p)
        top, left = (px.shape[0] - ch) // 2, (px.shape[1] - cw) // 2
        crops.append((p.name, np.ascontiguousarray(px[top:top + ch, left:left + cw])))

    def cost(analysed, quality, latents):
        enc, y_hat = codec._code(analysed, latents, quality, keep_y_hat=True)
        return rd_cost(enc.num_bytes, codec._mse(analysed, y_hat), codec.model.quality_lambda(quality), ch * cw)

    runs = []
    for v in variants:
        changes = {s: [] for s in stops}
        seconds = []
        for name, px in crops:
            for q in qualities:
                with torch.no_grad():
                    analysed = codec._analyze(px)
                    base = cost(analysed, q, analysed.latents)
                t = time.process_time()
                path = refine_path(codec.model, analysed.x.tensor(), analysed.latents, q, stops, ch, cw, schedule=v,
                                   bf16=args.bf16)
                seconds.append((time.process_time() - t) / stops[-1])
                with torch.no_grad():
                    for s, lat in zip(stops, path):
                        changes[s].append(100 * (cost(analysed, q, lat) / base - 1))
                print(f"{v} {name} q{q}: " + " ".join(f"{s}:{changes[s][-1]:+.2f}%" for s in stops), flush=True)
        runs.append({"schedule": v.__dict__, "mean_rd_cost_change_pct": {s: float(np.mean(c)) for s, c in changes.items()},
                     "cpu_s_per_iteration": float(np.mean(seconds))})
        print("MEAN", v, {s: round(float(np.mean(c)), 2) for s, c in changes.items()}, flush=True)
    result = {"command": "python benchmarks/effort_tune.py " + " ".join(sys.argv[1:]), "bf16": args.bf16,
              "model": f"{codec.model.model_id} {codec.model.weight_hash.hex()}",
              "crops": [n for n, _ in crops], "crop": args.crop, "qualities": qualities, "runs": runs}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
