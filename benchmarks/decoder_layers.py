#!/usr/bin/env python3
"""Where the exact decoder's time goes, layer by layer, against what the CPU's float64 GEMM can do.

    python benchmarks/decoder_layers.py [--model FILE] [--image kodim23.png] [--repeats 3] \
        [--out benchmarks/results/decoder-layers.json]

For one Kodak image's real ŷ and ẑ (quality 75, the shipped model unless
``--model``), times each step of the exact programs at 1 thread (CPU time, best
of ``--repeats``): the hyper-synthesis and the synthesis (a convolution and the
inverse GDN fused after it count as one step), with each step's multiply–
accumulates and so its GMAC/s; and, for reference, torch's float64 matrix
product on shapes like the steps' own (64×64 and 128×1152 weights by 2048
columns, and a 512×512 square). A step far below the reference rate spends its
time outside the products (rounding, clamping, the GDN's elementwise passes,
copies): that is where a faster exact decoder would start. Machines differ, so
compare rates within one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _best_cpu_seconds(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def _macs(layer, a_shape, out_shape) -> int:
    """Multiply–accumulates of one fixed-point layer from its input and output shapes."""
    weight = getattr(layer, "weight", None)
    if not hasattr(layer, "gamma") and weight is None:  # ReLU: no products
        return 0
    if weight is None:  # the inverse GDN: a C×C product per position
        return int(layer.gamma.shape[0] * layer.gamma.shape[1] * np.prod(out_shape[2:]))
    if layer.transposed:  # every input position meets every weight once
        return int(weight.numel() * np.prod(a_shape[2:]))
    return int(weight.numel() * np.prod(out_shape[2:]))


def real_inputs(model, image: str, quality: int = 75):
    """The exact programs' inputs for one image: (ẑ in fixed point, for the hyper-synthesis; ŷ, for the
    synthesis), quantized around the hyperprior's means at ``quality``: realistic values for timing, not a
    file's. The image's sides must be multiples of 64 (Kodak's are)."""
    import torch
    from PIL import Image

    from vaecodec.fixedpoint import to_fixed

    with Image.open(image) as im:
        pixels = np.asarray(im.convert("RGB")).copy()
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
    y, z = model.analyze(x)
    params = model.hyper_decode(z)
    return to_fixed(z.double()), model.dequantize(model.quantize(y, params, quality), params, quality)


def _on_winograd(layer) -> bool:
    """Whether the step multiplies in Winograd's domain here (where int8 kernels pay, digits go first)."""
    from vaecodec.intmm import int_mm_pays

    taps = getattr(layer, "_taps", None)
    return taps is not None and taps.winograd is not None and (taps.digits is None or not int_mm_pays())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--image", default=str(ROOT.parent / "shared" / "data" / "kodak" / "kodim23.png"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--load", default="", help="what else ran on the machine, for the record")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "decoder-layers.json"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from vaecodec.api import Codec
    from vaecodec.intmm import int_mm_pays

    m = Codec(args.model).model
    if m.config.latent_bits or m.config.synthesis_bits:
        raise SystemExit("decoder_layers.py times the fixed-point programs' layers; this model's are narrow "
                         "programs: pass --model vaecodec/weights/vaecodec-cc64-r5.pt")
    z_fixed, y_hat = real_inputs(m, args.image)

    def steps_of(program, a, name):
        rows = []
        for i, step in enumerate(program._steps):
            layer = step.layer  # with step.epilogue, the inverse GDN fused after it
            out = step(a.clone())
            seconds = _best_cpu_seconds(lambda: step(a.clone()), args.repeats)
            macs = _macs(layer, a.shape, out.shape)  # the direct form's, also for steps run in Winograd's domain
            if step.epilogue is not None:
                macs += _macs(step.epilogue, out.shape, out.shape)
            kind = (type(layer).__name__.strip("_") + ("+InverseGDN" if step.epilogue is not None else "")
                    + (" (Winograd)" if _on_winograd(layer) else ""))
            rows.append({"program": name, "step": i, "kind": kind, "input": list(a.shape), "output": list(out.shape),
                         "cpu_ms": 1e3 * seconds, "gmac": macs / 1e9,
                         "gmac_per_s": macs / 1e9 / seconds if seconds > 0 and macs else None})
            a = out
        return rows

    rows = steps_of(m.hyper_synthesis, z_fixed, "hyper-synthesis") + steps_of(m.synthesis, y_hat, "synthesis")
    reference = []
    for rows_, inner, cols in [(64, 64, 2048), (128, 1152, 2048), (512, 512, 512)]:
        w = torch.randn(rows_, inner, dtype=torch.float64)
        b = torch.randn(inner, cols, dtype=torch.float64)
        acc = torch.zeros(rows_, cols, dtype=torch.float64)
        seconds = _best_cpu_seconds(lambda: [acc.addmm_(w, b) for _ in range(10)], args.repeats) / 10
        reference.append({"shape": [rows_, inner, cols], "gmac_per_s": rows_ * inner * cols / 1e9 / seconds})
    result = {"command": "python benchmarks/decoder_layers.py " + " ".join(sys.argv[1:]),
              "model": f"{m.model_id} {m.weight_hash.hex()}", "image": Path(args.image).name, "quality": 75,
              "platform": platform.platform(), "int8_kernels": int_mm_pays(), "load": args.load,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "steps": rows,
              "float64_gemm_reference": reference}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for r in rows:
        rate = "–" if r["gmac_per_s"] is None else f"{r['gmac_per_s']:.1f}"
        print(f"{r['program']:16s} {r['step']} {r['kind']:28s} {str(r['output']):22s} {r['cpu_ms']:7.1f} ms "
              f"{r['gmac']:6.3f} GMAC {rate:>5s} GMAC/s")
    for r in reference:
        print(f"float64 GEMM {r['shape']}: {r['gmac_per_s']:.1f} GMAC/s")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
