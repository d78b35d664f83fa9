#!/usr/bin/env python3
"""Start-up cost: what a one-off `vaecodec` call pays before any coding work.

    python benchmarks/startup.py [--runs 5] [--out benchmarks/results/startup.json]

Each row is the median wall time of RUNS fresh processes: importing vaecodec,
`vaecodec --version`, importing vaecodec and loading the shipped model, and
compressing one 256×256 image from the shell (start-up included). The same
image saved as JPEG by Pillow in a fresh Python process is the reference
(machines of this kind differ ~3.5× in speed, so read ratios).
"""

from __future__ import annotations

import argparse
import json
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "startup.json"))
    args = ap.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "small.png"
        subprocess.run([py, "-c", "from PIL import Image; import sys; "
                        f"Image.open({str(ROOT / 'tests' / 'data' / 'kodim23.png')!r}).convert('RGB')"
                        f".crop((256, 128, 512, 384)).save({str(src)!r})"], check=True)
        out = Path(tmp) / "small.vae"
        rows = {
            "python -c 'import vaecodec'": median_wall([py, "-c", "import vaecodec"], args.runs),
            "vaecodec --version": median_wall([py, "-m", "vaecodec", "--version"], args.runs),
            "import + load the shipped model": median_wall([py, "-c", "import vaecodec; vaecodec.Codec()"], args.runs),
            "vaecodec compress (256×256, quality 75)": median_wall(
                [py, "-m", "vaecodec", "compress", str(src), "-o", str(out), "--force"], args.runs),
            "reference: Pillow JPEG save in a fresh process": median_wall(
                [py, "-c", f"from PIL import Image; Image.open({str(src)!r}).save({str(Path(tmp) / 'x.jpg')!r})"],
                args.runs),
        }
    ref = rows["reference: Pillow JPEG save in a fresh process"]
    for k, v in rows.items():
        print(f"{k:<48} {v:6.2f} s wall ({v / ref:5.1f}× the reference)")
    Path(args.out).write_text(json.dumps({"command": "python benchmarks/startup.py " + " ".join(sys.argv[1:]),
                                          "median_wall_s": rows, "runs": args.runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
