#!/usr/bin/env python3
"""Bits-back over the mixture component: where the bits of a lossless file go.

    python benchmarks/lossless_bits_back.py [--kodak ../shared/data/kodak] [--count 24] \
        [--out benchmarks/results/lossless-bits-back.json]

For each image, the shipped mixture pixel model's lossless file (``Codec().encode(..., lossless=True)``,
checked exact) and, from the same push, the three sums that explain its size: the mixture's
marginal −log2 p(x) (what an exact posterior would cost), the net bits-back cost
Σ −log2 π(c) − log2 p(x|c) + log2 q(c|x) of the components actually drawn (float64 models), and the
file's payload. The gaps: net − marginal is what the integer posterior q pays for not being exact
(its KL to the true posterior, plus the first sub-pixel of each tile, coded without borrowing), and
payload − net is the coder (24-bit probabilities, the ANS state, the check values). The file of
0.2's single-Laplace pixel model is measured beside it. Bits per sub-pixel throughout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one thread, numpy's BLAS included (as benchmarks/lossless.py)
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kodak", type=Path, default=ROOT.parent / "shared" / "data" / "kodak")
    ap.add_argument("--count", type=int, default=24)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "lossless-bits-back.json")
    args = ap.parse_args()

    from vaecodec import entropy
    from vaecodec.api import LOSSLESS_MODEL_ID, Codec
    from vaecodec.container import unpack
    from vaecodec.image import load_pixels
    from vaecodec.lossless_codec import BitsBackPixelCodec, push_image

    codec = Codec()
    mixture = codec.lossless_model
    laplace = codec._shipped_pixel_model("px12-h64")
    assert mixture.model_id == LOSSLESS_MODEL_ID and mixture.components > 1
    single = Codec(pixel_model=laplace)
    rows = []
    for path in sorted(args.kodak.glob("*.png"))[:args.count]:
        px = load_pixels(path)
        subpixels = px.size
        t = time.process_time()
        enc = codec.encode(px, lossless=True)
        encode_s = time.process_time() - t
        t = time.process_time()
        exact = np.array_equal(codec.decompress_array(enc.data), px)
        decode_s = time.process_time() - t
        bits_back = BitsBackPixelCodec(mixture)  # the same push, to read its sums
        push_image(entropy.new_coder(), px, bits_back)
        payload = 32 * unpack(enc.data)[1].size
        row = {"image": path.name, "exact": exact, "encode_cpu_s": encode_s, "decode_cpu_s": decode_s,
               "file_bits_per_subpixel": 8 * enc.num_bytes / subpixels,
               "payload_bits_per_subpixel": payload / subpixels,
               "net_bits_per_subpixel": bits_back.information_bits / subpixels,
               "marginal_bits_per_subpixel": bits_back.marginal_bits / subpixels,
               "single_laplace_file_bits_per_subpixel": 8 * len(single.compress(px, lossless=True)) / subpixels}
        rows.append(row)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    keys = [k for k in rows[0] if k not in ("image", "exact")]
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    out = {"command": "python benchmarks/lossless_bits_back.py " + " ".join(sys.argv[1:]),
           "mixture_model": f"{mixture.model_id} {mixture.weight_hash.hex()}",
           "single_laplace_model": f"{laplace.model_id} {laplace.weight_hash.hex()}",
           "images": len(rows), "all_exact": all(r["exact"] for r in rows), "mean": mean,
           "posterior_gap_pct": 100 * (mean["net_bits_per_subpixel"] / mean["marginal_bits_per_subpixel"] - 1),
           "coder_gap_pct": 100 * (mean["payload_bits_per_subpixel"] / mean["net_bits_per_subpixel"] - 1),
           "vs_single_laplace_pct": 100 * (mean["file_bits_per_subpixel"]
                                           / mean["single_laplace_file_bits_per_subpixel"] - 1),
           "rows": rows}
    if args.count >= 24:
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
