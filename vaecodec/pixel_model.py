"""The likelihood of lossless mode: each sub-pixel given the ones decoded before it.

Why autoregressive: a photo's next sub-pixel is best predicted from its decoded
neighbours (and, in colour, from the pixel's channels decoded just before it),
which is what JPEG-LS, CALIC and JPEG XL's modular mode do with hand-made
predictors. Here a small MLP per channel, trained on photos, gives each
sub-pixel a discretized Laplace distribution: a mean ``ref + offset`` and a
scale from a fixed table. It trains in minutes on a CPU (the inputs are a
table of contexts, not images) and decodes in a wavefront (below).

Context of sub-pixel ``(row, col, k)``: the ``NUM_OFFSETS`` causal neighbours in
:data:`CONTEXT_OFFSETS`, every channel of each, then channels ``0..k-1`` of the
pixel itself; each minus its channel's ``ref = (N + W + 1) >> 1``. Positions
outside the tile read :data:`PAD_VALUE`. Colour order is R, G, B.

Decoding order (the wavefront): a pixel depends on pixels up to two columns to
its right in the row above, so every pixel with ``col + WAVEFRONT_SLOPE·row = t``
can be decoded at once, step t = 0, 1, …; within a step, channel 0 then 1
then 2. A W×H tile takes ``W + 3(H-1)`` steps.

Exactness: the MLP runs as an integer program in float64 (weights are shipped
as integers with a power-of-two scale per layer; every partial sum stays below
2^53, checked at load), its two outputs become a mean in 1/64 of a grey level
and a scale *index* into the table shipped with the weights. So encoder and
decoder compute the same (mean, scale) on any machine whatever the batch, and
constriction's Rust turns them into the same probabilities. Nothing here needs
torch: lossless files decode with numpy and constriction alone.

Mixtures (``components`` K > 1, lossless mode's default model since 0.3): the
MLP gives each sub-pixel K Laplaces and integer log-weights of a prior over
them. A mixture beats one Laplace where a neighbourhood leaves two guesses (an
edge: this side's grey or that side's), and it is coded by bits-back over the
component, so no 256-entry table is built per sub-pixel; the prior and the
posterior come out as integer weights from integer tables shipped with the
weights (:meth:`PixelModel.prior_weights`, :meth:`PixelModel.posterior_weights`).

Typical workflow::

    model = PixelModel.load(path)                     # ready to code
    mean, scale = model.params(context, ref, 3, k)    # channel k of RGB, per sub-pixel, exact
    p = model.mixture_params(context, ref, 3, k)      # a mixture's: K of each
"""

from __future__ import annotations

import hashlib
import io
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["CONTEXT_OFFSETS", "NUM_OFFSETS", "PAD", "PAD_VALUE", "WAVEFRONT_SLOPE", "MEAN_STEPS", "SCALE_STEPS",
           "LOGIT_STEPS", "MixtureParams", "PixelModel", "padded_tile", "gather_context", "context_size",
           "wavefront_steps"]

CONTEXT_OFFSETS = ((0, -1), (0, -2), (0, -3), (-1, -2), (-1, -1), (-1, 0), (-1, 1), (-1, 2),
                   (-2, -1), (-2, 0), (-2, 1), (-3, 0))
"""(row, col) offsets of the causal neighbours each sub-pixel sees."""
NUM_OFFSETS = len(CONTEXT_OFFSETS)
PAD = 3
"""Rows above and columns either side of a tile that read PAD_VALUE."""
PAD_VALUE = 128
WAVEFRONT_SLOPE = 3
"""col + 3·row: the largest column offset upwards is +2, so a step of 3 per row keeps every context decoded."""
MEAN_STEPS = 64
"""The mean is ref + m / MEAN_STEPS for an integer m."""
SCALE_STEPS = 16
"""Scale index i stands for the scale exp(i / SCALE_STEPS) grey levels (the table ships with the weights)."""
MEAN_LIMIT = 1 << 15
LOGIT_STEPS = 16
"""Mixture models: a component's log-weight is an integer l standing for l / LOGIT_STEPS nats."""
WEIGHT_BITS = 20
"""Mixture models: ``exp_table[j] = round(2^WEIGHT_BITS · exp(−j / LOGIT_STEPS))``, the shipped table that turns
integer log-weights into integer weights (no libm on the coding path)."""
LOG_WEIGHT_SPAN = 24 * LOGIT_STEPS
"""Log-weights more than 24 nats below a sub-pixel's best component are clamped there (weight ~4e-11·best)."""
ACT_FRAC_BITS = 12
ACT_LIMIT = 2.0**20
EXACT_LIMIT = 2.0**53
_ROWS = np.array([r for r, _ in CONTEXT_OFFSETS])
_COLS = np.array([c for _, c in CONTEXT_OFFSETS])


def context_size(num_channels: int, channel: int) -> int:
    """Inputs of the MLP for ``channel``: every channel of each neighbour, then the pixel's earlier channels."""
    return NUM_OFFSETS * num_channels + channel


def wavefront_steps(height: int, width: int) -> int:
    return width + WAVEFRONT_SLOPE * (height - 1)


def padded_tile(pixels: np.ndarray | None, height: int, width: int, num_channels: int) -> np.ndarray:
    """An int32 buffer (height+PAD, width+2·PAD, C) holding ``pixels`` (or nothing yet) inside PAD_VALUE."""
    buf = np.full((height + PAD, width + 2 * PAD, num_channels), PAD_VALUE, dtype=np.int32)
    if pixels is not None:
        buf[PAD:, PAD:PAD + width] = pixels.reshape(height, width, num_channels)
    return buf


def gather_context(buf: np.ndarray, rows: np.ndarray, cols: np.ndarray, channel: int) -> tuple[np.ndarray, np.ndarray]:
    """Contexts of sub-pixels ``(rows, cols, channel)`` read from a padded tile.

    Returns (context int32 (n, context_size), ref int32 (n,)). Only decoded
    positions are read: the causal neighbours and channels < ``channel`` of
    the pixel itself.
    """
    r = rows + PAD
    c = cols + PAD
    ref = (buf[r - 1, c] + buf[r, c - 1] + 1) >> 1                        # (n, C)
    around = buf[r[:, None] + _ROWS, c[:, None] + _COLS] - ref[:, None, :]  # (n, offsets, C)
    parts = [around.reshape(len(r), NUM_OFFSETS * buf.shape[2])]
    if channel:
        parts.append(buf[r, c, :channel] - ref[:, :channel])
    return np.concatenate(parts, axis=1), ref[:, channel]


_BLAS_CONTROLLER = None


@contextmanager
def one_blas_thread():
    """numpy's BLAS limited to one thread for a block: the pixel MLP's products run inside one.

    Why: they are small (one wavefront step's sub-pixels × 64 hidden units), so
    OpenBLAS's other threads gain no wall time and spin on whatever else the
    machine runs (``python benchmarks/lossless_threads.py``). The previous
    setting is given back when the block ends. Only in the main thread: BLAS
    has one thread pool per process, threadpoolctl lets one thread at a time
    set it, and a limit set from one thread cannot be given back from another;
    so coding in other threads leaves BLAS as the application set it.
    """
    global _BLAS_CONTROLLER
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _BLAS_CONTROLLER is None:  # scans the loaded libraries once (numpy's BLAS is loaded by now)
        from threadpoolctl import ThreadpoolController

        _BLAS_CONTROLLER = ThreadpoolController()
    with _BLAS_CONTROLLER.limit(limits=1, user_api="blas"):
        yield


@dataclass(frozen=True)
class _Layer:
    weight: np.ndarray  # float64 integers (in, out), units 2^-shift
    bias: np.ndarray  # float64 integers (out,), units 2^-(shift + input frac bits)
    shift: int
    input_frac_bits: int


class _ExactMLP:
    """Linear → ReLU → … → Linear on integers, exact in float64 (see module docstring)."""

    def __init__(self, layers: list[_Layer]):
        self.layers = layers
        bound = 255.0  # |input| ≤ 255: differences of grey levels
        for i, layer in enumerate(layers):
            acc = bound * float(np.abs(layer.weight).sum(axis=0).max()) + float(np.abs(layer.bias).max())
            if acc >= EXACT_LIMIT:
                raise ValueError(f"pixel model layer {i} can overflow exact float64 arithmetic")
            bound = ACT_LIMIT

    def __call__(self, a: np.ndarray) -> np.ndarray:
        for i, layer in enumerate(self.layers):
            acc = a @ layer.weight + layer.bias  # units 2^-(shift + input frac bits)
            if i + 1 < len(self.layers):
                np.maximum(acc, 0.0, out=acc)
            shift = layer.shift + layer.input_frac_bits - ACT_FRAC_BITS
            acc = np.floor(acc * 2.0**-shift + 0.5)
            a = np.clip(acc, -ACT_LIMIT, ACT_LIMIT, out=acc)
        return a  # units 2^-ACT_FRAC_BITS


@dataclass(frozen=True)
class MixtureParams:
    """A mixture model's exact parameters for n sub-pixels and its K components (arrays (n, K)).

    ``mean``: float64, ref + m/64; ``scale_index``: int64 into the scale table;
    ``log_weight``: int64, the prior's log-weights in 1/LOGIT_STEPS nats (unnormalized).
    """

    mean: np.ndarray
    scale_index: np.ndarray
    log_weight: np.ndarray


class PixelModel:
    """Exact per-sub-pixel (mean, scale) for RGB and for greyscale, ready to code at construction.

    ``nets[num_channels]`` is a list with one integer MLP per channel (1 and 3
    channels). Outputs of channel k's MLP: (mean − ref)/32 and ln(scale), in
    units 2^-ACT_FRAC_BITS. ``scales[i - scale_min]`` is the scale of index i.

    A *mixture* model (``components`` K > 1) gives each sub-pixel K discretized
    Laplaces and a prior over them: its MLPs output K means, then K ln(scale),
    then K log-weights. Lossless mode codes it by bits-back over the component
    (:mod:`vaecodec.lossless_codec`), which needs the prior and an approximate
    posterior q(component | grey level) as *integer* weights on both sides:
    :meth:`prior_weights` and :meth:`posterior_weights`, computed from shipped
    integer tables with integer arithmetic only.
    """

    def __init__(self, arrays: dict[str, np.ndarray], model_id: str):
        self.model_id = model_id
        self.arrays = arrays
        self.scale_min = int(arrays["scale_range"][0])
        self.scale_max = int(arrays["scale_range"][1])
        self.scales = np.asarray(arrays["scales"], dtype=np.float64)
        if self.scales.shape != (self.scale_max - self.scale_min + 1,) or not np.all(self.scales > 0):
            raise ValueError("bad scale table in pixel model")
        self.nets: dict[int, list[_ExactMLP]] = {}
        components_seen = set()
        for num_channels in (1, 3):
            nets = []
            for k in range(num_channels):
                layers, frac, j = [], 0, 0
                while f"c{num_channels}k{k}w{j}" in arrays:
                    w = np.asarray(arrays[f"c{num_channels}k{k}w{j}"], dtype=np.float64)
                    b = np.asarray(arrays[f"c{num_channels}k{k}b{j}"], dtype=np.float64)
                    shift = int(arrays[f"c{num_channels}k{k}s{j}"])
                    layers.append(_Layer(w, b, shift, frac))
                    frac, j = ACT_FRAC_BITS, j + 1
                outputs = layers[-1].weight.shape[1] if layers else 0
                components = 1 if outputs == 2 else outputs // 3
                if not layers or layers[0].weight.shape[0] != context_size(num_channels, k) \
                        or not (outputs == 2 or (outputs == 3 * components and components > 1)):
                    raise ValueError(f"pixel model lacks a valid net for channel {k} of {num_channels}")
                components_seen.add(components)
                nets.append(_ExactMLP(layers))
            self.nets[num_channels] = nets
        if len(components_seen) != 1:
            raise ValueError("pixel model's nets disagree on the number of mixture components")
        (self.components,) = components_seen
        if self.components > 1:
            self._exp_table = np.asarray(arrays["exp_table"], dtype=np.int64)
            self._log_sinh = np.asarray(arrays["log_sinh"], dtype=np.int64)
            self._inverse_scale = np.asarray(arrays["inverse_scale"], dtype=np.int64)
            n_scales = self.scales.size
            if self._exp_table.shape != (LOG_WEIGHT_SPAN + 1,) or self._exp_table[0] != 1 << WEIGHT_BITS \
                    or self._log_sinh.shape != (n_scales,) or self._inverse_scale.shape != (n_scales,) \
                    or np.any(self._exp_table < 1) or np.any(self._inverse_scale < 1):
                raise ValueError("bad mixture tables in pixel model")
        self.weight_hash = hashlib.sha256(b"".join(
            name.encode() + np.ascontiguousarray(arrays[name]).tobytes() for name in sorted(arrays))).digest()[:8]

    def __repr__(self) -> str:
        return f"PixelModel({self.model_id!r})"

    def params(self, context: np.ndarray, ref: np.ndarray, num_channels: int, channel: int
               ) -> tuple[np.ndarray, np.ndarray]:
        """(mean, scale) float64 per sub-pixel, exact: mean = ref + m/64, scale from the table."""
        out = self.nets[num_channels][channel](context.astype(np.float64))
        return self._mean(out[:, 0], ref), self.scales[self._scale_index(out[:, 1]) - self.scale_min]

    @staticmethod
    def _mean(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """ref + m/64 from the MLP's (mean − ref)/32 output, m an integer (exact in float64)."""
        m = np.floor(out * 2.0 ** (11 - ACT_FRAC_BITS) + 0.5)  # ×32 grey levels ×64 steps = 2^11
        np.clip(m, -MEAN_LIMIT, MEAN_LIMIT, out=m)
        return ref + m * (1.0 / MEAN_STEPS)

    def _scale_index(self, out: np.ndarray) -> np.ndarray:
        """The scale index (int64) from the MLP's ln(scale) output."""
        i = np.floor(out * 2.0 ** (4 - ACT_FRAC_BITS) + 0.5)  # ×SCALE_STEPS = 2^4
        return np.clip(i, self.scale_min, self.scale_max).astype(np.int64)

    def mixture_params(self, context: np.ndarray, ref: np.ndarray, num_channels: int, channel: int
                       ) -> MixtureParams:
        """A mixture model's exact parameters per sub-pixel and component."""
        out = self.nets[num_channels][channel](context.astype(np.float64))
        k = self.components
        w = np.floor(out[:, 2 * k:] * 2.0 ** (4 - ACT_FRAC_BITS) + 0.5).astype(np.int64)  # ×LOGIT_STEPS = 2^4
        return MixtureParams(self._mean(out[:, :k], ref[:, None]), self._scale_index(out[:, k:2 * k]), w)

    def _weights(self, log_weight: np.ndarray) -> np.ndarray:
        """Integer weights (n, K) ∝ exp(log_weight / LOGIT_STEPS), the best component 2^WEIGHT_BITS."""
        gap = np.minimum(log_weight.max(axis=1, keepdims=True) - log_weight, LOG_WEIGHT_SPAN)
        return self._exp_table[gap]

    def prior_weights(self, params: MixtureParams) -> np.ndarray:
        """The prior over components, integer weights (n, K)."""
        return self._weights(params.log_weight)

    def posterior_weights(self, params: MixtureParams, levels: np.ndarray) -> np.ndarray:
        """An approximate posterior over components given the grey levels, integer weights (n, K).

        log q_k = log-weight_k + log P_k(x), with log P_k of a discretized
        Laplace at distance d = |x − mean_k| ≥ ½ from its mean (the form used
        for every d): −d/b + ln sinh(1/2b), capped at 0; the tails on the edge
        levels are ignored. All in integers of 1/LOGIT_STEPS nats from the
        shipped tables, so encoder and decoder agree on every machine. It only
        has to be the same on both sides: a cruder q costs a little rate (its
        KL to the true posterior), never correctness.
        """
        mean_steps = np.round((params.mean - levels[:, None]) * MEAN_STEPS).astype(np.int64)  # exact: m/64 grid
        j = params.scale_index - self.scale_min
        # d/b in 1/LOGIT_STEPS nats: |Δ|/64 · inverse_scale/2^16 · 16 = |Δ|·inverse_scale / 2^18.
        distance = (np.abs(mean_steps) * self._inverse_scale[j] + (1 << 17)) >> 18
        log_mass = np.minimum(self._log_sinh[j] - distance, 0)
        return self._weights(params.log_weight + log_mass)

    @classmethod
    def from_float(cls, nets: dict[int, list[list[tuple[np.ndarray, np.ndarray]]]], model_id: str,
                   scale_range: tuple[int, int] = (-40, 72)) -> "PixelModel":
        """Quantize trained float MLPs: nets[C][k] = [(weight (in, out), bias (out,)), …] on inputs ``context/32``."""
        import math
        arrays: dict[str, np.ndarray] = {}
        for num_channels, per_channel in nets.items():
            for k, layers in enumerate(per_channel):
                frac = 0
                for j, (w, b) in enumerate(layers):
                    w = np.asarray(w, dtype=np.float64) / (32.0 if j == 0 else 1.0)
                    peak = float(np.abs(w).max()) or 1.0
                    shift = 13 - math.frexp(peak)[1]
                    arrays[f"c{num_channels}k{k}w{j}"] = np.round(w * 2.0**shift).astype(np.int32)
                    arrays[f"c{num_channels}k{k}b{j}"] = np.round(np.asarray(b, np.float64) * 2.0 ** (shift + frac)
                                                                  ).astype(np.int64)
                    arrays[f"c{num_channels}k{k}s{j}"] = np.array(shift, dtype=np.int32)
                    frac = ACT_FRAC_BITS
        lo, hi = scale_range
        arrays["scale_range"] = np.array([lo, hi], dtype=np.int32)
        scales = [math.exp(i / SCALE_STEPS) for i in range(lo, hi + 1)]
        arrays["scales"] = np.array(scales, dtype=np.float64)
        outputs = next(iter(nets.values()))[0][-1][0].shape[1]
        if outputs > 2:  # a mixture: the integer tables of its prior and posterior ship with it
            arrays["exp_table"] = np.array([round(2**WEIGHT_BITS * math.exp(-j / LOGIT_STEPS))
                                            for j in range(LOG_WEIGHT_SPAN + 1)], dtype=np.int64)
            arrays["exp_table"][arrays["exp_table"] < 1] = 1
            arrays["log_sinh"] = np.array([round(LOGIT_STEPS * math.log(math.sinh(0.5 / b))) for b in scales],
                                          dtype=np.int64)
            arrays["inverse_scale"] = np.array([round(2**16 / b) for b in scales], dtype=np.int64)
        return cls(arrays, model_id)

    def save(self, path: str | Path) -> None:
        buf = io.BytesIO()
        np.savez_compressed(buf, model_id=np.array(self.model_id), **self.arrays)
        Path(path).write_bytes(buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "PixelModel":
        """A pixel model file (``save``'s .npz); ModelFileError if it is missing or not one."""
        from .errors import ModelFileError

        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {name: f[name] for name in f.files if name != "model_id"}
                model_id = str(f["model_id"])
            return cls(arrays, model_id)
        except FileNotFoundError:
            raise ModelFileError(f"{path}: no such pixel model file") from None
        except (OSError, ValueError, KeyError, TypeError, EOFError) as e:
            raise ModelFileError(f"{path} is not a vaecodec pixel model file ({type(e).__name__})") from None
