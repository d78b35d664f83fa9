"""Bit-exact decoding: files decode to the same pixels whatever the kernels and threads.

The shipped model, because its real weights are the point, and a tiny
checkerboard model whose context is live (the same exact programs, plus the
context passes): encode (and decode, for the encoder's own reconstruction) in
one fresh process with oneDNN enabled and 2 threads; decode in another fresh
process with oneDNN disabled and 1 thread; every pixel must match, on several
images and qualities, and for lossless files (the shipped pixel model, its
integer MLP on numpy's BLAS with 2 threads, then 1).
"""

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from conftest import kodak_crop, make_tiny_model, smooth_image

SCRIPT = r"""
import hashlib, json, sys, torch
torch.backends.mkldnn.enabled = sys.argv[1] == "on"
torch.set_num_threads(int(sys.argv[2]))
import numpy as np, vaecodec
from pathlib import Path
codec = vaecodec.Codec(sys.argv[5] or None)
out = {}
for f in sorted(Path(sys.argv[3]).glob("*.png")):
    for q in (5, 50, 95, "lossless"):
        vae = f.with_name(f"{f.stem}-q{q}.vae")
        if sys.argv[4] == "encode":
            vae.write_bytes(codec.compress(f, quality=q) if q != "lossless" else codec.compress(f, lossless=True))
        out[vae.name] = hashlib.sha256(np.ascontiguousarray(codec.decompress_array(vae.read_bytes())).tobytes()).hexdigest()
print(json.dumps(out))
"""


def run(tmp_path, mkldnn, threads, action, model=""):
    # The decoder side also runs the 8-bit synthesis' products in float32 instead of int8 kernels.
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               VAECODEC_INT8_KERNEL="int8" if action == "encode" else "float32")
    r = subprocess.run([sys.executable, "-c", SCRIPT, mkldnn, str(threads), str(tmp_path), action, str(model)],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("model", ["shipped", "tiny-checkerboard", "tiny-int8", "tiny-channel"])
def test_decoding_is_identical_across_onednn_and_threads(tmp_path, model):
    model_file = ""
    if model != "shipped":
        model_file = tmp_path / "model.pt"
        make_tiny_model(seed=3, kind=model.removeprefix("tiny-")).save(model_file)
    Image.fromarray(kodak_crop(100, 100, 131, 97)).save(tmp_path / "a.png")
    Image.fromarray(kodak_crop(400, 250, 128, 128)).save(tmp_path / "b.png")
    Image.fromarray(smooth_image(70, 90, seed=3)).save(tmp_path / "c.png")
    Image.fromarray(smooth_image(33, 47, seed=4, channels=1)).save(tmp_path / "d.png")
    encoder_side = run(tmp_path, "on", 2, "encode", model_file)
    decoder_side = run(tmp_path, "off", 1, "decode", model_file)
    assert len(encoder_side) == 16
    assert encoder_side == decoder_side
