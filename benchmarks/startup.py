#!/usr/bin/env python3
"""Start-up cost: what a one-off `vaecodec` call pays before any coding work.

    python benchmarks/startup.py [--runs 5] [--out benchmarks/results/startup.json]

Each row is the median wall time of RUNS fresh processes: importing vaecodec,
`vaecodec --version` and `--help`, importing vaecodec and loading the shipped
model, and compressing one 256×256 image from the shell and decompressing it
(start-up included). The same image saved as JPEG by Pillow in a fresh Python
process is the reference (machines of this kind differ ~3.5× in speed, so read
ratios). Wall times grow with other work on the machine: ``busy_cpus_during``
in the results says how many CPUs were busy on average (~1: only this).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def median_wall(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _cpu_times() -> list[int] | None:
    """The machine's (busy, total) CPU jiffies from /proc/stat (Linux), or None."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return [sum(fields) - idle, sum(fields)]


def _busy_cpus(before, after) -> float | None:
    """CPUs kept busy on average during the run, these measurements included (~1 on an otherwise idle machine)."""
    if before is None or after is None or after[1] == before[1]:
        return None
    return round((after[0] - before[0]) / (after[1] - before[1]) * (os.cpu_count() or 1), 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "startup.json"))
    args = ap.parse_args()
    py = sys.executable
    stat_before = _cpu_times()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "small.png"
        subprocess.run([py, "-c", "from PIL import Image; import sys; "
                        f"Image.open({str(ROOT / 'tests' / 'data' / 'kodim23.png')!r}).convert('RGB')"
                        f".crop((256, 128, 512, 384)).save({str(src)!r})"], check=True)
        out = Path(tmp) / "small.vae"
        rows = {
            "python -c 'import vaecodec'": median_wall([py, "-c", "import vaecodec"], args.runs),
            "vaecodec --version": median_wall([py, "-m", "vaecodec", "--version"], args.runs),
            "vaecodec --help": median_wall([py, "-m", "vaecodec", "--help"], args.runs),
            "import + load the shipped model": median_wall([py, "-c", "import vaecodec; vaecodec.Codec()"], args.runs),
            "vaecodec compress (256×256, quality 75)": median_wall(
                [py, "-m", "vaecodec", "compress", str(src), "-o", str(out), "--force"], args.runs),
            "vaecodec decompress (256×256)": median_wall(
                [py, "-m", "vaecodec", "decompress", str(out), "-o", str(Path(tmp) / "back.png"), "--force"], args.runs),
            # What torch alone costs, and how much of it is the interpreter's teardown (which the one-shot
            # commands skip through os._exit).
            "python -c 'import torch'": median_wall([py, "-c", "import torch"], args.runs),
            "python -c 'import torch' leaving through os._exit": median_wall(
                [py, "-c", "import os, torch; os._exit(0)"], args.runs),
            "reference: Pillow JPEG save in a fresh process": median_wall(
                [py, "-c", f"from PIL import Image; Image.open({str(src)!r}).save({str(Path(tmp) / 'x.jpg')!r})"],
                args.runs),
        }
    ref = rows["reference: Pillow JPEG save in a fresh process"]
    for k, v in rows.items():
        print(f"{k:<48} {v:6.2f} s wall ({v / ref:5.1f}× the reference)")
    Path(args.out).write_text(json.dumps({"command": "python benchmarks/startup.py " + " ".join(sys.argv[1:]),
                                          "median_wall_s": rows, "runs": args.runs,
                                          # Other work on the machine inflates wall times: say how much there was.
                                          "busy_cpus_during": _busy_cpus(stat_before, _cpu_times()),
                                          "cpus": os.cpu_count()},
                                         indent=1) + "\n")


if __name__ == "__main__":
    main()
