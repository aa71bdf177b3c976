"""Keep freed memory in the process heap, so that training reuses its pages.

Every CML step allocates and frees the same large tensors (the (K·N, d) products of each layer,
their gradients). glibc serves blocks above its mmap threshold (128 KiB, raised up to 32 MiB as
such blocks are freed) with fresh ``mmap`` pages and trims freed memory at the top of the heap, so
each step faults in and zeroes those pages again: about 10,000-25,000 page faults per IJCAI-15
step on the dev machine, and of an epoch's CPU time 0.65 s of system time against 0.14 s with
this setting (docs/results.md). With a higher mmap threshold and no trimming, freed blocks are
reused once the heap has warmed up; values are unchanged and the peak RSS of that epoch is the
same (0.76 GB), but the process keeps the memory it has used until it exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: blocks below this come from the heap (larger ones are still mapped and returned at once)
MMAP_THRESHOLD = 512 * 1024 ** 2
TRIM_THRESHOLD = 2 ** 31 - 1


def retain_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds for this process (see the module docstring); True where
    they were set, False where the C library is not glibc (nothing changes there)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # the mmap threshold first: setting the trim threshold alone freezes the mmap one at 128 KiB
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
