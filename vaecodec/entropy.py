"""Entropy coding: integer symbols ↔ ANS words. The only module that imports constriction.

An :class:`IndexedPmfs` is a fixed set of integer probability tables (each row
sums to 2^24) over the symbols ``-radius..radius``; each symbol is coded with
the table its *index* names (a scale index for latents, a channel for
hyper-latents). Because the tables are integers shipped with the model and the
indexes are computed exactly, encoder and decoder see identical models on any
machine (design.md §3).

Escapes: the edge symbols ``±radius`` also stand for everything beyond. An
edge symbol is followed by its excess magnitude ``|s| − radius`` (0 ≤ excess
< 2^32) as two uniform 16-bit halves. Nothing is clipped.

Stack order (ANS is LIFO). :meth:`IndexedPmfs.encode` pushes the escapes
first and then the table groups from the last index to the first, so
:meth:`IndexedPmfs.decode` pops the groups from the first index to the last,
then the escapes it now knows to expect. Independent sections share one stack
the same way: push the section the decoder needs *last* first.

Typical workflow::

    pmfs = IndexedPmfs(quantize_pmf(probabilities), radius)    # ready to code
    coder = new_coder()
    pmfs.encode(coder, symbols, indexes)                        # push
    words = coder.get_compressed()                              # uint32 words
    decoded = pmfs.decode(new_coder(words), indexes)            # pop
"""

from __future__ import annotations

import zlib

import numpy as np

import constriction

__all__ = ["PROBABILITY_BITS", "CHECK_BITS", "IndexedPmfs", "exact_categorical", "quantize_pmf", "new_coder", "push_check", "pop_check",
           "state_floor", "holds_check", "push_grey_levels", "pop_grey_levels", "content_check"]

PROBABILITY_BITS = 24
_TOTAL = 1 << PROBABILITY_BITS
ESCAPE_BITS = 32
CHECK_BITS = 32
"""Size of the check value under every payload (:func:`push_check`)."""
_model = constriction.stream.model
_HALF_WORD = _model.Uniform(1 << 16)


def new_coder(words: np.ndarray | None = None):
    """An ANS stack, empty or holding ``words`` (uint32, little-endian order already applied)."""
    if words is None:
        return constriction.stream.stack.AnsCoder()
    return constriction.stream.stack.AnsCoder(np.ascontiguousarray(words, dtype=np.uint32))


def push_check(coder, value: int) -> None:
    """Push a 32-bit value (two uniform 16-bit symbols).

    Pushed first and popped last, it tells the decoder that the stream it read
    was the stream written for this header: an empty stack pops zeros rather
    than failing, so a truncated or re-headed payload would otherwise decode
    to garbage silently.
    """
    coder.encode_reverse(np.array([value >> 16, value & 0xFFFF], np.int32), _HALF_WORD)


def state_floor(check_value: int) -> int:
    """The smallest state a valid stack holds while its check value is still on it.

    Pushing never lowers an ANS stack's state unless a word moves to the
    bulk, so until the check is popped a valid stream has either words in its
    bulk or a state at least the one the check value alone leaves. A stream
    that ran dry (a forged or truncated file) falls below it: see
    :func:`holds_check`. Bits-back also pops while encoding, so a bits-back
    section can leave the stack lower than it found it partway through; it
    puts known words beneath itself first (the lossless codec's cushion), so
    the dips stay above what lies under it.
    """
    coder = new_coder()
    push_check(coder, check_value)
    return int(coder.pos()[1])


def holds_check(coder, floor: int) -> bool:
    """False when the stack can no longer hold the check value (see :func:`state_floor`)."""
    position, state = coder.pos()
    return position > 0 or int(state) >= floor


def content_check(*arrays, start: int = 0) -> int:
    """CRC-32 of integer arrays' values (as little-endian int64, in order), continuing the CRC ``start``:
    what the top check value holds.

    Pushed last over a payload's symbols and popped first, it is compared with
    the CRC of what was decoded: ANS desynchronizes after most edits of its
    words, and the check under the payload catches those, but raw bits (escape
    magnitudes) decode to other values without desynchronizing anything.
    """
    crc = start
    for a in arrays:
        crc = zlib.crc32(np.ascontiguousarray(np.asarray(a), dtype="<i8").tobytes(), crc)
    return crc


def pop_check(coder) -> int:
    hi, lo = coder.decode(_HALF_WORD, 2)
    return (int(hi) << 16) | int(lo)


_GREY_LEVELS = _model.QuantizedLaplace(0, 255)


def push_grey_levels(coder, levels: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> None:
    """Push grey levels 0..255 (int32) each under a discretized Laplace(mean, scale), so pop returns them in order.

    The Laplace's tails beyond 0 and 255 fall on the edge levels. ``mean`` and
    ``scale`` are float64, computed exactly by the caller on both sides:
    constriction turns equal floats into equal integer probabilities (pure
    Rust, no libm), so the model is the same on every machine.
    """
    coder.encode_reverse(np.ascontiguousarray(levels, dtype=np.int32), _GREY_LEVELS, mean, scale)


def pop_grey_levels(coder, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Pop ``len(mean)`` grey levels pushed by :func:`push_grey_levels` (int32)."""
    return coder.decode(_GREY_LEVELS, mean, scale)


_COMPONENTS = _model.Categorical(perfect=False)


def push_choices(coder, choices: np.ndarray, weights: np.ndarray) -> None:
    """Push one choice 0..K−1 per row of integer ``weights`` (n, K), under the pmf ∝ the row, so pop returns them
    in order. Integer weights passed as float64 are exact, and constriction's quantization of equal floats is
    deterministic (pure Rust), so both sides see the same model."""
    coder.encode_reverse(np.ascontiguousarray(choices, dtype=np.int32), _COMPONENTS,
                         np.ascontiguousarray(weights, dtype=np.float64))


def pop_choices(coder, weights: np.ndarray) -> np.ndarray:
    """Pop one choice per row of ``weights`` (n, K) (int32); in bits-back, a sample of that distribution drawn
    with the bits on the stack."""
    return coder.decode(_COMPONENTS, np.ascontiguousarray(weights, dtype=np.float64))


def quantize_pmf(probabilities: np.ndarray) -> np.ndarray:
    """Float pmf rows (..., n) → int32 rows that sum to exactly 2^24, every entry ≥ 1.

    Each entry gets ``floor(p·(2^24 − n)) + 1``; what is left goes to the most
    probable entry. Rows need not be normalized.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("probabilities must be finite and non-negative")
    n = p.shape[-1]
    p = p / p.sum(axis=-1, keepdims=True)
    counts = np.floor(p * (_TOTAL - n)).astype(np.int64) + 1
    left = _TOTAL - counts.sum(axis=-1)
    top = counts.argmax(axis=-1)
    np.put_along_axis(counts, top[..., None], np.take_along_axis(counts, top[..., None], -1) + left[..., None], -1)
    return counts.astype(np.int32)


def exact_categorical(counts: np.ndarray):
    """A constriction ``Categorical`` whose quantized pmf is exactly ``counts`` (integers ≥ 1 summing to 2^24).

    constriction's fast quantization (``perfect=False``) gives symbol i the
    left cumulative ``floor(C_i · s) + i``, with C_i the running float sum of
    the inputs before i and ``s = (2^24 − n) / Σ inputs``. Fed ``counts − 1``,
    every C_i is an integer sum (exact in float64), the sum is 2^24 − n, so
    s = 1 and each symbol's probability is exactly its count. That takes ~12 µs
    for a 2047-entry table, where ``perfect=True`` (which also reproduces such a
    table) takes ~5 ms: a model is ready to code at construction, and a small
    image no longer pays ~0.2 s of table building. The pmfs, and so the files,
    are the same either way (tested).
    """
    return _model.Categorical(np.asarray(counts, dtype=np.float64) - 1.0, perfect=False)


class IndexedPmfs:
    """Integer pmf tables, indexed per symbol, ready to code at construction.

    Args:
      pmfs: (num_tables, 2·radius + 1) integers, each row summing to 2^24 with
        every entry ≥ 1 (see :func:`quantize_pmf`).
      radius: symbols ``-radius..radius`` are coded directly; the edges escape.
    """

    def __init__(self, pmfs: np.ndarray, radius: int):
        pmfs = np.asarray(pmfs)
        if pmfs.ndim != 2 or pmfs.shape[1] != 2 * radius + 1:
            raise ValueError(f"pmf tables must have shape (n, {2 * radius + 1})")
        if np.any(pmfs < 1) or np.any(pmfs.astype(np.int64).sum(axis=1) != _TOTAL):
            raise ValueError("each pmf row must be ≥ 1 everywhere and sum to 2^24")
        self.pmfs = pmfs.astype(np.int32)
        self.radius = int(radius)
        self._models = [exact_categorical(row) for row in self.pmfs]
        self._log2_pmfs = np.log2(self.pmfs.astype(np.float64) / _TOTAL)

    def _table(self, j: int):
        return self._models[j]

    def __reduce__(self):
        # constriction's models do not pickle; the integer tables are the whole state.
        return IndexedPmfs, (self.pmfs, self.radius)

    @property
    def num_tables(self) -> int:
        return self.pmfs.shape[0]

    def _groups(self, indexes: np.ndarray):
        indexes = np.asarray(indexes).ravel()
        if indexes.size and (indexes.min() < 0 or indexes.max() >= self.num_tables):
            raise ValueError(f"table index out of range 0..{self.num_tables - 1}")
        # Radix sort: numpy's stable sort of 16-bit integers is ~7× faster than of int64 (same order).
        order = np.argsort(indexes.astype(np.int16) if self.num_tables < 2**15 else indexes, kind="stable")
        cuts = np.searchsorted(indexes[order], np.arange(self.num_tables + 1))
        return order, cuts

    def information_bits(self, symbols: np.ndarray, indexes: np.ndarray) -> float:
        """Σ −log2 p over the symbols under these exact tables, escapes included."""
        s = np.asarray(symbols, dtype=np.int64).ravel()
        idx = np.asarray(indexes).ravel()
        main = np.clip(s, -self.radius, self.radius) + self.radius
        escapes = int(np.count_nonzero(np.abs(s) >= self.radius))
        return float(-self._log2_pmfs[idx, main].sum()) + ESCAPE_BITS * escapes

    def encode(self, coder, symbols: np.ndarray, indexes: np.ndarray) -> None:
        """Push ``symbols`` (any int dtype, any shape) coded with the tables ``indexes`` names."""
        s = np.asarray(symbols, dtype=np.int64).ravel()
        if s.shape != np.asarray(indexes).ravel().shape:
            raise ValueError("symbols and indexes must have the same size")
        excess = np.abs(s[np.abs(s) >= self.radius]) - self.radius
        if excess.size:
            if excess.max() >= 1 << ESCAPE_BITS:
                raise ValueError("latent too large to code (|value| ≥ 2^32)")
            halves = np.stack([excess >> 16, excess & 0xFFFF], axis=1).ravel().astype(np.int32)
            coder.encode_reverse(halves, _HALF_WORD)
        main = (np.clip(s, -self.radius, self.radius) + self.radius).astype(np.int32)
        order, cuts = self._groups(indexes)
        for j in reversed(range(self.num_tables)):
            if cuts[j + 1] > cuts[j]:
                coder.encode_reverse(main[order[cuts[j]:cuts[j + 1]]], self._table(j))

    def decode(self, coder, indexes: np.ndarray) -> np.ndarray:
        """Pop as many symbols as ``indexes`` has; returns int64, flat, in index order."""
        order, cuts = self._groups(indexes)
        main = np.empty(order.size, np.int64)
        for j in range(self.num_tables):
            n = int(cuts[j + 1] - cuts[j])
            if n:
                main[order[cuts[j]:cuts[j + 1]]] = coder.decode(self._table(j), n)
        s = main - self.radius
        edge = np.flatnonzero(np.abs(s) >= self.radius)
        if edge.size:
            halves = coder.decode(_HALF_WORD, 2 * edge.size).astype(np.int64).reshape(-1, 2)
            s[edge] += np.sign(s[edge]) * ((halves[:, 0] << 16) | halves[:, 1])
        return s
