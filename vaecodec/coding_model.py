"""A trained model frozen for coding: float encoder, integer-exact decoder, integer tables.

Ready to code at construction: there is no ``update()`` step. Every number
the entropy coder sees is either a shipped integer table or the output of an
integer-exact program (:mod:`vaecodec.fixedpoint`), so encoder and decoder
agree bit for bit on any machine:

* ``z_pmfs``: one integer pmf per hyper-latent channel (from the learned
  factorized density, evaluated once at export);
* ``y_pmfs``: one integer pmf of a zero-mean Gaussian per scale index j, with
  std 2^((j + SCALE_MIN_INDEX)/6);
* per quality 1..100: ``log2_gain`` (fixed point, shifts the scale index) and
  ``inverse_gain`` (fixed point, dequantizes). Quality q sits at position
  (q − 1)/99 along the trained λ anchors, log-linearly, so quality 1 is the
  smallest anchor λ and 100 the largest.

Data flow (sides: E encoder only, E+D both, bit-exact)::

    x ─analyze (E, float32)─▶ y, ẑ
    ẑ ─hyper_decode (E+D, exact)─▶ mean μ, log2 σ ─scale_indexes(quality)─▶ j
    y ─quantize (E)─▶ q = round((y − μ)·g)            coded with y_pmfs[j]
    q ─reconstruct (E+D, exact)─▶ pixels

This module knows nothing of files or bytes; :mod:`vaecodec.api` wires it to
the entropy coder and the container.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .entropy import IndexedPmfs, quantize_pmf
from .errors import ModelFileError
from .fixedpoint import ACT_FRAC_BITS, ACT_LIMIT, FixedPointProgram, round_shift, to_fixed
from .hardware import native_bfloat16
from .int8_synthesis import Int8SynthesisProgram
from .narrow import SYNTHESIS_BITS, WEIGHT_BITS, NarrowProgram
from .model import (DOWNSAMPLING, SCALE_MIN_INDEX, SCALE_STEPS_PER_OCTAVE, HyperpriorModel, ModelConfig,
                    SimplifiedGDN, build_model, checkerboard_anchor_mask, interpolate_rows, runs_in_bfloat16)

__all__ = ["CodingModel", "HyperParams", "NUM_QUALITIES", "DOWNSAMPLING"]

MODEL_FORMAT = "vaecodec-model"
MODEL_FORMAT_VERSION = 1
DERIVED_FORMAT_VERSION = 2  # a model file that shares another's weights (CodingModel.save(base=...))
NUM_QUALITIES = 100
NUM_SCALES = 64  # the scale table of 0.1's models; a model's own count is ``config.num_scales``
Y_RADIUS = 1023
Z_RADIUS = 63
GAIN_FRAC_BITS = 16
ANALYSIS_TILE = 1024  # pixels; with a 64-pixel halo (the analysis sees ±30 pixels)
HYPER_TILE = 16  # hyper-latents; with a 3-latent halo
HYPER_ANALYSIS_TILE = 256  # latents (4096 pixels); with a 16-latent halo
SYNTHESIS_TILE = 32  # latents; with a 3-latent halo (the synthesis sees ±2 latents). Measured (1 Mpx, 1 thread):
# 64 → 1236 MB peak RSS (the transposed convolutions' column buffers grow with the tile), 32 → 627 MB and 10 % faster
SYNTHESIS_HALO = 3  # latents around a synthesis tile or band (it sees ±2)
DOWNSAMPLING_LATENT = 16  # pixels per latent along each side
_HYPER_HALO = 3  # hyper-latents around a region of the hyper-synthesis
_PARAMS_CHUNK = 2048  # latent positions per pass of the context and entropy parameters (bounds their memory)
_SYMBOL_LIMIT = 2.0**24  # |q| beyond this only reaches the synthesis clamped (it is still coded exactly)
_Z_CLAMP = 255  # likewise for ẑ entering the hyper-synthesis


def _decoder_constants() -> str:
    """Every constant that shapes decoded numbers; part of the weight hash, so a change is never silent."""
    from . import fixedpoint

    return (f"act{fixedpoint.ACT_FRAC_BITS}/{fixedpoint.ACT_LIMIT} w{fixedpoint.WEIGHT_BITS} g{GAIN_FRAC_BITS} "
            f"r{Y_RADIUS}/{Z_RADIUS} s{NUM_SCALES}/{SCALE_MIN_INDEX}/{SCALE_STEPS_PER_OCTAVE} "
            f"clamp{_SYMBOL_LIMIT}/{_Z_CLAMP} q{NUM_QUALITIES}")


def run_tiled(fn, x: torch.Tensor, tile: int, halo: int, scale: float, tile_rows: int | None = None) -> torch.Tensor:
    """Apply a translation-equivariant ``fn`` to ``x`` (N, C, H, W) tile by tile, to bound memory.

    Each tile is extended by ``halo`` input samples on every side where the
    image continues (not beyond its border), and the output is cropped back;
    ``scale`` is output size per input size. With a halo that covers ``fn``'s
    receptive field the result equals ``fn(x)``: exactly for the integer
    programs, up to float summation order for the float analysis. ``tile_rows``:
    a tile height other than ``tile``.
    """
    h, w = x.shape[2:]
    tile_h = tile if tile_rows is None else tile_rows
    if h <= tile_h and w <= tile:
        return fn(x[:, :, 0:h, 0:w])  # a view of a tensor; a slice is all an input such as PaddedPixels offers
    rows = []
    for y0 in range(0, h, tile_h):
        cols = []
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile_h, h), min(x0 + tile, w)
            ya, xa = max(0, y0 - halo), max(0, x0 - halo)
            out = fn(x[:, :, ya:min(h, y1 + halo), xa:min(w, x1 + halo)])
            oy, ox = round((y0 - ya) * scale), round((x0 - xa) * scale)
            cols.append(out[:, :, oy:oy + round((y1 - y0) * scale), ox:ox + round((x1 - x0) * scale)])
        rows.append(torch.cat(cols, dim=3))
    return torch.cat(rows, dim=2)


def _corrected(mean: torch.Tensor, log2_scale: torch.Tensor, features_at, correction: FixedPointProgram) -> HyperParams:
    """Exact: parameters (1, c, positions) plus ``correction`` (1×1 layers) of themselves and
    ``features_at(chunk)`` (the context's features at those positions), chunk by chunk (bounds memory)."""
    c, count = mean.shape[1], mean.shape[2]
    out = mean.new_empty(mean.shape[0], 2 * c, count)
    for i in range(0, count, _PARAMS_CHUNK):
        chunk = slice(i, min(count, i + _PARAMS_CHUNK))
        own = torch.cat([mean[:, :, chunk], log2_scale[:, :, chunk]], 1)
        own += correction.run(torch.cat([own, features_at(chunk)], 1)[..., None])[..., 0]
        out[:, :, chunk] = own
    return HyperParams(out[:, :c], out[:, c:])


def _to_pixels_(x: torch.Tensor) -> torch.Tensor:
    """Exact, in place: fixed-point x̂ → round(255·x̂) clamped to 0..255 (still float64).

    ``x·(255·2^-ACT_FRAC_BITS)`` is exact (x is an integer below 2^21, so x·255 has
    under 53 bits and the power of two only moves it): the same integers as
    ``round_shift(x·255, ACT_FRAC_BITS)``, without its four fresh tensors as large
    as the image (``benchmarks/coding_paths.py`` times both on a Kodak image).
    """
    return x.mul_(255.0 * 2.0**-ACT_FRAC_BITS).add_(0.5).floor_().clamp_(0, 255)


@dataclass
class HyperParams:
    """Decoded side information for the latents, fixed point (float64 integers, 2^-12 units)."""

    mean: torch.Tensor  # (1, M, h, w)
    log2_scale: torch.Tensor  # (1, M, h, w)

    def channels(self, which: slice) -> "HyperParams":
        """The parameters of some latent channels (views)."""
        return HyperParams(self.mean[:, which], self.log2_scale[:, which])


def _per_channel(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """A per-channel vector (M,) shaped to broadcast over (1, M, ...) tensors of ``ndim`` dimensions."""
    return v.view(1, -1, *([1] * (ndim - 2)))


def _gaussian_pmfs(radius: int, num_scales: int = NUM_SCALES) -> np.ndarray:
    """Unit-bin masses of N(0, std_j²) on -radius..radius, tails lumped into the edges."""
    stds = 2.0 ** ((torch.arange(num_scales, dtype=torch.float64) + SCALE_MIN_INDEX) / SCALE_STEPS_PER_OCTAVE)
    edges = torch.arange(-radius, radius, dtype=torch.float64) + 0.5
    cdf = torch.special.ndtr(edges[None, :] / stds[:, None])
    cdf = torch.cat([torch.zeros(num_scales, 1, dtype=torch.float64), cdf, torch.ones(num_scales, 1, dtype=torch.float64)], 1)
    return quantize_pmf(torch.diff(cdf, dim=1).numpy())


@torch.no_grad()
def _factorized_pmfs(net: HyperpriorModel, radius: int) -> np.ndarray:
    density = net.hyper_prior.double()
    channels = net.config.hyper_channels
    edges = torch.arange(-radius, radius, dtype=torch.float64) + 0.5
    cdf = torch.sigmoid(density.cdf_logits(edges.expand(channels, 1, -1)))[:, 0]
    cdf = torch.cat([torch.zeros(channels, 1, dtype=torch.float64), cdf, torch.ones(channels, 1, dtype=torch.float64)], 1)
    net.hyper_prior.float()
    return quantize_pmf(torch.diff(cdf, dim=1).clamp_min(0).numpy())


_POSITION_ONE = 1 << 16  # quality positions are stored in units of 1/65536 anchor


def even_quality_positions(num_anchors: int, span: tuple[float, float] | None = None) -> np.ndarray:
    """Anchor positions of qualities 1..100 evenly spaced over ``span`` (default: the first to the last anchor)."""
    lo, hi = span if span is not None else (0.0, num_anchors - 1.0)
    return lo + np.arange(NUM_QUALITIES, dtype=np.float64) / (NUM_QUALITIES - 1) * (hi - lo)


@torch.no_grad()
def _quality_tables(net: HyperpriorModel, positions: np.ndarray) -> dict[str, np.ndarray]:
    """Gains for qualities 1..100 at the given anchor ``positions`` (non-decreasing).

    Position p is anchor p (0 = smallest λ, K−1 = largest); between anchors
    the log-gains interpolate linearly, beyond them they extrapolate along the
    end segments (coarser or finer quantization than any trained λ).
    """
    positions = np.asarray(positions, dtype=np.float64)
    if positions.shape != (NUM_QUALITIES,) or not np.all(np.isfinite(positions)) or np.any(np.diff(positions) < 0):
        raise ValueError(f"quality positions must be {NUM_QUALITIES} finite, non-decreasing anchor positions")
    pos = torch.round(torch.from_numpy(positions) * _POSITION_ONE) / _POSITION_ONE
    log_g = interpolate_rows(net.log_gains.detach().double(), pos)
    return {
        "quality_positions": torch.round(pos * _POSITION_ONE).long().numpy(),
        "log2_gain": torch.round(log_g / math.log(2) * 2.0**ACT_FRAC_BITS).long().numpy(),
        "inverse_gain": torch.round(torch.exp(-log_g) * 2.0**GAIN_FRAC_BITS).clamp_min(1).long().numpy(),
    }


class CodingModel:
    """Weights (fp16) + integer tables → the coding operations of one model.

    Build it with :meth:`from_training_model` (computes the tables; done once,
    at export) or :meth:`load` (a shipped file). ``weight_hash`` identifies the
    exact weights and tables; files record it and refuse other weights.
    """

    def __init__(self, config: ModelConfig, weights: dict[str, torch.Tensor], tables: dict[str, np.ndarray], model_id: str):
        self.config = config
        self.model_id = model_id
        self.weights = {k: v.detach().to(torch.float16).contiguous() for k, v in weights.items()}
        self.tables = {k: np.ascontiguousarray(v) for k, v in tables.items()}
        net = build_model(config)
        net.load_state_dict({k: v.float() for k, v in self.weights.items()})
        net.eval().requires_grad_(False)
        # Channels-last: oneDNN's convolutions run the float analysis ~1.5× faster so. Where the CPU has
        # native bfloat16 (AMX, AVX512-BF16) the analysis runs in mixed precision as training does
        # (runs_in_bfloat16): its inner convolutions in bfloat16, its first and last convolutions and GDNs in float32.
        # All of it in bfloat16 cost the shipped model 0.22 dB at quality 100 and +1.5 % BD-rate
        # (benchmarks/results/analysis-precision-r6w-all-bfloat16.json). Encoder only: files decode the same
        # whichever precision made them.
        self.analysis = net.analysis.to(memory_format=torch.channels_last)
        self._analysis_bf16 = copy.deepcopy(self.analysis)
        for layer in self._analysis_bf16:
            if runs_in_bfloat16(layer):
                layer.to(torch.bfloat16)
        self.hyper_analysis = net.hyper_analysis
        latent_program = self._latent_program_builder(net)
        self.hyper_synthesis = latent_program("hyper_synthesis", net.hyper_synthesis)
        if config.synthesis_bits == 8:  # the integer tables computed at export; no float math decides them here
            self.synthesis = Int8SynthesisProgram.from_tables(self.tables, config.latent_channels)
        elif config.synthesis_bits in (11, 12):  # 11-bit weights; activations of synthesis_bits
            self.synthesis = self._narrow_program(f"n{config.synthesis_bits}.synthesis", net.synthesis, SYNTHESIS_BITS,
                                                  config.synthesis_bits)
        else:
            self.synthesis = FixedPointProgram.from_sequential(net.synthesis)
        self.has_context = config.kind == "checkerboard"
        if self.has_context:
            # context_params relies on both: one context convolution, and entropy parameters position by position.
            convs = [m for m in net.entropy_parameters if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
            if len(net.context) != 1 or any(m.kernel_size != (1, 1) for m in convs):
                raise ValueError("a checkerboard model needs one context convolution and 1×1 entropy parameters")
            self.context = latent_program("context", net.context)
            self.entropy_parameters = latent_program("entropy_parameters", net.entropy_parameters)
        self.slice_bounds = config.slice_bounds
        if config.channel_slices:
            self.channel_context = [latent_program(f"channel_context.{s}", nn.Sequential(conv))
                                    for s, conv in enumerate(net.channel_context)]
            self.channel_parameters = [latent_program(f"channel_parameters.{s}", seq)
                                       for s, seq in enumerate(net.channel_parameters)]
        self.y_pmfs = IndexedPmfs(self.tables["y_pmfs"], Y_RADIUS)
        if self.y_pmfs.num_tables != config.num_scales:
            raise ValueError("scale table does not match the model")
        self.z_pmfs = IndexedPmfs(self.tables["z_pmfs"], Z_RADIUS)
        self._log2_gain = torch.from_numpy(self.tables["log2_gain"]).double()
        self._inverse_gain = torch.from_numpy(self.tables["inverse_gain"]).double()
        if self._log2_gain.shape != (NUM_QUALITIES, config.latent_channels):
            raise ValueError("quality tables do not match the model")
        self.weight_hash = self._hash()
        self.synthesis_tile = SYNTHESIS_TILE
        self._float_network: HyperpriorModel | None = None  # float_network(), built on first use

    def _narrow_program(self, prefix: str, seq: nn.Sequential, bits: int, act_bits: int | None = None) -> NarrowProgram:
        """The narrow program of ``seq`` (``bits``-bit weights, ``act_bits``-bit activations) from the model file's
        exponent tables ``{prefix}.{i}`` (the input of its i-th convolution or inverse GDN)."""
        count = sum(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, SimplifiedGDN)) for m in seq)
        exponents = []
        for i in range(count):
            table = self.tables.get(f"{prefix}.{i}")
            if table is None or table.dtype.kind not in "iu" or table.ndim != 1:
                raise ValueError(f"narrow program table {prefix}.{i} missing or of the wrong type (a model with "
                                 "narrow programs is made from an exported one by bin/narrow-latents)")
            exponents.append(torch.from_numpy(table.astype(np.int64)))
        return NarrowProgram.from_sequential(seq, exponents, bits, act_bits)

    def _latent_program_builder(self, net: HyperpriorModel):
        """``build(name, sequential)``: the exact program of one network that feeds the entropy coder: the
        fixed-point one (float64), or with ``latent_bits`` 10 the 10-bit one from the model file's exponent
        tables ``n10.{name}.{i}`` (its i-th convolution's input; :mod:`vaecodec.narrow`)."""
        if self.config.latent_bits != 10:
            return lambda name, seq: FixedPointProgram.from_sequential(seq)
        return lambda name, seq: self._narrow_program(f"n10.{name}", seq, WEIGHT_BITS)

    def with_narrow_programs(self, exponents: dict[str, np.ndarray], model_id: str) -> "CodingModel":
        """This model with narrow programs: the same weights and quality tables, plus the exponent ``tables``
        (``n10.*``: the 10-bit latent programs, ``latent_bits`` 10, from
        :func:`vaecodec.training.narrow_calibration.latent_exponents`; ``n11.synthesis.*`` or
        ``n12.synthesis.*``: the synthesis with 11-bit weights and 11- or 12-bit activations, ``synthesis_bits``
        11 or 12, from :func:`~vaecodec.training.narrow_calibration.synthesis_exponents`).
        Files of either decode only with their own (the weight hash differs)."""
        given = {k.split(".")[0] for k in exponents}
        synthesis = given & {"n11", "n12"}
        if not given or given - {"n10", "n11", "n12"} or len(synthesis) > 1 \
                or any(k.split(".")[0] in synthesis and not k.startswith(k.split(".")[0] + ".synthesis.") for k in exponents):
            raise ValueError("narrow program tables are n10.* (latents) and n11.synthesis.* or n12.synthesis.* "
                             "(synthesis)")
        if synthesis and self.config.synthesis_bits == 8:
            raise ValueError("an 8-bit synthesis model has no float synthesis to narrow")
        changes = {**({"latent_bits": 10} if "n10" in given else {}),
                   **({"synthesis_bits": int(next(iter(synthesis))[1:])} if synthesis else {})}
        config = ModelConfig.from_dict({**self.config.to_dict(), **changes})
        dropped = given | ({"n11", "n12"} if synthesis else set())
        tables = {k: v for k, v in self.tables.items() if k.split(".")[0] not in dropped}
        return CodingModel(config, self.weights, {**tables, **exponents}, model_id)

    def float_network(self) -> HyperpriorModel:
        """The float32 training module with these (fp16) weights, in eval mode and without gradients: what
        encoder-side refinement and the model-file estimates run (never the decoder, which is the exact
        programs above). Built on first use and kept; callers must not change it."""
        if self._float_network is None:
            net = build_model(self.config)
            net.load_state_dict({k: v.float() for k, v in self.weights.items()})
            self._float_network = net.eval().requires_grad_(False)
        return self._float_network

    def __reduce__(self):
        # Pickled as what a model file holds (weights and tables); the programs are rebuilt on arrival,
        # so a model can be sent to worker processes (concurrent.futures, Dask, Ray, Spark).
        return CodingModel, (self.config, self.weights, self.tables, self.model_id)

    # ----- construction and files -------------------------------------------------
    @classmethod
    def from_training_model(cls, net: HyperpriorModel, model_id: str,
                            quality_span: tuple[float, float] | None = None,
                            quality_positions: np.ndarray | None = None) -> "CodingModel":
        """Freeze a trained model: round weights to fp16, then compute the tables from them.

        ``quality_span``: anchor positions of quality 1 and 100, the qualities
        evenly between (default: the first and last anchor); or
        ``quality_positions``: each quality's own anchor position (100,
        non-decreasing), e.g. a scale calibrated against JPEG's
        (:mod:`vaecodec.training.quality_scale`).
        """
        if quality_positions is not None and quality_span is not None:
            raise ValueError("give quality_span or quality_positions, not both")
        positions = (even_quality_positions(len(net.config.lambdas), quality_span) if quality_positions is None
                     else quality_positions)
        weights = {k: v.detach().to(torch.float16) for k, v in net.state_dict().items()}
        frozen = build_model(net.config)
        frozen.load_state_dict({k: v.float() for k, v in weights.items()})
        tables = {"y_pmfs": _gaussian_pmfs(Y_RADIUS, net.config.num_scales), "z_pmfs": _factorized_pmfs(frozen, Z_RADIUS),
                  **_quality_tables(frozen, positions)}
        if net.config.synthesis_bits == 8:
            tables.update(Int8SynthesisProgram.from_module(frozen.synthesis).tables())
        return cls(net.config, weights, tables, model_id)

    def quality_position(self, quality: int) -> float:
        """Where a quality level sits along the λ anchors (0 = the first anchor, K−1 = the last)."""
        return float(self.tables["quality_positions"][quality - 1]) / _POSITION_ONE

    def quality_lambda(self, quality: int) -> float:
        """The λ a quality level stands for (log-linear in anchor position, extrapolated beyond the ends)."""
        pos = self.quality_position(quality)
        lam = np.log(np.asarray(self.config.lambdas))
        i = int(min(max(math.floor(pos), 0), len(lam) - 2))
        return float(math.exp(lam[i] + (pos - i) * (lam[i + 1] - lam[i])))

    def save(self, path: str | Path, base: str | Path | None = None) -> None:
        """Write a model file. ``base``: a model file in the same folder whose weights this model shares (a
        model that differs in its tables only, e.g. :meth:`with_narrow_programs`): the file then holds
        its config and the tables that differ, and names the base by file name and weight hash (format
        version 2; tens of kB instead of the weights again)."""
        blob = {"format": MODEL_FORMAT, "version": MODEL_FORMAT_VERSION, "model_id": self.model_id,
                "config": self.config.to_dict()}
        if base is None:
            blob.update(weights=self.weights, tables={k: torch.from_numpy(v) for k, v in self.tables.items()})
        else:
            base = Path(base)
            if base.resolve() == Path(path).resolve():
                raise ValueError("a derived model file cannot be its own base")
            if base.parent.resolve() != Path(path).parent.resolve() or base.suffix != ".pt":
                raise ValueError("a derived model file's base must be a .pt model file in the same folder")
            config, weights, tables, model_id = CodingModel._read(base, derived_allowed=False)  # a base holds its weights
            if set(weights) != set(self.weights) or any(not torch.equal(weights[k].to(torch.float16), v)
                                                        for k, v in self.weights.items()):
                raise ValueError(f"{base}: its weights are not this model's")
            if set(tables) - set(self.tables):
                raise ValueError(f"{base}: it has tables this model lacks (a derived file only adds or replaces)")
            own = {k: v for k, v in self.tables.items() if k not in tables or not np.array_equal(tables[k], v)}
            blob.update(version=DERIVED_FORMAT_VERSION, tables={k: torch.from_numpy(v) for k, v in own.items()},
                        base={"file": base.name, "model_id": model_id,
                              "weight_hash": self.hash_of(config, weights, tables).hex()},
                        weight_hash=self.weight_hash.hex())
        torch.save(blob, path)

    @classmethod
    def load(cls, path: str | Path) -> "CodingModel":
        """Load a model file; any defect is a :class:`ModelFileError` with a one-line message. A derived
        file (version 2) loads its base from its own folder and checks the base's weight hash."""
        return cls._load(Path(path), derived_allowed=True)

    @classmethod
    def _load(cls, path: Path, derived_allowed: bool) -> "CodingModel":
        config, weights, tables, model_id = cls._read(path, derived_allowed)
        try:
            return cls(config, weights, tables, model_id)
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            raise ModelFileError(f"{path}: damaged model file ({type(e).__name__}: {str(e).splitlines()[0][:80]})") from None

    @classmethod
    def _read(cls, path: Path, derived_allowed: bool) -> tuple:
        """(config, weights, tables, model_id) of a model file, a derived one's merged over its base and its
        weight hash checked; the programs are not built (a base is read only for its weights and tables)."""
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise ModelFileError(f"{path}: no such model file") from None
        except Exception as e:  # noqa: BLE001 - torch raises many kinds for a foreign file
            raise ModelFileError(f"{path} is not a vaecodec model file ({type(e).__name__})") from None
        if not isinstance(blob, dict) or blob.get("format") != MODEL_FORMAT:
            raise ModelFileError(f"{path} is not a vaecodec model file")
        if blob.get("version") not in (MODEL_FORMAT_VERSION, DERIVED_FORMAT_VERSION):
            raise ModelFileError(f"{path}: unsupported model file version {blob.get('version')}")
        try:
            config = ModelConfig.from_dict(blob["config"])
            tables = {k: v.numpy() for k, v in blob["tables"].items()}
            weights = blob.get("weights")
            if blob["version"] == DERIVED_FORMAT_VERSION:
                if not derived_allowed:
                    raise ModelFileError(f"{path}: a derived model file's base must hold its weights")
                base = blob["base"]
                if not isinstance(base, dict):
                    raise TypeError("base is not a record")
                name = str(base["file"])
                if Path(name).name != name or not name.endswith(".pt") or name == path.name:
                    raise ModelFileError(f"{path}: its base {name!r} is not a model file beside it")
                base_config, weights, base_tables, base_id = cls._read(path.parent / name, derived_allowed=False)
                base_hash = cls.hash_of(base_config, weights, base_tables).hex()
                if base_id != base["model_id"] or base_hash != base["weight_hash"]:
                    raise ModelFileError(f"{path}: its base {name!r} is model {base_id!r} ({base_hash}), not "
                                         f"{str(base['model_id'])!r} ({str(base['weight_hash'])[:16]!r})")
                tables = {**base_tables, **tables}
                if cls.hash_of(config, weights, tables).hex() != blob["weight_hash"]:
                    raise ModelFileError(f"{path}: damaged model file (its tables over its base's do not give "
                                         "its weight hash)")
            if not isinstance(weights, dict):
                raise TypeError("no weights")
            return config, weights, tables, str(blob["model_id"])
        except ModelFileError:
            raise
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            raise ModelFileError(f"{path}: damaged model file ({type(e).__name__}: {str(e).splitlines()[0][:80]})") from None

    def _hash(self) -> bytes:
        return self.hash_of(self.config, self.weights, self.tables)

    @staticmethod
    def hash_of(config: ModelConfig, weights: dict[str, torch.Tensor], tables: dict[str, np.ndarray]) -> bytes:
        """The weight hash of a model (fp16 ``weights``, integer ``tables``) without building its programs."""
        h = hashlib.sha256()
        h.update(_decoder_constants().encode())
        if config.synthesis_bits == 8:  # the 8-bit program's own constants (absent from older models' hashes)
            from . import int8_synthesis as s8

            h.update(f"s8 top{s8.ACT_TOP} in{s8.INPUT_TOP} out{s8.OUTPUT_LIMIT} mult{s8.MULTIPLIER_BITS} norm{s8.NORM_BIAS_BITS}".encode())
        if config.latent_bits == 10:  # the 10-bit programs' own constants
            from . import narrow

            h.update(f"n10 v1 top{narrow.ACT_TOP} w{narrow.WEIGHT_BITS} exp{narrow.EXPONENT_LIMIT}".encode())
        if config.synthesis_bits == 11:  # the 11-bit synthesis' own constants
            from . import narrow

            h.update(f"n11 v1 bits{narrow.SYNTHESIS_BITS} exp{narrow.EXPONENT_LIMIT} pow{narrow._POWER_LIMIT}".encode())
        if config.synthesis_bits == 12:  # 11-bit weights, 12-bit activations
            from . import narrow

            h.update(f"n12 v1 w{narrow.SYNTHESIS_BITS} a12 exp{narrow.EXPONENT_LIMIT} pow{narrow._POWER_LIMIT}".encode())
        h.update(json.dumps(config.to_dict(), sort_keys=True).encode())
        for name in sorted(weights):
            t = weights[name].detach().to(torch.float16)
            h.update(f"{name}:{tuple(t.shape)}".encode())
            h.update(t.numpy().astype("<f2").tobytes())
        for name in sorted(tables):
            a = np.ascontiguousarray(tables[name])
            h.update(f"{name}:{a.shape}".encode())
            h.update(a.astype("<i8").tobytes())
        return h.digest()[:8]

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.weights.values())

    # ----- the coding operations --------------------------------------------------
    @torch.no_grad()
    def analyze(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (1, 3, H, W), H and W multiples of 64 → (y, ẑ as int64).

        ``x`` is float32 in [0, 1], or uint8 pixels (a tensor or an
        :class:`~vaecodec.image.PaddedPixels`), converted to [0, 1] one analysis
        tile at a time, so a large image is never held as floats.
        """
        net = self._analysis_bf16 if self.analysis_in_bfloat16() else self.analysis

        def fn(t: torch.Tensor) -> torch.Tensor:
            t = (t if t.is_floating_point() else t.float().div_(255.0)).contiguous(memory_format=torch.channels_last)
            for i, layer in enumerate(net):  # a GDN after a layer overwrites that layer's fresh output
                t = t.to(next(layer.parameters()).dtype)  # each layer in its own precision (a no-op in float32)
                t = layer.forward_(t) if isinstance(layer, SimplifiedGDN) and i > 0 else layer(t)
            return t.float().contiguous()

        y = run_tiled(fn, x, ANALYSIS_TILE, 64, 1 / 16)
        # The hyper-analysis sees ±7 latents (3×3, then two 5×5 stride 2); tiled so that its wide
        # activations are never whole-image (encoder only: float, no exactness at stake).
        return y, torch.round(run_tiled(self.hyper_analysis, y, HYPER_ANALYSIS_TILE, 16, 1 / 4)).long()

    @staticmethod
    def analysis_in_bfloat16() -> bool:
        """Whether :meth:`analyze` runs the analysis in bfloat16 here: where the CPU does natively, unless
        ``VAECODEC_ANALYSIS=float32`` is in the environment."""
        return os.environ.get("VAECODEC_ANALYSIS") != "float32" and native_bfloat16("cpu")

    def hyper_decode(self, z_symbols: torch.Tensor) -> HyperParams:
        """Exact: hyper-latent integers → mean and log2 scale of every latent (the hyperprior's own)."""
        zh, zw = z_symbols.shape[2:]
        return self.hyper_decode_region(z_symbols, slice(0, 4 * zh), slice(0, 4 * zw))

    def hyper_decode_region(self, z_symbols: torch.Tensor, rows: slice, cols: slice) -> HyperParams:
        """Exact: :meth:`hyper_decode` of the whole ẑ, cropped to latent ``rows`` × ``cols``, computed from
        the hyper-latents around them only (bounds multiples of 4, the hyper-synthesis' upsampling)."""
        zh, zw = z_symbols.shape[2:]
        r0, r1, c0, c1 = rows.start // 4, -(-rows.stop // 4), cols.start // 4, -(-cols.stop // 4)
        a, b, c, d = max(0, r0 - _HYPER_HALO), min(zh, r1 + _HYPER_HALO), max(0, c0 - _HYPER_HALO), min(zw, c1 + _HYPER_HALO)
        out = run_tiled(self.hyper_synthesis.run, to_fixed(z_symbols[:, :, a:b, c:d].double().clamp(-_Z_CLAMP, _Z_CLAMP)),
                        HYPER_TILE, _HYPER_HALO, 4)  # tiled too: a version-2 file's region is the whole image
        out = out[:, :, rows.start - 4 * a:rows.stop - 4 * a, cols.start - 4 * c:cols.stop - 4 * c]
        mean, log2_scale = out.chunk(2, dim=1)
        return HyperParams(mean, log2_scale)

    def context_params(self, hyper: HyperParams, anchors_y_hat: torch.Tensor | None, where: torch.Tensor) -> HyperParams:
        """Exact, checkerboard models: the hyper's parameters corrected by the context, at the positions
        ``where`` (1, 1, h, w) of the pass being coded; elsewhere the hyper's own (unused). The whole-grid
        form of :meth:`context_params_at`."""
        positions = where.reshape(-1).nonzero().squeeze(1)
        at = self.context_params_at(hyper, anchors_y_hat, positions)
        n, c, h, w = hyper.mean.shape
        mean, log2_scale = hyper.mean.clone(), hyper.log2_scale.clone()
        mean.view(n, c, h * w)[:, :, positions] = at.mean
        log2_scale.view(n, c, h * w)[:, :, positions] = at.log2_scale
        return HyperParams(mean, log2_scale)

    def context_params_at(self, hyper: HyperParams, anchors_y_hat: torch.Tensor | None,
                          positions: torch.Tensor) -> HyperParams:
        """Exact, checkerboard models: the hyper's parameters corrected by the context at ``positions``
        (flat indices y·w + x of one pass), as (1, M, len(positions)) tensors.

        ``anchors_y_hat``: fixed-point ŷ, zero except at the anchors (None for
        the anchors' own pass, whose context is zero). The entropy parameters
        are 1×1 convolutions and the context is read only at ``positions``, so
        only those are computed: half the work of the whole grid.
        """
        n, c, h, w = hyper.mean.shape
        mean, log2_scale = hyper.mean.reshape(n, c, h * w), hyper.log2_scale.reshape(n, c, h * w)

        def context_at(chunk: slice) -> torch.Tensor:
            if anchors_y_hat is None:
                return mean.new_zeros(n, self.context.out_channels, chunk.stop - chunk.start)
            return self.context.at_checkerboard(anchors_y_hat, positions[chunk])

        return _corrected(mean[:, :, positions], log2_scale[:, :, positions], context_at, self.entropy_parameters)

    def channel_params_at(self, s: int, params: HyperParams, y_hat: torch.Tensor, positions: torch.Tensor) -> HyperParams:
        """Exact, models with channel slices: slice ``s``'s parameters ``params`` (1, c, len(positions)), as
        :meth:`context_params_at` gives them, corrected by the slices before it at ``positions``.

        ``y_hat``: fixed-point ŷ of the channels before slice ``s`` (1, start, h, w); read only at the
        positions of this pass's colour, so the other pass's values may be there or not. Slice 0 has no
        correction.
        """
        if s == 0:
            return params
        context = self.channel_context[s - 1]
        return _corrected(params.mean, params.log2_scale,
                          lambda chunk: context.at_checkerboard(y_hat, positions[chunk], same_colour=True),
                          self.channel_parameters[s - 1])

    def scale_indexes(self, params: HyperParams, quality: int, channels: slice = slice(None)) -> torch.Tensor:
        """Exact: index j of the pmf table for each latent, 0..num_scales−1 (int64). Parameters are
        (1, M, h, w) grids or (1, M, positions), or of the latent ``channels`` only."""
        t = params.log2_scale + _per_channel(self._log2_gain[quality - 1, channels], params.log2_scale.dim())
        j = round_shift(t * SCALE_STEPS_PER_OCTAVE, ACT_FRAC_BITS) - SCALE_MIN_INDEX
        return j.clamp_(0, self.config.num_scales - 1).long()

    @torch.no_grad()
    def quantize(self, y: torch.Tensor, params: HyperParams, quality: int, channels: slice = slice(None)) -> torch.Tensor:
        """Encoder: q = round((y − μ)·g), int64; g = 2^16 / inverse_gain so decoding inverts it. ``y`` and
        ``params`` of the latent ``channels``."""
        gain = 2.0**GAIN_FRAC_BITS / _per_channel(self._inverse_gain[quality - 1, channels], y.dim())
        r = (y.double() - params.mean * 2.0**-ACT_FRAC_BITS) * gain
        return torch.round(r).long()

    def dequantize(self, y_symbols: torch.Tensor, params: HyperParams, quality: int,
                   channels: slice = slice(None)) -> torch.Tensor:
        """Exact: latent integers → ŷ = q/g + μ in fixed point (float64 integers), of the latent ``channels``."""
        q = y_symbols.double().clamp(-_SYMBOL_LIMIT, _SYMBOL_LIMIT)
        y_hat = round_shift(q * _per_channel(self._inverse_gain[quality - 1, channels], q.dim()),
                            GAIN_FRAC_BITS - ACT_FRAC_BITS)
        return (y_hat + params.mean).clamp_(-ACT_LIMIT, ACT_LIMIT)

    def synthesize(self, y_hat: torch.Tensor) -> np.ndarray:
        """Exact: fixed-point ŷ → uint8 RGB pixels (H, W, 3) of the padded image."""
        none = y_hat[:, :, :0]
        return self.synthesize_rows(none, y_hat, none)

    def synthesize_rows(self, above: torch.Tensor, rows: torch.Tensor, below: torch.Tensor) -> np.ndarray:
        """Exact: the pixels (16·r, W, 3) of latent ``rows`` (1, M, r, w), given the fixed-point ŷ rows
        ``above`` and ``below`` them (up to SYNTHESIS_HALO each; none at the image's edges). float32 or
        float64 (the integers are exact in both); computed in float64 strip by strip.

        Equal to the same rows of :meth:`synthesize` on the whole ŷ (the synthesis
        sees ±2 latents), so a decoder can hold a few bands of ŷ instead of all of it.
        """
        above = above[:, :, max(0, above.shape[2] - SYNTHESIS_HALO):]
        y = torch.cat([above, rows, below[:, :, :SYNTHESIS_HALO]], 2)
        top, n, t, s, h = above.shape[2], rows.shape[2], self.synthesis_tile, DOWNSAMPLING_LATENT, SYNTHESIS_HALO
        w = y.shape[3]
        out = np.empty((n * s, w * s, 3), np.uint8)
        # Tile by tile, each with its own halo (as synthesize tiles it), straight into uint8: nothing
        # as wide as the image is ever held in float64. A tile covers up to 1.5·t² latents, t × 1.5t or
        # 1.5t × t, whichever fits the image: a Kodak image (32 × 48 latents either way) is one tile,
        # without the halos' recomputation (~11 % of its synthesis with square 32-latent tiles).
        tile_rows = min(n, max(t, t * t * 3 // 2 // w)) if n else t
        tile_cols = max(t, t * t * 3 // 2 // tile_rows)
        for r0 in range(0, n, tile_rows):
            r1 = min(r0 + tile_rows, n)
            a, b = max(0, top + r0 - h), min(y.shape[2], top + r1 + h)
            for c0 in range(0, w, tile_cols):
                c1 = min(c0 + tile_cols, w)
                ca, cb = max(0, c0 - h), min(w, c1 + h)
                x = self.synthesis.run(y[:, :, a:b, ca:cb].double())
                x = x[:, :, (top + r0 - a) * s:(top + r1 - a) * s, (c0 - ca) * s:(c1 - ca) * s]
                out[r0 * s:r1 * s, c0 * s:c1 * s] = (_to_pixels_(x)[0].permute(1, 2, 0).to(torch.uint8).numpy())
        return out

    def reconstruct(self, y_symbols: torch.Tensor, params: HyperParams, quality: int) -> np.ndarray:
        """Exact: latent integers → uint8 RGB pixels (H, W, 3) of the padded image."""
        return self.synthesize(self.dequantize(y_symbols, params, quality))

    @staticmethod
    def anchor_mask(y_shape: tuple[int, ...]) -> torch.Tensor:
        """Boolean (1, 1, h, w): the checkerboard's anchors (coded first)."""
        return checkerboard_anchor_mask(y_shape[2], y_shape[3]).bool()

    @staticmethod
    def hyper_latent_indexes(z_shape: tuple[int, ...]) -> np.ndarray:
        """Table index of each hyper-latent: its channel (one factorized pmf per channel)."""
        return np.broadcast_to(np.arange(z_shape[1])[None, :, None, None], tuple(z_shape))

    def latent_shapes(self, height: int, width: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Shapes of y and ẑ for an image of this size (after padding to multiples of 64)."""
        hp, wp = -(-height // DOWNSAMPLING), -(-width // DOWNSAMPLING)
        return ((1, self.config.latent_channels, hp * 4, wp * 4), (1, self.config.hyper_channels, hp, wp))
