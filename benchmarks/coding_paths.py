#!/usr/bin/env python3
"""What exact rewrites save in the coder's stages, paired in one process: context, analysis GDN, last layer,
pixels, the taps' input.

    python benchmarks/coding_paths.py [--model FILE] [--image kodim23.png] [--rounds 12] \
        [--pairs context,analysis-gdn,last-layer,pixels,taps-input] [--out benchmarks/results/coding-paths.json]

Pairs of forms that give the same numbers, each timed on a whole stage of
coding one Kodak image at 1 thread (quality 50), ``--rounds`` rounds with
the two forms interleaved; reported: each form's median CPU time, the median
of the paired differences (library − reference), and ``same_result``. Pairing within one process is the
point: on this project's shared machine separate runs of ``speed.py`` differ by
±20 %.

* **Latent stages** (push the latents to ANS, then pop them back: the
  hyper-synthesis, the checkerboard context, the entropy and channel
  parameters and the entropy coding, on both sides of the coder). Reference:
  the checkerboard context's inputs gathered by one index per tap and
  position (``index_gather`` below, the library's form before this change);
  new: :func:`vaecodec.fixedpoint.conv_of_checkerboard_at` as it is, whole rows
  of the column-parity halves copied per tap. Checked: the same words.
* **Analysis** (the encoder's float analysis transform). Reference: each
  GDN's norm as torch's 1×1 convolution of a fresh ``|x|`` (``conv_gdn_``
  below, the library's form before); new: :meth:`SimplifiedGDN.forward_` as it
  is, a matrix product per band of positions. Checked: whether the latents are
  the same float32 values (equal up to float rounding in general).
* **Synthesis, last layer** (the exact synthesis of the image's ŷ into uint8
  pixels). Reference: the 3-channel upsampling's columns added where each tap
  lands by k² strided additions per band (``strided_columns`` below, the
  library's form before); new: ``fixedpoint._conv_transpose_by_columns`` as it
  is, torch's col2im (``F.fold``) per band. Checked: the same pixels.
* **Synthesis, pixels** (the same stage). Reference: the output scaled to pixels by ``round_shift(x·255)`` into fresh
  tensors (``fresh_pixels`` below, the library's form before); new:
  ``coding_model._to_pixels_``, in place. Checked: the same pixels.
* **Synthesis, the taps' input** (the same stage). Reference: each layer by
  taps reads one float64 copy of its whole padded input (``whole_input_taps``
  below, the library's form before); new: ``fixedpoint._correlate_by_taps`` as
  it is, a float64 window of each band's padded rows filled just before its
  products. Checked: the same pixels.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def index_gather(layer, a, positions, same_colour=False):
    """The checkerboard context convolution by one advanced-indexing gather (the reference form)."""
    import torch
    import torch.nn.functional as F

    from vaecodec.fixedpoint import ACT_LIMIT, _round_shift_

    _, c, k, _ = layer.weight.shape
    _, _, h, w = a.shape
    p = k // 2
    wp = w + 2 * p
    rows = positions // w
    r0, r1 = int(rows.min()), int(rows.max()) + 1
    band = a[0, :, max(0, r0 - p):min(h, r1 + p)]
    flat = F.pad(band, (p, p, max(0, p - r0), max(0, r1 + p - h))).reshape(c, -1)
    base = (rows - r0) * wp + positions % w
    taps, weights = layer.checkerboard_taps(0 if same_colour else 1)
    inputs = flat[:, (taps[:, 0, None] * wp + taps[:, 1, None]) + base].reshape(c * len(taps), -1)
    acc = torch.addmm(layer.bias[:, None], weights, inputs.to(torch.float64))
    return _round_shift_(acc, layer.shift).clamp_(-ACT_LIMIT, ACT_LIMIT)[None]


def conv_gdn_(self, x):
    """SimplifiedGDN.forward_ as a 1×1 convolution of a fresh |x| (the reference form)."""
    import torch.nn.functional as F

    beta, gamma = self.effective_params()
    norm = F.conv2d(x.abs(), gamma[:, :, None, None], beta)
    return x.mul_(norm) if self.inverse else x.div_(norm)


def strided_columns(a, conv, store=None):
    """The 3-channel transposed convolution's columns added tap by tap (the reference form)."""
    import torch

    from vaecodec.fixedpoint import ACT_LIMIT, COLUMN_POSITIONS

    store = store or torch.float64
    n, cin, h, w = a.shape
    s, p, k = conv.stride, conv.padding, conv.weight.shape[2]
    cout = conv.weight.shape[1]
    rows = max(1, COLUMN_POSITIONS // w)
    out = a.new_empty(n, cout, s * h, s * w, dtype=store)
    for i in range(n):
        acc = a.new_zeros(cout, s * h + k, s * w + k, dtype=torch.float64)
        flat = a[i].reshape(cin, h * w)
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            columns = (conv._columns @ flat[:, r0 * w:r1 * w].to(torch.float64)).view(cout, k, k, r1 - r0, w)
            for ky in range(k):
                for kx in range(k):
                    acc[:, s * r0 + ky:s * r1 + ky:s, kx:kx + s * w:s] += columns[:, ky, kx]
        mine = acc[:, p:p + s * h, p:p + s * w].add_(conv._bias_half[:, :, None])
        mine.mul_(2.0**-conv.shift).floor_()
        out[i] = mine.clamp_(-ACT_LIMIT, ACT_LIMIT)
    return out


def whole_input_taps(a, taps, shift, bias, epilogue=None, store=None):
    """A layer by taps on the float64 path from one padded float64 copy of its whole input (the reference form)."""
    import torch

    from vaecodec import fixedpoint as fp

    store = store or torch.float64
    if taps.digits is not None and fp.int_mm_pays():
        raise SystemExit("the taps pair compares the float64 path; this machine runs the layer on int8 kernels")
    if taps.winograd is not None:
        return fp._correlate_by_winograd(a, taps, shift, epilogue, store)
    n, cin, h, w = a.shape
    s, before = taps.stride, taps.before
    cout = taps.phases[0][3].shape[0]
    wp = w + before + taps.after
    rows = max(1, fp.BAND_POSITIONS // wp)
    flat = fp._flat_padded(a, before, taps.after)
    out = a.new_empty(n, cout, h, s, w, s, dtype=store)
    scratch = flat.new_empty(3, cout * min(h, rows) * wp)
    for i in range(n):
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            length = (r1 - r0) * wp
            for py, px, offsets, weights in taps.phases:
                acc = fp._block(scratch[0], cout, length)
                for j, (dy, dx) in enumerate(offsets):
                    t = (before + dy + r0) * wp + before + dx
                    x, wt = flat[i, :, t:t + length], weights[:, j * cin:(j + 1) * cin]
                    torch.addmm(bias, wt, x, out=acc) if j == 0 else acc.addmm_(wt, x)
                acc.mul_(2.0**-shift).floor_().clamp_(-fp.ACT_LIMIT, fp.ACT_LIMIT)
                if epilogue is not None:
                    epilogue.apply_(acc, scratch[1:])
                out[i, :, r0:r1, py, :, px] = acc.view(cout, r1 - r0, wp)[:, :, :w]
    return out.view(n, cout, h * s, w * s)


def fresh_pixels(x):
    """The synthesis output to pixels through fresh tensors (the reference form)."""
    from vaecodec.fixedpoint import ACT_FRAC_BITS, round_shift

    return round_shift(x * 255.0, ACT_FRAC_BITS).clamp_(0, 255)


def paired(forms: dict, rounds: int) -> dict:
    """Each form's CPU ms per round, interleaved; medians and the median paired difference to the first."""
    times = {name: [] for name in forms}
    for _ in range(rounds):
        for name, fn in forms.items():
            t = time.process_time()
            fn()
            times[name].append(1e3 * (time.process_time() - t))
    first = next(iter(forms))
    return {name: {"median_cpu_ms": statistics.median(v), "min_cpu_ms": min(v),
                   "median_paired_difference_ms": statistics.median(b - a for a, b in zip(times[first], v)),
                   "cpu_ms": v} for name, v in times.items()}


def compare(owner, attribute: str, forms: dict, stage, same, rounds: int) -> dict:
    """``stage()`` timed with ``owner.attribute`` set to each form (label → function, the reference first, None
    for the library's own), interleaved (:func:`paired`); ``same_result``: whether every form's result
    equals the reference's by ``same``. The attribute is restored whatever happens."""
    library = getattr(owner, attribute)
    forms = {label: library if form is None else form for label, form in forms.items()}

    def arm(form):
        def run():
            setattr(owner, attribute, form)
            return stage()
        return run

    try:
        results = [arm(form)() for form in forms.values()]
        times = paired({label: arm(form) for label, form in forms.items()}, rounds)
    finally:
        setattr(owner, attribute, library)
    return {**times, "same_result": all(bool(same(results[0], r)) for r in results[1:])}


PAIRS = {  # --pairs key: (result key, what is compared)
    "context": ("latent_stages_push_and_pop", "words"),
    "analysis-gdn": ("analysis", "latents"),
    "last-layer": ("synthesis_last_layer", "pixels"),
    "pixels": ("synthesis", "pixels"),
    "taps-input": ("synthesis_taps_input", "pixels"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--image", default=str(ROOT.parent / "shared" / "data" / "kodak" / "kodim23.png"))
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--pairs", default=",".join(PAIRS), help="comma-separated, of: " + ", ".join(PAIRS))
    ap.add_argument("--load", default="", help="what else ran on the machine, for the record")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "coding-paths.json"))
    args = ap.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(1)
    from vaecodec import coding_model, entropy, fixedpoint
    from vaecodec.api import Codec
    from vaecodec.image import load_pixels, to_model_input
    from vaecodec.latent_codec import Latents
    from vaecodec.model import SimplifiedGDN

    codec = Codec(args.model)
    if codec.model.config.latent_bits and "context" in args.pairs.split(","):
        raise SystemExit("the context pair times the fixed-point context's gather; this model's "
                         "latent networks are 10-bit programs: pass --model vaecodec/weights/vaecodec-cc64-r5.pt")
    m = codec.model
    pixels = load_pixels(args.image)
    x = to_model_input(pixels, 64, torch.uint8)
    quality = 50
    y, z = m.analyze(x)

    def push():
        coder = entropy.new_coder()
        codec.latents.push(coder, Latents(y, z), quality)
        return coder.get_compressed()

    def push_and_pop():
        words = push()
        codec.latents.pop_code(entropy.new_coder(words), pixels.shape[0], pixels.shape[1], quality)
        return words

    params = m.hyper_decode(z)  # ŷ quantized around the hyperprior's means: realistic values for timing
    y_hat = m.dequantize(m.quantize(y, params, quality), params, quality)
    pairs = {  # result key: (owner, attribute, forms, stage, same)
        "latent_stages_push_and_pop": (fixedpoint, "conv_of_checkerboard_at",  # a model without 10-bit latents
                                       {"index gather (reference)": index_gather, "row copies (library)": None},
                                       push_and_pop, np.array_equal),
        "analysis": (SimplifiedGDN, "forward_",
                     {"1×1 convolution (reference)": conv_gdn_, "banded product (library)": None},
                     lambda: m.analyze(x)[0], torch.equal),
        "synthesis_last_layer": (fixedpoint, "_conv_transpose_by_columns",
                                 {"strided additions (reference)": strided_columns, "col2im (library)": None},
                                 lambda: m.synthesize(y_hat), np.array_equal),
        "synthesis": (coding_model, "_to_pixels_",
                      {"fresh tensors (reference)": fresh_pixels, "in place (library)": None},
                      lambda: m.synthesize(y_hat), np.array_equal),
        "synthesis_taps_input": (fixedpoint, "_correlate_by_taps",
                                 {"whole padded input (reference)": whole_input_taps, "a window per band (library)": None},
                                 lambda: m.synthesize(y_hat), np.array_equal),
    }
    chosen = args.pairs.split(",")
    if not set(chosen) <= set(PAIRS):
        raise SystemExit(f"--pairs: choose from {', '.join(PAIRS)}")
    measured = {PAIRS[key][0]: compare(*pairs[PAIRS[key][0]], args.rounds) for key in chosen}

    result = {
        "command": "python benchmarks/coding_paths.py " + shlex.join(sys.argv[1:]),
        "model": f"{m.model_id} {m.weight_hash.hex()}",
        "image": Path(args.image).name,
        "quality": quality,
        "rounds": args.rounds,
        "threads": 1,
        "platform": platform.platform(),
        "load": args.load,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        **measured,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for stage, what in (PAIRS[key] for key in chosen):
        for name, r in result[stage].items():
            if isinstance(r, dict):
                print(f"{stage}: {name}: median {r['median_cpu_ms']:.1f} ms, paired "
                      f"{r['median_paired_difference_ms']:+.1f} ms")
        print(f"{stage}: the same {what} from both forms: {result[stage]['same_result']}")


if __name__ == "__main__":
    main()
