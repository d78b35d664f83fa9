#!/usr/bin/env python3
"""Fuzz the decoder with the shipped models: mutated and forged files must all be refused.

    python benchmarks/fuzz.py [--cases 100000] [--seed 0]

Writes benchmarks/results/fuzz.md and fuzz.json (counts per mutation kind and
outcome, every problem found, the slowest case). Exit status 1 if any case
crashed, hung or was accepted as a forgery. See vaecodec/fuzz.py for the kinds.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vaecodec.api import Codec  # noqa: E402
from vaecodec.bench import environment  # noqa: E402
from vaecodec.fuzz import KINDS, fuzz  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-save", action="store_true", help="Print only (a quick look).")
    args = ap.parse_args()
    codec = Codec()
    report = fuzz(codec, args.cases, args.seed)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(report.summary(), f"; peak RSS {peak_mb:.0f} MB")
    if not args.no_save:
        out = ROOT / "benchmarks" / "results"
        command = "python benchmarks/fuzz.py " + " ".join(sys.argv[1:])
        outcomes = ("refused", "benign", "forgery", "crash", "hang")
        lines = ["# Decoder fuzzing", "", f"Command: `{command}`", "",
                 f"Shipped models ({codec.model.model_id}, lossless pixel model {codec.lossless_model.model_id}, "
                 f"alpha pixel model {codec.pixel_model.model_id}); seed files: "
                 "lossy RGB, L and RGBA, lossless RGB and LA, a file with EXIF and XMP, a 1×1 image.", "",
                 f"**{report.summary()}**; peak RSS of the whole run {peak_mb:.0f} MB.", "",
                 "| mutation | " + " | ".join(outcomes) + " |", "|---|" + "---|" * len(outcomes)]
        for kind in KINDS:
            c = report.by_kind.get(kind, {})
            lines.append(f"| {kind} | " + " | ".join(str(c.get(o, 0)) for o in outcomes) + " |")
        lines += ["", "Problems: " + ("none" if report.ok else ""), *[f"- {p}" for p in report.problems[:50]], "",
                  f"Machine: {environment().get('cpu', '?')}; {environment()['date']}"]
        (out / "fuzz.md").write_text("\n".join(lines) + "\n")
        (out / "fuzz.json").write_text(json.dumps(
            {"command": command, "cases": report.cases, "outcomes": dict(report.outcomes),
             "by_kind": {k: dict(v) for k, v in report.by_kind.items()}, "problems": report.problems,
             "slowest_seconds": report.slowest_seconds, "seconds": report.seconds, "peak_rss_mb": peak_mb,
             "environment": environment()}, indent=1) + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
