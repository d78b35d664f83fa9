#!/usr/bin/env python3
"""CPU seconds per training step over ranges of a training log's steps.

    python benchmarks/step_cost.py checkpoints/cb-train.log 454400-461100 462000-487500 \
        [--out benchmarks/results/step-cost.json]

Reads the log's ``step N cpu_h H`` lines (CPU time summed over every rank) and,
for each range FIRST-LAST, gives the steps, the CPU seconds per step and the
steps per wall-clock minute between the logged lines nearest inside it. A
restart inside a range would count its pause in the wall-clock rate: choose
ranges within one resume.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from pathlib import Path

LINE = re.compile(r"(\S+ \S+) step (\d+) cpu_h ([\d.]+)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("log")
    ap.add_argument("ranges", nargs="+", help="FIRST-LAST step ranges")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "step-cost.json"))
    args = ap.parse_args()
    rows = [(datetime.datetime.fromisoformat(m[1]), int(m[2]), float(m[3]))
            for m in map(LINE.match, Path(args.log).read_text().splitlines()) if m]
    out = {"command": "python benchmarks/step_cost.py " + " ".join(sys.argv[1:]), "ranges": []}
    for spec in args.ranges:
        first, last = (int(v) for v in spec.split("-"))
        inside = [r for r in rows if first <= r[1] <= last]
        if len(inside) < 2:
            sys.exit(f"fewer than two logged steps in {spec}")
        (t0, s0, h0), (t1, s1, h1) = inside[0], inside[-1]
        out["ranges"].append({"from_step": s0, "to_step": s1, "steps": s1 - s0,
                              "cpu_s_per_step": (h1 - h0) * 3600 / (s1 - s0),
                              "steps_per_minute": (s1 - s0) / (t1 - t0).total_seconds() * 60})
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
