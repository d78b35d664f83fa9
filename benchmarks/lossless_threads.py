#!/usr/bin/env python3
"""What limiting numpy's BLAS to one thread buys lossless mode, from the command line as users run it.

    python benchmarks/lossless_threads.py [--images ../shared/data/kodak] [--count 4] [--repeats 2]
        [--out benchmarks/results/lossless-threads]

For each image, ``vaecodec compress --lossless`` and ``vaecodec decompress`` run
as fresh processes in two arms, alternating: as shipped (the pixel model's
products inside ``pixel_model.one_blas_thread``), and with that limit replaced
by a no-op (numpy's BLAS at its default, one thread per core). Reports the
processes' CPU seconds (user + system, from the OS) and wall seconds per image,
interpreter start-up included, and checks that every decoded image is exact.
The machine's other load is recorded beside them (the waste shows when another
job holds a core, as a model's training does here).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

# The second arm: the CLI with the limit turned into a no-op (the only difference between the arms).
UNLIMITED = ("import contextlib, sys; import vaecodec.lossless_codec as lc; "
             "lc.one_blas_thread = contextlib.nullcontext; from vaecodec.cli import main; "
             "sys.argv[0] = 'vaecodec'; main()")


def run(args: list[str], unlimited: bool) -> tuple[float, float]:
    """(CPU seconds of the child, wall seconds) of one CLI call."""
    cmd = [sys.executable, "-c", UNLIMITED, *args] if unlimited else [sys.executable, "-m", "vaecodec", *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    ap.add_argument("--count", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lossless-threads"))
    args = ap.parse_args()
    from PIL import Image

    import vaecodec

    paths = sorted(Path(args.images).glob("*.png"))[:args.count]
    arms = {"one BLAS thread (shipped)": False, "BLAS default (limit removed)": True}
    rows = {name: {"encode_cpu": [], "encode_wall": [], "decode_cpu": [], "decode_wall": []} for name in arms}
    load = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for p in paths:
                for name, unlimited in arms.items():
                    vae, png = Path(tmp) / "x.vae", Path(tmp) / "x.png"
                    cpu, wall = run(["compress", "--lossless", str(p), "-o", str(vae), "--force"], unlimited)
                    rows[name]["encode_cpu"].append(cpu)
                    rows[name]["encode_wall"].append(wall)
                    cpu, wall = run(["decompress", str(vae), "-o", str(png), "--force"], unlimited)
                    rows[name]["decode_cpu"].append(cpu)
                    rows[name]["decode_wall"].append(wall)
                    with Image.open(p) as a, Image.open(png) as b:
                        if not np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB"))):
                            raise SystemExit(f"{p.name}: not exact")
                    load.append(os.getloadavg()[0])
    means = {name: {k: float(np.mean(v)) for k, v in r.items()} for name, r in rows.items()}
    result = {"command": "python benchmarks/lossless_threads.py " + " ".join(sys.argv[1:]),
              "vaecodec": vaecodec.__version__, "cpus": os.cpu_count(), "images": [p.name for p in paths],
              "repeats": args.repeats, "mean_load_average_1min": float(np.mean(load)), "per_image_seconds": means}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["# Lossless mode: numpy's BLAS threads", "", f"Command: `{result['command']}`  ",
             f"{len(paths)} Kodak images × {args.repeats}, each command a fresh process (start-up included); "
             f"{os.cpu_count()} CPUs, mean 1-minute load average {result['mean_load_average_1min']:.2f} "
             "(this run's own processes included).", "",
             "| arm | compress CPU-s | compress wall s | decompress CPU-s | decompress wall s |", "|---|---|---|---|---|"]
    for name, m in means.items():
        lines.append(f"| {name} | {m['encode_cpu']:.2f} | {m['encode_wall']:.2f} | {m['decode_cpu']:.2f} | {m['decode_wall']:.2f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
