#!/usr/bin/env python3
"""A dead-zone quantizer at the encoder: does rounding toward the mean pay with this model?

    python benchmarks/deadzone.py [--images 1,7,15,23] [--deltas 0.1,0.2] [--points 9] \
        [--kodak ../shared/data/kodak] [--out benchmarks/results/deadzone.json]

The decoder does not care how the encoder chose each integer q, so an encoder
may round ``r = (y − μ)·g`` toward zero, ``q = sign(r)·floor(|r| + ½ − δ)``:
fewer bits for a little distortion, a classic trade for hand-made codecs. For
each δ, the shipped model codes the chosen Kodak images at ``--points``
qualities spread along its RD curve (real files and exactly decoded pixels),
and the mean (bpp, PSNR) curve gets a BD-rate against plain rounding (δ = 0).
The quantizer is replaced on this process's model only (reading the model's
gains as ``CodingModel.quantize`` does); nothing in the library changes.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default="1,7,15,23", help="Kodak image numbers")
    ap.add_argument("--deltas", default="0.1,0.2")
    ap.add_argument("--points", type=int, default=9)
    ap.add_argument("--kodak", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "deadzone.json"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from vaecodec.api import Codec
    from vaecodec.baselines import rd_sweep_qualities
    from vaecodec.coding_model import ACT_FRAC_BITS, GAIN_FRAC_BITS, _per_channel
    from vaecodec.image import load_pixels
    from vaecodec.metrics import bd_rate, psnr

    codec = Codec()
    model = codec.model
    plain = model.quantize

    def dead_zone(delta: float):
        def quantize(self, y, params, quality, channels=slice(None)):
            # r as CodingModel.quantize forms it (its gain and mean), then floor(|r| + ½ − δ) with r's sign.
            gain = 2.0**GAIN_FRAC_BITS / _per_channel(self._inverse_gain[quality - 1, channels], y.dim())
            r = (y.double() - params.mean * 2.0**-ACT_FRAC_BITS) * gain
            return (torch.sign(r) * torch.floor(r.abs() + 0.5 - delta)).long()
        return quantize

    files = [Path(args.kodak) / f"kodim{int(i):02d}.png" for i in args.images.split(",")]
    pixels = [load_pixels(f) for f in files]
    qualities = rd_sweep_qualities(model, args.points)
    curves = {}
    for delta in [0.0] + [float(d) for d in args.deltas.split(",")]:
        model.quantize = types.MethodType(dead_zone(delta), model) if delta else plain
        rows = []
        for q in qualities:
            bpp, db = [], []
            for px in pixels:
                data = codec.compress(px, quality=q, metadata=False)
                bpp.append(len(data) * 8 / (px.shape[0] * px.shape[1]))
                db.append(psnr(px, codec.decompress_array(data)))
            rows.append({"quality": q, "bpp": float(np.mean(bpp)), "psnr": float(np.mean(db))})
        base = rows if delta == 0.0 else curves[0.0]["rows"]
        bd = bd_rate([r["bpp"] for r in base], [r["psnr"] for r in base], [r["bpp"] for r in rows], [r["psnr"] for r in rows])
        print(f"δ {delta:g}: BD-rate vs plain rounding {bd:+.2f} %", flush=True)
        curves[delta] = {"bd_rate_vs_plain": bd, "rows": rows}
    model.quantize = plain
    out = {"command": "python benchmarks/deadzone.py " + " ".join(sys.argv[1:]), "model": model.model_id,
           "images": [f.name for f in files], "qualities": list(qualities),
           "curves": [{"delta": d, **c} for d, c in curves.items()]}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
