"""Regenerate the golden files in tests/data/ — only when the format changes on purpose.

    python tests/make_golden.py [hyperprior|checkerboard|int8|channel|narrow|narrow12|v2|v3|shipped]

Writes a tiny seeded model (golden-model.pt), a .vae file of a seeded image
(golden.vae) and the SHA-256 of its decoded pixels (golden.json); for the
checkerboard architecture the same with the prefix ``golden-cb``. These two are
format version 1 files, kept to prove that old files still decode. ``v2``
writes version-2 files with the checkerboard model and a tiny pixel model
(golden-px.npz): lossy RGBA (golden-v2-rgba) and lossless RGB
(golden-v2-lossless). ``v3`` writes a version-3 file whose latents span two
tiles (golden-v3-tiles, 1100 × 24 RGB, checkerboard model; rewriting the v2
files would turn them into version 3). ``int8`` writes a version-3 file of a tiny checkerboard model
with an 8-bit synthesis (golden-s8: its integer program's tables are in the model file, and the
file pins the integers it computes). ``channel`` writes a version-3 file of a tiny checkerboard model
with channel slices (golden-cc: pins the slices' stack order and the channel context's integers). ``narrow`` writes
one of the same architecture with the 10-bit latent programs and the 11-bit synthesis (golden-n11: pins their
integers; the exponent tables are in the model file, a derived one naming golden-cc-model.pt); ``narrow12`` the same
with the synthesis' 12-bit activations (golden-n12, as ``-r6w``'s). golden-n10, of the
same weights with the 10-bit latent programs only, was written by it before the synthesis had an 11-bit form: kept
to pin those, not rewritten. A format change must bump container.FORMAT_VERSION;
then add goldens of the new version and commit. ``shipped`` writes a file of the package's current default
model (shipped-<model file stem>), run just before a new model becomes the default: it proves that files of
every earlier default keep decoding.
"""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import DATA, make_tiny_model, make_tiny_pixel_model, smooth_image  # noqa: E402
from vaecodec.api import Codec  # noqa: E402


GOLDEN = {"hyperprior": ("golden", "golden-tiny"), "checkerboard": ("golden-cb", "golden-tiny-cb"),
          "int8": ("golden-s8", "golden-tiny-s8"), "channel": ("golden-cc", "golden-tiny-cc"),
          "narrow": ("golden-n11", "golden-tiny-n11"), "narrow12": ("golden-n12", "golden-tiny-n12")}


def write(prefix: str, codec: Codec, data: bytes) -> None:
    (DATA / f"{prefix}.vae").write_bytes(data)
    pixels = np.ascontiguousarray(codec.decompress_array(data))
    (DATA / f"{prefix}.json").write_text(json.dumps({
        "pixels_sha256": hashlib.sha256(pixels.tobytes()).hexdigest(),
        "shape": list(pixels.shape), "num_bytes": len(data),
    }, indent=1) + "\n")
    print(f"{prefix}.vae: {len(data)} bytes")


def version_2() -> None:
    make_tiny_pixel_model(seed=7, model_id="golden-px").save(DATA / "golden-px.npz")
    codec = Codec(DATA / "golden-cb-model.pt", DATA / "golden-px.npz")
    img = smooth_image(37, 53, seed=8)
    alpha = np.zeros((37, 53), np.uint8)
    alpha[5:30, 9:44] = 255
    alpha[17, :] = np.arange(53) * 4
    write("golden-v2-rgba", codec, codec.compress(np.dstack([img, alpha]), quality=64))
    write("golden-v2-lossless", codec, codec.compress(img, lossless=True))


def version_3() -> None:
    codec = Codec(DATA / "golden-cb-model.pt")
    write("golden-v3-tiles", codec, codec.compress(smooth_image(24, 1100, seed=9), quality=64))


def shipped() -> None:
    from vaecodec.api import SHIPPED_MODEL

    codec = Codec()
    prefix = "shipped-" + SHIPPED_MODEL.removeprefix("vaecodec-").removesuffix(".pt")
    data = codec.compress(smooth_image(45, 70, seed=11), quality=60)
    write(prefix, codec, data)
    expected = json.loads((DATA / f"{prefix}.json").read_text())
    expected["model_id"] = codec.model.model_id
    (DATA / f"{prefix}.json").write_text(json.dumps(expected, indent=1) + "\n")


def main() -> None:
    kind = sys.argv[1] if len(sys.argv) > 1 else "hyperprior"
    if kind == "shipped":
        return shipped()
    if kind == "v2":
        return version_2()
    if kind == "v3":
        return version_3()
    prefix, model_id = GOLDEN[kind]
    model = make_tiny_model(seed=7, model_id=model_id, kind=kind)
    # The narrow one shares golden-cc's weights: a derived model file (format version 2) naming it.
    model.save(DATA / f"{prefix}-model.pt", base=DATA / "golden-cc-model.pt" if kind.startswith("narrow") else None)
    codec = Codec(DATA / f"{prefix}-model.pt")
    # Note: this writes the current format version; the committed golden.vae and golden-cb.vae are version 1.
    write(prefix, codec, codec.compress(smooth_image(37, 53, seed=7), quality=64))


if __name__ == "__main__":
    main()
