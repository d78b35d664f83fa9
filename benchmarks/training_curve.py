#!/usr/bin/env python3
"""The training curve: CPU-hours spent → Kodak BD-rate vs JPEG, for every run on record.

    python benchmarks/training_curve.py [CHECKPOINT_OR_TRAINING_JSON ...] \
        [--jpeg benchmarks/results/kodak.json] [--out benchmarks/results/training-curve]

Each source is a training checkpoint (its ``history``) or an exported model's
``training.json``. Every periodic evaluation in it (the model's own rate
estimate Σ −log2 p of the rounded latents on the 24 Kodak images, several λ)
becomes one point: its BD-rate (PSNR) against the JPEG curve measured from
file bytes in ``--jpeg`` (``benchmarks/kodak.py`` writes it). Estimates are not
files: a file's rate is the estimate plus 0.1–1 % (see the model card); the
final point of each shipped model is measured from files in ``kodak.json``.

Writes ``OUT.json`` (the points) and ``OUT.png`` (the plot, with matplotlib).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vaecodec.metrics import bd_rate  # noqa: E402

DEFAULT_SOURCES = [ROOT / "vaecodec" / "weights" / "training-hp64.json", ROOT / "checkpoints" / "cb-stable.pt"]


def load_history(path: Path) -> tuple[str, list[dict]]:
    """(run name, evaluation rows) from a checkpoint or a training.json."""
    if path.suffix == ".json":
        info = json.loads(path.read_text())
        return info.get("model_id", path.stem), info.get("history", [])
    import torch

    blob = torch.load(path, map_location="cpu", weights_only=True)
    kind = blob["config"].get("kind", "hyperprior")
    return f"{path.stem} ({kind})", blob.get("history", [])


def jpeg_curve(path: Path) -> tuple[list[float], list[float]]:
    report = json.loads(path.read_text())
    curve = next(c for c in report["curves"] if c["name"] == "jpeg")
    return [p["bpp"] for p in curve["points"]], [p["psnr"] for p in curve["points"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sources", nargs="*", type=Path, default=DEFAULT_SOURCES)
    ap.add_argument("--jpeg", type=Path, default=ROOT / "benchmarks" / "results" / "kodak.json")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "training-curve")
    args = ap.parse_args()
    jr, jq = jpeg_curve(args.jpeg)
    runs = []
    for src in args.sources:
        if not src.exists():
            print(f"skipping {src}: not found", file=sys.stderr)
            continue
        name, history = load_history(src)
        points = []
        for row in history:
            if "estimate" not in row:
                continue
            est = row["estimate"]
            bd = bd_rate(jr, jq, [e["bpp"] for e in est], [e["psnr"] for e in est])
            points.append({"step": row["step"], "cpu_hours": row["cpu_hours"], "gpu_hours": row.get("gpu_hours", 0.0),
                           "phase": row.get("phase", "stable"), "bd_rate_vs_jpeg": bd,
                           "psnr_range": [min(e["psnr"] for e in est), max(e["psnr"] for e in est)]})
        runs.append({"source": str(src.relative_to(ROOT) if src.is_relative_to(ROOT) else src), "name": name,
                     "points": points})
        for p in points:
            bd = "n/a" if p["bd_rate_vs_jpeg"] is None else f"{p['bd_rate_vs_jpeg']:+.1f}%"
            print(f"{name:<32} step {p['step']:>7} {p['cpu_hours']:6.2f} CPU-h  {p['phase']:<9} BD-rate vs JPEG {bd}")
    result = {"command": "python benchmarks/training_curve.py " + " ".join(sys.argv[1:]),
              "jpeg": str(args.jpeg.relative_to(ROOT) if args.jpeg.is_relative_to(ROOT) else args.jpeg),
              "note": "BD-rate of the model's rate estimate on Kodak (24 images) against JPEG measured from files",
              "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no matplotlib: wrote the JSON only (pip install 'vaecodec[bench]' for the plot)", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for run in runs:
        pts = [p for p in run["points"] if p["bd_rate_vs_jpeg"] is not None]
        if pts:
            ax.plot([p["cpu_hours"] for p in pts], [p["bd_rate_vs_jpeg"] for p in pts], marker="o", label=run["name"])
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("training CPU-hours (cumulative, inherited hours included)")
    ax.set_ylabel("Kodak BD-rate vs JPEG [%] (estimate)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=110)


if __name__ == "__main__":
    main()
