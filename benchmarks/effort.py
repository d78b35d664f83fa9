#!/usr/bin/env python3
"""Encoder effort: BD-rate against effort 1 and CPU seconds per image, for each effort level.

    python benchmarks/effort.py [--images DIR] [--count 8] [--qualities 15,35,55,75,90] \
        [--efforts 1,3,5,7,9] [--model FILE] [--out benchmarks/results/effort]

For every image × quality × effort: the file's bytes (rate), PSNR of the
decoded pixels, encode and decode CPU seconds (1 thread). Each effort's curve
(mean bpp and mean PSNR per quality) gets a BD-rate (PSNR) against effort 1,
and the worst per-quality change is reported too (an effort level must never
be worse than effort 1). AVIF (libaom speed 6, one thread) encodes the same
images in the same run, so encode times can be read as ratios to it: machines
of this kind differ ~3.5× in speed. Writes OUT.json and OUT.md.
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
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--qualities", default="15,35,55,75,90")
    ap.add_argument("--efforts", default="1,3,5,7,9")
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "effort"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    import vaecodec
    from vaecodec.baselines import make_codec
    from vaecodec.image import load_pixels
    from vaecodec.metrics import bd_rate, psnr

    codec = vaecodec.Codec(args.model)
    images = sorted(Path(args.images).glob("*.png"))[:args.count]
    qualities = [int(q) for q in args.qualities.split(",")]
    efforts = [int(e) for e in args.efforts.split(",")]
    if efforts[0] != 1:
        raise SystemExit("the first effort must be 1 (the reference)")
    rows = []
    avif = make_codec("avif")
    avif_s = []
    for path in images:
        px = load_pixels(path)
        t = time.process_time()
        avif.encode(px, ("quality", 55))
        avif_s.append(time.process_time() - t)
        for q in qualities:
            for e in efforts:
                t0 = time.process_time()
                enc = codec.encode(px, quality=q, effort=e)
                t1 = time.process_time()
                out = codec.decompress_array(enc.data)
                t2 = time.process_time()
                rows.append({"image": path.name, "quality": q, "effort": e, "bytes": enc.num_bytes, "bpp": enc.bpp,
                             "psnr": psnr(px, out), "encode_cpu_s": t1 - t0, "decode_cpu_s": t2 - t1})
                print(f"{path.name} q{q} e{e}: {enc.bpp:.4f} bpp {rows[-1]['psnr']:.3f} dB, "
                      f"encode {t1 - t0:.1f} s", flush=True)
    summary = []
    for e in efforts:
        curve = [(np.mean([r["bpp"] for r in rows if r["effort"] == e and r["quality"] == q]),
                  np.mean([r["psnr"] for r in rows if r["effort"] == e and r["quality"] == q])) for q in qualities]
        ref = [(np.mean([r["bpp"] for r in rows if r["effort"] == 1 and r["quality"] == q]),
                np.mean([r["psnr"] for r in rows if r["effort"] == 1 and r["quality"] == q])) for q in qualities]
        bd = bd_rate([c[0] for c in ref], [c[1] for c in ref], [c[0] for c in curve], [c[1] for c in curve])
        sel = [r for r in rows if r["effort"] == e]
        summary.append({
            "effort": e, "bd_rate_vs_effort_1": bd,
            "points": [{"quality": q, "bpp": float(b), "psnr": float(p)} for q, (b, p) in zip(qualities, curve)],
            "encode_cpu_s_mean": float(np.mean([r["encode_cpu_s"] for r in sel])),
            "encode_cpu_s_max": float(np.max([r["encode_cpu_s"] for r in sel])),
            "decode_cpu_s_mean": float(np.mean([r["decode_cpu_s"] for r in sel])),
        })
    avif_mean = float(np.mean(avif_s))
    result = {"command": "python benchmarks/effort.py " + " ".join(sys.argv[1:]),
              "model": f"{codec.model.model_id} {codec.model.weight_hash.hex()}",
              "images": [p.name for p in images], "qualities": qualities,
              "avif_speed6_encode_cpu_s_mean": avif_mean, "summary": summary, "rows": rows}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["# Encoder effort", "", f"Command: `{result['command']}`  ", f"Model: {result['model']}; "
             f"{len(images)} images ({images[0].parent.name}), qualities {qualities}; rate from file bytes; 1 thread.", "",
             f"AVIF (libaom speed 6, quality 55, 1 thread) on the same images in the same run: "
             f"{avif_mean:.2f} CPU-s per image.", "",
             "| effort | BD-rate vs effort 1 (PSNR) | encode CPU-s per image (mean / max) | × AVIF s6 | decode CPU-s |",
             "|---|---|---|---|---|"]
    for s in summary:
        bd = "–" if s["bd_rate_vs_effort_1"] is None else f"{s['bd_rate_vs_effort_1']:+.1f}%"
        lines.append(f"| {s['effort']} | {bd} | {s['encode_cpu_s_mean']:.1f} / {s['encode_cpu_s_max']:.1f} | "
                     f"{s['encode_cpu_s_mean'] / avif_mean:.1f}× | {s['decode_cpu_s_mean']:.2f} |")
    lines += ["", "| effort | " + " | ".join(f"q{q} bpp / PSNR" for q in qualities) + " |",
              "|---|" + "---|" * len(qualities)]
    for s in summary:
        lines.append(f"| {s['effort']} | " + " | ".join(f"{p['bpp']:.4f} / {p['psnr']:.2f}" for p in s["points"]) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
