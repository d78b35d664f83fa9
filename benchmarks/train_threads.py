#!/usr/bin/env python3
"""A training step at two threads on an idle machine and beside other work, under OpenMP wait policies.

    python benchmarks/train_threads.py [CHECKPOINT] [--threads 2] [--steps 8] [--rounds 2] [--busy 1] \
        [--load "what else ran"] [--out benchmarks/results/train-threads.json]

Why: training runs in the background while other work (tests, benchmarks)
takes a core now and then, and torch's OpenMP threads spin while they wait
for each other, so a busy core slows every step and the spinning is counted
in the run's CPU-hours. Each setting runs in a fresh process (libgomp reads
its environment when torch loads): a training step of the checkpoint's
architecture (forward, backward and Adam on a seeded batch of 8 crops of
128²; the data pipeline left out) at ``--threads``, ``--steps`` steps timed
after two warm-ups, wall and CPU seconds per step; settings are torch's
default, ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep) and
``GOMP_SPINCOUNT`` at 1,000 and 10,000 (they spin that long, then sleep).
Conditions: idle, and with ``--busy`` pure-Python busy processes beside it.
``--rounds`` interleaved rounds; the median is reported. Times on a shared
machine are noisy; compare settings within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from threads_under_load import without_openmp_settings, busy_processes  # this folder's sibling script

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, time
import torch
from vaecodec.model import ModelConfig, build_model
from vaecodec.training.loss import rd_loss, sample_lambdas
checkpoint, threads, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
blob = torch.load(checkpoint, map_location="cpu", weights_only=False)
config = ModelConfig.from_dict(blob["config"])
net = build_model(config)
net.load_state_dict(blob["model"])
optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
g = torch.Generator().manual_seed(0)
x, lam = torch.rand(8, 3, 128, 128, generator=g), sample_lambdas(config, 8, g)


def step():
    loss, _ = rd_loss(net, config, x, lam)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


step(), step()
w, c = time.perf_counter(), time.process_time()
for _ in range(steps):
    step()
print(json.dumps({"wall_s_per_step": (time.perf_counter() - w) / steps, "cpu_s_per_step": (time.process_time() - c) / steps}))
"""

SETTINGS = [("default", {}), ("OMP_WAIT_POLICY=PASSIVE", {"OMP_WAIT_POLICY": "PASSIVE"}),
            ("GOMP_SPINCOUNT=1000", {"GOMP_SPINCOUNT": "1000"}), ("GOMP_SPINCOUNT=10000", {"GOMP_SPINCOUNT": "10000"})]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", nargs="?", default=str(ROOT / "checkpoints" / "cc-stable.pt"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--busy", type=int, default=1, help="busy processes beside it in the loaded condition")
    ap.add_argument("--load", default="", help="what else ran on the machine, for the record")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train-threads.json"))
    args = ap.parse_args()

    base = without_openmp_settings(os.environ)
    rows = []
    for condition in ("idle", f"{args.busy} busy process(es) beside it"):
        with busy_processes(0 if condition == "idle" else args.busy):
            runs = {name: [] for name, _ in SETTINGS}
            for _ in range(args.rounds):
                for name, env in SETTINGS:
                    out = subprocess.run([sys.executable, "-c", CHILD, args.checkpoint, str(args.threads), str(args.steps)],
                                         env={**base, **env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                                         check=True)
                    runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            for name, _ in SETTINGS:
                row = {"condition": condition, "setting": name, "runs": runs[name],
                       **{k: statistics.median(r[k] for r in runs[name]) for k in ("wall_s_per_step", "cpu_s_per_step")}}
                rows.append(row)
                print(f"{condition:<30} {name:<26} {row['wall_s_per_step']:.3f} s wall, {row['cpu_s_per_step']:.3f} "
                      f"CPU-s per step", flush=True)
    Path(args.out).write_text(json.dumps({
        "command": "python benchmarks/train_threads.py " + shlex.join(sys.argv[1:]), "threads": args.threads,
        "steps": args.steps, "rounds": args.rounds, "cores": os.cpu_count(), "platform": platform.platform(),
        "load": args.load, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
