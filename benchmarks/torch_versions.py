#!/usr/bin/env python3
"""Files decode identically under another torch: install, encode under one, decode under both.

    python benchmarks/torch_versions.py OTHER_PYTHON [--out benchmarks/results/torch-versions.json]

OTHER_PYTHON is the interpreter of an environment that already holds another
torch 2.x. The script installs this checkout into it with a plain ``pip
install`` (so pip resolves vaecodec's torch range against the torch already
there) and records whether pip left that torch in place. Then, with each interpreter in turn, it compresses a few images (lossy
at two qualities with the shipped model, lossless, RGBA) and decodes every
file written by either side. It reports:

* torch's version before and after the install in OTHER_PYTHON (unchanged is
  the requirement: vaecodec installs into an existing PyTorch environment);
* for every file, whether the pixels decoded under each torch are identical
  (the requirement: the decoder is integer-exact);
* whether the two encoders wrote the same bytes (not required: the analysis
  transform runs in floats, so another torch may choose other latents; both
  files are valid and each decodes identically everywhere).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import hashlib, json, sys
from pathlib import Path
import numpy as np
import torch
import vaecodec
from vaecodec.api import Codec

mode, folder = sys.argv[1], Path(sys.argv[2])
codec = Codec()
out = {"torch": torch.__version__, "vaecodec_file": vaecodec.__file__}
if mode == "encode":
    rng = np.random.default_rng(0)
    kodak = np.asarray(__import__("PIL.Image").Image.open(sys.argv[3]).convert("RGB"))
    alpha = (np.arange(kodak.shape[1]) % 256).astype(np.uint8)[None, :].repeat(kodak.shape[0], 0)
    jobs = {"q30": (kodak, dict(quality=30)), "q90": (kodak, dict(quality=90)),
            "lossless": (kodak[:128, :192], dict(lossless=True)),
            "rgba": (np.dstack([kodak[:200, :300], alpha[:200, :300]]), dict(quality=60))}
    for name, (px, kw) in jobs.items():
        (folder / f"{sys.argv[4]}-{name}.vae").write_bytes(codec.compress(px, **kw))
else:
    for f in sorted(folder.glob("*.vae")):
        px = np.ascontiguousarray(codec.decompress_array(f))
        out[f.name] = hashlib.sha256(px.tobytes()).hexdigest()
print(json.dumps(out))
"""


def run(python: str, *args: str) -> dict:
    r = subprocess.run([python, "-c", CHILD, *args], capture_output=True, text=True, cwd=tempfile.gettempdir())
    if r.returncode:
        raise SystemExit(r.stderr)
    return json.loads(r.stdout)


def torch_version(python: str) -> str:
    return subprocess.run([python, "-c", "import torch; print(torch.__version__)"], capture_output=True,
                          text=True, check=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("other_python")
    ap.add_argument("--image", default=str(ROOT / "tests" / "data" / "kodim23.png"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "torch-versions.json"))
    args = ap.parse_args()
    before = torch_version(args.other_python)
    install = subprocess.run([args.other_python, "-m", "pip", "install", "-q", str(ROOT)], capture_output=True, text=True)
    if install.returncode:
        raise SystemExit(install.stderr)
    after = torch_version(args.other_python)
    pythons = {"this": sys.executable, "other": args.other_python}
    with tempfile.TemporaryDirectory() as tmp:
        encoded = {side: run(py, "encode", tmp, args.image, side)["torch"] for side, py in pythons.items()}
        decoded = {side: run(py, "decode", tmp) for side, py in pythons.items()}
        files = sorted(p.name for p in Path(tmp).glob("*.vae"))
        same_bytes = {name: hashlib.sha256((Path(tmp) / f"this-{name}").read_bytes()).digest()
                      == hashlib.sha256((Path(tmp) / f"other-{name}").read_bytes()).digest()
                      for name in sorted({f.split("-", 1)[1] for f in files})}
    identical = {f: decoded["this"][f] == decoded["other"][f] for f in files}
    result = {
        "command": "python benchmarks/torch_versions.py " + " ".join(sys.argv[1:]),
        "this_torch": encoded["this"], "other_torch": encoded["other"],
        "other_torch_before_install": before, "other_torch_after_install": after,
        "torch_left_in_place": before == after,
        "pixels_identical_under_both": identical, "all_identical": all(identical.values()),
        "encoders_wrote_the_same_bytes": same_bytes,
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    if not (result["torch_left_in_place"] and result["all_identical"]):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
