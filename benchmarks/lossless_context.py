#!/usr/bin/env python3
"""Pixel-model ablation: the causal context (12 offsets, or 19 with "wide") and the width.

    python benchmarks/lossless_context.py base|wide STEPS [HIDDEN]

Trains with vaecodec's own trainer and prints the coder's exact bits per sub-pixel (tiles
included) on every 3rd Kodak image. Results: benchmarks/results/lossless-ablations/.
"""

import sys, glob, time
import numpy as np, torch
ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
torch.set_num_threads(1)
import vaecodec.pixel_model as pm
which = sys.argv[1]; steps = int(sys.argv[2]); hidden = int(sys.argv[3]) if len(sys.argv) > 3 else 64
if which == 'wide':
    pm.CONTEXT_OFFSETS = pm.CONTEXT_OFFSETS + ((-2, 2), (-2, -2), (-1, -3), (-3, -1), (-3, 1), (0, -4), (-4, 0))
pm.NUM_OFFSETS = len(pm.CONTEXT_OFFSETS)
pm._ROWS = np.array([r for r, _ in pm.CONTEXT_OFFSETS]); pm._COLS = np.array([c for _, c in pm.CONTEXT_OFFSETS])
pm.PAD = 4
from vaecodec.training.pixel import PixelTrainOptions, train_pixel_model
from vaecodec.lossless_codec import PixelCodec, prepare_image
from PIL import Image
model = train_pixel_model(SHARED / 'train', PixelTrainOptions(hidden=hidden, steps=steps, samples_per_image=20000),
                          log=lambda m: print(m, flush=True))
res = []
for f in sorted(glob.glob(str(SHARED / 'kodak' / '*')))[::3]:
    x = np.asarray(Image.open(f).convert('RGB'))
    t = time.process_time(); tiles = prepare_image(x, PixelCodec(model)); te = time.process_time() - t
    res.append(sum(tl.information_bits for tl in tiles) / x.size)
print(which, hidden, steps, 'bpsp', np.mean(res), res)
