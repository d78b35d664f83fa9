#!/usr/bin/env python3
"""vaecodec speed: time per stage at 1 and 2 threads, and how time and memory scale with size.

    python benchmarks/speed.py [--images DIR] [--out benchmarks/results/speed.json]

Part 1 (stages): for each image (default: 6 Kodak images) at quality 50, the
CPU and wall time of every stage of compress and decompress, with torch at 1
and at 2 threads. Part 2 (scale): compress + decompress of 0.25, 1, 4 and 16
Mpixel images (bicubic enlargements of a Kodak image), each in a fresh
process, with CPU time, wall time and peak resident memory (ru_maxrss).
Times on a shared machine are noisy; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import vaecodec  # noqa: E402
from vaecodec import entropy  # noqa: E402
from vaecodec.container import Header, pack, unpack  # noqa: E402
from vaecodec.image import load_pixels, to_model_input, to_output_pixels  # noqa: E402
from vaecodec.latent_codec import Latents  # noqa: E402

QUALITY = 50


class Clock:
    def __init__(self):
        self.cpu, self.wall = {}, {}

    def stage(self, name, fn, *args):
        c, w = time.process_time(), time.perf_counter()
        out = fn(*args)
        self.cpu[name] = self.cpu.get(name, 0) + time.process_time() - c
        self.wall[name] = self.wall.get(name, 0) + time.perf_counter() - w
        return out


def stages_once(codec, pixels, clock):
    """One compress + decompress, timed stage by stage through the codec's own calls.

    The order of the bits is the latent codec's (``codec.latents.push/pop``,
    the same calls the API makes), and the decoder only sees the file's words.
    """
    from vaecodec.api import _header_check

    m = codec.model
    x = clock.stage("encode: image → tensor", to_model_input, pixels, 64)
    y, z = clock.stage("encode: analysis transforms (float)", m.analyze, x)
    hyper = clock.stage("encode: hyper-synthesis (exact)", m.hyper_decode, z)
    h, w = pixels.shape[:2]
    header = Header(w, h, "RGB", QUALITY, m.model_id, m.weight_hash)

    def push():
        coder = entropy.new_coder()
        entropy.push_check(coder, _header_check(header))
        code = codec.latents.push(coder, Latents(y, z, hyper), QUALITY)
        entropy.push_check(coder, entropy.content_check(*code.symbols))
        return coder.get_compressed()

    words = clock.stage("encode: latents → ANS (quantize, context, entropy coding)", push)
    data = clock.stage("encode: container pack", pack, replace(header, num_words=int(words.size)), words)
    header, words = clock.stage("decode: container unpack", unpack, data)

    def pop():
        coder = entropy.new_coder(words)
        seal = entropy.pop_check(coder)
        code = codec.latents.pop_code(coder, header.height, header.width, header.quality)
        assert entropy.pop_check(coder) == _header_check(header) and coder.is_empty()
        assert entropy.content_check(*code.symbols) == seal
        return code.y_hat

    y_hat = clock.stage("decode: ANS → latents (hyper-synthesis, context, entropy decoding)", pop)
    rgb = clock.stage("decode: synthesis transform (exact)", m.synthesize, y_hat)
    clock.stage("decode: crop → image", to_output_pixels, rgb, h, w, "RGB")
    return len(data)


def part_stages(images, threads, model=None):
    import torch

    torch.set_num_threads(threads)
    codec = vaecodec.Codec(model)
    clock = Clock()
    stages_once(codec, load_pixels(images[0]), Clock())  # warm-up
    for path in images:
        stages_once(codec, load_pixels(path), clock)
    n = len(images)
    return {k: {"cpu_ms": 1e3 * clock.cpu[k] / n, "wall_ms": 1e3 * clock.wall[k] / n} for k in clock.cpu}


CHILD = r"""
import json, resource, sys, time, numpy as np, torch
from PIL import Image
sys.path.insert(0, sys.argv[3])
import vaecodec
torch.set_num_threads(1)
side_w, side_h = int(sys.argv[1]), int(sys.argv[2])
with Image.open(sys.argv[4]) as im:
    px = np.asarray(im.convert("RGB").resize((side_w, side_h), Image.BICUBIC))
codec = vaecodec.Codec()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
c, w = time.process_time(), time.perf_counter()
data = codec.compress(px, quality=50)
c1, w1 = time.process_time(), time.perf_counter()
out = codec.decompress_array(data)
c2, w2 = time.process_time(), time.perf_counter()
print(json.dumps({"width": side_w, "height": side_h, "bytes": len(data), "encode_cpu_s": c1 - c, "decode_cpu_s": c2 - c1,
                  "encode_wall_s": w1 - w, "decode_wall_s": w2 - w1, "rss_before_mb": base / 1024,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def part_scale(source):
    rows = []
    for mpx in (0.25, 1, 4, 16):
        w = int(round((mpx * 1e6 * 1.5) ** 0.5))
        h = int(round(w / 1.5))
        r = subprocess.run([sys.executable, "-c", CHILD, str(w), str(h), str(ROOT), str(source)],
                           capture_output=True, text=True, timeout=3600)
        if r.returncode:
            raise SystemExit(r.stderr)
        row = json.loads(r.stdout)
        row["mpx"] = w * h / 1e6
        row["cpu_s_per_mpx"] = (row["encode_cpu_s"] + row["decode_cpu_s"]) / row["mpx"]
        rows.append(row)
        print(f"  {row['mpx']:.2f} Mpx: {row['cpu_s_per_mpx']:.2f} CPU-s/Mpx, peak RSS {row['peak_rss_mb']:.0f} MB", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    ap.add_argument("--count", type=int, default=6)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "speed.json"))
    ap.add_argument("--model", default=None, help="model file (default: the shipped model)")
    ap.add_argument("--no-scale", action="store_true", help="skip part 2")
    args = ap.parse_args()
    images = sorted(Path(args.images).glob("*.png"))[:args.count]
    result = {"command": "python benchmarks/speed.py " + " ".join(sys.argv[1:]), "platform": platform.platform(),
              "model": None, "stages": {}, "scale": []}
    codec = vaecodec.Codec(args.model)
    result["model"] = f"{codec.model.model_id} {codec.model.weight_hash.hex()}"
    for threads in (1, 2):
        print(f"stages, {threads} thread(s), {len(images)} images, quality {QUALITY}", flush=True)
        result["stages"][str(threads)] = part_stages(images, threads, args.model)
        for k, v in result["stages"][str(threads)].items():
            print(f"  {k:<42} {v['cpu_ms']:8.1f} ms CPU {v['wall_ms']:8.1f} ms wall")
    if args.no_scale:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        return
    print("scale (1 thread, fresh process per size)", flush=True)
    result["scale"] = part_scale(images[0])
    one = next(r for r in result["scale"] if abs(r["mpx"] - 1) < 0.1)
    big = result["scale"][-1]
    result["time_per_mpx_ratio_16_vs_1"] = big["cpu_s_per_mpx"] / one["cpu_s_per_mpx"]
    print(f"time per Mpx at 16 Mpx / at 1 Mpx = {result['time_per_mpx_ratio_16_vs_1']:.2f}; "
          f"peak RSS at 16 Mpx = {big['peak_rss_mb']:.0f} MB")
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    write_markdown(result, Path(args.out).with_suffix(".md"))


def write_markdown(result, path):
    lines = ["# vaecodec speed", "", f"Command: `{result['command']}`  ", f"Model: {result['model']}; {result['platform']}", "",
             "## Stages (mean per image, quality 50)", "", "| stage | 1 thread CPU ms | 1 thread wall ms | 2 threads CPU ms | 2 threads wall ms |", "|---|---|---|---|---|"]
    for k in result["stages"]["1"]:
        a, b = result["stages"]["1"][k], result["stages"]["2"][k]
        lines.append(f"| {k} | {a['cpu_ms']:.1f} | {a['wall_ms']:.1f} | {b['cpu_ms']:.1f} | {b['wall_ms']:.1f} |")
    for t in ("1", "2"):
        tot = {p: sum(v["cpu_ms"] for k, v in result["stages"][t].items() if k.startswith(p)) for p in ("encode", "decode")}
        wall = {p: sum(v["wall_ms"] for k, v in result["stages"][t].items() if k.startswith(p)) for p in ("encode", "decode")}
        lines.append(f"| **total, {t} thread(s)** | encode {tot['encode']:.0f} CPU / {wall['encode']:.0f} wall | decode {tot['decode']:.0f} CPU / {wall['decode']:.0f} wall | | |")
    lines += ["", "## Scale (compress + decompress, 1 thread, fresh process each)", "",
              "| Mpx | size | encode CPU s | decode CPU s | CPU s per Mpx | peak RSS MB |", "|---|---|---|---|---|---|"]
    for r in result["scale"]:
        lines.append(f"| {r['mpx']:.2f} | {r['width']}×{r['height']} | {r['encode_cpu_s']:.2f} | {r['decode_cpu_s']:.2f} | "
                     f"{r['cpu_s_per_mpx']:.2f} | {r['peak_rss_mb']:.0f} |")
    lines += ["", f"Time per Mpx at 16 Mpx is {result['time_per_mpx_ratio_16_vs_1']:.2f}× that at 1 Mpx."]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
