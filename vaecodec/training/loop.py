"""The resumable training loop: stable runs that accumulate, anneals that export.

Compute is the scarcest resource of this project, so training is built to
accumulate across sessions and machines:

* **stable phase** (:func:`train`): Adam at a constant learning rate after a
  short warm-up, for as long as anyone lets it run; the checkpoint is saved
  atomically every few minutes and any later run continues it at full
  learning rate;
* **anneal** (:func:`anneal`): a copy of a stable checkpoint, decayed
  (cosine to 5 %) over a few thousand steps with larger patches, written to a
  *separate* file. Only annealed checkpoints are exported; the stable one is
  never touched by a decay, so training can always go on.

The same code runs on one CPU thread in the background, under ``torchrun``
(DistributedDataParallel: per-rank seeds and crops, summed CPU time, rank 0
logs and saves), and on CUDA (``device="cuda"``).

Every step costs the same pixels: small patches (128², batch 8) half of the
time, because progress is limited by steps, and large ones (256², batch 2)
the other half, so the hyperprior learns from hyper-latent maps of realistic
size (training-notes §6: without them z collapsed to 0.007 bpp).
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist

from ..hardware import native_bfloat16
from ..model import HyperpriorModel, ModelConfig, build_model
from .data import CropPool
from .evaluate import evaluate_estimate
from .loss import rd_loss, sample_lambdas

__all__ = ["TrainOptions", "TrainState", "train", "anneal", "load_checkpoint", "save_checkpoint",
           "learning_rate", "make_adam", "stable_lr", "anneal_start", "DEFAULT_LR"]

CHECKPOINT_FORMAT = "vaecodec-train-state"

DEFAULT_LR = 1e-3
"""The stable phase's learning rate of a new run (and of checkpoints saved before runs recorded theirs)."""

EMA_DECAY = 0.999
"""Per-step decay of the weights' exponential moving average (a ~1000-step average): what is evaluated and shipped."""

EMA_SETTLED_STEPS = math.ceil(math.log(0.01) / math.log(EMA_DECAY))
"""Steps after which the weights the EMA was rebuilt from weigh under 1 % in it (4,603).

A stable checkpoint does not keep its EMA, so right after a resume the EMA
*is* the raw weights, and at the stable learning rate those are far worse
than their average: on Kodak the stable run's raw weights at step 265,016
read −19.1 % BD-rate vs JPEG where its EMA read −32.9 %
(``benchmarks/results/ema-gap.json``). Evaluations wait
this long after the EMA is rebuilt, so the training curve never mistakes a
resume for a setback."""


@dataclass(frozen=True)
class TrainOptions:
    """How to train; none of it is stored in the model.

    Attributes:
      batch_size, patch: the small-patch batches.
      large_batch, large_patch: the large-patch batches (same pixels per step).
      large_fraction: share of steps that use large patches.
      lr: Adam's learning rate in the stable phase; an anneal decays from it.
        None: the run's own (the rate its checkpoint last trained at,
        :data:`DEFAULT_LR` for a new run), so a resume never changes it by
        accident; a value that differs from the run's is a change to the run,
        logged and kept in its history.
      warmup_steps: linear warm-up at the start of a fresh run.
      threads: CPU threads per process; 0 re-probes 1 vs 2 now and then
        (two OpenMP threads are several times slower than one when other
        work shares the CPU).
      device: ``"cpu"`` or ``"cuda"`` (each rank takes its local GPU).
      precision: ``"float32"``, ``"bfloat16"`` (autocast: the transforms'
        inner convolutions in bfloat16; the GDNs, the layers at the latents
        and the pixels, the rates, distortion, weights and optimizer in
        float32) or ``"auto"``: bfloat16 where the hardware runs it natively
        (a GPU that supports it, a CPU with AMX tiles or AVX512-BF16), float32
        elsewhere, since other CPUs emulate bfloat16 many times slower.
      compile: run the training step's model through ``torch.compile``
        (inductor; on a CPU it needs a C++ compiler). The first steps wait
        for compilation (minutes); after that a step costs less
        (``benchmarks/compile_step.py``). The weights, checkpoints and
        evaluations are the plain model's.
      save_every_s, eval_every_s: wall-clock periods.
      ema_settle_steps: no evaluation until the EMA has averaged this many
        steps since it was rebuilt (:data:`EMA_SETTLED_STEPS`).
      eval_lambdas: λ values of the periodic Kodak estimate (None: five
        spread over the anchors).
      seed: base seed; rank r draws its crops and noise from seed + 1000·r + the step it resumes at.
      crop, crops_per_image: the crop pool.
      data_workers: processes that build the crop pool (:class:`CropPool`'s ``workers``).
    """

    batch_size: int = 8
    patch: int = 128
    large_batch: int = 2
    large_patch: int = 256
    large_fraction: float = 0.5
    lr: float | None = None
    warmup_steps: int = 100
    threads: int = 1
    device: str = "cpu"
    precision: str = "auto"
    compile: bool = False
    save_every_s: float = 300.0
    eval_every_s: float = 1800.0
    ema_settle_steps: int = EMA_SETTLED_STEPS
    eval_lambdas: tuple[float, ...] | None = None
    seed: int = 0
    crop: int = 256
    crops_per_image: int = 20
    data_workers: int = 1


@dataclass
class TrainState:
    """Counters and history; saved with the weights as one file.

    ``phase`` is ``"stable"`` or ``"annealed"``; ``cpu_seconds`` is CPU time
    summed over all ranks of CPU training, ``gpu_seconds`` wall time × GPUs of
    GPU training (whose host CPU time, spent feeding the GPU, counts in neither);
    ``lr`` the stable phase's learning rate, or in an annealed checkpoint the rate
    its decay started from (the stable run's unless ``anneal`` was given another);
    None: saved before runs recorded it, i.e. :data:`DEFAULT_LR`.
    """

    config: ModelConfig
    step: int = 0
    cpu_seconds: float = 0.0
    gpu_seconds: float = 0.0
    phase: str = "stable"
    history: list = field(default_factory=list)  # evaluation rows (dicts, JSON-able)
    lr: float | None = None


def learning_rate(step: int, total_steps: int, base: float = 1e-3, warmup: int = 100, decay_fraction: float = 0.3) -> float:
    """Warm-up, hold, then cosine decay to 5 % over the last ``decay_fraction`` of ``total_steps``.

    ``decay_fraction=0`` holds forever (the stable phase); ``1`` is a pure
    decay (an anneal, with ``warmup=0``).
    """
    if step < warmup:
        return base * (step + 1) / warmup
    start = total_steps * (1 - decay_fraction)
    if step < start or decay_fraction <= 0:
        return base
    t = min(1.0, (step - start) / max(1.0, total_steps - start))
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def resolve_precision(precision: str, device: str) -> str:
    """``"float32"`` or ``"bfloat16"`` for a requested precision (``"auto"`` decides by the hardware)."""
    if precision == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    if precision not in ("float32", "bfloat16"):
        raise ValueError(f"unknown precision {precision!r}: float32, bfloat16 or auto")
    return precision


def _finite(*models) -> bool:
    return all(bool(torch.isfinite(v).all()) for m in models for v in m.state_dict().values() if v.is_floating_point())


MAX_SKIPPED_IN_A_ROW = 100
"""Consecutive skipped updates after which training stops instead of spinning."""


def save_checkpoint(path: Path, state: TrainState, model, ema, optimizer) -> None:
    """Atomic save of what resuming needs, compact enough to commit (~6 bytes a parameter).

    Kept: the weights in float32 and Adam's second moments in bfloat16 (the
    per-parameter step sizes, slow to re-learn). Dropped from stable
    checkpoints: Adam's first moments (momentum rebuilds in tens of steps) and
    the EMA (a 1000-step average, rebuilt from the weights in minutes; an
    anneal rebuilds it). Annealed checkpoints keep the EMA: it is what ships.
    """
    opt = optimizer.state_dict()
    # state_dict() shares the live per-parameter dicts: build copies, never touch the optimizer's own.
    opt["state"] = {
        i: {k: (v.detach().cpu().to(torch.bfloat16) if k == "exp_avg_sq" else v.detach().cpu()) for k, v in s.items()
            if k != "exp_avg"}  # every tensor on the CPU: the fused Adam keeps its step counts on the parameters' device
        for i, s in opt["state"].items()
    }
    blob = {
        "format": CHECKPOINT_FORMAT, "config": state.config.to_dict(), "step": state.step,
        "cpu_seconds": state.cpu_seconds, "gpu_seconds": state.gpu_seconds, "phase": state.phase,
        "history": state.history, "lr": state.lr,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "optimizer": opt,
    }
    if state.phase == "annealed":
        blob["ema"] = {k: v.detach().cpu() for k, v in ema.state_dict().items()}
    path = Path(path)
    bad = [k for part in ("model", "ema") for k, v in blob.get(part, {}).items()
           if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise FloatingPointError(f"not saving {path}: weights are not finite ({bad[0]} and {len(bad) - 1} more)")
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # ranks creating one anneal never share a tmp file
    torch.save(blob, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path):
    """(state, model, ema, optimizer state dict) from a checkpoint file.

    The optimizer state comes back with float32 moments (zero momentum), ready
    for ``Adam.load_state_dict``; the EMA starts as a copy of the weights.
    """
    blob = torch.load(path, map_location="cpu", weights_only=True)
    config = ModelConfig.from_dict(blob["config"])
    model = build_model(config)
    model.load_state_dict(blob["model"])
    ema = build_model(config)
    ema.load_state_dict(blob.get("ema") or blob["model"])
    opt = blob["optimizer"]
    for s in opt["state"].values():
        for k in ("exp_avg", "exp_avg_sq"):
            if k in s:
                s[k] = s[k].float()
        if "exp_avg" not in s and "exp_avg_sq" in s:
            s["exp_avg"] = torch.zeros_like(s["exp_avg_sq"])
    state = TrainState(config, blob["step"], blob["cpu_seconds"], blob.get("gpu_seconds", 0.0),
                       blob.get("phase", "stable"), blob["history"], blob.get("lr"))
    return state, model, ema, opt


# ----- distributed helpers -------------------------------------------------------
def _world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) alone."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _any_rank(flags: list[bool], device) -> list[bool]:
    """Each flag, true if it is true on any rank (the flags themselves when alone)."""
    if not dist.is_initialized():
        return flags
    t = torch.tensor([float(f) for f in flags], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def _all_sum(value: float, device) -> float:
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def _gathered(obj) -> list:
    """``obj`` from every rank, in rank order."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _probe_threads(step_fn, steps: int = 6) -> int:
    times = {}
    for n in (1, 2):
        torch.set_num_threads(n)
        step_fn()  # warm
        t = time.perf_counter()
        for _ in range(steps):
            step_fn()
        times[n] = (time.perf_counter() - t) / steps
    best = min(times, key=times.get)
    torch.set_num_threads(best)
    return best


class _Run:
    """One process's share of a training run: model, EMA, optimizer, data, clocks."""

    def __init__(self, checkpoint: Path, config: ModelConfig | None, options: TrainOptions, data, log, phase: str,
                 widen_from: Path | None = None):
        self.rank, self.world, local = _world()
        self.owns_group = self.world > 1 and not dist.is_initialized()
        if self.owns_group:
            dist.init_process_group("nccl" if options.device == "cuda" else "gloo")
        self.device = torch.device(f"cuda:{local}" if options.device == "cuda" else "cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            # TF32 for the convolutions (the transforms' work); matrix products stay float32: the only ones
            # are the factorized density's small ones inside the z-rate, which is kept in full precision.
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        self.options = options
        self.log = log if self.rank == 0 else (lambda *_: None)
        # Every rank of a DDP run reads the same flag on the same kind of machine; decided once per run.
        self.precision = resolve_precision(options.precision, options.device)
        self.autocast_dtype = torch.bfloat16 if self.precision == "bfloat16" else None
        if checkpoint.exists():
            self.state, model, ema, opt_state = load_checkpoint(checkpoint)
            if self.state.phase != phase:
                raise ValueError(f"{checkpoint} is {self.state.phase}; " + (
                    "continue training from its stable checkpoint" if phase == "stable" else "anneal a stable one"))
            self.log(f"resumed {checkpoint} at step {self.state.step} ({self.state.cpu_seconds / 3600:.3f} CPU-h, "
                     f"{self.state.phase})")
        else:
            if config is None:
                raise ValueError(f"{checkpoint} does not exist; give a model config to start a new run")
            torch.manual_seed(options.seed)  # identical initial weights on every rank
            self.state = TrainState(config)
            if widen_from is not None:
                from .warm_start import widen

                old_state, _, old_ema, _ = load_checkpoint(widen_from)
                model = widen(old_ema, config, options.seed)
                # The compute inherited through the old weights counts: the curve is CPU-hours spent in all.
                self.state.cpu_seconds, self.state.gpu_seconds = old_state.cpu_seconds, old_state.gpu_seconds
                self.state.history.append({"widened_from": str(widen_from), "old_step": old_state.step,
                                           "cpu_hours": old_state.cpu_seconds / 3600})
                self.log(f"widened {widen_from} (step {old_state.step}, {old_state.cpu_seconds / 3600:.3f} CPU-h)")
            else:
                model = build_model(config)
            ema = copy.deepcopy(model)
            opt_state = None
        self.model = model.to(self.device)
        self.ema = ema.to(self.device).requires_grad_(False)
        # Steps the EMA has averaged: an annealed checkpoint keeps its EMA, built from the weights the
        # anneal started at; a stable one rebuilds it from the raw weights on every resume.
        self.ema_steps = self.state.step - anneal_start(self.state.history) if self.state.phase == "annealed" else 0
        self.lr = stable_lr(options, self.state)
        self.optimizer = make_adam(self.model.parameters(), self.lr, opt_state)
        self.net = self.model
        self.skipped_steps = self.skipped_in_a_row = 0  # updates skipped for a non-finite gradient
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if options.compile:
            self.net = torch.compile(self.net)  # compiled at the first step; self.model stays the plain module
        seed = options.seed + 1000 * self.rank + self.state.step
        torch.manual_seed(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.pool = CropPool(data, crop=options.crop, crops_per_image=options.crops_per_image, seed=seed,
                             workers=options.data_workers)
        self.log(f"crop pool: {self.pool.crops.shape[0]} crops of {options.crop}² on rank {self.rank} of {self.world}, "
                 f"device {self.device}, {self.precision}{', compiled' if options.compile else ''}")

    def step(self, lr: float, large: bool) -> dict:
        o = self.options
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        size, n = (o.large_patch, o.large_batch) if large else (o.patch, o.batch_size)
        x = self.pool.batch(n, size, self.device)
        lam = sample_lambdas(self.state.config, n, self.generator).to(self.device)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            loss, stats = rd_loss(self.net, self.state.config, x, lam)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # A non-finite loss or gradient skips the update. Decided on the gradient norm, which DDP has
        # already averaged, so every rank skips the same steps; a NaN must never reach the weights,
        # because the next save would overwrite the only good checkpoint with it.
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        if not torch.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            self.skipped_in_a_row += 1
            return dict(stats, skipped=1.0)
        self.skipped_in_a_row = 0
        self.optimizer.step()
        with torch.no_grad():
            decay = min(EMA_DECAY, (1 + self.state.step) / (10 + self.state.step))
            for pe, pm in zip(self.ema.parameters(), self.model.parameters()):
                pe.lerp_(pm, 1 - decay)
        self.ema_steps += 1
        return stats

    def is_large(self) -> bool:
        # A fixed interleave (not random): every rank agrees, and any stretch of steps has the same mix.
        f = self.options.large_fraction
        return f > 0 and math.floor((self.state.step + 1) * f) > math.floor(self.state.step * f)

    def loop(self, checkpoint: Path, lr_at, stop_step: int | None, minutes: float | None, eval_folder) -> TrainState:
        o, state = self.options, self.state
        t_start = time.time()
        t_saved = t_eval = t_start
        cpu_mark, wall_mark = time.process_time(), time.perf_counter()
        cpu_local = gpu_local = 0.0
        # Probing 1 vs 2 threads is a local timing decision; ranks of a DDP run must take identical steps,
        # so they keep a fixed count.
        probe = self.device.type == "cpu" and not o.threads and self.world == 1
        threads = o.threads or 1
        if self.device.type == "cpu":
            torch.set_num_threads(threads)
            if probe:
                threads = self.probe_threads(lr_at)
        running, window_start, window_steps, reference = None, time.perf_counter(), 0, None
        eval_lambdas = list(o.eval_lambdas or _spread(state.config.lambdas, 5))

        def flush_clocks():
            nonlocal cpu_local, gpu_local
            state.cpu_seconds += _all_sum(cpu_local, self.device)
            state.gpu_seconds += _all_sum(gpu_local, self.device)
            cpu_local = gpu_local = 0.0

        stop_requested = []
        told_unsettled = False  # the log says once why an evaluation that is due waits
        previous = {}
        diverged = False

        def request_stop(signum, frame):  # Ctrl-C or kill: finish the step, save, exit
            stop_requested.append(signum)

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, request_stop)
        while True:
            now = time.time()
            # Decided together: every rank stops, saves and evaluates at the same step (each of these
            # runs collectives), whatever its own clock says.
            eval_due = bool(eval_folder) and now - t_eval > o.eval_every_s
            done, want_eval, want_save = _any_rank([
                (stop_step is not None and state.step >= stop_step) or bool(stop_requested)
                or (minutes is not None and now - t_start > minutes * 60),
                eval_due and self.ema_steps >= o.ema_settle_steps,
                now - t_saved > o.save_every_s,
            ], self.device)
            if done:
                break
            if eval_due and not want_eval and not told_unsettled:
                self.log(f"evaluation deferred until the EMA, rebuilt {self.ema_steps} steps ago, has averaged "
                         f"{o.ema_settle_steps} (step {state.step + o.ema_settle_steps - self.ema_steps})")
                told_unsettled = True
            if want_eval:
                self.evaluate(eval_folder, eval_lambdas, flush_clocks)
                t_eval = time.time()
                cpu_mark, wall_mark = time.process_time(), time.perf_counter()  # evaluation is not training time
            if want_save:
                flush_clocks()
                if not _finite(self.model, self.ema):  # identical on every rank: DDP keeps the weights in step
                    self.log(f"stopping without saving: the weights are not finite; {checkpoint} keeps its last "
                             "good state")
                    diverged = True
                    break
                if self.rank == 0:
                    save_checkpoint(checkpoint, state, self.model, self.ema, self.optimizer)
                t_saved = time.time()
            stats = self.step(lr_at(state.step), self.is_large())
            state.step += 1
            if self.skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
                # These weights give non-finite gradients on every batch: resuming them would diverge
                # again, so the last good checkpoint is kept as it is (every rank decides the same).
                self.log(f"stopping without saving: {self.skipped_in_a_row} steps in a row had a non-finite "
                         f"gradient; {checkpoint} keeps its last good state")
                diverged = True
                break
            if not stats.pop("skipped", 0):
                running = stats if running is None else {k: 0.98 * running[k] + 0.02 * stats[k] for k in stats}
            cpu_now, wall_now = time.process_time(), time.perf_counter()
            if self.device.type == "cuda":  # GPU time; the host's CPU only fed it (not the curve's CPU-hours)
                gpu_local += wall_now - wall_mark
            else:
                cpu_local += cpu_now - cpu_mark
            cpu_mark, wall_mark = cpu_now, wall_now
            if state.step % 100 == 0 and running is not None:
                self.log(f"step {state.step} cpu_h {(state.cpu_seconds + cpu_local * self.world) / 3600:.3f} "
                         f"threads {threads} lr {lr_at(state.step - 1):.2e} loss {running['loss']:.4f} "
                         f"bpp {running['bpp']:.3f} psnr {running['psnr']:.2f}"
                         + (f" gpu_h {(state.gpu_seconds + gpu_local * self.world) / 3600:.4f}"
                            if self.device.type == "cuda" else "")
                         + (f" skipped {self.skipped_steps}" if self.skipped_steps else ""))
            if probe:
                window_steps += 1
                if window_steps == 50:
                    per_step = (time.perf_counter() - window_start) / window_steps
                    reference = per_step if reference is None else min(reference, per_step)
                    if state.step % 1000 < 50 or per_step > 1.5 * reference:
                        threads = self.probe_threads(lr_at)
                        reference = None
                    window_start, window_steps = time.perf_counter(), 0
        flush_clocks()
        diverged = diverged or not _finite(self.model, self.ema)
        if self.rank == 0 and not diverged:
            save_checkpoint(checkpoint, state, self.model, self.ema, self.optimizer)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if stop_requested:
            self.log(f"stopped by signal {stop_requested[0]}; saved at step {state.step}")
        if self.owns_group:
            dist.barrier()
            dist.destroy_process_group()  # a rank that exits with the group alive aborts
        return state

    def probe_threads(self, lr_at) -> int:
        """Time real training steps at 1 and 2 threads and keep the faster; the steps count as training."""
        def step():
            self.step(lr_at(self.state.step), False)
            self.state.step += 1
        return _probe_threads(step)

    def evaluate(self, folder, lambdas, flush_clocks) -> None:
        flush_clocks()
        # Every rank evaluates its share of the images (the EMA is the same on every rank: DDP keeps the
        # weights in step), and every rank gets the rows (gathering waits for all: no barrier needed).
        rows = evaluate_estimate(self.ema, folder, lambdas, shard=(self.rank, self.world),
                                 gather=_gathered if self.world > 1 else None)
        if self.rank == 0:
            self.state.history.append({"step": self.state.step, "cpu_hours": self.state.cpu_seconds / 3600,
                                       "gpu_hours": self.state.gpu_seconds / 3600, "phase": self.state.phase,
                                       "precision": self.precision, "estimate": rows})
            self.log("eval " + json.dumps(self.state.history[-1]))


def make_adam(params, lr: float, saved: dict | None = None) -> torch.optim.Adam:
    """The training's Adam: torch's fused kernel (CPU and CUDA, torch ≥ 2.4), with the ``saved`` state
    (``Adam.state_dict()``, as :func:`load_checkpoint` gives it) loaded.

    Why fused: one kernel updates every parameter instead of a loop of small
    operations per tensor; on this project's CPU the update took 0.017 instead
    of 0.062 CPU-s per step (both processes of the DDP run, of ~0.73;
    ``python benchmarks/train_parallel.py --arms ddp,ddp-fused`` →
    ``results/train-adam.json``). The same update up to float rounding. A saved
    state records the kind of optimizer that wrote it, and ``load_state_dict``
    would restore that kind: checkpoints written by the per-tensor Adam (before
    step 313,582) are loaded as fused ones, their step counts moved to where the
    fused kernel keeps them.
    """
    optimizer = torch.optim.Adam(params, lr=lr, fused=True)
    if saved is not None:
        groups = [dict(g, fused=True, foreach=None) for g in saved["param_groups"]]
        optimizer.load_state_dict(dict(saved, param_groups=groups))  # moves the moments to the parameters' device
    return optimizer


def anneal_start(history: list[dict]) -> int | None:
    """The stable step an annealed checkpoint's decay began at (its latest anneal); None for a stable run."""
    return next((h["anneal_from_step"] for h in reversed(history) if "anneal_from_step" in h), None)


def stable_lr(options: TrainOptions, state: TrainState) -> float:
    """The stable phase's learning rate: ``options.lr`` if given, else the run's own."""
    if options.lr is not None:
        return options.lr
    return state.lr if state.lr is not None else DEFAULT_LR


def _spread(lambdas: tuple[float, ...], n: int) -> list[float]:
    """n anchors spread evenly over the anchor list, ends included."""
    k = len(lambdas)
    return [lambdas[round(i * (k - 1) / (n - 1))] for i in range(n)]


def train(data: str | Path, checkpoint: str | Path, *, config: ModelConfig | None = None,
          steps: int | None = None, minutes: float | None = None, options: TrainOptions = TrainOptions(),
          eval_folder: str | Path | None = None, log=print, widen_from: str | Path | None = None) -> TrainState:
    """The stable phase: start (with ``config``) or continue ``checkpoint`` at a constant learning rate.

    A new run starts from random weights, or from a trained checkpoint
    ``widen_from`` widened into ``config`` (:mod:`.warm_start`).

    Stops after ``steps`` more steps or ``minutes`` of wall time (whichever
    first; neither means run until interrupted). Refuses an annealed
    checkpoint: continue the stable one it came from.
    """
    checkpoint = Path(checkpoint)
    checkpoint_existed = checkpoint.exists()
    if widen_from is not None and checkpoint_existed:
        raise ValueError(f"{checkpoint} exists: --widen-from starts a new run (continue it without --widen-from)")
    run = _Run(checkpoint, config, options, data, log, "stable", Path(widen_from) if widen_from else None)
    stop = None if steps is None else run.state.step + steps
    first = run.state.step
    fresh = not checkpoint_existed
    was = run.state.lr if run.state.lr is not None else DEFAULT_LR
    if not fresh and run.lr != was:
        # A change to the run like re-anchoring: the curve starts a new segment here (the EMA's noise
        # level moves with the rate), and every later resume keeps the new rate.
        run.state.history.append({"learning_rate": {"from": was, "to": run.lr}, "step": first,
                                  "cpu_hours": run.state.cpu_seconds / 3600})
        run.log(f"learning rate {was:.2e} -> {run.lr:.2e} from step {first} (kept by later resumes)")
    run.state.lr = run.lr

    def lr_at(step: int) -> float:
        # Warm up at the start of a fresh run only; a resumed run continues at full rate.
        return learning_rate(step - first, 0, run.lr, options.warmup_steps if fresh else 0, decay_fraction=0)

    return run.loop(checkpoint, lr_at, stop, minutes, eval_folder)


def anneal(data: str | Path, stable: str | Path, annealed: str | Path, steps: int, *,
           options: TrainOptions = TrainOptions(large_fraction=1.0), eval_folder: str | Path | None = None,
           log=print) -> TrainState:
    """Decay a copy of ``stable`` over ``steps`` steps into ``annealed`` (the file to export).

    The stable checkpoint is read, never written. If ``annealed`` exists (an
    unfinished anneal of the same length), it is continued.
    """
    stable, annealed = Path(stable), Path(annealed)
    if stable.resolve() == annealed.resolve():
        raise ValueError("the annealed checkpoint must be a different file from the stable one")
    if not annealed.exists():
        state, model, ema, opt = load_checkpoint(stable)
        if state.phase != "stable":
            raise ValueError(f"{stable} is not a stable-phase checkpoint")
        state.phase = "annealed"
        state.history = state.history + [{"anneal_from_step": state.step, "anneal_steps": steps}]
        state.lr = stable_lr(options, state)  # the rate the decay starts from
        save_checkpoint(annealed, state, model, ema, make_adam(model.parameters(), state.lr, opt))
    else:
        state = load_checkpoint(annealed)[0]
        planned = next((h for h in reversed(state.history) if "anneal_from_step" in h), {})
        if planned.get("anneal_steps") != steps:
            raise ValueError(f"{annealed} is an anneal of {planned.get('anneal_steps')} steps, not {steps}: "
                             "continue it with the same --steps, or anneal into a new file")
        if options.lr is not None and state.lr is not None and options.lr != state.lr:
            raise ValueError(f"{annealed} decays from lr {state.lr:g}, not {options.lr:g}: continue it without --lr "
                             "(or with the same), or anneal into a new file")
    run = _Run(annealed, None, options, data, log, "annealed")
    start = anneal_start(run.state.history)
    stop = start + steps

    def lr_at(step: int) -> float:
        return learning_rate(step - start, max(1, steps - 1), run.lr, warmup=0, decay_fraction=1.0)  # last step at the floor

    return run.loop(annealed, lr_at, stop, None, eval_folder)


def ema_model(checkpoint: str | Path) -> tuple[TrainState, HyperpriorModel]:
    """The EMA weights of a checkpoint (what is exported), with its state."""
    state, _, ema, _ = load_checkpoint(checkpoint)
    return state, ema
