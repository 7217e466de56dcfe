"""Memory for received data that is ready before the data arrives.

A fresh buffer is only address space: the kernel maps (and zeroes) each page on its first
write. Left to the copy of each received frame, that first touch ran on the gRPC handler
thread and cost 2.0 s of a 3.7 s mutual-TLS gigabyte on the 2-core test machine
(simulations/transport_benchmark.py; 0.06 to 2 s per GB from one process to the next). So:

- receive_buffer maps a large buffer privately, asks for transparent huge pages (numpy
  does the same for its own large arrays) and populates it at once, when the Inbox learns
  that a stream is coming, not frame by frame while it arrives;
- reuse_freed_memory keeps glibc from handing freed megabyte-sized blocks (gRPC's
  receive slices, each message's bytes, each encoded frame) back to the kernel after every
  message, only to fault them in again for the next one.

See docs/architecture.md#transfer-speed for the measurements.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import platform
import threading
from typing import Any

import numpy as np
import numpy.typing as npt

MAPPED_MIN_BYTES = 4 << 20
"""Below this a buffer comes from np.empty: few pages, and malloc reuses freed ones."""
TRIM_THRESHOLD = 64 << 20
"""Free memory glibc may keep at the top of a heap instead of returning it (default: grows
with the largest freed block, to 64 MiB at most; frames are 2-4 MiB)."""
MMAP_THRESHOLD = 32 << 20
"""Blocks up to this size come from the heap, not a fresh mapping per allocation."""
_PAGE = mmap.PAGESIZE
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux 5.14+
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_tuned = False
_tune_lock = threading.Lock()


def receive_buffer(elements: int, dtype: npt.DTypeLike = np.float32) -> npt.NDArray[Any]:
    """A writable array of `elements` values of `dtype` (float32, or secure aggregation's
    words) whose memory is already mapped in.

    The values are unspecified (zeros for a mapped buffer): every element is written by a
    verified frame before anyone reads it. The mapping is released with the array."""
    kind = np.dtype(dtype)
    nbytes = elements * kind.itemsize
    if nbytes < MAPPED_MIN_BYTES:
        return np.empty(elements, dtype=kind)
    region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    hugepage = getattr(mmap, "MADV_HUGEPAGE", None)
    if hugepage is not None:
        with contextlib.suppress(OSError):  # THP compiled out: 4 KiB pages, populated alike
            region.madvise(hugepage)
    array = np.frombuffer(region, dtype=kind, count=elements)
    try:
        region.madvise(_MADV_POPULATE_WRITE)
    except (OSError, ValueError):  # an older kernel: one write per page
        array.view(np.uint8)[::_PAGE] = 0
    return array


def reuse_freed_memory() -> bool:
    """Sets glibc's trim and mmap thresholds for this process (once; False where the C
    library is not glibc). Process-wide, and meant to be: the blocks that matter are
    allocated by gRPC's C core and by Python, not by swarmnode."""
    global _tuned
    with _tune_lock:
        if _tuned:
            return True
        if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
            return False
        libc = ctypes.CDLL(None)
        done = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        done = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and done
        _tuned = bool(done)
        return bool(done)
