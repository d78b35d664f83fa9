"""Fork a checkpoint into one whose synthesis trains as the 8-bit integer decoder computes.

Why a fork and not a new run: the float model's training hours carry over.
Every weight is kept; the synthesis gains its per-channel rounding steps
(:class:`vaecodec.int8_synthesis.Int8Synthesis`), started from the float
model's own activations on training crops (so at first it only adds the
rounding), and the optimizer's per-parameter statistics are carried over by
name. The result is an ordinary stable-phase checkpoint: continue it with
``vaecodec train`` (quantization-aware training) or anneal it for export.

From an annealed checkpoint the fork takes its EMA weights (what would ship):
annealing the fork again at a low learning rate (``vaecodec anneal --lr``) is
a short quantization-aware fine-tune of the finished float model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from ..model import build_model
from .data import CropPool
from .loop import load_checkpoint, save_checkpoint

__all__ = ["fork_int8_synthesis"]


@torch.no_grad()
def _synthesis_inputs(model, data, crops: int, crop: int, seed: int) -> torch.Tensor:
    """ŷ as the synthesis receives it (rounded latents), of ``crops`` training crops at λ spread over the anchors."""
    pool = CropPool(data, crop=crop, crops_per_image=1, seed=seed)
    pick = np.random.default_rng(seed).permutation(len(pool.crops))[:crops]
    x = torch.from_numpy(pool.crops[pick]).permute(0, 3, 1, 2).float().div_(255.0)
    lambdas = torch.tensor(model.config.lambdas)
    lam = lambdas[torch.arange(len(x)) % len(lambdas)]
    seen = []
    hook = model.synthesis.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().float()))
    try:
        model.eval()(x, lam, hard=True)
    finally:
        hook.remove()
    return seen[0]


def fork_int8_synthesis(stable: str | Path, out: str | Path, data: str | Path, *, crops: int = 24, crop: int = 256,
                        seed: int = 0, log=print):
    """Write ``out``: ``stable`` (or an annealed checkpoint's EMA) with an 8-bit synthesis whose steps are
    calibrated on training crops."""
    stable, out = Path(stable), Path(out)
    if out.exists():
        raise ValueError(f"{out} exists: fork into a new file")
    state, model, ema, opt_state = load_checkpoint(stable)
    if state.phase == "annealed":  # the weights that would ship
        model = ema
        state.phase = "stable"
    if state.config.synthesis_bits == 8:
        raise ValueError(f"{stable} already has an 8-bit synthesis")
    config = dataclasses.replace(state.config, synthesis_bits=8)
    forked = build_model(config)
    missing, unexpected = forked.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not k.startswith("synthesis.log_step") for k in missing):
        raise ValueError("the checkpoint's layers do not match its 8-bit form")
    forked.synthesis.calibrate(_synthesis_inputs(model, data, crops, crop, seed))
    # Adam's state is by parameter index; the synthesis' steps join the list, so carry it over by name.
    old_index = {name: i for i, (name, _) in enumerate(model.named_parameters())}
    new_names = [name for name, _ in forked.named_parameters()]
    optimizer = torch.optim.Adam(forked.parameters())
    moved = {"state": {j: opt_state["state"][old_index[name]] for j, name in enumerate(new_names)
                       if name in old_index and old_index[name] in opt_state["state"]},
             "param_groups": [dict(opt_state["param_groups"][0], params=list(range(len(new_names))))]}
    optimizer.load_state_dict(moved)
    state.config = config
    state.history = state.history + [{"int8_synthesis_from_step": state.step, "calibration_crops": crops,
                                      "from": str(stable)}]
    save_checkpoint(out, state, forked, forked, optimizer)
    log(f"forked {stable} at step {state.step} ({state.cpu_seconds / 3600:.3f} CPU-h) into {out} "
        f"with an 8-bit synthesis (steps calibrated on {crops} crops)")
    return state
