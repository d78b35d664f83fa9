"""Encode-time latent refinement: spend encoder CPU to make a file smaller or better (``--effort``).

Why: the analysis transform is amortized, one network guessing latents for
every image; optimizing the latents of *this* image against the model's own
rate and distortion closes much of that gap. The decoder, the format and the
bit-exactness are untouched: refinement only changes which (y, ẑ) the
ordinary encoder path quantizes and codes (:mod:`vaecodec.latent_codec`).

How (stochastic Gumbel annealing, Yang, Bamler & Mandt 2020): the latents
are optimized with Adam on a float shadow of the frozen model (the shipped
fp16 weights in float32), with the rounding replaced by a Gumbel-softmax
choice between floor and ceiling whose temperature is annealed towards hard
rounding while the learning rate decays (:class:`Schedule`: both depend on
the iteration number only, so each effort level is a prefix of the next's
run). y is optimized in gained units u = y·g (one quantization step = 1
at every quality), so one learning rate serves all qualities; the context
model, when present, sees the soft anchors exactly as in training.

A run's last iterates differ by a few quantization steps here and there (SGA's noise, the late
learning rate): of the latents after every 8th iteration from 0.6·n to n, the run returns those whose
hard-rounded RD cost the model estimates lowest (one forward pass each, no gradient).

The result is then coded by the ordinary exact path, and the encoder keeps
whichever of the refined and unrefined files has the lower real RD cost
(file bits + λ·255²·SSE of the exactly decoded pixels), so no effort level
ever makes a file worse than the default. Seeded: the same image, quality,
effort and thread count give the same file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .coding_model import GAIN_FRAC_BITS, CodingModel
from .latent_codec import Latents
from .model import SCALE_MIN, gaussian_bin_likelihood

__all__ = ["EFFORTS", "DEFAULT_EFFORT", "SCHEDULE", "Schedule", "refine_latents", "refine_path", "rd_cost",
           "MAX_REFINE_PIXELS"]


@dataclass(frozen=True)
class Schedule:
    """The one optimization schedule every effort level follows; a level only says where to stop.

    Adam's learning rate (gained units: one quantization step = 1) and the
    rounding temperature depend on the iteration number alone, never on the
    level's length, so effort k's run is a prefix of effort k+1's (anytime,
    as in Yang et al.'s own schedule): ``refine_path`` can stop at several
    levels in one run, and the benchmark measures all nine levels for the
    price of the highest.
    """

    lr: float = 0.05
    tau_start: float = 0.5
    tau_end: float = 0.1
    anneal_iterations: int = 160
    """τ falls exponentially from ``tau_start`` to ``tau_end`` over this many iterations, then stays."""
    lr_end: float | None = 0.003
    """If set, the learning rate falls exponentially from ``lr`` to this over the same iterations."""
    hard_z_from: int | None = None
    """If set, from this iteration on ẑ is held at round(z) (what the file will carry) and only y moves."""
    straight_through_from: int | None = None
    """If set, from this iteration on the rounding of y and z is hard (what the file will carry) with
    straight-through gradients: the last iterations optimize the real rounded latents, not their soft mix."""
    select_every: int | None = 8
    """If set, a run stopped at n iterations returns, of the latents after every ``select_every``-th
    iteration from 0.6·n to n (and after n), those whose hard-rounded RD cost the model estimates lowest:
    SGA's noise and the late learning rate move the latents by a few quantization steps that, rounded, cost
    more or less; the model's own estimate (one forward pass, no gradient) picks among them."""

    @classmethod
    def parse(cls, spec: str) -> "Schedule":
        """``"lr,tau_start,tau_end,anneal_iterations[,lr_end[,hard_z_from[,straight_through_from[,select_every]]]]"``
        (the benchmarks' command-line form; a missing or empty ``lr_end`` means a constant learning rate, a
        missing or empty iteration count never: older recorded commands keep their meaning)."""
        v = spec.split(",") + [""] * 4
        return cls(float(v[0]), float(v[1]), float(v[2]), int(v[3]), float(v[4]) if v[4] else None,
                   int(v[5]) if v[5] else None, int(v[6]) if v[6] else None, int(v[7]) if v[7] else None)

    def tau(self, t: int) -> float:
        return self.tau_start * (self.tau_end / self.tau_start) ** min(1.0, t / self.anneal_iterations)

    def candidates(self, n: int) -> list[int]:
        """The iteration counts whose latents a run stopped at ``n`` chooses among (ascending, ending at n)."""
        if self.select_every is None:
            return [n]
        first = math.ceil(0.6 * n / self.select_every) * self.select_every
        return sorted({t for t in range(first, n, self.select_every) if t > 0} | {n})

    def learning_rate(self, t: int) -> float:
        end = self.lr if self.lr_end is None else self.lr_end
        return self.lr * (end / self.lr) ** min(1.0, t / self.anneal_iterations)


SCHEDULE = Schedule()
EFFORTS = {1: 0, 2: 16, 3: 24, 4: 32, 5: 48, 6: 64, 7: 96, 8: 128, 9: 160}
"""Adam iterations per effort level (1 = no refinement, the default). Effort 9 is what fits in ~100 CPU-s for
a Kodak image with the 0.2 model (0.62 s per iteration). The lowest refined level runs 16 iterations: with
the schedule's large first steps, 8 lowered every quality's RD cost but moved along the RD curve more than
below it (BD-rate +0.2 % against effort 1 on 8 Kodak images, where 16 gave −3.0 %:
``benchmarks/results/effort-tune/effort-level2-at-8.md``).

The schedule was tuned on 256×384 crops of three training images at qualities 25 and 75 with the 0.2
model (``python benchmarks/effort_tune.py``; mean change of the real RD cost at 160 iterations, results in
``benchmarks/results/effort-tune/``): constant lr 0.1 / 0.05 / 0.03 / 0.02 +6.4 / −5.9 / −6.2 / −6.0 %
(τ annealed over 160 iterations; over 64: −4.8 %), where lr 0.02 peaked at 64 iterations (−6.6 %) and then
lost ground at low quality; an exponential decay of the lr 0.03 → 0.003 with τ gives −7.2 % and keeps
improving to the end (0.05 → 0.003: −7.3 % at 160 iterations, but less at 32–128).

Retuned with the r2 model (four crops, qualities 15 / 50 / 85, results in the same folder): choosing among
the latents every 8 iterations by the model's estimate of their hard-rounded cost (``select_every``) gives
−11.57 % at 160 iterations against −11.45 % for the last iterate; with that choice a less hardened end pays
(τ down to 0.1 instead of 0.05: −11.96 %; 0.15: −11.98 %, 0.2: −11.89 %) and so does a larger step (lr
0.05 → 0.003: **−12.69 %**; 0.08: −12.49 %; 0.05 → 0.006: −12.35 %). A straight-through hard end (the last
32 iterations rounding for real, identity gradients) lost ground (−3.28 %)."""
DEFAULT_EFFORT = 1
MAX_REFINE_PIXELS = 4_194_304
"""Refinement holds the whole image's activations for autograd; larger images are coded at effort 1."""


def _soft_round(v: torch.Tensor, tau: float, generator: torch.Generator) -> torch.Tensor:
    """SGA-style rounding: a Gumbel-softmax mix of floor(v) and ceil(v), nearer the closer one as τ → 0.

    The two-way softmax is written as its sigmoid: with logits −atanh(frac)/τ
    and −atanh(1 − frac)/τ and Gumbel noise on each, the weight of the
    ceiling is σ(Δlogit + g₁ − g₀), and the difference of two Gumbels is a
    logistic variable, log u − log(1 − u). Same distribution, without
    stacking, softmaxing and slicing a tensor twice the latents' size.
    """
    f = torch.floor(v)
    frac = (v - f).clamp(1e-4, 1 - 1e-4)
    u = torch.rand(v.shape, generator=generator).clamp_(1e-9, 1 - 1e-9)
    # Yang et al. also divide the noisy logits by τ (a τ-tempered Gumbel-softmax); with 0.1's model, on three
    # Kodak crops, that form measured −4.3 % RD cost at 128 iterations (−4.0 % with τ 1 → 0.1) against −7.2 %
    # for this one, which keeps the softmax at temperature 1 and lets τ sharpen only the odds.
    return f + torch.sigmoid((torch.atanh(frac) - torch.atanh(1 - frac)) / tau + (torch.log(u) - torch.log1p(-u)))


def _straight_through_round(v: torch.Tensor) -> torch.Tensor:
    return v + (torch.round(v) - v).detach()


def refine_latents(model: CodingModel, x: torch.Tensor | None, latents: Latents, quality: int, effort: int,
                   height: int, width: int, seed: int = 0, on_iteration=None) -> Latents | None:
    """Refined latents for ``quality`` at ``effort`` (None at effort 1, or for images too large to refine).

    ``x`` is the padded model input (1, 3, H', W'); the distortion is measured
    on the real ``height`` × ``width`` pixels only. ``on_iteration(t, n)`` is
    called after each of the n iterations (progress on a terminal).
    """
    n = EFFORTS[effort]
    if n == 0 or height * width > MAX_REFINE_PIXELS:
        return None
    return refine_path(model, x, latents, quality, [n], height, width, seed, on_iteration)[0]


def refine_path(model: CodingModel, x: torch.Tensor, latents: Latents, quality: int, stops: list[int],
                height: int, width: int, seed: int = 0, on_iteration=None,
                schedule: Schedule | None = None, bf16: bool = False) -> list[Latents]:
    """The latents of a run stopped after each number of iterations in ``stops`` (ascending), from one seeded run.

    A run stopped at k returns, of its latents after each of ``schedule.candidates(k)`` iterations, those
    with the lowest hard-rounded RD cost the model estimates. Because :class:`Schedule` depends on the
    iteration number only, the latents at stop k are exactly those of a run told to stop at k:
    ``refine_latents(effort=e)`` is ``refine_path(stops=[EFFORTS[e]])``.
    """
    schedule = schedule or SCHEDULE
    if list(stops) != sorted(stops) or not stops or stops[0] < 1:
        raise ValueError(f"stops must be ascending positive iteration counts, not {stops!r}")
    if not x.is_floating_point():
        x = x.float().div_(255.0)
    net = model.float_network()
    lam = model.quality_lambda(quality)
    # The exact tables' gain (what the coder will use), per channel.
    gain = (2.0**GAIN_FRAC_BITS / model._inverse_gain[quality - 1].float())[None, :, None, None]
    log2_gain = torch.log2(gain)
    generator = torch.Generator().manual_seed(seed)
    u = (latents.y.float() * gain).clone().requires_grad_(True)
    z = net.hyper_analysis(latents.y.float()).clone().requires_grad_(True)
    opt = torch.optim.Adam([u, z], lr=schedule.lr)
    target = x[:, :, :height, :width]
    n = stops[-1]
    out = []

    def snapshot() -> Latents:
        return Latents((u / gain).detach().to(latents.y.dtype), torch.round(z.detach()).long())

    def rd_estimate(round_z, round_r) -> torch.Tensor:
        """The model's RD cost (bits per pixel + λ·MSE on the 0..255 scale) of (u, z) with these roundings."""
        z_q = round_z(z)
        # Each latent's (μ, log2 σ) and rounded residual from its own coding pass (and slice), the later
        # passes seeing the earlier ones' rounded values, as the decoder will.
        mu, log2_scale, r_q = net.coded_passes(u / gain, net.hyper_synthesis(z_q), gain, round_r)
        scale = torch.exp2(log2_scale + log2_gain).clamp_min(SCALE_MIN)
        y_hat = r_q / gain + mu
        bits = -torch.log2(gaussian_bin_likelihood(r_q, scale).clamp_min(1e-9)).sum() \
            - torch.log2(net.hyper_prior.likelihood(z_q).clamp_min(1e-9)).sum()
        x_hat = net.synthesis(y_hat)[:, :, :height, :width]
        return bits / (height * width) + lam * 255**2 * (x_hat - target).pow(2).mean()

    # Each stop's candidates; the latents after each candidate iteration, with their hard-rounded estimate.
    candidates = {stop: schedule.candidates(stop) for stop in stops}
    wanted = set().union(*candidates.values())
    choosing = any(len(c) > 1 for c in candidates.values())  # else each stop's only candidate is itself
    seen: dict[int, tuple[float, Latents]] = {}

    def soft(v: torch.Tensor) -> torch.Tensor:
        return _soft_round(v, tau, generator)

    # bf16 (the shadow's convolutions under autocast) was 1.5× faster per iteration on this project's AMX CPU
    # (0.094 against ~0.14 s on a 256×384 crop) but gains less per iteration, most at high quality: on the crop
    # both tuning runs share, −5.6 / −1.9 % RD cost at qualities 25 / 75 against −6.1 / −3.4 % in float32
    # (160 iterations; and CPUs without AMX emulate bf16 many times slower). So float32 by default.
    with torch.enable_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for t in range(n):
            tau = schedule.tau(t)
            for group in opt.param_groups:
                group["lr"] = schedule.learning_rate(t)
            hard_z = schedule.hard_z_from is not None and t >= schedule.hard_z_from
            straight = schedule.straight_through_from is not None and t >= schedule.straight_through_from
            rounding = _straight_through_round if straight else soft
            loss = rd_estimate((lambda v: torch.round(v.detach())) if hard_z else rounding, rounding)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if t + 1 in wanted:
                with torch.no_grad():
                    estimate = float(rd_estimate(torch.round, torch.round)) if choosing else 0.0
                seen[t + 1] = (estimate, snapshot())
            if on_iteration is not None:
                on_iteration(t + 1, n)
            if t + 1 in stops:
                out.append(min((seen[c] for c in candidates[t + 1]), key=lambda item: item[0])[1])
                for c in [c for c in seen if c < min([min(candidates[s]) for s in stops if s > t + 1], default=n + 1)]:
                    del seen[c]  # no later stop chooses among these
    return out


def rd_cost(num_bytes: int, mse_255: float, lam: float, pixels: int) -> float:
    """The Lagrangian the model was trained for, on a real file: bpp + λ·MSE (MSE on the 0..255 scale)."""
    return 8 * num_bytes / pixels + lam * mse_255
