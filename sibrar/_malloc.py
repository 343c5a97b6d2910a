"""glibc malloc tuning for CPU training.

PyTorch's CPU tensors of more than 128 KiB come from mmap by default, so every op of a training
step maps fresh pages and the kernel zero-fills them: on virtual machines with costly page faults
this made a step ~5x slower. Keeping freed memory in the heap (high mmap/trim thresholds, via
mallopt) removes the faults. No-op off glibc; opt out with SIBRAR_NO_MALLOC_TUNING=1.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's cap on 64-bit systems
_done = False


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; returns whether it applied."""
    global _done
    if _done or not sys.platform.startswith("linux") or os.environ.get("SIBRAR_NO_MALLOC_TUNING"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
        ok &= libc.mallopt(_M_TOP_PAD, 64 * 1024 * 1024) == 1
    except (OSError, AttributeError):
        return False
    _done = bool(ok)
    return _done
