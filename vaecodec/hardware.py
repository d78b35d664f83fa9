"""What this machine runs natively: decides precisions that are a speed choice, never a format one."""

from __future__ import annotations

import functools

import torch

__all__ = ["native_bfloat16"]


@functools.lru_cache(maxsize=None)
def _cpu_has_amx_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " amx_bf16" in line for line in f)
    except OSError:
        return False


def native_bfloat16(device: str) -> bool:
    """Whether ``device`` runs bfloat16 convolutions natively (CUDA with bf16 support; a CPU with AMX tiles,
    with oneDNN enabled: without it torch's bfloat16 convolutions are emulated, slower than float32)."""
    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return _cpu_has_amx_bf16() and torch.backends.mkldnn.is_available() and torch._C._get_mkldnn_enabled()
