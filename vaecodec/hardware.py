"""What this machine runs natively: decides precisions that are a speed choice, never a format one."""

from __future__ import annotations

import functools
import os

import torch

__all__ = ["float32_products_exact", "native_bfloat16"]


@functools.lru_cache(maxsize=None)
def _cpu_has_bf16_instructions() -> bool:
    """AMX tiles (Intel Sapphire Rapids on) or AVX512-BF16 (Intel Cooper Lake, AMD Zen 4 on): oneDNN's
    bfloat16 convolutions run natively on either (on this project's Zen 4 machines 1.6× faster than
    float32 in a training step: ``benchmarks/results/bf16-step-avx512-all.json``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split()
                    return "amx_bf16" in flags or "avx512_bf16" in flags
    except OSError:
        pass
    return False


def native_bfloat16(device: str) -> bool:
    """Whether ``device`` runs bfloat16 convolutions natively (CUDA with bf16 support; a CPU with AMX tiles
    or AVX512-BF16, with oneDNN enabled: without them torch's bfloat16 convolutions are emulated, many times
    slower than float32)."""
    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return _cpu_has_bf16_instructions() and torch.backends.mkldnn.is_available() and torch._C._get_mkldnn_enabled()


def float32_products_exact() -> bool:
    """Whether float32 matrix products here are IEEE float32 ones: not lowered to bfloat16, float16 or TF32 by
    ``torch.set_float32_matmul_precision``, torch's fp32_precision settings or oneDNN's
    ``ONEDNN_DEFAULT_FPMATH_MODE``. The exact programs that sum integers in float32 below 2^24
    (:mod:`vaecodec.narrow`) need them, and compute in float64 where this is false (same integers, slower).
    Checked at every run: a user may change these settings at any time."""
    if torch.get_float32_matmul_precision() != "highest":
        return False
    for backend in (torch.backends, getattr(torch.backends.mkldnn, "matmul", None)):
        if getattr(backend, "fp32_precision", "none") not in ("none", "ieee"):
            return False
    return os.environ.get("ONEDNN_DEFAULT_FPMATH_MODE", "STRICT").upper() == "STRICT"
