#!/usr/bin/env python3
"""Would a per-block latent pay for itself in lossless mode? The ideal gain of bits-back over a scale mixture.

    python benchmarks/lossless_mixture.py [--images ../shared/data/train] [--count 4] [--crop 384] \
        [--offsets -16,-8,0,8,16] [--out benchmarks/results/lossless-ablations/mixture.json]

Bits-back coding pays off when a latent variable makes the likelihood a
mixture that fits better than any single component. The cheapest latent
for this pixel model is a discrete one per B×B block: which of K scale
offsets (scale × e^(δ/16)) its sub-pixels use. This measures, with the
shipped pixel model's exact parameters, the ideal rates (Σ −log2 p, no coder
overhead) relative to the model alone:

* ``mixture``: −log2 Σ_k π_k p(block | k), what BB-ANS would pay with an exact
  posterior (π: the frequency with which each offset is the best, a prior
  fitted on the same blocks, so an optimistic bound);
* ``uniform mixture``: the same with π uniform;
* ``explicit``: min_k −log2 p(block | k) + log2 K, the choice sent as side information.

Below 1.0 means the latent would pay for itself. Crops come from the
centre of every (N/count)-th training image (never Kodak).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=str(ROOT.parent / "shared" / "data" / "train"))
    ap.add_argument("--count", type=int, default=4)
    ap.add_argument("--crop", type=int, default=384)
    ap.add_argument("--offsets", default="-16,-8,0,8,16")
    ap.add_argument("--blocks", default="4,8,16,32")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lossless-ablations" / "mixture.json"))
    args = ap.parse_args()

    from PIL import Image

    from vaecodec.api import _load_pixel_model
    from vaecodec.image import load_pixels
    from vaecodec.lossless_codec import _laplace_bits
    from vaecodec.pixel_model import gather_context, padded_tile

    pm = _load_pixel_model(None)
    offsets = np.array([int(v) for v in args.offsets.split(",")])
    blocks = [int(b) for b in args.blocks.split(",")]
    c = args.crop

    def fits(path):
        with Image.open(path) as im:
            return im.mode == "RGB" and min(im.size) >= c

    paths = [p for p in sorted(Path(args.images).glob("*")) if p.suffix.lower() in (".png", ".jpg") and fits(p)]
    paths = paths[:: max(1, len(paths) // args.count)][:args.count]
    totals = {b: np.zeros(4) for b in blocks}
    for path in paths:
        px = load_pixels(path)
        top, left = (px.shape[0] - c) // 2, (px.shape[1] - c) // 2
        px = np.ascontiguousarray(px[top:top + c, left:left + c])
        h, w, ch = px.shape
        buf = padded_tile(px.astype(np.int32), h, w, ch)
        mean, scale = np.empty((h, w, ch)), np.empty((h, w, ch))
        everything = np.arange(h * w)
        for chunk in np.array_split(everything, max(1, everything.size // 4096)):
            rows, cols = np.divmod(chunk, w)
            for k in range(ch):
                context, ref = gather_context(buf, rows, cols, k)
                mean[rows, cols, k], scale[rows, cols, k] = pm.params(context, ref, ch, k)
        bits = np.stack([_laplace_bits(px.astype(np.int32), mean, scale * np.exp(d / 16)) for d in offsets])
        base_k = int(np.flatnonzero(offsets == 0)[0])
        for b in blocks:
            per = bits.reshape(len(offsets), h // b, b, w // b, b, ch).sum(axis=(2, 4, 5))  # (K, rows, cols)
            best = per.min(axis=0)
            counts = np.bincount(per.argmin(axis=0).ravel(), minlength=len(offsets)) + 1
            prior = counts / counts.sum()

            def mixture(pi):
                return float((best - np.log2(np.sum(pi[:, None, None] * 2.0 ** (best - per), axis=0))).sum())

            totals[b] += [per[base_k].sum(), mixture(prior), mixture(np.full(len(offsets), 1 / len(offsets))),
                          (best + np.log2(len(offsets))).sum()]
        print(path.name, flush=True)
    result = {"command": "python benchmarks/lossless_mixture.py " + " ".join(sys.argv[1:]),
              "pixel_model": pm.model_id, "images": [p.name for p in paths], "crop": c, "offsets": offsets.tolist(),
              "relative_rate": {str(b): {"mixture": t[1] / t[0], "uniform_mixture": t[2] / t[0], "explicit": t[3] / t[0]}
                                for b, t in totals.items()},
              "bits_per_subpixel_model_alone": float(totals[blocks[0]][0] / (len(paths) * c * c * 3))}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for b, r in result["relative_rate"].items():
        print(f"{b}×{b} blocks: mixture {r['mixture']:.4f}, uniform mixture {r['uniform_mixture']:.4f}, "
              f"explicit {r['explicit']:.4f} (model alone 1)")


if __name__ == "__main__":
    main()
