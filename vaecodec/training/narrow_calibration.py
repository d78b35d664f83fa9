"""Activation steps of the narrow programs (10-bit latents, 11-bit synthesis), calibrated on training images
at export.

A 10-bit program (:mod:`vaecodec.narrow`) rounds the input of each
convolution to a power-of-two step (the program takes one per channel; these
tables give every channel of a layer the same). The steps are chosen here,
once, from the float network: the largest |value| a layer's input reaches on
a few training images at five λ across the anchors (0.0008 to 3.2768), with one bit of headroom above
it (inputs beyond saturate). Measured on the shipped model (``benchmarks/latent_precision.py``):
scales from training images with one bit of headroom cost at most a few tenths
of a percent of rate on Kodak; without the headroom Kodak's inputs pass the
training peaks and the lowest λ lost 1.3 %.

The 11-bit synthesis (:func:`synthesis_exponents`) takes a step per channel at
every point (ŷ, each transposed convolution's and inverse GDN's input), folded
into the weights: 11/11 bits that way lost within 0.02 dB in simulation
(``benchmarks/results/synthesis-precision-folded.json``), −0.005 to −0.029 dB from
files (``benchmarks/results/model-comparison-r5s.json``).

The result is integer tables (``n10.{network}.{i}``: the exponents of the i-th
convolution's input channels; ``n11.synthesis.{i}``: of the synthesis' i-th
layer's) that a model file stores; nothing here runs when a file is coded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..model import HyperpriorModel
from ..model import SimplifiedGDN
from ..narrow import SYNTHESIS_BITS, exponents_for_peaks
from .evaluate import image_estimates

__all__ = ["latent_exponents", "latent_networks", "synthesis_exponents"]

CALIBRATION_LAMBDAS = (0.0008, 0.0064, 0.0512, 0.4096, 3.2768)


def latent_networks(net: HyperpriorModel) -> dict[str, nn.Sequential]:
    """The networks that feed the entropy coder, by the names their tables carry."""
    nets = {"hyper_synthesis": net.hyper_synthesis}
    if hasattr(net, "context"):
        nets["context"] = net.context
        nets["entropy_parameters"] = net.entropy_parameters
    for s, conv in enumerate(getattr(net, "channel_context", [])):
        nets[f"channel_context.{s}"] = nn.Sequential(conv)
    for s, seq in enumerate(getattr(net, "channel_parameters", [])):
        nets[f"channel_parameters.{s}"] = seq
    return nets


def _input_peaks(net: HyperpriorModel, modules: dict[str, nn.Module], images: list[Path],
                 lambdas: tuple[float, ...]) -> dict[str, torch.Tensor]:
    """Per named module, the largest |value| of each channel of its input over ``net``'s forward passes on
    ``images`` at ``lambdas`` (eval mode, quantized latents: what a decoder sees)."""
    peaks: dict[str, torch.Tensor] = {}
    handles = []
    for key, module in modules.items():
        def record(_, inputs, key=key):
            p = inputs[0].detach().float().abs().amax(dim=(0, 2, 3))
            peaks[key] = p if key not in peaks else torch.maximum(peaks[key], p)

        handles.append(module.register_forward_pre_hook(record))
    try:
        image_estimates(net, list(images), list(lambdas))
    finally:
        for h in handles:
            h.remove()
    return peaks


@torch.no_grad()
def latent_exponents(net: HyperpriorModel, images: list[Path], lambdas: tuple[float, ...] = CALIBRATION_LAMBDAS,
                     headroom: float = 1.0) -> dict[str, np.ndarray]:
    """The ``n10.*`` tables for ``net`` (float, the fp16 weights a model file holds) from its forward passes
    on ``images`` at ``lambdas``: per convolution of each latent network, its input channels' exponents
    (:func:`vaecodec.narrow.exponents_for_peaks` of the peaks, ``headroom`` bits above them). The
    hyper-synthesis reads integers ẑ (|ẑ| ≤ 255 < 511): its input step is 1, exact."""
    modules = {}
    for name, seq in latent_networks(net).items():
        convs = [m for m in seq if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        modules.update({f"n10.{name}.{i}": conv for i, conv in enumerate(convs)})
    peaks = _input_peaks(net, modules, images, lambdas)
    # One step per layer input (every channel the same exponent): measured against a step per channel
    # (folded into the weights before they are rounded), the rate grew +0.04–0.19 % instead of +0.20–0.35 %
    # (benchmarks/results/latent-precision-tensor.json, -folded.json): a weight row keeps all its bits.
    tables = {key: exponents_for_peaks(p.max().expand(len(p)), headroom).numpy() for key, p in peaks.items()}
    tables["n10.hyper_synthesis.0"] = np.zeros_like(tables["n10.hyper_synthesis.0"])
    if set(tables) != set(modules):
        raise ValueError("calibration did not reach every latent network (a model without a context pass?)")
    return tables


@torch.no_grad()
def synthesis_exponents(net: HyperpriorModel, images: list[Path], lambdas: tuple[float, ...] = CALIBRATION_LAMBDAS,
                        headroom: float = 1.0, act_bits: int = SYNTHESIS_BITS) -> dict[str, np.ndarray]:
    """The ``n{act_bits}.synthesis.*`` tables for ``net`` (activations of 11 or 12 bits) from its forward
    passes on ``images`` at ``lambdas``: per layer of the synthesis (transposed convolutions and inverse GDNs),
    its input channels' exponents, each channel its own (:func:`vaecodec.narrow.exponents_for_peaks` at
    ``act_bits``, ``headroom`` bits above the peak)."""
    if act_bits not in (SYNTHESIS_BITS, SYNTHESIS_BITS + 1):
        raise ValueError(f"the synthesis takes 11- or 12-bit activations, not {act_bits}")
    layers = [m for m in net.synthesis if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, SimplifiedGDN))]
    peaks = _input_peaks(net, {f"n{act_bits}.synthesis.{i}": layer for i, layer in enumerate(layers)}, images, lambdas)
    if len(peaks) != len(layers):
        raise ValueError("calibration did not reach every layer of the synthesis")
    return {key: exponents_for_peaks(p, headroom, act_bits).numpy() for key, p in peaks.items()}
