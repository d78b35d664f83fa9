"""Regenerate the golden files in tests/data/ — only when the format changes on purpose.

    python tests/make_golden.py [hyperprior|checkerboard]

Writes a tiny seeded model (golden-model.pt), a .vae file of a seeded image
(golden.vae) and the SHA-256 of its decoded pixels (golden.json); for the
checkerboard architecture the same with the prefix ``golden-cb``. A format
change must bump container.FORMAT_VERSION; then regenerate and commit.
"""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import DATA, make_tiny_model, smooth_image  # noqa: E402
from vaecodec.api import Codec  # noqa: E402


GOLDEN = {"hyperprior": ("golden", "golden-tiny"), "checkerboard": ("golden-cb", "golden-tiny-cb")}


def main() -> None:
    kind = sys.argv[1] if len(sys.argv) > 1 else "hyperprior"
    prefix, model_id = GOLDEN[kind]
    model = make_tiny_model(seed=7, model_id=model_id, kind=kind)
    model.save(DATA / f"{prefix}-model.pt")
    codec = Codec(DATA / f"{prefix}-model.pt")
    data = codec.compress(smooth_image(37, 53, seed=7), quality=64)
    (DATA / f"{prefix}.vae").write_bytes(data)
    pixels = np.ascontiguousarray(codec.decompress_array(data))
    (DATA / f"{prefix}.json").write_text(json.dumps({
        "pixels_sha256": hashlib.sha256(pixels.tobytes()).hexdigest(),
        "shape": list(pixels.shape), "num_bytes": len(data),
    }, indent=1) + "\n")
    print(f"{prefix}.vae: {len(data)} bytes")


if __name__ == "__main__":
    main()
