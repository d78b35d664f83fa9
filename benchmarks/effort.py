#!/usr/bin/env python3
"""Encoder effort: BD-rate against effort 1 and CPU seconds per image, for each effort level.

    python benchmarks/effort.py [--images DIR] [--count 8] [--offset 0] [--qualities 10,30,50,70,90] \
        [--efforts 1,2,3,4,5,6,7,8,9] [--model FILE] [--out benchmarks/results/effort]
    python benchmarks/effort.py --merge A.json B.json [--out ...]   # parts run side by side, one table

For every image × quality × effort: the file's bytes (rate), PSNR of the
decoded pixels, encode and decode CPU seconds (1 thread). Each effort's curve
(mean bpp and mean PSNR per quality) gets a BD-rate (PSNR) against effort 1,
and the worst per-quality change of the real RD cost is reported too (an
effort level must never be worse than effort 1).

All levels come from one refinement run per image and quality: the schedule
depends on the iteration number only (``vaecodec.refine.Schedule``), so the
run stopped after EFFORTS[e] iterations *is* effort e's run (a test checks
it, and here every image's effort-2 file is checked byte for byte against
``Codec.encode(effort=2)``). Effort e's encode time is what ``encode`` spends
on it: the analysis and the unrefined file, the iterations up to its stop
(with the estimates that choose among late iterates: in this shared run also
those lower levels choose among, so a level's time is slightly overstated),
and coding and comparing its refined file. AVIF (libaom speed 6, one thread)
encodes the same images in the same run, so encode times read as ratios to it:
machines of this kind differ ~3.5× in speed. Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--qualities", default="10,30,50,70,90")
    ap.add_argument("--efforts", default="1,2,3,4,5,6,7,8,9")
    ap.add_argument("--schedule", default=None, help="lr,tau_start,tau_end,anneal_iterations[,lr_end[,hard_z_from[,straight_through_from[,select_every]]]] instead of "
                    "the shipped schedule (an experiment: the files are then not what encode() writes)")
    ap.add_argument("--iterations", default=None, help="iterations of efforts 2..9, comma-separated, instead of EFFORTS")
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "effort"))
    ap.add_argument("--offset", type=int, default=0, help="skip this many images (to run parts in parallel)")
    ap.add_argument("--merge", nargs="+", default=None,
                    help="summarize the rows of earlier runs' JSON files (same model, qualities and efforts) instead")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    import vaecodec
    from vaecodec.baselines import make_codec
    from vaecodec.image import load_pixels
    from vaecodec.metrics import bd_rate, psnr
    from vaecodec.refine import EFFORTS, SCHEDULE, Schedule, rd_cost, refine_path

    experiment = args.schedule is not None or args.iterations is not None
    schedule = Schedule.parse(args.schedule) if args.schedule else None
    iterations = dict(EFFORTS)  # the library's table stays as it is
    if args.iterations:
        iterations.update({e: int(n) for e, n in zip(range(2, 10), args.iterations.split(","))})

    codec = vaecodec.Codec(args.model)
    images = sorted(Path(args.images).glob("*.png"))[args.offset:args.offset + args.count]
    qualities = [int(q) for q in args.qualities.split(",")]
    efforts = [int(e) for e in args.efforts.split(",")]
    parts = [json.loads(Path(f).read_text()) for f in args.merge or []]
    if parts:
        if len({(p["model"], tuple(p["qualities"]), tuple(p["iterations"])) for p in parts}) != 1:
            raise SystemExit("--merge takes runs of one model, qualities and efforts")
        qualities, efforts = parts[0]["qualities"], [int(e) for e in parts[0]["iterations"]]
        iterations = {int(e): n for e, n in parts[0]["iterations"].items()}  # as the parts ran, not as today
        images = [Path(args.images) / name for p in parts for name in p["images"]]
    if efforts[0] != 1 or efforts != sorted(set(efforts)):
        raise SystemExit("efforts must ascend and start at 1 (the reference)")
    refined_levels = efforts[1:]
    stops = [iterations[e] for e in refined_levels]
    rows = [r for p in parts for r in p["rows"]]
    avif = make_codec("avif")
    avif_s = [p["avif_speed6_encode_cpu_s_mean"] for p in parts for _ in p["images"]]
    for path in images if not parts else []:
        px = load_pixels(path)
        t = time.process_time()
        avif.encode(px, ("quality", 55))
        avif_s.append(time.process_time() - t)
        for q in qualities:
            lam = codec.model.quality_lambda(q)

            def row(effort, encoded, encode_s):
                t = time.process_time()
                out = codec.decompress_array(encoded.data)
                decode_s = time.process_time() - t
                mse = float(np.mean((out.astype(np.float64) - px.astype(np.float64)) ** 2))
                rows.append({"image": path.name, "quality": q, "effort": effort, "bytes": encoded.num_bytes,
                             "bpp": encoded.bpp, "psnr": psnr(px, out), "rd_cost": rd_cost(encoded.num_bytes, mse, lam, px.shape[0] * px.shape[1]),
                             "encode_cpu_s": encode_s, "decode_cpu_s": decode_s})
                print(f"{path.name} q{q} e{effort}: {encoded.bpp:.4f} bpp {rows[-1]['psnr']:.3f} dB, "
                      f"encode {encode_s:.1f} s", flush=True)

            # Effort 1, exactly as encode does it.
            t = time.process_time()
            row(1, codec.encode(px, quality=q, effort=1), time.process_time() - t)
            if not refined_levels:
                continue
            # The shared part of every refined level: analysis and the unrefined file with its ŷ.
            t0 = time.process_time()
            with torch.no_grad():
                analysed = codec._analyze(px)
                base = codec._code(analysed, analysed.latents, q, keep_y_hat=True)
            shared = time.process_time() - t0
            at_stop = {}
            t0 = time.process_time()
            path_latents = refine_path(codec.model, analysed.x.tensor(), analysed.latents, q, stops,
                                       analysed.height, analysed.width, schedule=schedule,
                                       on_iteration=lambda done, n: at_stop.setdefault(done, time.process_time() - t0)
                                       if done in stops else None)
            for e, n, latents in zip(refined_levels, stops, path_latents):
                t = time.process_time()
                with torch.no_grad():
                    encoded, _ = codec._better(analysed, q, base, latents)
                row(e, encoded, shared + at_stop[n] + time.process_time() - t)
                if e == refined_levels[0] and q == qualities[0] and not experiment:  # once per image (a refinement)
                    direct = codec.encode(px, quality=q, effort=e)
                    if direct.data != encoded.data:
                        raise SystemExit(f"{path.name} q{q}: effort {e} from the shared run differs from encode()")
    summary = []
    for e in efforts:
        curve = [(np.mean([r["bpp"] for r in rows if r["effort"] == e and r["quality"] == q]),
                  np.mean([r["psnr"] for r in rows if r["effort"] == e and r["quality"] == q])) for q in qualities]
        ref = [(np.mean([r["bpp"] for r in rows if r["effort"] == 1 and r["quality"] == q]),
                np.mean([r["psnr"] for r in rows if r["effort"] == 1 and r["quality"] == q])) for q in qualities]
        bd = bd_rate([c[0] for c in ref], [c[1] for c in ref], [c[0] for c in curve], [c[1] for c in curve])
        sel = [r for r in rows if r["effort"] == e]
        base = {(r["image"], r["quality"]): r["rd_cost"] for r in rows if r["effort"] == 1}
        # Mean change of the real RD cost per quality (the Lagrangian each quality's files minimize); the worst
        # quality says whether a level is ever worse than the default.
        per_quality = [100 * float(np.mean([r["rd_cost"] / base[r["image"], q] - 1 for r in sel if r["quality"] == q]))
                       for q in qualities]
        summary.append({
            "effort": e, "bd_rate_vs_effort_1": bd,
            "rd_cost_change_pct_per_quality": per_quality,
            "files_worse_than_effort_1": sum(r["rd_cost"] > base[r["image"], r["quality"]] for r in sel),
            "points": [{"quality": q, "bpp": float(b), "psnr": float(p)} for q, (b, p) in zip(qualities, curve)],
            "encode_cpu_s_mean": float(np.mean([r["encode_cpu_s"] for r in sel])),
            "encode_cpu_s_max": float(np.max([r["encode_cpu_s"] for r in sel])),
            "decode_cpu_s_mean": float(np.mean([r["decode_cpu_s"] for r in sel])),
        })
    avif_mean = float(np.mean(avif_s))
    command = "python benchmarks/effort.py " + " ".join(sys.argv[1:])
    if parts:
        command += " (of: " + "; ".join(f"`{p['command']}`" for p in parts) + ")"
    result = {"command": command,
              "schedule": (schedule or SCHEDULE).__dict__,
              "iterations": {e: iterations[e] for e in efforts},
              "model": parts[0]["model"] if parts else f"{codec.model.model_id} {codec.model.weight_hash.hex()}",
              "images": [p.name for p in images], "qualities": qualities,
              "avif_speed6_encode_cpu_s_mean": avif_mean, "summary": summary, "rows": rows}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["# Encoder effort", "", f"Command: `{result['command']}`  ", f"Model: {result['model']}; "
             f"{len(images)} images ({images[0].parent.name}), qualities {qualities}; rate from file bytes; 1 thread.", "",
             f"AVIF (libaom speed 6, quality 55, 1 thread) on the same images in the same run: "
             f"{avif_mean:.2f} CPU-s per image.", "",
             "| effort | iterations | BD-rate vs effort 1 (PSNR) | worst quality's RD-cost change | files worse than "
             "effort 1 | encode CPU-s per image (mean / max) | × AVIF s6 | decode CPU-s |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summary:
        bd = "–" if s["bd_rate_vs_effort_1"] is None else f"{s['bd_rate_vs_effort_1']:+.1f}%"
        lines.append(f"| {s['effort']} | {iterations[s['effort']]} | {bd} | {max(s['rd_cost_change_pct_per_quality']):+.2f}% | "
                     f"{s['files_worse_than_effort_1']} | {s['encode_cpu_s_mean']:.1f} / {s['encode_cpu_s_max']:.1f} | "
                     f"{s['encode_cpu_s_mean'] / avif_mean:.1f}× | {s['decode_cpu_s_mean']:.2f} |")
    lines += ["", "| effort | " + " | ".join(f"q{q} bpp / PSNR" for q in qualities) + " |",
              "|---|" + "---|" * len(qualities)]
    for s in summary:
        lines.append(f"| {s['effort']} | " + " | ".join(f"{p['bpp']:.4f} / {p['psnr']:.2f}" for p in s["points"]) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
