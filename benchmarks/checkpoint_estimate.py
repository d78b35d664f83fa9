#!/usr/bin/env python3
"""Compare training checkpoints by the model's own Kodak estimate (fast; not files).

    python benchmarks/checkpoint_estimate.py CHECKPOINT [CHECKPOINT ...] [--images 4] \
        [--lambdas 0.0016,0.0128,0.1024,0.8192] [--kodak ../shared/data/kodak] [--out FILE.json] \
        [--vs-last-eval]

For each checkpoint (an annealed one is measured by its EMA, a stable one by
its raw weights; a model file, e.g. a shipped one, by its fp16 weights):
estimated bpp (Σ −log2 p of the rounded latents) and PSNR on the first
``--images`` Kodak images at each λ, through the model's own forward pass, as
the training log's periodic estimate computes it. For an 8-bit synthesis that
forward pass rounds where the integer decoder rounds. A few minutes at 1
thread: a screen before exporting a checkpoint and measuring it from files
(``benchmarks/kodak.py``, ``benchmarks/int8_synthesis.py``).

``--vs-last-eval`` measures at the λ of the checkpoint's latest periodic
evaluation instead (all 24 images), and gives both its BD-rate vs JPEG
(``--jpeg``, from file bytes): for a stable checkpoint, its raw weights
against the EMA the training loop evaluated, i.e. what an evaluation right
after a resume (the EMA rebuilt from the raw weights) would read. With all 24
images (``--images 24``) every result also gets its BD-rate vs JPEG: e.g. a
shipped (annealed) model at the λ the training log evaluates, against the
stable run's evaluations, is what the anneal added.
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
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--lambdas", default="0.0016,0.0128,0.1024,0.8192")
    ap.add_argument("--kodak", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    ap.add_argument("--out", default=None, help="also write the rows as JSON")
    ap.add_argument("--vs-last-eval", action="store_true",
                    help="measure at the λ of the checkpoint's latest evaluation and compare BD-rates vs JPEG")
    ap.add_argument("--jpeg", default=str(ROOT / "benchmarks" / "results" / "kodak.json"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from vaecodec.coding_model import CodingModel
    from vaecodec.errors import ModelFileError
    from vaecodec.training import TrainState, load_checkpoint
    from vaecodec.training.loop import anneal_start
    from vaecodec.metrics import bd_rate
    from vaecodec.training.evaluate import evaluate_estimate

    jpeg = next(c for c in json.loads(Path(args.jpeg).read_text())["curves"] if c["name"] == "jpeg")

    def bd_vs_jpeg(rows):
        return bd_rate([p["bpp"] for p in jpeg["points"]], [p["psnr"] for p in jpeg["points"]],
                       [r["bpp"] for r in rows], [r["psnr"] for r in rows])

    def load(path):
        """(state, the network measured, which weights): a model file's fp16 weights, else a checkpoint's."""
        try:
            frozen = CodingModel.load(path)
        except ModelFileError:
            state, model, ema, _ = load_checkpoint(path)
            return (state, ema, "ema") if state.phase == "annealed" else (state, model, "raw")
        return TrainState(frozen.config, step=-1, phase="model file"), frozen.float_network(), "fp16 (model file)"

    results = []
    for path in args.checkpoints:
        state, net, weights = load(path)
        lambdas = [float(v) for v in args.lambdas.split(",")]
        last = next((h for h in reversed(state.history) if "estimate" in h), None) if args.vs_last_eval else None
        if args.vs_last_eval and last is None:
            sys.exit(f"{path} has no evaluation in its history")
        if last is not None:
            lambdas = [r["lambda"] for r in last["estimate"]]
        rows = evaluate_estimate(net, args.kodak, lambdas, max_images=24 if last is not None else args.images)
        result = {"checkpoint": path, "step": state.step, "phase": state.phase, "weights": weights,
                  "synthesis_bits": net.config.synthesis_bits, "rows": rows}
        start = anneal_start(state.history)
        if state.phase == "annealed" and start is not None:
            result["anneal_from_step"] = start  # which stable evaluation the anneal gained over
        print(f"{path} (step {state.step}, {state.phase}, {result['weights']} weights, synthesis_bits "
              f"{net.config.synthesis_bits}): "
              + "  ".join(f"λ {r['lambda']:g}: {r['bpp']:.3f} bpp / {r['psnr']:.2f} dB" for r in rows), flush=True)
        if last is not None or args.images >= 24:
            result["bd_rate_vs_jpeg"] = bd_vs_jpeg(rows)
        if last is None and args.images >= 24:
            print(f"  BD-rate vs JPEG: {result['bd_rate_vs_jpeg']:+.1f} %", flush=True)
        if last is not None:
            result["last_eval"] = {"step": last["step"], "weights": "ema", "bd_rate_vs_jpeg": bd_vs_jpeg(last["estimate"]),
                                   "rows": last["estimate"]}
            print(f"  BD-rate vs JPEG: these weights {result['bd_rate_vs_jpeg']:+.1f} %; the EMA evaluated at step "
                  f"{last['step']} {result['last_eval']['bd_rate_vs_jpeg']:+.1f} %", flush=True)
        results.append(result)
    if args.out:
        Path(args.out).write_text(json.dumps({
            "command": "python benchmarks/checkpoint_estimate.py " + " ".join(sys.argv[1:]),
            "images": 24 if args.vs_last_eval else args.images, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
