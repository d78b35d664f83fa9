#!/usr/bin/env python3
"""The same quality number in vaecodec and in JPEG: PSNR and file size on Kodak.

    python benchmarks/quality_scale.py [--images DIR] [--qualities 10,25,50,75,85,90,95,100] [--model FILE] \
        [--out benchmarks/results/quality-scale]

A model exported with ``--jpeg-quality-scale`` places each quality where its
PSNR matches JPEG's at that quality on training images; this measures how that
holds on the test images, from real files: for each quality, vaecodec's and
JPEG's (4:2:0, ``optimize=True``, libjpeg-turbo via Pillow) mean bpp and PSNR
(mean of per-image values), the PSNR difference, and vaecodec's bytes as a
fraction of JPEG's. Writes OUT.json and OUT.md.
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
    ap.add_argument("--images", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    ap.add_argument("--qualities", default="10,25,50,75,85,90,95,100")
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quality-scale"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from PIL import Image

    from vaecodec.api import Codec
    from vaecodec.baselines import make_codec
    from vaecodec.metrics import psnr
    from vaecodec.image import image_files

    codec, jpeg = Codec(args.model), make_codec("jpeg")
    qualities = [int(q) for q in args.qualities.split(",")]
    paths = image_files(args.images)
    images = []
    for p in paths:
        with Image.open(p) as im:
            images.append((p.name, np.asarray(im.convert("RGB"))))
    rows = []
    for q in qualities:
        row = {"quality": q, "anchor_position": codec.model.quality_position(q)}
        for name in ("vaecodec", "jpeg"):
            bpps, dbs = [], []
            for _, pixels in images:
                if name == "vaecodec":
                    data = codec.compress(pixels, quality=q)
                    decoded = codec.decompress_array(data)
                else:
                    data = jpeg.encode(pixels, ("quality", q))[0]
                    decoded = jpeg.decode(data)
                bpps.append(8 * len(data) / (pixels.shape[0] * pixels.shape[1]))
                dbs.append(psnr(pixels, decoded))
            row[name] = {"bpp": float(np.mean(bpps)), "psnr": float(np.mean(dbs))}
        row["psnr_difference_db"] = row["vaecodec"]["psnr"] - row["jpeg"]["psnr"]
        row["size_ratio"] = row["vaecodec"]["bpp"] / row["jpeg"]["bpp"]
        rows.append(row)
        print(f"quality {q}: vaecodec {row['vaecodec']['bpp']:.3f} bpp {row['vaecodec']['psnr']:.2f} dB, "
              f"jpeg {row['jpeg']['bpp']:.3f} bpp {row['jpeg']['psnr']:.2f} dB", flush=True)

    m = codec.model
    positions = np.array([m.quality_position(q) for q in range(1, 101)])
    even = np.allclose(np.diff(positions), positions[1] - positions[0], atol=1e-4)
    scale = ("evenly spaced in anchor position (not calibrated against JPEG)" if even else
             "calibrated against JPEG on training images, not these (bin/export-model --jpeg-quality-scale)")
    result = {"quality_scale": scale, "command": "python benchmarks/quality_scale.py " + " ".join(sys.argv[1:]),
              "model": f"{m.model_id} {m.weight_hash.hex()}", "images": [n for n, _ in images],
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# The same quality number in vaecodec and JPEG ({len(images)} images)", "",
             f"Command: `{result['command']}`  ", f"Model: {result['model']}; {result['date']}", "",
             "JPEG: Pillow / libjpeg-turbo, 4:2:0, optimize=True. bpp from file bytes; PSNR (RGB) mean of per-image "
             f"values. The model's quality scale: {scale}.", "",
             "| quality | anchor position | vaecodec bpp | vaecodec PSNR | JPEG bpp | JPEG PSNR | PSNR difference | "
             "vaecodec size / JPEG size |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['quality']} | {r['anchor_position']:.3f} | {r['vaecodec']['bpp']:.3f} | "
                     f"{r['vaecodec']['psnr']:.2f} | {r['jpeg']['bpp']:.3f} | {r['jpeg']['psnr']:.2f} | "
                     f"{r['psnr_difference_db']:+.2f} dB | {r['size_ratio']:.2f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.json')} and .md")


if __name__ == "__main__":
    main()
