#!/usr/bin/env python3
"""Exact bits per sub-pixel and encode CPU of pixel-model files on every 3rd Kodak image.

    python benchmarks/lossless_compare.py MODEL.npz [MODEL.npz ...]
"""
import sys, glob, time, numpy as np
ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
from PIL import Image
from vaecodec.pixel_model import PixelModel
from vaecodec.lossless_codec import PixelCodec, prepare_image
for path in sys.argv[1:]:
    m = PixelModel.load(path); res = []; t = time.process_time()
    for f in sorted(glob.glob(str(SHARED / 'kodak' / '*')))[::3]:
        x = np.asarray(Image.open(f).convert('RGB'))
        res.append(sum(tl.information_bits for tl in prepare_image(x, PixelCodec(m))) / x.size)
    print(path, 'bpsp', round(float(np.mean(res)), 4), 'encode CPU-s/img', round((time.process_time() - t) / len(res), 2))
