"""Regenerate the golden files in tests/data/ — only when the format changes on purpose.

    python tests/make_golden.py

Writes a tiny seeded model (golden-model.pt), a .vae file of a seeded image
(golden.vae) and the SHA-256 of its decoded pixels (golden.json). A format
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


def main() -> None:
    model = make_tiny_model(seed=7, model_id="golden-tiny")
    model.save(DATA / "golden-model.pt")
    codec = Codec(DATA / "golden-model.pt")
    data = codec.compress(smooth_image(37, 53, seed=7), quality=64)
    (DATA / "golden.vae").write_bytes(data)
    pixels = np.ascontiguousarray(codec.decompress_array(data))
    (DATA / "golden.json").write_text(json.dumps({
        "pixels_sha256": hashlib.sha256(pixels.tobytes()).hexdigest(),
        "shape": list(pixels.shape), "num_bytes": len(data),
    }, indent=1) + "\n")
    print(f"golden.vae: {len(data)} bytes")


if __name__ == "__main__":
    main()
