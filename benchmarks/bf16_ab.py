#!/usr/bin/env python3
"""Does bfloat16 training cost quality? An A/B from one stable checkpoint.

    python benchmarks/bf16_ab.py [CHECKPOINT] [--steps 1500] [--images 24] \
        [--out benchmarks/results/bf16-ab.json]

Two continuations of the same stable checkpoint run side by side, one CPU
thread each, through ``vaecodec train`` with the same seed (the same crops, λ
and noise in the same order): ``--precision float32`` and ``--precision
bfloat16``. They differ only in the arithmetic of the transforms. Afterwards
both arms' weights (the raw weights: a stable checkpoint keeps no EMA) and the
starting weights get the training log's Kodak estimate (Σ −log2 p of the
rounded latents, 5 λ over the anchors); the JSON has the estimates, the
BD-rate of each arm against the start and of bfloat16 against float32 at
equal steps, and the CPU seconds per step of each arm (from the
checkpoints' own CPU clocks). Estimates are the model's rates, not files:
enough to compare two arms of one model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ARMS = ("float32", "bfloat16")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", nargs="?", type=Path, default=ROOT / "checkpoints" / "cc-stable.pt")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "train")
    ap.add_argument("--kodak", type=Path, default=ROOT.parent / "shared" / "data" / "kodak")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--images", type=int, default=24, help="Kodak images in the estimate.")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bf16-ab.json")
    args = ap.parse_args()

    import torch

    from vaecodec.metrics import bd_rate
    from vaecodec.training.evaluate import evaluate_estimate
    from vaecodec.training.loop import _spread, load_checkpoint, native_bfloat16

    work = Path(tempfile.mkdtemp(prefix="bf16-ab-"))
    procs = {}
    for arm in ARMS:
        shutil.copy(args.checkpoint, work / f"{arm}.pt")
        cmd = [sys.executable, "-m", "vaecodec", "train", str(work / f"{arm}.pt"), "--data", str(args.data),
               "--steps", str(args.steps), "--threads", "1", "--precision", arm, "--save-every", "100000",
               "--log", str(work / f"{arm}.log")]
        procs[arm] = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for arm, p in procs.items():
        _, err = p.communicate()
        if p.returncode:
            sys.exit(f"{arm} arm failed: {err.strip().splitlines()[-1] if err.strip() else p.returncode}")

    torch.set_num_threads(1)
    start_state, start_model, _, _ = load_checkpoint(args.checkpoint)
    lambdas = _spread(start_state.config.lambdas, 5)
    curves = {"start": evaluate_estimate(start_model, args.kodak, lambdas, args.images)}
    cpu_per_step = {}
    for arm in ARMS:
        state, model, _, _ = load_checkpoint(work / f"{arm}.pt")
        curves[arm] = evaluate_estimate(model, args.kodak, lambdas, args.images)
        cpu_per_step[arm] = (state.cpu_seconds - start_state.cpu_seconds) / (state.step - start_state.step)

    def bd(ref: str, test: str) -> float:
        r, t = curves[ref], curves[test]
        return bd_rate([p["bpp"] for p in r], [p["psnr"] for p in r], [p["bpp"] for p in t], [p["psnr"] for p in t])

    out = {
        "command": "python benchmarks/bf16_ab.py " + " ".join(sys.argv[1:]),
        "checkpoint_step": start_state.step, "checkpoint_cpu_hours": start_state.cpu_seconds / 3600,
        "steps": args.steps, "kodak_images": args.images, "torch": torch.__version__,
        "cpu_native_bfloat16": native_bfloat16("cpu"),
        "cpu_s_per_step": cpu_per_step,
        "speedup": cpu_per_step["float32"] / cpu_per_step["bfloat16"],
        "bd_rate_vs_start_pct": {arm: bd("start", arm) for arm in ARMS},
        "bd_rate_bfloat16_vs_float32_pct": bd("float32", "bfloat16"),
        "estimates": curves,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "estimates"}, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
