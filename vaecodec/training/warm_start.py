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

from ..model import SCALE_MIN, HyperpriorModel, ModelConfig, SimplifiedGDN, build_model, interpolate_rows

__all__ = ["reanchor", "widen"]


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
        same = ("latent_channels", "bottleneck_channels", "context_channels", "hyper_hidden", "lambdas")
        if config.kind != "checkerboard" or any(getattr(oc, f) != getattr(config, f) for f in same):
            raise ValueError("a checkerboard model widens only at full resolution (channels): its context and "
                             "entropy-parameter networks are copied as they are")
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
