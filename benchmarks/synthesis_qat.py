#!/usr/bin/env python3
"""Can quantization-aware fine-tuning win back what an 8-bit synthesis loses? A first, short measurement.

    python benchmarks/synthesis_qat.py [--data ../shared/data/train] [--pool 300] [--crop 192] [--steps 1500]
        [--batch 4] [--lr 1e-4] [--weight-bits 8] [--activation-bits 8] [--eval-count 6] [--qualities 20,50,90]
        [--learn-steps] [--step-lr 1e-3] [--out benchmarks/results/synthesis-qat.json] [--save FILE]

An 8-bit integer synthesis would decode ~3× faster than the exact float64 one
(``benchmarks/synthesis_cost.py``) but, rounded as it is, loses PSNR
(``benchmarks/synthesis_precision.py``). Here the shipped model's synthesis is
fine-tuned with its weights (per output channel) and activations and inverse-GDN
norms (per channel, scales calibrated once on the training crops) rounded to
those bits in the forward pass (straight-through gradients), everything else
frozen; with ``--learn-steps`` the activations' rounding steps are learned
too (LSQ), starting from the calibration. Inputs are the exact decoder's ŷ of
training crops coded at random qualities (the file's latents, so only the
decoder learns); the loss is the distortion term of the rate–distortion
objective, λ(quality)·255²·MSE. Kodak images (never trained on) are evaluated
before (rounding alone) and after, with the exact path's PSNR beside them.
Simulated in float: it measures what the numbers can reach, not an integer
decoder.
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
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "train"))
    ap.add_argument("--pool", type=int, default=300)
    ap.add_argument("--crop", type=int, default=192)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--weight-bits", type=int, default=8)
    ap.add_argument("--activation-bits", type=int, default=8)
    ap.add_argument("--eval-images", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    ap.add_argument("--eval-count", type=int, default=6)
    ap.add_argument("--qualities", default="20,50,90")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "synthesis-qat.json"))
    ap.add_argument("--learn-steps", action="store_true", help="learn the activations' rounding steps (LSQ)")
    ap.add_argument("--step-lr", type=float, default=1e-3, help="Adam's learning rate for the log-steps")
    ap.add_argument("--save", default=None, help="write the fine-tuned synthesis' float state here")
    args = ap.parse_args()

    import numpy as np
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    torch.manual_seed(0)
    import vaecodec
    from vaecodec.fixedpoint import ACT_FRAC_BITS
    from vaecodec.image import load_pixels, to_output_pixels
    from vaecodec.metrics import psnr
    from vaecodec.model import build_model
    from vaecodec.image import image_files
    from vaecodec.training.data import CropPool

    codec = vaecodec.Codec()
    model = codec.model
    net = build_model(model.config)
    net.load_state_dict({k: v.float() for k, v in model.weights.items()})
    synthesis = net.synthesis.train()
    qualities = [int(q) for q in args.qualities.split(",")]
    top_w, top_a = 2 ** (args.weight_bits - 1) - 1, 2 ** (args.activation_bits - 1) - 1

    def fake_round(v: torch.Tensor, scale: torch.Tensor, top: int) -> torch.Tensor:
        """v on the grid 1/scale, at most ``top`` steps from 0, with the identity as its gradient."""
        q = torch.round(v * scale).clamp(-top, top) / scale
        return v + (q - v).detach()

    def weight(w: torch.Tensor, out_dim: int) -> torch.Tensor:
        peak = w.detach().abs().amax(dim=[d for d in range(w.dim()) if d != out_dim], keepdim=True).clamp_min(1e-12)
        return fake_round(w, torch.exp2(torch.floor(torch.log2(top_w / peak))), top_w)

    scales: dict = {}
    log_steps: dict = {}

    def act(key, v: torch.Tensor, calibrate: bool) -> torch.Tensor:
        if calibrate:
            peak = v.detach().abs().amax(dim=(0, 2, 3), keepdim=True)
            scales[key] = peak if key not in scales else torch.maximum(scales[key], peak)
            return v
        if key in log_steps:  # learned step (LSQ, Esser et al. 2020): gradients reach it through v/step and ·step
            step = torch.exp(log_steps[key])
            u = v / step
            return (u + (torch.round(u) - u).detach()).clamp(-top_a, top_a) * step
        return fake_round(v, torch.exp2(torch.floor(torch.log2(top_a / scales[key].clamp_min(1e-12)))), top_a)

    def forward(y: torch.Tensor, calibrate: bool = False) -> torch.Tensor:
        a = y
        for i, layer in enumerate(synthesis):
            a = act(i, a, calibrate)
            if isinstance(layer, torch.nn.ConvTranspose2d):
                a = F.conv_transpose2d(a, weight(layer.weight, 1), layer.bias, layer.stride, layer.padding,
                                       layer.output_padding)
            else:  # inverse simplified GDN: a·(β + Γ|a|)
                beta, gamma = layer.effective_params()
                g = gamma[:, :, None, None]
                norm = F.conv2d(a.abs(), weight(g, 0) if bool(g.detach().any()) else g, beta)
                a = a * act(("norm", i), norm, calibrate)
        return a

    def coded(px: np.ndarray, quality: int) -> torch.Tensor:
        """The exact decoder's ŷ (float) of an image at a quality."""
        with torch.no_grad():
            analysed = codec._analyze(px)
            _, y_hat = codec._code(analysed, analysed.latents, quality, keep_y_hat=True)
        return y_hat.float() * 2.0**-ACT_FRAC_BITS

    rng = np.random.default_rng(0)
    per_image = max(2, -(-args.pool // len(image_files(args.data))))  # enough crops for the pool
    crops = CropPool(args.data, crop=args.crop, crops_per_image=per_image, seed=0).crops
    crops = crops[rng.permutation(len(crops))[:args.pool]]
    t0 = time.process_time()
    pool_q = rng.integers(1, 101, len(crops))
    pool_y = torch.cat([coded(c, int(q)) for c, q in zip(crops, pool_q)])
    pool_x = torch.from_numpy(crops).permute(0, 3, 1, 2).float().div_(255.0)
    lam = torch.tensor([model.quality_lambda(int(q)) for q in pool_q])
    lam = lam / lam.mean()
    pool_s = time.process_time() - t0

    evals = []
    for path in sorted(Path(args.eval_images).glob("*.png"))[:args.eval_count]:
        px = load_pixels(path)
        for q in qualities:
            with torch.no_grad():
                analysed = codec._analyze(px)
                _, y_hat = codec._code(analysed, analysed.latents, q, keep_y_hat=True)
            exact = psnr(px, to_output_pixels(model.synthesize(y_hat), analysed.height, analysed.width, "RGB"))
            evals.append((q, px, analysed, y_hat.float() * 2.0**-ACT_FRAC_BITS, exact))

    def evaluate() -> dict:
        out = {q: [] for q in qualities}
        with torch.no_grad():
            for q, px, analysed, y, _ in evals:
                x = forward(y)
                pixels = torch.round(x * 255).clamp(0, 255)[0].permute(1, 2, 0).to(torch.uint8).numpy()
                out[q].append(psnr(px, to_output_pixels(pixels, analysed.height, analysed.width, "RGB")))
        return {q: float(np.mean(v)) for q, v in out.items()}

    with torch.no_grad():
        for i in range(0, len(pool_y), 16):
            forward(pool_y[i:i + 16], calibrate=True)
    exact = {q: float(np.mean([e[4] for e in evals if e[0] == q])) for q in qualities}
    history = [{"step": 0, "psnr": evaluate()}]
    print("exact", exact, "\nstep 0 (rounding alone)", history[-1]["psnr"], flush=True)
    groups = [{"params": list(synthesis.parameters()), "lr": args.lr}]
    if args.learn_steps:  # start from the calibrated power-of-two steps, then learn them (any positive value:
        # an integer decoder re-quantizes with a fixed-point multiplier and shift)
        for key, peak in scales.items():
            start = torch.exp2(-torch.floor(torch.log2(top_a / peak.clamp_min(1e-12))))
            log_steps[key] = torch.nn.Parameter(torch.log(start))
        groups.append({"params": list(log_steps.values()), "lr": args.step_lr})
    opt = torch.optim.Adam(groups)
    t0 = time.process_time()
    for step in range(1, args.steps + 1):
        idx = torch.from_numpy(rng.integers(0, len(pool_y), args.batch))
        x_hat = forward(pool_y[idx])
        mse = (x_hat - pool_x[idx]).pow(2).mean(dim=(1, 2, 3))
        loss = (lam[idx] * mse).mean() * 255**2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % max(1, args.steps // 3) == 0 or step == args.steps:
            history.append({"step": step, "cpu_s": time.process_time() - t0, "psnr": evaluate()})
            print(f"step {step} ({history[-1]['cpu_s']:.0f} CPU-s)", history[-1]["psnr"], flush=True)
    if args.save:
        torch.save(synthesis.state_dict(), args.save)
    result = {"command": "python benchmarks/synthesis_qat.py " + " ".join(sys.argv[1:]),
              "model": f"{model.model_id} {model.weight_hash.hex()}", "weight_bits": args.weight_bits,
              "activation_bits": args.activation_bits,
              "activation_scale": "per channel, learned (LSQ)" if args.learn_steps else "per channel, calibrated once", "pool": len(pool_y),
              "crop": args.crop, "batch": args.batch, "lr": args.lr, "pool_cpu_s": pool_s,
              "eval_images": args.eval_count, "qualities": qualities, "exact_psnr": exact, "history": history}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
