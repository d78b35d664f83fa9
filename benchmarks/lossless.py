#!/usr/bin/env python3
"""The lossless benchmark on Kodak: vaecodec --lossless against PNG, WebP, JPEG XL (effort 7, 9), JPEG 2000.

    python benchmarks/lossless.py [--kodak ../shared/data/kodak] [-j 2] [--count N]

All codecs in the same run, one thread each, every image checked exact. Writes
benchmarks/results/lossless.json (every measurement) and lossless.md (tables,
per-image rates, the checks against issue 8's bars, versions and machine).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# One thread each, numpy's BLAS included (vaecodec's pixel model runs small matrix products in numpy; set
# before numpy loads). Without this, OpenBLAS's threads fight any other job on the machine for every product.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vaecodec.bench import collect_images  # noqa: E402
from vaecodec.bench_lossless import (LOSSLESS_CODECS, format_lossless, run_lossless_benchmark,  # noqa: E402
                                     save_lossless_json, save_lossless_markdown)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kodak", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    ap.add_argument("-j", "--jobs", type=int, default=1)
    ap.add_argument("--count", type=int, default=24, help="First N images only (a quick look; results are not saved).")
    ap.add_argument("--codecs", default=",".join(LOSSLESS_CODECS))
    args = ap.parse_args()
    paths = collect_images([args.kodak])[:args.count]
    report = run_lossless_benchmark(paths, args.codecs.split(","), jobs=args.jobs)
    report.command = "python benchmarks/lossless.py " + " ".join(sys.argv[1:])
    print(format_lossless(report))
    if args.count < 24:
        return
    out = ROOT / "benchmarks" / "results"
    save_lossless_json(report, out / "lossless.json")
    save_lossless_markdown(report, out / "lossless.md")
    rows = {r["codec"]: r for r in report.summary()}
    vae = rows.get("vaecodec")
    if vae:
        checks = ["", "## Issue 8's bars", "",
                  f"- every image exact: **{vae['exact']}**",
                  f"- mean rate {vae['bpsp']:.3f} bits/sub-pixel; below WebP lossless "
                  f"({rows['webp']['bpsp']:.3f}): **{vae['bpsp'] < rows['webp']['bpsp']}**" if "webp" in rows else "",
                  f"- below JPEG XL effort 9 ({rows['jxl-e9']['bpsp']:.3f}): **{vae['bpsp'] < rows['jxl-e9']['bpsp']}**"
                  if "jxl-e9" in rows else "",
                  f"- compress + decompress {vae['encode_cpu_s'] + vae['decode_cpu_s']:.2f} CPU-s per image "
                  f"(bar ≤ 10 s): **{vae['encode_cpu_s'] + vae['decode_cpu_s'] <= 10}**"]
        with open(out / "lossless.md", "a") as f:
            f.write("\n".join(c for c in checks if c is not None) + "\n")


if __name__ == "__main__":
    main()
