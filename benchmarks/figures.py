#!/usr/bin/env python3
"""The README's figures of the VAE's two halves, from the shipped model.

    python benchmarks/figures.py

Writes benchmarks/results/reconstructions.png (a 256×256 Kodak crop and its
decoded files at qualities 10, 50, 75 (the default) and 100, each labelled with its bpp and PSNR from the
file) and benchmarks/results/samples.png (eight 128×128 draws from the prior,
the decoder run on random bits, at quality 50).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vaecodec.api import Codec  # noqa: E402
from vaecodec.metrics import psnr  # noqa: E402

KODAK = ROOT.parent / "shared" / "data" / "kodak"


def label(im: Image.Image, text: str) -> Image.Image:
    out = Image.new("RGB", (im.width, im.height + 16), "white")
    out.paste(im, (0, 16))
    ImageDraw.Draw(out).text((4, 2), text, fill="black")
    return out


def row(images: list[Image.Image], gap: int = 6) -> Image.Image:
    out = Image.new("RGB", (sum(i.width for i in images) + gap * (len(images) - 1), max(i.height for i in images)),
                    "white")
    x = 0
    for im in images:
        out.paste(im, (x, 0))
        x += im.width + gap
    return out


def main() -> None:
    codec = Codec()
    crop = np.asarray(Image.open(KODAK / "kodim23.png").convert("RGB"))[150:406, 300:556]
    tiles = [label(Image.fromarray(crop), "original")]
    for q in (10, 50, 75, 100):  # 75: the default
        data = codec.compress(crop, quality=q)
        out = codec.decompress_array(data)
        tiles.append(label(Image.fromarray(out), f"q{q}: {8 * len(data) / crop[..., 0].size:.2f} bpp, "
                                                 f"{psnr(crop, out):.1f} dB"))
    out = ROOT / "benchmarks" / "results"
    row(tiles).save(out / "reconstructions.png")
    row([codec.sample(128, 128, quality=50, seed=s) for s in range(8)], gap=4).save(out / "samples.png")
    print("wrote", out / "reconstructions.png", out / "samples.png")


if __name__ == "__main__":
    main()
