"""Bit-exact decoding: files decode to the same pixels whatever the kernels and threads.

The shipped model, because its real weights are the point: encode (and decode,
for the encoder's own reconstruction) in one fresh process with oneDNN enabled
and 2 threads; decode in another fresh process with oneDNN disabled and 1
thread; every pixel must match, on several images and qualities.
"""

import json
import subprocess
import sys

from PIL import Image

from conftest import kodak_crop, smooth_image

SCRIPT = r"""
import hashlib, json, sys, torch
torch.backends.mkldnn.enabled = sys.argv[1] == "on"
torch.set_num_threads(int(sys.argv[2]))
import numpy as np, vaecodec
from pathlib import Path
codec = vaecodec.Codec()
out = {}
for f in sorted(Path(sys.argv[3]).glob("*.png")):
    for q in (5, 50, 95):
        vae = f.with_name(f"{f.stem}-q{q}.vae")
        if sys.argv[4] == "encode":
            vae.write_bytes(codec.compress(f, quality=q))
        out[vae.name] = hashlib.sha256(np.ascontiguousarray(codec.decompress_array(vae.read_bytes())).tobytes()).hexdigest()
print(json.dumps(out))
"""


def run(tmp_path, mkldnn, threads, action):
    r = subprocess.run([sys.executable, "-c", SCRIPT, mkldnn, str(threads), str(tmp_path), action],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_decoding_is_identical_across_onednn_and_threads(tmp_path):
    Image.fromarray(kodak_crop(100, 100, 131, 97)).save(tmp_path / "a.png")
    Image.fromarray(kodak_crop(400, 250, 128, 128)).save(tmp_path / "b.png")
    Image.fromarray(smooth_image(70, 90, seed=3)).save(tmp_path / "c.png")
    Image.fromarray(smooth_image(33, 47, seed=4, channels=1)).save(tmp_path / "d.png")
    encoder_side = run(tmp_path, "on", 2, "encode")
    decoder_side = run(tmp_path, "off", 1, "decode")
    assert len(encoder_side) == 12
    assert encoder_side == decoder_side
