#!/usr/bin/env python3
"""Two shipped models on Kodak, from their saved benchmark runs: the new one against the old.

    python benchmarks/compare_models.py [--old benchmarks/results/kodak-hp64.json] [--new benchmarks/results/kodak.json]

Each input is a ``benchmarks/kodak.py`` result (rates from file bytes, 24 images).
BD-rates against JPEG are only comparable over the same range of quality, and
a model whose quality range reaches higher rates is measured against JPEG
where JPEG is strongest; so besides each run's own BD-rate this reports:

* the new model against the old directly (BD-rate, PSNR and MS-SSIM in dB, over
  the rates both cover);
* each model against JPEG over the PSNR range both models cover;
* the top quality's rate and PSNR, and the rate above which JPEG catches up.

Writes ``benchmarks/results/model-comparison.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vaecodec.metrics import bd_rate  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def curve(report: dict, name: str) -> dict:
    c = next(c for c in report["curves"] if c["name"] == name)
    pts = sorted(c["points"], key=lambda p: p["bpp"])
    return {"library": c["library"], "bpp": [p["bpp"] for p in pts], "psnr": [p["psnr"] for p in pts],
            "msssim_db": [p["ms_ssim_db"] for p in pts]}


def within(c: dict, lo: float, hi: float) -> tuple[list, list]:
    keep = [i for i, q in enumerate(c["psnr"]) if lo - 1e-9 <= q <= hi + 1e-9]
    return [c["bpp"][i] for i in keep], [c["psnr"][i] for i in keep]


def jpeg_catches_up(model: dict, jpeg: dict) -> float | None:
    """The lowest rate where JPEG's PSNR (interpolated in log-rate) reaches the model's, or None."""
    grid = np.exp(np.linspace(np.log(max(model["bpp"][0], jpeg["bpp"][0])), np.log(min(model["bpp"][-1], jpeg["bpp"][-1])), 400))
    m = np.interp(np.log(grid), np.log(model["bpp"]), model["psnr"])
    j = np.interp(np.log(grid), np.log(jpeg["bpp"]), jpeg["psnr"])
    behind = np.flatnonzero(j >= m)
    return float(grid[behind[0]]) if behind.size else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", type=Path, default=RESULTS / "kodak-hp64.json")
    ap.add_argument("--new", type=Path, default=RESULTS / "kodak.json")
    ap.add_argument("--out", type=Path, default=RESULTS / "model-comparison.json")
    args = ap.parse_args()
    old_report, new_report = (json.loads(p.read_text()) for p in (args.old, args.new))
    old, new = curve(old_report, "vaecodec"), curve(new_report, "vaecodec")
    jpeg = curve(new_report, "jpeg")
    lo, hi = max(old["psnr"][0], new["psnr"][0]), min(old["psnr"][-1], new["psnr"][-1])
    own = {r["codec"]: r["bd_rate_psnr"] for r in new_report["summary"]}, {r["codec"]: r["bd_rate_psnr"] for r in old_report["summary"]}
    result = {
        "command": "python benchmarks/compare_models.py " + " ".join(sys.argv[1:]),
        "old": old["library"], "new": new["library"],
        "new_vs_old_bd_rate_psnr": bd_rate(old["bpp"], old["psnr"], new["bpp"], new["psnr"]),
        "new_vs_old_bd_rate_msssim_db": bd_rate(old["bpp"], old["msssim_db"], new["bpp"], new["msssim_db"]),
        "common_psnr_range": [lo, hi],
        "old_vs_jpeg_common_range": bd_rate(jpeg["bpp"], jpeg["psnr"], *within(old, lo, hi)),
        "new_vs_jpeg_common_range": bd_rate(jpeg["bpp"], jpeg["psnr"], *within(new, lo, hi)),
        "old_vs_jpeg_own_range": own[1]["vaecodec"], "new_vs_jpeg_own_range": own[0]["vaecodec"],
        "old_top": {"bpp": old["bpp"][-1], "psnr": old["psnr"][-1]}, "new_top": {"bpp": new["bpp"][-1], "psnr": new["psnr"][-1]},
        "old_jpeg_catches_up_at_bpp": jpeg_catches_up(old, jpeg), "new_jpeg_catches_up_at_bpp": jpeg_catches_up(new, jpeg),
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"old: {result['old']}\nnew: {result['new']}")
    print(f"new vs old, BD-rate: PSNR {result['new_vs_old_bd_rate_psnr']:+.2f}%, MS-SSIM {result['new_vs_old_bd_rate_msssim_db']:+.2f}%")
    print(f"vs JPEG over {lo:.2f}–{hi:.2f} dB: old {result['old_vs_jpeg_common_range']:+.1f}%, "
          f"new {result['new_vs_jpeg_common_range']:+.1f}%; over each one's own range: old "
          f"{result['old_vs_jpeg_own_range']:+.1f}%, new {result['new_vs_jpeg_own_range']:+.1f}%")
    for k in ("old", "new"):
        top, up = result[f"{k}_top"], result[f"{k}_jpeg_catches_up_at_bpp"]
        print(f"{k}: quality 100 = {top['bpp']:.3f} bpp, {top['psnr']:.2f} dB; JPEG catches up at "
              f"{'never' if up is None else f'{up:.2f} bpp'}")


if __name__ == "__main__":
    main()
