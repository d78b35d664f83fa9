#!/usr/bin/env python3
"""Would bfloat16 autocast speed up training on this CPU, and what does it do to the numbers?

    python benchmarks/bf16_step.py [CHECKPOINT] [--steps 3] [--all-bfloat16] [--out benchmarks/results/bf16-step.json]

One training step (forward + backward of the R–D loss, batch of 8 crops of
128² from the training set, λ spread over the anchors, one thread) from a
checkpoint's weights, in float32 and under ``torch.autocast("cpu",
bfloat16)``, timed alternately; the loss, bpp, PSNR and gradient norm of the
same batch in both, and the cosine between the two gradients. Then the
fidelity that matters at the top of the range: the PSNR of the rounded-latent
forward (``hard=True``) at each of five λ over the anchors, in both, on the
central 256² crops of every 8th training image (up to 24). On CPUs with AMX tiles or AVX512-BF16 oneDNN runs bf16
convolutions natively; without them bf16 is emulated and much slower
(training-notes.md measured 24× on an earlier machine). The CPU's flags are
recorded.
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
    ap.add_argument("checkpoint", nargs="?", default=str(ROOT / "checkpoints" / "cc-stable.pt"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "train"))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bf16-step.json"))
    ap.add_argument("--fidelity-crops", type=int, default=24, help="central 256² crops for the PSNR comparison")
    ap.add_argument("--all-bfloat16", action="store_true",
                    help="every layer in bfloat16 under autocast (without it, the code's rule: the layers at the "
                         "pixels and the latents and the GDNs in float32)")
    args = ap.parse_args()

    import torch
    from PIL import Image

    from vaecodec import model as model_module
    from vaecodec.model import ModelConfig, build_model

    model_module.KEEP_FLOAT32 = not args.all_bfloat16
    from vaecodec.training.loss import rd_loss, sample_lambdas

    torch.set_num_threads(1)
    ck = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    config = ModelConfig.from_dict(ck["config"])
    net = build_model(config)
    net.load_state_dict(ck["model"])
    crops = []
    for path in sorted(Path(args.data).glob("*.png"))[::20]:
        im = np.asarray(Image.open(path).convert("RGB"))
        if min(im.shape[:2]) >= 128:
            crops.append(torch.from_numpy(np.ascontiguousarray(im[:128, :128])).permute(2, 0, 1).float() / 255)
        if len(crops) == 8:
            break
    x = torch.stack(crops)
    lam = sample_lambdas(config, len(crops), torch.Generator().manual_seed(0))

    grads = {}

    def step(bf16: bool) -> dict:
        torch.manual_seed(1)  # the same noise in both
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, stats = rd_loss(net, config, x, lam)
        net.zero_grad(set_to_none=True)
        loss.backward()
        flat = torch.cat([p.grad.float().flatten() for p in net.parameters() if p.grad is not None])
        grads[bf16] = flat
        return dict(stats, grad_norm=float(flat.norm()))

    results = {"float32": {"seconds": []}, "bfloat16": {"seconds": []}}
    for name, bf16 in (("float32", False), ("bfloat16", True)):
        results[name].update(step(bf16))  # warm-up, and the step's numbers
    cosine = float(torch.nn.functional.cosine_similarity(grads[False], grads[True], dim=0))
    lo, hi = np.log(config.lambdas[0]), np.log(config.lambdas[-1])
    anchors = [float(v) for v in np.exp(np.linspace(lo, hi, 5))]
    fidelity = []
    # Fidelity on more pixels than the step's batch: the difference is a few hundredths of a dB per crop
    # and varies in sign, so 8 crops of 128² are too few to read it.
    views = []
    for path in sorted(Path(args.data).glob("*.png"))[::8]:
        im = np.asarray(Image.open(path).convert("RGB"))
        if min(im.shape[:2]) >= 256:
            top, left = (im.shape[0] - 256) // 2, (im.shape[1] - 256) // 2
            views.append(torch.from_numpy(np.ascontiguousarray(im[top:top + 256, left:left + 256])).permute(2, 0, 1))
        if len(views) == args.fidelity_crops:
            break
    fx = torch.stack(views).float() / 255
    with torch.no_grad():
        for lmbda in anchors:
            row = {"lambda": lmbda}
            for name, bf16 in (("float32", False), ("bfloat16", True)):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    out = net(fx, torch.full((len(fx),), lmbda), hard=True)
                mse = (out.x_hat.float().clamp(0, 1) - fx).pow(2).flatten(1).mean(1)
                row[f"psnr_{name}"] = float((10 * torch.log10(1 / mse)).mean())
                row[f"bpp_{name}"] = float(((out.bits_y + out.bits_z) / (fx.shape[2] * fx.shape[3])).mean())
            row["psnr_difference_db"] = row["psnr_bfloat16"] - row["psnr_float32"]
            fidelity.append(row)
    for _ in range(args.steps):
        for name, bf16 in (("float32", False), ("bfloat16", True)):
            t = time.process_time()
            step(bf16)
            results[name]["seconds"].append(time.process_time() - t)
    for r in results.values():
        r["cpu_s_per_step"] = float(np.median(r.pop("seconds")))
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        flags = []
    out = {"command": "python benchmarks/bf16_step.py " + " ".join(sys.argv[1:]), "checkpoint_step": ck.get("step"),
           "all_bfloat16": args.all_bfloat16, "cpu_amx_bf16": "amx_bf16" in flags, "cpu_avx512_bf16": "avx512_bf16" in flags,
           "torch": torch.__version__, **results,
           "speedup": results["float32"]["cpu_s_per_step"] / results["bfloat16"]["cpu_s_per_step"],
           "gradient_cosine": cosine, "fidelity_crops": len(fx), "fidelity_by_lambda": fidelity}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
