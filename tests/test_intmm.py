"""Exact int8-digit products: digits that sum back to their integers, products equal to float64's."""

import pytest
import torch

from vaecodec.intmm import (THREE_DIGIT_LIMIT, TWO_DIGIT_LIMIT, DigitMatrix, digits_of, int_mm_is_exact,
                            num_digits)


def _join(d: torch.Tensor) -> torch.Tensor:
    return sum(d[:, i].long() * 256**i for i in range(d.shape[1]))


def test_digits_sum_back_to_their_integers_at_every_boundary():
    edges = [0, 1, -1, 127, -127, 128, -128, TWO_DIGIT_LIMIT, -TWO_DIGIT_LIMIT, TWO_DIGIT_LIMIT + 1,
             -(TWO_DIGIT_LIMIT + 1), 2**20, -2**20, THREE_DIGIT_LIMIT, -THREE_DIGIT_LIMIT]
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.tensor(edges, dtype=torch.float64),
                   torch.randint(-THREE_DIGIT_LIMIT, THREE_DIGIT_LIMIT + 1, (5000,), generator=g).double()])[:, None]
    d = digits_of(x)
    assert d.dtype == torch.int8 and d.shape == (len(x), 3, 1)
    assert torch.equal(_join(d), x.long())
    for top, n in ((127, 1), (TWO_DIGIT_LIMIT, 2)):  # the fewest digits that hold the values
        small = x.clamp(-top, top)
        assert digits_of(small).shape[1] == n and torch.equal(_join(digits_of(small)), small.long())


def test_digit_counts_and_their_limits():
    assert [num_digits(v) for v in (0, 127, 128, TWO_DIGIT_LIMIT, TWO_DIGIT_LIMIT + 1, THREE_DIGIT_LIMIT)] == \
        [1, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError):
        num_digits(THREE_DIGIT_LIMIT + 1)
    with pytest.raises(ValueError):
        DigitMatrix(torch.full((2, 3), float(TWO_DIGIT_LIMIT + 1)))
    with pytest.raises(ValueError):
        DigitMatrix(torch.zeros(2, 70000))  # int32 sums of two digit products could overflow


@pytest.mark.skipif(not int_mm_is_exact(), reason="no exact int8 kernel on this machine (callers use float64)")
@pytest.mark.parametrize("top", [100, 30000, 2**20])  # one, two and three digits
def test_digit_products_equal_float64_products_exactly(top):
    g = torch.Generator().manual_seed(1)
    w = torch.randint(-2**14, 2**14 + 1, (40, 1500), generator=g).double()
    w[0] = 2**14
    w[1] = -2**14
    x = torch.randint(-top, top + 1, (1500, 77), generator=g).double()
    x[:, 0] = top
    x[:, 1] = -top
    expected = w @ x
    assert expected.abs().max() > 2**24 or top < 2**10  # beyond float32's exact integers
    assert torch.equal(DigitMatrix(w).matmul(x), expected)


def test_int8_kernels_run_only_where_they_pay(monkeypatch):
    """Where torch has no native int8 kernel (AVX2-only CPUs: a reference kernel 13-40x slower than float64)
    the decoder keeps float64; the environment can force either path, the integers are the same."""
    from vaecodec import intmm

    monkeypatch.setenv("VAECODEC_INT8_KERNEL", "float32")
    assert not intmm.int_mm_pays()
    monkeypatch.setenv("VAECODEC_INT8_KERNEL", "int8")
    assert intmm.int_mm_pays() == int_mm_is_exact()
    monkeypatch.delenv("VAECODEC_INT8_KERNEL")
    monkeypatch.setattr(intmm, "_INT_MM_PAYS", {})
    monkeypatch.setattr(intmm, "_best_of", lambda fn, runs=3: 1.0)  # int8 no faster than float64
    assert not intmm.int_mm_pays()
    monkeypatch.setattr(intmm, "_INT_MM_PAYS", {})
    times = iter([1.0, 10.0])  # int8 timed first: ten times faster
    monkeypatch.setattr(intmm, "_best_of", lambda fn, runs=3: next(times))
    assert intmm.int_mm_pays() == int_mm_is_exact()
