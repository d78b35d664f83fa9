#!/usr/bin/env python3
"""What a narrower or an 8-bit integer synthesis would cost to decode: the speed side of choosing the next model.

    python benchmarks/synthesis_cost.py [--images ../shared/data/kodak] [--count 6] [--repeats 2]
        [--variants 128x64,128x48,96x48,128x32,96x32,64x32,int8:128x64,int10:128x64] [--out benchmarks/results/synthesis-cost.json]

The decoder's bottleneck is the exact float64 synthesis (``benchmarks/speed.py``).
Its cost is set by the widths (w at 1/8 and 1/4 resolution, n at 1/2), not by
the weights' values: its arithmetic has no data-dependent paths. So each
variant ``WxN`` is the shipped synthesis' layer stack (transposed 5×5 stride-2
convolutions and inverse GDNs) with those widths and seeded random weights,
compiled to the same fixed-point program; ``int8:WxN`` is a prototype 8-bit
integer pipeline of those widths (below). Each runs through the codec's own
tiled ``synthesize`` on the shipped model's real ŷ of each Kodak image
(quality 50), interleaved with the shipped synthesis in the same run (1
thread). Reported per variant: synthesis MACs per pixel, CPU ms per image, its
ratio r to the shipped one, and a projection of compress + decompress against
AVIF speed 6 if only the synthesis changed: (encode + decode − S + r·S) / AVIF,
with the stage times and AVIF's from ``benchmarks/results/speed.json`` (the
analysis keeps its width: it is an encoder-side float network, exactness does
not bind it). Quality is not measured here: a narrower synthesis has to be
trained to know what it loses, and an 8-bit one's loss before retraining is
``benchmarks/synthesis_precision.py``'s question.

``int10:WxN`` (any ``intB``) times the 8-bit program on float products with
its taps summed in the runs that B-bit weights and activations would need
(every sum 4^(B−8) times larger; the products are the same): the speed of a
wider integer synthesis on a CPU without int8 kernels, before one exists.

``int8:WxN`` runs the decoder's own 8-bit program
(:class:`vaecodec.int8_synthesis.Int8SynthesisProgram`, int8 products summed in
int32, integer rescaling) built from the seeded stack with its rounding steps
calibrated on the real ŷ. (Session 7's figures came from a stand-alone
prototype of the same pipeline, before it became library code.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    ap.add_argument("--count", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--variants", default="128x64,128x48,96x48,128x32,96x32,64x32,int8:128x64")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "synthesis-cost.json"))
    args = ap.parse_args()

    import numpy as np
    from torch import nn

    torch.set_num_threads(1)
    import vaecodec
    from vaecodec.fixedpoint import ACT_FRAC_BITS, FixedPointProgram
    from vaecodec import int8_float
    from vaecodec.int8_synthesis import Int8Synthesis, Int8SynthesisProgram
    from vaecodec.intmm import int_mm_pays
    from vaecodec.image import load_pixels
    from vaecodec.model import SimplifiedGDN, _deconv

    codec = vaecodec.Codec()
    model = codec.model
    m = model.config.latent_channels

    def stack(w: int, n: int) -> nn.Sequential:
        torch.manual_seed(0)
        return nn.Sequential(_deconv(m, w), SimplifiedGDN(w, inverse=True), _deconv(w, n), SimplifiedGDN(n, inverse=True),
                             _deconv(n, n), SimplifiedGDN(n, inverse=True), _deconv(n, 3)).eval()

    def macs_per_pixel(seq: nn.Sequential) -> float:
        """Multiply-accumulates per output pixel: every input element of a transposed convolution meets cout·k²
        weights; an inverse GDN is a C×C product per position."""
        x, total = torch.zeros(1, m, 4, 4), 0
        with torch.no_grad():
            for layer in seq:
                if isinstance(layer, nn.ConvTranspose2d):
                    total += x.numel() * layer.out_channels * layer.kernel_size[0] * layer.kernel_size[1]
                elif isinstance(layer, SimplifiedGDN):
                    total += x.shape[1] * x.numel()
                x = layer(x)
        return total / (x.shape[2] * x.shape[3])

    y_hats = []
    for path in sorted(Path(args.images).glob("*.png"))[:args.count]:
        with torch.no_grad():
            analysed = codec._analyze(load_pixels(path))
            _, y_hat = codec._code(analysed, analysed.latents, 50, keep_y_hat=True)
        y_hats.append(y_hat)

    shipped = model.synthesis
    # The shipped program with its trained weights; its MACs are those of its widths.
    variants = {"shipped": (shipped, macs_per_pixel(stack(model.config.wide, model.config.channels)))}
    for spec in args.variants.split(","):
        prefix, _, widths = spec.rpartition(":")
        w, n = (int(v) for v in widths.split("x"))
        seq = stack(w, n)
        if prefix:  # int8, or intB: the 8-bit program on float products summed as B-bit ones would be
            bits = int(prefix.removeprefix("int"))
            module = Int8Synthesis(*seq)
            module.calibrate(y_hats[0].float() * 2.0**-ACT_FRAC_BITS)
            program = Int8SynthesisProgram.from_module(module)
            if bits != 8:
                if int_mm_pays():
                    raise SystemExit("intB variants time the float path; set VAECODEC_INT8_KERNEL=float32 here")
                # Weights and activations 2^(B−8) times larger make every sum 4^(B−8) times larger: the float
                # path's runs of taps are what its bound would choose for them (same products, more runs).
                limit = int8_float.FLOAT32_EXACT_LIMIT
                int8_float.FLOAT32_EXACT_LIMIT = limit / 4 ** (bits - 8)
                try:
                    program._on_floats = int8_float.Int8FloatProgram(program)
                finally:
                    int8_float.FLOAT32_EXACT_LIMIT = limit
        else:
            program = FixedPointProgram.from_sequential(seq)
        variants[spec] = (program, macs_per_pixel(seq))

    seconds = {name: [] for name in variants}
    try:
        for _ in range(args.repeats):
            for y_hat in y_hats:
                for name, (program, _) in variants.items():
                    model.synthesis = program
                    t = time.process_time()
                    model.synthesize(y_hat)
                    seconds[name].append(time.process_time() - t)
    finally:
        model.synthesis = shipped

    speed = json.loads((ROOT / "benchmarks" / "results" / "speed.json").read_text())
    one = speed["stages"]["1"]
    enc = sum(v["cpu_ms"] for k, v in one.items() if k.startswith("encode"))
    dec = sum(v["cpu_ms"] for k, v in one.items() if k.startswith("decode"))
    synth = next(v["cpu_ms"] for k, v in one.items() if k.startswith("decode: synthesis"))
    avif = speed["avif"]["encode_cpu_ms"] + speed["avif"]["decode_cpu_ms"]
    base = float(np.mean(seconds["shipped"]))
    rows = []
    for name, (_, macs) in variants.items():
        r = float(np.mean(seconds[name])) / base
        rows.append({"variant": name, "synthesis_macs_per_pixel": macs, "synthesis_cpu_ms": 1000 * float(np.mean(seconds[name])),
                     "ratio_to_shipped": r, "projected_vs_avif": (enc + dec - synth + r * synth) / avif})
    result = {"command": "python benchmarks/synthesis_cost.py " + " ".join(sys.argv[1:]),
              "model": f"{model.model_id} {model.weight_hash.hex()}", "images": args.count, "repeats": args.repeats,
              "speed_json": {"command": speed["command"], "encode_ms": enc, "decode_ms": dec, "synthesis_ms": synth,
                             "avif_ms": avif}, "variants": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'variant':>10} {'kMAC/px':>8} {'synth ms':>9} {'× shipped':>9} {'proj. × AVIF':>12}")
    for r in rows:
        print(f"{r['variant']:>10} {r['synthesis_macs_per_pixel'] / 1000:8.1f} {r['synthesis_cpu_ms']:9.1f} "
              f"{r['ratio_to_shipped']:9.2f} {r['projected_vs_avif']:12.2f}")


if __name__ == "__main__":
    main()
