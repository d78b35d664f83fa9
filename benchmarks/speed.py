#!/usr/bin/env python3
"""vaecodec speed: time per stage at 1 and 2 threads, and how time and memory scale with size.

    python benchmarks/speed.py [--images DIR] [--out benchmarks/results/speed.json] [--scale-mpx 1,4,16,64]

Part 1 (stages): for each image (default: 6 Kodak images) at quality 50, the
CPU and wall time of every stage of compress and decompress, with torch at 1
and at 2 threads, and AVIF (speed 6, Pillow) encoding and decoding the same
images in the same run, in a pass right before and one right after vaecodec's 1-thread stages (their
mean is the reference: the machine's speed drifts within a run): machines of this kind differ ~3.5× in speed, so the
ratio is the number to compare. Part 2 (scale): ``vaecodec.compress`` of a PNG
file and ``decompress_array`` of the .vae file, each in its own fresh process
(1 thread), for images of 1, 4, 16 and 64 Mpixel (bicubic enlargements of a
Kodak image): CPU time, wall time and each process's peak resident memory
(VmHWM, the interpreter, torch and the model included).
Times on a shared machine are noisy; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path


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

    import torch

    m = codec.model
    x = clock.stage("encode: image → tensor", to_model_input, pixels, 64, torch.uint8)
    y, z = clock.stage("encode: analysis transforms (float)", m.analyze, x)
    h, w = pixels.shape[:2]
    header = Header(w, h, "RGB", QUALITY, m.model_id, m.weight_hash)

    def push():
        coder = entropy.new_coder()
        entropy.push_check(coder, _header_check(header))
        code = codec.latents.push(coder, Latents(y, z), QUALITY)
        entropy.push_check(coder, code.symbols_crc)
        return coder.get_compressed()

    words = clock.stage("encode: latents → ANS (hyper-synthesis, quantize, context, entropy coding)", push)
    data = clock.stage("encode: container pack", pack, replace(header, num_words=int(words.size)), words)
    header, words = clock.stage("decode: container unpack", unpack, data)

    def pop():
        coder = entropy.new_coder(words)
        seal = entropy.pop_check(coder)
        code = codec.latents.pop_code(coder, header.height, header.width, header.quality)
        assert entropy.pop_check(coder) == _header_check(header) and coder.is_empty()
        assert code.symbols_crc == seal
        return code.y_hat

    y_hat = clock.stage("decode: ANS → latents (hyper-synthesis, context, entropy decoding)", pop)
    rgb = clock.stage("decode: synthesis transform (exact)", m.synthesize, y_hat)
    clock.stage("decode: crop → image", to_output_pixels, rgb, h, w, "RGB")
    return len(data)


def part_stages(images, threads, model=None):
    """Mean CPU and wall ms per image of every stage."""
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
import json, resource, sys, time, torch
sys.path.insert(0, sys.argv[1])
torch.set_num_threads(1)
import vaecodec


def peak_rss_mb():
    # VmHWM belongs to this process image; ru_maxrss survives exec and would report the parent's peak.
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


codec = vaecodec.Codec()
c, w = time.process_time(), time.perf_counter()
if sys.argv[2] == "encode":  # PNG file -> .vae file
    data = codec.compress(sys.argv[3], quality=50)
    result = {"bytes": len(data)}
else:  # .vae file -> pixels
    result = {"shape": list(codec.decompress_array(sys.argv[3]).shape)}
c1, w1 = time.process_time(), time.perf_counter()
if sys.argv[2] == "encode":
    open(sys.argv[4], "wb").write(data)
print(json.dumps({**result, "cpu_s": c1 - c, "wall_s": w1 - w, "peak_rss_mb": peak_rss_mb()}))
"""


def _child(*args: str) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), *args], capture_output=True, text=True, timeout=3600)
    if r.returncode:
        raise SystemExit(r.stderr)
    return json.loads(r.stdout)


def part_scale(source, sizes_mpx):
    import tempfile

    from PIL import Image

    rows = []
    with tempfile.TemporaryDirectory() as tmp, Image.open(source) as im:
        im = im.convert("RGB")
        for mpx in sizes_mpx:
            w = int(round((mpx * 1e6 * 1.5) ** 0.5))
            h = int(round(w / 1.5))
            png, vae = Path(tmp) / "in.png", Path(tmp) / "in.vae"
            im.resize((w, h), Image.BICUBIC).save(png, compress_level=1)
            enc = _child("encode", str(png), str(vae))
            dec = _child("decode", str(vae))
            if dec["shape"] != [h, w, 3]:
                raise SystemExit(f"decoded shape {dec['shape']} for {w}×{h}")
            row = {"width": w, "height": h, "mpx": w * h / 1e6, "bytes": enc["bytes"],
                   "encode_cpu_s": enc["cpu_s"], "decode_cpu_s": dec["cpu_s"],
                   "encode_wall_s": enc["wall_s"], "decode_wall_s": dec["wall_s"],
                   "encode_peak_rss_mb": enc["peak_rss_mb"], "decode_peak_rss_mb": dec["peak_rss_mb"]}
            row["cpu_s_per_mpx"] = (row["encode_cpu_s"] + row["decode_cpu_s"]) / row["mpx"]
            rows.append(row)
            print(f"  {row['mpx']:.2f} Mpx: {row['cpu_s_per_mpx']:.2f} CPU-s/Mpx, peak RSS encode "
                  f"{row['encode_peak_rss_mb']:.0f} MB, decode {row['decode_peak_rss_mb']:.0f} MB", flush=True)
    return rows


def part_avif(images):
    """AVIF speed 6 (the bench's ``avif``, quality 50) on the same images, 1 thread: CPU ms per image."""
    import torch

    from vaecodec.baselines import make_codec

    torch.set_num_threads(1)
    avif = make_codec("avif")
    enc = dec = 0.0
    pixels = [load_pixels(p) for p in images]
    avif.decode(avif.encode(pixels[0], ("quality", 50))[0])  # warm-up
    for px in pixels:
        c = time.process_time()
        data = avif.encode(px, ("quality", 50))[0]
        c1 = time.process_time()
        avif.decode(data)
        enc, dec = enc + c1 - c, dec + time.process_time() - c1
    return {"codec": avif.library, "encode_cpu_ms": 1e3 * enc / len(images), "decode_cpu_ms": 1e3 * dec / len(images)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    ap.add_argument("--count", type=int, default=6)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "speed.json"))
    ap.add_argument("--model", default=None, help="model file (default: the shipped model)")
    ap.add_argument("--no-scale", action="store_true", help="skip part 2")
    ap.add_argument("--scale-mpx", default="1,4,16,64", help="image sizes of part 2, Mpixel")
    ap.add_argument("--load", default="not stated", help="what else ran on the machine meanwhile (recorded)")
    args = ap.parse_args()
    images = sorted(Path(args.images).glob("*.png"))[:args.count]
    result = {"command": "python benchmarks/speed.py " + " ".join(sys.argv[1:]), "platform": platform.platform(),
              "model": None, "stages": {}, "scale": []}
    codec = vaecodec.Codec(args.model)
    result["model"] = f"{codec.model.model_id} {codec.model.weight_hash.hex()}"
    # What the ratio depends on besides the machine's speed: the encoder's analysis precision (bfloat16
    # where the CPU has AMX) and whether the decoder's widest products ran on exact int8 kernels.
    from vaecodec.intmm import int_mm_pays

    result["analysis"] = "bfloat16" if codec.model.analysis_in_bfloat16() else "float32"
    result["int8_kernels"] = int_mm_pays()
    result["machine_load"] = args.load
    # AVIF in a pass right before and one right after vaecodec's 1-thread stages, their mean the reference:
    # a machine's speed drifts within a run (AVIF's encode measured 692 ms before and 502 ms after, minutes
    # apart), and bracketing cancels a steady drift. (Interleaving image by image was tried: AVIF between
    # vaecodec's images evicts its weights from the caches, which cost vaecodec's stages ~100 ms an image.)
    avif_passes = [part_avif(images)]
    for threads in (1, 2):
        print(f"stages, {threads} thread(s), {len(images)} images, quality {QUALITY}", flush=True)
        result["stages"][str(threads)] = part_stages(images, threads, args.model)
        for k, v in result["stages"][str(threads)].items():
            print(f"  {k:<42} {v['cpu_ms']:8.1f} ms CPU {v['wall_ms']:8.1f} ms wall")
        if threads == 1:
            avif_passes.append(part_avif(images))
    result["avif_passes"] = avif_passes
    result["avif"] = {"codec": avif_passes[0]["codec"],
                      **{k: sum(p[k] for p in avif_passes) / 2 for k in ("encode_cpu_ms", "decode_cpu_ms")}}
    one = {p: sum(v["cpu_ms"] for k, v in result["stages"]["1"].items() if k.startswith(p)) for p in ("encode", "decode")}
    result["vs_avif"] = {"encode": one["encode"] / result["avif"]["encode_cpu_ms"],
                         "decode": one["decode"] / result["avif"]["decode_cpu_ms"]}
    result["vs_avif"]["encode_plus_decode"] = (one["encode"] + one["decode"]) / (
        result["avif"]["encode_cpu_ms"] + result["avif"]["decode_cpu_ms"])
    print(f"AVIF speed 6, 1 thread: encode {result['avif']['encode_cpu_ms']:.0f} ms, decode "
          f"{result['avif']['decode_cpu_ms']:.0f} ms CPU per image; vaecodec takes {result['vs_avif']['encode']:.2f}× "
          f"(encode), {result['vs_avif']['decode']:.2f}× (decode) and {result['vs_avif']['encode_plus_decode']:.2f}× "
          "(encode + decode) as long", flush=True)
    if args.no_scale:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        write_markdown(result, Path(args.out).with_suffix(".md"))
        return
    print("scale (1 thread, fresh process per size and direction)", flush=True)
    result["scale"] = part_scale(images[0], [float(v) for v in args.scale_mpx.split(",")])
    first, big = result["scale"][0], result["scale"][-1]
    result["time_per_mpx_ratio_largest_vs_smallest"] = big["cpu_s_per_mpx"] / first["cpu_s_per_mpx"]
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    write_markdown(result, Path(args.out).with_suffix(".md"))


def write_markdown(result, path):
    lines = ["# vaecodec speed", "", f"Command: `{result['command']}`  ", f"Model: {result['model']}; {result['platform']}  ",
             f"Encoder analysis in {result.get('analysis', '?')}; exact int8 kernels for the widest decoder products: "
             f"{'yes' if result.get('int8_kernels') else 'no'}; machine load: {result.get('machine_load', 'not stated')}", "",
             "## Stages (mean per image, quality 50)", "", "| stage | 1 thread CPU ms | 1 thread wall ms | 2 threads CPU ms | 2 threads wall ms |", "|---|---|---|---|---|"]
    for k in result["stages"]["1"]:
        a, b = result["stages"]["1"][k], result["stages"]["2"][k]
        lines.append(f"| {k} | {a['cpu_ms']:.1f} | {a['wall_ms']:.1f} | {b['cpu_ms']:.1f} | {b['wall_ms']:.1f} |")
    for t in ("1", "2"):
        tot = {p: sum(v["cpu_ms"] for k, v in result["stages"][t].items() if k.startswith(p)) for p in ("encode", "decode")}
        wall = {p: sum(v["wall_ms"] for k, v in result["stages"][t].items() if k.startswith(p)) for p in ("encode", "decode")}
        lines.append(f"| **total, {t} thread(s)** | encode {tot['encode']:.0f} CPU / {wall['encode']:.0f} wall | decode {tot['decode']:.0f} CPU / {wall['decode']:.0f} wall | | |")
    a = result["avif"]
    one = {p: sum(v["cpu_ms"] for k, v in result["stages"]["1"].items() if k.startswith(p)) for p in ("encode", "decode")}
    total = (one["encode"] + one["decode"]) / (a["encode_cpu_ms"] + a["decode_cpu_ms"])
    passes = result.get("avif_passes", [])
    bracket = (f" (the mean of a pass right before and one right after vaecodec's 1-thread stages: encode "
               f"{passes[0]['encode_cpu_ms']:.0f} and {passes[-1]['encode_cpu_ms']:.0f} ms)" if len(passes) == 2 else "")
    lines += ["", f"AVIF speed 6 ({a['codec']}), same images, 1 thread{bracket}: encode {a['encode_cpu_ms']:.0f} ms, decode "
              f"{a['decode_cpu_ms']:.0f} ms CPU per image. vaecodec at 1 thread takes **{total:.2f}×** AVIF's "
              f"encode + decode time ({result['vs_avif']['encode']:.2f}× its encode, {result['vs_avif']['decode']:.2f}× its decode)."]
    if result["scale"]:
        lines += ["", "## Scale (1 thread; compress from a PNG file and decompress from the .vae file, each in a fresh process)",
                  "", "| Mpx | size | encode CPU s | decode CPU s | CPU s per Mpx | encode peak RSS MB | decode peak RSS MB |",
                  "|---|---|---|---|---|---|---|"]
        for r in result["scale"]:
            lines.append(f"| {r['mpx']:.2f} | {r['width']}×{r['height']} | {r['encode_cpu_s']:.2f} | {r['decode_cpu_s']:.2f} | "
                         f"{r['cpu_s_per_mpx']:.2f} | {r['encode_peak_rss_mb']:.0f} | {r['decode_peak_rss_mb']:.0f} |")
        lines += ["", f"Time per Mpx at the largest size is {result['time_per_mpx_ratio_largest_vs_smallest']:.2f}× that "
                  "at the smallest. Peak RSS is the whole process: the interpreter, torch and the model (about 270 MB) included."]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
