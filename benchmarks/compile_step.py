#!/usr/bin/env python3
"""Does ``torch.compile`` speed up a training step here? Eager and compiled steps of one model, interleaved.

    python benchmarks/compile_step.py [CHECKPOINT] [--steps 8] [--batch-size 4] [--patch 256] \
        [--out benchmarks/results/compile-step.json]

One training step is the trainer's: forward and backward of the R–D loss at the
precision ``vaecodec train`` picks here (``--precision auto``), gradient
clipping and an Adam update, one thread, on random crops from the training set
(the same batch every step). The compiled model (``torch.compile``, inductor)
is warmed up first, and the wall time that took is recorded; then eager and
compiled steps alternate, so load from other work on the machine falls on both
alike, and the JSON has the median CPU seconds of each and their ratio. The
losses of the two on the same batch are recorded too: compiling must not change
what is computed beyond float rounding.
"""

from __future__ import annotations

import argparse
import json
import statistics
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
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "compile-step.json"))
    args = ap.parse_args()

    import torch
    from PIL import Image

    from vaecodec.training.loop import load_checkpoint, resolve_precision
    from vaecodec.training.loss import rd_loss, sample_lambdas

    torch.set_num_threads(1)
    state, net, _, _ = load_checkpoint(Path(args.checkpoint))
    config = state.config
    precision = resolve_precision("auto", "cpu")
    p = args.patch
    crops = []
    for path in sorted(Path(args.data).glob("*.png"))[::10]:
        im = np.asarray(Image.open(path).convert("RGB"))
        if min(im.shape[:2]) >= p:
            crops.append(torch.from_numpy(np.ascontiguousarray(im[:p, :p])).permute(2, 0, 1).float() / 255)
        if len(crops) == args.batch_size:
            break
    x = torch.stack(crops)
    lam = sample_lambdas(config, len(crops), torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-9)  # a real update, too small to move the weights
    compiled = torch.compile(net)

    def step(model) -> float:
        torch.manual_seed(1)  # the same noise in both
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
            loss, _ = rd_loss(model, config, x, lam)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        return float(loss.detach())

    t = time.time()
    loss_compiled = step(compiled)
    step(compiled)
    warmup_s = time.time() - t
    loss_eager = step(net)
    seconds = {"eager": [], "compiled": []}
    for _ in range(args.steps):
        for name, model in (("eager", net), ("compiled", compiled)):
            t = time.process_time()
            step(model)
            seconds[name].append(time.process_time() - t)
    out = {"command": "python benchmarks/compile_step.py " + " ".join(sys.argv[1:]), "checkpoint_step": state.step,
           "torch": torch.__version__, "precision": precision, "batch": [args.batch_size, 3, p, p],
           "compile_warmup_wall_s": warmup_s, "loss_eager": loss_eager, "loss_compiled": loss_compiled,
           "cpu_s_per_step": {k: statistics.median(v) for k, v in seconds.items()}}
    out["speedup"] = out["cpu_s_per_step"]["eager"] / out["cpu_s_per_step"]["compiled"]
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
