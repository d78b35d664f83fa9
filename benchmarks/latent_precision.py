#!/usr/bin/env python3
"""What narrower integers in the networks that feed the entropy coder would cost in rate, before retraining.

    python benchmarks/latent_precision.py [--images ../shared/data/kodak] [--count 6]
        [--variants 10:10,8:8] [--calibrate ../shared/data/train] [--out benchmarks/results/latent-precision.json]

The exact decoder's latent side (the hyper-synthesis, the checkerboard
context, the channel contexts and the entropy-parameter networks that turn
them into each latent's mean and scale) runs on 14-bit weights and up to
21-bit activations in float64, like the synthesis; it is about 40 % of a
compress + decompress (``benchmarks/speed.py``). With W-bit weights and A-bit
activations it could run on float32 products instead (exact below 2^24, as
``vaecodec/int8_float.py`` does for an 8-bit synthesis). This measures, with
the shipped weights and no retraining, the model's own rate estimate and PSNR
(hard-rounded latents, Σ −log2 p: ``vaecodec.training.evaluate``) when every
convolution of those networks has its weights rounded to W bits (per output
channel, power-of-two scale) and its input to A bits (a power-of-two scale
per channel, set from the largest value these same images reach: an
optimistic calibration; ``--calibrate DIR`` takes them from other images,
as a shipped program would, and inputs beyond saturate; ``--headroom B``
scales the peaks by 2^B first), against the float
model. The synthesis and the analysis are left as they are.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    ap.add_argument("--count", type=int, default=6)
    ap.add_argument("--lambdas", default="0.0008,0.0064,0.0512,0.4096,3.2768")
    ap.add_argument("--variants", default="10:10,9:9,8:8")
    ap.add_argument("--headroom", type=float, default=0.0, help="bits of headroom above the calibrated peaks")
    ap.add_argument("--scheme", choices=("separate", "folded", "tensor"), default="separate",
                    help="separate: weights rounded per output channel on their own, activations per channel "
                    "(the default; not what one integer accumulator computes); folded: each input channel's "
                    "activation step folded into the weights before they are rounded per output channel (what an "
                    "integer program with per-channel activation steps computes); tensor: one activation step "
                    "per layer input")
    ap.add_argument("--calibrate", help="folder whose first --count images set the input scales (e.g. training "
                    "images: the way a shipped program would be made); default: the measured images themselves")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "latent-precision.json"))
    args = ap.parse_args()

    import copy

    import numpy as np
    import torch
    from torch import nn

    torch.set_num_threads(1)
    import vaecodec
    from vaecodec.image import image_files
    from vaecodec.model import build_model
    from vaecodec.training.evaluate import image_estimates

    codec = vaecodec.Codec()
    model = codec.model
    net = build_model(model.config)
    net.load_state_dict({k: v.float() for k, v in model.weights.items()})
    net.eval()
    files = image_files(args.images)[:args.count]
    lambdas = [float(v) for v in args.lambdas.split(",")]

    def latent_convs(m: nn.Module) -> list[tuple[str, nn.Module]]:
        names = ("hyper_synthesis", "context", "entropy_parameters", "channel_context", "channel_parameters")
        return [(n, c) for n, c in m.named_modules() if n.split(".")[0] in names
                and isinstance(c, (nn.Conv2d, nn.ConvTranspose2d))]

    def to_bits(v: torch.Tensor, bits: int, peak: torch.Tensor) -> torch.Tensor:
        top = 2 ** (bits - 1) - 1
        scale = torch.exp2(torch.floor(torch.log2(top / peak.clamp_min(1e-12))))
        return torch.round(v * scale).clamp(-top, top) / scale

    # Calibration: each such convolution's largest input per channel over these images and λ.
    peaks: dict = {}

    def record(name):
        def hook(_, inputs):
            p = inputs[0].detach().abs().amax(dim=(0, 2, 3))
            peaks[name] = p if name not in peaks else torch.maximum(peaks[name], p)
        return hook

    handles = [c.register_forward_pre_hook(record(n)) for n, c in latent_convs(net)]
    calibration = image_files(args.calibrate)[:args.count] if args.calibrate else files
    float_rows = image_estimates(net, calibration, lambdas)
    for h in handles:
        h.remove()
    if args.calibrate:
        float_rows = image_estimates(net, files, lambdas)

    def summary(rows) -> list[dict]:
        return [{"lambda": lam, "bpp": float(np.mean([r[k][0] for r in rows])), "psnr": float(np.mean([r[k][1] for r in rows]))}
                for k, lam in enumerate(lambdas)]

    results = [{"variant": "float", "weight_bits": 0, "activation_bits": 0, "rows": summary(float_rows)}]
    for spec in args.variants.split(","):
        wbits, abits = (int(v) for v in spec.split(":"))
        q = copy.deepcopy(net)
        original = {n: c.weight.detach().clone() for n, c in latent_convs(q)}
        for name, conv in latent_convs(q):
            with torch.no_grad():
                w = conv.weight
                out_dim = 1 if isinstance(conv, nn.ConvTranspose2d) else 0
                if wbits:
                    peak = w.abs().amax(dim=[d for d in range(w.dim()) if d != out_dim], keepdim=True)
                    w.copy_(to_bits(w, wbits, peak))
            if abits and args.scheme == "tensor":
                p = peaks[name].max()[None, None, None, None].expand(1, len(peaks[name]), 1, 1) * 2.0**args.headroom
            elif abits:
                p = peaks[name][None, :, None, None] * 2.0**args.headroom
            if abits and wbits and args.scheme == "folded":
                # The integer program's weights: w·step_i per input channel i, rounded per output channel,
                # then seen in real units again (÷ step_i); the separate rounding above is replaced.
                top = 2 ** (abits - 1) - 1
                step = 1.0 / torch.exp2(torch.floor(torch.log2(top / p.flatten().clamp_min(1e-12))))
                with torch.no_grad():
                    w = conv.weight
                    w.copy_(original[name])
                    shape = (-1, 1, 1, 1) if isinstance(conv, nn.ConvTranspose2d) else (1, -1, 1, 1)
                    folded = w * step.view(shape)
                    out_dim = 1 if isinstance(conv, nn.ConvTranspose2d) else 0
                    peak = folded.abs().amax(dim=[d for d in range(w.dim()) if d != out_dim], keepdim=True)
                    w.copy_(to_bits(folded, wbits, peak) / step.view(shape))
            if abits:
                conv.register_forward_pre_hook(lambda _, inputs, p=p: (to_bits(inputs[0], abits, p),))
        results.append({"variant": f"weights {wbits}, activations {abits}" + ("" if args.scheme == "separate" else f" ({args.scheme})"), "weight_bits": wbits,
                        "activation_bits": abits, "rows": summary(image_estimates(q, files, lambdas))})
    base = results[0]["rows"]
    for r in results[1:]:
        for row, b in zip(r["rows"], base):
            row["bpp_change_pct"] = 100 * (row["bpp"] / b["bpp"] - 1)
            row["psnr_change_db"] = row["psnr"] - b["psnr"]
    out = {"command": "python benchmarks/latent_precision.py " + " ".join(sys.argv[1:]),
           "model": f"{model.model_id} {model.weight_hash.hex()}", "images": [Path(f).name for f in files],
           "calibration_images": [Path(f).name for f in calibration], "scheme": args.scheme,
           "results": results}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"{'variant':<28}" + "".join(f"{'λ ' + str(lam):>22}" for lam in lambdas))
    for r in results:
        cells = [f"{row['bpp']:.4f} bpp {row['psnr']:.2f} dB" if r is results[0] else
                 f"{row['bpp_change_pct']:+.2f}% {row['psnr_change_db']:+.3f} dB" for row in r["rows"]]
        print(f"{r['variant']:<28}" + "".join(f"{c:>22}" for c in cells))


if __name__ == "__main__":
    main()
