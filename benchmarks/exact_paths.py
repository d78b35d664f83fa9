#!/usr/bin/env python3
"""What Winograd's phases and float32 storage between layers save in the exact decoder, paired in one process.

    python benchmarks/exact_paths.py [--model FILE] [--image kodim23.png] [--rounds 8] \
        [--out benchmarks/results/exact-paths.json]

Builds the shipped model's exact programs (the hyper-synthesis, run on both
sides of the coder, and the synthesis) in four forms that give the same
integers (checked): ``taps, float64`` (the taps path everywhere, every step's
output float64: the decoder before these two changes), ``taps, float32
between``, ``Winograd, float32 between`` (what the decoder runs now on a
CPU without exact int8 kernels: Winograd for layers of at least
``WINOGRAD_MIN_IN_CHANNELS`` inputs) and ``Winograd everywhere, float32 between``
(every layer whose taps allow it: the evidence for that threshold). On one Kodak image's real ŷ and ẑ (quality
75) it times each form at 1 thread, ``--rounds`` rounds with the forms
interleaved, and reports each one's median CPU time and the median of the
paired differences to the first form, and the minor page faults a run takes
(the process's ``ru_minflt``: fresh memory mapped and touched). Pairing within one process is the point:
on this project's shared machine separate runs of ``speed.py`` differ by
±20 % (``results/speed-avx2-runs/``), more than what is measured here.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--image", default=str(ROOT.parent / "shared" / "data" / "kodak" / "kodim23.png"))
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--load", default="", help="what else ran on the machine, for the record")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "exact-paths.json"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from decoder_layers import real_inputs  # benchmarks/, beside this script
    from vaecodec import fixedpoint
    from vaecodec.api import Codec
    from vaecodec.fixedpoint import FixedPointProgram
    from vaecodec.intmm import int_mm_pays

    codec = Codec(args.model)
    m = codec.model
    net = m.float_network()
    z_fixed, y_hat = real_inputs(m, args.image)  # the same inputs decoder_layers.py times
    inputs = {"hyper-synthesis": z_fixed, "synthesis": y_hat}

    def build(seq, min_in_channels: int | None, float32_between: bool) -> FixedPointProgram:
        saved = fixedpoint.WINOGRAD_MIN_IN_CHANNELS
        fixedpoint.WINOGRAD_MIN_IN_CHANNELS = saved if min_in_channels is None else min_in_channels
        try:
            program = FixedPointProgram.from_sequential(seq)
        finally:
            fixedpoint.WINOGRAD_MIN_IN_CHANNELS = saved
        if not float32_between:
            for step in program._steps:
                step.store = torch.float64
        return program

    forms = {"taps, float64": (10**9, False), "taps, float32 between": (10**9, True),
             "Winograd, float32 between": (None, True), "Winograd everywhere, float32 between": (0, True)}
    programs = {name: {form: build(getattr(net, name.replace("-", "_")), *flags) for form, flags in forms.items()}
                for name in inputs}
    for name, by_form in programs.items():  # the same integers, whichever form
        outs = [p.run(inputs[name].clone()) for p in by_form.values()]
        assert all(torch.equal(outs[0], o) for o in outs[1:]), name

    times = {(name, form): [] for name in programs for form in forms}
    faults = {(name, form): [] for name in programs for form in forms}
    for _ in range(args.rounds):
        for name, by_form in programs.items():
            for form, program in by_form.items():
                a = inputs[name].clone()
                f, t = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time()
                program.run(a)
                times[name, form].append(1e3 * (time.process_time() - t))
                faults[name, form].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f)
    rows = []
    for name in programs:
        base = np.array(times[name, "taps, float64"])
        for form in forms:
            ms = np.array(times[name, form])
            rows.append({"program": name, "form": form, "median_cpu_ms": float(np.median(ms)),
                         "min_cpu_ms": float(ms.min()), "median_paired_diff_ms": float(np.median(ms - base)),
                         "median_minor_page_faults": float(np.median(faults[name, form]))})
    result = {"command": "python benchmarks/exact_paths.py " + " ".join(sys.argv[1:]),
              "model": f"{m.model_id} {m.weight_hash.hex()}", "image": Path(args.image).name, "quality": 75,
              "rounds": args.rounds, "platform": platform.platform(), "int8_kernels": int_mm_pays(),
              "load": args.load, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for r in rows:
        print(f"{r['program']:16s} {r['form']:37s} median {r['median_cpu_ms']:6.1f} ms  min {r['min_cpu_ms']:6.1f}  "
              f"paired vs taps/float64 {r['median_paired_diff_ms']:+6.1f} ms  page faults {r['median_minor_page_faults']:.0f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
