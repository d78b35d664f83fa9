"""Fuzzing the decoder: mutated and forged .vae files must be refused, never crash, hang or pass.

Seed files are real files written by the codec under test (lossy RGB and L,
RGBA with alpha, lossless RGB and LA, a file with metadata). Each case mutates
one of them in one of these ways:

=========  ===========================================================
bits       flip 1–8 random bits anywhere (the CRC is left as it is)
truncate   cut the file at a random length
extend     append 1–64 random bytes
header     change one header field, then recompute the CRC
payload    flip bits in the ANS words, then recompute the CRC
forge      a seed's header declaring another size or mode, with a few
           random words for a payload and a valid CRC
splice     one seed's header on another seed's payload, CRC recomputed
=========  ===========================================================

and decodes it. Outcomes: *refused* (FormatError or ModelMismatchError, the
contract), *benign* (it decodes to exactly the seed's image: an edit of
metadata bytes, say), *forgery* (it decodes to anything else: a mutant was
accepted as a valid file), *crash* (any other exception, a Rust panic
included), *hang* (a case over ``hang_seconds``). A healthy decoder has no
forgeries, crashes or hangs; the 32-bit check value under every payload
makes an accepted forgery a 2^-32 event per case.

Typical workflow::

    report = fuzz(Codec(), cases=100_000, seed=0)
    assert report.ok, report.summary()
"""

from __future__ import annotations

import struct
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from .container import MAX_PIXELS, MAX_SIDE, pack, unpack
from .errors import FormatError, ModelMismatchError

__all__ = ["FuzzReport", "seed_files", "mutate", "fuzz", "KINDS"]

KINDS = ("bits", "truncate", "extend", "header", "payload", "forge", "splice")


@dataclass
class FuzzReport:
    cases: int = 0
    outcomes: Counter = field(default_factory=Counter)  # outcome → count
    by_kind: dict = field(default_factory=dict)  # kind → Counter of outcomes
    problems: list = field(default_factory=list)  # (case, kind, outcome, detail) of forgeries, crashes, hangs
    slowest_seconds: float = 0.0
    seconds: float = 0.0
    unchanged: int = 0  # mutants equal to their seed file, skipped
    unwritable: int = 0  # mutations pack() refuses to write, skipped

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        counts = ", ".join(f"{k} {self.outcomes.get(k, 0)}" for k in ("refused", "benign", "forgery", "crash", "hang"))
        return (f"{self.cases} cases in {self.seconds:.0f} s: {counts} (skipped: {self.unchanged} mutants equal to "
                f"their seed, {self.unwritable} that pack() refuses to write); slowest case {self.slowest_seconds:.3f} s"
                + (f"; first problem: {self.problems[0]}" if self.problems else ""))


def _smooth(h: int, w: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    planes = [128 + 90 * np.sin(rng.uniform(2, 9) * xx + c) * np.cos(rng.uniform(2, 9) * yy) for c in range(channels)]
    img = np.clip(np.round(np.stack(planes, -1) + rng.normal(0, 3, (h, w, channels))), 0, 255).astype(np.uint8)
    return img[:, :, 0] if channels == 1 else img


def seed_files(codec, seed: int = 0) -> list[bytes]:
    """Small real files of every kind the codec writes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    rgb, gray = _smooth(20, 28, 3, rng), _smooth(13, 9, 1, rng)
    alpha = np.zeros((20, 28), np.uint8)
    alpha[4:16, 6:22] = 255
    rgba = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    exif = Image.Exif()
    exif[0x0112] = 6
    with_meta = Image.fromarray(rgb)
    with_meta.info["exif"] = exif.tobytes()
    with_meta.info["xmp"] = b"<x:xmpmeta xmlns:x='adobe:ns:meta/'/>"
    return [codec.compress(rgb, quality=50), codec.compress(gray, quality=90), codec.compress(rgba, quality=30),
            codec.compress(rgb, lossless=True), codec.compress(Image.fromarray(np.dstack([gray, gray[::-1]]), "LA"),
                                                                lossless=True),
            codec.compress(with_meta, quality=20), codec.compress(_smooth(1, 1, 3, rng), quality=75)]


def _recrc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def mutate(seeds: list[bytes], rng: np.random.Generator, kind: str) -> bytes:
    """One mutant of a random seed file."""
    data = bytearray(seeds[rng.integers(len(seeds))])
    if kind == "bits":
        for _ in range(rng.integers(1, 9)):
            i = rng.integers(len(data))
            data[i] ^= 1 << int(rng.integers(8))
        return bytes(data)
    if kind == "truncate":
        return bytes(data[:rng.integers(len(data))])
    if kind == "extend":
        return bytes(data) + rng.integers(0, 256, rng.integers(1, 65), dtype=np.uint8).tobytes()
    header, words = unpack(bytes(data))
    if kind == "header":
        field_, value = _header_edit(header, words, rng)
        if field_ == "raw":
            return _recrc(bytes(value[:-4]))
        return pack(replace(header, **{field_: value}), words) if field_ != "words" else pack(header, value)
    if kind == "payload":
        w = words.copy()
        for _ in range(rng.integers(1, 4)):
            w[rng.integers(w.size)] ^= np.uint32(1 << int(rng.integers(32)))
        if w[-1] == 0:
            w[-1] = 1
        return pack(header, w)
    if kind == "forge":
        width, height = _forged_size(rng)
        mode = header.mode if rng.random() < 0.7 else ("L", "RGB", "LA", "RGBA")[rng.integers(4)]
        junk = rng.integers(1, 2**32, rng.integers(1, 16), dtype=np.uint32)
        return pack(replace(header, width=width, height=height, mode=mode), junk)
    if kind == "splice":
        other_header, other_words = unpack(seeds[rng.integers(len(seeds))])
        return pack(replace(header, metadata=other_header.metadata), other_words)
    raise ValueError(f"unknown mutation {kind!r}")


def _forged_size(rng: np.random.Generator) -> tuple[int, int]:
    while True:
        width, height = (int(v) for v in np.exp(rng.uniform(0, np.log(MAX_SIDE), 2)).round())
        if width * height <= MAX_PIXELS:
            return max(width, 1), max(height, 1)


def _header_edit(header, words, rng) -> tuple[str, object]:
    """A random change of one header field: (Header field or "words" or "raw", new value)."""
    choice = rng.integers(7)
    if choice == 0:
        return "width", int(max(1, min(MAX_SIDE, header.width + rng.integers(-3, 4) or 1)))
    if choice == 1:
        return "height", int(max(1, min(MAX_SIDE, header.height + rng.integers(-3, 4) or 1)))
    if choice == 2:
        return "mode", ("L", "RGB", "LA", "RGBA")[rng.integers(4)]
    if choice == 3:
        return "quality", int(rng.integers(1, 101))
    if choice == 4:
        return "coding", ("lossy", "lossless")[rng.integers(2)]
    if choice == 5:
        return "words", words[rng.integers(0, 2):words.size - rng.integers(0, 2)] if words.size > 2 else words
    # A raw byte of the fixed header changed (version, flags, id length, counts), CRC fixed.
    data = bytearray(pack(header, words))
    i = rng.integers(4, 28 + len(header.model_id))
    data[i] = int(rng.integers(256))
    return "raw", bytes(data)


def fuzz(codec, cases: int, seed: int = 0, hang_seconds: float = 5.0,
         progress: Callable[[int], None] | None = None) -> FuzzReport:
    """Decode ``cases`` mutants of :func:`seed_files` with ``codec``; see the module docstring."""
    seeds = seed_files(codec, seed)
    originals = [codec.decompress_array(s) for s in seeds]
    rng = np.random.default_rng(seed)
    report = FuzzReport()
    start = time.perf_counter()
    attempt = 0
    while report.cases < cases:
        kind = KINDS[attempt % len(KINDS)]
        case = attempt
        attempt += 1
        try:
            data = mutate(seeds, rng, kind)
        except FormatError:  # a mutation the container itself refuses to write (a field out of range): not a case
            report.unwritable += 1
            continue
        if data in seeds:  # a mutation that changed nothing (a field set to its own value): not a case
            report.unchanged += 1
            continue
        t0 = time.perf_counter()
        detail = ""
        try:
            out = codec.decompress_array(data)
            outcome = "benign" if any(o.shape == out.shape and np.array_equal(o, out) for o in originals) else "forgery"
            detail = f"decoded to {out.shape}"
        except (FormatError, ModelMismatchError):
            outcome = "refused"
        except BaseException as e:  # noqa: BLE001 - a Rust panic is a BaseException
            if isinstance(e, KeyboardInterrupt):
                raise
            outcome, detail = "crash", f"{type(e).__name__}: {str(e)[:120]}"
        elapsed = time.perf_counter() - t0
        if elapsed > hang_seconds and outcome != "crash":
            outcome, detail = "hang", f"{elapsed:.1f} s ({outcome})"
        report.cases += 1
        report.outcomes[outcome] += 1
        report.by_kind.setdefault(kind, Counter())[outcome] += 1
        report.slowest_seconds = max(report.slowest_seconds, elapsed)
        if outcome in ("forgery", "crash", "hang"):
            report.problems.append((case, kind, outcome, detail, data[:64].hex()))
        if progress:
            progress(1)
    report.seconds = time.perf_counter() - start
    return report
