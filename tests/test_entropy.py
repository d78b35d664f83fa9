"""Entropy coding alone: round trips, escapes, and honest information bounds."""

import math

import numpy as np
import pytest

from vaecodec.entropy import IndexedPmfs, new_coder, quantize_pmf

RADIUS = 30
ndtr = np.vectorize(lambda v: 0.5 * math.erfc(-v / math.sqrt(2)))


@pytest.fixture(scope="module")
def pmfs():
    stds = 2.0 ** (np.arange(10) / 2 - 2)
    ks = np.arange(-RADIUS, RADIUS + 1)
    p = ndtr((ks + 0.5) / stds[:, None]) - ndtr((ks - 0.5) / stds[:, None])
    return IndexedPmfs(quantize_pmf(p), RADIUS), stds


def sample(pmfs, n, seed=0):
    tables, stds = pmfs
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(stds), n)
    return np.round(rng.normal(0, stds[idx])).astype(np.int64), idx


def round_trip(tables, symbols, idx):
    coder = new_coder()
    tables.encode(coder, symbols, idx)
    words = coder.get_compressed()
    decoder = new_coder(words)
    out = tables.decode(decoder, idx)
    assert decoder.is_empty()
    return out, words


def test_quantized_pmfs_sum_to_2_24_and_never_zero():
    p = np.array([[0.5, 0.25, 0.25, 0.0, 1e-30], [1, 1, 1, 1, 1]])
    q = quantize_pmf(p)
    assert q.dtype == np.int32 and (q >= 1).all() and (q.sum(1) == 2**24).all()
    with pytest.raises(ValueError):
        quantize_pmf(np.array([[0.5, np.nan]]))


def test_round_trip(pmfs):
    symbols, idx = sample(pmfs, 20000)
    out, _ = round_trip(pmfs[0], symbols, idx)
    assert np.array_equal(out, symbols)


def test_values_beyond_the_radius_are_escaped_not_clipped(pmfs):
    symbols, idx = sample(pmfs, 1000, seed=1)
    symbols[[3, 4, 5, 6, 7]] = [RADIUS, -RADIUS, RADIUS + 1, -(2**31), 2**32 - 1 + RADIUS]
    out, _ = round_trip(pmfs[0], symbols, idx)
    assert np.array_equal(out, symbols)


def test_impossible_magnitudes_raise_before_touching_the_coder(pmfs):
    coder = new_coder()
    with pytest.raises(ValueError, match="too large"):
        pmfs[0].encode(coder, np.array([2**40]), np.array([0]))
    assert coder.is_empty()


def test_real_bits_match_the_information_content(pmfs):
    # TFC's test_information_bounds: the coder may not beat the model, and adds only a constant.
    symbols, idx = sample(pmfs, 50000, seed=2)
    _, words = round_trip(pmfs[0], symbols, idx)
    info = pmfs[0].information_bits(symbols, idx)
    assert info - 64 <= 32 * words.size <= info + 64 * 11  # a word's rounding per table group at most


def test_stack_order_lets_sections_share_one_coder(pmfs):
    a, ia = sample(pmfs, 500, seed=3)
    b, ib = sample(pmfs, 700, seed=4)
    coder = new_coder()
    pmfs[0].encode(coder, b, ib)  # decoded last, so pushed first
    pmfs[0].encode(coder, a, ia)
    decoder = new_coder(coder.get_compressed())
    assert np.array_equal(pmfs[0].decode(decoder, ia), a)
    assert np.array_equal(pmfs[0].decode(decoder, ib), b)
    assert decoder.is_empty()


def test_bad_indexes_and_shapes_are_value_errors(pmfs):
    with pytest.raises(ValueError, match="index"):
        pmfs[0].encode(new_coder(), np.zeros(3), np.array([0, 1, 99]))
    with pytest.raises(ValueError, match="same size"):
        pmfs[0].encode(new_coder(), np.zeros(3), np.array([0, 1]))
    with pytest.raises(ValueError):
        IndexedPmfs(np.ones((2, 5), np.int32), 2)


def test_exact_categorical_codes_like_the_perfect_quantization_of_the_same_table():
    """The fast construction reproduces the integer table: same words as perfect=True, for skewed and flat tables."""
    import constriction

    from vaecodec.entropy import exact_categorical

    rng = np.random.default_rng(4)
    ks = np.arange(-300, 301)
    tables = [quantize_pmf(np.exp(-np.abs(ks) / s)) for s in (0.05, 0.7, 9.0, 400.0)]
    tables.append(quantize_pmf(rng.random(601)))
    for counts in tables:
        perfect = constriction.stream.model.Categorical(counts.astype(np.float64), perfect=True)
        symbols = np.concatenate([rng.permutation(601), rng.choice(601, 3000, p=counts / counts.sum())]).astype(np.int32)
        words = []
        for model in (perfect, exact_categorical(counts)):
            coder = new_coder()
            coder.encode_reverse(symbols, model)
            words.append(coder.get_compressed())
        assert np.array_equal(words[0], words[1])
        assert np.array_equal(new_coder(words[0]).decode(exact_categorical(counts), symbols.size), symbols)
