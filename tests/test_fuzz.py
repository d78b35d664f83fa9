"""A seeded fuzz run in the suite: mutants of real files (tiny models) are all refused, none crash or hang.

The 100,000-case run with the shipped models is `python benchmarks/fuzz.py` (results in
benchmarks/results/fuzz.md).
"""

from conftest import make_tiny_model, make_tiny_pixel_model
from vaecodec.api import Codec
from vaecodec.fuzz import KINDS, fuzz


def test_two_thousand_mutants_are_all_refused():
    codec = Codec(make_tiny_model(kind="checkerboard", model_id="tiny-fuzz"), make_tiny_pixel_model())
    report = fuzz(codec, 2100, seed=1, hang_seconds=2.0)
    assert report.ok, report.summary()
    assert report.cases == 2100 and set(report.by_kind) == set(KINDS)
    assert report.outcomes["refused"] == report.cases
