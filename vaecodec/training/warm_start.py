"""Widen a trained model into a larger one that computes exactly the same function at first.

Training CPU-hours are this project's scarcest resource, so a new architecture
should not start from nothing when an old one has hours in it. Net2Net-style
(Chen et al. 2016), every tensor of the old model is embedded in the leading
slice of its counterpart in the new one:

* old output channels ignore the new input channels (those weights are zero),
  so the old computation runs unchanged inside the new network;
* new output channels are freshly initialised and feed only new inputs
  downstream, and the synthesis ignores new latent channels at first;
* the rate model's (μ, log2 σ) output keeps its two halves apart, the gains
  are re-sampled at the new λ anchors (log-linear, as the model interpolates),
  and a checkerboard context starts as a zero correction.

So the widened model reconstructs exactly like the old one and codes at
nearly the same rate (the new channels are 0, at the smallest scale), and
training only adds to it. (The run that started vaecodec 0.2's model used an
earlier form whose new channels started random and cost rate; it recovered
within ~2,000 steps.)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..model import (SCALE_MIN, HyperpriorModel, ModelConfig, SimplifiedGDN, build_model, gaussian_bin_likelihood,
                     interpolate_rows)

__all__ = ["add_channel_context", "channel_rates", "permute_latent_channels", "reanchor", "widen"]


def _embed_conv(new: nn.Conv2d | nn.ConvTranspose2d, old: nn.Conv2d | nn.ConvTranspose2d,
                out_map: torch.Tensor | None = None) -> None:
    w = new.weight.data
    transposed = isinstance(new, nn.ConvTranspose2d)
    o_old = old.weight.shape[1] if transposed else old.weight.shape[0]
    i_old = old.weight.shape[0] if transposed else old.weight.shape[1]
    outs = out_map if out_map is not None else torch.arange(o_old)
    if old.weight.shape[2:] != w.shape[2:]:
        raise ValueError("kernel sizes differ")
    if transposed:  # (in, out, k, k)
        w[:, outs] = 0
        w[:i_old, outs] = old.weight.data
    else:  # (out, in, k, k)
        w[outs] = 0
        w[outs, :i_old] = old.weight.data
    new.bias.data[outs] = old.bias.data


def _embed_gdn(new: SimplifiedGDN, old: SimplifiedGDN) -> None:
    c = old.beta.shape[0]
    new.beta.data[:c] = old.beta.data
    new.gamma.data[:c] = 0
    new.gamma.data[:c, :c] = old.gamma.data


def _embed_sequential(new: nn.Sequential, old: nn.Sequential, last_out_map: torch.Tensor | None = None) -> None:
    if len(new) != len(old):
        raise ValueError("layer stacks differ")
    for k, (a, b) in enumerate(zip(new, old)):
        if isinstance(a, (nn.Conv2d, nn.ConvTranspose2d)):
            _embed_conv(a, b, last_out_map if k == len(new) - 1 else None)
        elif isinstance(a, SimplifiedGDN):
            _embed_gdn(a, b)


@torch.no_grad()
def widen(old: HyperpriorModel, config: ModelConfig, seed: int = 0) -> HyperpriorModel:
    """A model of ``config`` that starts as ``old`` (see the module docstring).

    ``config`` must be at least as wide as ``old.config`` everywhere and use
    the same hyper-latent channels.
    """
    oc = old.config
    if config.hyper_channels != oc.hyper_channels:
        raise ValueError("widening keeps the hyper-latent channels")
    torch.manual_seed(seed)
    new = build_model(config)
    m_old, m_new = oc.latent_channels, config.latent_channels
    if oc.kind == "checkerboard":
        same = ("latent_channels", "bottleneck_channels", "context_channels", "hyper_hidden", "lambdas",
                "channel_slices")
        if config.kind != "checkerboard" or any(getattr(oc, f) != getattr(config, f) for f in same):
            raise ValueError("a checkerboard model widens only at full resolution (channels): its context, "
                             "entropy-parameter and channel-context networks are copied as they are")
    _embed_sequential(new.analysis, old.analysis)
    _embed_sequential(new.synthesis, old.synthesis)
    # New latent channels start at exactly 0 (zero analysis rows) and cost no rate (a mean of 0 and the
    # smallest scale); the synthesis reads them through small random weights, so 0 changes no pixel
    # while gradients still reach them.
    last = new.analysis[-1]
    last.weight.data[m_old:] = 0
    last.bias.data[m_old:] = 0
    first = new.synthesis[0]
    first.weight.data[m_old:] *= 0.01
    _embed_sequential(new.hyper_analysis, old.hyper_analysis)
    out_map = torch.cat([torch.arange(m_old), m_new + torch.arange(m_old)])  # (μ | log2 σ) halves kept apart
    _embed_sequential(new.hyper_synthesis, old.hyper_synthesis, out_map)
    head = new.hyper_synthesis[-1]
    fresh = torch.cat([torch.arange(m_old, m_new), m_new + torch.arange(m_old, m_new)])
    head.weight.data[fresh] = 0
    head.bias.data[fresh] = 0
    new.hyper_prior.load_state_dict(old.hyper_prior.state_dict())
    if oc.kind == "checkerboard":
        new.context.load_state_dict(old.context.state_dict())
        new.entropy_parameters.load_state_dict(old.entropy_parameters.state_dict())
        if config.channel_slices:
            new.channel_context.load_state_dict(old.channel_context.state_dict())
            new.channel_parameters.load_state_dict(old.channel_parameters.state_dict())
    # Gains: old anchors' log-gains, read off at the new λ anchors (extrapolated along the end segments).
    old_anchors = torch.log(torch.tensor(oc.lambdas, dtype=torch.float64))
    pos = (torch.log(torch.tensor(config.lambdas, dtype=torch.float64)) - old_anchors[0]) \
        / (old_anchors[-1] - old_anchors[0]) * (len(oc.lambdas) - 1)
    new.log_gains.data[:, :m_old] = interpolate_rows(old.log_gains.data.double(), pos).float()
    # New channels keep their default gains, 0.5·ln(λ/λ_mid) (the high-rate optimum for MSE), and a
    # log2 σ bias that puts them at the smallest scale at every λ: rate ≈ 0 for a latent at 0.
    if m_new > m_old:
        top = float(new.log_gains.data[:, m_old:].max()) / math.log(2)
        head.bias.data[m_new + m_old:] = math.log2(SCALE_MIN) - top - 1.0
    return new


def reanchor(checkpoint, out, lambdas: tuple[float, ...]):
    """Write to ``out`` the stable checkpoint ``checkpoint`` with the λ anchors ``lambdas``; returns its state.

    Why: the qualities a model offers are its anchors' span, and training
    samples λ log-uniformly over it; reaching further (a quality 100 with
    more fidelity) means training new anchors, not extrapolating to them.
    The weights stay; the gains are read off at the new anchors as the model
    interpolates (extrapolated along the end segments, so the function is
    unchanged inside the old span), and Adam's step sizes for the gains are
    taken from the nearest old anchors. Steps and CPU-hours carry on; the
    history records the change.
    """
    from dataclasses import replace

    from .loop import load_checkpoint, save_checkpoint

    lambdas = tuple(float(v) for v in lambdas)
    if len(lambdas) < 2 or any(b <= a for a, b in zip(lambdas, lambdas[1:])) or lambdas[0] <= 0:
        raise ValueError("λ anchors must be at least two positive values, strictly ascending")
    state, model, _, opt = load_checkpoint(checkpoint)
    if state.phase != "stable":
        raise ValueError(f"{checkpoint} is {state.phase}; re-anchor a stable checkpoint")
    old = state.config
    config = replace(old, lambdas=lambdas)
    anchors = torch.log(torch.tensor(old.lambdas, dtype=torch.float64))
    pos = (torch.log(torch.tensor(lambdas, dtype=torch.float64)) - anchors[0]) / (anchors[-1] - anchors[0]) \
        * (len(anchors) - 1)
    weights = model.state_dict()
    weights["log_gains"] = interpolate_rows(weights["log_gains"].double(), pos).float()
    new = build_model(config)
    new.load_state_dict(weights)
    index = [name for name, _ in model.named_parameters()].index("log_gains")
    moments = opt["state"].get(index, {})
    for key in ("exp_avg", "exp_avg_sq"):
        if key in moments:  # positive quantities: interpolated within the old span, never extrapolated
            moments[key] = interpolate_rows(moments[key].double(), pos.clamp(0, len(anchors) - 1)).float()
    optimizer = torch.optim.Adam(new.parameters())
    optimizer.load_state_dict(opt)
    state = replace(state, config=config, history=state.history + [
        {"reanchored": {"from": list(old.lambdas), "to": list(lambdas)}, "step": state.step,
         "cpu_hours": state.cpu_seconds / 3600}])
    save_checkpoint(out, state, new, new, optimizer)
    return state


def _channel_layouts(model: HyperpriorModel) -> dict[str, tuple[int, str]]:
    """Every tensor of a checkerboard model indexed by latent channel: name → (dimension, layout), layout
    ``"m"`` (the M channels), ``"2m"`` (the (μ | log2 σ) halves) or ``"2m+c"`` (the halves, then context
    features)."""
    last_a, last_hs, last_ep = len(model.analysis) - 1, len(model.hyper_synthesis) - 1, len(model.entropy_parameters) - 1
    return {
        "log_gains": (1, "m"),
        f"analysis.{last_a}.weight": (0, "m"), f"analysis.{last_a}.bias": (0, "m"),
        "synthesis.0.weight": (0, "m"),  # transposed: (in, out, k, k)
        "hyper_analysis.0.weight": (1, "m"),
        f"hyper_synthesis.{last_hs}.weight": (0, "2m"), f"hyper_synthesis.{last_hs}.bias": (0, "2m"),
        "context.0.weight": (1, "m"),
        "entropy_parameters.0.weight": (1, "2m+c"),
        f"entropy_parameters.{last_ep}.weight": (0, "2m"), f"entropy_parameters.{last_ep}.bias": (0, "2m"),
    }


def permute_latent_channels(model: HyperpriorModel, order: torch.Tensor,
                            tensors: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """``tensors`` (default: the model's state dict; or anything shaped like its parameters, such as Adam's
    moments by parameter name) with the latent channels put in ``order``: latent k of the result is latent
    ``order[k]`` of ``model``. The permuted model computes the same function, its latents reordered."""
    m = model.config.latent_channels
    order = order.long()
    index = {"m": order, "2m": torch.cat([order, m + order])}
    tensors = dict(model.state_dict() if tensors is None else tensors)
    for name, (dim, layout) in _channel_layouts(model).items():
        if name not in tensors:
            continue
        t = tensors[name]
        idx = index.get(layout)
        if idx is None:  # "2m+c": the context features keep their places after the halves
            idx = torch.cat([index["2m"], torch.arange(2 * m, t.shape[dim])])
        tensors[name] = t.index_select(dim, idx)
    return tensors


@torch.no_grad()
def channel_rates(model: HyperpriorModel, crops: torch.Tensor, lmbda: float) -> torch.Tensor:
    """Mean bits per latent of each latent channel (M,) on ``crops`` (B, 3, H, W) at ``lmbda``, rounded latents."""
    model.eval()
    total = 0.0
    for batch in crops.split(8):  # bounds the activations' memory
        y = model.analysis(batch)
        hyper = model.hyper_synthesis(torch.round(model.hyper_analysis(y)))
        log_g = model.log_gain(torch.full((batch.shape[0],), lmbda))[:, :, None, None]
        mu, log2_scale, r = model.coded_passes(y, hyper, torch.exp(log_g), torch.round)
        scale = torch.exp2(log2_scale + log_g / math.log(2)).clamp_min(SCALE_MIN)
        total = total + (-torch.log2(gaussian_bin_likelihood(r, scale).clamp_min(1e-9))).sum((0, 2, 3))
    return total / (crops.shape[0] * y.shape[2] * y.shape[3])


def add_channel_context(checkpoint, out, slices: tuple[int, ...], data, crops: int = 64, seed: int = 0, log=print):
    """Write to ``out`` the stable checkerboard checkpoint ``checkpoint`` grown a channel context
    (:class:`~vaecodec.model.ChannelCheckerboardModel` with ``slices``); returns its state.

    The latent channels are first reordered by their rate on ``crops`` training
    crops of ``data`` at the middle λ, costliest first, so that the small first
    slices hold the channels that say most about the rest; every tensor that
    reads or writes latents is permuted with them (and Adam's step sizes with
    their parameters). The new networks' last layers are zero, so the new
    model computes exactly what the old one did, on permuted latents. Steps
    and CPU-hours carry on; the history records the change.
    """
    from dataclasses import replace

    from .data import CropPool
    from .loop import load_checkpoint, save_checkpoint

    state, model, _, opt = load_checkpoint(checkpoint)
    old = state.config
    if state.phase != "stable":
        raise ValueError(f"{checkpoint} is {state.phase}; grow a stable checkpoint")
    if old.kind != "checkerboard" or old.channel_slices or old.synthesis_bits:
        raise ValueError(f"{checkpoint} is not a checkerboard model without channel slices (and a fixed-point synthesis)")
    config = replace(old, channel_slices=tuple(int(v) for v in slices))  # validates the slices
    pool = CropPool(data, crop=256, crops_per_image=1, seed=seed)
    x = torch.from_numpy(pool.crops[:crops]).permute(0, 3, 1, 2).float().div_(255.0)
    rates = channel_rates(model, x, math.sqrt(old.lambdas[0] * old.lambdas[-1]))
    order = torch.argsort(rates, descending=True)
    log(f"channel order by rate on {x.shape[0]} crops (bits per latent, costliest first): "
        + ", ".join(f"{int(c)}:{float(rates[c]):.2f}" for c in order[:8]) + ", …")
    new = build_model(config)
    missing, unexpected = new.load_state_dict(permute_latent_channels(model, order), strict=False)
    if unexpected or any(not k.startswith("channel_") for k in missing):
        raise ValueError(f"{checkpoint}: parameters do not match the grown model ({(unexpected or missing)[0]})")
    # Adam's moments follow their parameters (by name) through the permutation; the new networks start fresh.
    old_names = [name for name, _ in model.named_parameters()]
    new_names = [name for name, _ in new.named_parameters()]
    moments = {key: {old_names[i]: s[key] for i, s in opt["state"].items() if key in s} for key in ("exp_avg", "exp_avg_sq")}
    moments = {key: permute_latent_channels(model, order, by_name) for key, by_name in moments.items()}
    new_state = {}
    for i, s in opt["state"].items():
        entry = dict(s, **{key: moments[key][old_names[i]] for key in moments if old_names[i] in moments[key]})
        new_state[new_names.index(old_names[i])] = entry
    groups = [dict(opt["param_groups"][0], params=list(range(len(new_names))))]
    optimizer = torch.optim.Adam(new.parameters())
    optimizer.load_state_dict({"state": new_state, "param_groups": groups})
    state = replace(state, config=config, history=state.history + [
        {"channel_context": {"slices": list(config.channel_slices), "order": order.tolist()}, "step": state.step,
         "cpu_hours": state.cpu_seconds / 3600}])
    save_checkpoint(out, state, new, new, optimizer)
    return state
