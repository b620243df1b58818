"""Keeping freed memory for reuse, so batch-sized buffers do not page-fault on every call.

A corruption allocates a few buffers the size of its batch (48 images at 224 px: 29 MB of
float32 each, float64 twice that). glibc's malloc hands out anything above its mmap threshold
(128 kB at start, raised as such blocks are freed, never above 32 MB) as fresh pages from the
kernel and returns them on ``free``, and heap memory above its trim threshold goes back the
same way; every fresh 4 kB page then costs a page fault and the kernel's zeroing when first
written. Measured on this project's 2-core machine (getrusage, 48 images at 224 px): motion
blur took 7,045 faults per call, zoom blur and contrast 4,704 each, and 19 corruptions x 5
severities x 4 calls took 0.9-1.1 million (252,000 with this module's setting), at 3-7 us
each (more than the arithmetic of several corruptions).

:func:`keep_freed_memory` raises both thresholds once per process (``mallopt``), so freed
blocks stay in the heap and the next call's buffers of the same sizes reuse already-mapped
pages. What it costs: memory freed after a peak stays with the process (its resident size
does not shrink back), as with torch's CUDA caching allocator. It changes no number. Set the
environment variable ``ROBUSTBENCH_BN_KEEP_FREED_MEMORY=0`` to leave malloc as it is; on a C
library without ``mallopt`` (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

#: mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Blocks up to this size come from the heap (reused) instead of fresh mappings: a 224 px
#: batch of 256 images in float64 is 308 MB.
MMAP_THRESHOLD_BYTES = 1 << 30
#: Free memory at the top of the heap is handed back to the kernel only above this.
TRIM_THRESHOLD_BYTES = (1 << 31) - 1
ENVIRONMENT_VARIABLE = "ROBUSTBENCH_BN_KEEP_FREED_MEMORY"


@functools.cache
def keep_freed_memory() -> bool:
    """Raise malloc's mmap and trim thresholds once per process; True if they were set."""
    if os.environ.get(ENVIRONMENT_VARIABLE, "1").strip().lower() in {"0", "false", "no", "off"}:
        return False
    name = ctypes.util.find_library("c")
    try:
        library = ctypes.CDLL(name)
        mallopt = library.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; a set threshold also stops glibc adjusting it.
    trimmed = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    mapped = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    return trimmed and mapped
