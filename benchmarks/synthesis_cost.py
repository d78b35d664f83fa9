#!/usr/bin/env python3
"""What a narrower or an 8-bit integer synthesis would cost to decode: the speed side of choosing the next model.

    python benchmarks/synthesis_cost.py [--images ../shared/data/kodak] [--count 6] [--repeats 2]
        [--variants 128x64,128x48,96x48,128x32,96x32,64x32,int8:128x64] [--out benchmarks/results/synthesis-cost.json]

The decoder's bottleneck is the exact float64 synthesis (``benchmarks/speed.py``).
Its cost is set by the widths (w at 1/8 and 1/4 resolution, n at 1/2), not by
the weights' values: its arithmetic has no data-dependent paths. So each
variant ``WxN`` is the shipped synthesis' layer stack (transposed 5×5 stride-2
convolutions and inverse GDNs) with those widths and seeded random weights,
compiled to the same fixed-point program; ``int8:WxN`` is a prototype 8-bit
integer pipeline of those widths (below). Each runs through the codec's own
tiled ``synthesize`` on the shipped model's real ŷ of each Kodak image
(quality 50), interleaved with the shipped synthesis in the same run (1
thread). Reported per variant: synthesis MACs per pixel, CPU ms per image, its
ratio r to the shipped one, and a projection of compress + decompress against
AVIF speed 6 if only the synthesis changed: (encode + decode − S + r·S) / AVIF,
with the stage times and AVIF's from ``benchmarks/results/speed.json`` (the
analysis keeps its width: it is an encoder-side float network, exactness does
not bind it). Quality is not measured here: a narrower synthesis has to be
trained to know what it loses, and an 8-bit one's loss before retraining is
``benchmarks/synthesis_precision.py``'s question.

The int8 prototype is not the decoder, but every number in it is an integer on
a path exact on any machine: int8 activations (channels last) × int8 weights
summed in int32 by ``torch._int_mm`` (no sum can overflow: K·127² < 2^31),
re-quantized by an integer add and arithmetic shift and clamped to ±127; the
inverse GDN as an int8 product for its norm, then an int32 multiply and
shift. Upsampling layers run by phases (one GEMM per phase over the taps'
shifted inputs side by side); the 3-output last layer takes all taps' products
in one GEMM and adds them shifted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

KERNEL, STRIDE, PAD = 5, 2, 2
SHIFT = 14
LIMIT = 127


def _phase_taps():
    """Per output phase a, the (kernel row, input offset) pairs of a 5×5 stride-2 transposed convolution."""
    return [[(k, (a + PAD - k) // STRIDE) for k in range(KERNEL) if (a + PAD - k) % STRIDE == 0] for a in range(STRIDE)]


class _Deconv:
    """int8 (h, w, cin) → int8 (2h, 2w, cout): one int8 GEMM per phase, taps side by side."""

    def __init__(self, cin: int, cout: int, g: torch.Generator):
        self.cout = cout
        w = torch.randint(-LIMIT, LIMIT + 1, (cin, cout, KERNEL, KERNEL), generator=g, dtype=torch.int8)
        taps = _phase_taps()
        offsets = [d for t in taps for _, d in t]
        self.before, self.after = -min(offsets), max(offsets)
        self.phases = []
        for py, rows in enumerate(taps):
            for px, cols in enumerate(taps):
                chosen = [(ky, dy, kx, dx) for ky, dy in rows for kx, dx in cols]
                weights = torch.cat([w[:, :, ky, kx] for ky, _, kx, _ in chosen]).contiguous()
                self.phases.append((py, px, [(dy, dx) for _, dy, _, dx in chosen], weights))
        self.all_taps = w.permute(0, 2, 3, 1).reshape(cin, -1).contiguous()  # (cin, k·k·cout), the narrow form
        self.offset = torch.randint(-2**20, 2**20, (cout,), generator=g, dtype=torch.int32) + (1 << (SHIFT - 1))

    def _flat(self, a):
        h, w, c = a.shape
        b, f = self.before, self.after
        flat = F.pad(a, (0, 0, b, f, b, f)).reshape(-1, c)
        return torch.cat([flat, flat.new_zeros(b + f, c)]), w + b + f

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        h, w, _ = a.shape
        flat, wp = self._flat(a)
        length, b = h * wp, self.before
        out = torch.empty(h, STRIDE, w, STRIDE, self.cout, dtype=torch.int8)
        for py, px, offsets, weights in self.phases:
            x = torch.cat([flat[(b + dy) * wp + b + dx:][:length] for dy, dx in offsets], 1)
            acc = torch._int_mm(x, weights).add_(self.offset).bitwise_right_shift_(SHIFT).clamp_(-LIMIT, LIMIT)
            out[:, py, :, px] = acc.view(h, wp, self.cout)[:, :w]
        return out.view(STRIDE * h, STRIDE * w, self.cout)

    def narrow(self, a: torch.Tensor) -> torch.Tensor:
        """For few outputs: (positions, cin) @ (cin, taps·cout) once, then each phase adds its taps' rows shifted;
        int32 (cout, 2h, 2w)."""
        h, w, _ = a.shape
        flat, wp = self._flat(a)
        length, b = h * wp, self.before
        products = torch._int_mm(flat, self.all_taps).t().contiguous().view(KERNEL, KERNEL, self.cout, -1)
        out = torch.empty(self.cout, h, STRIDE, w, STRIDE, dtype=torch.int32)
        taps = _phase_taps()
        for py, rows in enumerate(taps):
            for px, cols in enumerate(taps):
                acc = None
                for ky, dy in rows:
                    for kx, dx in cols:
                        x = products[ky, kx, :, (b + dy) * wp + b + dx:][:, :length]
                        acc = x.clone() if acc is None else acc.add_(x)
                acc.add_(self.offset[:, None]).bitwise_right_shift_(SHIFT)
                out[:, :, py, :, px] = acc.view(self.cout, h, wp)[:, :, :w]
        return out.view(self.cout, STRIDE * h, STRIDE * w)


class _InverseGDN:
    """a·(β + Γ|a|) in integers: the norm by an int8 GEMM, shifted into 0..127, then an int32 product, shifted."""

    def __init__(self, c: int, g: torch.Generator):
        self.gamma = torch.randint(0, LIMIT + 1, (c, c), generator=g, dtype=torch.int8)
        self.beta = torch.randint(0, 2**16, (c,), generator=g, dtype=torch.int32)

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        h, w, c = a.shape
        flat = a.view(-1, c)
        norm = torch._int_mm(flat.abs(), self.gamma).add_(self.beta).bitwise_right_shift_(12).clamp_(0, LIMIT)
        return norm.mul_(flat).bitwise_right_shift_(7).clamp_(-LIMIT, LIMIT).to(torch.int8).view(h, w, c)


class Int8Synthesis:
    """Stands in for the exact program in ``CodingModel.synthesize`` (``run``: float64 NCHW tile in and out)."""

    def __init__(self, m: int, wide: int, n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.layers = [_Deconv(m, wide, g), _InverseGDN(wide, g), _Deconv(wide, n, g), _InverseGDN(n, g),
                       _Deconv(n, n, g), _InverseGDN(n, g)]
        self.last = _Deconv(n, 3, g)

    def run(self, y: torch.Tensor) -> torch.Tensor:
        a = y[0].permute(1, 2, 0).mul(2.0**-9).round_().clamp_(-LIMIT, LIMIT).to(torch.int8)  # ŷ on an int8 grid
        for layer in self.layers:
            a = layer(a)
        return self.last.narrow(a)[None].to(torch.float64)



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    ap.add_argument("--count", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--variants", default="128x64,128x48,96x48,128x32,96x32,64x32,int8:128x64")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "synthesis-cost.json"))
    args = ap.parse_args()

    import numpy as np
    from torch import nn

    torch.set_num_threads(1)
    import vaecodec
    from vaecodec.fixedpoint import FixedPointProgram
    from vaecodec.image import load_pixels
    from vaecodec.model import SimplifiedGDN, _deconv

    codec = vaecodec.Codec()
    model = codec.model
    m = model.config.latent_channels

    def stack(w: int, n: int) -> nn.Sequential:
        torch.manual_seed(0)
        return nn.Sequential(_deconv(m, w), SimplifiedGDN(w, inverse=True), _deconv(w, n), SimplifiedGDN(n, inverse=True),
                             _deconv(n, n), SimplifiedGDN(n, inverse=True), _deconv(n, 3)).eval()

    def macs_per_pixel(seq: nn.Sequential) -> float:
        """Multiply-accumulates per output pixel: every input element of a transposed convolution meets cout·k²
        weights; an inverse GDN is a C×C product per position."""
        x, total = torch.zeros(1, m, 4, 4), 0
        with torch.no_grad():
            for layer in seq:
                if isinstance(layer, nn.ConvTranspose2d):
                    total += x.numel() * layer.out_channels * layer.kernel_size[0] * layer.kernel_size[1]
                elif isinstance(layer, SimplifiedGDN):
                    total += x.shape[1] * x.numel()
                x = layer(x)
        return total / (x.shape[2] * x.shape[3])

    shipped = model.synthesis
    # The shipped program with its trained weights; its MACs are those of its widths.
    variants = {"shipped": (shipped, macs_per_pixel(stack(model.config.wide, model.config.channels)))}
    for spec in args.variants.split(","):
        int8 = spec.startswith("int8:")
        w, n = (int(v) for v in spec.removeprefix("int8:").split("x"))
        seq = stack(w, n)
        program = Int8Synthesis(m, w, n) if int8 else FixedPointProgram.from_sequential(seq)
        variants[spec] = (program, macs_per_pixel(seq))

    y_hats = []
    for path in sorted(Path(args.images).glob("*.png"))[:args.count]:
        with torch.no_grad():
            analysed = codec._analyze(load_pixels(path))
            _, y_hat = codec._code(analysed, analysed.latents, 50, keep_y_hat=True)
        y_hats.append(y_hat)

    seconds = {name: [] for name in variants}
    try:
        for _ in range(args.repeats):
            for y_hat in y_hats:
                for name, (program, _) in variants.items():
                    model.synthesis = program
                    t = time.process_time()
                    model.synthesize(y_hat)
                    seconds[name].append(time.process_time() - t)
    finally:
        model.synthesis = shipped

    speed = json.loads((ROOT / "benchmarks" / "results" / "speed.json").read_text())
    one = speed["stages"]["1"]
    enc = sum(v["cpu_ms"] for k, v in one.items() if k.startswith("encode"))
    dec = sum(v["cpu_ms"] for k, v in one.items() if k.startswith("decode"))
    synth = next(v["cpu_ms"] for k, v in one.items() if k.startswith("decode: synthesis"))
    avif = speed["avif"]["encode_cpu_ms"] + speed["avif"]["decode_cpu_ms"]
    base = float(np.mean(seconds["shipped"]))
    rows = []
    for name, (_, macs) in variants.items():
        r = float(np.mean(seconds[name])) / base
        rows.append({"variant": name, "synthesis_macs_per_pixel": macs, "synthesis_cpu_ms": 1000 * float(np.mean(seconds[name])),
                     "ratio_to_shipped": r, "projected_vs_avif": (enc + dec - synth + r * synth) / avif})
    result = {"command": "python benchmarks/synthesis_cost.py " + " ".join(sys.argv[1:]),
              "model": f"{model.model_id} {model.weight_hash.hex()}", "images": args.count, "repeats": args.repeats,
              "speed_json": {"command": speed["command"], "encode_ms": enc, "decode_ms": dec, "synthesis_ms": synth,
                             "avif_ms": avif}, "variants": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'variant':>10} {'kMAC/px':>8} {'synth ms':>9} {'× shipped':>9} {'proj. × AVIF':>12}")
    for r in rows:
        print(f"{r['variant']:>10} {r['synthesis_macs_per_pixel'] / 1000:8.1f} {r['synthesis_cpu_ms']:9.1f} "
              f"{r['ratio_to_shipped']:9.2f} {r['projected_vs_avif']:12.2f}")


if __name__ == "__main__":
    main()
