"""Format drift: a committed .vae file must keep decoding to the same pixels."""

import hashlib
import json

import numpy as np

import vaecodec
from vaecodec.api import Codec

from conftest import DATA


def test_golden_file_decodes_to_its_checksum():
    expected = json.loads((DATA / "golden.json").read_text())
    data = (DATA / "golden.vae").read_bytes()
    assert vaecodec.read_header(data).num_bytes == expected["num_bytes"]
    pixels = np.ascontiguousarray(Codec(DATA / "golden-model.pt").decompress_array(data))
    assert list(pixels.shape) == expected["shape"]
    assert hashlib.sha256(pixels.tobytes()).hexdigest() == expected["pixels_sha256"]
