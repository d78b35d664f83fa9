"""The shipped model, where its real behaviour is the point."""

import numpy as np

from vaecodec.metrics import psnr

from conftest import kodak_crop


def test_file_size_never_shrinks_as_quality_rises(shipped_codec):
    img = kodak_crop(200, 150, 256, 192)
    analysed = shipped_codec._analyze(img)
    sizes = [shipped_codec._encode_at(analysed, q).num_bytes for q in range(1, 101)]
    assert all(b >= a for a, b in zip(sizes, sizes[1:])), sizes
    assert sizes[-1] > 3 * sizes[0]


def test_quality_buys_fidelity(shipped_codec):
    img = kodak_crop(300, 100, 192, 128)
    low, high = (np.asarray(shipped_codec.decompress(shipped_codec.compress(img, quality=q))) for q in (1, 100))
    assert psnr(img, high) > psnr(img, low) + 3
    assert psnr(img, low) > 20


def test_shipped_model_card_matches_the_weights(shipped_codec):
    from importlib import resources

    card = (resources.files("vaecodec") / "weights" / "MODEL_CARD.md").read_text()
    assert shipped_codec.model.weight_hash.hex() in card.splitlines()[0]
