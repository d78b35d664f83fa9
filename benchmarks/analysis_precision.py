#!/usr/bin/env python3
"""Does the encoder's bfloat16 analysis cost rate–distortion? Files from both precisions, same images.

    python benchmarks/analysis_precision.py [--images ../shared/data/kodak] [--count 24] \
        [--qualities 10,30,50,70,90,100] [--all-bfloat16] [--out benchmarks/results/analysis-precision.json]

Where the CPU runs bfloat16 natively (AMX, AVX512-BF16),
:meth:`vaecodec.coding_model.CodingModel.analyze` runs the analysis transform in
mixed precision as training's autocast does (its inner convolutions in bfloat16;
``--all-bfloat16``: every layer, as before); ``VAECODEC_ANALYSIS=float32``
forces float32. Only the encoder differs: every
file decodes exactly the same way. For each image and quality both precisions
compress with the shipped model (one process, 1 thread, alternating), the file
is decoded, and rate (file bytes) and PSNR are recorded; the JSON has both
curves, the BD-rate of bfloat16 against float32 (PSNR), the largest PSNR and
bpp differences per quality, and the analysis' CPU time in each precision
(median per image).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import vaecodec  # noqa: E402
from vaecodec import model as model_module  # noqa: E402
from vaecodec.image import to_model_input  # noqa: E402
from vaecodec.metrics import bd_rate, psnr  # noqa: E402

ARMS = {"float32": "float32", "bfloat16": ""}  # arm → VAECODEC_ANALYSIS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    ap.add_argument("--count", type=int, default=24)
    ap.add_argument("--qualities", default="10,30,50,70,90,100")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "analysis-precision.json"))
    ap.add_argument("--all-bfloat16", action="store_true",
                    help="the bfloat16 arm with every layer in bfloat16 (without it, the code's rule: the first and "
                         "last convolutions and the GDNs in float32)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model_module.KEEP_FLOAT32 = not args.all_bfloat16  # read when the codec's model is built
    codec = vaecodec.Codec()
    if not codec.model.analysis_in_bfloat16():
        sys.exit("this CPU has no native bfloat16 (or oneDNN is off): the analysis runs in float32 here anyway")
    files = sorted(Path(args.images).glob("*.png"))[:args.count]
    qualities = [int(q) for q in args.qualities.split(",")]
    rows = {arm: {q: [] for q in qualities} for arm in ARMS}
    analysis_ms = {arm: [] for arm in ARMS}
    for f in files:
        pixels = np.asarray(Image.open(f).convert("RGB"))
        x = to_model_input(pixels, 64, torch.uint8)
        for arm, env in ARMS.items():
            os.environ["VAECODEC_ANALYSIS"] = env
            t = time.process_time()
            codec.model.analyze(x)
            analysis_ms[arm].append((time.process_time() - t) * 1e3)
            for q in qualities:
                data = codec.compress(pixels, quality=q)
                decoded = codec.decompress_array(data)
                rows[arm][q].append((8 * len(data) / (pixels.shape[0] * pixels.shape[1]), psnr(pixels, decoded)))
        print(f.name, flush=True)
    os.environ.pop("VAECODEC_ANALYSIS")
    curves = {arm: {"qualities": qualities,
                    "bpp": [float(np.mean([r[0] for r in rows[arm][q]])) for q in qualities],
                    "psnr": [float(np.mean([r[1] for r in rows[arm][q]])) for q in qualities]} for arm in ARMS}
    ref, test = curves["float32"], curves["bfloat16"]
    result = {
        "command": "python benchmarks/analysis_precision.py " + " ".join(sys.argv[1:]),
        "model": f"{codec.model.model_id} {codec.model.weight_hash.hex()}", "all_bfloat16": args.all_bfloat16,
        "images": len(files), "curves": curves,
        "bd_rate_bfloat16_vs_float32_percent": bd_rate(ref["bpp"], ref["psnr"], test["bpp"], test["psnr"]),
        "max_abs_psnr_difference_db": max(abs(a - b) for q in qualities
                                          for (_, a), (_, b) in zip(rows["float32"][q], rows["bfloat16"][q])),
        "analysis_cpu_ms_median": {arm: statistics.median(v) for arm, v in analysis_ms.items()},
    }
    result["analysis_speedup"] = result["analysis_cpu_ms_median"]["float32"] / result["analysis_cpu_ms_median"]["bfloat16"]
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "curves"}, indent=1))


if __name__ == "__main__":
    main()
