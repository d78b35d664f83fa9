#!/usr/bin/env python3
"""Two cores for training: one process with two threads, or two single-thread processes (DDP), same batch.

    python benchmarks/train_parallel.py [CHECKPOINT] [--steps 12] [--rounds 2] [--arms threads,ddp,...] \
        [--load "what else ran"] [--out benchmarks/results/train-parallel.json]

Why: the training runs on this project's two cores, and its two OpenMP threads
share every small operation of a step (the hyperprior and context networks run on
8×8 latents), where a thread's share is short and the waiting between threads
is long. Data parallelism splits the batch instead: each process runs whole
operations on half of it, on one thread, and DDP averages the gradients (gloo,
all-reduce, overlapped with the backward pass). The same global batch either
way (8 crops of 128², or 2 of 256², alternating as the training does; a process
of two takes 4 or 1), so the same optimisation, only computed differently.

Each arm runs in fresh processes (a training step of the checkpoint's
architecture: forward, backward, gradient clipping and Adam on seeded crops;
the data pipeline left out; its crops are contiguous NCHW, as the crop pool gives them now), ``--steps``
steps timed after two warm-ups, in
``--rounds`` interleaved rounds: wall seconds per step (rank 0, after a
barrier), CPU seconds per step, summed over the processes (what the
training counts as CPU-hours), minor page faults per step (summed too), and
the CPU seconds of Adam's update alone (summed too); each a median over the
rounds by itself. Two more arms feed each form the same crops as
a channels-last view, as the crop pool gave them before (a permuted
(n, h, w, 3) array): torch then keeps every convolution channels-last, where
the GDNs' 1×1 convolutions take a slow reference kernel. Every arm but one
updates with torch's default Adam on the CPU (a loop of small operations per
parameter tensor); ``ddp-fused`` takes the training's own optimizer
(:func:`vaecodec.training.loop.make_adam`: the fused kernel). Times on a shared
machine are noisy; compare arms within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, os, resource, sys, time
import torch
import torch.distributed as dist
from vaecodec.model import ModelConfig, build_model
from vaecodec.training.loss import rd_loss, sample_lambdas

checkpoint, layout, optimizer_kind = sys.argv[1], sys.argv[4], sys.argv[5]
threads, steps = int(sys.argv[2]), int(sys.argv[3])
rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
torch.set_num_threads(threads)
if world > 1:
    dist.init_process_group("gloo")
blob = torch.load(checkpoint, map_location="cpu", weights_only=False)
config = ModelConfig.from_dict(blob["config"])
model = build_model(config)
model.load_state_dict(blob["model"])
net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
if optimizer_kind == "fused":  # the training's own choice
    from vaecodec.training.loop import make_adam
    optimizer = make_adam(model.parameters(), 1e-4)
    assert optimizer.param_groups[0]["fused"]
else:  # torch's default on the CPU: a loop over the parameters
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
g = torch.Generator().manual_seed(rank)
batches = []
for n, size in ((8, 128), (2, 256)):  # the global batch of a small and of a large step
    n //= world
    x = torch.rand(n, 3, size, size, generator=g)
    x = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
    batches.append((x, sample_lambdas(config, n, g)))


def step(k):
    x, lam = batches[k % 2]
    loss, _ = rd_loss(net, config, x, lam)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    global update_cpu
    c = time.process_time()
    optimizer.step()
    update_cpu += time.process_time() - c


update_cpu = 0.0


step(0); step(1)
update_cpu = 0.0
if world > 1:
    dist.barrier()
c, w, f = time.process_time(), time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for k in range(steps):
    step(k)
cpu, faults = time.process_time() - c, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f
if world > 1:
    dist.barrier()
wall = time.perf_counter() - w
if world > 1:
    total = torch.tensor([cpu, faults, update_cpu], dtype=torch.float64)
    dist.all_reduce(total)
    cpu, faults, update_cpu = float(total[0]), int(total[1]), float(total[2])
    del net  # DDP's reducer before its process group: torn down the other way round, gloo may abort at exit
    dist.destroy_process_group()
if rank == 0:
    print(json.dumps({"wall_s_per_step": wall / steps, "cpu_s_per_step": cpu / steps, "page_faults_per_step": faults / steps,
                      "adam_cpu_s_per_step": update_cpu / steps}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_arm(checkpoint: str, world: int, threads: int, steps: int, layout: str = "contiguous",
            optimizer: str = "per-tensor") -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads), GOMP_SPINCOUNT="1000")
    procs = []
    port = _free_port()
    for rank in range(world):
        e = dict(env, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                 MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, "-c", CHILD, checkpoint, str(threads), str(steps), layout, optimizer], env=e,
                                      stdout=subprocess.PIPE, text=True))
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"an arm with {world} process(es) failed")
    return json.loads(outs[0].strip().splitlines()[-1])


ARMS = {  # key: (name, processes, threads per process, crop layout, Adam's kind)
    "threads": ("1 process × 2 threads", 1, 2, "contiguous", "per-tensor"),
    "ddp": ("2 processes × 1 thread (DDP)", 2, 1, "contiguous", "per-tensor"),
    "threads-cl": ("1 process × 2 threads, channels-last crops", 1, 2, "channels_last", "per-tensor"),
    "ddp-cl": ("2 processes × 1 thread (DDP), channels-last crops", 2, 1, "channels_last", "per-tensor"),
    "ddp-fused": ("2 processes × 1 thread (DDP), fused Adam (the training's choice)", 2, 1, "contiguous", "fused"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", nargs="?", default=str(ROOT / "checkpoints" / "cc-stable.pt"))
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--arms", default="threads,ddp,threads-cl,ddp-cl", help="comma-separated, of: " + ", ".join(ARMS))
    ap.add_argument("--load", default="", help="what else ran on the machine, for the record")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train-parallel.json"))
    args = ap.parse_args()

    chosen = args.arms.split(",")
    if not set(chosen) <= set(ARMS):
        raise SystemExit(f"--arms: choose from {', '.join(ARMS)}")
    arms = {ARMS[key][0]: ARMS[key][1:] for key in chosen}
    runs = {name: [] for name in arms}
    for _ in range(args.rounds):
        for name, (world, threads, layout, optimizer) in arms.items():
            runs[name].append(run_arm(args.checkpoint, world, threads, args.steps, layout, optimizer))
            print(name, runs[name][-1], flush=True)
    rows = [{"arm": name, "processes": arms[name][0], "threads_per_process": arms[name][1], "input": arms[name][2],
             "adam": arms[name][3], "runs": r,
             "wall_s_per_step": statistics.median(x["wall_s_per_step"] for x in r),
             "cpu_s_per_step": statistics.median(x["cpu_s_per_step"] for x in r),
             "page_faults_per_step": statistics.median(x["page_faults_per_step"] for x in r),
             "adam_cpu_s_per_step": statistics.median(x["adam_cpu_s_per_step"] for x in r)} for name, r in runs.items()]
    result = {
        "command": "python benchmarks/train_parallel.py " + shlex.join(sys.argv[1:]),
        "checkpoint": Path(args.checkpoint).name,
        "steps": args.steps, "rounds": args.rounds, "cores": os.cpu_count(),
        "environment": "GOMP_SPINCOUNT=1000 (as the training runs)",
        "platform": platform.platform(), "load": args.load,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for row in rows:
        print(f"{row['arm']}: {row['wall_s_per_step']:.3f} s and {row['cpu_s_per_step']:.3f} CPU-s per step, "
              f"{row['page_faults_per_step']:.0f} page faults per step, Adam's update {row['adam_cpu_s_per_step']:.3f} CPU-s")


if __name__ == "__main__":
    main()
