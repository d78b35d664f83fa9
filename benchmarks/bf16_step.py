#!/usr/bin/env python3
"""Would bfloat16 autocast speed up training on this CPU, and what does it do to the numbers?

    python benchmarks/bf16_step.py [CHECKPOINT] [--steps 3] [--out benchmarks/results/bf16-step.json]

One training step (forward + backward of the R–D loss, batch of 8 crops of
128² from the training set, λ spread over the anchors, one thread) from a
checkpoint's weights, in float32 and under ``torch.autocast("cpu",
bfloat16)``, timed alternately; the loss, bpp, PSNR and gradient norm of the
same batch in both. On CPUs with AMX tiles oneDNN runs bf16 convolutions
natively; without them bf16 is emulated and much slower (training-notes.md
measured 24× on an earlier machine). The CPU's flags are recorded.
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
    args = ap.parse_args()

    import torch
    from PIL import Image

    from vaecodec.model import ModelConfig, build_model
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

    def step(bf16: bool) -> dict:
        torch.manual_seed(1)  # the same noise in both
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, stats = rd_loss(net, config, x, lam)
        net.zero_grad(set_to_none=True)
        loss.backward()
        grad = torch.sqrt(sum(p.grad.float().pow(2).sum() for p in net.parameters() if p.grad is not None))
        return dict(stats, grad_norm=float(grad))

    results = {"float32": {"seconds": []}, "bfloat16": {"seconds": []}}
    for name, bf16 in (("float32", False), ("bfloat16", True)):
        results[name].update(step(bf16))  # warm-up, and the step's numbers
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
           "cpu_amx_bf16": "amx_bf16" in flags, "cpu_avx512_bf16": "avx512_bf16" in flags,
           "torch": torch.__version__, **results,
           "speedup": results["float32"]["cpu_s_per_step"] / results["bfloat16"]["cpu_s_per_step"]}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
