"""Format drift: a committed .vae file must keep decoding to the same pixels."""

import hashlib
import json

import numpy as np
import pytest

import vaecodec
from vaecodec.api import Codec

from conftest import DATA


@pytest.mark.parametrize("prefix", ["golden", "golden-cb", "golden-cc", "golden-n10", "golden-n11", "golden-n12"])
# hyperprior, checkerboard, + channel slices, + the 10-bit latent programs (+ the 11- or 12-bit synthesis)
def test_golden_file_decodes_to_its_checksum(prefix):
    expected = json.loads((DATA / f"{prefix}.json").read_text())
    data = (DATA / f"{prefix}.vae").read_bytes()
    assert vaecodec.read_header(data).num_bytes == expected["num_bytes"]
    pixels = np.ascontiguousarray(Codec(DATA / f"{prefix}-model.pt").decompress_array(data))
    assert list(pixels.shape) == expected["shape"]
    assert hashlib.sha256(pixels.tobytes()).hexdigest() == expected["pixels_sha256"]


@pytest.mark.parametrize("prefix", ["golden-v2-rgba", "golden-v2-lossless"])
def test_version_2_golden_file_decodes_to_its_checksum(prefix):
    expected = json.loads((DATA / f"{prefix}.json").read_text())
    data = (DATA / f"{prefix}.vae").read_bytes()
    assert vaecodec.read_header(data).format_version == 2
    pixels = np.ascontiguousarray(Codec(DATA / "golden-cb-model.pt", DATA / "golden-px.npz").decompress_array(data))
    assert list(pixels.shape) == expected["shape"]
    assert hashlib.sha256(pixels.tobytes()).hexdigest() == expected["pixels_sha256"]


def test_version_3_golden_file_with_two_tiles_decodes_to_its_checksum():
    expected = json.loads((DATA / "golden-v3-tiles.json").read_text())
    data = (DATA / "golden-v3-tiles.vae").read_bytes()
    assert vaecodec.read_header(data).format_version == 3
    pixels = np.ascontiguousarray(Codec(DATA / "golden-cb-model.pt").decompress_array(data))
    assert list(pixels.shape) == expected["shape"] and expected["shape"][1] > 1024
    assert hashlib.sha256(pixels.tobytes()).hexdigest() == expected["pixels_sha256"]


def test_an_8_bit_synthesis_golden_file_decodes_to_its_checksum():
    """The integers of the 8-bit synthesis program (int8 products, int32 rescaling) stay those of 0.3."""
    expected = json.loads((DATA / "golden-s8.json").read_text())
    data = (DATA / "golden-s8.vae").read_bytes()
    codec = Codec(DATA / "golden-s8-model.pt")
    assert codec.model.config.synthesis_bits == 8
    pixels = np.ascontiguousarray(codec.decompress_array(data))
    assert list(pixels.shape) == expected["shape"]
    assert hashlib.sha256(pixels.tobytes()).hexdigest() == expected["pixels_sha256"]


@pytest.mark.parametrize("prefix", ["shipped-cb64", "shipped-cb64-r2", "shipped-cb64-r3", "shipped-cc64-r4",
                                    "shipped-cc64-r5", "shipped-cc64-r5n", "shipped-cc64-r5s",
                                    "shipped-cc64-r5w"])
def test_a_file_of_an_earlier_shipped_model_decodes_with_the_default_codec(shipped_codec, prefix):
    """0.2's model (cb64-w128-m256-vr), its -r2 and -r3, the channel-context -r4 and the -r5 family wrote
    these files (``make_golden.py shipped``, run with each as ``SHIPPED_MODEL``); the package's default is a
    later model, and each file still decodes to the same pixels: files name their model and every shipped
    model stays."""
    expected = json.loads((DATA / f"{prefix}.json").read_text())
    data = (DATA / f"{prefix}.vae").read_bytes()
    assert vaecodec.read_header(data).model_id == expected["model_id"] != shipped_codec.model.model_id
    pixels = np.ascontiguousarray(shipped_codec.decompress_array(data))
    assert hashlib.sha256(pixels.tobytes()).hexdigest() == expected["pixels_sha256"]
