#!/usr/bin/env python3
"""What lower-precision arithmetic in the synthesis would cost in PSNR, before any quantization-aware training.

    python benchmarks/synthesis_precision.py [--images ../shared/data/kodak] [--count 6] [--qualities 20,50,90]
        [--variants 8:8:channel,8:9:channel] [--headroom 1] [--out benchmarks/results/synthesis-precision.json]

The exact decoder runs the synthesis on 14-bit weights and up to 21-bit
activations in float64 (``vaecodec/fixedpoint.py``), its slowest part
(``benchmarks/speed.py``). Narrow integers would let it run as int8 GEMMs (or
float32, exact below 2^24), with far less memory traffic. This measures, with
the shipped weights and no retraining, the PSNR on Kodak images when the
synthesis' weights are rounded to B bits (per output channel, power-of-two
scale) and its activations, and the inverse GDNs' norms, to A bits (a power-of-two
scale per layer, or per channel, set from the largest value these same images
reach: an optimistic calibration). Simulated in float64 on the decoded ŷ of
each image at each quality; the shipped exact path's PSNR is beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (weight bits, activation bits, activation scale per "layer" or "channel"); 0 = as in float.
VARIANTS = [(0, 0, "layer"), (8, 0, "layer"), (8, 16, "layer"), (8, 12, "layer"), (8, 10, "layer"), (8, 8, "layer"),
            (8, 10, "channel"), (8, 8, "channel"), (10, 10, "layer")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    ap.add_argument("--count", type=int, default=6)
    ap.add_argument("--qualities", default="20,50,90")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "synthesis-precision.json"))
    ap.add_argument("--headroom", type=float, default=0.0, help="bits of headroom above the calibrated peaks")
    ap.add_argument("--model", help="model file (default: the shipped model); its own decoder is the first row")
    ap.add_argument("--variants", help="W:A:layer|channel|folded,... (weight bits, activation bits, scale; 0 = "
                    "float; folded: per channel, each input channel's step folded into the weights before they are "
                    "rounded per output channel, as one integer accumulator per output computes); default: the set above")
    args = ap.parse_args()
    variants = VARIANTS if not args.variants else [
        (int(w), int(a), per) for w, a, per in (v.split(":") for v in args.variants.split(","))]

    import numpy as np
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    import vaecodec
    from vaecodec.fixedpoint import ACT_FRAC_BITS
    from vaecodec.image import load_pixels, to_output_pixels
    from vaecodec.metrics import ms_ssim, psnr
    from vaecodec.model import build_model

    codec = vaecodec.Codec(args.model) if args.model else vaecodec.Codec()
    model = codec.model
    net = build_model(model.config)
    net.load_state_dict({k: v.float() for k, v in model.weights.items()})
    layers = list(net.synthesis.double().eval())
    qualities = [int(q) for q in args.qualities.split(",")]

    def round_to_bits(v: torch.Tensor, bits: int, peak: torch.Tensor) -> torch.Tensor:
        """v on a power-of-two grid whose largest step count (2^(bits−1) − 1) covers ``peak``."""
        top = 2 ** (bits - 1) - 1
        scale = torch.exp2(torch.floor(torch.log2(top / peak.clamp_min(1e-12))))
        return torch.round(v * scale).clamp(-top, top) / scale

    def weight(w: torch.Tensor, bits: int, out_dim: int) -> torch.Tensor:
        if not bits or not w.any():
            return w
        peak = w.abs().amax(dim=[d for d in range(w.dim()) if d != out_dim], keepdim=True)
        return round_to_bits(w, bits, peak)

    def run(y: torch.Tensor, wbits: int, abits: int, per: str, peaks: dict, record: bool = False) -> torch.Tensor:
        def act(key, v):
            if record:
                p = v.abs().amax(dim=(0, 2, 3), keepdim=True)
                peaks[key] = p if key not in peaks else torch.maximum(peaks[key], p)
                return v
            if not abits:
                return v
            peak = peaks[key] if per in ("channel", "folded") else peaks[key].max()
            return round_to_bits(v, abits, peak * 2.0**args.headroom)

        def folded(w: torch.Tensor, key, in_dim: int, out_dim: int) -> torch.Tensor:
            """``per == "folded"``: the weights as an integer program with per-channel input steps computes them:
            each input channel's step folded in before the rows are rounded per output channel."""
            if per != "folded" or record or not abits or not wbits:
                return weight(w, wbits, out_dim)
            top = 2 ** (abits - 1) - 1
            step = 1 / torch.exp2(torch.floor(torch.log2(top / (peaks[key] * 2.0**args.headroom).clamp_min(1e-12))))
            shape = [1] * w.dim()
            shape[in_dim] = -1
            s = step.reshape(shape)
            return weight(w * s, wbits, out_dim) / s

        a = y
        for i, layer in enumerate(layers):
            a = act(i, a)
            if isinstance(layer, torch.nn.ConvTranspose2d):
                a = F.conv_transpose2d(a, folded(layer.weight, i, 0, 1), layer.bias, layer.stride, layer.padding,
                                       layer.output_padding)
            else:  # inverse simplified GDN: a·(β + Γ|a|)
                beta, gamma = (t.double() for t in layer.effective_params())
                norm = act(("norm", i), F.conv2d(a.abs(), folded(gamma[:, :, None, None], i, 1, 0), beta))
                a = a * norm
        return a

    samples = []
    for path in sorted(Path(args.images).glob("*.png"))[:args.count]:
        px = load_pixels(path)
        for q in qualities:
            with torch.no_grad():
                analysed = codec._analyze(px)
                _, y_hat = codec._code(analysed, analysed.latents, q, keep_y_hat=True)
            exact = to_output_pixels(model.synthesize(y_hat), analysed.height, analysed.width, "RGB")
            samples.append((q, px, analysed, y_hat.double() * 2.0**-ACT_FRAC_BITS, psnr(px, exact), ms_ssim(px, exact)))

    peaks: dict = {}
    with torch.no_grad():
        for _, _, _, y, _, _ in samples:
            run(y, 0, 0, "layer", peaks, record=True)
    rows = [{"variant": "exact (the model's own decoder)",
             "psnr": {q: float(np.mean([s[4] for s in samples if s[0] == q])) for q in qualities},
             "ms_ssim": {q: float(np.mean([s[5] for s in samples if s[0] == q])) for q in qualities}}]
    for wbits, abits, per in variants:
        by_q, ms_by_q = {q: [] for q in qualities}, {q: [] for q in qualities}
        for q, px, analysed, y, _, _ in samples:
            with torch.no_grad():
                x = run(y, wbits, abits, per, peaks)
            pixels = torch.round(x * 255).clamp(0, 255)[0].permute(1, 2, 0).to(torch.uint8).numpy()
            out = to_output_pixels(pixels, analysed.height, analysed.width, "RGB")
            by_q[q].append(psnr(px, out))
            ms_by_q[q].append(ms_ssim(px, out))
        name = f"weights {wbits or 'float'}, activations {abits or 'float'}" + (f" per {per}" if abits else "")
        rows.append({"variant": name, "weight_bits": wbits, "activation_bits": abits, "activation_scale": per,
                     "psnr": {q: float(np.mean(v)) for q, v in by_q.items()},
                     "ms_ssim": {q: float(np.mean(v)) for q, v in ms_by_q.items()}})
    exact = rows[0]["psnr"]
    result = {"command": "python benchmarks/synthesis_precision.py " + " ".join(sys.argv[1:]),
              "model": f"{model.model_id} {model.weight_hash.hex()}", "images": args.count, "qualities": qualities,
              "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'variant':<48}" + "".join(f"{'q' + str(q) + ' dB (Δ)':>18}" for q in qualities))
    for r in rows:
        print(f"{r['variant']:<48}" + "".join(f"{r['psnr'][q]:10.3f} ({r['psnr'][q] - exact[q]:+.2f})" for q in qualities))
    print("MS-SSIM (Δ × 10^4)")
    for r in rows:
        print(f"{r['variant']:<48}" + "".join(f"{r['ms_ssim'][q]:10.5f} ({1e4 * (r['ms_ssim'][q] - rows[0]['ms_ssim'][q]):+.1f})"
                                              for q in qualities))


if __name__ == "__main__":
    main()
