#!/usr/bin/env python3
"""Threads on an idle and on a busy machine: compress + decompress time at 1 thread and at one per core.

    python benchmarks/threads_under_load.py [--image kodim23.png] [--quality 75] [--repeats 3] \
        [--load "what else ran"] [--out benchmarks/results/threads-under-load.json]

For one Kodak image, each setting runs in a fresh process (the OpenMP settings
are read when torch starts) and reports the best of ``--repeats`` compress and
decompress calls after a warm-up: wall and CPU seconds. Settings: one thread
(``--threads 1``), one thread per core (torch's default), and one per core with
``OMP_WAIT_POLICY=PASSIVE`` (idle OpenMP threads sleep instead of spinning).
Each is measured twice: on the otherwise idle machine, and with one busy
process per core beside it (a pure-Python loop each, at the same priority),
which is what a shared server or a build running alongside looks like. Times
on a shared machine are noisy; compare settings within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, time
import torch
from vaecodec import Codec
from vaecodec.image import load_pixels
image, quality, repeats, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
if threads:
    torch.set_num_threads(threads)
codec, pixels = Codec(), load_pixels(image)
codec.decompress(codec.compress(pixels, quality=quality))  # warm-up: tables, programs, caches
best = {}


def timed(name, fn):
    c, w = time.process_time(), time.perf_counter()
    out = fn()
    best[name + "_wall_s"] = min(best.get(name + "_wall_s", 1e9), time.perf_counter() - w)
    best[name + "_cpu_s"] = min(best.get(name + "_cpu_s", 1e9), time.process_time() - c)
    return out


for _ in range(repeats):
    data = timed("compress", lambda: codec.compress(pixels, quality=quality))
    timed("decompress", lambda: codec.decompress(data))
print(json.dumps({"threads": torch.get_num_threads(), **best}))
"""


@contextlib.contextmanager
def busy_processes(n: int):
    """``n`` pure-Python busy loops at this process's priority, killed on the way out: other work on the cores."""
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.5 if busy else 0)
        yield
    finally:
        for p in busy:
            p.kill()
            p.wait()


def without_openmp_settings(environ) -> dict:
    """The caller's environment less its own OpenMP settings, so that only the setting under test differs."""
    return {k: v for k, v in environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}


def measure(image: str, quality: int, repeats: int, threads: int, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, image, str(quality), str(repeats), str(threads)],
                         env={**without_openmp_settings(os.environ), **env, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default=str(ROOT.parent / "shared" / "data" / "kodak" / "kodim23.png"))
    ap.add_argument("--quality", type=int, default=75)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--load", default="", help="what else ran on the machine, for the record")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "threads-under-load.json"))
    args = ap.parse_args()

    cores = os.cpu_count() or 1
    settings = [("1 thread", 1, {}), (f"{cores} threads (default)", 0, {}),
                (f"{cores} threads, OMP_WAIT_POLICY=PASSIVE", 0, {"OMP_WAIT_POLICY": "PASSIVE"})]
    rows = []
    for condition in ("idle", f"{cores} busy processes beside it"):
        with busy_processes(0 if condition == "idle" else cores):
            for name, threads, env in settings:
                r = measure(args.image, args.quality, args.repeats, threads, env)
                rows.append({"condition": condition, "setting": name, **r})
                print(f"{condition:<28} {name:<38} compress {r['compress_wall_s']:.2f} s wall "
                      f"({r['compress_cpu_s']:.2f} CPU)  decompress {r['decompress_wall_s']:.2f} s wall "
                      f"({r['decompress_cpu_s']:.2f} CPU)", flush=True)
    Path(args.out).write_text(json.dumps({
        "command": "python benchmarks/threads_under_load.py " + shlex.join(sys.argv[1:]),
        "image": Path(args.image).name, "quality": args.quality, "repeats": args.repeats, "cores": cores,
        "platform": platform.platform(), "load": args.load,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
