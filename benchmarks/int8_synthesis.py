#!/usr/bin/env python3
"""What the 8-bit synthesis costs in quality and buys in decoding time: two exported models, one run.

    python benchmarks/int8_synthesis.py --float MODEL.pt --int8 MODEL.pt [--kodak ../shared/data/kodak]
        [-j 2] [--timing-images 6] [--out benchmarks/results/int8-synthesis.json]

The two models should come from the same stable checkpoint, annealed the same
number of steps: one as it was (exact fixed-point synthesis), one forked with
``vaecodec fork-int8`` (quantization-aware: its synthesis trains as the int8
decoder computes). Both are measured on all Kodak images from real files at
the codec's quality sweep: BD-rate of the int8 model against the float one
(PSNR and MS-SSIM, over the rates both cover) and PSNR at each quality. Then
each model's synthesis time on its own ŷ of the same images at quality 50 (1
thread, interleaved, the codec's own tiled ``synthesize``), and their ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--float", dest="float_model", required=True)
    ap.add_argument("--int8", dest="int8_model", required=True)
    ap.add_argument("--kodak", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    ap.add_argument("-j", "--jobs", type=int, default=2)
    ap.add_argument("--timing-images", type=int, default=6)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "int8-synthesis.json"))
    args = ap.parse_args()

    import torch

    import vaecodec
    from vaecodec.bench import run_benchmark
    from vaecodec.image import load_pixels
    from vaecodec.intmm import int_mm_pays
    from vaecodec.metrics import bd_rate

    models = {"float": args.float_model, "int8": args.int8_model}
    curves = {}
    for name, path in models.items():
        report = run_benchmark([args.kodak], ["vaecodec"], reference="vaecodec", model=path, jobs=args.jobs, published=False)
        c = report.curve("vaecodec")
        curves[name] = {"settings": [p.setting for p in c.points], "bpp": c.rates(), "psnr": c.psnrs(),
                        "ms_ssim_db": c.ms_ssim_dbs()}
        print(name, " ".join(f"{s}:{b:.3f}/{q:.2f}" for s, b, q in zip(*(curves[name][k] for k in ("settings", "bpp", "psnr")))),
              flush=True)
    f, i = curves["float"], curves["int8"]
    bd_psnr = bd_rate(f["bpp"], f["psnr"], i["bpp"], i["psnr"])
    bd_msssim = bd_rate(f["bpp"], f["ms_ssim_db"], i["bpp"], i["ms_ssim_db"])

    torch.set_num_threads(1)
    codecs = {name: vaecodec.Codec(path) for name, path in models.items()}
    ys = {name: [] for name in codecs}
    for p in sorted(Path(args.kodak).glob("*.png"))[:args.timing_images]:
        px = load_pixels(p)
        for name, c in codecs.items():
            with torch.no_grad():
                analysed = c._analyze(px)
                _, y_hat = c._code(analysed, analysed.latents, 50, keep_y_hat=True)
            ys[name].append(y_hat)
    seconds = {name: 0.0 for name in codecs}
    for _ in range(2):
        for k in range(len(ys["float"])):
            for name, c in codecs.items():
                t = time.process_time()
                c.model.synthesize(ys[name][k])
                seconds[name] += time.process_time() - t
    runs = 2 * len(ys["float"])
    result = {
        "command": "python benchmarks/int8_synthesis.py " + " ".join(sys.argv[1:]),
        "models": {name: f"{c.model.model_id} {c.model.weight_hash.hex()}" for name, c in codecs.items()},
        "int8_kernel": "torch._int_mm" if int_mm_pays() else "float32",
        "curves": curves,
        "bd_rate_int8_vs_float": {"psnr": bd_psnr, "ms_ssim": bd_msssim},
        "psnr_difference_by_setting": {s: b - a for s, a, b in zip(f["settings"], f["psnr"], i["psnr"])},
        "synthesis_cpu_ms": {name: 1000 * s / runs for name, s in seconds.items()},
        "synthesis_ratio_int8_to_float": seconds["int8"] / seconds["float"],
        "timing_images": len(ys["float"]),
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"BD-rate int8 vs float: PSNR {bd_psnr:+.2f}%, MS-SSIM {bd_msssim:+.2f}%; PSNR difference by quality: "
          + " ".join(f"{s}:{d:+.2f}" for s, d in result["psnr_difference_by_setting"].items()))
    print(f"synthesis: float {result['synthesis_cpu_ms']['float']:.0f} ms, int8 {result['synthesis_cpu_ms']['int8']:.0f} ms "
          f"({result['synthesis_ratio_int8_to_float']:.2f}×), kernel {result['int8_kernel']}")


if __name__ == "__main__":
    main()
